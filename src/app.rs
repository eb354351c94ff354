//! The commands, stage by stage: arguments are checked and the archive read before the
//! cluster is touched; the plan is whole before any pod is created; every pod created is
//! deleted again, also on Ctrl-C, SIGTERM and SIGHUP.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use clap::CommandFactory;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod};
use kube::api::Api;
use tokio_util::sync::CancellationToken;

use crate::archive::{Archive, Source, Summary, reference};
use crate::cli::{
    CleanupArgs, Cli, Command, CompletionArgs, Compress, DryRun, InspectArgs, KubeArgs, LoadArgs,
    NodeSelection, Output, Pipeline, Relay,
};
use crate::cluster::helper::Runs;
use crate::cluster::lease::{self, Heartbeat};
use crate::cluster::nodes::{self, NodeFacts};
use crate::cluster::{agent, client, helper};
use crate::load::{self, Status};
use crate::plan::{self, Decision, Plan};
use crate::progress::Progress;
use crate::reach;
use crate::report;
use crate::workload;

pub async fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Some(Command::Inspect(args)) => inspect(args).await,
        Some(Command::Cleanup(args)) => cleanup(&cli.kube, args).await,
        Some(Command::Status(args)) => crate::status::status(&cli.kube, args).await,
        Some(Command::Unpin(args)) => crate::status::unpin(&cli.kube, args).await,
        Some(Command::Rm(args)) => crate::status::remove(&cli.kube, args).await,
        Some(Command::Completion(args)) => completion(args),
        Some(Command::Complete(args)) => crate::complete::run(&args.words).await,
        None => sideload(cli.load, &cli.kube).await,
    }
}

/// `--tag`: the names to import the image under instead of the archive's. Without it,
/// warns about `localhost/` names: podman gives short names that prefix, and pods asking
/// for `app:v2` (docker.io/library/app:v2 to the kubelet) never find `localhost/app:v2`.
fn name_image(archive: &mut Archive, tags: &[String]) -> Result<()> {
    if tags.is_empty() {
        for r in &archive.summary().refs {
            if let Some(short) = r.strip_prefix("localhost/") {
                eprintln!(
                    "warning: the archive names the image {r} (podman's spelling of a short \
                     name); pods asking for {short} will not find it: pass --tag {short} to \
                     import it under the name they ask for"
                );
            }
        }
        return Ok(());
    }
    let mut refs = Vec::new();
    for tag in tags {
        if tag.contains('@') {
            bail!("--tag {tag:?} names a digest; the image keeps its own digest, give a name:tag");
        }
        let r = reference::normalize(tag).map_err(|e| {
            anyhow!("--tag {tag:?} is not an image reference ({e}); e.g. --tag app:v2")
        })?;
        if !refs.contains(&r) {
            refs.push(r);
        }
    }
    archive.rename(refs);
    Ok(())
}

/// Opens an archive that must hold one image (`inspect`, `status`).
pub async fn open_archive(arg: &str) -> Result<Archive> {
    Ok(Archive::one(open_images(arg).await?)?)
}

/// Opens an archive on a blocking thread: it is one sequential read of the whole file (or
/// of what `docker save` / `podman save` writes, for `docker://` and `podman://`). One
/// `Archive` per image the archive holds.
pub async fn open_images(arg: &str) -> Result<Vec<Archive>> {
    if let Some((engine, reference)) = crate::engine::Engine::parse(arg) {
        let (reference, arg) = (reference.to_owned(), arg.to_owned());
        return tokio::task::spawn_blocking(move || crate::engine::open(engine, &reference, &arg))
            .await
            .context("archive reader panicked")?;
    }
    let source = if arg == "-" {
        if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
            bail!(
                "ARCHIVE is - but stdin is a terminal; pipe an archive in (docker save app:v2 | kubectl sideload -) or pass a path"
            );
        }
        Source::Stdin
    } else {
        Source::Path(arg.into())
    };
    let images = tokio::task::spawn_blocking(move || Archive::open_all(&source))
        .await
        .context("archive reader panicked")??;
    Ok(images)
}

/// The images a load reads: every image of every ARCHIVE argument, in order (an archive
/// may hold several: `docker save a b`, `podman save -m`), named as `--tag` says. An image
/// given twice (the same digest under the same names) is loaded once.
async fn open_inputs(args: &LoadArgs) -> Result<Vec<Arc<Archive>>> {
    let mut images: Vec<Archive> = Vec::new();
    for arg in &args.archives {
        for image in open_images(arg).await? {
            let twice = images.iter().any(|i| {
                i.summary().digest == image.summary().digest
                    && i.summary().refs == image.summary().refs
            });
            if !twice {
                images.push(image);
            }
        }
    }
    if images.len() > 1 && !args.tag.is_empty() {
        bail!(
            "--tag names one image, and this run loads {}: {}; load the image to rename on \
             its own (`kubectl sideload ARCHIVE --tag …`)",
            images.len(),
            images
                .iter()
                .map(|i| describe_image(i.summary()))
                .collect::<Vec<_>>()
                .join("; ")
        );
    }
    for image in &mut images {
        name_image(image, &args.tag)?;
    }
    Ok(images.into_iter().map(Arc::new).collect())
}

/// An image's names (or its digest, if it has none) for messages.
fn describe_image(summary: &Summary) -> String {
    if summary.refs.is_empty() {
        format!("untagged {}", summary.digest)
    } else {
        summary.refs.join(", ")
    }
}

async fn sideload(args: LoadArgs, kube: &KubeArgs) -> Result<ExitCode> {
    // --timeout counts from here: the archive and the cluster reads are part of the run.
    let deadline = Deadline::new(args.timeout);
    let mut selection = args.node_selection().map_err(|e| anyhow!(e))?;
    // Only names the user typed make an unfit node an error; "all", a selector or the
    // nodes DaemonSets run on skip it and load the rest.
    let named = matches!(selection, NodeSelection::Names(_));
    let images = open_inputs(&args).await?;
    let summaries: Vec<&Summary> = images.iter().map(|i| i.summary()).collect();

    let cluster = client::connect(kube).await?;
    let all_nodes = nodes::list_all(&cluster.client).await?;
    // Workloads before pods: a missing workload or container fails with nothing changed,
    // and DaemonSets decide the default nodes.
    let stage = workload_stage(&args, &cluster, &summaries, &all_nodes).await?;
    if !args.nodes_chosen()
        && let Some(names) = stage.as_ref().and_then(workload::Stage::daemonset_nodes)
    {
        if names.is_empty() {
            bail!(
                "nothing was changed; the DaemonSets run on no node now (nodeSelector, \
                 affinity or taints): pass --nodes or --selector"
            );
        }
        selection = NodeSelection::Names(names);
    }
    let chosen = nodes::select(&cluster.client, &all_nodes, &selection).await?;
    let every: Vec<NodeFacts> = all_nodes.iter().map(NodeFacts::from_node).collect();
    let run_id = run_id();
    let opts = plan::Options {
        helper_namespace: &args.helper_namespace,
        helper_image: args.helper_image.as_deref(),
        skip_unready: args.skip_unready,
        run_id: &run_id,
        named,
        runtime: args.runtime,
        runtime_endpoint: args.runtime_endpoint.as_deref(),
    };
    // One plan per image, all whole before anything changes.
    let plans = images
        .iter()
        .map(|image| Plan::build(image, chosen.clone(), &every, &opts))
        .collect::<Result<Vec<Plan>>>()?;
    let planned = loading_all(&plans);
    let placement = stage.as_ref().map(|s| s.check(&planned));
    if let Some(Ok(warnings)) = &placement {
        for warning in warnings {
            eprintln!("warning: {warning}");
        }
    }
    if let Some(mode) = args.dry_run {
        let placement_error = match placement {
            Some(Err(err)) => Some(format!("{err:#}")),
            _ => None,
        };
        let workloads = stage.as_ref().map(|s| (s, placement_error));
        return dry_run(
            &cluster.client,
            &summaries,
            &plans,
            workloads,
            mode,
            args.output,
        )
        .await;
    }
    for plan in &plans {
        if let Some(refusals) = plan.refusals() {
            bail!("nothing was changed; these nodes cannot be loaded:\n{refusals}");
        }
        if !plan.loads_any() && !plan.nodes.is_empty() && plan.skips_are_unfit() {
            bail!(
                "nothing was changed; no selected node can take this image:\n{}",
                plan.skips()
            );
        }
    }
    if let Some(Err(err)) = placement {
        return Err(err);
    }
    // Every plan has the run's id and helper namespace.
    let helper_namespace = args.helper_namespace.as_str();

    let progress = Progress::for_stderr();
    let run = load::Run {
        client: cluster.client.clone(),
        force: args.force,
        parallel: usize::from(args.parallel),
        helper_timeout: args.helper_timeout,
        retries: args.retries,
        relay: args.relay == Relay::Auto,
        compress: args.compress == Compress::Auto,
        pipeline: args.pipeline == Pipeline::Auto,
        pin: args.pin,
        run_id: run_id.clone(),
        cancel: CancellationToken::new(),
        stopped_by: Default::default(),
        progress: progress.clone(),
    };
    let loads: Vec<load::Image<'_>> = images
        .iter()
        .zip(&plans)
        .map(|(archive, plan)| load::Image { archive, plan })
        .collect();
    let configmaps: Api<ConfigMap> = Api::namespaced(cluster.client.clone(), helper_namespace);
    let mut signals = Signals::listen();
    // The run's heartbeat first: from now on `cleanup` run by anyone leaves this run alone.
    let leases: Api<Lease> = Api::namespaced(cluster.client.clone(), helper_namespace);
    let heartbeat = match Heartbeat::start(&leases, &run_id).await {
        Ok(heartbeat) => Some(heartbeat),
        Err(warning) => {
            progress.println(&format!("warning: {warning}"));
            None
        }
    };
    let mut architectures: Vec<String> = plans.iter().flat_map(Plan::architectures).collect();
    architectures.sort();
    architectures.dedup();
    // What has been loaded so far, one entry per image (the signal branch reports it).
    let done: std::sync::Mutex<Vec<Vec<load::NodeResult>>> = Default::default();
    let execute = async {
        // The agent's ConfigMaps first: the helper pods mount them.
        agent::create_configmaps(&configmaps, &run_id, &architectures, false).await?;
        // One helper per node for every image; the images one after another (load.rs).
        // Not stopped early on cancel: a cancelled execute creates nothing more and gives
        // each node and image its row naming the step, so the report has every one.
        *done.lock().unwrap() = load::execute(&run, &loads).await;
        Ok::<_, anyhow::Error>(())
    };
    tokio::pin!(execute);
    let executed = tokio::select! {
        executed = &mut execute => executed,
        stop = stopping(&mut signals, &deadline) => {
            progress.println(&format!(
                "{}: stopping and deleting helper pods (interrupt to quit at once) …",
                stop.why
            ));
            run.stop(&stop.why);
            // Every node task deletes the pod it created; then sweep by run label for any
            // delete that failed.
            let finished = tokio::select! {
                executed = &mut execute => Some(executed),
                _ = signals.recv() => None,
            };
            let unwound = finished.is_some();
            let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), helper_namespace);
            let run = Runs::One(&run_id);
            if unwound {
                let _ = helper::sweep(&pods, run, Duration::ZERO).await;
                let _ = agent::delete_configmaps(&configmaps, run).await;
            }
            // Gone either way: what is left is for `cleanup`, which must not wait for the
            // Lease to expire.
            if let Some(heartbeat) = heartbeat {
                heartbeat.stop().await;
            }
            let mut left = helper::list(&pods, run).await.unwrap_or_default();
            left.extend(
                agent::list_configmaps(&configmaps, run)
                    .await
                    .unwrap_or_default()
                    .into_iter()
                    .map(|c| format!("configmap/{c}")),
            );
            // The rows of a run out of time say which step each node was in.
            if let (None, Some(Ok(()))) = (stop.code, &finished) {
                let done = std::mem::take(&mut *done.lock().unwrap());
                print_stdout(&render(args.output, &run_id, &summaries, &done, &[]));
            }
            let ended = if stop.code.is_some() { "interrupted" } else { "stopped" };
            if left.is_empty() {
                eprintln!("{ended}; no helper pod left behind");
            } else {
                eprintln!(
                    "{ended}; helper objects remain: {}\nrun `kubectl sideload cleanup \
                     --helper-namespace {}`",
                    left.join(", "),
                    helper_namespace
                );
            }
            return match stop.code {
                Some(code) => Ok(ExitCode::from(code)),
                None => Err(anyhow!(
                    "{} before every node was loaded; no workload was patched",
                    stop.why
                )),
            };
        }
    };
    let left = reach::end_run(&cluster.client, helper_namespace, &run_id, heartbeat).await;
    executed?;
    let results = std::mem::take(&mut *done.lock().unwrap());
    reach::warn_left(&left, helper_namespace);

    let failed = results
        .iter()
        .flatten()
        .filter(|r| r.status == Status::Failed)
        .count();
    let mut workload_results = Vec::new();
    if let Some(mut stage) = stage {
        // Nodes that hold every image now: loaded, or found already there.
        let covered = covered_by_all(&plans, &results);
        stage.records = label_records(&plans, &covered);
        // Plain lines: the load bars are finished, and redrawing them (MultiProgress::println)
        // around the prompt would garble it.
        let say = |line: &str| eprintln!("{line}");
        if let Some(left) = deadline.left() {
            stage.opts.timeout = stage.opts.timeout.min(left);
        }
        workload_results = tokio::select! {
            results = stage.apply(&cluster.client, &covered, failed, &say) => results,
            stop = stopping(&mut signals, &deadline) => {
                eprintln!(
                    "{}: stopped; a workload already patched keeps rolling out (see \
                     `kubectl rollout status`)",
                    stop.why
                );
                return match stop.code {
                    Some(code) => Ok(ExitCode::from(code)),
                    None => Err(anyhow!("{} while patching or waiting for the workloads", stop.why)),
                };
            }
        };
    }

    print_stdout(&render(
        args.output,
        &run_id,
        &summaries,
        &results,
        &workload_results,
    ));
    let workloads_failed = workload_results
        .iter()
        .filter(|w| w.error.is_some())
        .count();
    if failed > 0 {
        let rows: usize = results.iter().map(Vec::len).sum();
        if results.len() > 1 {
            eprintln!("error: {failed} of {rows} node and image row(s) failed");
        } else {
            eprintln!("error: {failed} of {rows} node(s) failed");
        }
    }
    if workloads_failed > 0 {
        eprintln!(
            "error: {workloads_failed} of {} workload(s) not patched or not rolled out",
            workload_results.len()
        );
    }
    if failed > 0 || workloads_failed > 0 {
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// The nodes that hold every image of the run now (each loaded there, or found already
/// there): the ones a workload's pods can run on.
fn covered_by_all(plans: &[Plan], results: &[Vec<load::NodeResult>]) -> BTreeSet<String> {
    in_every(plans.iter().zip(results).map(|(plan, results)| {
        plan.nodes
            .iter()
            .zip(results)
            .filter(|(n, r)| {
                matches!(n.decision, Decision::Load { .. }) && r.status != Status::Failed
            })
            .map(|(_, r)| r.name.clone())
            .collect()
    }))
}

/// What a `--constrain` label promises on each of `covered`: every image of the run, by
/// its names and its ID for the node's platform.
fn label_records(
    plans: &[Plan],
    covered: &BTreeSet<String>,
) -> BTreeMap<String, workload::labels::Record> {
    let mut records: BTreeMap<String, workload::labels::Record> = BTreeMap::new();
    for plan in plans {
        for n in plan.nodes.iter().filter(|n| covered.contains(&n.node.name)) {
            if let Decision::Load { wanted, .. } = &n.decision {
                records.entry(n.node.name.clone()).or_default().images.push(
                    workload::labels::Promised {
                        refs: wanted.refs.clone(),
                        id: wanted.config.clone(),
                    },
                );
            }
        }
    }
    records
}

/// The node names in every one of `sets`, one set per image of the run (none without).
fn in_every(sets: impl IntoIterator<Item = BTreeSet<String>>) -> BTreeSet<String> {
    sets.into_iter()
        .reduce(|all, here| all.intersection(&here).cloned().collect())
        .unwrap_or_default()
}

/// The run's report in the format asked for.
fn render(
    output: Output,
    run: &str,
    summaries: &[&Summary],
    results: &[Vec<load::NodeResult>],
    workloads: &[workload::WorkloadResult],
) -> String {
    // One entry per image of the run, whatever was reached: the document's shape follows
    // the command line, not how far the run got.
    let images: Vec<(&Summary, &[load::NodeResult])> = summaries
        .iter()
        .enumerate()
        .map(|(i, s)| (*s, results.get(i).map_or(&[][..], Vec::as_slice)))
        .collect();
    match output {
        Output::Json => report::json(run, &images, workloads),
        // The same document as -o json, in YAML: one schema for scripts either way.
        Output::Yaml => {
            let json = report::json(run, &images, workloads);
            serde_json::from_str::<serde_json::Value>(&json)
                .ok()
                .and_then(|v| serde_yaml::to_string(&v).ok())
                .unwrap_or(json)
        }
        Output::Table => report::table(&images, workloads),
    }
}

/// `--timeout`: when the whole run must be over.
struct Deadline {
    limit: Option<Duration>,
    at: Option<tokio::time::Instant>,
}

impl Deadline {
    fn new(limit: Option<Duration>) -> Self {
        let limit = limit.filter(|d| !d.is_zero());
        Deadline {
            limit,
            at: limit.map(|d| tokio::time::Instant::now() + d),
        }
    }

    /// Time left, if there is a limit.
    fn left(&self) -> Option<Duration> {
        self.at
            .map(|at| at.saturating_duration_since(tokio::time::Instant::now()))
    }
}

/// Why a run stops early: a signal (with the exit code shells report for it) or --timeout.
struct Stop {
    why: String,
    code: Option<u8>,
}

/// Resolves on the first signal, or when the deadline passes.
async fn stopping(signals: &mut Signals, deadline: &Deadline) -> Stop {
    let passed = async {
        match deadline.at {
            Some(at) => tokio::time::sleep_until(at).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        (signal, code) = signals.recv() => Stop { why: signal.to_string(), code: Some(code) },
        () = passed => Stop {
            why: format!(
                "--timeout {} passed",
                crate::cli::format_duration(deadline.limit.unwrap_or_default())
            ),
            code: None,
        },
    }
}

/// The nodes every plan will load (the `Load` decisions all plans share).
fn loading_all(plans: &[Plan]) -> BTreeSet<String> {
    in_every(plans.iter().map(loading))
}

/// The nodes the plan will load (its `Load` decisions).
fn loading(plan: &Plan) -> BTreeSet<String> {
    plan.nodes
        .iter()
        .filter(|n| matches!(n.decision, Decision::Load { .. }))
        .map(|n| n.node.name.clone())
        .collect()
}

/// Resolves `--workload`s (reads only) and lists the nodes their placement is judged on.
///
/// With several images, each container gets the image of its repository, and the
/// `--constrain` label stands for "holds every image of this run".
async fn workload_stage(
    args: &LoadArgs,
    cluster: &client::Cluster,
    summaries: &[&Summary],
    all_nodes: &[Node],
) -> Result<Option<workload::Stage>> {
    if args.workload.is_empty() {
        return Ok(None);
    }
    if let Some(unnamed) = summaries.iter().find(|s| s.refs.is_empty()) {
        bail!(
            "the archive's image {} has no name, so there is no ref to set in --workload; \
             save it with a tag, e.g. `docker save app:v2 -o app.tar`",
            unnamed.digest
        );
    }
    let refs: Vec<String> = summaries.iter().flat_map(|s| s.refs.clone()).collect();
    let workloads = workload::resolve(
        &cluster.client,
        &cluster.namespace,
        &args.workload,
        &refs,
        &args.container,
        args.pull_policy,
    )
    .await?;
    let digest = match summaries {
        [one] => one.digest.clone(),
        several => {
            use sha2::Digest;
            let joined: Vec<&str> = several.iter().map(|s| s.digest.as_str()).collect();
            format!(
                "sha256:{}",
                hex::encode(sha2::Sha256::digest(joined.join("\n").as_bytes()))
            )
        }
    };
    Ok(Some(workload::Stage {
        workloads,
        nodes: all_nodes.to_vec(),
        label_key: workload::placement::label_key(&digest),
        records: BTreeMap::new(),
        opts: workload::Options {
            constrain: args.constrain,
            allow_partial: args.allow_partial,
            yes: args.yes,
            wait: args.wait,
            timeout: args.rollout_timeout,
            archive: args.archives.join(" "),
        },
    }))
}

async fn dry_run(
    client: &kube::Client,
    summaries: &[&Summary],
    plans: &[Plan],
    workloads: Option<(&workload::Stage, Option<String>)>,
    mode: DryRun,
    output: Output,
) -> Result<ExitCode> {
    let planned = loading_all(plans);
    let mut admission_errors = Vec::new();
    let mut patch_errors = Vec::new();
    if mode == DryRun::Server
        && let Some((stage, _)) = &workloads
    {
        patch_errors = stage.server_dry_run(client).await;
    }
    if mode == DryRun::Server
        && let Some(first) = plans.first()
    {
        let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), &first.helper_namespace);
        let mut architectures: Vec<String> = plans.iter().flat_map(Plan::architectures).collect();
        architectures.sort();
        architectures.dedup();
        if let Err(err) =
            agent::create_configmaps(&configmaps, &first.run_id, &architectures, true).await
        {
            admission_errors.push(format!("  the agent's ConfigMap: {err:#}"));
        }
        // The pods of one image stand for every image's: they differ only in their names.
        let pods: Api<Pod> = Api::namespaced(client.clone(), &first.helper_namespace);
        for pod in first.pods() {
            if let Err(err) = helper::create(&pods, pod, true).await {
                let node = pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.node_name.clone())
                    .unwrap_or_default();
                admission_errors.push(format!("  {node}: {err:#}"));
            }
        }
    }
    let openshift = client::is_openshift(client).await;
    let text = match output {
        Output::Table => {
            let mut text = summaries
                .iter()
                .zip(plans)
                .map(|(summary, plan)| report::plan_table(summary, plan))
                .collect::<Vec<_>>()
                .join("\n");
            if openshift {
                text.push_str(
                    "OpenShift: the helper pods need the privileged SCC for the helper \
                     namespace's default service account (plugin-manifest/openshift-scc.yaml)\n",
                );
            }
            if let Some((stage, _)) = &workloads {
                text.push_str(&stage.dry_run_text(&planned));
            }
            text
        }
        Output::Json => {
            let workloads = workloads.as_ref().map(|(s, _)| s.dry_run_json(&planned));
            let doc = match (summaries, plans) {
                ([summary], [plan]) => serde_json::json!({
                    "image": summary,
                    "openshift": openshift,
                    "plan": plan,
                    "workloads": workloads,
                }),
                _ => serde_json::json!({
                    "images": summaries
                        .iter()
                        .zip(plans)
                        .map(|(summary, plan)| serde_json::json!({"image": summary, "plan": plan}))
                        .collect::<Vec<_>>(),
                    "openshift": openshift,
                    "workloads": workloads,
                }),
            };
            serde_json::to_string_pretty(&doc)?
        }
        Output::Yaml => plans
            .iter()
            .flat_map(Plan::pods)
            .map(|pod| serde_yaml::to_string(pod).map(|y| format!("---\n{y}")))
            .collect::<Result<String, _>>()?,
    };
    print_stdout(&text);
    let mut problems = Vec::new();
    for (summary, plan) in summaries.iter().zip(plans) {
        let which = if plans.len() > 1 {
            format!(" ({})", describe_image(summary))
        } else {
            String::new()
        };
        if let Some(refusals) = plan.refusals() {
            problems.push(format!("these nodes cannot be loaded{which}:\n{refusals}"));
        }
        if !plan.loads_any() && plan.skips_are_unfit() {
            problems.push(format!(
                "no selected node can take this image{which}:\n{}",
                plan.skips()
            ));
        }
    }
    if !admission_errors.is_empty() {
        problems.push(format!(
            "the API server would reject these helper pods:\n{}",
            admission_errors.join("\n")
        ));
    }
    if let Some((_, Some(placement_error))) = &workloads {
        problems.push(placement_error.clone());
    }
    if !patch_errors.is_empty() {
        problems.push(format!(
            "the API server would reject these workload patches:\n{}",
            patch_errors.join("\n")
        ));
    }
    if problems.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    bail!(
        "dry run found problems (nothing was changed): {}",
        problems.join("\n")
    )
}

/// What an archive holds: one summary, or (for an archive of several images) a list.
async fn inspect(args: InspectArgs) -> Result<ExitCode> {
    let images = open_images(&args.archive).await?;
    let summaries: Vec<&Summary> = images.iter().map(Archive::summary).collect();
    let text = match (args.output, summaries.as_slice()) {
        (Output::Json, [one]) => serde_json::to_string_pretty(one)?,
        (Output::Json, several) => serde_json::to_string_pretty(several)?,
        (Output::Yaml, [one]) => serde_yaml::to_string(one)?,
        (Output::Yaml, several) => serde_yaml::to_string(several)?,
        (Output::Table, several) => several
            .iter()
            .map(|s| inspect_table(s))
            .collect::<Vec<_>>()
            .join("\n"),
    };
    print_stdout(&text);
    Ok(ExitCode::SUCCESS)
}

fn inspect_table(summary: &Summary) -> String {
    let mut out = format!(
        "format:  {}{}\nrefs:    {}\ndigest:  {}\nsize:    {}\n",
        serde_json::to_value(summary.format)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default(),
        if summary.compressed { " (gzip)" } else { "" },
        if summary.refs.is_empty() {
            "(none)".to_string()
        } else {
            summary.refs.join(", ")
        },
        summary.digest,
        report::human_bytes(summary.size),
    );
    for image in &summary.images {
        let layer_bytes: u64 = image.layers.iter().map(|l| l.size).sum();
        out.push_str(&format!(
            "platform {}: manifest {}, config {}, {} layer(s), {}{}\n",
            image.platform,
            image.manifest.digest,
            image.config.digest,
            image.layers.len(),
            report::human_bytes(layer_bytes),
            if image.complete {
                String::new()
            } else {
                format!(", INCOMPLETE ({} blob(s) missing)", image.missing.len())
            }
        ));
    }
    out
}

async fn cleanup(kube: &KubeArgs, args: CleanupArgs) -> Result<ExitCode> {
    let cluster = client::connect(kube).await?;
    let namespace = &args.helper_namespace;
    // Runs still renewing their Lease are in progress (another user's, or another terminal's):
    // their objects are left alone.
    let leases: Api<Lease> = Api::namespaced(cluster.client.clone(), namespace);
    let liveness = lease::liveness(&leases)
        .await
        .context("cannot tell which runs are still in progress, so nothing was deleted")?;
    let live: Vec<String> = liveness.live.keys().cloned().collect();
    let runs = Runs::AllBut(&live);
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), namespace);
    let names = if args.dry_run {
        helper::list(&pods, runs).await?
    } else {
        // A run killed a moment ago may still have a create in the API's hands: sweep
        // until the namespace stays empty for a second.
        helper::sweep(&pods, runs, Duration::from_secs(1)).await?
    };
    let configmaps: Api<ConfigMap> = Api::namespaced(cluster.client.clone(), namespace);
    let maps = if args.dry_run {
        agent::list_configmaps(&configmaps, runs).await?
    } else {
        agent::delete_configmaps(&configmaps, runs).await?
    };
    if !args.dry_run {
        lease::delete(&leases, &liveness.expired).await?;
    }
    for (run, ago) in &liveness.live {
        print_stdout(&format!(
            "run {run} is in progress (its lease was renewed {ago} s ago): left alone; a run \
             counts as ended {} s after its last renewal\n",
            lease::DURATION.as_secs()
        ));
    }
    if names.is_empty() && maps.is_empty() && liveness.live.is_empty() {
        print_stdout(&format!("no helper pods in namespace {namespace}\n"));
    }
    let objects = names
        .iter()
        .map(|n| format!("pod/{n}"))
        .chain(maps.iter().map(|m| format!("configmap/{m}")))
        .chain(liveness.expired.iter().map(|l| format!("lease/{l}")));
    for object in objects {
        if args.dry_run {
            print_stdout(&format!("{object} would be deleted (dry run)\n"));
        } else {
            print_stdout(&format!("{object} deleted\n"));
        }
    }
    if args.labels {
        let labelled = workload::node_labels(&cluster.client, !args.dry_run).await?;
        if labelled.is_empty() {
            print_stdout("no node carries a sideload.dev/img-* label\n");
        }
        for (node, keys) in &labelled {
            for key in keys {
                let done = if args.dry_run {
                    "would be removed (dry run)"
                } else {
                    "removed"
                };
                print_stdout(&format!("node/{node} label {key} {done}\n"));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn completion(args: CompletionArgs) -> Result<ExitCode> {
    let mut command = Cli::command();
    let mut out = Vec::new();
    clap_complete::generate(args.shell, &mut command, "kubectl-sideload", &mut out);
    print_stdout(&String::from_utf8_lossy(&out));
    Ok(ExitCode::SUCCESS)
}

/// Prints results; a closed pipe (`| head`) is not an error worth reporting.
pub fn print_stdout(text: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(text.as_bytes());
    if !text.ends_with('\n') {
        let _ = stdout.write_all(b"\n");
    }
    let _ = stdout.flush();
}

/// A per-run secret (256 bits from the OS, hex) that relay connections between helper
/// pods must present.
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    // The OS's random source failing is not something a user can act on; a token from the
    // fallback is still unguessable by anyone who cannot read the helper pods' execs.
    if getrandom::fill(&mut bytes).is_err() {
        let fallback = format!("{}{}", run_id(), run_id());
        bytes[..fallback.len().min(32)]
            .copy_from_slice(&fallback.as_bytes()[..fallback.len().min(32)]);
    }
    hex::encode(bytes)
}

/// A short random id for this run's helper pods (`[a-z0-9]{6}`), without a rand crate:
/// std's RandomState is seeded from the OS.
pub fn run_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    hasher.write_u32(std::process::id());
    let mut n = hasher.finish();
    let alphabet = b"abcdefghijklmnopqrstuvwxyz0123456789";
    (0..6)
        .map(|_| {
            let c = alphabet[(n % 36) as usize] as char;
            n /= 36;
            c
        })
        .collect()
}

/// Ctrl-C, SIGTERM and SIGHUP (the terminal closed, an ssh session dropped), listened for
/// from creation on: created just before the first object of the run, so no signal between
/// "pod created" and "select polled" escapes cleanup.
pub struct Signals {
    #[cfg(unix)]
    interrupt: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    terminate: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    hangup: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    pub fn listen() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Signals {
                interrupt: signal(SignalKind::interrupt()).ok(),
                terminate: signal(SignalKind::terminate()).ok(),
                hangup: signal(SignalKind::hangup()).ok(),
            }
        }
        #[cfg(not(unix))]
        Signals {}
    }

    /// Resolves on the first signal: its name, and the exit code shells report for a
    /// process it ended (128 + its number).
    pub async fn recv(&mut self) -> (&'static str, u8) {
        #[cfg(unix)]
        {
            async fn next(s: &mut Option<tokio::signal::unix::Signal>) {
                match s {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            }
            tokio::select! {
                _ = next(&mut self.interrupt) => ("interrupt", 130),
                _ = next(&mut self.terminate) => ("terminated", 143),
                _ = next(&mut self.hangup) => ("hangup", 129),
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            ("interrupt", 130)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_nodes_in_every_images_set_count() {
        let set = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<BTreeSet<_>>();
        assert_eq!(
            in_every([
                set(&["a", "b", "c"]),
                set(&["b", "c"]),
                set(&["c", "b", "d"])
            ]),
            set(&["b", "c"])
        );
        assert_eq!(in_every([set(&["a"])]), set(&["a"]));
        assert!(in_every(Vec::new()).is_empty());
    }

    #[test]
    fn run_ids_are_short_label_safe_and_differ() {
        let a = run_id();
        let b = run_id();
        assert_eq!(a.len(), 6);
        assert!(
            a.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        );
        assert_ne!(a, b);
    }
}
