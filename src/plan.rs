//! The plan: for each selected node, what will happen and why, resolved before anything on
//! the cluster changes. `--dry-run` prints it and stops.

use std::collections::HashSet;

use anyhow::{Result, bail};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use serde::Serialize;

use crate::archive::{Archive, Platform};
use crate::cluster::helper::{self, HelperImage, HelperSpec};
use crate::cluster::nodes::{self, NodeFacts};

/// What the plugin will do on one node.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "action", rename_all = "kebab-case")]
pub enum Decision {
    /// Stream the image for `platform` through a helper pod.
    Load {
        platform: Platform,
        digest: String,
        bytes: u64,
        helper: HelperImage,
        #[serde(skip)]
        pod: Box<Pod>,
    },
    /// Left out on purpose (`--skip-unready`); not a failure.
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
}

impl Plan {
    /// Decides every node. Reads pods only for nodes that list no pause image.
    pub async fn build(
        client: &kube::Client,
        archive: &Archive,
        nodes: Vec<NodeFacts>,
        opts: &Options<'_>,
    ) -> Result<Plan> {
        if archive.summary().refs.is_empty() {
            bail!(
                "the archive names no image (no RepoTags or io.containerd.image.name); save it \
                 with a tag, e.g. `docker save app:v2 -o app.tar`"
            );
        }
        // Nodes that list no pause image need a fallback (helper::Reusable); the API is
        // asked only for those, and the cluster-wide pause image only once.
        let unlisted = |node: &NodeFacts| {
            opts.helper_image.is_none() && helper::listed_pause(&node.images).is_none()
        };
        let pause_elsewhere = if nodes.iter().any(unlisted) {
            nodes::pause_listed_anywhere(client).await
        } else {
            None
        };
        let mut planned = Vec::with_capacity(nodes.len());
        for node in nodes {
            let running = if unlisted(&node) {
                running_images(client, &node.name).await
            } else {
                Vec::new()
            };
            let reusable = helper::Reusable {
                running: &running,
                pause_elsewhere: pause_elsewhere.as_deref(),
            };
            let decision = decide(archive, &node, &reusable, opts);
            planned.push(NodePlan { node, decision });
        }
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

    /// The helper pods the run will create, in node order.
    pub fn pods(&self) -> Vec<&Pod> {
        self.nodes
            .iter()
            .filter_map(|n| match &n.decision {
                Decision::Load { pod, .. } => Some(pod.as_ref()),
                _ => None,
            })
            .collect()
    }
}

/// One node's decision, from facts alone (no I/O): pure, so every rule has a unit test.
pub fn decide(
    archive: &Archive,
    node: &NodeFacts,
    reusable: &helper::Reusable<'_>,
    opts: &Options<'_>,
) -> Decision {
    if !node.ready {
        let reason = "node is NotReady".to_string();
        return if opts.skip_unready {
            Decision::Skip { reason }
        } else {
            Decision::Refuse {
                reason: format!("{reason}; fix the node or pass --skip-unready to load the others"),
            }
        };
    }
    if let Some(reason) = node.runtime.unsupported_reason() {
        return Decision::Refuse { reason };
    }
    let image = match archive.image_for(&node.platform) {
        Ok(image) => image,
        Err(err) => {
            return Decision::Refuse {
                reason: format!(
                    "{err}; select matching nodes with -l kubernetes.io/arch={}",
                    archive
                        .summary()
                        .images
                        .iter()
                        .find(|i| i.complete)
                        .map_or("…".to_string(), |i| i.platform.architecture.clone())
                ),
            };
        }
    };
    let Some(helper) = helper::choose_image(opts.helper_image, node, reusable) else {
        return Decision::Refuse {
            reason: "no image the helper pod can reuse is known on the node (no node lists a \
                     pause image, no pods run there); pass --helper-image with an image present \
                     on the node"
                .into(),
        };
    };
    let bytes = match archive.oci_len(image, &HashSet::new()) {
        Ok(bytes) => bytes,
        Err(err) => {
            return Decision::Refuse {
                reason: err.to_string(),
            };
        }
    };
    let pod = helper::pod(&HelperSpec {
        node: &node.name,
        namespace: opts.helper_namespace,
        run_id: opts.run_id,
        image: &helper,
        arch: &node.platform.architecture,
    });
    Decision::Load {
        platform: image.platform.clone(),
        digest: archive.target_digest(image),
        bytes,
        helper,
        pod: Box::new(pod),
    }
}

/// Images of pods running on a node: the helper's fallback when no pause image is listed.
async fn running_images(client: &kube::Client, node: &str) -> Vec<String> {
    let pods: Api<Pod> = Api::all(client.clone());
    let params =
        ListParams::default().fields(&format!("spec.nodeName={node},status.phase=Running"));
    let Ok(list) = pods.list(&params).await else {
        return Vec::new();
    };
    let mut images: Vec<String> = list
        .items
        .into_iter()
        .flat_map(|p| p.spec.map(|s| s.containers).unwrap_or_default())
        .filter_map(|c| c.image)
        .collect();
    images.sort();
    images.dedup();
    images
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::Source;
    use crate::archive::testutil::{TestImage, docker_archive, write_temp};
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
            images: vec!["registry.k8s.io/pause:3.10".into()],
            runtime_endpoint: None,
        }
    }

    fn opts(skip_unready: bool) -> Options<'static> {
        Options {
            helper_namespace: "kube-system",
            helper_image: None,
            skip_unready,
            run_id: "abc123",
        }
    }

    #[test]
    fn a_ready_containerd_node_of_the_right_platform_is_loaded() {
        let (_dir, archive) = archive("linux/amd64");
        let d = decide(
            &archive,
            &node("n1", "amd64", true, "containerd://1.7.2"),
            &helper::Reusable::default(),
            &opts(false),
        );
        let Decision::Load {
            pod,
            bytes,
            digest,
            helper,
            ..
        } = d
        else {
            panic!("expected load, got {d:?}");
        };
        assert!(bytes > 8192);
        assert!(digest.starts_with("sha256:"));
        assert!(helper.is_pause);
        assert_eq!(pod.spec.unwrap().node_name.as_deref(), Some("n1"));
    }

    #[test]
    fn not_ready_is_refused_unless_skipped() {
        let (_dir, archive) = archive("linux/amd64");
        let n = node("n1", "amd64", false, "containerd://1.7.2");
        assert!(
            matches!(decide(&archive, &n, &helper::Reusable::default(), &opts(false)), Decision::Refuse { reason } if reason.contains("--skip-unready"))
        );
        assert!(matches!(
            decide(&archive, &n, &helper::Reusable::default(), &opts(true)),
            Decision::Skip { .. }
        ));
    }

    #[test]
    fn wrong_platform_and_runtime_are_refused_with_the_way_out() {
        let (_dir, archive) = archive("linux/arm64");
        let d = decide(
            &archive,
            &node("n1", "amd64", true, "containerd://1.7.2"),
            &helper::Reusable::default(),
            &opts(false),
        );
        assert!(
            matches!(&d, Decision::Refuse { reason } if reason.contains("kubernetes.io/arch=arm64")),
            "{d:?}"
        );
        let (_dir, archive) = archive_amd64();
        let d = decide(
            &archive,
            &node("n1", "amd64", true, "cri-o://1.30.1"),
            &helper::Reusable::default(),
            &opts(false),
        );
        assert!(
            matches!(&d, Decision::Refuse { reason } if reason.contains("cri-o")),
            "{d:?}"
        );
    }

    fn archive_amd64() -> (tempfile::TempDir, Archive) {
        archive("linux/amd64")
    }

    #[test]
    fn a_node_with_nothing_to_reuse_asks_for_helper_image() {
        let (_dir, archive) = archive_amd64();
        let mut n = node("n1", "amd64", true, "containerd://2.0.0");
        n.images.clear();
        let d = decide(&archive, &n, &helper::Reusable::default(), &opts(false));
        assert!(
            matches!(&d, Decision::Refuse { reason } if reason.contains("--helper-image")),
            "{d:?}"
        );
        // A node whose list was cut at 50 images borrows the pause image other nodes list.
        let elsewhere = helper::Reusable {
            pause_elsewhere: Some("registry.k8s.io/pause:3.10"),
            ..Default::default()
        };
        let d = decide(&archive, &n, &elsewhere, &opts(false));
        assert!(
            matches!(&d, Decision::Load { helper, .. } if helper.is_pause && helper.image.ends_with("pause:3.10")),
            "{d:?}"
        );
    }
}
