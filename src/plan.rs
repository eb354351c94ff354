//! The plan: for each selected node, what will happen and why, decided from facts read
//! before (cluster::nodes) and the archive, with no API call of its own. `--dry-run`
//! prints it and stops.

use anyhow::{Result, bail};
use k8s_openapi::api::core::v1::Pod;
use serde::Serialize;

use crate::archive::{Archive, Platform};
use crate::cluster::agent;
use crate::cluster::helper::{self, HelperImage, HelperSpec, Needs};
use crate::cluster::nodes::NodeFacts;
use crate::model::RuntimeKind;
use crate::runtime::Wanted;

/// What the plugin will do on one node.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "action", rename_all = "kebab-case")]
pub enum Decision {
    /// Stream the image for `platform` through a helper pod.
    Load {
        platform: Platform,
        digest: String,
        /// The whole image; layers the node turns out to hold are left out.
        bytes: u64,
        /// How the node's runtime will import it.
        method: &'static str,
        /// The first image the helper will start from; `candidates` lists the others tried
        /// if it is gone.
        helper: HelperImage,
        #[serde(skip)]
        candidates: Vec<HelperImage>,
        #[serde(skip)]
        needs: Needs,
        #[serde(skip)]
        wanted: Box<Wanted>,
        /// The helper pod for the first candidate (what `--dry-run -o yaml` shows).
        #[serde(skip)]
        pod: Box<Pod>,
    },
    /// Left out, not a failure: `--skip-unready`, or a node an implicit selection (all
    /// nodes, a label selector) includes that cannot take the image.
    Skip { reason: String },
    /// Cannot be loaded; the run stops before changing anything.
    Refuse { reason: String },
}

#[derive(Debug, Clone, Serialize)]
pub struct NodePlan {
    pub node: NodeFacts,
    #[serde(flatten)]
    pub decision: Decision,
}

#[derive(Debug, Serialize)]
pub struct Plan {
    pub run_id: String,
    pub helper_namespace: String,
    pub nodes: Vec<NodePlan>,
}

/// Inputs to planning that come from flags.
pub struct Options<'a> {
    pub helper_namespace: &'a str,
    pub helper_image: Option<&'a str>,
    pub skip_unready: bool,
    pub run_id: &'a str,
    /// The user named the nodes (`--nodes a,b`): a node that cannot take the image is an
    /// error then, while an implicit selection skips it and loads the rest.
    pub named: bool,
    /// `--runtime`: the runtime every node is taken to run, instead of what it reports.
    pub runtime: Option<RuntimeKind>,
    /// `--runtime-endpoint`: the runtime socket on every node.
    pub runtime_endpoint: Option<&'a str>,
    /// The images this run loads, removes or looks for (normalised refs): the last
    /// helper images to try (see [`helper::candidates`]).
    pub changing: &'a [String],
}

impl Options<'_> {
    /// `--runtime` and `--runtime-endpoint`: what the user said of every node's runtime,
    /// over what the node reports.
    pub fn override_runtime(&self, node: &mut NodeFacts) {
        if let Some(kind) = self.runtime {
            node.runtime = node.runtime.overridden(kind, &node.kubelet_version);
        }
        if let Some(endpoint) = self.runtime_endpoint {
            node.runtime_endpoint = Some(endpoint.to_string());
        }
    }
}

impl Plan {
    /// Decides every node. `all` is every node of the cluster (for helper image
    /// candidates that other nodes list).
    pub fn build(
        archive: &Archive,
        nodes: Vec<NodeFacts>,
        all: &[NodeFacts],
        opts: &Options<'_>,
    ) -> Result<Plan> {
        if archive.summary().refs.is_empty() {
            bail!(
                "the archive names no image (no RepoTags or io.containerd.image.name); save it \
                 with a tag, e.g. `docker save app:v2 -o app.tar`"
            );
        }
        let planned = nodes
            .into_iter()
            .map(|mut node| {
                opts.override_runtime(&mut node);
                let decision = decide(archive, &node, all, opts);
                NodePlan { node, decision }
            })
            .collect();
        Ok(Plan {
            run_id: opts.run_id.to_string(),
            helper_namespace: opts.helper_namespace.to_string(),
            nodes: planned,
        })
    }

    /// The refusals, one line per node, or `None` when every node can go ahead.
    pub fn refusals(&self) -> Option<String> {
        let lines: Vec<String> = self
            .nodes
            .iter()
            .filter_map(|n| match &n.decision {
                Decision::Refuse { reason } => Some(format!("  {}: {reason}", n.node.name)),
                _ => None,
            })
            .collect();
        (!lines.is_empty()).then(|| lines.join("\n"))
    }

    /// Whether any node will be loaded.
    pub fn loads_any(&self) -> bool {
        self.nodes
            .iter()
            .any(|n| matches!(n.decision, Decision::Load { .. }))
    }

    /// Whether every skipped node was skipped for not fitting (rather than NotReady with
    /// --skip-unready, which the user asked for).
    pub fn skips_are_unfit(&self) -> bool {
        self.nodes
            .iter()
            .any(|n| matches!(&n.decision, Decision::Skip { reason } if reason != NOT_READY))
    }

    /// The skipped nodes, one line each.
    pub fn skips(&self) -> String {
        self.nodes
            .iter()
            .filter_map(|n| match &n.decision {
                Decision::Skip { reason } => Some(format!("  {}: {reason}", n.node.name)),
                _ => None,
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The helper pods the run will create first, in node order.
    pub fn pods(&self) -> Vec<&Pod> {
        self.nodes
            .iter()
            .filter_map(|n| match &n.decision {
                Decision::Load { pod, .. } => Some(pod.as_ref()),
                _ => None,
            })
            .collect()
    }

    /// The node architectures of the nodes to load: one agent ConfigMap each.
    pub fn architectures(&self) -> Vec<String> {
        let mut archs: Vec<String> = self
            .nodes
            .iter()
            .filter(|n| matches!(n.decision, Decision::Load { .. }))
            .map(|n| n.node.platform.architecture.clone())
            .collect();
        archs.sort();
        archs.dedup();
        archs
    }
}

const NOT_READY: &str = "node is NotReady";

/// One node's decision, from facts alone (no I/O): pure, so every rule has a unit test.
pub fn decide(
    archive: &Archive,
    node: &NodeFacts,
    all: &[NodeFacts],
    opts: &Options<'_>,
) -> Decision {
    let adapter = match fit(node, opts) {
        Ok(adapter) => adapter,
        Err(left_out) => return left_out.into(),
    };
    let image = match archive.image_for(&node.platform) {
        Ok(image) => image,
        Err(err) => {
            return unfit(
                opts,
                format!(
                    "{err}; select matching nodes with -l kubernetes.io/arch={}",
                    archive
                        .summary()
                        .images
                        .iter()
                        .find(|i| i.complete)
                        .map_or("…".to_string(), |i| i.platform.architecture.clone())
                ),
            )
            .into();
        }
    };
    let needs = adapter.needs();
    let (candidates, pod) = match helper_pod(node, all, opts, needs) {
        Ok(helper) => helper,
        Err(left_out) => return left_out.into(),
    };
    let bytes = match archive.oci_len(image, &Default::default()) {
        Ok(bytes) => bytes,
        Err(err) => {
            return Decision::Refuse {
                reason: err.to_string(),
            };
        }
    };
    let wanted = Wanted {
        refs: archive.summary().refs.clone(),
        target: archive.target_digest(image),
        manifest: image.manifest.digest.clone(),
        config: image.config.digest.clone(),
        layers: image.layers.iter().map(|l| l.digest.clone()).collect(),
        diff_ids: image.diff_ids.clone(),
        // The node's own spelling: what its runtime matches (`linux/arm64/v8` …).
        platform: image.platform.clone(),
    };
    Decision::Load {
        platform: image.platform.clone(),
        digest: wanted.target.clone(),
        bytes,
        method: adapter.method(),
        helper: candidates[0].clone(),
        candidates,
        needs,
        wanted: Box::new(wanted),
        pod: Box::new(pod),
    }
}

/// A node a helper can visit without an image to load (`status`, `rm`, `unpin`): the
/// helper images to try and the pod for the first, or the decision that it is left out.
pub fn visit(
    node: &NodeFacts,
    all: &[NodeFacts],
    opts: &Options<'_>,
) -> Result<(Vec<HelperImage>, Needs, Pod), LeftOut> {
    let needs = fit(node, opts)?.needs();
    let (candidates, pod) = helper_pod(node, all, opts, needs)?;
    Ok((candidates, needs, pod))
}

/// A node left out of a run, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeftOut {
    Skip(String),
    Refuse(String),
}

impl From<LeftOut> for Decision {
    fn from(left_out: LeftOut) -> Decision {
        match left_out {
            LeftOut::Skip(reason) => Decision::Skip { reason },
            LeftOut::Refuse(reason) => Decision::Refuse { reason },
        }
    }
}

/// Left out: skipped in an implicit selection, refused when the user named the node.
fn unfit(opts: &Options<'_>, reason: String) -> LeftOut {
    if opts.named {
        LeftOut::Refuse(reason)
    } else {
        LeftOut::Skip(reason)
    }
}

/// Whatever the image: whether a helper can run on the node and drive its runtime.
fn fit(node: &NodeFacts, opts: &Options<'_>) -> Result<Box<dyn crate::runtime::Adapter>, LeftOut> {
    if node.virtual_kubelet {
        return Err(unfit(
            opts,
            "virtual kubelet: it has no container runtime to load".into(),
        ));
    }
    if !node.ready {
        let reason = NOT_READY.to_string();
        return Err(if opts.skip_unready || !opts.named {
            LeftOut::Skip(reason)
        } else {
            LeftOut::Refuse(format!(
                "{reason}; fix the node or pass --skip-unready to load the others"
            ))
        });
    }
    if node.platform.os != "linux" {
        return Err(unfit(
            opts,
            format!("{} node: only Linux nodes can be loaded", node.platform.os),
        ));
    }
    let adapter = node
        .runtime
        .adapter()
        .map_err(|reason| unfit(opts, reason))?;
    agent::binary(&node.platform.architecture).map_err(|reason| unfit(opts, reason))?;
    Ok(adapter)
}

/// The helper images to try on the node, and the pod for the first.
fn helper_pod(
    node: &NodeFacts,
    all: &[NodeFacts],
    opts: &Options<'_>,
    needs: Needs,
) -> Result<(Vec<HelperImage>, Pod), LeftOut> {
    let candidates = helper::candidates(opts.helper_image, node, all, opts.changing);
    let Some(first) = candidates.first() else {
        return Err(LeftOut::Refuse(
            "no image is known to be on the node (it lists none, no pod runs there, and no \
             other node lists a pause image); pass --helper-image with any image present on \
             the node"
                .into(),
        ));
    };
    let pod = helper::pod(&HelperSpec {
        node: &node.name,
        namespace: opts.helper_namespace,
        run_id: opts.run_id,
        image: &first.image,
        arch: &node.platform.architecture,
        needs,
        attempt: 0,
    });
    Ok((candidates, pod))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::Source;
    use crate::archive::testutil::{TestImage, docker_archive, write_temp};
    use crate::cluster::nodes::ListedImage;
    use crate::runtime::Runtime;

    fn archive(platform: &str) -> (tempfile::TempDir, Archive) {
        let img = TestImage::new(7, platform, 2, 4096);
        let (dir, path) = write_temp(&docker_archive(&img, &["app:v1"]).tar());
        let archive = Archive::open(&Source::Path(path)).unwrap();
        (dir, archive)
    }

    fn node(name: &str, arch: &str, ready: bool, runtime: &str) -> NodeFacts {
        NodeFacts {
            name: name.into(),
            ready,
            unschedulable: false,
            platform: Platform::new("linux", arch, None),
            runtime: Runtime::from_node_info(runtime, "v1.34.4", false),
            kubelet_version: "v1.34.4".into(),
            taints: vec![],
            virtual_kubelet: false,
            images: vec![ListedImage {
                names: vec!["registry.k8s.io/pause:3.10".into()],
                size: 300_000,
            }],
            running_images: vec![],
            runtime_endpoint: None,
        }
    }

    fn opts(named: bool) -> Options<'static> {
        Options {
            helper_namespace: "kube-system",
            helper_image: None,
            skip_unready: false,
            run_id: "abc123",
            named,
            runtime: None,
            runtime_endpoint: None,
            changing: &[],
        }
    }

    #[test]
    fn a_ready_containerd_node_of_the_right_platform_is_loaded() {
        let (_dir, archive) = archive("linux/amd64");
        let d = decide(
            &archive,
            &node("n1", "amd64", true, "containerd://1.7.2"),
            &[],
            &opts(true),
        );
        let Decision::Load {
            pod,
            bytes,
            digest,
            helper,
            wanted,
            needs,
            ..
        } = d
        else {
            panic!("expected load, got {d:?}");
        };
        assert!(bytes > 8192);
        assert!(digest.starts_with("sha256:"));
        assert_eq!(helper.image, "registry.k8s.io/pause:3.10");
        assert_eq!(wanted.layers.len(), 2);
        assert_eq!(wanted.diff_ids.len(), 2);
        assert!(!needs.privileged);
        assert_eq!(pod.spec.unwrap().node_name.as_deref(), Some("n1"));
    }

    #[test]
    fn crio_nodes_are_loaded_with_a_privileged_helper() {
        let (_dir, archive) = archive("linux/amd64");
        let d = decide(
            &archive,
            &node("n4", "amd64", true, "cri-o://1.34.0"),
            &[],
            &opts(true),
        );
        assert!(
            matches!(&d, Decision::Load { needs, method, .. } if needs.privileged && method.contains("skopeo")),
            "{d:?}"
        );
    }

    #[test]
    fn not_ready_is_refused_when_named_unless_skipped() {
        let (_dir, archive) = archive("linux/amd64");
        let n = node("n1", "amd64", false, "containerd://1.7.2");
        assert!(
            matches!(decide(&archive, &n, &[], &opts(true)), Decision::Refuse { reason } if reason.contains("--skip-unready"))
        );
        let skip = Options {
            skip_unready: true,
            ..opts(true)
        };
        assert!(matches!(
            decide(&archive, &n, &[], &skip),
            Decision::Skip { .. }
        ));
        assert!(matches!(
            decide(&archive, &n, &[], &opts(false)),
            Decision::Skip { .. }
        ));
    }

    #[test]
    fn unfit_nodes_are_refused_when_named_and_skipped_when_implicit() {
        let (_dir, arm) = archive("linux/arm64");
        let amd = node("n1", "amd64", true, "containerd://1.7.2");
        let d = decide(&arm, &amd, &[], &opts(true));
        assert!(
            matches!(&d, Decision::Refuse { reason } if reason.contains("kubernetes.io/arch=arm64")),
            "{d:?}"
        );
        assert!(matches!(
            decide(&arm, &amd, &[], &opts(false)),
            Decision::Skip { .. }
        ));
        let (_dir, archive) = archive("linux/amd64");
        let docker = node("n2", "amd64", true, "docker://28.2.2");
        assert!(matches!(
            decide(&archive, &docker, &[], &opts(false)),
            Decision::Load { .. }
        ));
        let odd = node("n2", "amd64", true, "frakti://1.0");
        assert!(
            matches!(decide(&archive, &odd, &[], &opts(false)), Decision::Skip { reason } if reason.contains("frakti"))
        );
        let mut windows = node("n3", "amd64", true, "containerd://1.7.2");
        windows.platform.os = "windows".into();
        assert!(
            matches!(decide(&archive, &windows, &[], &opts(false)), Decision::Skip { reason } if reason.contains("windows"))
        );
        let mut vk = node("vk", "amd64", true, "containerd://1.7.2");
        vk.virtual_kubelet = true;
        assert!(matches!(
            decide(&archive, &vk, &[], &opts(false)),
            Decision::Skip { .. }
        ));
        let s390 = node("z", "s390x", true, "containerd://1.7.2");
        assert!(
            matches!(decide(&archive, &s390, &[], &opts(true)), Decision::Refuse { reason } if reason.contains("s390x"))
        );
    }

    #[test]
    fn a_node_with_no_image_known_asks_for_helper_image_unless_others_list_pause() {
        let (_dir, archive) = archive("linux/amd64");
        let mut n = node("n1", "amd64", true, "containerd://2.0.0");
        n.images.clear();
        let d = decide(&archive, &n, &[], &opts(true));
        assert!(
            matches!(&d, Decision::Refuse { reason } if reason.contains("--helper-image")),
            "{d:?}"
        );
        let other = node("n2", "amd64", true, "containerd://2.0.0");
        let d = decide(&archive, &n, &[other], &opts(true));
        assert!(
            matches!(&d, Decision::Load { helper, .. } if helper.image.ends_with("pause:3.10")),
            "{d:?}"
        );
    }

    #[test]
    fn runtime_flags_override_what_nodes_report() {
        let (_dir, archive) = archive("linux/amd64");
        let o = Options {
            runtime: Some(RuntimeKind::CriO),
            runtime_endpoint: Some("unix:///run/x.sock"),
            ..opts(true)
        };
        let plan = Plan::build(
            &archive,
            vec![node("n1", "amd64", true, "containerd://1.7.2")],
            &[],
            &o,
        )
        .unwrap();
        assert!(matches!(plan.nodes[0].node.runtime, Runtime::CriO { .. }));
        assert_eq!(
            plan.nodes[0].node.runtime_endpoint.as_deref(),
            Some("unix:///run/x.sock")
        );
    }
}
