//! Verification through CRI, i.e. what the kubelet will see, with the node's `crictl`
//! (kubeadm, k3s, RKE2 and OpenShift nodes carry it). Shared by every runtime: each ref
//! must resolve, through the runtime's CRI image service, to an image whose ID is the
//! archive's config digest.

use serde::Deserialize;
use sideload_agent::protocol::{Command, CommandResult};

use super::Wanted;

/// Where distributions keep crictl, in order of preference.
pub const CRICTL_PATHS: &[&str] = &[
    "/usr/bin/crictl",
    "/usr/local/bin/crictl",
    "/opt/bin/crictl",
    "/var/lib/rancher/k3s/data/current/bin/crictl",
    "/var/lib/rancher/rke2/bin/crictl",
];

/// How long crictl may take per call (its own flag) and before the agent kills it.
const TIMEOUT_SECS: u64 = 20;

/// crictl, pointed at one runtime socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Crictl {
    pub path: String,
    pub socket: String,
}

impl Crictl {
    fn command(&self, args: &[&str]) -> Command {
        let endpoint = format!("unix://{}", self.socket);
        let mut argv = vec![
            self.path.clone(),
            "--runtime-endpoint".into(),
            endpoint.clone(),
            "--image-endpoint".into(),
            endpoint,
            "--timeout".into(),
            format!("{TIMEOUT_SECS}s"),
        ];
        argv.extend(args.iter().map(|a| a.to_string()));
        Command::new(argv).timeout(TIMEOUT_SECS + 5)
    }

    /// `crictl info`: the runtime's CRI status and configuration (containerd's CRI config
    /// names its snapshotter there).
    pub fn info(&self) -> Command {
        self.command(&["info"])
    }

    /// `crictl rmi REF`.
    pub fn remove(&self, reference: &str) -> Command {
        self.command(&["rmi", reference])
    }

    /// `crictl inspecti -o json REF`, one per ref (a missing ref fails its own command only).
    pub fn inspect(&self, refs: &[String]) -> Vec<Command> {
        refs.iter()
            .map(|r| self.command(&["inspecti", "-o", "json", r]))
            .collect()
    }
}

#[derive(Deserialize)]
struct Inspect {
    status: Option<ImageStatus>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ImageStatus {
    #[serde(default)]
    id: String,
    #[serde(default)]
    repo_tags: Vec<String>,
    /// What the kubelet's image GC reads: a pinned image is never collected.
    #[serde(default)]
    pinned: bool,
}

/// An image as CRI reports it, i.e. as the kubelet sees it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CriImage {
    /// The image ID: the config digest.
    pub id: String,
    pub repo_tags: Vec<String>,
    /// Never garbage-collected by the kubelet.
    pub pinned: bool,
}

/// Reads the answers to [`Crictl::inspect`], one per ref: what CRI reports, or `None`
/// where it does not list the ref (or the answer is missing or unreadable).
pub fn inspected(refs: &[String], results: &[CommandResult]) -> Vec<Option<CriImage>> {
    (0..refs.len())
        .map(|i| {
            let r = results.get(i).filter(|r| r.exit_code == 0)?;
            let status = serde_json::from_str::<Inspect>(&r.stdout).ok()?.status?;
            Some(CriImage {
                id: status.id,
                repo_tags: status.repo_tags,
                pinned: status.pinned,
            })
        })
        .collect()
}

/// The refs CRI does not report pinned (missing ones included), in order; empty when
/// every one is.
pub fn unpinned(refs: &[String], results: &[CommandResult]) -> Vec<String> {
    refs.iter()
        .zip(inspected(refs, results))
        .filter(|(_, image)| !image.as_ref().is_some_and(|i| i.pinned))
        .map(|(r, _)| r.clone())
        .collect()
}

/// Reads the answers to [`Crictl::inspect`]: what is wrong with each ref, as CRI sees it.
pub fn check(wanted: &Wanted, results: &[CommandResult]) -> Vec<String> {
    let want_id = bare(&wanted.config);
    let mut problems = Vec::new();
    for (r, result) in wanted.refs.iter().zip(results) {
        if result.exit_code != 0 {
            problems.push(format!("CRI does not list {r}"));
            continue;
        }
        match serde_json::from_str::<Inspect>(&result.stdout)
            .ok()
            .and_then(|i| i.status)
        {
            Some(status) if bare(&status.id) == want_id && status.repo_tags.contains(r) => {}
            Some(status) if bare(&status.id) == want_id => problems.push(format!(
                "CRI resolves {r} to the right image but does not tag it so (tags: {})",
                status.repo_tags.join(", ")
            )),
            Some(status) => problems.push(format!(
                "CRI resolves {r} to image {}, expected {}",
                status.id, wanted.config
            )),
            None => problems.push(format!("unexpected `crictl inspecti` output for {r}")),
        }
    }
    if results.len() < wanted.refs.len() {
        problems.push("crictl gave fewer answers than refs asked".into());
    }
    problems
}

/// CRI-O reports image IDs without the `sha256:` prefix, containerd with it.
fn bare(id: &str) -> &str {
    id.strip_prefix("sha256:").unwrap_or(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wanted() -> Wanted {
        let mut w = Wanted::sample();
        w.refs.push("docker.io/library/app:v2".into());
        w.config = "sha256:c0ffee".into();
        w
    }

    fn ok(stdout: &str) -> CommandResult {
        CommandResult {
            exit_code: 0,
            stdout: stdout.into(),
            stderr: String::new(),
            truncated: false,
        }
    }

    #[test]
    fn cri_answers_are_checked_by_id_and_tag() {
        let good = ok(r#"{"status":{"id":"c0ffee","repoTags":["docker.io/library/app:v1"]}}"#);
        let other =
            ok(r#"{"status":{"id":"sha256:dead","repoTags":["docker.io/library/app:v2"]}}"#);
        let problems = check(&wanted(), &[good.clone(), other]);
        assert_eq!(problems.len(), 1);
        assert!(
            problems[0].contains("expected sha256:c0ffee"),
            "{problems:?}"
        );
        let missing = CommandResult {
            exit_code: 1,
            ..ok("")
        };
        let problems = check(&wanted(), &[good, missing]);
        assert_eq!(problems, ["CRI does not list docker.io/library/app:v2"]);
    }

    #[test]
    fn pinned_is_read_from_cri_and_a_missing_answer_is_not_pinned() {
        let refs: Vec<String> = vec!["a:1".into(), "b:1".into(), "c:1".into()];
        let pinned = ok(r#"{"status":{"id":"x","pinned":true}}"#);
        let not = ok(r#"{"status":{"id":"x"}}"#);
        assert_eq!(unpinned(&refs, &[pinned.clone(), not]), ["b:1", "c:1"]);
        let failed = CommandResult {
            exit_code: 1,
            ..pinned.clone()
        };
        assert_eq!(unpinned(&refs[..2], &[failed, pinned]), ["a:1"]);
    }

    #[test]
    fn crictl_gets_the_socket_for_both_services() {
        let c = Crictl {
            path: "/usr/bin/crictl".into(),
            socket: "/var/run/crio/crio.sock".into(),
        };
        let cmds = c.inspect(&["docker.io/library/$(x):1".into()]);
        assert_eq!(cmds.len(), 1);
        assert_eq!(cmds[0].argv[2], "unix:///var/run/crio/crio.sock");
        assert_eq!(cmds[0].argv.last().unwrap(), "docker.io/library/$(x):1");
        assert!(cmds[0].timeout_secs.is_some());
    }
}
