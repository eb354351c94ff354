//! Where a pod template can run, judged as the scheduler's filters do (node unschedulable,
//! `nodeSelector`, required node affinity, NoSchedule/NoExecute taints), so the plugin can
//! tell, before patching, whether pods could land on nodes that were not loaded; and the
//! `--constrain` affinity that keeps them on loaded nodes.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{
    Node, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, PodSpec, Taint, Toleration,
};
use serde::Serialize;

/// Prefix of the node labels `--constrain` sets: `sideload.dev/img-<12 hex of digest>`.
pub const LABEL_PREFIX: &str = "sideload.dev/img-";
/// Their value. The affinity tests only `Exists`; the value is for people reading labels.
pub const LABEL_VALUE: &str = "present";

/// The node label marking nodes that hold the image with this digest.
pub fn label_key(digest: &str) -> String {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    format!("{LABEL_PREFIX}{}", &hex[..hex.len().min(12)])
}

/// Where a workload's pods can run, split by whether the node will hold the image.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Placement {
    /// Nodes that can host the pods and hold (or are being loaded with) the image.
    pub loaded: Vec<String>,
    /// Nodes that can host the pods but will not hold the image: pods there fail to start.
    pub not_loaded: Vec<String>,
}

impl Placement {
    /// Splits the nodes that can host `spec` by membership in `covered`.
    pub fn of(spec: &PodSpec, nodes: &[Node], daemonset: bool, covered: &BTreeSet<String>) -> Self {
        let mut placement = Placement::default();
        for name in hosts(spec, nodes, daemonset) {
            if covered.contains(&name) {
                placement.loaded.push(name);
            } else {
                placement.not_loaded.push(name);
            }
        }
        placement
    }
}

/// Names of the nodes that can host a pod with this spec, sorted.
pub fn hosts(spec: &PodSpec, nodes: &[Node], daemonset: bool) -> Vec<String> {
    let mut names: Vec<String> = nodes
        .iter()
        .filter(|n| can_host(spec, n, daemonset))
        .filter_map(|n| n.metadata.name.clone())
        .collect();
    names.sort();
    names
}

/// Whether the scheduler could place a pod with `spec` on `node`. DaemonSet pods get the
/// tolerations the DaemonSet controller adds to each of them.
pub fn can_host(spec: &PodSpec, node: &Node, daemonset: bool) -> bool {
    let empty = BTreeMap::new();
    let labels = node.metadata.labels.as_ref().unwrap_or(&empty);
    let name = node.metadata.name.as_deref().unwrap_or_default();
    let mut tolerations = spec.tolerations.clone().unwrap_or_default();
    if daemonset {
        tolerations.extend(daemonset_tolerations(spec.host_network.unwrap_or(false)));
    }
    let node_spec = node.spec.clone().unwrap_or_default();
    // The scheduler's NodeUnschedulable filter: a cordoned node takes only pods that
    // tolerate the unschedulable taint.
    if node_spec.unschedulable.unwrap_or(false) {
        let cordon = Taint {
            key: "node.kubernetes.io/unschedulable".into(),
            effect: "NoSchedule".into(),
            ..Default::default()
        };
        if !tolerations.iter().any(|t| tolerates(t, &cordon)) {
            return false;
        }
    }
    if let Some(selector) = &spec.node_selector
        && !selector.iter().all(|(k, v)| labels.get(k) == Some(v))
    {
        return false;
    }
    let terms = required_terms(spec);
    if !terms.is_empty() && !terms.iter().any(|t| term_matches(t, labels, name)) {
        return false;
    }
    node_spec
        .taints
        .iter()
        .flatten()
        .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
        .all(|taint| tolerations.iter().any(|t| tolerates(t, taint)))
}

/// The template's required node affinity terms (ORed), empty when it has none.
pub fn required_terms(spec: &PodSpec) -> Vec<NodeSelectorTerm> {
    spec.affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|n| {
            n.required_during_scheduling_ignored_during_execution
                .as_ref()
        })
        .map(|s: &NodeSelector| s.node_selector_terms.clone())
        .unwrap_or_default()
}

/// The required terms with `key Exists` ANDed into every one (a new single term if there
/// are none). Appending a term would OR it with the others and constrain nothing.
/// Expressions on an earlier `sideload.dev/img-*` label are dropped: they name an older image.
pub fn constrained_terms(current: &[NodeSelectorTerm], key: &str) -> Vec<NodeSelectorTerm> {
    let ours = NodeSelectorRequirement {
        key: key.to_string(),
        operator: "Exists".into(),
        values: None,
    };
    if current.is_empty() {
        return vec![NodeSelectorTerm {
            match_expressions: Some(vec![ours]),
            match_fields: None,
        }];
    }
    current
        .iter()
        .map(|term| {
            let mut exprs: Vec<NodeSelectorRequirement> = term
                .match_expressions
                .iter()
                .flatten()
                .filter(|e| !e.key.starts_with(LABEL_PREFIX))
                .cloned()
                .collect();
            exprs.push(ours.clone());
            NodeSelectorTerm {
                match_expressions: Some(exprs),
                match_fields: term.match_fields.clone(),
            }
        })
        .collect()
}

/// A term matches when all its requirements do; an empty term matches nothing.
fn term_matches(term: &NodeSelectorTerm, labels: &BTreeMap<String, String>, name: &str) -> bool {
    let exprs = term.match_expressions.as_deref().unwrap_or_default();
    let fields = term.match_fields.as_deref().unwrap_or_default();
    if exprs.is_empty() && fields.is_empty() {
        return false;
    }
    exprs
        .iter()
        .all(|e| requirement_matches(e, labels.get(&e.key)))
        && fields.iter().all(|f| {
            // Only metadata.name is a supported field (what DaemonSet pods use).
            f.key == "metadata.name" && requirement_matches(f, Some(&name.to_string()))
        })
}

fn requirement_matches(req: &NodeSelectorRequirement, value: Option<&String>) -> bool {
    let values = req.values.as_deref().unwrap_or_default();
    let number = |s: &str| s.parse::<i64>().ok();
    match req.operator.as_str() {
        "In" => value.is_some_and(|v| values.contains(v)),
        "NotIn" => value.is_none_or(|v| !values.contains(v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" | "Lt" => {
            let (Some(have), Some(bound)) = (
                value.and_then(|v| number(v)),
                values.first().and_then(|v| number(v)),
            ) else {
                return false;
            };
            if req.operator == "Gt" {
                have > bound
            } else {
                have < bound
            }
        }
        _ => false,
    }
}

/// Kubernetes' `ToleratesTaint`.
fn tolerates(t: &Toleration, taint: &Taint) -> bool {
    if let Some(effect) = t.effect.as_deref().filter(|e| !e.is_empty())
        && effect != taint.effect
    {
        return false;
    }
    let key = t.key.as_deref().unwrap_or_default();
    if !key.is_empty() && key != taint.key {
        return false;
    }
    match t.operator.as_deref().unwrap_or("Equal") {
        "Exists" => true,
        "Equal" | "" => {
            !key.is_empty()
                && t.value.as_deref().unwrap_or_default()
                    == taint.value.as_deref().unwrap_or_default()
        }
        _ => false,
    }
}

/// What the DaemonSet controller adds to every daemon pod
/// (`AddOrUpdateDaemonPodTolerations` in kubernetes/pkg/controller/daemon/util).
fn daemonset_tolerations(host_network: bool) -> Vec<Toleration> {
    let exists = |key: &str, effect: &str| Toleration {
        key: Some(key.into()),
        operator: Some("Exists".into()),
        effect: Some(effect.into()),
        ..Default::default()
    };
    let mut list = vec![
        exists("node.kubernetes.io/not-ready", "NoExecute"),
        exists("node.kubernetes.io/unreachable", "NoExecute"),
        exists("node.kubernetes.io/disk-pressure", "NoSchedule"),
        exists("node.kubernetes.io/memory-pressure", "NoSchedule"),
        exists("node.kubernetes.io/pid-pressure", "NoSchedule"),
        exists("node.kubernetes.io/unschedulable", "NoSchedule"),
    ];
    if host_network {
        list.push(exists(
            "node.kubernetes.io/network-unavailable",
            "NoSchedule",
        ));
    }
    list
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The test cluster's shape: a and b in pool blue, c in pool green and tainted.
    const NODES: &str = r#"
- metadata:
    name: node-a
    labels: {pool: blue, kubernetes.io/hostname: node-a, rank: "3"}
- metadata:
    name: node-b
    labels: {pool: blue, kubernetes.io/hostname: node-b, rank: "7", sideload.dev/img-0123456789ab: present}
- metadata:
    name: node-c
    labels: {pool: green, kubernetes.io/hostname: node-c}
  spec:
    taints:
    - {key: sideload.test/dedicated, value: "true", effect: NoSchedule}
- metadata:
    name: node-d
    labels: {pool: blue}
  spec:
    unschedulable: true
    taints:
    - {key: node.kubernetes.io/unschedulable, effect: NoSchedule}
"#;

    fn nodes() -> Vec<Node> {
        serde_yaml::from_str(NODES).unwrap()
    }

    fn spec(yaml: &str) -> PodSpec {
        serde_yaml::from_str(&format!("containers: []\n{yaml}")).unwrap()
    }

    fn on(yaml: &str) -> Vec<String> {
        hosts(&spec(yaml), &nodes(), false)
    }

    #[test]
    fn a_plain_pod_avoids_taints_and_cordoned_nodes() {
        assert_eq!(on(""), ["node-a", "node-b"]);
        // DaemonSet pods tolerate the cordon taint, not the dedicated one.
        assert_eq!(
            hosts(&spec(""), &nodes(), true),
            ["node-a", "node-b", "node-d"]
        );
    }

    #[test]
    fn tolerations_follow_kubernetes_rules() {
        let tolerate_all = "tolerations: [{operator: Exists}]";
        assert_eq!(on(tolerate_all), ["node-a", "node-b", "node-c", "node-d"]);
        let exact = r#"tolerations: [{key: sideload.test/dedicated, operator: Equal, value: "true", effect: NoSchedule}]"#;
        assert_eq!(on(exact), ["node-a", "node-b", "node-c"]);
        let wrong_value = r#"tolerations: [{key: sideload.test/dedicated, value: "false"}]"#;
        assert_eq!(on(wrong_value), ["node-a", "node-b"]);
        let wrong_effect =
            "tolerations: [{key: sideload.test/dedicated, operator: Exists, effect: NoExecute}]";
        assert_eq!(on(wrong_effect), ["node-a", "node-b"]);
        let key_exists = "tolerations: [{key: sideload.test/dedicated, operator: Exists}]";
        assert_eq!(on(key_exists), ["node-a", "node-b", "node-c"]);
    }

    #[test]
    fn node_selector_must_match_every_label() {
        assert_eq!(on("nodeSelector: {pool: green}"), Vec::<String>::new());
        assert_eq!(
            on("nodeSelector: {pool: green}\ntolerations: [{operator: Exists}]"),
            ["node-c"]
        );
        assert_eq!(
            on("nodeSelector: {pool: blue, kubernetes.io/hostname: node-b}"),
            ["node-b"]
        );
    }

    fn affinity(terms: &str) -> String {
        format!(
            "affinity:\n  nodeAffinity:\n    requiredDuringSchedulingIgnoredDuringExecution:\n      nodeSelectorTerms: {terms}"
        )
    }

    #[test]
    fn affinity_operators() {
        let cases = [
            (
                "[{matchExpressions: [{key: pool, operator: In, values: [blue]}]}]",
                vec!["node-a", "node-b"],
            ),
            (
                "[{matchExpressions: [{key: rank, operator: NotIn, values: ['3']}]}]",
                vec!["node-b"],
            ),
            (
                "[{matchExpressions: [{key: rank, operator: Exists}]}]",
                vec!["node-a", "node-b"],
            ),
            (
                "[{matchExpressions: [{key: rank, operator: DoesNotExist}]}]",
                vec![],
            ),
            (
                "[{matchExpressions: [{key: rank, operator: Gt, values: ['5']}]}]",
                vec!["node-b"],
            ),
            (
                "[{matchExpressions: [{key: rank, operator: Lt, values: ['5']}]}]",
                vec!["node-a"],
            ),
            (
                "[{matchExpressions: [{key: pool, operator: Gt, values: ['5']}]}]",
                vec![],
            ),
            (
                "[{matchFields: [{key: metadata.name, operator: In, values: [node-b]}]}]",
                vec!["node-b"],
            ),
            // Terms are ORed, expressions within a term ANDed.
            (
                "[{matchExpressions: [{key: rank, operator: In, values: ['3']}]}, {matchExpressions: [{key: rank, operator: In, values: ['7']}]}]",
                vec!["node-a", "node-b"],
            ),
            (
                "[{matchExpressions: [{key: pool, operator: In, values: [blue]}, {key: rank, operator: In, values: ['7']}]}]",
                vec!["node-b"],
            ),
            // An empty term matches nothing.
            ("[{}]", vec![]),
        ];
        for (terms, want) in cases {
            assert_eq!(on(&affinity(terms)), want, "{terms}");
        }
    }

    #[test]
    fn constraint_is_anded_into_every_term() {
        let key = label_key("sha256:0123456789abcdef0000");
        assert_eq!(key, "sideload.dev/img-0123456789ab");
        let fresh = constrained_terms(&[], &key);
        let only_b = on(&affinity(&serde_json::to_string(&fresh).unwrap()));
        assert_eq!(only_b, ["node-b"]);

        let current = required_terms(&spec(&affinity(
            "[{matchExpressions: [{key: rank, operator: In, values: ['3']}, {key: sideload.dev/img-old, operator: Exists}]}, {matchFields: [{key: metadata.name, operator: In, values: [node-b]}]}]",
        )));
        let terms = constrained_terms(&current, &key);
        assert_eq!(terms.len(), 2);
        for term in &terms {
            let exprs = term.match_expressions.as_ref().unwrap();
            assert_eq!(exprs.last().unwrap().key, key);
            assert!(exprs.iter().all(|e| e.key != "sideload.dev/img-old"));
        }
        assert!(terms[1].match_fields.is_some());
        // node-a matched term 1 before; without the label it matches neither now.
        assert_eq!(
            on(&affinity(&serde_json::to_string(&terms).unwrap())),
            ["node-b"]
        );
    }

    #[test]
    fn placement_splits_loaded_from_not_loaded() {
        let covered = BTreeSet::from(["node-a".to_string(), "node-c".to_string()]);
        let p = Placement::of(&spec(""), &nodes(), false, &covered);
        assert_eq!(p.loaded, ["node-a"]);
        assert_eq!(p.not_loaded, ["node-b"]);
    }
}
