//! Node selection (`--nodes`, `--selector`) and the facts the plan needs about each node.

use std::collections::BTreeMap;

use anyhow::{Result, bail};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, ListParams};
use serde::Serialize;

use crate::archive::Platform;
use crate::cli::NodeSelection;
use crate::cluster::errors::explain;
use crate::runtime::Runtime;

/// What the plugin knows about a node before it sends anything.
#[derive(Debug, Clone, Serialize)]
pub struct NodeFacts {
    pub name: String,
    pub ready: bool,
    pub unschedulable: bool,
    pub platform: Platform,
    pub runtime: Runtime,
    pub kubelet_version: String,
    pub taints: Vec<String>,
    /// Image names the kubelet reports (capped at 50 by the kubelet: a hint, not a list).
    #[serde(skip)]
    pub images: Vec<String>,
    /// The CRI endpoint from the kubelet's configz, when readable (needs nodes/proxy).
    pub runtime_endpoint: Option<String>,
}

impl NodeFacts {
    pub fn from_node(node: &Node) -> Self {
        let name = node.metadata.name.clone().unwrap_or_default();
        let labels = node.metadata.labels.clone().unwrap_or_default();
        let status = node.status.clone().unwrap_or_default();
        let info = status.node_info.clone().unwrap_or_default();
        let ready = status
            .conditions
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        let os = labels
            .get("kubernetes.io/os")
            .cloned()
            .unwrap_or(info.operating_system.clone());
        let architecture = labels
            .get("kubernetes.io/arch")
            .cloned()
            .unwrap_or(info.architecture.clone());
        let spec = node.spec.clone().unwrap_or_default();
        let taints = spec
            .taints
            .unwrap_or_default()
            .iter()
            .map(|t| match &t.value {
                Some(v) => format!("{}={}:{}", t.key, v, t.effect),
                None => format!("{}:{}", t.key, t.effect),
            })
            .collect();
        let images = status
            .images
            .unwrap_or_default()
            .into_iter()
            .flat_map(|i| i.names.unwrap_or_default())
            .collect();
        NodeFacts {
            runtime: Runtime::from_node_info(
                &info.container_runtime_version,
                &info.kubelet_version,
                labels.contains_key("microk8s.io/cluster"),
            ),
            name,
            ready,
            unschedulable: spec.unschedulable.unwrap_or(false),
            platform: Platform {
                os,
                architecture,
                variant: None,
            },
            kubelet_version: info.kubelet_version,
            taints,
            images,
            runtime_endpoint: None,
        }
    }
}

/// Resolves the user's selection to nodes; names that do not exist and selectors that
/// match nothing are errors, since loading "no nodes" is never what was meant.
/// The pause image most nodes list, if any does: the fallback for a node whose own image
/// list was cut short (helper::Reusable). Errors count as "none": it is only a fallback.
pub async fn pause_listed_anywhere(client: &kube::Client) -> Option<String> {
    let api: Api<Node> = Api::all(client.clone());
    let list = api.list(&ListParams::default()).await.ok()?;
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for node in list.items {
        let names: Vec<String> = node
            .status
            .and_then(|s| s.images)
            .unwrap_or_default()
            .into_iter()
            .flat_map(|i| i.names.unwrap_or_default())
            .collect();
        if let Some(pause) = crate::cluster::helper::listed_pause(&names) {
            *counts.entry(pause.to_string()).or_default() += 1;
        }
    }
    counts
        .into_iter()
        .max_by_key(|(_, n)| *n)
        .map(|(name, _)| name)
}

pub async fn select(client: &kube::Client, selection: &NodeSelection) -> Result<Vec<NodeFacts>> {
    let api: Api<Node> = Api::all(client.clone());
    let nodes = match selection {
        NodeSelection::All => {
            let list = api
                .list(&ListParams::default())
                .await
                .map_err(|e| explain(e, "list", "nodes"))?;
            if list.items.is_empty() {
                bail!("the cluster has no nodes; check --context");
            }
            list.items
        }
        NodeSelection::Selector(selector) => {
            let list = api
                .list(&ListParams::default().labels(selector))
                .await
                .map_err(|e| explain(e, "list", "nodes"))?;
            if list.items.is_empty() {
                bail!(
                    "no node matches --selector {selector:?}; `kubectl get nodes --show-labels` lists the labels"
                );
            }
            list.items
        }
        NodeSelection::Names(names) => {
            let mut found = Vec::with_capacity(names.len());
            for name in names {
                match api
                    .get_opt(name)
                    .await
                    .map_err(|e| explain(e, "get", "nodes"))?
                {
                    Some(node) => found.push(node),
                    None => {
                        bail!("node {name:?} not found; `kubectl get nodes` lists the node names")
                    }
                }
            }
            found
        }
    };
    let mut facts: Vec<NodeFacts> = nodes.iter().map(NodeFacts::from_node).collect();
    for node in &mut facts {
        node.runtime_endpoint = runtime_endpoint(client, &node.name).await;
    }
    Ok(facts)
}

/// The kubelet's `containerRuntimeEndpoint` from `/configz`. Optional by design: it needs
/// `nodes/proxy`, which some admins will not grant; the probe then tries well-known paths.
async fn runtime_endpoint(client: &kube::Client, node: &str) -> Option<String> {
    let request = http::Request::get(format!("/api/v1/nodes/{node}/proxy/configz"))
        .body(Vec::new())
        .ok()?;
    let text = client.request_text(request).await.ok()?;
    let value: serde_json::Value = serde_json::from_str(&text).ok()?;
    value
        .pointer("/kubeletconfig/containerRuntimeEndpoint")
        .and_then(|v| v.as_str())
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODE: &str = r#"
apiVersion: v1
kind: Node
metadata:
  name: node-c
  labels:
    kubernetes.io/arch: arm64
    kubernetes.io/os: linux
spec:
  taints:
  - key: sideload.test/dedicated
    value: "true"
    effect: NoSchedule
status:
  conditions:
  - type: Ready
    status: "True"
  nodeInfo:
    architecture: arm64
    bootID: ""
    containerRuntimeVersion: containerd://2.1.4
    kernelVersion: ""
    kubeProxyVersion: ""
    kubeletVersion: v1.34.4
    machineID: ""
    operatingSystem: linux
    osImage: ""
    systemUUID: ""
  images:
  - names: ["registry.k8s.io/pause:3.10"]
    sizeBytes: 300000
"#;

    #[test]
    fn facts_from_a_node_object() {
        let node: Node = serde_yaml::from_str(NODE).unwrap();
        let facts = NodeFacts::from_node(&node);
        assert_eq!(facts.name, "node-c");
        assert!(facts.ready);
        assert_eq!(facts.platform.to_string(), "linux/arm64");
        assert_eq!(facts.runtime.to_string(), "containerd 2.1.4");
        assert_eq!(facts.taints, ["sideload.test/dedicated=true:NoSchedule"]);
        assert_eq!(facts.images, ["registry.k8s.io/pause:3.10"]);
    }

    #[test]
    fn a_node_without_ready_condition_is_not_ready() {
        let mut node: Node = serde_yaml::from_str(NODE).unwrap();
        node.status.as_mut().unwrap().conditions = None;
        assert!(!NodeFacts::from_node(&node).ready);
    }
}
