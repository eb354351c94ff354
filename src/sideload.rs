//! The load command, as one pipeline: arguments → inputs (the images, the cluster's nodes,
//! the `--workload`s read) → the run decided whole (a plan per image and the workload
//! changes; `--dry-run` prints it and stops) → the nodes loaded inside the run's lifecycle
//! (load.rs) → the workloads patched and rolled out (workload/) → the report. Nothing
//! touches the cluster before the arguments are whole and the archives read; no pod starts
//! before every plan is whole; every pod created is deleted again, also on a signal.

use crate::app::say;
use std::collections::{BTreeMap, BTreeSet};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, anyhow, bail};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod};
use kube::api::Api;
use tokio_util::sync::CancellationToken;

use crate::app::{Signals, open_images, print_stdout, run_id};
use crate::archive::{Archive, Summary, reference};
use crate::cli::{Compress, DryRun, KubeArgs, LoadArgs, NodeSelection, Output, Pipeline, Relay};
use crate::cluster::helper::Runs;
use crate::cluster::lease::Heartbeat;
use crate::cluster::nodes::{self, NodeFacts};
use crate::cluster::{agent, client, helper};
use crate::load::{self, Status};
use crate::plan::{self, Decision, Plan};
use crate::progress::Progress;
use crate::reach;
use crate::report;
use crate::workload;

/// A load, stage by stage: the inputs (images, cluster facts, workloads) are read, the run
/// is decided whole (a plan per image, the workload changes), and only then do pods start;
/// the workloads change only after every node holds every image; the report comes last.
pub async fn run(args: LoadArgs, kube: &KubeArgs) -> Result<ExitCode> {
    // --timeout counts from here: the archive and the cluster reads are part of the run.
    let deadline = Deadline::new(args.timeout);
    let (inputs, workloads) = Inputs::read(&args, kube).await?;
    let decided = Decided::plan(&args, &inputs, workloads)?;
    if let Some(mode) = args.dry_run {
        return dry_run(&inputs, &decided, mode, args.output).await;
    }
    decided.go_ahead()?;
    // From the first object the run creates on, a signal unwinds it.
    let mut signals = Signals::listen();
    let loaded = match load_nodes(&args, &inputs, &decided, &mut signals, &deadline).await? {
        Loaded::Rows(rows) => rows,
        Loaded::Stopped(code) => return Ok(code),
    };
    let workloads = match roll_out(&inputs, decided, &loaded, &mut signals, &deadline).await? {
        RolledOut::Results(results) => results,
        RolledOut::Stopped(code) => return Ok(code),
    };
    Ok(report(&args, &inputs, &loaded, &workloads))
}

/// What a load reads before it decides anything.
struct Inputs {
    /// The images, in the order given (an archive may hold several).
    images: Vec<Arc<Archive>>,
    cluster: client::Cluster,
    /// Every node of the cluster, and the ones selected to load.
    all_nodes: Vec<Node>,
    chosen: Vec<NodeFacts>,
    /// The user named the nodes: a node that cannot take an image is an error then; "all",
    /// a selector or the nodes DaemonSets run on skip it and load the rest.
    named: bool,
    /// The run's id: its pods, ConfigMaps, Lease and staging images carry it.
    run_id: String,
}

impl Inputs {
    /// The inputs, and the `--workload`s read (nothing patched).
    async fn read(args: &LoadArgs, kube: &KubeArgs) -> Result<(Inputs, Option<workload::Stage>)> {
        let mut selection = args.node_selection().map_err(|e| anyhow!(e))?;
        let named = matches!(selection, NodeSelection::Names(_));
        let cluster_and_nodes = async {
            let cluster = client::connect(kube).await?;
            let all_nodes = nodes::list_all(&cluster.client).await?;
            anyhow::Ok((cluster, all_nodes))
        };
        // The archive is read (and hashed: seconds for a large or gzip'd one, on a thread of
        // its own) while the client connects and lists the nodes, which an exec credential
        // plugin (a cloud CLI's get-token) can make as slow. Not when an archive is `-`: an
        // interactive credential plugin inherits our stdin and would read the archive.
        let (images, (cluster, all_nodes)) = if args.archives.iter().any(|a| a == "-") {
            let images = open_inputs(args).await?;
            (images, cluster_and_nodes.await?)
        } else {
            // An archive's error wins over the cluster's, as when they ran in turn: the
            // archive is what the user can fix without a cluster.
            let images = open_inputs(args);
            tokio::pin!(images, cluster_and_nodes);
            tokio::select! {
                images = &mut images => (images?, cluster_and_nodes.await?),
                cluster = &mut cluster_and_nodes => (images.await?, cluster?),
            }
        };
        // Workloads before pods: a missing workload or container fails with nothing
        // changed, and DaemonSets decide the default nodes.
        let summaries: Vec<&Summary> = images.iter().map(|i| i.summary()).collect();
        let stage = workload_stage(args, &cluster, &summaries, &all_nodes).await?;
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
        let inputs = Inputs {
            images,
            cluster,
            all_nodes,
            chosen,
            named,
            run_id: run_id(),
        };
        Ok((inputs, stage))
    }

    fn summaries(&self) -> Vec<&Summary> {
        self.images.iter().map(|i| i.summary()).collect()
    }
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

/// `--tag`: the names to import the image under instead of the archive's. Without it,
/// warns about `localhost/` names: podman gives short names that prefix, and pods asking
/// for `app:v2` (docker.io/library/app:v2 to the kubelet) never find `localhost/app:v2`.
fn name_image(archive: &mut Archive, tags: &[String]) -> Result<()> {
    if tags.is_empty() {
        for r in &archive.summary().refs {
            if let Some(short) = r.strip_prefix("localhost/") {
                say!(
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

/// An image's names (or its digest, if it has none) for messages.
fn describe_image(summary: &Summary) -> String {
    if summary.refs.is_empty() {
        format!("untagged {}", summary.digest)
    } else {
        summary.refs.join(", ")
    }
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

/// The run, decided whole before anything changes: one plan per image (every node's
/// decision, its helper pod), and the workload changes with where their pods can go.
struct Decided {
    plans: Vec<Plan>,
    stage: Option<workload::Stage>,
    /// Why no loaded node could run a workload's pods, if so: then nothing is changed.
    placement_error: Option<anyhow::Error>,
}

impl Decided {
    fn plan(args: &LoadArgs, inputs: &Inputs, stage: Option<workload::Stage>) -> Result<Decided> {
        let every: Vec<NodeFacts> = inputs.all_nodes.iter().map(NodeFacts::from_node).collect();
        let changing: Vec<String> = inputs
            .images
            .iter()
            .flat_map(|image| image.summary().refs.iter().cloned())
            .collect();
        let opts = plan::Options {
            helper_namespace: &args.helper_namespace,
            helper_image: args.helper_image.as_deref(),
            skip_unready: args.skip_unready,
            run_id: &inputs.run_id,
            named: inputs.named,
            runtime: args.runtime,
            runtime_endpoint: args.runtime_endpoint.as_deref(),
            changing: &changing,
        };
        let plans = inputs
            .images
            .iter()
            .map(|image| Plan::build(image, inputs.chosen.clone(), &every, &opts))
            .collect::<Result<Vec<Plan>>>()?;
        let mut placement_error = None;
        if let Some(stage) = &stage {
            match stage.check(&loading_all(&plans)) {
                Ok(warnings) => {
                    for warning in warnings {
                        say!("warning: {warning}");
                    }
                }
                Err(err) => placement_error = Some(err),
            }
        }
        Ok(Decided {
            plans,
            stage,
            placement_error,
        })
    }

    /// Whether the run may change anything: no node refused, some node can take each
    /// image, and the workloads' pods have somewhere to run.
    fn go_ahead(&self) -> Result<()> {
        for plan in &self.plans {
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
        match &self.placement_error {
            Some(err) => Err(anyhow!("{err:#}")),
            None => Ok(()),
        }
    }

    /// The node architectures to load: one agent ConfigMap each.
    fn architectures(&self) -> Vec<String> {
        let mut architectures: Vec<String> =
            self.plans.iter().flat_map(Plan::architectures).collect();
        architectures.sort();
        architectures.dedup();
        architectures
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

/// `--dry-run`: the decided run printed, nothing changed; `=server` also submits the helper
/// pods, the agent's ConfigMap and the patches as server-side dry runs.
async fn dry_run(
    inputs: &Inputs,
    decided: &Decided,
    mode: DryRun,
    output: Output,
) -> Result<ExitCode> {
    let client = &inputs.cluster.client;
    let summaries = inputs.summaries();
    let summaries = summaries.as_slice();
    let plans = decided.plans.as_slice();
    let placement_error = decided.placement_error.as_ref().map(|e| format!("{e:#}"));
    let workloads = decided.stage.as_ref().map(|s| (s, placement_error));
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
        let architectures = decided.architectures();
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

/// How the node stage ended: rows per image and node, or stopped (by a signal, with the
/// exit code shells report for it).
enum Loaded {
    Rows(Vec<Vec<load::NodeResult>>),
    Stopped(ExitCode),
}

/// The nodes loaded, inside the run's lifecycle: its Lease (so `cleanup` by anyone leaves
/// it alone) and the agent's ConfigMaps first, every helper pod and ConfigMap removed last,
/// also when a signal or `--timeout` stops it.
async fn load_nodes(
    args: &LoadArgs,
    inputs: &Inputs,
    decided: &Decided,
    signals: &mut Signals,
    deadline: &Deadline,
) -> Result<Loaded> {
    let client = &inputs.cluster.client;
    let run_id = inputs.run_id.as_str();
    let helper_namespace = args.helper_namespace.as_str();
    let progress = Progress::for_stderr();
    let run = load::Run {
        client: client.clone(),
        force: args.force,
        parallel: usize::from(args.parallel),
        helper_timeout: args.helper_timeout,
        retries: args.retries,
        relay: args.relay == Relay::Auto,
        compress: args.compress == Compress::Auto,
        pipeline: args.pipeline == Pipeline::Auto,
        pin: args.pin,
        run_id: run_id.to_string(),
        cancel: CancellationToken::new(),
        stopped_by: Default::default(),
        progress: progress.clone(),
    };
    let loads: Vec<load::Image<'_>> = inputs
        .images
        .iter()
        .zip(&decided.plans)
        .map(|(archive, plan)| load::Image { archive, plan })
        .collect();
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), helper_namespace);
    // The run's heartbeat first: from now on `cleanup` run by anyone leaves this run alone.
    let leases: Api<Lease> = Api::namespaced(client.clone(), helper_namespace);
    let heartbeat = match Heartbeat::start(&leases, run_id).await {
        Ok(heartbeat) => Some(heartbeat),
        Err(warning) => {
            progress.println(&format!("warning: {warning}"));
            None
        }
    };
    let architectures = decided.architectures();
    // What has been loaded, one entry per image (the signal branch reports it).
    let done: std::sync::Mutex<Vec<Vec<load::NodeResult>>> = Default::default();
    let execute = async {
        // The agent's ConfigMaps first: the helper pods mount them.
        agent::create_configmaps(&configmaps, run_id, &architectures, false).await?;
        // One helper per node for every image; the images one after another (load.rs).
        // Not stopped early on cancel: a cancelled execute creates nothing more and gives
        // each node and image its row naming the step, so the report has every one.
        // Beside it, what runs that died long ago left behind is removed.
        let (results, tidied) = tokio::join!(
            load::execute(&run, &loads),
            reach::tidy_dead_runs(client, helper_namespace)
        );
        *done.lock().unwrap() = results;
        for line in tidied {
            progress.println(&line);
        }
        Ok::<_, anyhow::Error>(())
    };
    tokio::pin!(execute);
    let executed = tokio::select! {
        executed = &mut execute => executed,
        stop = stopping(signals, deadline) => {
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
            let pods: Api<Pod> = Api::namespaced(client.clone(), helper_namespace);
            let run = Runs::One(run_id);
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
                print_stdout(&render(args.output, run_id, &inputs.summaries(), &done, &[]));
            }
            let ended = if stop.code.is_some() { "interrupted" } else { "stopped" };
            if left.is_empty() {
                say!("{ended}; no helper pod left behind");
            } else {
                say!(
                    "{ended}; helper objects remain: {}\nrun `kubectl sideload cleanup \
                     --helper-namespace {}`",
                    left.join(", "),
                    helper_namespace
                );
            }
            return match stop.code {
                Some(code) => Ok(Loaded::Stopped(ExitCode::from(code))),
                None => Err(anyhow!(
                    "{} before every node was loaded; no workload was patched",
                    stop.why
                )),
            };
        }
    };
    let left = reach::end_run(client, helper_namespace, run_id, heartbeat).await;
    executed?;
    reach::warn_left(&left, helper_namespace);
    Ok(Loaded::Rows(std::mem::take(&mut *done.lock().unwrap())))
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

/// How the workload stage ended: a result per workload, or stopped by a signal.
enum RolledOut {
    Results(Vec<workload::WorkloadResult>),
    Stopped(ExitCode),
}

/// The workloads patched (only where every image reached every node their pods can use,
/// or as `--allow-partial` says) and their rollouts waited for.
async fn roll_out(
    inputs: &Inputs,
    decided: Decided,
    loaded: &[Vec<load::NodeResult>],
    signals: &mut Signals,
    deadline: &Deadline,
) -> Result<RolledOut> {
    let Some(mut stage) = decided.stage else {
        return Ok(RolledOut::Results(Vec::new()));
    };
    let failed = failed_rows(loaded);
    // Nodes that hold every image now: loaded, or found already there.
    let covered = covered_by_all(&decided.plans, loaded);
    stage.records = label_records(&decided.plans, &covered);
    // Plain lines: the load bars are finished, and redrawing them (MultiProgress::println)
    // around the prompt would garble it.
    let say = |line: &str| say!("{line}");
    if let Some(left) = deadline.left() {
        stage.opts.timeout = stage.opts.timeout.min(left);
    }
    tokio::select! {
        results = stage.apply(&inputs.cluster.client, &covered, failed, &say) => Ok(RolledOut::Results(results)),
        stop = stopping(signals, deadline) => {
            say!(
                "{}: stopped; a workload already patched keeps rolling out (see \
                 `kubectl rollout status`)",
                stop.why
            );
            match stop.code {
                Some(code) => Ok(RolledOut::Stopped(ExitCode::from(code))),
                None => Err(anyhow!("{} while patching or waiting for the workloads", stop.why)),
            }
        }
    }
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

/// The node names in every one of `sets`, one set per image of the run (none without).
fn in_every(sets: impl IntoIterator<Item = BTreeSet<String>>) -> BTreeSet<String> {
    sets.into_iter()
        .reduce(|all, here| all.intersection(&here).cloned().collect())
        .unwrap_or_default()
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

/// Node and image rows that failed.
fn failed_rows(loaded: &[Vec<load::NodeResult>]) -> usize {
    loaded
        .iter()
        .flatten()
        .filter(|r| r.status == Status::Failed)
        .count()
}

/// The report on stdout, the failures counted on stderr, and the exit code.
fn report(
    args: &LoadArgs,
    inputs: &Inputs,
    loaded: &[Vec<load::NodeResult>],
    workloads: &[workload::WorkloadResult],
) -> ExitCode {
    print_stdout(&render(
        args.output,
        &inputs.run_id,
        &inputs.summaries(),
        loaded,
        workloads,
    ));
    let failed = failed_rows(loaded);
    let workloads_failed = workloads.iter().filter(|w| w.error.is_some()).count();
    if failed > 0 {
        let rows: usize = loaded.iter().map(Vec::len).sum();
        if loaded.len() > 1 {
            say!("error: {failed} of {rows} node and image row(s) failed");
        } else {
            say!("error: {failed} of {rows} node(s) failed");
        }
    }
    if workloads_failed > 0 {
        say!(
            "error: {workloads_failed} of {} workload(s) not patched or not rolled out",
            workloads.len()
        );
    }
    if failed > 0 || workloads_failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
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
}
