//! Executing a plan: for every node to load, in parallel (bounded), helper pod up (the next
//! candidate image if one is gone) → locate the runtime → skip if the image is already
//! there, complete → stream and import what the node lacks → verify → helper pod down.
//! Runtime-agnostic: every runtime is driven through `runtime::Adapter`. One node's failure
//! never stops the others; each ends with a `NodeResult`.

use std::io::{self, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use futures::StreamExt;
use indicatif::ProgressBar;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use serde::Serialize;
use sideload_agent::protocol;
use tokio_util::sync::CancellationToken;

use crate::archive::Archive;
use crate::cluster::agent::Agent;
use crate::cluster::helper::{self, HelperSpec, Started};
use crate::plan::{Decision, NodePlan, Plan};
use crate::progress::Progress;
use crate::runtime::{Inventory, Located, Wanted};
use crate::transfer::Transfer;

/// How one node ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Loaded,
    Skipped,
    Failed,
}

#[derive(Debug, Clone, Serialize)]
pub struct NodeResult {
    pub name: String,
    pub status: Status,
    pub bytes_sent: u64,
    /// Layers not sent because the node already held them.
    pub layers_reused: usize,
    pub seconds: f64,
    /// Why it was skipped or failed.
    pub error: Option<String>,
    /// The runtime as found on the node, and what vouched for the image there.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runtime: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verified_by: Option<String>,
}

/// Settings of a run that every node shares.
pub struct Run {
    pub client: kube::Client,
    pub archive: Arc<Archive>,
    pub force: bool,
    pub parallel: usize,
    pub helper_timeout: Duration,
    /// Cancelled on Ctrl-C: nodes not started yet never start, and a node in flight stops
    /// at once and deletes its helper pod. The pod is deleted by the task that created it,
    /// so a create still in flight when the signal came is never orphaned.
    pub cancel: CancellationToken,
    pub progress: Progress,
}

/// Loads every node the plan says to, at most `parallel` at a time.
pub async fn execute(run: &Run, plan: &Plan) -> Vec<NodeResult> {
    let pods: Api<Pod> = Api::namespaced(run.client.clone(), &plan.helper_namespace);
    futures::stream::iter(plan.nodes.iter())
        .map(|node| load_node(run, &pods, plan, node))
        .buffered(run.parallel.max(1))
        .collect()
        .await
}

/// What happened on a node that went well.
enum Outcome {
    Loaded { sent: u64, reused: usize },
    AlreadyThere,
}

/// What a node's steps learnt, for the report, whatever the outcome.
#[derive(Default)]
struct Seen {
    runtime: Option<String>,
    verified_by: Option<String>,
}

async fn load_node(run: &Run, pods: &Api<Pod>, plan: &Plan, node: &NodePlan) -> NodeResult {
    let started = Instant::now();
    let mut seen = Seen::default();
    let result = |status, (bytes_sent, layers_reused), error, seen: Seen| NodeResult {
        name: node.node.name.clone(),
        status,
        bytes_sent,
        layers_reused,
        seconds: started.elapsed().as_secs_f64(),
        error,
        runtime: seen.runtime,
        verified_by: seen.verified_by,
    };
    match &node.decision {
        Decision::Skip { reason } | Decision::Refuse { reason } => {
            return result(Status::Skipped, (0, 0), Some(reason.clone()), seen);
        }
        Decision::Load { .. } => {}
    }
    let bar = run.progress.node_bar(&node.node.name);
    let outcome = with_helper(run, pods, plan, node, &bar, &mut seen).await;
    match outcome {
        Ok(Outcome::Loaded { sent, reused }) => {
            bar.finish_with_message("loaded");
            result(Status::Loaded, (sent, reused), None, seen)
        }
        Ok(Outcome::AlreadyThere) => {
            bar.finish_with_message("already present");
            result(
                Status::Skipped,
                (0, 0),
                Some(
                    "already present, complete, with the same digest (use --force to re-import)"
                        .into(),
                ),
                seen,
            )
        }
        Err(err) => {
            bar.abandon_with_message("failed");
            result(Status::Failed, (0, 0), Some(format!("{err:#}")), seen)
        }
    }
}

/// Starts a helper pod (trying the next candidate image while one cannot be used), runs
/// the node's steps in it and always removes it afterwards.
async fn with_helper(
    run: &Run,
    pods: &Api<Pod>,
    plan: &Plan,
    node: &NodePlan,
    bar: &ProgressBar,
    seen: &mut Seen,
) -> Result<Outcome> {
    let Decision::Load {
        candidates,
        needs,
        pod: first_pod,
        ..
    } = &node.decision
    else {
        unreachable!("only Load decisions reach with_helper");
    };
    let mut unusable = Vec::new();
    for (attempt, candidate) in candidates.iter().enumerate() {
        if run.cancel.is_cancelled() {
            bail!("interrupted before its helper pod was created");
        }
        let pod = if attempt == 0 {
            first_pod.as_ref().clone()
        } else {
            helper::pod(&HelperSpec {
                node: &node.node.name,
                namespace: &plan.helper_namespace,
                run_id: &plan.run_id,
                image: &candidate.image,
                arch: &node.node.platform.architecture,
                needs: *needs,
                attempt,
            })
        };
        bar.set_message(format!("starting helper pod ({})", candidate.image));
        // Not raced against `cancel`: once the API has the create, we must learn the pod's
        // name to delete it.
        let name = helper::create(pods, &pod, false).await?;
        tracing::debug!(node = %node.node.name, pod = %name, image = %candidate.image, "helper pod created");
        let work = async {
            match helper::wait_running(pods, &name, run.helper_timeout).await? {
                Started::Running => {
                    tracing::debug!(node = %node.node.name, "helper pod running");
                    let agent = Agent { pods, pod: &name };
                    steps(run, &agent, node, bar, seen).await.map(Ok)
                }
                Started::ImageUnusable(why) => Ok::<_, anyhow::Error>(Err(why)),
            }
        };
        let outcome = tokio::select! {
            outcome = work => outcome,
            () = run.cancel.cancelled() => Err(anyhow!("interrupted")),
        };
        bar.set_message("removing helper pod");
        let removed = helper::delete(pods, &name, Duration::from_secs(30)).await;
        tracing::debug!(node = %node.node.name, pod = %name, "helper pod deleted");
        let removed = removed.with_context(|| {
            format!("could not delete helper pod {name}; run `kubectl sideload cleanup`")
        });
        match outcome {
            Ok(Ok(done)) => {
                removed?;
                return Ok(done);
            }
            Ok(Err(why)) => {
                tracing::debug!(node = %node.node.name, image = %candidate.image, %why, "helper image unusable, trying the next");
                unusable.push(format!("{} ({why})", candidate.image));
                removed?;
            }
            Err(err) => return Err(err),
        }
    }
    bail!(
        "no image the helper could start from is on the node; tried: {}; pass --helper-image \
         with an image present on the node",
        unusable.join("; ")
    )
}

/// The node's steps, in its running helper.
async fn steps(
    run: &Run,
    agent: &Agent<'_>,
    node: &NodePlan,
    bar: &ProgressBar,
    seen: &mut Seen,
) -> Result<Outcome> {
    let Decision::Load { wanted, .. } = &node.decision else {
        unreachable!("only Load decisions reach steps");
    };
    let adapter = node.node.runtime.adapter().map_err(|e| anyhow!(e))?;
    let endpoint = node.node.runtime_endpoint.as_deref();

    bar.set_message("finding the runtime");
    let answer = agent
        .query(&adapter.locate_query(endpoint), "locate")
        .await?;
    let mut located = adapter.locate(endpoint, &answer)?;
    if let Some(query) = located.probe_query() {
        let answer = agent.query(&query, "probe").await?;
        located.configure(&answer)?;
    }
    seen.runtime = Some(located.describe());
    tracing::debug!(node = %node.node.name, runtime = %located.describe(), "runtime located");

    let before = inventory(agent, located.as_ref(), wanted).await?;
    if !run.force && before.missing.is_empty() {
        seen.verified_by = Some(before.checked_by);
        return Ok(Outcome::AlreadyThere);
    }
    tracing::debug!(node = %node.node.name, missing = ?before.missing, present = before.layers_present.len(), "what the node lacks");

    // Layers the node already holds (the unchanged base of a rebuilt image) stay out of the
    // stream; the importer takes them from the node. `--force` sends everything.
    let skip = if run.force {
        Default::default()
    } else {
        before.layers_present
    };
    let image = run.archive.image_for(&node.node.platform)?.clone();
    let transfer = Transfer::new(
        Arc::clone(&run.archive),
        image,
        skip,
        located.stream_refs(wanted),
    )?;
    let reused = transfer.reused();
    bar.set_message(if reused == 0 {
        "sending".to_string()
    } else {
        format!("sending (reusing {reused} layer(s) on the node)")
    });
    bar.set_length(transfer.len());
    let request = located.import(wanted, transfer.len());
    let counter = bar.clone();
    let (out, written) = agent
        .run(&request, move |w| {
            let mut counting = Counting {
                inner: w,
                bar: counter,
            };
            transfer.write(&mut counting)
        })
        .await?;
    tracing::debug!(node = %node.node.name, "stream sent and import finished");
    if out.exit_code != 0 {
        let err = match out.exit_code {
            protocol::STREAM_SHORT => anyhow!(
                "the stream to the node ended early ({}); nothing was imported",
                out.stderr.trim()
            ),
            protocol::TIMED_OUT => anyhow!("the import on the node timed out and was stopped"),
            _ => out.check("the import").unwrap_err(),
        };
        return Err(if reused > 0 {
            err.context(format!(
                "{reused} layer(s) were taken from the node's store instead of sent; if the \
                 store lost one meanwhile, run again with --force to send every layer"
            ))
        } else {
            err
        });
    }
    let sent =
        written.map_err(|e| anyhow!("streaming the archive failed after the import ended: {e}"))?;

    bar.set_message("verifying");
    // CRI learns of an import from the runtime's events: give it a moment.
    let mut after = inventory(agent, located.as_ref(), wanted).await?;
    for _ in 0..10 {
        if after.missing.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        after = inventory(agent, located.as_ref(), wanted).await?;
    }
    if !after.missing.is_empty() {
        bail!(
            "import finished but the runtime does not hold the image as it must: {}",
            after.missing.join("; ")
        );
    }
    seen.verified_by = Some(after.checked_by);
    tracing::debug!(node = %node.node.name, "verified");
    Ok(Outcome::Loaded { sent, reused })
}

async fn inventory(agent: &Agent<'_>, located: &dyn Located, wanted: &Wanted) -> Result<Inventory> {
    let answer = agent
        .query(&located.inventory_query(wanted), "inventory")
        .await?;
    located.inventory(wanted, &answer)
}

/// Counts bytes into the node's progress bar as they go out.
struct Counting<'a> {
    inner: &'a mut dyn Write,
    bar: ProgressBar,
}

impl Write for Counting<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.bar.inc(n as u64);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}
