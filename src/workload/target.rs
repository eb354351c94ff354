//! `--workload KIND/NAME`: the kinds we patch, parsed the way kubectl spells them, and the
//! choice of which containers of a pod template get the archive's image.

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::api::core::v1::{Container, PodSpec};

use crate::archive::reference::{Reference, normalize};

/// The workload kinds `--workload` accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Deployment,
    StatefulSet,
    DaemonSet,
    /// Only the job template changes; the next scheduled run uses it. Nothing rolls out.
    CronJob,
}

impl Kind {
    /// The resource name kubectl prints (`deployment/api`).
    pub fn resource(self) -> &'static str {
        match self {
            Kind::Deployment => "deployment",
            Kind::StatefulSet => "statefulset",
            Kind::DaemonSet => "daemonset",
            Kind::CronJob => "cronjob",
        }
    }

    /// The API kind (`Deployment`), as the JSON report names it.
    pub fn api_kind(self) -> &'static str {
        match self {
            Kind::Deployment => "Deployment",
            Kind::StatefulSet => "StatefulSet",
            Kind::DaemonSet => "DaemonSet",
            Kind::CronJob => "CronJob",
        }
    }

    /// Parses a kind as kubectl accepts it: singular, plural, short name, any case,
    /// optionally qualified with its group (`deployments.apps`, `deployments.v1.apps`).
    pub fn parse(text: &str) -> Result<Kind, String> {
        let lower = text.to_ascii_lowercase();
        let (base, group) = match lower.split_once('.') {
            Some((base, group)) => (base, Some(group)),
            None => (lower.as_str(), None),
        };
        let (kind, home) = match base {
            "deployment" | "deployments" | "deploy" => (Kind::Deployment, "apps"),
            "statefulset" | "statefulsets" | "sts" => (Kind::StatefulSet, "apps"),
            "daemonset" | "daemonsets" | "ds" => (Kind::DaemonSet, "apps"),
            "cronjob" | "cronjobs" | "cj" => (Kind::CronJob, "batch"),
            "replicaset" | "replicasets" | "rs" => {
                return Err(
                    "a ReplicaSet does not replace its pods when its template changes; \
                     pass the Deployment that owns it (deploy/NAME)"
                        .into(),
                );
            }
            "job" | "jobs" => {
                return Err(
                    "a Job's pod template cannot be changed once it exists; sideload \
                     the image, then create the Job again with the new image"
                        .into(),
                );
            }
            "pod" | "pods" | "po" => {
                return Err("a pod's image is changed through its controller; pass the \
                     Deployment, StatefulSet or DaemonSet that owns it"
                    .into());
            }
            _ => {
                return Err(format!(
                    "unknown workload kind {text:?}; use deployment (deploy), statefulset \
                     (sts), daemonset (ds) or cronjob (cj)"
                ));
            }
        };
        match group {
            None => Ok(kind),
            Some(g) if g == home || g == format!("v1.{home}") => Ok(kind),
            Some(g) => Err(format!(
                "{base} belongs to API group {home}, not {g:?}; write {base} or {base}.{home}"
            )),
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.resource())
    }
}

/// One `--workload KIND/NAME`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Target {
    pub kind: Kind,
    pub name: String,
}

impl Target {
    /// `KIND/NAME`, the clap value parser of `--workload`.
    pub fn parse(text: &str) -> Result<Target, String> {
        let Some((kind, name)) = text.split_once('/') else {
            return Err(format!(
                "{text:?} is not KIND/NAME; write it as kubectl does, e.g. deploy/api or \
                 statefulset/airflow-worker"
            ));
        };
        let kind = Kind::parse(kind)?;
        if !is_object_name(name) {
            return Err(format!(
                "{name:?} is not a valid {kind} name (lowercase letters, digits, '-' and '.', \
                 at most 253 characters)"
            ));
        }
        Ok(Target {
            kind,
            name: name.to_string(),
        })
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.kind, self.name)
    }
}

/// A DNS-1123 subdomain, what Kubernetes requires of these objects' names.
fn is_object_name(name: &str) -> bool {
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            let b = label.as_bytes();
            !b.is_empty()
                && alnum(b[0])
                && alnum(b[b.len() - 1])
                && b.iter().all(|&c| alnum(c) || c == b'-')
        })
}

/// A container that will get the archive's image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chosen {
    pub name: String,
    /// Listed under `initContainers`.
    pub init: bool,
    /// The image as the template has it now (may be short, e.g. `app:v1`).
    pub current_image: String,
    /// `imagePullPolicy` as the template has it now (the API server defaults it).
    pub current_policy: Option<String>,
    /// The archive ref it will run.
    pub new_image: String,
    /// The normalised current image equals `new_image`: only a restart brings new bytes.
    pub same_ref: bool,
}

/// Why no container could be chosen. Each message lists the template's containers, so the
/// user can pick with `--container`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChoiceError {
    /// `--container NAME` names no container of the template.
    #[error("has no container {name:?}; its containers: {listing}")]
    Unknown { name: String, listing: String },
    /// No container runs an image of a repository the archive holds.
    #[error(
        "has no container running {repos}; its containers: {listing}; name the one to change \
         with --container"
    )]
    NoMatch { repos: String, listing: String },
    /// Containers of one repository run different images: which should move is unclear.
    #[error(
        "has several containers running {repo} with different images; its containers: \
         {listing}; name the ones to change with --container"
    )]
    Ambiguous { repo: String, listing: String },
}

/// Picks the containers to change and the archive ref each gets.
///
/// With `wanted` names (`--container`), exactly those (regular or init). Without, every
/// container whose image has the repository of a ref in the archive; containers of one
/// repository move together only if they run the same image now (else it is ambiguous).
/// The ref: the archive ref equal to the current image (a re-sideload of the same tag),
/// else the first of the container's repository that is not `:latest`, else the first of its
/// repository, else the archive's first ref.
pub fn choose(
    spec: &PodSpec,
    refs: &[String],
    wanted: &[String],
) -> Result<Vec<Chosen>, ChoiceError> {
    let all: Vec<(&Container, bool)> = spec
        .init_containers
        .iter()
        .flatten()
        .map(|c| (c, true))
        .chain(spec.containers.iter().map(|c| (c, false)))
        .collect();
    let listing = listing(&all);
    let archive: Vec<Reference> = refs
        .iter()
        .filter_map(|r| Reference::parse_docker(r).ok())
        .collect();

    let picked: Vec<(&Container, bool)> = if wanted.is_empty() {
        let repos: Vec<String> = archive.iter().map(Reference::name).collect();
        let matching: Vec<(&Container, bool)> = all
            .iter()
            .copied()
            .filter(|(c, _)| repository(c).is_some_and(|r| repos.contains(&r)))
            .collect();
        if matching.is_empty() {
            let mut repos = repos;
            repos.dedup();
            return Err(ChoiceError::NoMatch {
                repos: if repos.is_empty() {
                    "an image of the archive".into()
                } else {
                    repos.join(" or ")
                },
                listing,
            });
        }
        let mut images_by_repo: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (c, _) in &matching {
            let images = images_by_repo
                .entry(repository(c).unwrap_or_default())
                .or_default();
            let image = normalised_image(c);
            if !images.contains(&image) {
                images.push(image);
            }
        }
        if let Some((repo, _)) = images_by_repo.iter().find(|(_, images)| images.len() > 1) {
            return Err(ChoiceError::Ambiguous {
                repo: repo.clone(),
                listing,
            });
        }
        matching
    } else {
        let mut picked = Vec::new();
        for name in wanted {
            match all.iter().find(|(c, _)| &c.name == name) {
                Some(found) => picked.push(*found),
                None => {
                    return Err(ChoiceError::Unknown {
                        name: name.clone(),
                        listing,
                    });
                }
            }
        }
        picked
    };

    Ok(picked
        .into_iter()
        .map(|(c, init)| {
            let current = c.image.clone().unwrap_or_default();
            let new_image = ref_for(&current, &archive, refs);
            Chosen {
                name: c.name.clone(),
                init,
                same_ref: normalize(&current).is_ok_and(|n| n == new_image),
                current_image: current,
                current_policy: c.image_pull_policy.clone(),
                new_image,
            }
        })
        .collect())
}

fn ref_for(current: &str, archive: &[Reference], refs: &[String]) -> String {
    let current_ref = Reference::parse_docker(current).ok();
    let current_norm = current_ref.as_ref().map(Reference::to_string);
    let same_repo: Vec<&Reference> = archive
        .iter()
        .filter(|r| current_ref.as_ref().is_some_and(|c| c.name() == r.name()))
        .collect();
    if let Some(exact) = same_repo
        .iter()
        .find(|r| Some(r.to_string()) == current_norm)
    {
        return exact.to_string();
    }
    if let Some(tagged) = same_repo
        .iter()
        .find(|r| !r.to_string().ends_with(":latest"))
    {
        return tagged.to_string();
    }
    if let Some(first) = same_repo.first() {
        return first.to_string();
    }
    refs.first().cloned().unwrap_or_default()
}

/// `docker.io/library/app` for a container running `app:v1`.
fn repository(c: &Container) -> Option<String> {
    Reference::parse_docker(c.image.as_deref()?)
        .ok()
        .map(|r| r.name())
}

fn normalised_image(c: &Container) -> String {
    let image = c.image.clone().unwrap_or_default();
    normalize(&image).unwrap_or(image)
}

/// `api (app:v1), init migrate (app:v1)`.
fn listing(all: &[(&Container, bool)]) -> String {
    if all.is_empty() {
        return "(none)".into();
    }
    all.iter()
        .map(|(c, init)| {
            format!(
                "{}{} ({})",
                if *init { "init " } else { "" },
                c.name,
                c.image.as_deref().unwrap_or("no image")
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_parse_as_kubectl_spells_them() {
        let table = [
            ("deploy", Kind::Deployment),
            ("deployment", Kind::Deployment),
            ("deployments", Kind::Deployment),
            ("Deployment", Kind::Deployment),
            ("deployments.apps", Kind::Deployment),
            ("deployment.v1.apps", Kind::Deployment),
            ("sts", Kind::StatefulSet),
            ("statefulset", Kind::StatefulSet),
            ("StatefulSets", Kind::StatefulSet),
            ("ds", Kind::DaemonSet),
            ("daemonsets.apps", Kind::DaemonSet),
            ("cj", Kind::CronJob),
            ("cronjobs.batch", Kind::CronJob),
        ];
        for (text, kind) in table {
            assert_eq!(Kind::parse(text), Ok(kind), "{text}");
        }
    }

    #[test]
    fn unsupported_kinds_say_what_to_do() {
        for (text, hint) in [
            ("rs", "Deployment that owns it"),
            ("job", "create the Job again"),
            ("pod", "through its controller"),
            ("svc", "unknown workload kind"),
            ("deployments.batch", "API group apps"),
        ] {
            let err = Kind::parse(text).unwrap_err();
            assert!(err.contains(hint), "{text}: {err}");
        }
    }

    #[test]
    fn targets_are_kind_slash_name() {
        assert_eq!(
            Target::parse("deploy/api").unwrap(),
            Target {
                kind: Kind::Deployment,
                name: "api".into()
            }
        );
        assert_eq!(
            Target::parse("sts/airflow-worker").unwrap().to_string(),
            "statefulset/airflow-worker"
        );
        for bad in [
            "api",
            "deploy/",
            "deploy/Api",
            "deploy/a/b",
            "/api",
            "deploy/-x",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad} accepted");
        }
    }

    fn spec(yaml: &str) -> PodSpec {
        serde_yaml::from_str(yaml).unwrap()
    }

    const POD: &str = r#"
initContainers:
- name: migrate
  image: app:v1
containers:
- name: api
  image: app:v1
  imagePullPolicy: Always
- name: proxy
  image: envoyproxy/envoy:v1.30
"#;

    fn refs(list: &[&str]) -> Vec<String> {
        list.iter().map(|r| normalize(r).unwrap()).collect()
    }

    #[test]
    fn containers_of_the_archives_repository_are_chosen_init_ones_too() {
        let chosen = choose(&spec(POD), &refs(&["app:v2"]), &[]).unwrap();
        let names: Vec<(&str, bool)> = chosen.iter().map(|c| (c.name.as_str(), c.init)).collect();
        assert_eq!(names, [("migrate", true), ("api", false)]);
        assert!(
            chosen
                .iter()
                .all(|c| c.new_image == "docker.io/library/app:v2")
        );
        assert!(chosen.iter().all(|c| !c.same_ref));
        assert_eq!(chosen[1].current_policy.as_deref(), Some("Always"));
    }

    #[test]
    fn container_flag_picks_exactly_those_and_unknown_names_list_the_containers() {
        let chosen = choose(&spec(POD), &refs(&["app:v2"]), &["api".into()]).unwrap();
        assert_eq!(chosen.len(), 1);
        assert_eq!(chosen[0].name, "api");
        // --container wins over the repository: the archive's first ref is used.
        let chosen = choose(&spec(POD), &refs(&["other:v9"]), &["proxy".into()]).unwrap();
        assert_eq!(chosen[0].new_image, "docker.io/library/other:v9");
        let err = choose(&spec(POD), &refs(&["app:v2"]), &["nope".into()]).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("no container \"nope\""), "{msg}");
        assert!(
            msg.contains("init migrate (app:v1), api (app:v1), proxy (envoyproxy/envoy:v1.30)"),
            "{msg}"
        );
    }

    #[test]
    fn no_matching_repository_lists_the_containers() {
        let err = choose(&spec(POD), &refs(&["other:v2"]), &[]).unwrap_err();
        assert!(matches!(err, ChoiceError::NoMatch { .. }));
        let msg = err.to_string();
        assert!(msg.contains("docker.io/library/other"), "{msg}");
        assert!(msg.contains("api (app:v1)"), "{msg}");
        assert!(msg.contains("--container"), "{msg}");
    }

    #[test]
    fn one_repository_with_different_images_is_ambiguous() {
        let pod = spec(
            r#"
containers:
- name: api
  image: app:v1
- name: canary
  image: docker.io/library/app:v0-debug
"#,
        );
        let err = choose(&pod, &refs(&["app:v2"]), &[]).unwrap_err();
        assert!(matches!(err, ChoiceError::Ambiguous { .. }), "{err}");
        assert!(
            err.to_string()
                .contains("canary (docker.io/library/app:v0-debug)")
        );
        // Naming one resolves it.
        assert_eq!(
            choose(&pod, &refs(&["app:v2"]), &["canary".into()])
                .unwrap()
                .len(),
            1
        );
    }

    #[test]
    fn the_ref_follows_the_containers_repository_and_same_tag_is_noticed() {
        let pod = spec(
            r#"
containers:
- name: web
  image: registry.example/web:1
- name: worker
  image: registry.example/worker:1
"#,
        );
        let archive = refs(&["registry.example/worker:2", "registry.example/web:1"]);
        let chosen = choose(&pod, &archive, &[]).unwrap();
        assert_eq!(chosen[0].new_image, "registry.example/web:1");
        assert!(chosen[0].same_ref);
        assert_eq!(chosen[1].new_image, "registry.example/worker:2");
        assert!(!chosen[1].same_ref);
    }

    #[test]
    fn latest_is_not_preferred_over_a_real_tag() {
        let pod = spec("containers:\n- name: a\n  image: app:v1\n");
        let chosen = choose(&pod, &refs(&["app:latest", "app:v2"]), &[]).unwrap();
        assert_eq!(chosen[0].new_image, "docker.io/library/app:v2");
        let pod = spec("containers:\n- name: a\n  image: app\n");
        let chosen = choose(&pod, &refs(&["app:latest", "app:v2"]), &[]).unwrap();
        assert_eq!(chosen[0].new_image, "docker.io/library/app:latest");
        assert!(chosen[0].same_ref, "untagged app is app:latest");
    }
}
