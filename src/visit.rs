//! `status` and `unpin`: what nodes hold of some images, and handing pinned ones back to the
//! kubelet's image GC. The same helper as a load reaches each node (reach.rs), all nodes at
//! once; no image moves. What a node holds is asked of CRI (`crictl inspecti`), because CRI
//! is what the kubelet sees; with an archive, the load's own inventory also says whether the
//! node holds exactly that image, complete.

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Result, anyhow};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use serde::Serialize;
use sideload_agent::protocol::Query;
use tokio_util::sync::CancellationToken;

use crate::archive::reference;
use crate::cluster::agent::Session;
use crate::cluster::errors::explain;
use crate::cluster::helper::{HelperImage, Needs};
use crate::cluster::nodes::NodeFacts;
use crate::pin;
use crate::plan::LeftOut;
use crate::progress::Progress;
use crate::reach::{self, HelperPlan, Reach};
use crate::runtime::{Located, Wanted};

/// Nodes reached at once: a helper pod costs little and takes seconds to start.
const AT_ONCE: usize = 32;

/// What to do on each node.
pub enum Job {
    /// Report `refs`; for targets with an archive's image ([`Target::wanted`]) also whether
    /// the node holds exactly that image.
    Status { refs: Vec<String> },
    /// Unpin every one of `refs` the node holds.
    Unpin { refs: Vec<String> },
    /// Remove every one of `refs` the node holds, unless a pod on the node uses it (then
    /// only with `force`); with `dry_run` only say what would go.
    Remove {
        refs: Vec<String>,
        force: bool,
        dry_run: bool,
    },
}

impl Job {
    /// The images the job is about.
    pub fn refs(&self) -> &[String] {
        match self {
            Job::Status { refs } | Job::Unpin { refs } | Job::Remove { refs, .. } => refs,
        }
    }
}

/// One node to visit: its facts, and how its helper starts or why it is left out.
pub struct Target {
    pub node: NodeFacts,
    pub helper: Result<(Vec<HelperImage>, Needs, Pod), LeftOut>,
    /// The archive's image for this node's platform, for `status ARCHIVE`.
    pub wanted: Option<Wanted>,
}

/// The run's settings.
pub struct Visit<'a> {
    pub client: &'a kube::Client,
    pub namespace: &'a str,
    pub run_id: &'a str,
    pub helper_timeout: Duration,
    pub cancel: CancellationToken,
    pub stopped_by: OnceLock<String>,
    pub progress: Progress,
}

/// One node's answer.
#[derive(Debug, Clone, Serialize)]
pub struct NodeRow {
    pub name: String,
    /// Why the node was not looked at, or the visit failed (a node named with --nodes that
    /// cannot be visited is an error too).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Why a node of an implicit selection (all, a selector) was left out: NotReady, …
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runtime: Option<String>,
    pub images: Vec<ImageRow>,
    /// `--constrain` labels of the node about these images (status.rs fills them in).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<LabelRow>,
}

/// A `--constrain` label on one node, judged by what CRI holds of the refs it names.
#[derive(Debug, Clone, Serialize)]
pub struct LabelRow {
    pub key: String,
    /// Whether the node holds what the label promises (the refs asked about, each the
    /// image the label recorded).
    pub holds: bool,
    /// Why not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// `rm`: what became of the label.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
}

/// One ref on one node.
#[derive(Debug, Clone, Serialize)]
pub struct ImageRow {
    pub reference: String,
    pub present: bool,
    /// The image ID (config digest) CRI reports for the ref.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub pinned: bool,
    /// With an archive: whether the node holds exactly its image, complete, under this ref
    /// (the load's own check), and if not, why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub matches_archive: Option<bool>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
    /// Pods on the node running the image (namespace/name).
    pub used_by: Vec<String>,
    /// `unpin` and `rm`: what happened to the ref on this node.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
}

/// Visits every target, at most [`AT_ONCE`] at a time; rows in the targets' order. Every
/// helper pod created is deleted before this returns, also when `visit.cancel` fires.
pub async fn each(visit: &Visit<'_>, targets: &[Target], job: &Job) -> Result<Vec<NodeRow>> {
    // Which pods use an image is what keeps `rm` from removing one in use: without it,
    // `rm` stops; `status` and `unpin` go on and say so.
    let users = match pods_by_node(visit.client).await {
        Ok(users) => users,
        Err(err) if matches!(job, Job::Remove { force: false, .. }) => {
            return Err(err.context("rm must know which pods use an image; nothing was removed"));
        }
        Err(err) => {
            visit.progress.println(&format!(
                "warning: {err:#}; the USED BY column is empty for want of it"
            ));
            BTreeMap::new()
        }
    };
    let pods: Api<Pod> = Api::namespaced(visit.client.clone(), visit.namespace);
    let reach = Reach {
        client: visit.client,
        pods: &pods,
        namespace: visit.namespace,
        run_id: visit.run_id,
        helper_timeout: visit.helper_timeout,
        cancel: &visit.cancel,
        stopped_by: &visit.stopped_by,
    };
    let no_pods = Vec::new();
    let rows = futures::stream::iter(targets.iter().map(|t| {
        let used = users.get(&t.node.name).unwrap_or(&no_pods);
        one(visit, &reach, t, job, used)
    }))
    .buffered(AT_ONCE)
    .collect::<Vec<_>>()
    .await;
    Ok(rows)
}

async fn one(
    visit: &Visit<'_>,
    reach: &Reach<'_>,
    target: &Target,
    job: &Job,
    used: &[PodImages],
) -> NodeRow {
    let mut row = NodeRow {
        name: target.node.name.clone(),
        error: None,
        skipped: None,
        runtime: None,
        images: Vec::new(),
        labels: Vec::new(),
    };
    let (candidates, needs, first_pod) = match &target.helper {
        Ok(helper) => helper,
        Err(LeftOut::Skip(reason)) => {
            row.skipped = Some(reason.clone());
            return row;
        }
        Err(LeftOut::Refuse(reason)) => {
            row.error = Some(reason.clone());
            return row;
        }
    };
    let bar = visit.progress.node_bar(&target.node.name);
    let helper = HelperPlan {
        candidates,
        needs: *needs,
        first_pod,
    };
    let reach::Reached { pod, session, .. } =
        match reach.start(&target.node, &helper, &bar, 0).await {
            Ok(reached) => reached,
            Err(err) => {
                bar.abandon_with_message("failed");
                row.error = Some(format!("{err:#}"));
                return row;
            }
        };
    let done = tokio::select! {
        done = async {
            let located = reach::locate(&session, &target.node, &bar).await?;
            row.runtime = Some(located.describe());
            bar.set_message("asking CRI");
            on_node(&session, located.as_ref(), target, job, used).await
        } => done,
        () = visit.cancel.cancelled() => Err(reach.stopped("asking the node")),
    };
    let removed = reach::remove(reach.pods, &pod, &bar).await;
    match done.and_then(|images| removed.map(|()| images)) {
        Ok(images) => {
            bar.finish_with_message("done");
            row.images = images;
        }
        Err(err) => {
            bar.abandon_with_message("failed");
            row.error = Some(format!("{err:#}"));
        }
    }
    row
}

/// The job, on a node whose runtime is located.
async fn on_node(
    session: &Session,
    located: &dyn Located,
    target: &Target,
    job: &Job,
    used: &[PodImages],
) -> Result<Vec<ImageRow>> {
    let refs = job.refs();
    let commands = located.cri_inspect(refs).ok_or_else(|| {
        anyhow!("the node has no crictl: status asks CRI, as the kubelet does, through crictl")
    })?;
    let answer = session
        .query(
            &Query {
                commands,
                ..Default::default()
            },
            "status",
        )
        .await?;
    let cri = located.read_inspect(refs, &answer.results);
    let mut rows: Vec<ImageRow> = refs
        .iter()
        .zip(cri)
        .map(|(r, image)| ImageRow {
            reference: r.clone(),
            present: image.is_some(),
            used_by: image
                .as_ref()
                .map(|i| users_of(used, r, &i.id))
                .unwrap_or_default(),
            pinned: image.as_ref().is_some_and(|i| i.pinned),
            id: image.map(|i| i.id),
            matches_archive: None,
            problems: Vec::new(),
            action: None,
        })
        .collect();
    match job {
        Job::Status { .. } => {
            if let Some(wanted) = &target.wanted {
                let inventory = reach::inventory(session, located, wanted).await?;
                for row in &mut rows {
                    // The inventory's reasons name the ref they are about.
                    row.problems = inventory
                        .missing
                        .iter()
                        .filter(|m| mentions(m, &row.reference))
                        .cloned()
                        .collect();
                    row.matches_archive = Some(row.present && row.problems.is_empty());
                }
            }
        }
        Job::Unpin { .. } => {
            let held: Vec<String> = rows
                .iter()
                .filter(|r| r.present)
                .map(|r| r.reference.clone())
                .collect();
            let outcome = if held.is_empty() {
                None
            } else {
                Some(pin::apply(session, located, &held, false).await?)
            };
            for row in &mut rows {
                row.action = Some(match (&outcome, row.present) {
                    (Some(p), true) if p.done => {
                        row.pinned = false;
                        "unpinned".into()
                    }
                    (Some(p), true) => format!("not changed: {}", p.note),
                    _ => "not on the node".into(),
                });
            }
        }
        Job::Remove { force, dry_run, .. } => {
            for row in &mut rows {
                row.action = Some(remove(session, located, row, *force, *dry_run).await?);
            }
        }
    }
    Ok(rows)
}

/// `rm` of one ref on one node: what became of it. A ref a pod uses stays unless `force`;
/// one that was removed is checked gone through CRI.
async fn remove(
    session: &Session,
    located: &dyn Located,
    row: &mut ImageRow,
    force: bool,
    dry_run: bool,
) -> Result<String> {
    if !row.present {
        return Ok("not on the node".into());
    }
    if !row.used_by.is_empty() && !force {
        return Ok(format!(
            "kept: used by {}; stop those pods first, or pass --force",
            row.used_by.join(", ")
        ));
    }
    if dry_run {
        return Ok("would be removed (dry run)".into());
    }
    let command = located
        .remove_ref(&row.reference)
        .ok_or_else(|| anyhow!("the node has no crictl to remove images with"))?;
    let answer = session
        .query(
            &Query {
                commands: vec![command],
                ..Default::default()
            },
            "remove",
        )
        .await?;
    let removed = answer
        .results
        .first()
        .ok_or_else(|| anyhow!("the node agent ran no removal"))?;
    if removed.exit_code != 0 {
        anyhow::bail!(
            "removing {} failed on the node (exit code {}): {}",
            row.reference,
            removed.exit_code,
            removed.stderr.trim()
        );
    }
    // containerd's CRI learns of the removal from the runtime's events: a moment.
    let refs = std::slice::from_ref(&row.reference);
    let check = located.cri_inspect(refs).unwrap_or_default();
    let mut gone = check.is_empty();
    for attempt in 0..10 {
        if gone {
            break;
        }
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let query = Query {
            commands: check.clone(),
            ..Default::default()
        };
        let answer = session.query(&query, "removal check").await?;
        gone = located
            .read_inspect(refs, &answer.results)
            .first()
            .is_some_and(Option::is_none);
    }
    if !gone {
        anyhow::bail!("removed {}, but CRI still lists it", row.reference);
    }
    row.present = false;
    row.pinned = false;
    Ok("removed".into())
}

/// Whether an inventory reason is about `reference` ("REF is not listed", "CRI does not
/// list REF", …) rather than another ref of the image.
fn mentions(reason: &str, reference: &str) -> bool {
    reason
        .split(|c: char| c.is_whitespace() || c == ',' || c == ';')
        .any(|word| word == reference)
}

/// A pod's images: what its spec asks for (normalised) and the image IDs its status shows.
#[derive(Debug, Clone, Default)]
pub struct PodImages {
    pub pod: String,
    pub refs: Vec<String>,
    pub ids: Vec<String>,
}

/// The pods of every node, one list for the whole cluster.
async fn pods_by_node(client: &kube::Client) -> Result<BTreeMap<String, Vec<PodImages>>> {
    let api: Api<Pod> = Api::all(client.clone());
    let pods = api
        .list(&ListParams::default())
        .await
        .map_err(|e| explain(e, "list", "pods"))?;
    let mut by_node: BTreeMap<String, Vec<PodImages>> = BTreeMap::new();
    for pod in pods.items {
        let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) else {
            continue;
        };
        by_node.entry(node).or_default().push(images_of(&pod));
    }
    Ok(by_node)
}

fn images_of(pod: &Pod) -> PodImages {
    let meta = &pod.metadata;
    let name = format!(
        "{}/{}",
        meta.namespace.as_deref().unwrap_or_default(),
        meta.name.as_deref().unwrap_or_default()
    );
    let spec = pod.spec.as_ref();
    let refs = spec
        .into_iter()
        .flat_map(|s| {
            s.containers
                .iter()
                .chain(s.init_containers.iter().flatten())
        })
        .filter_map(|c| c.image.as_deref())
        .filter_map(|i| reference::normalize(i).ok())
        .collect();
    let status = pod.status.as_ref();
    let ids = status
        .into_iter()
        .flat_map(|s| {
            s.container_statuses
                .iter()
                .flatten()
                .chain(s.init_container_statuses.iter().flatten())
        })
        .map(|c| c.image_id.clone())
        .collect();
    PodImages {
        pod: name,
        refs,
        ids,
    }
}

/// The pods that run `reference` (asked for by that name, or reported running image `id`).
fn users_of(pods: &[PodImages], reference: &str, id: &str) -> Vec<String> {
    let bare = id.strip_prefix("sha256:").unwrap_or(id);
    pods.iter()
        .filter(|p| {
            p.refs.iter().any(|r| r == reference)
                || (!bare.is_empty() && p.ids.iter().any(|i| i.ends_with(bare)))
        })
        .map(|p| p.pod.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pods_use_an_image_by_its_name_or_its_id() {
        let pods = vec![
            PodImages {
                pod: "web/a".into(),
                refs: vec!["docker.io/library/app:v2".into()],
                ids: vec![],
            },
            PodImages {
                pod: "web/b".into(),
                refs: vec!["docker.io/library/other:v1".into()],
                ids: vec!["docker.io/library/other@sha256:feed".into()],
            },
            PodImages {
                pod: "web/c".into(),
                refs: vec![],
                ids: vec!["sha256:c0ffee".into()],
            },
        ];
        assert_eq!(
            users_of(&pods, "docker.io/library/app:v2", "sha256:c0ffee"),
            ["web/a", "web/c"]
        );
        assert!(users_of(&pods, "docker.io/library/x:1", "").is_empty());
    }

    #[test]
    fn reasons_are_matched_to_their_ref_by_whole_words() {
        let r = "docker.io/library/app:v2";
        assert!(mentions("docker.io/library/app:v2 is not listed", r));
        assert!(mentions("CRI does not list docker.io/library/app:v2", r));
        assert!(!mentions("docker.io/library/app:v22 is not listed", r));
    }
}
