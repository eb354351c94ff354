//! Executing the run's plans: every image of the run through one helper pod per node, in
//! three phases, so that nodes needing the same bytes share one upload:
//!
//! 1. reach, per node in parallel (bounded): helper pod up (the next candidate image if
//!    one is gone) → the agent's session open → the runtime located. Once per node,
//!    whatever the number of images.
//! 2. per image, one after another (the next image's inventory then finds the layers the
//!    one before brought, so a layer two images share crosses the wire once per node):
//!    what each node holds of it (nodes holding it, complete, are done with it) →
//!    transfer: nodes that need the same stream get it through one upload, relayed node
//!    to node (`transfer::relay_tree`); every other node, and every relay member the
//!    stream did not reach, gets its own stream → verify through CRI (and pin).
//! 3. every helper pod is deleted.
//!
//! Runtime-agnostic: every runtime is driven through `runtime::Adapter`. One node's failure
//! never stops the others; each node and image ends with a `NodeResult`.

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
use crate::cluster::helper;
use crate::cluster::nodes::NodeFacts;
use crate::pin;
use crate::plan::{Decision, Plan};
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

/// How one node ended for one image.
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
    /// The helper pod that served the node (one per node for every image of the run, a
    /// new one per retry); absent where none ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub helper: Option<String>,
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

/// Settings of a run that every node and image shares.
pub struct Run {
    pub client: kube::Client,
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
    pub stopped_by: Arc<std::sync::OnceLock<String>>,
    pub progress: Progress,
}

/// One image of the run: its archive and its plan. Every image's plan decides the same
/// nodes, in the same order.
pub struct Image<'a> {
    pub archive: &'a Arc<Archive>,
    pub plan: &'a Plan,
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

/// A node and the images (indexes into the run's images, in order) still to load there.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Todo {
    node: usize,
    images: Vec<usize>,
}

/// A node after phase 1: its helper runs, its agent's session is open, its runtime is
/// located. It serves every image of the attempt.
struct Helper<'p> {
    todo: &'p Todo,
    node: &'p NodeFacts,
    session: Session,
    pod: String,
    /// Where relay peers reach its agent: known once the kubelet reported it
    /// ([`relay_addresses`]).
    pod_ip: std::sync::OnceLock<String>,
    located: Box<dyn Located>,
    runtime: String,
    bar: ProgressBar,
    started: Instant,
}

/// A node that needs an image's bytes, between inventory and verification.
struct Ready<'p> {
    helper: &'p Helper<'p>,
    wanted: &'p Wanted,
    inventory: Inventory,
    started: Instant,
    /// "" for a run of one image, else "image 2/3: ", before every progress message.
    tag: String,
}

impl Ready<'_> {
    fn name(&self) -> &str {
        &self.helper.node.name
    }

    fn say(&self, message: impl std::fmt::Display) {
        self.helper
            .bar
            .set_message(format!("{}{message}", self.tag));
    }
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

/// Loads every image the plans say to on every node, retrying nodes whose failure may pass
/// (a dropped stream, a helper pod killed, a runtime restarting) up to `run.retries` times.
/// A retry starts the node over with a new helper pod and fresh inventories, for the
/// images it still lacks, so it is sent only what it still lacks; nodes retried together
/// share one upload again. Rows per image, each in its plan's node order.
pub async fn execute(run: &Run, images: &[Image<'_>]) -> Vec<Vec<NodeResult>> {
    let Some(first) = images.first() else {
        return Vec::new();
    };
    let started = Instant::now();
    let mut rows: Vec<Vec<Option<NodeResult>>> = images
        .iter()
        .map(|_| vec![None; first.plan.nodes.len()])
        .collect();
    let mut todo = Vec::new();
    for (i, node) in first.plan.nodes.iter().enumerate() {
        let mut wanted = Vec::new();
        for (k, image) in images.iter().enumerate() {
            match &image.plan.nodes[i].decision {
                Decision::Skip { reason } | Decision::Refuse { reason } => {
                    rows[k][i] = Some(result(
                        &node.node.name,
                        started,
                        Status::Skipped,
                        Some(reason.clone()),
                    ));
                }
                Decision::Load { .. } => wanted.push(k),
            }
        }
        if !wanted.is_empty() {
            todo.push(Todo {
                node: i,
                images: wanted,
            });
        }
    }
    let mut retry = 0;
    while !todo.is_empty() {
        for (i, k, r) in attempt(run, images, &todo, retry).await {
            rows[k][i] = Some(match rows[k][i].take() {
                Some(before) => after_retry(before, r),
                None => r,
            });
        }
        if retry >= run.retries || run.cancel.is_cancelled() {
            break;
        }
        // Nodes with an image that failed in a way another attempt could change.
        let again: Vec<Todo> = todo
            .iter()
            .filter_map(|t| {
                let images: Vec<usize> = t
                    .images
                    .iter()
                    .copied()
                    .filter(|&k| {
                        rows[k][t.node]
                            .as_ref()
                            .is_some_and(|r| r.status == Status::Failed && r.retryable)
                    })
                    .collect();
                (!images.is_empty()).then_some(Todo {
                    node: t.node,
                    images,
                })
            })
            .collect();
        if again.is_empty() {
            break;
        }
        retry += 1;
        let wait = backoff(retry);
        for t in &again {
            let r = rows[t.images[0]][t.node].as_ref().expect("a failed row");
            run.progress.println(&format!(
                "{}: {}; retrying in {} s (retry {retry} of {})",
                r.name,
                r.error.as_deref().unwrap_or("failed"),
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
        let names: Vec<&str> = again
            .iter()
            .map(|t| first.plan.nodes[t.node].node.name.as_str())
            .collect();
        let why_not = tokio::select! {
            why = why_not_retry(run, &names) => why,
            () = run.cancel.cancelled() => break,
        };
        todo = again
            .into_iter()
            .filter(|t| {
                let Some(why) = why_not.get(&first.plan.nodes[t.node].node.name) else {
                    return true;
                };
                for &k in &t.images {
                    if let Some(r) = rows[k][t.node].as_mut() {
                        r.retryable = false;
                        r.error = Some(format!(
                            "{}; not retried: {why}",
                            r.error.as_deref().unwrap_or("failed")
                        ));
                    }
                }
                false
            })
            .collect();
    }
    rows.into_iter()
        .map(|image| image.into_iter().map(Option::unwrap_or_default).collect())
        .collect()
}

/// A retry's row, carrying what the attempts before it saw.
fn after_retry(before: NodeResult, mut r: NodeResult) -> NodeResult {
    r.earlier_failures = before.earlier_failures;
    r.earlier_failures.extend(before.error);
    r.attempts = before.attempts + 1;
    r
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

/// One attempt on the nodes of `todo`, each with the images it lists: rows as (node index,
/// image index, result). `retry` is 0 for the first attempt; it keeps helper pod names
/// unique.
async fn attempt(
    run: &Run,
    images: &[Image<'_>],
    todo: &[Todo],
    retry: u32,
) -> Vec<(usize, usize, NodeResult)> {
    let plan = images[0].plan;
    let pods: Api<Pod> = Api::namespaced(run.client.clone(), &plan.helper_namespace);
    let mut rows = Vec::new();

    // Phase 1, every node at once (bounded only against huge clusters): a helper pod
    // takes seconds to start and costs little, and starting them all up front keeps small
    // images from waiting on pod starts one batch after another. `--parallel` bounds the
    // streams of phase 2, which are what costs.
    let reached: Vec<(&Todo, Result<Helper<'_>, NodeResult>)> = futures::stream::iter(todo)
        .map(|t| {
            let pods = &pods;
            async move { (t, reach_node(run, pods, images, t, retry).await) }
        })
        .buffered(PREPARE_AT_ONCE.max(run.parallel))
        .collect()
        .await;
    let mut helpers = Vec::new();
    for (t, reached) in reached {
        match reached {
            Ok(helper) => helpers.push(helper),
            Err(failed) => rows.extend(t.images.iter().map(|&k| (t.node, k, failed.clone()))),
        }
    }

    // Phase 2, image by image. A node that failed one image is not tried with the next
    // (its helper may be gone); a retry takes it up again.
    let mut broken: Vec<Option<NodeResult>> = helpers.iter().map(|_| None).collect();
    let mut served: Vec<bool> = helpers.iter().map(|_| false).collect();
    for (k, image) in images.iter().enumerate() {
        let tag = if images.len() > 1 {
            format!("image {}/{}: ", k + 1, images.len())
        } else {
            String::new()
        };
        let mut ready = Vec::new();
        let mut looked = Vec::new();
        for (h, helper) in helpers.iter().enumerate() {
            if !helper.todo.images.contains(&k) {
                continue;
            }
            // The first image's time includes the helper's start.
            let started = if std::mem::replace(&mut served[h], true) {
                Instant::now()
            } else {
                helper.started
            };
            if let Some(cause) = &broken[h] {
                rows.push((helper.todo.node, k, not_tried(cause, started)));
                continue;
            }
            if run.cancel.is_cancelled() {
                let err = run.stopped("waiting for the images before it");
                rows.push((helper.todo.node, k, failed(run, helper, started, err)));
                continue;
            }
            let Decision::Load { wanted, .. } = &image.plan.nodes[helper.todo.node].decision else {
                continue;
            };
            looked.push((h, wanted.as_ref(), started));
        }
        let inventories = futures::future::join_all(looked.iter().map(|&(h, wanted, _)| {
            let helper = &helpers[h];
            let tag = &tag;
            async move {
                helper.bar.set_message(format!("{tag}what the node holds"));
                tokio::select! {
                    taken = reach::inventory(&helper.session, helper.located.as_ref(), wanted) => taken,
                    () = run.cancel.cancelled() => Err(run.stopped("asking the node agent what the node holds")),
                }
            }
        }))
        .await;
        let mut present = Vec::new();
        for ((h, wanted, started), taken) in looked.into_iter().zip(inventories) {
            let helper = &helpers[h];
            match taken {
                Ok(inventory) if run.force || !inventory.missing.is_empty() => {
                    tracing::debug!(node = %helper.node.name, missing = ?inventory.missing, present = inventory.layers_present.len(), "what the node lacks");
                    ready.push(Ready {
                        helper,
                        wanted,
                        inventory,
                        started,
                        tag: tag.clone(),
                    });
                }
                Ok(inventory) => present.push((h, wanted, inventory, started)),
                Err(err) => {
                    let row = failed(run, helper, started, err);
                    broken[h] = Some(row.clone());
                    rows.push((helper.todo.node, k, row));
                }
            }
        }
        let already = futures::future::join_all(present.into_iter().map(
            |(h, wanted, inventory, started)| {
                let helper = &helpers[h];
                async move {
                    (
                        h,
                        already_present(run, helper, wanted, inventory, started).await,
                    )
                }
            },
        ))
        .await;
        let moved = move_bytes(run, image, &pods, &ready).await;
        let finished = futures::future::join_all(
            ready
                .iter()
                .zip(moved)
                .map(|(r, m)| async move { (r, finish(run, r, m).await) }),
        )
        .await;
        let ends = already.into_iter().chain(
            finished
                .into_iter()
                .map(|(r, row)| (index_of(&helpers, r.helper), row)),
        );
        for (h, row) in ends {
            if row.status == Status::Failed {
                broken[h] = Some(row.clone());
            }
            rows.push((helpers[h].todo.node, k, row));
        }
    }

    // Phase 3: the helpers go. One that cannot be deleted fails its node's rows: "no
    // helper left behind" is part of a load.
    let removed =
        futures::future::join_all(helpers.iter().map(|h| reach::remove(&pods, &h.pod, &h.bar)))
            .await;
    for (h, removed) in helpers.iter().zip(removed) {
        let mine = rows.iter_mut().filter(|(i, _, _)| *i == h.todo.node);
        let mut ok = true;
        for (_, _, row) in mine {
            if let Err(err) = &removed
                && row.status != Status::Failed
            {
                row.status = Status::Failed;
                row.bytes_sent = 0;
                row.bytes_received = 0;
                row.retryable = retryable(run, err);
                row.error = Some(format!("{err:#}"));
            }
            ok &= row.status != Status::Failed;
        }
        if ok {
            h.bar.finish_with_message("done");
        } else {
            h.bar.abandon_with_message("failed");
        }
    }
    rows
}

/// Which of `helpers` `helper` is.
fn index_of(helpers: &[Helper<'_>], helper: &Helper<'_>) -> usize {
    helpers
        .iter()
        .position(|h| std::ptr::eq(h, helper))
        .expect("a ready node's helper is one of the attempt's")
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
        helper: None,
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

/// A node's row for an image that failed with `err` there.
fn failed(run: &Run, helper: &Helper<'_>, started: Instant, err: anyhow::Error) -> NodeResult {
    let mut r = result(
        &helper.node.name,
        started,
        Status::Failed,
        Some(format!("{err:#}")),
    );
    r.helper = Some(helper.pod.clone());
    r.runtime = Some(helper.runtime.clone());
    r.retryable = retryable(run, &err);
    r
}

/// The row of an image a node was not tried with, because an image before it failed
/// there: retried (or not) with it.
fn not_tried(cause: &NodeResult, started: Instant) -> NodeResult {
    let mut r = result(
        &cause.name,
        started,
        Status::Failed,
        Some(format!(
            "not tried: an image before it failed on this node ({})",
            cause.error.as_deref().unwrap_or("failed")
        )),
    );
    r.helper = cause.helper.clone();
    r.runtime = cause.runtime.clone();
    r.retryable = cause.retryable;
    r
}

/// Whether a node that failed with `err` is worth another attempt.
fn retryable(run: &Run, err: &anyhow::Error) -> bool {
    !run.cancel.is_cancelled() && !is_permanent(err)
}

/// Phase 1 for one node: its helper pod up (from the first image's plan: the helper does
/// not depend on the image), the agent's session open, the runtime located; or the row
/// every image of the node gets when that failed.
async fn reach_node<'p>(
    run: &Run,
    pods: &Api<Pod>,
    images: &'p [Image<'p>],
    todo: &'p Todo,
    retry: u32,
) -> Result<Helper<'p>, NodeResult> {
    let started = Instant::now();
    let planned = &images[todo.images[0]].plan;
    let node = &planned.nodes[todo.node];
    let name = node.node.name.as_str();
    let Decision::Load {
        candidates,
        needs,
        pod,
        ..
    } = &node.decision
    else {
        unreachable!("a node is reached only for images it loads");
    };
    let helper = HelperPlan {
        candidates,
        needs: *needs,
        first_pod: pod,
    };
    let bar = run.progress.node_bar(name);
    let failed = |err: anyhow::Error, pod: Option<&str>, bar: &ProgressBar| {
        bar.abandon_with_message("failed");
        let mut r = result(name, started, Status::Failed, Some(format!("{err:#}")));
        r.helper = pod.map(str::to_string);
        r.retryable = retryable(run, &err);
        r
    };
    let running = run
        .reach(pods, planned)
        .start(&node.node, &helper, &bar, retry)
        .await;
    let reach::Reached { pod, ip, session } = match running {
        Ok(reached) => reached,
        Err(err) => return Err(failed(err, None, &bar)),
    };
    let located = tokio::select! {
        located = reach::locate(&session, &node.node, &bar) => located,
        () = run.cancel.cancelled() => Err(run.stopped("asking the node agent where the runtime is")),
    };
    match located {
        Ok(located) => {
            let runtime = located.describe();
            let pod_ip = std::sync::OnceLock::new();
            if let Some(ip) = ip {
                let _ = pod_ip.set(ip);
            }
            Ok(Helper {
                todo,
                node: &node.node,
                session,
                pod,
                pod_ip,
                located,
                runtime,
                bar,
                started,
            })
        }
        Err(err) => {
            let _ = reach::remove(pods, &pod, &bar).await;
            Err(failed(err, Some(&pod), &bar))
        }
    }
}

/// The row of a node that holds the image already, complete (pinned if asked).
async fn already_present(
    run: &Run,
    helper: &Helper<'_>,
    wanted: &Wanted,
    inventory: Inventory,
    started: Instant,
) -> NodeResult {
    let pinned = pin_if_asked(run, helper, wanted).await;
    let mut r = result(
        &helper.node.name,
        started,
        Status::Skipped,
        Some("already present, complete, with the same digest (use --force to re-import)".into()),
    );
    r.helper = Some(helper.pod.clone());
    r.runtime = Some(helper.runtime.clone());
    r.verified_by = Some(inventory.checked_by);
    match pinned {
        Ok(pin) => {
            if let Some(pin) = pin {
                r.pinned = Some(pin.done);
                r.pin_note = Some(pin.note);
            }
        }
        Err(err) => {
            r.status = Status::Failed;
            r.retryable = retryable(run, &err);
            r.error = Some(format!("{err:#}"));
        }
    }
    r
}

/// Phase 2: the bytes, for every ready node (results in the same order).
async fn move_bytes(
    run: &Run,
    image: &Image<'_>,
    pods: &Api<Pod>,
    ready: &[Ready<'_>],
) -> Vec<Moved> {
    // Nodes that need the very same stream: the same platform image (streams name it by
    // the run's staging name, whatever the runtime), with or without Docker's manifest.json,
    // and for Docker cut into parts or not (an engine on the containerd image store needs
    // every blob in one load; the other runtimes all take a cut stream).
    let mut groups: BTreeMap<(String, bool, bool), Vec<usize>> = BTreeMap::new();
    for (k, r) in ready.iter().enumerate() {
        let docker = r.helper.located.reads_docker_manifest();
        let key = (
            r.wanted.manifest.clone(),
            docker,
            docker && r.helper.located.imports_in_parts(),
        );
        groups.entry(key).or_default().push(k);
    }
    let mut moved: Vec<Option<Moved>> = (0..ready.len()).map(|_| None).collect();
    let mut direct = Vec::new();
    let mut relays = Vec::new();
    for members in groups.into_values() {
        let relayable = run.relay
            && members.len() > 1
            && relay_addresses(pods, members.iter().map(|&k| ready[k].helper)).await;
        if relayable {
            relays.push(members);
        } else {
            direct.extend(members.into_iter().map(|k| (k, "direct".to_string())));
        }
    }
    // Relays first, all at once (members mostly wait for bytes); what they did not reach
    // is loaded directly afterwards.
    // The client's buffers per stream shrink with the streams that run at once.
    let chunk = transfer::chunk_for(relays.len());
    let relayed = futures::future::join_all(
        relays
            .iter()
            .map(|members| relay(run, image, pods, ready, members, chunk)),
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
    let at_once = direct.len().min(run.parallel.max(1));
    let chunk = transfer::chunk_for(at_once);
    let directs: Vec<(usize, Moved)> = futures::stream::iter(direct)
        .map(|(k, via)| async move {
            let moved = stream_direct(run, image, pods, &ready[k], via, chunk).await;
            (k, moved)
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

/// How long a relay waits for the kubelet to report a member's pod IP (its agent answered
/// before the kubelet reported the pod running).
const POD_IP_WAIT: Duration = Duration::from_secs(5);

/// Whether every one of `helpers` has a pod IP relay peers can reach it at, waiting a
/// little for those the kubelet has not reported yet.
async fn relay_addresses<'a>(
    pods: &Api<Pod>,
    helpers: impl Iterator<Item = &'a Helper<'a>>,
) -> bool {
    let known = futures::future::join_all(helpers.map(|h| async move {
        if h.pod_ip.get().is_some() {
            return true;
        }
        match helper::pod_ip(pods, &h.pod, POD_IP_WAIT).await {
            Some(ip) => {
                let _ = h.pod_ip.set(ip);
                true
            }
            None => false,
        }
    }))
    .await;
    known.into_iter().all(|k| k)
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
    image: &Image<'_>,
    nodes: impl IntoIterator<Item = &'a Ready<'a>> + Clone,
) -> Result<Transfer> {
    let first = nodes
        .clone()
        .into_iter()
        .next()
        .expect("a transfer has a node");
    let platform_image = image
        .archive
        .image_for(&first.helper.node.platform)?
        .clone();
    Transfer::new(
        Arc::clone(image.archive),
        platform_image,
        common_layers(run, nodes.clone()),
        &run.run_id,
        // Cut when a member imports parts as they come; the others stage them all first.
        run.pipeline
            && nodes
                .clone()
                .into_iter()
                .any(|r| r.helper.located.imports_in_parts()),
        // Streams are grouped by this (`move_bytes`): all or none of the nodes read it.
        first.helper.located.reads_docker_manifest(),
    )
}

/// One node's own stream from the plugin, in chunks of `chunk` bytes.
async fn stream_direct(
    run: &Run,
    image: &Image<'_>,
    pods: &Api<Pod>,
    r: &Ready<'_>,
    via: String,
    chunk: usize,
) -> Moved {
    let work = async {
        let transfer = transfer_for(run, image, [r])?;
        let reused = transfer.reused();
        let parts = transfer.parts();
        r.say(if reused == 0 {
            "sending".to_string()
        } else {
            format!("sending (reusing {reused} layer(s) on the node)")
        });
        tracing::debug!(node = %r.name(), parts, reused, "streaming directly");
        r.helper.bar.set_length(transfer.len());
        r.helper.bar.set_position(0);
        let request = transfer.request(r.helper.located.as_ref(), r.wanted, run.compress);
        let agent = Agent {
            pods,
            pod: &r.helper.pod,
        };
        let len = transfer.len();
        let feed = transfer.feed(
            r.helper.bar.clone(),
            run.compress,
            chunk,
            run.cancel.clone(),
        );
        let (out, written) = agent.run(&request, chunk, feed).await?;
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

/// One upload for all `members` (indexes into `ready`), relayed node to node, in chunks of
/// `chunk` bytes. Per member: what came of it, or `Err(why)` when it must be loaded
/// directly instead.
async fn relay(
    run: &Run,
    image: &Image<'_>,
    pods: &Api<Pod>,
    ready: &[Ready<'_>],
    members: &[usize],
    chunk: usize,
) -> Vec<Result<Moved, String>> {
    let nodes: Vec<&Ready<'_>> = members.iter().map(|&k| &ready[k]).collect();
    let nodes = &nodes;
    let transfer = match transfer_for(run, image, nodes.iter().copied()) {
        Ok(t) => t,
        Err(err) => return nodes.iter().map(|_| Err(format!("{err:#}"))).collect(),
    };
    let token = crate::app::random_token();
    let tree = transfer::relay_tree(nodes.len());
    let addr = |r: &Ready<'_>| {
        format!(
            "{}:{}",
            r.helper.pod_ip.get().map_or("", String::as_str),
            protocol::RELAY_PORT
        )
    };
    let head = nodes[0].name().to_string();
    let reused = transfer.reused();
    let parts = transfer.parts();
    tracing::debug!(head = %head, members = nodes.len(), depth = transfer::relay_depth(nodes.len()), reused, parts, "relaying one upload");
    let token = &token;
    let tree = &tree;
    let runs = nodes.iter().enumerate().map(|(i, r)| {
        let mut request = transfer.request(r.helper.located.as_ref(), r.wanted, run.compress);
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
        let upstream = (i > 0).then(|| nodes[(i - 1) / transfer::FANOUT].name().to_string());
        let len = transfer.len();
        let transfer = transfer.clone();
        async move {
            let agent = Agent {
                pods,
                pod: &r.helper.pod,
            };
            let work = async {
                if i == 0 {
                    r.say(format!("sending once for {} node(s)", nodes.len()));
                    r.helper.bar.set_length(transfer.len());
                    r.helper.bar.set_position(0);
                    let feed =
                        transfer.feed(r.helper.bar.clone(), run.compress, chunk, run.cancel.clone());
                    let (out, written) = agent.run(&request, chunk, feed).await?;
                    Ok::<_, anyhow::Error>((out, written.unwrap_or(0)))
                } else {
                    r.say(format!(
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
                    tracing::debug!(node = %r.name(), code = out.exit_code, stderr = %out.stderr, "relay member finished");
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
        // The stop also fails the feed's next write, so the work may end with that error
        // in the same instant: it too is the stop, named by its step.
        done = &mut work => match done {
            Err(_) if run.cancel.is_cancelled() => Err(run.stopped(step)),
            done => done,
        },
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

/// Phase 2's end for one node and image: verify what was imported, and pin it if asked.
async fn finish(run: &Run, r: &Ready<'_>, moved: Moved) -> NodeResult {
    let helper = r.helper;
    let mut out = result(r.name(), r.started, Status::Failed, None);
    out.helper = Some(helper.pod.clone());
    out.runtime = Some(helper.runtime.clone());
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
            r.say("verifying");
            let verified = tokio::select! {
                v = verify(r) => v,
                () = run.cancel.cancelled() => Err(run.stopped("verifying the import")),
            };
            match verified {
                Ok(by) => pin_if_asked(run, helper, r.wanted).await.map(|pin| {
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
    match verified {
        Ok(by) => {
            r.say("loaded");
            out.status = Status::Loaded;
            out.verified_by = Some(by);
        }
        Err(err) => {
            r.say("failed");
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
async fn pin_if_asked(run: &Run, helper: &Helper<'_>, wanted: &Wanted) -> Result<Option<pin::Pin>> {
    if !run.pin {
        return Ok(None);
    }
    helper.bar.set_message("pinning");
    tokio::select! {
        pinned = pin::apply(&helper.session, helper.located.as_ref(), &wanted.refs, true) => pinned.map(Some),
        () = run.cancel.cancelled() => Err(run.stopped("pinning the image")),
    }
}

/// The runtime holds the image as it must; CRI learns of an import from the runtime's
/// events, so it gets a moment.
async fn verify(r: &Ready<'_>) -> Result<String> {
    let (session, located) = (&r.helper.session, r.helper.located.as_ref());
    let mut after = reach::inventory(session, located, r.wanted).await?;
    for _ in 0..10 {
        if after.missing.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        after = reach::inventory(session, located, r.wanted).await?;
    }
    if !after.missing.is_empty() {
        bail!(
            "import finished but the runtime does not hold the image as it must: {}",
            after.missing.join("; ")
        );
    }
    tracing::debug!(node = %r.name(), "verified");
    Ok(after.checked_by)
}
