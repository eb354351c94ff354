//! The run's result for people (a table) and for scripts (`-o json`), on stdout.

use serde::Serialize;

use crate::archive::Summary;
use crate::load::{NodeResult, Status};
use crate::plan::{Decision, Plan};
use crate::workload::WorkloadResult;

#[derive(Serialize)]
struct ImageJson<'a> {
    refs: &'a [String],
    digest: &'a str,
    /// Archive size in bytes.
    size: u64,
}

#[derive(Serialize)]
struct ReportJson<'a> {
    /// The run's id: its helper pods, ConfigMaps and Lease carry it (label sideload.dev/run),
    /// and its staging images on the nodes are named after it.
    run: &'a str,
    #[serde(flatten)]
    loaded: Loaded<'a>,
    /// One entry per `--workload` (empty without).
    workloads: &'a [WorkloadResult],
}

/// One image and its node rows.
#[derive(Serialize)]
struct ImageNodes<'a> {
    image: ImageJson<'a>,
    nodes: &'a [NodeResult],
}

/// A run of one image keeps the document it always had; a run of several lists each.
#[derive(Serialize)]
#[serde(untagged)]
enum Loaded<'a> {
    One(ImageNodes<'a>),
    Several { images: Vec<ImageNodes<'a>> },
}

/// A run's images, each with its node rows, in the order they were loaded.
pub type Images<'a> = [(&'a Summary, &'a [NodeResult])];

/// `{"run":…,"image":{"refs":[…],"digest":…,"size":N},"nodes":[{"name":…,"status":…,…}],
/// "workloads":[{"kind":…,"name":…,"patched":…,"rolled_out":…,…}]}`; with several images
/// `"images":[{"image":{…},"nodes":[…]},…]` in place of `image` and `nodes`.
pub fn json(run: &str, images: &Images<'_>, workloads: &[WorkloadResult]) -> String {
    let mut each: Vec<ImageNodes<'_>> = images
        .iter()
        .map(|(summary, nodes)| ImageNodes {
            image: ImageJson {
                refs: &summary.refs,
                digest: &summary.digest,
                size: summary.size,
            },
            nodes,
        })
        .collect();
    let loaded = if each.len() == 1 {
        Loaded::One(each.remove(0))
    } else {
        Loaded::Several { images: each }
    };
    serde_json::to_string_pretty(&ReportJson {
        run,
        loaded,
        workloads,
    })
    .unwrap_or_default()
}

/// A fixed-width table per image, one row per node; then one row per workload, if any.
pub fn table(images: &Images<'_>, workloads: &[WorkloadResult]) -> String {
    let mut out = images
        .iter()
        .map(|(summary, results)| nodes_table(summary, results))
        .collect::<Vec<_>>()
        .join("\n");
    if workloads.is_empty() {
        return out;
    }
    let mut rows = vec![[
        "WORKLOAD".to_string(),
        "NAMESPACE".into(),
        "CONTAINERS".into(),
        "IMAGE".into(),
        "PULL POLICY".into(),
        "PATCHED".into(),
        "ROLLED OUT".into(),
        "DETAIL".into(),
    ]];
    for w in workloads {
        rows.push([
            format!("{}/{}", w.kind.to_lowercase(), w.name),
            w.namespace.clone(),
            w.containers.join(","),
            w.image.clone(),
            w.pull_policy.to_string(),
            if w.patched { "yes" } else { "no" }.into(),
            match w.rolled_out {
                Some(true) => "yes",
                Some(false) => "no",
                None => "-",
            }
            .into(),
            w.error
                .clone()
                .or_else(|| w.detail.clone())
                .or_else(|| w.constrained.then(|| "pods kept on loaded nodes".into()))
                .unwrap_or_default(),
        ]);
    }
    out.push('\n');
    out.push_str(&columns(&rows));
    out
}

fn nodes_table(summary: &Summary, results: &[NodeResult]) -> String {
    let mut rows = vec![[
        "NODE".to_string(),
        "STATUS".into(),
        "SENT".into(),
        "TIME".into(),
        "DETAIL".into(),
    ]];
    for r in results {
        rows.push([
            r.name.clone(),
            match r.status {
                Status::Loaded => "loaded",
                Status::Skipped => "skipped",
                Status::Failed => "failed",
            }
            .into(),
            human_bytes(r.bytes_sent),
            format!("{:.1}s", r.seconds),
            with_pin(
                r,
                match (&r.error, r.layers_reused) {
                    (Some(error), _) if r.attempts > 1 => {
                        format!("{error} (after {} attempts)", r.attempts)
                    }
                    (Some(error), _) => error.clone(),
                    (None, n) => {
                        let mut parts = Vec::new();
                        if let Some(last) = r.earlier_failures.last() {
                            parts.push(format!("attempt {} after: {last}", r.attempts));
                        }
                        if let Some(via) = r.via.as_deref().filter(|v| *v != "direct") {
                            parts.push(via.to_string());
                        }
                        if n > 0 {
                            parts.push(format!("{n} layer(s) already on the node, not sent"));
                        }
                        parts.join("; ")
                    }
                },
            ),
        ]);
    }
    format!(
        "image {} ({})\n{}",
        summary.refs.join(", "),
        summary.digest,
        columns(&rows)
    )
}

/// A node's detail with what `--pin` did there, if it was asked.
fn with_pin(r: &NodeResult, detail: String) -> String {
    let pin = match (r.pinned, &r.pin_note) {
        (Some(true), _) => "pinned".to_string(),
        (Some(false), Some(why)) => format!("NOT pinned: {why}"),
        (Some(false), None) => "NOT pinned".to_string(),
        (None, _) => return detail,
    };
    if detail.is_empty() {
        pin
    } else {
        format!("{detail}; {pin}")
    }
}

/// The plan as a table, for `--dry-run`.
pub fn plan_table(summary: &Summary, plan: &Plan) -> String {
    let mut rows = vec![[
        "NODE".to_string(),
        "PLATFORM".into(),
        "RUNTIME".into(),
        "ACTION".into(),
        "DETAIL".into(),
    ]];
    for n in &plan.nodes {
        let (action, detail) = match &n.decision {
            Decision::Load {
                bytes,
                helper,
                method,
                ..
            } => (
                "load".to_string(),
                format!(
                    "send up to {}, {method}{}; helper starts from {} ({})",
                    human_bytes(*bytes),
                    n.node
                        .runtime_endpoint
                        .as_deref()
                        .map(|e| format!(" at {e}"))
                        .unwrap_or_default(),
                    helper.image,
                    helper.source
                ),
            ),
            Decision::Skip { reason } => ("skip".into(), reason.clone()),
            Decision::Refuse { reason } => ("refuse".into(), reason.clone()),
        };
        rows.push([
            n.node.name.clone(),
            n.node.platform.to_string(),
            n.node.runtime.to_string(),
            action,
            detail,
        ]);
    }
    format!(
        "image {} ({})\nhelper pods in namespace {}; nothing was changed (dry run)\n{}",
        summary.refs.join(", "),
        summary.digest,
        plan.helper_namespace,
        columns(&rows)
    )
}

pub fn columns<const N: usize>(rows: &[[String; N]]) -> String {
    let mut widths = [0usize; N];
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(i, c)| {
                if i + 1 == N {
                    c.clone()
                } else {
                    format!("{c:<w$}", w = widths[i])
                }
            })
            .collect();
        out.push_str(line.join("   ").trim_end());
        out.push('\n');
    }
    out
}

pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_are_human() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(1 << 30), "1.0 GiB");
    }

    #[test]
    fn workloads_get_their_own_section() {
        let summary = Summary {
            format: crate::archive::Format::OciLayout,
            compressed: false,
            refs: vec!["docker.io/library/app:v2".into()],
            tags: vec![],
            digest: "sha256:abc".into(),
            images: vec![],
            size: 1,
        };
        let node = NodeResult {
            name: "node-a".into(),
            status: Status::Loaded,
            bytes_sent: 1,
            bytes_received: 1,
            layers_reused: 0,
            seconds: 1.0,
            error: None,
            helper: None,
            runtime: None,
            verified_by: None,
            via: None,
            import_parts: 1,
            attempts: 1,
            earlier_failures: vec![],
            pinned: None,
            pin_note: None,
            retryable: false,
        };
        let w = WorkloadResult {
            kind: "StatefulSet",
            name: "db".into(),
            namespace: "prod".into(),
            containers: vec!["db".into(), "migrate".into()],
            image: "docker.io/library/app:v2".into(),
            pull_policy: "IfNotPresent",
            constrained: true,
            patched: true,
            rolled_out: Some(true),
            error: None,
            detail: None,
        };
        let one = [(&summary, std::slice::from_ref(&node))];
        let text = table(&one, std::slice::from_ref(&w));
        assert!(text.contains("WORKLOAD"), "{text}");
        let row = text
            .lines()
            .find(|l| l.starts_with("statefulset/db"))
            .unwrap();
        assert!(row.contains("db,migrate"), "{row}");
        assert!(row.contains("pods kept on loaded nodes"), "{row}");
        assert!(!table(&one, &[]).contains("WORKLOAD"));
        // --pin: a node that could not pin says so in its row, never just "loaded".
        let crio = NodeResult {
            name: "node-d".into(),
            pinned: Some(false),
            pin_note: Some("CRI-O pins only …".into()),
            ..node.clone()
        };
        let text = table(&[(&summary, std::slice::from_ref(&crio))], &[]);
        let row = text.lines().find(|l| l.starts_with("node-d")).unwrap();
        assert!(row.contains("NOT pinned: CRI-O pins only"), "{row}");

        let value: serde_json::Value =
            serde_json::from_str(&json("abc123", &one, std::slice::from_ref(&w))).unwrap();
        let w0 = &value["workloads"][0];
        assert_eq!(w0["kind"], "StatefulSet");
        assert_eq!(w0["rolled_out"], true);
        assert!(w0["error"].is_null());
        assert!(w0.get("detail").is_none());
        // One image: the document scripts have always read.
        assert_eq!(value["image"]["refs"][0], "docker.io/library/app:v2");
        assert_eq!(value["nodes"][0]["name"], "node-a");
        assert!(value.get("images").is_none());

        // Several: a section per image in the table, an entry per image in the JSON.
        let other = Summary {
            format: crate::archive::Format::OciLayout,
            compressed: false,
            refs: vec!["docker.io/library/sidecar:1".into()],
            tags: vec![],
            digest: "sha256:def".into(),
            images: vec![],
            size: 1,
        };
        let two = [
            (&summary, std::slice::from_ref(&node)),
            (&other, std::slice::from_ref(&crio)),
        ];
        let text = table(&two, &[]);
        assert!(
            text.contains("image docker.io/library/app:v2 (sha256:abc)"),
            "{text}"
        );
        assert!(
            text.contains("image docker.io/library/sidecar:1 (sha256:def)"),
            "{text}"
        );
        let value: serde_json::Value = serde_json::from_str(&json("abc123", &two, &[])).unwrap();
        assert!(
            value.get("image").is_none() && value.get("nodes").is_none(),
            "{value}"
        );
        assert_eq!(
            value["images"][1]["image"]["refs"][0],
            "docker.io/library/sidecar:1"
        );
        assert_eq!(value["images"][1]["nodes"][0]["name"], "node-d");
        assert_eq!(value["run"], "abc123");
    }

    #[test]
    fn columns_align() {
        let t = columns(&[["a".to_string(), "b".into()], ["long".into(), "x".into()]]);
        assert_eq!(t, "a      b\nlong   x\n");
    }
}
