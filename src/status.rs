//! The `status`, `unpin` and `rm` commands: arguments → the nodes and what to ask of them → one
//! visit of every node (visit.rs) inside the run's lifecycle (its Lease, the agent's
//! ConfigMaps, every helper removed also on a signal) → a table or JSON.

use crate::app::say;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Result, anyhow, bail};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Node};
use kube::api::Api;
use tokio_util::sync::CancellationToken;

use crate::app::{Signals, open_archive, print_stdout, run_id};
use crate::archive::reference;
use crate::cli::{self, NodeArgs, Output, RmArgs, StatusArgs, UnpinArgs};
use crate::cluster::lease::Heartbeat;
use crate::cluster::nodes::{self, NodeFacts};
use crate::cluster::{agent, client};
use crate::model::NodeSelection;
use crate::plan::{self, Decision, LeftOut};
use crate::progress::Progress;
use crate::reach;
use crate::report::columns;
use crate::visit::{self, Job, LabelRow, NodeRow, Target, Visit};
use crate::workload::labels;

pub async fn status(kube: &cli::KubeArgs, args: StatusArgs) -> Result<ExitCode> {
    // Paths that exist and docker:// / podman:// images are archives; anything else must be
    // a ref.
    let mut refs = Vec::new();
    let mut archives = Vec::new();
    for image in &args.images {
        if std::path::Path::new(image).is_file() || crate::engine::Engine::parse(image).is_some() {
            archives.push(Arc::new(open_archive(image).await?));
        } else {
            refs.push(normalized(image)?);
        }
    }
    if archives.len() > 1 {
        bail!("status takes one archive at a time; refs may be added beside it");
    }
    let archive = archives.pop();
    if let Some(a) = &archive {
        for r in a.summary().refs.iter().rev() {
            if !refs.contains(r) {
                refs.insert(0, r.clone());
            }
        }
    }
    let visited =
        match visit_nodes(kube, &args.on, Job::Status { refs }, archive.as_deref()).await? {
            Outcome::Visited(visited) => visited,
            Outcome::Stopped(code) => return Ok(code),
        };
    let mut rows = visited.rows;
    for row in &mut rows {
        row.labels = judge_labels(row, &visited.nodes, false)
            .into_iter()
            .map(|(label, holds)| LabelRow {
                key: label,
                holds: holds.is_ok(),
                detail: holds.err(),
                action: None,
            })
            .collect();
    }
    print_stdout(&render(args.output, &rows, false)?);
    Ok(exit(&rows))
}

pub async fn unpin(kube: &cli::KubeArgs, args: UnpinArgs) -> Result<ExitCode> {
    let refs = args
        .refs
        .iter()
        .map(|r| normalized(r))
        .collect::<Result<Vec<_>>>()?;
    let rows = match visit_nodes(kube, &args.on, Job::Unpin { refs }, None).await? {
        Outcome::Visited(visited) => visited.rows,
        Outcome::Stopped(code) => return Ok(code),
    };
    print_stdout(&render(args.output, &rows, true)?);
    Ok(exit(&rows))
}

pub async fn remove(kube: &cli::KubeArgs, args: RmArgs) -> Result<ExitCode> {
    let refs = args
        .refs
        .iter()
        .map(|r| normalized(r))
        .collect::<Result<Vec<_>>>()?;
    let job = Job::Remove {
        refs,
        force: args.force,
        dry_run: args.dry_run,
    };
    let visited = match visit_nodes(kube, &args.on, job, None).await? {
        Outcome::Visited(visited) => visited,
        Outcome::Stopped(code) => return Ok(code),
    };
    let mut rows = visited.rows;
    // The --constrain labels that promised an image now gone from the node go too.
    for row in &mut rows {
        for (key, holds) in judge_labels(row, &visited.nodes, true) {
            let Err(why) = holds else { continue };
            let action = if args.dry_run {
                "would be removed (dry run)".to_string()
            } else {
                match labels::remove(&visited.client, &row.name, std::slice::from_ref(&key)).await {
                    Ok(()) => "removed".to_string(),
                    Err(err) => {
                        row.error = Some(format!("removing the node label {key}: {err:#}"));
                        "not removed".to_string()
                    }
                }
            };
            row.labels.push(LabelRow {
                key,
                holds: false,
                detail: Some(why),
                action: Some(action),
            });
        }
    }
    print_stdout(&render(args.output, &rows, true)?);
    let kept = rows
        .iter()
        .flat_map(|r| &r.images)
        .any(|i| i.action.as_deref().is_some_and(|a| a.starts_with("kept")));
    if kept {
        say!(
            "error: images in use were kept (see the rows above); nothing else changed on those nodes"
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(exit(&rows))
}

/// A ref as the kubelet names it (`app:v2` → `docker.io/library/app:v2`).
fn normalized(image: &str) -> Result<String> {
    reference::normalize(image).map_err(|e| {
        anyhow!(
            "{image:?} is neither a file nor an image reference ({e}); e.g. app:v2 or ./app.tar"
        )
    })
}

/// The `--constrain` labels of the row's node about the refs of the row, each with whether
/// it holds. `after_rm`: refs `rm` took away (or would, in a dry run) count as gone.
fn judge_labels(
    row: &NodeRow,
    nodes: &[Node],
    after_rm: bool,
) -> Vec<(String, Result<(), String>)> {
    if row.error.is_some() || row.skipped.is_some() {
        return Vec::new();
    }
    let Some(node) = nodes
        .iter()
        .find(|n| n.metadata.name.as_deref() == Some(&row.name))
    else {
        return Vec::new();
    };
    let held: labels::Held<'_> = row
        .images
        .iter()
        .map(|i| {
            let gone = after_rm
                && matches!(
                    i.action.as_deref(),
                    Some("removed" | "would be removed (dry run)")
                );
            let id = (i.present && !gone).then_some(i.id.as_deref()).flatten();
            (i.reference.as_str(), id)
        })
        .collect();
    labels::on(node)
        .into_iter()
        .filter_map(|l| {
            let record = l.record?;
            labels::check(&record, &held).map(|holds| (l.key, holds))
        })
        .collect()
}

/// Failure when any selected node could not be asked.
fn exit(rows: &[NodeRow]) -> ExitCode {
    if rows.iter().any(|r| r.error.is_some()) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// How a visit ended: every node visited, or stopped by a signal (with the exit code shells
/// report for it), every helper removed either way.
enum Outcome {
    Visited(Visited),
    Stopped(ExitCode),
}

/// What a visit found: a row per node, and the nodes and client it read them with.
struct Visited {
    rows: Vec<NodeRow>,
    nodes: Vec<Node>,
    client: kube::Client,
}

/// Selects the nodes, then visits them within one run: its Lease (so another user's
/// `cleanup` leaves it alone) and agent ConfigMaps first, everything of it removed last,
/// also when a signal stops it.
async fn visit_nodes(
    kube: &cli::KubeArgs,
    on: &NodeArgs,
    job: Job,
    archive: Option<&crate::archive::Archive>,
) -> Result<Outcome> {
    let selection =
        cli::node_selection(on.nodes.as_deref(), on.selector.as_deref()).map_err(|e| anyhow!(e))?;
    let named = matches!(selection, NodeSelection::Names(_));
    let cluster = client::connect(kube).await?;
    let all_nodes = nodes::list_all(&cluster.client).await?;
    let chosen = nodes::select(&cluster.client, &all_nodes, &selection).await?;
    let every: Vec<NodeFacts> = all_nodes.iter().map(NodeFacts::from_node).collect();
    let run_id = run_id();
    let opts = plan::Options {
        helper_namespace: &on.helper_namespace,
        helper_image: on.helper_image.as_deref(),
        skip_unready: true,
        run_id: &run_id,
        named,
        runtime: on.runtime,
        runtime_endpoint: on.runtime_endpoint.as_deref(),
        changing: job.refs(),
    };
    let targets: Vec<Target> = chosen
        .into_iter()
        .map(|mut node| {
            opts.override_runtime(&mut node);
            target(node, &every, &opts, archive)
        })
        .collect();
    let mut archs: Vec<String> = targets
        .iter()
        .filter(|t| t.helper.is_ok())
        .map(|t| t.node.platform.architecture.clone())
        .collect();
    archs.sort();
    archs.dedup();

    let visit = Visit {
        client: &cluster.client,
        namespace: &on.helper_namespace,
        run_id: &run_id,
        helper_timeout: on.helper_timeout,
        cancel: CancellationToken::new(),
        stopped_by: Default::default(),
        progress: Progress::for_stderr(),
    };
    let mut signals = Signals::listen();
    let leases: Api<Lease> = Api::namespaced(cluster.client.clone(), &on.helper_namespace);
    let heartbeat = match Heartbeat::start(&leases, &run_id).await {
        Ok(heartbeat) => Some(heartbeat),
        Err(warning) => {
            visit.progress.println(&format!("warning: {warning}"));
            None
        }
    };
    let configmaps: Api<ConfigMap> = Api::namespaced(cluster.client.clone(), &on.helper_namespace);
    let visiting = async {
        agent::create_configmaps(&configmaps, &run_id, &archs, false).await?;
        visit::each(&visit, &targets, &job).await
    };
    tokio::pin!(visiting);
    let mut stopped = None;
    let rows = tokio::select! {
        rows = &mut visiting => rows,
        (why, code) = signals.recv() => {
            let _ = visit.stopped_by.set(why.to_string());
            visit.cancel.cancel();
            stopped = Some((why, code));
            // Each node deletes the pod it created as it stops.
            visiting.await
        }
    };
    let left = reach::end_run(&cluster.client, &on.helper_namespace, &run_id, heartbeat).await;
    reach::warn_left(&left, &on.helper_namespace);
    if let Some((why, code)) = stopped {
        say!("{why}; stopped, no helper pod left behind");
        return Ok(Outcome::Stopped(ExitCode::from(code)));
    }
    Ok(Outcome::Visited(Visited {
        rows: rows?,
        nodes: all_nodes,
        client: cluster.client.clone(),
    }))
}

/// How the node is visited: for an archive, as a load would plan it (so the node's own
/// platform of the image is checked); otherwise any node a helper can run on.
fn target(
    node: NodeFacts,
    every: &[NodeFacts],
    opts: &plan::Options<'_>,
    archive: Option<&crate::archive::Archive>,
) -> Target {
    match archive {
        Some(archive) => match plan::decide(archive, &node, every, opts) {
            Decision::Load {
                candidates,
                needs,
                pod,
                wanted,
                ..
            } => Target {
                node,
                helper: Ok((candidates, needs, *pod)),
                wanted: Some(*wanted),
            },
            Decision::Skip { reason } => Target {
                node,
                helper: Err(LeftOut::Skip(reason)),
                wanted: None,
            },
            Decision::Refuse { reason } => Target {
                node,
                helper: Err(LeftOut::Refuse(reason)),
                wanted: None,
            },
        },
        None => Target {
            helper: plan::visit(&node, every, opts),
            node,
            wanted: None,
        },
    }
}

fn render(output: Output, rows: &[NodeRow], unpinning: bool) -> Result<String> {
    Ok(match output {
        Output::Json => serde_json::to_string_pretty(&serde_json::json!({ "nodes": rows }))?,
        Output::Yaml => serde_yaml::to_string(&serde_json::json!({ "nodes": rows }))?,
        Output::Table => table(rows, unpinning),
    })
}

/// One row per node and ref.
fn table(rows: &[NodeRow], unpinning: bool) -> String {
    let mut out = vec![[
        "NODE".to_string(),
        "IMAGE".into(),
        "PRESENT".into(),
        "ID".into(),
        "PINNED".into(),
        "USED BY".into(),
        "DETAIL".into(),
    ]];
    for node in rows {
        if let Some(error) = node.error.as_ref().or(node.skipped.as_ref()) {
            out.push([
                node.name.clone(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                error.clone(),
            ]);
            continue;
        }
        for image in &node.images {
            let detail = if unpinning {
                image.action.clone().unwrap_or_default()
            } else {
                match image.matches_archive {
                    Some(true) => "the archive's image, complete".into(),
                    Some(false) if image.problems.is_empty() => "not the archive's image".into(),
                    Some(false) => image.problems.join("; "),
                    None => String::new(),
                }
            };
            out.push([
                node.name.clone(),
                image.reference.clone(),
                if image.present { "yes" } else { "no" }.into(),
                image
                    .id
                    .as_deref()
                    .map(|id| id.trim_start_matches("sha256:").chars().take(12).collect())
                    .unwrap_or_else(|| "-".into()),
                if image.pinned { "yes" } else { "no" }.into(),
                if image.used_by.is_empty() {
                    "-".into()
                } else {
                    image.used_by.join(",")
                },
                detail,
            ]);
        }
        for label in &node.labels {
            let detail = match (&label.action, &label.detail) {
                (Some(action), Some(why)) => format!("{action}: {why}"),
                (Some(action), None) => action.clone(),
                (None, None) => "true: the node holds what the label promises".into(),
                (None, Some(why)) => format!(
                    "STALE: {why}; `kubectl sideload rm` of the ref or `cleanup --labels` \
                     removes it"
                ),
            };
            out.push([
                node.name.clone(),
                format!("label {}", label.key),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                detail,
            ]);
        }
    }
    columns(&out)
}
