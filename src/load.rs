//! Executing a plan: for every node to load, in parallel (bounded), helper pod up → find
//! the runtime → skip if already there → stream and import → verify → helper pod down.
//! One node's failure never stops the others; each ends with a `NodeResult`.

use std::collections::HashSet;
use std::io::{self, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use indicatif::ProgressBar;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::archive::Archive;
use crate::cluster::{exec, helper};
use crate::plan::{Decision, NodePlan, Plan};
use crate::progress::Progress;
use crate::runtime::{Runtime, containerd};

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
    /// Layers not sent because the node already held them (see `import`).
    pub layers_reused: usize,
    pub seconds: f64,
    /// Why it was skipped or failed.
    pub error: Option<String>,
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
        .map(|node| load_node(run, &pods, node))
        .buffered(run.parallel.max(1))
        .collect()
        .await
}

async fn load_node(run: &Run, pods: &Api<Pod>, plan: &NodePlan) -> NodeResult {
    let name = plan.node.name.clone();
    let started = Instant::now();
    let result = |status, (bytes_sent, layers_reused), error| NodeResult {
        name: name.clone(),
        status,
        bytes_sent,
        layers_reused,
        seconds: started.elapsed().as_secs_f64(),
        error,
    };
    match &plan.decision {
        Decision::Skip { reason } | Decision::Refuse { reason } => {
            return result(Status::Skipped, (0, 0), Some(reason.clone()));
        }
        Decision::Load { .. } => {}
    }
    let bar = run.progress.node_bar(&name);
    let outcome = with_helper(run, pods, plan, &bar).await;
    match outcome {
        Ok(Outcome::Loaded { sent, reused }) => {
            bar.finish_with_message("loaded");
            result(Status::Loaded, (sent, reused), None)
        }
        Ok(Outcome::AlreadyThere) => {
            bar.finish_with_message("already present");
            result(
                Status::Skipped,
                (0, 0),
                Some("already present with the same digest (use --force to re-import)".into()),
            )
        }
        Err(err) => {
            bar.abandon_with_message("failed");
            result(Status::Failed, (0, 0), Some(format!("{err:#}")))
        }
    }
}

enum Outcome {
    /// Bytes streamed, and layers left out because the node had them.
    Loaded {
        sent: u64,
        reused: usize,
    },
    AlreadyThere,
}

/// Runs the node's steps inside a helper pod and always removes the pod afterwards.
async fn with_helper(
    run: &Run,
    pods: &Api<Pod>,
    plan: &NodePlan,
    bar: &ProgressBar,
) -> Result<Outcome> {
    let Decision::Load { pod, .. } = &plan.decision else {
        unreachable!("only Load decisions reach with_helper");
    };
    if run.cancel.is_cancelled() {
        bail!("interrupted before its helper pod was created");
    }
    bar.set_message("starting helper pod");
    // Not raced against `cancel`: once the API has the create, we must learn the pod's name
    // to delete it.
    let name = helper::create(pods, pod, false).await?;
    tracing::debug!(node = %plan.node.name, pod = %name, "helper pod created");
    let work = async {
        helper::wait_running(pods, &name, run.helper_timeout).await?;
        tracing::debug!(node = %plan.node.name, "helper pod running");
        import(run, pods, &name, plan, bar).await
    };
    let outcome = tokio::select! {
        outcome = work => outcome,
        () = run.cancel.cancelled() => Err(anyhow::anyhow!("interrupted")),
    };
    bar.set_message("removing helper pod");
    let removed = helper::delete(pods, &name, Duration::from_secs(30)).await;
    tracing::debug!(node = %plan.node.name, "helper pod deleted");
    let outcome = outcome?;
    removed.with_context(|| {
        format!("could not delete helper pod {name}; run `kubectl sideload cleanup`")
    })?;
    Ok(outcome)
}

async fn import(
    run: &Run,
    pods: &Api<Pod>,
    pod: &str,
    plan: &NodePlan,
    bar: &ProgressBar,
) -> Result<Outcome> {
    let Decision::Load {
        platform, digest, ..
    } = &plan.decision
    else {
        unreachable!("only Load decisions reach import");
    };
    let Runtime::Containerd { flavour, .. } = &plan.node.runtime else {
        bail!(
            "{}",
            plan.node.runtime.unsupported_reason().unwrap_or_default()
        );
    };
    let refs = &run.archive.summary().refs;

    bar.set_message("finding containerd");
    let probe = containerd::probe_argv(*flavour, plan.node.runtime_endpoint.as_deref());
    let out = exec::run(pods, pod, helper::on_host(probe))
        .await?
        .check("finding containerd and ctr on the node")?;
    let located = containerd::parse_probe(&out.stdout).map_err(anyhow::Error::msg)?;
    tracing::debug!(node = %plan.node.name, ?located, "found containerd");

    let list = || async {
        let out = exec::run(pods, pod, helper::on_host(containerd::list_argv(&located)))
            .await?
            .check("ctr images ls")?;
        Ok::<_, anyhow::Error>(containerd::parse_images(&out.stdout))
    };
    if !run.force && containerd::missing_refs(&list().await?, refs, digest).is_empty() {
        return Ok(Outcome::AlreadyThere);
    }

    // Layers the node's content store already holds (the unchanged base of a rebuilt
    // image, sideloaded before) stay out of the stream: `ctr import` takes them from the
    // store. `--force` sends everything, the way out if the store lost a blob meanwhile.
    // Owned, for the writer thread below (the archive accepts a copy of its own image).
    let image = run.archive.image_for(platform)?.clone();
    let skip: HashSet<String> = if run.force {
        HashSet::new()
    } else {
        let out = exec::run(
            pods,
            pod,
            helper::on_host(containerd::content_argv(&located)),
        )
        .await?
        .check("ctr content ls")?;
        let have = containerd::parse_content(&out.stdout);
        image
            .layers
            .iter()
            .map(|l| l.digest.clone())
            .filter(|d| have.contains(d))
            .collect()
    };
    let len = run.archive.oci_len(&image, &skip)?;
    tracing::debug!(node = %plan.node.name, reused = skip.len(), len, "checked what the node has");
    bar.set_message(if skip.is_empty() {
        "sending".to_string()
    } else {
        format!("sending (reusing {} layer(s) on the node)", skip.len())
    });
    bar.set_length(len);
    let argv = containerd::import_argv(&located, len, &platform.to_string());
    let archive = Arc::clone(&run.archive);
    let counter = bar.clone();
    let reused = skip.len();
    let (out, written) = exec::run_with_input(pods, pod, helper::on_host(argv), move |w| {
        let mut counting = Counting {
            inner: w,
            bar: counter,
        };
        archive
            .write_oci(&image, &skip, &mut counting)
            .map_err(|e| io::Error::other(e.to_string()))
    })
    .await?;
    tracing::debug!(node = %plan.node.name, "stream sent and import finished");
    bar.set_message("importing");
    let out = out.check("ctr images import").map_err(|e| {
        if reused > 0 {
            e.context(format!(
                "{reused} layer(s) were taken from the node's content store instead of sent; \
                 if the store lost one meanwhile, run again with --force to send every layer"
            ))
        } else {
            e
        }
    })?;
    let sent = match written {
        Ok(n) => n,
        Err(e) => bail!("streaming the archive failed after the import ended: {e}"),
    };
    drop(out);

    bar.set_message("verifying");
    let missing = containerd::missing_refs(&list().await?, refs, digest);
    if !missing.is_empty() {
        bail!(
            "import finished but the runtime does not list the image: {}",
            missing.join("; ")
        );
    }
    tracing::debug!(node = %plan.node.name, "verified");
    Ok(Outcome::Loaded { sent, reused })
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
