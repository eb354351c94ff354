//! The helper pod: a short-lived privileged pod pinned to one node, through which the
//! plugin runs the node's own tools.
//!
//! It brings no image of its own (air-gapped nodes can pull nothing): it runs an image the
//! node already holds, normally the pod sandbox ("pause") image, with the host's `/usr`,
//! `/lib` and `/lib64` mounted over the image's empty root so that `/usr/sbin/chroot` and
//! its libraries resolve, and the host root at `/host`. Every command then runs as
//! `chroot /host <argv>`, i.e. with the node's own `sh`, `head` and `ctr`, which are
//! native to the node's architecture (DESIGN.md, "Helper without any image of its own").

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Result, anyhow, bail};
use k8s_openapi::api::core::v1::{
    Container, HostPathVolumeSource, Pod, PodSpec, SecurityContext, Toleration, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, ListParams, PostParams};

use crate::cluster::errors::explain;
use crate::cluster::nodes::NodeFacts;

/// Label every helper pod carries; `cleanup` deletes what matches it.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "kubectl-sideload");
/// Label naming the run that created a pod, so concurrent runs never touch each other's.
pub const RUN_LABEL: &str = "sideload.dev/run";
/// Label naming the node a helper pod serves.
pub const NODE_LABEL: &str = "sideload.dev/node";
/// The helper's container name, used for exec.
pub const CONTAINER: &str = "helper";
/// Where the host's root is mounted inside the helper.
const HOST_ROOT: &str = "/host";
/// How long a helper may live even if the plugin dies without cleaning up: the kubelet
/// stops it then, and `kubectl sideload cleanup` removes the object.
const ACTIVE_DEADLINE: i64 = 3600;

/// How a helper image was chosen, for the plan and the report.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct HelperImage {
    pub image: String,
    /// `true` for the sandbox image, whose entrypoint already sleeps until signalled.
    pub is_pause: bool,
    pub source: &'static str,
}

/// Images a node may hold besides what its own status lists: the kubelet lists at most 50
/// images per node (`nodeStatusMaxImages`), largest first, so on a busy node the tiny pause
/// image is the first to drop off the list.
#[derive(Debug, Default)]
pub struct Reusable<'a> {
    /// Images of pods running on the node: certainly there.
    pub running: &'a [String],
    /// A pause image other nodes list: the same cluster almost always runs the same sandbox
    /// image everywhere. A guess; with `imagePullPolicy: Never` a wrong one fails fast
    /// (ErrImageNeverPull) and the error names `--helper-image`.
    pub pause_elsewhere: Option<&'a str>,
}

/// Picks the helper's image for a node: the user's `--helper-image`, else a pause image
/// the kubelet lists for the node, else an image of a pod running there, else a pause
/// image other nodes list. `None` means nothing is known to be reusable, and the error
/// tells the user to pass `--helper-image`.
pub fn choose_image(
    user: Option<&str>,
    node: &NodeFacts,
    reusable: &Reusable<'_>,
) -> Option<HelperImage> {
    if let Some(image) = user {
        return Some(HelperImage {
            image: image.to_string(),
            is_pause: false,
            source: "--helper-image",
        });
    }
    if let Some(image) = listed_pause(&node.images) {
        return Some(HelperImage {
            image: image.to_string(),
            is_pause: true,
            source: "pause image on the node",
        });
    }
    if let Some(image) = reusable.running.first() {
        return Some(HelperImage {
            image: image.clone(),
            is_pause: false,
            source: "image of a pod running on the node",
        });
    }
    reusable.pause_elsewhere.map(|image| HelperImage {
        image: image.to_string(),
        is_pause: true,
        source: "pause image other nodes list; this node's own list is cut short",
    })
}

/// The first pause image by name (not by digest: the pod spec needs a name) in `images`.
pub fn listed_pause(images: &[String]) -> Option<&str> {
    images
        .iter()
        .filter(|name| !name.contains("@sha256:"))
        .find(|name| is_pause_name(name))
        .map(String::as_str)
}

fn is_pause_name(name: &str) -> bool {
    // The last path component, without its tag (a registry port is not a tag).
    let last = name.rsplit('/').next().unwrap_or(name);
    last.split(':').next() == Some("pause")
}

/// Everything that makes one helper pod unique.
pub struct HelperSpec<'a> {
    pub node: &'a str,
    pub namespace: &'a str,
    pub run_id: &'a str,
    pub image: &'a HelperImage,
    /// The node's architecture (`amd64`, `arm64` …): decides where the loader lives.
    pub arch: &'a str,
}

/// The argv that runs `host_argv` on the host through the helper.
pub fn on_host(host_argv: Vec<String>) -> Vec<String> {
    let mut argv = vec!["/usr/sbin/chroot".to_string(), HOST_ROOT.to_string()];
    argv.extend(host_argv);
    argv
}

/// Pod names are `sideload-<node>-<run>`, cut to the 63 characters a name may have.
pub fn pod_name(node: &str, run_id: &str) -> String {
    let budget = 63 - "sideload--".len() - run_id.len();
    let node: String = node.chars().take(budget).collect();
    format!("sideload-{}-{run_id}", node.trim_end_matches(['-', '.']))
}

/// The helper pod as the plugin submits it (plugin-manifest/helper-pod.yaml is rendered
/// from this, and a test keeps the two equal).
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
    let host_path = |name: &str, path: &str| Volume {
        name: name.to_string(),
        host_path: Some(HostPathVolumeSource {
            path: path.to_string(),
            // `Directory` makes the kubelet check the path exists instead of creating it:
            // the helper must never change the node's filesystem layout.
            type_: Some("Directory".to_string()),
        }),
        ..Default::default()
    };
    let mount = |name: &str, path: &str| VolumeMount {
        name: name.to_string(),
        mount_path: path.to_string(),
        read_only: Some(true),
        ..Default::default()
    };
    // The loader lives in /lib64 on amd64 and in /lib on arm64; mount only what exists.
    let mut volumes = vec![
        host_path("host-root", "/"),
        host_path("host-usr", "/usr"),
        host_path("host-lib", "/lib"),
    ];
    let mut mounts = vec![
        mount("host-root", HOST_ROOT),
        mount("host-usr", "/usr"),
        mount("host-lib", "/lib"),
    ];
    if spec.arch == "amd64" {
        volumes.push(host_path("host-lib64", "/lib64"));
        mounts.push(mount("host-lib64", "/lib64"));
    }
    let command = (!spec.image.is_pause).then(|| {
        // Any image other than pause: keep the container alive with the host's `sleep`
        // (resolved through the host mounts), for as long as the pod may live.
        vec!["/usr/bin/sleep".to_string(), ACTIVE_DEADLINE.to_string()]
    });
    Pod {
        metadata: ObjectMeta {
            name: Some(pod_name(spec.node, spec.run_id)),
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
                image: Some(spec.image.image.clone()),
                // Air-gapped nodes cannot pull: the image is one the node already has.
                image_pull_policy: Some("Never".to_string()),
                command,
                security_context: Some(SecurityContext {
                    // Needed to talk to the runtime's socket on SELinux/AppArmor nodes and
                    // to chroot; no capability list by hand (DESIGN.md: bounding sets vary).
                    privileged: Some(true),
                    ..Default::default()
                }),
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

/// Waits until the helper runs; fails fast, with the kubelet's reason, when it cannot.
pub async fn wait_running(api: &Api<Pod>, name: &str, timeout: Duration) -> Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last_reason = String::from("not scheduled yet");
    loop {
        let pod = api.get(name).await.map_err(|e| explain(e, "get", "pods"))?;
        let status = pod.status.unwrap_or_default();
        match status.phase.as_deref() {
            Some("Running") => return Ok(()),
            Some("Failed") | Some("Succeeded") => bail!(
                "helper pod {name} stopped before use ({})",
                status.message.or(status.reason).unwrap_or_default()
            ),
            _ => {}
        }
        for cs in status.container_statuses.unwrap_or_default() {
            if let Some(waiting) = cs.state.and_then(|s| s.waiting) {
                let reason = waiting.reason.unwrap_or_default();
                let message = waiting.message.unwrap_or_default();
                if matches!(
                    reason.as_str(),
                    "ErrImageNeverPull"
                        | "InvalidImageName"
                        | "CreateContainerConfigError"
                        | "CreateContainerError"
                        | "RunContainerError"
                ) {
                    bail!(
                        "helper pod {name} cannot start: {reason}: {message}; pass --helper-image \
                         with an image present on the node"
                    );
                }
                if !reason.is_empty() {
                    last_reason = format!("{reason}: {message}");
                }
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(anyhow!(
                "helper pod {name} not running after {}s ({last_reason}); raise --helper-timeout \
                 or check `kubectl describe pod -n {} {name}`",
                timeout.as_secs(),
                api.namespace().unwrap_or_default()
            ));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Deletes a helper pod and waits (bounded) until it is gone, so that "no pod left behind"
/// holds when the plugin exits. A pod that is already gone is fine.
pub async fn delete(api: &Api<Pod>, name: &str, wait: Duration) -> Result<()> {
    let params = DeleteParams {
        grace_period_seconds: Some(0),
        ..Default::default()
    };
    match api.delete(name, &params).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => return Ok(()),
        Err(e) => return Err(explain(e, "delete", "pods")),
    }
    let deadline = tokio::time::Instant::now() + wait;
    while tokio::time::Instant::now() < deadline {
        match api.get_opt(name).await {
            Ok(None) => return Ok(()),
            Ok(Some(_)) => tokio::time::sleep(Duration::from_millis(200)).await,
            Err(e) => return Err(explain(e, "get", "pods")),
        }
    }
    Ok(())
}

/// Names of helper pods in `namespace`, optionally of one run only.
pub async fn list(api: &Api<Pod>, run_id: Option<&str>) -> Result<Vec<String>> {
    let mut selector = format!("{}={}", MANAGED_BY.0, MANAGED_BY.1);
    if let Some(run) = run_id {
        selector.push_str(&format!(",{RUN_LABEL}={run}"));
    }
    let pods = api
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(|e| explain(e, "list", "pods"))?;
    Ok(pods
        .items
        .into_iter()
        .filter_map(|p| p.metadata.name)
        .collect())
}

/// Deletes every helper pod of `run_id` (of any run when `None`) and lists again until a
/// list comes back empty twice, `settle` apart: a create the API accepted just before its
/// plugin died shows up late. Returns the names it deleted.
pub async fn sweep(api: &Api<Pod>, run_id: Option<&str>, settle: Duration) -> Result<Vec<String>> {
    let mut deleted = Vec::new();
    let mut quiet_once = false;
    // Bounded: a controller recreating pods with our labels must not keep us here forever.
    for _ in 0..10 {
        let names = list(api, run_id).await?;
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
    use crate::archive::Platform;
    use crate::runtime::Runtime;

    fn node(images: &[&str]) -> NodeFacts {
        NodeFacts {
            name: "node-a".into(),
            ready: true,
            unschedulable: false,
            platform: Platform {
                os: "linux".into(),
                architecture: "amd64".into(),
                variant: None,
            },
            runtime: Runtime::from_node_info("containerd://1.7.22", "v1.34.4", false),
            kubelet_version: "v1.34.4".into(),
            taints: vec![],
            images: images.iter().map(|s| s.to_string()).collect(),
            runtime_endpoint: None,
        }
    }

    #[test]
    fn prefers_user_image_then_pause_then_running_pods() {
        let n = node(&[
            "docker.io/library/app:v1",
            "registry.k8s.io/pause@sha256:abc",
            "registry.k8s.io/pause:3.10",
        ]);
        let none = Reusable::default();
        let chosen = choose_image(None, &n, &none).unwrap();
        assert_eq!(chosen.image, "registry.k8s.io/pause:3.10");
        assert!(chosen.is_pause);
        let user = choose_image(Some("busybox:1"), &n, &none).unwrap();
        assert_eq!(user.image, "busybox:1");
        assert!(!user.is_pause);
        let running = ["x/app:1".to_string()];
        let both = Reusable {
            running: &running,
            pause_elsewhere: Some("registry.k8s.io/pause:3.9"),
        };
        // A running pod's image is certain; another node's pause image only likely.
        let fallback = choose_image(None, &node(&["x/app:1"]), &both).unwrap();
        assert_eq!(fallback.image, "x/app:1");
        assert!(!fallback.is_pause);
        let elsewhere = Reusable {
            pause_elsewhere: Some("registry.k8s.io/pause:3.9"),
            ..Default::default()
        };
        let guessed = choose_image(None, &node(&["x/big:1"]), &elsewhere).unwrap();
        assert_eq!(guessed.image, "registry.k8s.io/pause:3.9");
        assert!(guessed.is_pause);
        assert!(choose_image(None, &node(&[]), &none).is_none());
        assert!(!is_pause_name("docker.io/library/pause-not:1"));
        assert!(is_pause_name("localhost:5000/pause"));
    }

    #[test]
    fn pod_names_fit_and_stay_valid() {
        let long = "n".repeat(80);
        let name = pod_name(&long, "abc123");
        assert!(name.len() <= 63, "{name}");
        assert!(name.ends_with("-abc123"));
        assert_eq!(pod_name("node-a", "x1"), "sideload-node-a-x1");
    }

    #[test]
    fn helper_pod_is_pinned_tolerant_short_lived_and_pulls_nothing() {
        let image = HelperImage {
            image: "registry.k8s.io/pause:3.10".into(),
            is_pause: true,
            source: "test",
        };
        let pod = pod(&HelperSpec {
            node: "node-c",
            namespace: "kube-system",
            run_id: "r1",
            image: &image,
            arch: "amd64",
        });
        let spec = pod.spec.unwrap();
        assert_eq!(spec.node_name.as_deref(), Some("node-c"));
        assert_eq!(spec.active_deadline_seconds, Some(ACTIVE_DEADLINE));
        assert_eq!(
            spec.tolerations.unwrap()[0].operator.as_deref(),
            Some("Exists")
        );
        let c = &spec.containers[0];
        assert_eq!(c.image_pull_policy.as_deref(), Some("Never"));
        assert!(c.command.is_none(), "pause keeps its own entrypoint");
        let mounts = c.volume_mounts.as_ref().unwrap();
        assert!(mounts.iter().all(|m| m.read_only == Some(true)));
        assert!(
            mounts.iter().any(|m| m.mount_path == "/lib64"),
            "amd64 loader"
        );
        let labels = pod.metadata.labels.unwrap();
        assert_eq!(labels[RUN_LABEL], "r1");
        assert_eq!(labels[MANAGED_BY.0], MANAGED_BY.1);
    }

    /// plugin-manifest/helper-pod.yaml is what a security review reads: it must be exactly
    /// the pod this code submits. `UPDATE_MANIFESTS=1 cargo test` rewrites it.
    #[test]
    fn plugin_manifest_helper_pod_matches_the_code() {
        let image = HelperImage {
            image: "registry.k8s.io/pause:3.10".into(),
            is_pause: true,
            source: "pause image on the node",
        };
        let pod = pod(&HelperSpec {
            node: "NODE",
            namespace: "kube-system",
            run_id: "RUNID",
            image: &image,
            arch: "amd64",
        });
        let header = "# The helper pod kubectl-sideload creates on each node, exactly as the code builds it\n\
                      # (node NODE, run RUNID, amd64; the image is the node's own pause image).\n\
                      # Generated by `UPDATE_MANIFESTS=1 cargo test`; a unit test keeps it current.\n";
        let rendered = format!("{header}{}", serde_yaml::to_string(&pod).unwrap())
            .replace(crate::version::SHORT, "VERSION");
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/plugin-manifest/helper-pod.yaml"
        );
        if std::env::var_os("UPDATE_MANIFESTS").is_some() {
            std::fs::write(path, &rendered).unwrap();
        }
        let committed = std::fs::read_to_string(path).unwrap_or_default();
        assert_eq!(
            committed, rendered,
            "plugin-manifest/helper-pod.yaml is stale; run UPDATE_MANIFESTS=1 cargo test"
        );
    }

    #[test]
    fn host_commands_go_through_chroot() {
        let argv = on_host(vec!["ctr".into(), "version".into()]);
        assert_eq!(argv, ["/usr/sbin/chroot", "/host", "ctr", "version"]);
    }
}
