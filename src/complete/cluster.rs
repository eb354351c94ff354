//! Candidates from outside the definition: node names and labels, namespaces and workloads
//! from the API server (within the completion's time budget), and context, cluster and user
//! names from the kubeconfig.

use std::collections::BTreeSet;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Namespace, Node};
use kube::api::{Api, ListParams};
use kube::config::Kubeconfig;

use super::candidates::{Candidate, list_candidates, matching, split_list};
use super::flags::{Source, workload_kind};
use crate::cli::KubeArgs;
use crate::cluster::client;

/// Context, cluster or user names from the kubeconfig (no API call).
pub(super) fn kubeconfig_names(source: &Source, path: Option<&str>) -> Vec<String> {
    let config = match path {
        Some(path) => Kubeconfig::read_from(path),
        None => Kubeconfig::read(),
    };
    let Ok(config) = config else {
        return Vec::new();
    };
    match source {
        Source::KubeconfigContexts => config.contexts.into_iter().map(|c| c.name).collect(),
        Source::KubeconfigClusters => config.clusters.into_iter().map(|c| c.name).collect(),
        Source::KubeconfigUsers => config.auth_infos.into_iter().map(|c| c.name).collect(),
        _ => Vec::new(),
    }
}

/// Candidates from the API server; `None` on any error.
pub(super) async fn fetch(source: &Source, kube: &KubeArgs, typed: &str) -> Option<Vec<Candidate>> {
    let cluster = client::connect(kube).await.ok()?;
    let client = cluster.client;
    let candidates = match source {
        Source::Nodes => {
            let nodes = names(Api::<Node>::all(client)).await?;
            let mut candidates = Vec::new();
            if split_list(typed).0.is_empty() && "all".starts_with(typed) {
                candidates.push(Candidate::new(
                    "all",
                    Some("every node (the default)".into()),
                ));
            }
            candidates.extend(list_candidates(typed, &nodes));
            candidates
        }
        Source::NodeLabels => {
            let nodes = Api::<Node>::all(client)
                .list_metadata(&ListParams::default())
                .await
                .ok()?;
            let labels: BTreeSet<String> = nodes
                .items
                .into_iter()
                .flat_map(|n| n.metadata.labels.unwrap_or_default())
                .map(|(key, value)| format!("{key}={value}"))
                .collect();
            list_candidates(typed, &labels.into_iter().collect::<Vec<_>>())
        }
        Source::Namespaces => {
            let namespaces = names(Api::<Namespace>::all(client)).await?;
            matching(
                namespaces.into_iter().map(Candidate::plain).collect(),
                typed,
            )
        }
        Source::Workloads => {
            let (kind, _) = workload_kind(typed)?;
            let (typed_kind, _) = typed.split_once('/')?;
            let ns = cluster.namespace.as_str();
            let found = match kind {
                "deployment" => names(Api::<Deployment>::namespaced(client, ns)).await?,
                "statefulset" => names(Api::<StatefulSet>::namespaced(client, ns)).await?,
                _ => names(Api::<DaemonSet>::namespaced(client, ns)).await?,
            };
            // Keep the kind as the user spelled it (`deploy/…` stays `deploy/…`).
            let candidates = found
                .into_iter()
                .map(|name| Candidate::plain(format!("{typed_kind}/{name}")))
                .collect();
            matching(candidates, typed)
        }
        _ => Vec::new(),
    };
    Some(candidates)
}

/// Sorted names of every object the API lists (metadata only: the lightest list there is).
async fn names<K>(api: Api<K>) -> Option<Vec<String>>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let list = api.list_metadata(&ListParams::default()).await.ok()?;
    let mut names: Vec<String> = list
        .items
        .into_iter()
        .filter_map(|o| o.metadata.name)
        .collect();
    names.sort();
    Some(names)
}
