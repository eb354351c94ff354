//! Node selection (`--nodes`, `--selector`) and the facts the plan needs about each node,
//! all read before planning so that the plan itself makes no API call.

use std::time::Duration;

use anyhow::{Result, bail};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams};
use serde::Serialize;

use crate::archive::Platform;
use crate::cluster::errors::explain;
use crate::model::NodeSelection;
use crate::runtime::Runtime;

/// One image the kubelet lists for a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ListedImage {
    /// Its names (tags, and `repo@sha256:…`).
    pub names: Vec<String>,
    pub size: i64,
}

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
    /// Labels that make the node something we cannot load (virtual kubelets).
    #[serde(skip)]
    pub virtual_kubelet: bool,
    /// Images the kubelet reports (at most 50, largest first: a hint, not an inventory;
    /// and it lags removals by up to a minute).
    #[serde(skip)]
    pub images: Vec<ListedImage>,
    /// Images of pods running on the node (certainly present while they run), when the
    /// plugin may list pods; empty otherwise.
    #[serde(skip)]
    pub running_images: Vec<String>,
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
            .map(|i| ListedImage {
                names: i.names.unwrap_or_default(),
                size: i.size_bytes.unwrap_or(0),
            })
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
            virtual_kubelet: labels.get("type").is_some_and(|t| t == "virtual-kubelet")
                || labels.contains_key("virtual-kubelet.io/provider"),
            images,
            running_images: Vec::new(),
            runtime_endpoint: None,
        }
    }
}

/// Every node of the cluster, once: selection, the helper's image candidates and the
/// workload stage's placement check all read from this one list.
pub async fn list_all(client: &kube::Client) -> Result<Vec<Node>> {
    let api: Api<Node> = Api::all(client.clone());
    let list = api
        .list(&ListParams::default())
        .await
        .map_err(|e| explain(e, "list", "nodes"))?;
    if list.items.is_empty() {
        bail!("the cluster has no nodes; check --context");
    }
    Ok(list.items)
}

/// Resolves the user's selection against `all`; names that do not exist and selectors
/// that match nothing are errors, since loading "no nodes" is never what was meant.
pub async fn select(
    client: &kube::Client,
    all: &[Node],
    selection: &NodeSelection,
) -> Result<Vec<NodeFacts>> {
    let chosen: Vec<&Node> = match selection {
        NodeSelection::All => all.iter().collect(),
        NodeSelection::Selector(selector) => {
            // The API server evaluates the selector (set-based syntax and all).
            let api: Api<Node> = Api::all(client.clone());
            let names: Vec<String> = api
                .list_metadata(&ListParams::default().labels(selector))
                .await
                .map_err(|e| explain(e, "list", "nodes"))?
                .items
                .into_iter()
                .filter_map(|n| n.metadata.name)
                .collect();
            if names.is_empty() {
                bail!(
                    "no node matches --selector {selector:?}; `kubectl get nodes --show-labels` lists the labels"
                );
            }
            all.iter()
                .filter(|n| n.metadata.name.as_ref().is_some_and(|m| names.contains(m)))
                .collect()
        }
        NodeSelection::Names(names) => {
            let mut found = Vec::with_capacity(names.len());
            for name in names {
                match all.iter().find(|n| n.metadata.name.as_ref() == Some(name)) {
                    Some(node) => found.push(node),
                    None => {
                        bail!("node {name:?} not found; `kubectl get nodes` lists the node names")
                    }
                }
            }
            found
        }
    };
    let mut facts: Vec<NodeFacts> = chosen.into_iter().map(NodeFacts::from_node).collect();
    let names: Vec<String> = facts.iter().map(|n| n.name.clone()).collect();
    let endpoints = futures::stream::iter(names)
        .map(|name| async move { runtime_endpoint(client, &name).await })
        .buffered(CONFIGZ_AT_ONCE)
        .collect::<Vec<_>>();
    let (running, endpoints) = tokio::join!(running_images(client), endpoints);
    for (node, endpoint) in facts.iter_mut().zip(endpoints) {
        node.runtime_endpoint = endpoint;
        node.running_images = running
            .iter()
            .filter(|(n, _)| n == &node.name)
            .map(|(_, image)| image.clone())
            .collect();
    }
    Ok(facts)
}

/// Kubelets asked for their configz at once. Each is a round trip through the API server's
/// node proxy to the kubelet: one after another, a large cluster's nodes (or a few whose
/// kubelet does not answer) held every run's start for seconds.
const CONFIGZ_AT_ONCE: usize = 16;

/// How long a kubelet has to answer for its configz. A kubelet that does not (its node
/// down) would hold the run until the API server's proxy gives up; the endpoint is only a
/// hint.
const CONFIGZ_WAIT: Duration = Duration::from_secs(5);

/// The kubelet's `containerRuntimeEndpoint` from `/configz`. Optional by design: it needs
/// `nodes/proxy`, which some admins will not grant; the agent then tries well-known paths.
async fn runtime_endpoint(client: &kube::Client, node: &str) -> Option<String> {
    let request = http::Request::get(format!("/api/v1/nodes/{node}/proxy/configz"))
        .body(Vec::new())
        .ok()?;
    let text = tokio::time::timeout(CONFIGZ_WAIT, client.request_text(request))
        .await
        .ok()?
        .ok()?;
    let value: serde_json::Value = serde_json::from_str(&text).ok()?;
    value
        .pointer("/kubeletconfig/containerRuntimeEndpoint")
        .and_then(|v| v.as_str())
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// (node, image) of every running pod's containers, when the plugin may list pods in all
/// namespaces; an empty list otherwise (it only adds helper image candidates).
async fn running_images(client: &kube::Client) -> Vec<(String, String)> {
    let pods: Api<Pod> = Api::all(client.clone());
    let Ok(list) = pods
        .list(&ListParams::default().fields("status.phase=Running"))
        .await
    else {
        return Vec::new();
    };
    let mut pairs: Vec<(String, String)> = list
        .items
        .into_iter()
        .filter_map(|p| {
            let spec = p.spec?;
            let node = spec.node_name?;
            Some(
                spec.containers
                    .into_iter()
                    .filter_map(|c| c.image)
                    .map(move |image| (node.clone(), image))
                    .collect::<Vec<_>>(),
            )
        })
        .flatten()
        .collect();
    pairs.sort();
    pairs.dedup();
    pairs
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
        assert_eq!(
            facts.images,
            [ListedImage {
                names: vec!["registry.k8s.io/pause:3.10".into()],
                size: 300000
            }]
        );
        assert!(!facts.virtual_kubelet);
    }

    #[test]
    fn a_node_without_ready_condition_is_not_ready() {
        let mut node: Node = serde_yaml::from_str(NODE).unwrap();
        node.status.as_mut().unwrap().conditions = None;
        assert!(!NodeFacts::from_node(&node).ready);
    }

    #[test]
    fn virtual_kubelets_are_recognised() {
        let mut node: Node = serde_yaml::from_str(NODE).unwrap();
        node.metadata
            .labels
            .as_mut()
            .unwrap()
            .insert("type".into(), "virtual-kubelet".into());
        assert!(NodeFacts::from_node(&node).virtual_kubelet);
    }

    /// The kubelets are asked for their configz at once, beside the pod listing: all four
    /// requests reach the API server before it has answered any (one at a time, a large
    /// cluster's start took a round trip per node). One kubelet answering with garbage, one
    /// not at all in time, leave only their own endpoint unknown.
    #[tokio::test(start_paused = true)]
    async fn kubelets_are_asked_for_their_runtime_endpoint_at_once() {
        use http::{Request, Response};
        use kube::client::Body;
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = kube::Client::new(service, "default");
        let nodes: Vec<Node> = ["node-a", "node-b", "node-c"]
            .iter()
            .map(|name| {
                let mut node: Node = serde_yaml::from_str(NODE).unwrap();
                node.metadata.name = Some(name.to_string());
                node
            })
            .collect();
        let selecting =
            tokio::spawn(
                async move { select(&client, &nodes, &NodeSelection::All).await.unwrap() },
            );
        let mut pending = Vec::new();
        for _ in 0..4 {
            let next = tokio::time::timeout(Duration::from_secs(1), handle.next_request());
            let (request, respond) = next
                .await
                .expect("the next request waits for an answer: asked one at a time")
                .expect("a request");
            pending.push((request.uri().to_string(), respond));
        }
        let mut paths: Vec<&str> = pending.iter().map(|(u, _)| u.as_str()).collect();
        paths.sort();
        assert!(
            paths[0].starts_with("/api/v1/nodes/node-a/proxy/configz"),
            "{paths:?}"
        );
        assert!(
            paths[1].starts_with("/api/v1/nodes/node-b/proxy/configz"),
            "{paths:?}"
        );
        assert!(
            paths[2].starts_with("/api/v1/nodes/node-c/proxy/configz"),
            "{paths:?}"
        );
        assert!(paths[3].starts_with("/api/v1/pods?"), "{paths:?}");
        for (uri, respond) in pending {
            let body = if uri.contains("node-a") {
                r#"{"kubeletconfig":{"containerRuntimeEndpoint":"unix:///run/a.sock"}}"#
            } else if uri.contains("node-b") {
                "not json"
            } else if uri.contains("node-c") {
                continue; // never answers: the wait bounds it
            } else {
                r#"{"apiVersion":"v1","kind":"PodList","metadata":{},"items":[]}"#
            };
            respond.send_response(Response::new(Body::from(body.as_bytes().to_vec())));
        }
        let facts = selecting.await.unwrap();
        let endpoints: Vec<Option<&str>> = facts
            .iter()
            .map(|f| f.runtime_endpoint.as_deref())
            .collect();
        assert_eq!(endpoints, [Some("unix:///run/a.sock"), None, None]);
    }
}
