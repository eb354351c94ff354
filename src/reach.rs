//! Reaching a node: its helper pod started (the candidate images in turn, raced against the
//! node going away and the run stopping), its runtime located through the agent, and the
//! pod removed again. Shared by a load (load.rs) and by the commands that only look at or
//! make small changes to what nodes hold (visit.rs).

use crate::app::say;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use indicatif::ProgressBar;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod};
use kube::api::Api;
use sideload_agent::protocol::Query;
use tokio_util::sync::CancellationToken;

use crate::cli::format_duration;
use crate::cluster::agent::{self, Agent, Session};
use crate::cluster::errors::{NoServiceAccountYet, Permanent};
use crate::cluster::helper::{self, HelperImage, HelperSpec, Needs, Runs, Started};
use crate::cluster::lease::{self, Heartbeat};
use crate::cluster::nodes::NodeFacts;
use crate::runtime::{Inventory, Located, Wanted};

/// How often a node whose helper pod is starting is looked at again.
const NODE_POLL: Duration = Duration::from_secs(5);

/// How long a helper namespace may lack its "default" ServiceAccount before the node fails:
/// the controller-manager makes it within a second of the namespace, or some seconds after
/// it reconnected to a restarted API server.
const ACCOUNT_PATIENCE: Duration = Duration::from_secs(60);

/// What starting and removing helper pods needs of the run.
pub struct Reach<'a> {
    pub client: &'a kube::Client,
    pub pods: &'a Api<Pod>,
    pub namespace: &'a str,
    pub run_id: &'a str,
    pub helper_timeout: Duration,
    /// Cancelled when the run stops: a pod still starting is deleted at once.
    pub cancel: &'a CancellationToken,
    /// Why the run was stopped ("interrupt", "--timeout 5m passed"), once it was.
    pub stopped_by: &'a OnceLock<String>,
}

/// How a node's helper pod is started: the images to try, in order, what the pod needs
/// of the node, and the pod for the first image (built when the run was planned).
pub struct HelperPlan<'a> {
    pub candidates: &'a [HelperImage],
    pub needs: Needs,
    pub first_pod: &'a Pod,
}

impl Reach<'_> {
    /// The error of a node cancelled during `step`: names the reason and the step.
    pub fn stopped(&self, step: &str) -> anyhow::Error {
        stopped(self.stopped_by, step)
    }

    /// Creates a helper pod, waiting (up to [`ACCOUNT_PATIENCE`]) while its namespace has
    /// no ServiceAccount yet: a namespace made just before the run works, as it would for
    /// `kubectl run`, instead of failing its nodes with a misleading "permission denied".
    async fn create(&self, pod: &Pod, bar: &ProgressBar) -> Result<String> {
        let since = tokio::time::Instant::now();
        loop {
            // Not raced against `cancel`: once the API has the create, we must learn the
            // pod's name to delete it. Only the pause between tries is.
            match helper::create(self.pods, pod, false).await {
                Err(err) if err.is::<NoServiceAccountYet>() => {
                    if since.elapsed() >= ACCOUNT_PATIENCE {
                        return Err(Permanent(format!(
                            "{err:#} (waited {})",
                            format_duration(since.elapsed())
                        ))
                        .into());
                    }
                    tracing::debug!(
                        namespace = self.namespace,
                        "no service account yet; waiting"
                    );
                    bar.set_message("waiting for the namespace's default service account");
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                        () = self.cancel.cancelled() => return Err(self.stopped("waiting for its namespace's service account")),
                    }
                }
                created => return created,
            }
        }
    }

    /// Starts the node's helper pod, trying the next candidate image while one cannot be
    /// used, and opens its agent's session. A pod that did not run, or whose agent could
    /// not be reached, is deleted here. `retry` (0 for a first attempt) keeps pod names
    /// unique over attempts.
    pub async fn start(
        &self,
        node: &NodeFacts,
        plan: &HelperPlan<'_>,
        bar: &ProgressBar,
        retry: u32,
    ) -> Result<Reached> {
        let mut unusable = Vec::new();
        for (attempt, candidate) in plan.candidates.iter().enumerate() {
            if self.cancel.is_cancelled() {
                return Err(self.stopped("waiting to create its helper pod"));
            }
            let pod = if retry == 0 && attempt == 0 {
                plan.first_pod.clone()
            } else {
                helper::pod(&HelperSpec {
                    node: &node.name,
                    namespace: self.namespace,
                    run_id: self.run_id,
                    image: &candidate.image,
                    arch: &node.platform.architecture,
                    needs: plan.needs,
                    // Unique over retries too: a pod of an earlier attempt may still be going.
                    attempt: retry as usize * plan.candidates.len() + attempt,
                })
            };
            bar.set_message(format!("starting helper pod ({})", candidate.image));
            let name = self.create(&pod, bar).await?;
            tracing::debug!(node = %node.name, pod = %name, image = %candidate.image, "helper pod created");
            let started = tokio::select! {
                started = helper::wait_running(self.pods, &name, self.helper_timeout) => started.map(Up::Reported),
                session = early_session(self.pods, &name) => Ok(Up::Answered(session)),
                why = node_lost(self.client, &node.name) => Err(Permanent(format!("{why} before its helper pod {name} started")).into()),
                () = self.cancel.cancelled() => Err(self.stopped("starting its helper pod")),
            };
            match started {
                Ok(Up::Answered(session)) => {
                    tracing::debug!(node = %node.name, "helper agent answered before the kubelet reported it running");
                    return Ok(Reached {
                        pod: name,
                        ip: None,
                        session,
                    });
                }
                Ok(Up::Reported(Started::Running(ip))) => {
                    tracing::debug!(node = %node.name, ?ip, "helper pod running");
                    let agent = Agent {
                        pods: self.pods,
                        pod: &name,
                    };
                    let opened = tokio::select! {
                        opened = Session::open(&agent) => opened,
                        () = self.cancel.cancelled() => Err(self.stopped("opening the node agent's session")),
                    };
                    return match opened {
                        Ok(session) => Ok(Reached {
                            pod: name,
                            ip,
                            session,
                        }),
                        Err(err) => {
                            let _ = remove(self.pods, &name, bar).await;
                            Err(err)
                        }
                    };
                }
                Ok(Up::Reported(Started::ImageUnusable(why))) => {
                    tracing::debug!(node = %node.name, image = %candidate.image, %why, "helper image unusable, trying the next");
                    unusable.push(format!("{} ({why})", candidate.image));
                    remove(self.pods, &name, bar).await?;
                }
                Err(err) => {
                    let _ = remove(self.pods, &name, bar).await;
                    return Err(err);
                }
            }
        }
        Err(Permanent(format!(
            "no image the helper could start from is on the node; tried: {}; pass \
             --helper-image with an image present on the node",
            unusable.join("; ")
        ))
        .into())
    }
}

/// A node's helper pod, running, with its agent's session open.
pub struct Reached {
    pub pod: String,
    /// The pod's IP, where relay peers reach its agent, if the kubelet had reported it
    /// yet (else `helper::pod_ip` waits for it).
    pub ip: Option<String>,
    pub session: Session,
}

/// How a helper pod came up: the kubelet reported it, or its agent answered first.
enum Up {
    Reported(Started),
    Answered(Session),
}

/// How often an exec into a helper pod that is still starting is tried.
const EARLY_EXEC_POLL: Duration = Duration::from_millis(200);

/// The agent's session, opened as soon as the container runs: the kubelet reports a pod
/// Running only after its next relist of the runtime (up to a second later, longer on a
/// busy node), while an exec reaches the container at once. An exec the kubelet refuses
/// (the container does not run yet: it fails the first question, not the opening) is
/// tried again; `wait_running` decides when to give up.
async fn early_session(pods: &Api<Pod>, name: &str) -> Session {
    let agent = Agent { pods, pod: name };
    loop {
        tokio::time::sleep(EARLY_EXEC_POLL).await;
        if let Ok(session) = Session::open(&agent).await
            && session.query(&Query::default(), "hello").await.is_ok()
        {
            return session;
        }
    }
}

/// The end of a run that finished (or unwound): every node task deleted its pods, and a
/// sweep by run label catches a delete the API server never took (it was down longer than
/// a delete persists); then the agent's ConfigMaps, then the Lease. Returns what failed.
pub async fn end_run(
    client: &kube::Client,
    namespace: &str,
    run_id: &str,
    heartbeat: Option<Heartbeat>,
) -> Vec<anyhow::Error> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let swept = helper::sweep(&pods, Runs::One(run_id), Duration::ZERO).await;
    let removed = agent::delete_configmaps(&configmaps, Runs::One(run_id)).await;
    if let Some(heartbeat) = heartbeat {
        heartbeat.stop().await;
    }
    [swept.err(), removed.err()].into_iter().flatten().collect()
}

/// How long a run's Lease must have been expired before a later run removes what it left:
/// far past the Lease's own [`lease::DURATION`], so a run whose renewals stalled for a
/// while (a busy API server, a laptop's network blinking) is never taken for dead.
pub const LEFT_FOR: Duration = Duration::from_secs(120);

/// Removes what runs that died without cleaning up (SIGKILL, a crash, a machine gone) left
/// in the helper namespace: their helper pods, agent ConfigMaps and Lease, once the Lease
/// has been expired for [`LEFT_FOR`]. A privileged pod should not wait for someone to
/// remember `cleanup`. Housekeeping only: what fails here is left for `cleanup` and never
/// fails this run. Returns a line for the user per run whose pods it removed.
pub async fn tidy_dead_runs(client: &kube::Client, namespace: &str) -> Vec<String> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), namespace);
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let liveness = match lease::liveness(&leases).await {
        Ok(liveness) => liveness,
        Err(err) => {
            tracing::debug!(%err, "cannot list runs; leftovers of dead runs are left");
            return Vec::new();
        }
    };
    let mut said = Vec::new();
    for dead in liveness.expired {
        // A Lease without its run label or renewal time is not one of ours to judge.
        let (Some(run), Some(ago)) = (&dead.run, dead.ago) else {
            continue;
        };
        if ago < LEFT_FOR {
            continue;
        }
        let runs = Runs::One(run);
        let removed = async {
            let pods = helper::sweep(&pods, runs, Duration::ZERO).await?;
            agent::delete_configmaps(&configmaps, runs).await?;
            lease::delete(&leases, std::slice::from_ref(&dead.lease)).await?;
            anyhow::Ok(pods)
        };
        match removed.await {
            Ok(pods) if !pods.is_empty() => said.push(format!(
                "removed {} helper pod(s) left by run {run}, which ended {} ago without \
                 removing them",
                pods.len(),
                format_duration(ago)
            )),
            Ok(_) => {}
            Err(err) => tracing::debug!(%run, %err, "leftovers of a dead run left"),
        }
    }
    said
}

/// Warns of what [`end_run`] could not remove, naming the command that can.
pub fn warn_left(errors: &[anyhow::Error], namespace: &str) {
    for err in errors {
        say!("warning: {err:#}; run `kubectl sideload cleanup --helper-namespace {namespace}`");
    }
}

/// Deletes a helper pod, waiting a little for it to go.
pub async fn remove(pods: &Api<Pod>, name: &str, bar: &ProgressBar) -> Result<()> {
    bar.set_message("removing helper pod");
    let removed = helper::delete(pods, name, Duration::from_secs(30)).await;
    tracing::debug!(pod = %name, "helper pod deleted");
    removed.with_context(|| {
        format!("could not delete helper pod {name}; run `kubectl sideload cleanup`")
    })
}

/// Where the node's runtime is, asked in the agent's session: its socket, its tools and,
/// if the adapter needs a second look, their versions and configuration.
pub async fn locate(
    agent: &Session,
    node: &NodeFacts,
    bar: &ProgressBar,
) -> Result<Box<dyn Located>> {
    let adapter = node.runtime.adapter().map_err(|e| anyhow!(e))?;
    let endpoint = node.runtime_endpoint.as_deref();
    bar.set_message("finding the runtime");
    let answer = agent
        .query(&adapter.locate_query(endpoint), "locate")
        .await?;
    let mut located = adapter.locate(endpoint, &answer)?;
    if let Some(query) = located.probe_query() {
        let answer = agent.query(&query, "probe").await?;
        located.configure(&answer)?;
    }
    tracing::debug!(node = %node.name, runtime = %located.describe(), "runtime located");
    Ok(located)
}

/// What the node holds of `wanted`, asked in the agent's session (one question, or two
/// where the runtime's first answer raises another).
pub async fn inventory(
    session: &Session,
    located: &dyn Located,
    wanted: &Wanted,
) -> Result<Inventory> {
    let mut answer = session
        .query(&located.inventory_query(wanted), "inventory")
        .await?;
    if let Some(more) = located.inventory_followup(wanted, &answer) {
        let more = session.query(&more, "inventory").await?;
        answer.results.extend(more.results);
    }
    located.inventory(wanted, &answer)
}

/// The error of a node cancelled during `step`: names why the run stopped and the step.
pub fn stopped(stopped_by: &OnceLock<String>, step: &str) -> anyhow::Error {
    let why = stopped_by.get().map_or("interrupted", String::as_str);
    anyhow!("{why} while {step}")
}

/// Why a node (as the API has it now) can start no helper pod, if it cannot.
pub fn unusable(node: Option<&Node>) -> Option<String> {
    match node {
        Some(node) if NodeFacts::from_node(node).ready => None,
        Some(_) => Some("the node went NotReady (its kubelet stopped reporting)".into()),
        None => Some("the node was deleted".into()),
    }
}

/// Resolves once the node cannot start a pod (NotReady or deleted), polling every few
/// seconds: a helper pod waiting on a node whose kubelet is gone would otherwise wait out
/// --helper-timeout. A failed read keeps polling.
async fn node_lost(client: &kube::Client, name: &str) -> String {
    let api: Api<Node> = Api::all(client.clone());
    loop {
        tokio::time::sleep(NODE_POLL).await;
        if let Ok(node) = api.get_opt(name).await
            && let Some(why) = unusable(node.as_ref())
        {
            return why;
        }
    }
}
