//! The change to a workload's pod template, as one typed value: rendered as a strategic
//! merge patch (what `kubectl set image` sends; containers merge by name, so fields the
//! user's GitOps tooling owns stay theirs, unlike server-side apply) and as a diff for
//! `--dry-run` and the confirmation prompt.

use std::time::{SystemTime, UNIX_EPOCH};

use k8s_openapi::api::core::v1::NodeSelectorTerm;
use serde_json::{Map, Value, json};

use super::target::{Chosen, Kind};
use crate::model::PullPolicy;

/// The annotation `kubectl rollout restart` sets; a changed value rolls the pods.
pub const RESTARTED_AT: &str = "kubectl.kubernetes.io/restartedAt";

/// The change to one pod template.
#[derive(Debug, Clone, PartialEq)]
pub struct TemplatePatch {
    /// Where the template lives (a CronJob nests it in its job template).
    pub kind: Kind,
    /// Containers that get a new image and pull policy.
    pub containers: Vec<Chosen>,
    /// The pull policy every chosen container gets.
    pub pull_policy: PullPolicy,
    /// Set when some container keeps its ref (a re-sideloaded `:v1`): without a template
    /// change no pod would restart onto the new bytes. RFC 3339, UTC.
    pub restarted_at: Option<String>,
    /// The required node affinity terms before and after `--constrain`.
    pub affinity: Option<AffinityChange>,
}

/// `requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms`, before and after.
#[derive(Debug, Clone, PartialEq)]
pub struct AffinityChange {
    pub before: Vec<NodeSelectorTerm>,
    pub after: Vec<NodeSelectorTerm>,
}

impl TemplatePatch {
    /// The patch for `containers`; a restart stamp only if one keeps its ref (and never for
    /// a CronJob, whose next Job makes new pods anyway).
    pub fn new(kind: Kind, containers: Vec<Chosen>, pull_policy: PullPolicy) -> TemplatePatch {
        let restart = kind != Kind::CronJob && containers.iter().any(|c| c.same_ref);
        TemplatePatch {
            kind,
            containers,
            pull_policy,
            restarted_at: restart.then(|| rfc3339(SystemTime::now())),
            affinity: None,
        }
    }

    /// Refreshes the restart stamp to now, just before patching (loading may take minutes).
    pub fn stamp_now(&mut self) {
        if self.restarted_at.is_some() {
            self.restarted_at = Some(rfc3339(SystemTime::now()));
        }
    }

    /// The strategic merge patch body.
    ///
    /// Containers and init containers are lists merged by `name`, so only the named ones
    /// change, and only `image` and `imagePullPolicy`. `nodeSelectorTerms` has no merge key:
    /// the server replaces the whole list, which is why `after` carries every term.
    pub fn to_patch(&self) -> Value {
        let entry = |c: &Chosen| {
            json!({
                "name": c.name,
                "image": c.new_image,
                "imagePullPolicy": self.pull_policy.as_str(),
            })
        };
        let regular: Vec<Value> = self
            .containers
            .iter()
            .filter(|c| !c.init)
            .map(entry)
            .collect();
        let init: Vec<Value> = self
            .containers
            .iter()
            .filter(|c| c.init)
            .map(entry)
            .collect();
        let mut spec = Map::new();
        if !regular.is_empty() {
            spec.insert("containers".into(), Value::Array(regular));
        }
        if !init.is_empty() {
            spec.insert("initContainers".into(), Value::Array(init));
        }
        if let Some(affinity) = &self.affinity {
            spec.insert(
                "affinity".into(),
                json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": affinity.after,
                }}}),
            );
        }
        let mut template = Map::new();
        if let Some(stamp) = &self.restarted_at {
            template.insert(
                "metadata".into(),
                json!({"annotations": {RESTARTED_AT: stamp}}),
            );
        }
        template.insert("spec".into(), Value::Object(spec));
        let template = Value::Object(template);
        match self.kind {
            Kind::CronJob => json!({"spec": {"jobTemplate": {"spec": {"template": template}}}}),
            _ => json!({"spec": {"template": template}}),
        }
    }

    /// The changed pod template fields as a diff: `-` the value now, `+` after the patch.
    pub fn diff(&self, title: &str) -> String {
        let mut out = format!("--- {title} (current)\n+++ {title} (patched)\n");
        let prefix = match self.kind {
            Kind::CronJob => "spec.jobTemplate.spec.template",
            _ => "spec.template",
        };
        for c in &self.containers {
            let list = if c.init {
                "initContainers"
            } else {
                "containers"
            };
            out.push_str(&format!("@@ {prefix}.spec.{list}[name={}] @@\n", c.name));
            field(
                &mut out,
                "image",
                Some(&c.current_image),
                Some(&c.new_image),
            );
            field(
                &mut out,
                "imagePullPolicy",
                c.current_policy.as_deref(),
                Some(self.pull_policy.as_str()),
            );
        }
        if let Some(stamp) = &self.restarted_at {
            out.push_str(&format!("@@ {prefix}.metadata.annotations @@\n"));
            out.push_str(&format!(
                "+  {RESTARTED_AT}: {stamp}   (same ref: restart the pods onto the new bytes)\n"
            ));
        }
        if let Some(affinity) = &self.affinity {
            out.push_str(&format!(
                "@@ {prefix}.spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms @@\n"
            ));
            if affinity.before.is_empty() {
                out.push_str("-  (none)\n");
            }
            for term in &affinity.before {
                out.push_str(&format!("-  - {}\n", compact(term)));
            }
            for term in &affinity.after {
                out.push_str(&format!("+  - {}\n", compact(term)));
            }
        }
        out
    }
}

fn field(out: &mut String, name: &str, before: Option<&str>, after: Option<&str>) {
    if before == after {
        out.push_str(&format!("   {name}: {}\n", after.unwrap_or("(unset)")));
    } else {
        out.push_str(&format!("-  {name}: {}\n", before.unwrap_or("(unset)")));
        out.push_str(&format!("+  {name}: {}\n", after.unwrap_or("(unset)")));
    }
}

fn compact(term: &NodeSelectorTerm) -> String {
    serde_json::to_string(term).unwrap_or_default()
}

/// `2025-01-31T12:00:00Z`: RFC 3339 in UTC, computed from the Unix clock with the civil
/// calendar algorithm (Howard Hinnant's `civil_from_days`), so no date crate is needed for
/// one timestamp.
pub fn rfc3339(at: SystemTime) -> String {
    let secs = at
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn chosen(name: &str, init: bool, same_ref: bool) -> Chosen {
        Chosen {
            name: name.into(),
            init,
            current_image: if same_ref { "app:v2" } else { "app:v1" }.into(),
            current_policy: Some("Always".into()),
            new_image: "docker.io/library/app:v2".into(),
            same_ref,
        }
    }

    #[test]
    fn image_and_policy_by_container_name() {
        let patch = TemplatePatch::new(
            Kind::Deployment,
            vec![chosen("api", false, false), chosen("migrate", true, false)],
            PullPolicy::IfNotPresent,
        );
        assert_eq!(
            patch.to_patch(),
            json!({"spec": {"template": {"spec": {
                "containers": [{"name": "api", "image": "docker.io/library/app:v2", "imagePullPolicy": "IfNotPresent"}],
                "initContainers": [{"name": "migrate", "image": "docker.io/library/app:v2", "imagePullPolicy": "IfNotPresent"}],
            }}}})
        );
        let never = TemplatePatch::new(
            Kind::StatefulSet,
            vec![chosen("api", false, false)],
            PullPolicy::Never,
        );
        assert_eq!(
            never.to_patch()["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"],
            "Never"
        );
    }

    #[test]
    fn restarted_at_only_when_a_ref_stays_the_same() {
        let changed = TemplatePatch::new(
            Kind::Deployment,
            vec![chosen("api", false, false)],
            PullPolicy::IfNotPresent,
        );
        assert!(
            changed.to_patch()["spec"]["template"]
                .get("metadata")
                .is_none()
        );
        let same = TemplatePatch::new(
            Kind::DaemonSet,
            vec![chosen("api", false, true)],
            PullPolicy::IfNotPresent,
        );
        let stamp = &same.to_patch()["spec"]["template"]["metadata"]["annotations"][RESTARTED_AT];
        assert!(stamp.as_str().unwrap().ends_with('Z'), "{stamp}");
        let cron = TemplatePatch::new(
            Kind::CronJob,
            vec![chosen("api", false, true)],
            PullPolicy::IfNotPresent,
        );
        let body = cron.to_patch();
        assert!(body["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"].is_array());
        assert!(
            body["spec"]["jobTemplate"]["spec"]["template"]
                .get("metadata")
                .is_none()
        );
    }

    #[test]
    fn affinity_replaces_the_whole_term_list() {
        let mut patch = TemplatePatch::new(
            Kind::Deployment,
            vec![chosen("api", false, false)],
            PullPolicy::IfNotPresent,
        );
        let term: NodeSelectorTerm = serde_yaml::from_str(
            "matchExpressions: [{key: sideload.dev/img-abc, operator: Exists}]",
        )
        .unwrap();
        patch.affinity = Some(AffinityChange {
            before: vec![],
            after: vec![term],
        });
        assert_eq!(
            patch.to_patch()["spec"]["template"]["spec"]["affinity"],
            json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": [{"key": "sideload.dev/img-abc", "operator": "Exists"}]}]
            }}})
        );
        let diff = patch.diff("deployment/api");
        assert!(diff.contains("-  (none)"), "{diff}");
        assert!(diff.contains("+  - {\"matchExpressions\""), "{diff}");
    }

    #[test]
    fn diff_shows_old_and_new() {
        let patch = TemplatePatch::new(
            Kind::Deployment,
            vec![chosen("api", false, false)],
            PullPolicy::IfNotPresent,
        );
        let diff = patch.diff("deployment/api");
        assert!(diff.starts_with("--- deployment/api (current)\n+++ deployment/api (patched)\n"));
        assert!(
            diff.contains("@@ spec.template.spec.containers[name=api] @@"),
            "{diff}"
        );
        assert!(diff.contains("-  image: app:v1\n+  image: docker.io/library/app:v2\n"));
        assert!(diff.contains("-  imagePullPolicy: Always\n+  imagePullPolicy: IfNotPresent\n"));
    }

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00Z"
        );
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(1_735_689_599)),
            "2024-12-31T23:59:59Z"
        );
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(4_107_542_400)),
            "2100-03-01T00:00:00Z"
        );
    }
}
