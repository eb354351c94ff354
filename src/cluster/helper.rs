//! The helper pod: a short-lived pod pinned to one node, whose only program is the node
//! agent (cluster::agent), through which the plugin runs the node's own tools.
//!
//! It brings no image of its own (air-gapped nodes can pull nothing) and trusts none: the
//! container starts from any image the node already holds, but its command is the agent,
//! mounted from a ConfigMap, and the agent never reads a file of that image (DESIGN.md,
//! "Security"). The image only has to exist, so when one is gone (the kubelet's list lags
//! removals) the next candidate is tried.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Result, anyhow};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, EmptyDirVolumeSource, HostPathVolumeSource,
    KeyToPath, Pod, PodSpec, SELinuxOptions, SeccompProfile, SecurityContext, Toleration, Volume,
    VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::runtime::wait::{await_condition, conditions};
use serde::Serialize;
use sha2::{Digest, Sha256};
use sideload_agent::protocol;

use crate::archive::reference;
use crate::cluster::agent;
use crate::cluster::errors::{explain, persist};
use crate::cluster::nodes::NodeFacts;

/// Label every object of a run carries; `cleanup` deletes what matches it.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "kubectl-sideload");
/// Label naming the run that created an object, so concurrent runs never touch each other's.
pub const RUN_LABEL: &str = "sideload.dev/run";
/// Label naming the node a helper pod serves.
pub const NODE_LABEL: &str = "sideload.dev/node";
/// The helper's container name, used for exec.
pub const CONTAINER: &str = "helper";
/// How long a helper may live even if the plugin dies without cleaning up: the kubelet
/// stops it then, and `kubectl sideload cleanup` removes the object.
const ACTIVE_DEADLINE: i64 = 3600;
/// Images tried per node before giving up on it.
pub const MAX_CANDIDATES: usize = 5;

/// An image the helper container may start from, and why it was picked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HelperImage {
    pub image: String,
    pub source: &'static str,
}

/// The images a node's helper may start from, most likely present first. Any image will
/// do (the agent needs nothing of it), so this is only about which one surely exists:
/// the user's `--helper-image` alone if given; else pause images the node lists (the
/// sandbox image: every pod uses it, runtimes pin it; smallest first), images of pods
/// running there, the other images it lists (smallest first), and pause images other
/// nodes list (the kubelet lists at most 50 images, largest first, so a busy node's own
/// list may have lost its pause image). Images named in `changing` (what this run loads,
/// removes or looks for) come last: they are the likeliest to have just left the node,
/// and the kubelet's list trails a removal by up to its status period, so a helper
/// started from one fails with ErrImageNeverPull and costs a pod start (`rm`, then a
/// load of the same image, did exactly that).
pub fn candidates(
    user: Option<&str>,
    node: &NodeFacts,
    others: &[NodeFacts],
    changing: &[String],
) -> Vec<HelperImage> {
    if let Some(image) = user {
        return vec![HelperImage {
            image: image.to_string(),
            source: "--helper-image",
        }];
    }
    let is_changing = |name: &str| {
        let name = reference::normalize(name).unwrap_or_else(|_| name.to_string());
        changing.contains(&name)
    };
    let mut out: Vec<HelperImage> = Vec::new();
    let mut later: Vec<HelperImage> = Vec::new();
    let mut push = |image: &str, changing: bool, source: &'static str| {
        if !out.iter().chain(&later).any(|c| c.image == image) {
            let pile = if changing { &mut later } else { &mut out };
            pile.push(HelperImage {
                image: image.to_string(),
                source,
            });
        }
    };
    // (name, size, whether any of its names is changing)
    let mut listed: Vec<(&str, i64, bool)> = node
        .images
        .iter()
        .filter_map(|i| {
            let changing = i.names.iter().any(|n| is_changing(n));
            named(&i.names).map(|n| (n, i.size, changing))
        })
        .collect();
    listed.sort_by_key(|(name, size, _)| (*size, *name));
    for (name, _, changing) in listed.iter().filter(|(n, ..)| is_pause_name(n)) {
        push(name, *changing, "pause image the node lists");
    }
    for image in &node.running_images {
        push(
            image,
            is_changing(image),
            "image of a pod running on the node",
        );
    }
    for (name, _, changing) in &listed {
        push(name, *changing, "image the node lists");
    }
    for other in others.iter().filter(|o| o.name != node.name) {
        for image in &other.images {
            if let Some(name) = named(&image.names).filter(|n| is_pause_name(n)) {
                push(name, is_changing(name), "pause image another node lists");
            }
        }
    }
    out.append(&mut later);
    out.truncate(MAX_CANDIDATES);
    out
}

/// The name to put in a pod spec: a tag, not a digest reference (both name the same
/// image; a tag is what a reader recognises).
fn named(names: &[String]) -> Option<&str> {
    names
        .iter()
        .find(|n| !n.contains("@sha256:"))
        .or_else(|| names.first())
        .map(String::as_str)
}

fn is_pause_name(name: &str) -> bool {
    // The last path component, without its tag (a registry port is not a tag).
    let last = name.rsplit('/').next().unwrap_or(name);
    last.split([':', '@']).next() == Some("pause")
}

/// What the runtime's import needs of the helper pod (runtime adapters decide).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Needs {
    /// Full `privileged`: CRI-O's import writes containers-storage directly (overlay
    /// mounts, file ownership, device nodes for whiteouts). Without it the helper runs with
    /// no capability but CAP_SYS_CHROOT.
    pub privileged: bool,
    /// A scratch volume (emptyDir) for staging, removed with the pod.
    pub scratch: bool,
}

/// Everything that makes one helper pod unique.
pub struct HelperSpec<'a> {
    pub node: &'a str,
    pub namespace: &'a str,
    pub run_id: &'a str,
    pub image: &'a str,
    /// The node's architecture: picks the agent's ConfigMap.
    pub arch: &'a str,
    pub needs: Needs,
    /// 0 for the first candidate image, then 1, 2 …
    pub attempt: usize,
}

/// `sideload-<node>-<hash of the node name>-<run>[-<attempt>]`, at most 63 characters.
/// The node name is cut to fit; the hash keeps names of long nodes that differ only at the
/// end apart.
pub fn pod_name(node: &str, run_id: &str, attempt: usize) -> String {
    let hash = &hex::encode(Sha256::digest(node.as_bytes()))[..6];
    let suffix = if attempt == 0 {
        format!("{hash}-{run_id}")
    } else {
        format!("{hash}-{run_id}-{attempt}")
    };
    let budget = 63 - "sideload--".len() - suffix.len();
    let cut: String = node
        .chars()
        .map(|c| c.to_ascii_lowercase())
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .take(budget)
        .collect();
    format!("sideload-{}-{suffix}", cut.trim_matches('-'))
}

/// The helper pod as the plugin submits it (plugin-manifest/helper-pod*.yaml are rendered
/// from this, and a test keeps them equal).
pub fn pod(spec: &HelperSpec<'_>) -> Pod {
    let labels = BTreeMap::from([
        (MANAGED_BY.0.to_string(), MANAGED_BY.1.to_string()),
        (
            "app.kubernetes.io/name".to_string(),
            "kubectl-sideload".to_string(),
        ),
        (RUN_LABEL.to_string(), spec.run_id.to_string()),
        (NODE_LABEL.to_string(), label_value(spec.node)),
    ]);
    let mut volumes = vec![
        Volume {
            name: "host-root".into(),
            host_path: Some(HostPathVolumeSource {
                path: "/".into(),
                // `Directory` makes the kubelet check the path instead of creating it.
                type_: Some("Directory".into()),
            }),
            ..Default::default()
        },
        Volume {
            name: "agent".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: agent::configmap_name(spec.run_id, spec.arch),
                items: Some(vec![KeyToPath {
                    key: agent::KEY.into(),
                    path: "agent".into(),
                    mode: Some(0o555),
                }]),
                default_mode: Some(0o555),
                optional: Some(false),
            }),
            ..Default::default()
        },
    ];
    let mut mounts = vec![
        VolumeMount {
            name: "host-root".into(),
            mount_path: protocol::HOST_ROOT.into(),
            read_only: Some(true),
            // Submounts of the host (a separate /var, say) read-only too, where the kubelet
            // and runtime support it (Kubernetes 1.33+, containerd 2+); plain read-only
            // binds elsewhere. Not on CRI-O nodes: CRI-O turns a hostPath that holds its
            // storage into a HostToContainer mount, and recursive read-only mounts demand
            // private propagation, so CRI-O would refuse the container (and the pod is
            // privileged there anyway).
            recursive_read_only: (!spec.needs.privileged).then(|| "IfPossible".into()),
            ..Default::default()
        },
        VolumeMount {
            name: "agent".into(),
            mount_path: protocol::AGENT_DIR.into(),
            read_only: Some(true),
            ..Default::default()
        },
    ];
    if spec.needs.scratch {
        volumes.push(Volume {
            name: "scratch".into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Default::default()
        });
        mounts.push(VolumeMount {
            name: "scratch".into(),
            mount_path: protocol::SCRATCH.into(),
            ..Default::default()
        });
    }
    let security_context = if spec.needs.privileged {
        SecurityContext {
            privileged: Some(true),
            run_as_user: Some(0),
            run_as_group: Some(0),
            run_as_non_root: Some(false),
            read_only_root_filesystem: Some(true),
            ..Default::default()
        }
    } else {
        SecurityContext {
            // root for the runtime's socket (owned root:root, mode 0660).
            run_as_user: Some(0),
            run_as_group: Some(0),
            run_as_non_root: Some(false),
            read_only_root_filesystem: Some(true),
            allow_privilege_escalation: Some(false),
            // Entering the host root is the only privileged act of the agent on these
            // nodes; every write goes through the runtime's own daemon.
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                add: Some(vec!["SYS_CHROOT".into()]),
            }),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                ..Default::default()
            }),
            // On SELinux nodes a container_t process may not connect to the runtime's
            // socket; spc_t may. Ignored where SELinux is off.
            se_linux_options: Some(SELinuxOptions {
                type_: Some("spc_t".into()),
                ..Default::default()
            }),
            ..Default::default()
        }
    };
    Pod {
        metadata: ObjectMeta {
            name: Some(pod_name(spec.node, spec.run_id, spec.attempt)),
            namespace: Some(spec.namespace.to_string()),
            labels: Some(labels),
            annotations: Some(BTreeMap::from([(
                "sideload.dev/version".to_string(),
                crate::version::SHORT.to_string(),
            )])),
            ..Default::default()
        },
        spec: Some(PodSpec {
            node_name: Some(spec.node.to_string()),
            restart_policy: Some("Never".to_string()),
            active_deadline_seconds: Some(ACTIVE_DEADLINE),
            termination_grace_period_seconds: Some(1),
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            // The helper must reach tainted nodes too (control planes, dedicated pools).
            tolerations: Some(vec![Toleration {
                operator: Some("Exists".to_string()),
                ..Default::default()
            }]),
            containers: vec![Container {
                name: CONTAINER.to_string(),
                image: Some(spec.image.to_string()),
                // Air-gapped nodes cannot pull: the image is one the node already has.
                image_pull_policy: Some("Never".to_string()),
                // Never the image's entrypoint, arguments or working directory: a tenant
                // may control all three.
                command: Some(vec![
                    protocol::AGENT_PATH.to_string(),
                    protocol::verb::PAUSE.to_string(),
                ]),
                args: Some(Vec::new()),
                working_dir: Some("/".into()),
                security_context: Some(security_context),
                volume_mounts: Some(mounts),
                ..Default::default()
            }],
            volumes: Some(volumes),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Label values allow at most 63 characters of `[A-Za-z0-9._-]`.
fn label_value(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .take(63)
        .collect::<String>()
        .trim_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_string()
}

/// Creates the helper pod (or only dry-runs it on the server) and returns its name.
pub async fn create(api: &Api<Pod>, pod: &Pod, server_dry_run: bool) -> Result<String> {
    let params = PostParams {
        dry_run: server_dry_run,
        ..Default::default()
    };
    let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
    let created = api
        .create(&params, pod)
        .await
        .map_err(|e| explain(e, "create", &format!("pods in namespace {namespace}")))?;
    Ok(created.metadata.name.unwrap_or_default())
}

/// How a helper pod's start ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Started {
    /// With the pod's IP, where relay peers reach its agent.
    Running(Option<String>),
    /// The container could not be made from its image (gone from the node, or unusable):
    /// another candidate may work.
    ImageUnusable(String),
}

/// Waits until the helper runs; fails fast, with the kubelet's reason, when it cannot.
pub async fn wait_running(api: &Api<Pod>, name: &str, timeout: Duration) -> Result<Started> {
    let settled =
        |pod: Option<&Pod>| pod.is_none_or(|p| !matches!(start_state(p), StartState::Pending(_)));
    let waited = tokio::time::timeout(timeout, await_condition(api.clone(), name, settled)).await;
    let pod = match waited {
        Ok(Ok(pod)) => pod,
        Ok(Err(e)) => return Err(anyhow!("watching helper pod {name}: {e}")),
        Err(_) => {
            let last = api
                .get_opt(name)
                .await
                .ok()
                .flatten()
                .map(|p| match start_state(&p) {
                    StartState::Pending(why) => why,
                    _ => String::new(),
                })
                .unwrap_or_default();
            return Err(anyhow!(
                "helper pod {name} not running after {}s ({last}); raise --helper-timeout or \
                 check `kubectl describe pod -n {} {name}`",
                timeout.as_secs(),
                api.namespace().unwrap_or_default()
            ));
        }
    };
    let Some(pod) = pod else {
        return Err(anyhow!("helper pod {name} was deleted before it ran"));
    };
    match start_state(&pod) {
        StartState::Running => Ok(Started::Running(
            pod.status
                .and_then(|s| s.pod_ip)
                .filter(|ip| !ip.is_empty()),
        )),
        StartState::ImageUnusable(why) => Ok(Started::ImageUnusable(why)),
        StartState::Failed(why) => Err(anyhow!("helper pod {name} cannot start: {why}")),
        StartState::Pending(_) => unreachable!("await_condition returned a settled pod"),
    }
}

/// The running helper pod's IP, once the kubelet has reported it (waiting at most `wait`):
/// a session opened before the kubelet reported the pod running knows none yet.
pub async fn pod_ip(api: &Api<Pod>, name: &str, wait: Duration) -> Option<String> {
    let ip_of = |pod: &Pod| {
        pod.status
            .as_ref()
            .and_then(|s| s.pod_ip.clone())
            .filter(|ip| !ip.is_empty())
    };
    let known = |pod: Option<&Pod>| pod.is_none_or(|p| ip_of(p).is_some());
    let waited = tokio::time::timeout(wait, await_condition(api.clone(), name, known)).await;
    match waited {
        Ok(Ok(Some(pod))) => ip_of(&pod),
        _ => None,
    }
}

enum StartState {
    Pending(String),
    Running,
    ImageUnusable(String),
    Failed(String),
}

fn start_state(pod: &Pod) -> StartState {
    let status = pod.status.clone().unwrap_or_default();
    match status.phase.as_deref() {
        Some("Running") => return StartState::Running,
        Some("Failed") | Some("Succeeded") => {
            return StartState::Failed(format!(
                "it stopped before use ({})",
                status.message.or(status.reason).unwrap_or_default()
            ));
        }
        _ => {}
    }
    let mut pending = String::from("not scheduled yet");
    for cs in status.container_statuses.unwrap_or_default() {
        let Some(waiting) = cs.state.and_then(|s| s.waiting) else {
            continue;
        };
        let reason = waiting.reason.unwrap_or_default();
        let why = format!("{reason}: {}", waiting.message.unwrap_or_default());
        match reason.as_str() {
            // The image is not (or no longer) on the node, or cannot make a container
            // (say, it has a file where the agent's mount point goes).
            "ErrImageNeverPull"
            | "InvalidImageName"
            | "ImageInspectError"
            | "CreateContainerError"
            | "RunContainerError" => {
                return StartState::ImageUnusable(why);
            }
            "CreateContainerConfigError" => return StartState::Failed(why),
            "" => {}
            _ => pending = why,
        }
    }
    StartState::Pending(pending)
}

/// Deletes a helper pod and waits (bounded) until it is gone, so that "no pod left behind"
/// holds when the plugin exits. A pod that is already gone is fine.
pub async fn delete(api: &Api<Pod>, name: &str, wait: Duration) -> Result<()> {
    let params = DeleteParams {
        grace_period_seconds: Some(0),
        ..Default::default()
    };
    // Persistent: a helper must not outlive its run because the API server was restarting
    // when the run ended.
    let uid = match persist(wait, || api.delete(name, &params)).await {
        Ok(either) => either.left().and_then(|p| p.metadata.uid),
        Err(kube::Error::Api(s)) if s.code == 404 => return Ok(()),
        Err(e) => {
            let namespace = api.namespace().unwrap_or_default();
            return Err(explain(
                e,
                "delete",
                &format!("pods in namespace {namespace}"),
            ));
        }
    };
    let Some(uid) = uid else {
        return Ok(());
    };
    let gone = await_condition(api.clone(), name, conditions::is_deleted(&uid));
    match tokio::time::timeout(wait, gone).await {
        Ok(Ok(_)) | Err(_) => Ok(()),
        Ok(Err(e)) => Err(anyhow!("watching helper pod {name} go: {e}")),
    }
}

/// How long a list of the run's objects keeps trying through a restarting API server.
const LIST_PERSIST: Duration = Duration::from_secs(30);

/// Which runs' objects a list or a sweep covers.
#[derive(Clone, Copy, Debug)]
pub enum Runs<'a> {
    /// One run: its own unwinding.
    One(&'a str),
    /// Every run but these (`cleanup`: those still alive), and objects with no run label.
    AllBut(&'a [String]),
}

impl Runs<'_> {
    /// The label selector for the plugin's objects of these runs.
    pub fn selector(&self) -> String {
        let mut selector = format!("{}={}", MANAGED_BY.0, MANAGED_BY.1);
        match self {
            Runs::One(run) => selector.push_str(&format!(",{RUN_LABEL}={run}")),
            Runs::AllBut([]) => {}
            Runs::AllBut(live) => {
                selector.push_str(&format!(",{RUN_LABEL} notin ({})", live.join(",")))
            }
        }
        selector
    }
}

/// Names of helper pods in `namespace` of these runs.
pub async fn list(api: &Api<Pod>, runs: Runs<'_>) -> Result<Vec<String>> {
    let selector = runs.selector();
    let params = ListParams::default().labels(&selector);
    let pods = persist(LIST_PERSIST, || api.list_metadata(&params))
        .await
        .map_err(|e| {
            let namespace = api.namespace().unwrap_or_default();
            explain(e, "list", &format!("pods in namespace {namespace}"))
        })?;
    Ok(pods
        .items
        .into_iter()
        .filter_map(|p| p.metadata.name)
        .collect())
}

/// Deletes every helper pod of these runs and lists again until a list comes back empty
/// twice, `settle` apart: a create the API accepted just before its plugin died shows up
/// late. Returns the names it deleted.
pub async fn sweep(api: &Api<Pod>, runs: Runs<'_>, settle: Duration) -> Result<Vec<String>> {
    let mut deleted = Vec::new();
    let mut quiet_once = false;
    // Bounded: a controller recreating pods with our labels must not keep us here forever.
    for _ in 0..10 {
        let names = list(api, runs).await?;
        if names.is_empty() {
            if quiet_once {
                break;
            }
            quiet_once = true;
            tokio::time::sleep(settle).await;
            continue;
        }
        quiet_once = false;
        for name in names {
            delete(api, &name, Duration::from_secs(30)).await?;
            deleted.push(name);
        }
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_select_one_run_or_every_run_but_the_live_ones() {
        let base = "app.kubernetes.io/managed-by=kubectl-sideload";
        assert_eq!(
            Runs::One("abc123").selector(),
            format!("{base},sideload.dev/run=abc123")
        );
        assert_eq!(Runs::AllBut(&[]).selector(), base);
        let live = ["abc123".to_string(), "def456".to_string()];
        assert_eq!(
            Runs::AllBut(&live).selector(),
            format!("{base},sideload.dev/run notin (abc123,def456)")
        );
    }
    use crate::archive::Platform;
    use crate::cluster::nodes::ListedImage;
    use crate::runtime::Runtime;

    fn node(name: &str, images: &[(&str, i64)]) -> NodeFacts {
        NodeFacts {
            name: name.into(),
            ready: true,
            unschedulable: false,
            platform: Platform::new("linux", "amd64", None),
            runtime: Runtime::from_node_info("containerd://1.7.22", "v1.34.4", false),
            kubelet_version: "v1.34.4".into(),
            taints: vec![],
            virtual_kubelet: false,
            images: images
                .iter()
                .map(|(n, size)| ListedImage {
                    names: vec![format!("{n}@sha256:{}", "a".repeat(64)), n.to_string()],
                    size: *size,
                })
                .collect(),
            running_images: vec![],
            runtime_endpoint: None,
        }
    }

    fn names(c: &[HelperImage]) -> Vec<&str> {
        c.iter().map(|c| c.image.as_str()).collect()
    }

    #[test]
    fn candidates_put_likely_present_images_first() {
        let mut n = node(
            "node-a",
            &[
                ("docker.io/library/app:v1", 50_000_000),
                ("evil.example/tenant/pause:1", 32_000_000),
                ("registry.k8s.io/pause:3.10", 300_000),
            ],
        );
        n.running_images = vec!["docker.io/library/web:2".into()];
        let other = node("node-b", &[("registry.k8s.io/pause:3.9", 300_000)]);
        let got = candidates(None, &n, &[n.clone(), other], &[]);
        assert_eq!(
            names(&got),
            [
                "registry.k8s.io/pause:3.10",
                "evil.example/tenant/pause:1",
                "docker.io/library/web:2",
                "docker.io/library/app:v1",
                "registry.k8s.io/pause:3.9",
            ]
        );
        assert_eq!(got[4].source, "pause image another node lists");
        let user = candidates(Some("busybox:1"), &n, &[], &[]);
        assert_eq!(names(&user), ["busybox:1"]);
        // A node that lists nothing still gets what other nodes list.
        let bare = node("node-c", &[]);
        let got = candidates(None, &bare, &[node("node-b", &[("x/pause:1", 1)])], &[]);
        assert_eq!(names(&got), ["x/pause:1"]);
        assert!(candidates(None, &bare, &[], &[]).is_empty());
        assert!(!is_pause_name("docker.io/library/pause-not:1"));
        assert!(is_pause_name("localhost:5000/pause"));
    }

    /// Found by timing a cold load right after the image was removed: node-c's kubelet
    /// still listed it (its list trails a removal), the helper started from it failed with
    /// ErrImageNeverPull and the node waited a second pod start.
    #[test]
    fn images_the_run_changes_are_the_last_candidates() {
        let mut n = node(
            "node-c",
            &[
                ("sideload.test/app:1", 4_000_000),
                ("docker.io/library/web:2", 9_000_000),
            ],
        );
        n.running_images = vec!["app:2".into()];
        let other = node("node-b", &[("registry.k8s.io/pause:3.10", 300_000)]);
        let changing = [
            "sideload.test/app:1".to_string(),
            "docker.io/library/app:2".to_string(),
        ];
        let got = candidates(None, &n, &[other], &changing);
        assert_eq!(
            names(&got),
            [
                "docker.io/library/web:2",
                "registry.k8s.io/pause:3.10",
                "app:2",
                "sideload.test/app:1",
            ]
        );
        // Nothing else known: the changing image is still tried rather than none.
        let only = node("node-c", &[("sideload.test/app:1", 4_000_000)]);
        let got = candidates(None, &only, &[], &changing);
        assert_eq!(names(&got), ["sideload.test/app:1"]);
    }

    /// Regression (issue 8): names were `sideload-<first 47 chars of the node>-<run>`, so
    /// two long cloud node names differing only at the end got the same pod name.
    #[test]
    fn pod_names_of_long_nodes_that_differ_only_at_the_end_differ() {
        let a = format!("{}a", "n".repeat(62));
        let b = format!("{}b", "n".repeat(62));
        assert_eq!(a.len(), 63);
        let (pa, pb) = (pod_name(&a, "abc123", 0), pod_name(&b, "abc123", 0));
        assert_ne!(pa, pb);
        for name in [&pa, &pb, &pod_name(&a, "abc123", 4)] {
            assert!(name.len() <= 63, "{name}");
            assert!(
                name.bytes()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
            );
        }
        assert_ne!(pod_name("node-a", "r1", 0), pod_name("node-a", "r1", 1));
        assert!(pod_name("Node.A", "r1", 0).starts_with("sideload-node-a-"));
    }

    fn spec(needs: Needs) -> Pod {
        pod(&HelperSpec {
            node: "node-c",
            namespace: "kube-system",
            run_id: "r1",
            image: "evil.example/tenant/pause:1",
            arch: "amd64",
            needs,
            attempt: 0,
        })
    }

    #[test]
    fn helper_runs_the_agent_never_the_image() {
        let pod = spec(Needs::default());
        let spec = pod.spec.unwrap();
        assert_eq!(spec.node_name.as_deref(), Some("node-c"));
        assert_eq!(spec.active_deadline_seconds, Some(ACTIVE_DEADLINE));
        assert_eq!(
            spec.tolerations.unwrap()[0].operator.as_deref(),
            Some("Exists")
        );
        let c = &spec.containers[0];
        assert_eq!(c.image_pull_policy.as_deref(), Some("Never"));
        assert_eq!(
            c.command.as_deref().unwrap(),
            [protocol::AGENT_PATH, protocol::verb::PAUSE]
        );
        assert_eq!(
            c.args.as_deref(),
            Some(&[][..]),
            "the image's CMD must not be appended"
        );
        assert_eq!(c.working_dir.as_deref(), Some("/"));
        assert!(c.env.is_none());
        let sc = c.security_context.as_ref().unwrap();
        assert_eq!((sc.run_as_user, sc.privileged), (Some(0), None));
        assert_eq!(
            sc.capabilities.as_ref().unwrap().add.as_deref().unwrap(),
            ["SYS_CHROOT"]
        );
        let mounts = c.volume_mounts.as_ref().unwrap();
        assert!(mounts.iter().all(|m| m.read_only == Some(true)));
        assert!(
            !mounts
                .iter()
                .any(|m| ["/usr", "/lib", "/lib64"].contains(&m.mount_path.as_str())),
            "nothing of the host is mounted over the image's own paths any more"
        );
        let volumes = spec.volumes.unwrap();
        let cm = volumes.iter().find_map(|v| v.config_map.as_ref()).unwrap();
        assert_eq!(cm.name, "sideload-agent-r1-amd64");
        assert!(
            spec.resources.is_none() && c.resources.is_none(),
            "BestEffort, by choice"
        );

        let crio = spec_privileged();
        let c = &crio.spec.as_ref().unwrap().containers[0];
        assert_eq!(c.security_context.as_ref().unwrap().privileged, Some(true));
        assert!(
            c.volume_mounts
                .as_ref()
                .unwrap()
                .iter()
                .any(|m| m.mount_path == protocol::SCRATCH)
        );
    }

    fn spec_privileged() -> Pod {
        spec(Needs {
            privileged: true,
            scratch: true,
        })
    }

    /// plugin-manifest/helper-pod*.yaml are what a security review reads: they must be
    /// exactly the pods this code submits. `UPDATE_MANIFESTS=1 cargo test` rewrites them.
    #[test]
    fn plugin_manifest_helper_pods_match_the_code() {
        for (file, needs, what) in [
            (
                "helper-pod.yaml",
                Needs::default(),
                "containerd nodes: no capability but CAP_SYS_CHROOT",
            ),
            (
                "helper-pod-crio.yaml",
                Needs {
                    privileged: true,
                    scratch: true,
                },
                "CRI-O nodes: privileged, with a scratch volume",
            ),
        ] {
            let pod = pod(&HelperSpec {
                node: "NODE",
                namespace: "kube-system",
                run_id: "RUNID",
                image: "IMAGE-ALREADY-ON-THE-NODE",
                arch: "amd64",
                needs,
                attempt: 0,
            });
            let header = format!(
                "# The helper pod kubectl-sideload creates on each node, exactly as the code builds it.\n\
                 # {what} (node NODE, run RUNID, amd64).\n\
                 # IMAGE-ALREADY-ON-THE-NODE is any image the node holds: the container runs the\n\
                 # agent from the ConfigMap (mode 365 = 0555), never the image's programs.\n\
                 # Why each setting: plugin-manifest/README.md.\n\
                 # Generated by `UPDATE_MANIFESTS=1 cargo test`; a unit test keeps it current.\n"
            );
            let rendered = format!("{header}{}", serde_yaml::to_string(&pod).unwrap())
                .replace(crate::version::SHORT, "VERSION");
            let path = format!("{}/plugin-manifest/{file}", env!("CARGO_MANIFEST_DIR"));
            if std::env::var_os("UPDATE_MANIFESTS").is_some() {
                std::fs::write(&path, &rendered).unwrap();
            }
            let committed = std::fs::read_to_string(&path).unwrap_or_default();
            assert_eq!(
                committed, rendered,
                "plugin-manifest/{file} is stale; run UPDATE_MANIFESTS=1 cargo test"
            );
        }
    }
}
