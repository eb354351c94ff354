//! Executing a plan, in three phases, so that nodes needing the same bytes share one upload:
//!
//! 1. prepare, per node in parallel (bounded): helper pod up (the next candidate image if
//!    one is gone) → locate the runtime → what the node holds. Nodes already holding the
//!    image, complete, end here.
//! 2. transfer: nodes that need the same stream get it through one upload, relayed node to
//!    node (`transfer::relay_tree`); every other node, and every relay member the stream
//!    did not reach, gets its own stream.
//! 3. verify, per node through CRI; then every helper pod is deleted.
//!
//! Runtime-agnostic: every runtime is driven through `runtime::Adapter`. One node's failure
//! never stops the others; each ends with a `NodeResult`.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, bail};
use futures::StreamExt;
use indicatif::ProgressBar;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::Api;
use serde::Serialize;
use sideload_agent::protocol::{self, Relay, RelaySource};
use tokio_util::sync::CancellationToken;

use crate::archive::Archive;
use crate::cluster::agent::{Agent, Session};
use crate::cluster::errors::{is_permanent, is_transient, persist};
use crate::cluster::exec::Output;
use crate::pin;
use crate::plan::{Decision, NodePlan, Plan};
use crate::progress::Progress;
use crate::reach::{self, HelperPlan, Reach};
use crate::runtime::{Inventory, Located, Wanted};
use crate::transfer::{self, Transfer};

/// How long a relay member waits for its upstream to connect, and how long a member keeps
/// trying to reach its peers: past these, the member is loaded directly.
const RELAY_WAIT_SECS: u64 = 20;
/// Helper pods started at once in phase 1.
const PREPARE_AT_ONCE: usize = 32;
const RELAY_CONNECT_SECS: u64 = 5;

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
    /// Bytes the plugin itself sent to this node (0 for a node fed by relay).
    pub bytes_sent: u64,
    /// Bytes of stream the node took in, from the plugin or a relay peer.
    pub bytes_received: u64,
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
    /// How the bytes came: "direct", "relay from NODE", or why a relay fell back.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
    /// Parts the stream was cut into, imported one after another as they arrived (one per
    /// layer sent; 1: imported once all of it was in). 0 when nothing was streamed.
    pub import_parts: usize,
    /// Attempts made on this node: 1, or more after `--retries`.
    pub attempts: u32,
    /// Why each earlier attempt failed, oldest first.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub earlier_failures: Vec<String>,
    /// With `--pin`: whether CRI reports the image pinned now, and why not or what
    /// vouched for it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pinned: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pin_note: Option<String>,
    /// Whether another attempt could end otherwise (a failure not marked permanent).
    #[serde(skip)]
    pub retryable: bool,
}

/// Settings of a run that every node shares.
pub struct Run {
    pub client: kube::Client,
    pub archive: Arc<Archive>,
    pub force: bool,
    pub parallel: usize,
    pub helper_timeout: Duration,
    /// Attempts after the first for a node whose failure was not permanent (`--retries`).
    pub retries: u32,
    /// Let nodes that need the same stream pass it on to each other (`--relay`).
    pub relay: bool,
    /// Send streams in frames, zstd-compressed where that pays (`--compress`).
    pub compress: bool,
    /// Cut streams into one part per layer for runtimes that import parts, so nodes
    /// unpack while the stream arrives (`--pipeline`).
    pub pipeline: bool,
    /// Protect the loaded refs from the kubelet's image GC where the runtime can (`--pin`).
    pub pin: bool,
    /// The run's id: tags the prefix images of cut streams.
    pub run_id: String,
    /// Cancelled on Ctrl-C: nodes not started yet never start, and a node in flight stops
    /// at once. Every helper pod created is deleted before `execute` returns, so a create
    /// still in flight when the signal came is never orphaned.
    pub cancel: CancellationToken,
    /// Why the run was cancelled ("interrupt", "--timeout 5m passed"), for the node rows.
    /// Shared, like `cancel`, by the `Run`s of one command's images.
    pub stopped_by: Arc<std::sync::OnceLock<String>>,
    /// The first attempt number this run's helper pods are named with: a run that loads
    /// several images, one after another, starts each image's past the earlier ones', so
    /// no pod name is taken by a pod of the image before that is still terminating.
    pub first_attempt: u32,
    pub progress: Progress,
}

impl Run {
    /// Cancels every node, recording why (the first reason wins).
    pub fn stop(&self, why: &str) {
        let _ = self.stopped_by.set(why.to_string());
        self.cancel.cancel();
    }

    /// The error of a node cancelled during `step`: names the reason and the step.
    fn stopped(&self, step: &str) -> anyhow::Error {
        reach::stopped(&self.stopped_by, step)
    }

    /// What starting and removing this run's helper pods needs.
    fn reach<'a>(&'a self, pods: &'a Api<Pod>, plan: &'a Plan) -> Reach<'a> {
        Reach {
            client: &self.client,
            pods,
            namespace: &plan.helper_namespace,
            run_id: &plan.run_id,
            helper_timeout: self.helper_timeout,
            cancel: &self.cancel,
            stopped_by: &self.stopped_by,
        }
    }
}

/// A node between the phases: its helper runs, its runtime is located, its inventory taken.
struct Ready<'p> {
    node: &'p NodePlan,
    wanted: &'p Wanted,
    /// The agent's open session: the lookups were asked in it, the verification will be.
    session: Session,
    pod: String,
    pod_ip: Option<String>,
    located: Box<dyn Located>,
    inventory: Inventory,
    bar: ProgressBar,
    started: Instant,
    runtime: String,
}

/// What phase 2 made of a ready node.
enum Moved {
    Imported {
        sent: u64,
        received: u64,
        reused: usize,
        parts: usize,
        via: String,
    },
    Failed(anyhow::Error, String),
}

/// Loads every node the plan says to, retrying nodes whose failure may pass (a dropped
/// stream, a helper pod killed, a runtime restarting) up to `run.retries` times. A retry
/// starts the node over with a new helper pod and a fresh inventory, so it sends only what
/// the node still lacks; nodes retried together share one upload again.
pub async fn execute(run: &Run, plan: &Plan) -> Vec<NodeResult> {
    let every: Vec<&NodePlan> = plan.nodes.iter().collect();
    let mut results = attempt(run, plan, &every, run.first_attempt).await;
    for retry in 1..=run.retries {
        let again: Vec<usize> = (0..results.len())
            .filter(|&i| results[i].status == Status::Failed && results[i].retryable)
            .collect();
        if again.is_empty() || run.cancel.is_cancelled() {
            break;
        }
        let wait = backoff(retry);
        for &i in &again {
            run.progress.println(&format!(
                "{}: {}; retrying in {} s (retry {retry} of {})",
                results[i].name,
                results[i].error.as_deref().unwrap_or("failed"),
                wait.as_secs(),
                run.retries
            ));
        }
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = run.cancel.cancelled() => break,
        }
        // A retry needs the API server (it may be restarting: that is often why the
        // attempt failed) and a node whose kubelet still reports: a pod for a NotReady
        // node would only wait out --helper-timeout.
        let names: Vec<&str> = again.iter().map(|&i| results[i].name.as_str()).collect();
        let why_not = tokio::select! {
            why = why_not_retry(run, &names) => why,
            () = run.cancel.cancelled() => break,
        };
        let again: Vec<usize> = again
            .into_iter()
            .filter(|&i| match why_not.get(&results[i].name) {
                Some(why) => {
                    let r = &mut results[i];
                    r.retryable = false;
                    r.error = Some(format!(
                        "{}; not retried: {why}",
                        r.error.as_deref().unwrap_or("failed")
                    ));
                    false
                }
                None => true,
            })
            .collect();
        if again.is_empty() {
            break;
        }
        let nodes: Vec<&NodePlan> = again.iter().map(|&i| &plan.nodes[i]).collect();
        let redone = attempt(run, plan, &nodes, run.first_attempt + retry).await;
        for (i, mut r) in again.into_iter().zip(redone) {
            let before = std::mem::take(&mut results[i]);
            r.earlier_failures = before.earlier_failures;
            r.earlier_failures.extend(before.error);
            r.attempts = before.attempts + 1;
            results[i] = r;
        }
    }
    results
}

/// How long a retry waits for an API server that does not answer.
const API_COMEBACK: Duration = Duration::from_secs(60);

/// Why each of `nodes` should not be tried again (absent: it should): the API server did
/// not answer within [`API_COMEBACK`], or the node is NotReady or gone.
async fn why_not_retry(run: &Run, nodes: &[&str]) -> BTreeMap<String, String> {
    let api: Api<Node> = Api::all(run.client.clone());
    let mut why = BTreeMap::new();
    for &name in nodes {
        let reason = match persist(API_COMEBACK, || api.get_opt(name)).await {
            Ok(node) => match reach::unusable(node.as_ref()) {
                Some(reason) => reason,
                None => continue,
            },
            Err(e) if is_transient(&e) => format!(
                "the API server did not answer for {} s ({e})",
                API_COMEBACK.as_secs()
            ),
            // Not allowed to read the node (a custom role): try anyway.
            Err(_) => continue,
        };
        why.insert(name.to_string(), reason);
    }
    why
}

/// The wait before retry `n` (1, 2, …): 1 s, 2 s, 4 s, then 8 s. Short, because the faults
/// retried are passing ones; long enough for a restarted kubelet or runtime to come back.
fn backoff(n: u32) -> Duration {
    Duration::from_secs(1 << n.saturating_sub(1).min(3))
}

/// One attempt on `nodes` (every node of the plan, or those being retried), results in the
/// same order. `retry` is 0 for the first attempt; it keeps helper pod names unique.
async fn attempt(run: &Run, plan: &Plan, nodes: &[&NodePlan], retry: u32) -> Vec<NodeResult> {
    let pods: Api<Pod> = Api::namespaced(run.client.clone(), &plan.helper_namespace);
    let mut results: BTreeMap<usize, NodeResult> = BTreeMap::new();

    // Phase 1, every node at once (bounded only against huge clusters): a helper pod
    // takes seconds to start and costs little, and starting them all up front keeps small
    // images from waiting on pod starts one batch after another. `--parallel` bounds the
    // streams of phase 2, which are what costs.
    let prepared: Vec<(usize, Result<Ready<'_>, NodeResult>)> =
        futures::stream::iter(nodes.iter().enumerate())
            .map(|(i, node)| {
                let pods = &pods;
                async move { (i, prepare(run, pods, plan, node, retry).await) }
            })
            .buffered(PREPARE_AT_ONCE.max(run.parallel))
            .collect()
            .await;
    let mut ready = Vec::new();
    for (i, p) in prepared {
        match p {
            Ok(r) => ready.push((i, r)),
            Err(done) => {
                results.insert(i, done);
            }
        }
    }

    // Phase 2.
    let moved = move_bytes(run, &pods, &ready).await;

    // Phase 3, and the helpers go.
    let finished = futures::future::join_all(ready.iter().zip(moved).map(|((i, r), m)| {
        let pods = &pods;
        async move { (*i, finish(run, pods, r, m).await) }
    }))
    .await;
    results.extend(finished);
    results.into_values().collect()
}

fn result(node: &str, started: Instant, status: Status, error: Option<String>) -> NodeResult {
    NodeResult {
        name: node.to_string(),
        status,
        bytes_sent: 0,
        bytes_received: 0,
        layers_reused: 0,
        seconds: started.elapsed().as_secs_f64(),
        error,
        runtime: None,
        verified_by: None,
        via: None,
        import_parts: 0,
        attempts: 1,
        earlier_failures: Vec::new(),
        pinned: None,
        pin_note: None,
        retryable: false,
    }
}

impl Default for NodeResult {
    fn default() -> Self {
        result("", Instant::now(), Status::Failed, None)
    }
}

/// Whether a node that failed with `err` is worth another attempt.
fn retryable(run: &Run, err: &anyhow::Error) -> bool {
    !run.cancel.is_cancelled() && !is_permanent(err)
}

/// Phase 1 for one node: `Ok` when it needs bytes (its helper then stays up), else its
/// result (and its helper is gone already).
async fn prepare<'p>(
    run: &Run,
    pods: &Api<Pod>,
    plan: &'p Plan,
    node: &'p NodePlan,
    retry: u32,
) -> Result<Ready<'p>, NodeResult> {
    let started = Instant::now();
    let name = node.node.name.as_str();
    let (wanted, helper) = match &node.decision {
        Decision::Skip { reason } | Decision::Refuse { reason } => {
            return Err(result(name, started, Status::Skipped, Some(reason.clone())));
        }
        Decision::Load {
            wanted,
            candidates,
            needs,
            pod,
            ..
        } => (
            wanted.as_ref(),
            HelperPlan {
                candidates,
                needs: *needs,
                first_pod: pod,
            },
        ),
    };
    let bar = run.progress.node_bar(name);
    let failed = |err: anyhow::Error, bar: &ProgressBar| {
        bar.abandon_with_message("failed");
        let mut r = result(name, started, Status::Failed, Some(format!("{err:#}")));
        r.retryable = retryable(run, &err);
        r
    };
    let running = run
        .reach(pods, plan)
        .start(&node.node, &helper, &bar, retry)
        .await;
    let (pod, pod_ip) = match running {
        Ok(p) => p,
        Err(err) => return Err(failed(err, &bar)),
    };
    let agent = Agent { pods, pod: &pod };
    let looked = tokio::select! {
        looked = async {
            let session = Session::open(&agent).await?;
            let (located, inventory) = look(&session, node, wanted, &bar).await?;
            Ok((session, located, inventory))
        } => looked,
        () = run.cancel.cancelled() => Err(run.stopped("asking the node agent what the node holds")),
    };
    match looked {
        Ok((session, located, inventory)) if run.force || !inventory.missing.is_empty() => {
            let runtime = located.describe();
            Ok(Ready {
                node,
                wanted,
                session,
                pod,
                pod_ip,
                located,
                inventory,
                bar,
                started,
                runtime,
            })
        }
        Ok((session, located, inventory)) => {
            let pinned = pin_if_asked(run, &session, located.as_ref(), wanted, &bar).await;
            drop(session);
            let removed = reach::remove(pods, &pod, &bar).await;
            bar.finish_with_message("already present");
            let mut r = result(
                name,
                started,
                Status::Skipped,
                Some(
                    "already present, complete, with the same digest (use --force to re-import)"
                        .into(),
                ),
            );
            r.runtime = Some(located.describe());
            r.verified_by = Some(inventory.checked_by);
            let failed = pinned.and_then(|pin| {
                if let Some(pin) = pin {
                    r.pinned = Some(pin.done);
                    r.pin_note = Some(pin.note);
                }
                removed
            });
            if let Err(err) = failed {
                r.status = Status::Failed;
                r.retryable = retryable(run, &err);
                r.error = Some(format!("{err:#}"));
            }
            Err(r)
        }
        Err(err) => {
            let _ = reach::remove(pods, &pod, &bar).await;
            Err(failed(err, &bar))
        }
    }
}

/// Where the runtime is and what the node holds of the image.
async fn look(
    agent: &Session,
    node: &NodePlan,
    wanted: &Wanted,
    bar: &ProgressBar,
) -> Result<(Box<dyn Located>, Inventory)> {
    let located = reach::locate(agent, &node.node, bar).await?;
    let inventory = inventory(agent, located.as_ref(), wanted).await?;
    tracing::debug!(node = %node.node.name, missing = ?inventory.missing, present = inventory.layers_present.len(), "what the node lacks");
    Ok((located, inventory))
}

async fn inventory(agent: &Session, located: &dyn Located, wanted: &Wanted) -> Result<Inventory> {
    let answer = agent
        .query(&located.inventory_query(wanted), "inventory")
        .await?;
    located.inventory(wanted, &answer)
}

/// Phase 2: the bytes, for every ready node (results in the same order).
async fn move_bytes(run: &Run, pods: &Api<Pod>, ready: &[(usize, Ready<'_>)]) -> Vec<Moved> {
    // Nodes that need the very same stream: the same platform image (streams name it by
    // the run's staging name, whatever the runtime), with or without Docker's manifest.json.
    let mut groups: BTreeMap<(String, bool), Vec<usize>> = BTreeMap::new();
    for (k, (_, r)) in ready.iter().enumerate() {
        let key = (r.wanted.manifest.clone(), r.located.reads_docker_manifest());
        groups.entry(key).or_default().push(k);
    }
    let mut moved: Vec<Option<Moved>> = (0..ready.len()).map(|_| None).collect();
    let mut direct = Vec::new();
    let mut relays = Vec::new();
    for members in groups.into_values() {
        let relayable =
            run.relay && members.len() > 1 && members.iter().all(|&k| ready[k].1.pod_ip.is_some());
        if relayable {
            relays.push(members);
        } else {
            direct.extend(members.into_iter().map(|k| (k, "direct".to_string())));
        }
    }
    // Relays first, all at once (members mostly wait for bytes); what they did not reach
    // is loaded directly afterwards.
    let relayed = futures::future::join_all(
        relays
            .iter()
            .map(|members| relay(run, pods, ready, members)),
    )
    .await;
    for (members, outcome) in relays.iter().zip(relayed) {
        for (&k, m) in members.iter().zip(outcome) {
            match m {
                Ok(m) => moved[k] = Some(m),
                Err(why) => direct.push((k, format!("direct ({why})"))),
            }
        }
    }
    let directs: Vec<(usize, Moved)> = futures::stream::iter(direct)
        .map(|(k, via)| async move {
            let r = &ready[k].1;
            (k, stream_direct(run, pods, r, via).await)
        })
        .buffer_unordered(run.parallel.max(1))
        .collect()
        .await;
    for (k, m) in directs {
        moved[k] = Some(m);
    }
    moved
        .into_iter()
        .map(|m| m.unwrap_or_else(|| Moved::Failed(anyhow!("no transfer was run"), String::new())))
        .collect()
}

/// The layers to leave out of a stream to these nodes: those every one of them holds.
fn common_layers<'a>(run: &Run, nodes: impl IntoIterator<Item = &'a Ready<'a>>) -> HashSet<String> {
    if run.force {
        return HashSet::new();
    }
    let mut nodes = nodes.into_iter();
    let Some(first) = nodes.next() else {
        return HashSet::new();
    };
    let mut common = first.inventory.layers_present.clone();
    for r in nodes {
        common.retain(|l| r.inventory.layers_present.contains(l));
    }
    common
}

fn transfer_for<'a>(
    run: &Run,
    nodes: impl IntoIterator<Item = &'a Ready<'a>> + Clone,
) -> Result<Transfer> {
    let first = nodes
        .clone()
        .into_iter()
        .next()
        .expect("a transfer has a node");
    let image = run.archive.image_for(&first.node.node.platform)?.clone();
    Transfer::new(
        Arc::clone(&run.archive),
        image,
        common_layers(run, nodes.clone()),
        &run.run_id,
        // Cut when a member imports parts as they come; the others stage them all first.
        run.pipeline
            && nodes
                .clone()
                .into_iter()
                .any(|r| r.located.imports_in_parts()),
        // Streams are grouped by this (`move_bytes`): all or none of the nodes read it.
        first.located.reads_docker_manifest(),
    )
}

/// One node's own stream from the plugin.
async fn stream_direct(run: &Run, pods: &Api<Pod>, r: &Ready<'_>, via: String) -> Moved {
    let work = async {
        let transfer = transfer_for(run, [r])?;
        let reused = transfer.reused();
        let parts = transfer.parts();
        r.bar.set_message(if reused == 0 {
            "sending".to_string()
        } else {
            format!("sending (reusing {reused} layer(s) on the node)")
        });
        tracing::debug!(node = %r.node.node.name, parts, reused, "streaming directly");
        r.bar.set_length(transfer.len());
        let request = transfer.request(r.located.as_ref(), r.wanted, run.compress);
        let agent = Agent { pods, pod: &r.pod };
        let len = transfer.len();
        let feed = transfer.feed(r.bar.clone(), run.compress, run.cancel.clone());
        let (out, written) = agent.run(&request, feed).await?;
        import_outcome(&out, reused)?;
        let sent = written
            .map_err(|e| anyhow!("streaming the archive failed after the import ended: {e}"))?;
        Ok::<_, anyhow::Error>((sent, len, reused, parts))
    };
    let done = unwinding(run, work, "streaming and importing the image").await;
    match done {
        Ok((sent, received, reused, parts)) => Moved::Imported {
            sent,
            received,
            reused,
            parts,
            via,
        },
        Err(err) => Moved::Failed(err, via),
    }
}

/// One upload for all `members` (indexes into `ready`), relayed node to node. Per member:
/// what came of it, or `Err(why)` when it must be loaded directly instead.
async fn relay(
    run: &Run,
    pods: &Api<Pod>,
    ready: &[(usize, Ready<'_>)],
    members: &[usize],
) -> Vec<Result<Moved, String>> {
    let nodes: Vec<&Ready<'_>> = members.iter().map(|&k| &ready[k].1).collect();
    let nodes = &nodes;
    let transfer = match transfer_for(run, nodes.iter().copied()) {
        Ok(t) => t,
        Err(err) => return nodes.iter().map(|_| Err(format!("{err:#}"))).collect(),
    };
    let token = crate::app::random_token();
    let tree = transfer::relay_tree(nodes.len());
    let addr = |r: &Ready<'_>| {
        format!(
            "{}:{}",
            r.pod_ip.as_deref().unwrap_or_default(),
            protocol::RELAY_PORT
        )
    };
    let head = nodes[0].node.node.name.clone();
    let reused = transfer.reused();
    let parts = transfer.parts();
    tracing::debug!(head = %head, members = nodes.len(), depth = transfer::relay_depth(nodes.len()), reused, parts, "relaying one upload");
    let token = &token;
    let tree = &tree;
    let runs = nodes.iter().enumerate().map(|(i, r)| {
        let mut request = transfer.request(r.located.as_ref(), r.wanted, run.compress);
        request.relay = Some(Relay {
            source: if i == 0 {
                RelaySource::Stdin
            } else {
                RelaySource::Listen {
                    port: protocol::RELAY_PORT,
                    wait_secs: RELAY_WAIT_SECS,
                }
            },
            peers: tree[i].iter().map(|&c| addr(nodes[c])).collect(),
            token: token.clone(),
            index_digest: transfer.index_sha256().to_string(),
            manifest_digest: transfer.manifest_sha256().map(str::to_string),
            connect_secs: RELAY_CONNECT_SECS,
        });
        let upstream = (i > 0).then(|| nodes[(i - 1) / transfer::FANOUT].node.node.name.clone());
        let len = transfer.len();
        let transfer = transfer.clone();
        async move {
            let agent = Agent { pods, pod: &r.pod };
            let work = async {
                if i == 0 {
                    r.bar.set_message(format!("sending once for {} node(s)", nodes.len()));
                    r.bar.set_length(transfer.len());
                    let feed = transfer.feed(r.bar.clone(), run.compress, run.cancel.clone());
                    let (out, written) = agent.run(&request, feed).await?;
                    Ok::<_, anyhow::Error>((out, written.unwrap_or(0)))
                } else {
                    r.bar.set_message(format!(
                        "receiving through {}",
                        upstream.as_deref().unwrap_or("the relay")
                    ));
                    Ok((agent.run_without_input(&request).await?, 0))
                }
            };
            let done = unwinding(run, work, "streaming and importing the image").await;
            let via = match &upstream {
                None => format!("relay head for {} node(s)", nodes.len()),
                Some(up) => format!("relay from {up}"),
            };
            match done {
                Ok((out, sent)) => {
                    tracing::debug!(node = %r.node.node.name, code = out.exit_code, stderr = %out.stderr, "relay member finished");
                    match out.exit_code {
                        protocol::NO_RELAY_SOURCE | protocol::STREAM_SHORT => Err(format!(
                            "the relay did not reach it: {}",
                            last_line(&out.stderr)
                        )),
                        _ => Ok(match import_outcome(&out, reused) {
                            Ok(()) => Moved::Imported {
                                sent,
                                received: len,
                                reused,
                                parts,
                                via,
                            },
                            Err(err) => Moved::Failed(err, via),
                        }),
                    }
                }
                Err(err) if run.cancel.is_cancelled() => Ok(Moved::Failed(err, via)),
                Err(err) => Err(format!("{err:#}")),
            }
        }
    });
    futures::future::join_all(runs).await
}

/// How long a stopped node's exec gets to end by itself: its stream ends short, and the
/// agent's `finally` removes what it staged (the staging name, prefix images) before the
/// pod is deleted, which would kill it mid-way.
const UNWIND_GRACE: Duration = Duration::from_secs(10);

/// Runs a node's stream; once the run stops (the feed then fails at its next write), waits
/// up to [`UNWIND_GRACE`] for the exec to end, and fails naming `step`.
async fn unwinding<T>(
    run: &Run,
    work: impl std::future::Future<Output = Result<T>>,
    step: &str,
) -> Result<T> {
    tokio::pin!(work);
    tokio::select! {
        done = &mut work => done,
        () = run.cancel.cancelled() => {
            let _ = tokio::time::timeout(UNWIND_GRACE, &mut work).await;
            Err(run.stopped(step))
        }
    }
}

/// Reads an import's exit: ok, or the error with its reason.
fn import_outcome(out: &Output, reused: usize) -> Result<()> {
    if out.exit_code == 0 {
        return Ok(());
    }
    let err = match out.exit_code {
        protocol::STREAM_SHORT => anyhow!(
            "the stream to the node ended early ({}); nothing was imported",
            last_line(&out.stderr)
        ),
        protocol::TIMED_OUT => anyhow!("the import on the node timed out and was stopped"),
        // 128 + SIGKILL/SIGTERM: the container went, not the import.
        code @ (137 | 143) => anyhow!(
            "the helper was stopped mid-import (exit code {code}): its pod was deleted or \
             evicted, or its node's kubelet or runtime restarted"
        ),
        _ => out.clone().check("the import").unwrap_err(),
    };
    let killed = matches!(out.exit_code, 137 | 143);
    // Layers taken from the node's store are worth a hint, unless the stream itself was bad.
    Err(
        if reused > 0 && !killed && !out.stderr.contains(protocol::CORRUPTED) {
            err.context(format!(
                "{reused} layer(s) were taken from the node's store instead of sent; if the store \
             lost one meanwhile, run again with --force to send every layer"
            ))
        } else {
            err
        },
    )
}

fn last_line(text: &str) -> &str {
    text.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_default()
        .trim()
}

/// Phase 3 for one node: verify what was imported, then remove its helper.
async fn finish(run: &Run, pods: &Api<Pod>, r: &Ready<'_>, moved: Moved) -> NodeResult {
    let name = r.node.node.name.as_str();
    let mut out = result(name, r.started, Status::Failed, None);
    out.runtime = Some(r.runtime.clone());
    let verified = match moved {
        Moved::Imported {
            sent,
            received,
            reused,
            parts,
            via,
        } => {
            out.import_parts = parts;
            out.bytes_sent = sent;
            out.bytes_received = received;
            out.layers_reused = reused;
            out.via = Some(via);
            r.bar.set_message("verifying");
            let verified = tokio::select! {
                v = verify(&r.session, r) => v,
                () = run.cancel.cancelled() => Err(run.stopped("verifying the import")),
            };
            match verified {
                Ok(by) => pin_if_asked(run, &r.session, r.located.as_ref(), r.wanted, &r.bar)
                    .await
                    .map(|pin| {
                        if let Some(pin) = pin {
                            out.pinned = Some(pin.done);
                            out.pin_note = Some(pin.note);
                        }
                        by
                    }),
                Err(err) => Err(err),
            }
        }
        Moved::Failed(err, via) => {
            out.via = (!via.is_empty()).then_some(via);
            Err(err)
        }
    };
    let removed = reach::remove(pods, &r.pod, &r.bar).await;
    match verified.and_then(|by| removed.map(|()| by)) {
        Ok(by) => {
            r.bar.finish_with_message("loaded");
            out.status = Status::Loaded;
            out.verified_by = Some(by);
        }
        Err(err) => {
            r.bar.abandon_with_message("failed");
            out.bytes_sent = 0;
            out.bytes_received = 0;
            out.retryable = retryable(run, &err);
            out.error = Some(format!("{err:#}"));
        }
    }
    out.seconds = r.started.elapsed().as_secs_f64();
    out
}

/// With `--pin`, pins the image's refs; `None` when not asked.
async fn pin_if_asked(
    run: &Run,
    session: &Session,
    located: &dyn Located,
    wanted: &Wanted,
    bar: &ProgressBar,
) -> Result<Option<pin::Pin>> {
    if !run.pin {
        return Ok(None);
    }
    bar.set_message("pinning");
    tokio::select! {
        pinned = pin::apply(session, located, &wanted.refs, true) => pinned.map(Some),
        () = run.cancel.cancelled() => Err(run.stopped("pinning the image")),
    }
}

/// The runtime holds the image as it must; CRI learns of an import from the runtime's
/// events, so it gets a moment.
async fn verify(agent: &Session, r: &Ready<'_>) -> Result<String> {
    let mut after = inventory(agent, r.located.as_ref(), r.wanted).await?;
    for _ in 0..10 {
        if after.missing.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        after = inventory(agent, r.located.as_ref(), r.wanted).await?;
    }
    if !after.missing.is_empty() {
        bail!(
            "import finished but the runtime does not hold the image as it must: {}",
            after.missing.join("; ")
        );
    }
    tracing::debug!(node = %r.node.node.name, "verified");
    Ok(after.checked_by)
}
