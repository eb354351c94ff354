//! Docker Engine nodes (the kubelet on cri-dockerd, `docker://` in node status): the
//! node's own `docker` CLI loads the stream into the engine over its socket. `docker load`
//! reads a docker-archive `manifest.json`, not an OCI `index.json` (before Docker 25 it
//! knows none), so the stream to these nodes carries one beside its index
//! (`StreamPlan::with_docker_manifest`), naming the config and every layer at their OCI
//! paths; the agent checks it against its announced digest like the index.
//!
//! The engine is the one the kubelet's cri-dockerd serves images from, so the image is
//! named with `docker tag` once the load succeeded (the stream names it only by the run's
//! staging name) and checked with `docker image inspect`: each ref must be the archive's
//! config digest, Docker's image ID. The kubelet's endpoint is cri-dockerd's socket, not
//! Docker's: it is never taken for the engine's.
//!
//! Proven against a real dockerd (Debian's docker.io 20.10) run in a test node's
//! namespaces, selected with `--runtime docker`; not through cri-dockerd, whose Go module
//! this machine cannot fetch.

use anyhow::{Result, anyhow, bail};
use sideload_agent::protocol::{Answer, Command, CommandResult, Query, Run};

use super::cri::CriImage;
use super::{Inventory, Version, Wanted, candidate_sockets, first_executable, first_socket};
use crate::cluster::helper::Needs;

/// Where Docker Engine's socket is by default (`--runtime-endpoint` goes first).
const SOCKETS: &[&str] = &["/var/run/docker.sock", "/run/docker.sock"];
const DOCKER: &[&str] = &["/usr/bin/docker", "/usr/local/bin/docker"];
/// How long a quick call (inspect, tag, rmi, version) may take before the agent kills it.
const CALL_TIMEOUT_SECS: u64 = 60;
const IMPORT_TIMEOUT_SECS: u64 = 3600;

/// Docker Engine, before the node was looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Adapter {
    pub version: Version,
}

impl super::Adapter for Adapter {
    fn needs(&self) -> Needs {
        // The CLI only talks to the engine's socket (root's): no capability, no scratch.
        Needs {
            privileged: false,
            scratch: false,
        }
    }

    fn method(&self) -> &'static str {
        "docker load into Docker Engine"
    }

    fn locate_query(&self, endpoint: Option<&str>) -> Query {
        let mut paths = sockets(endpoint);
        paths.extend(DOCKER.iter().map(|s| s.to_string()));
        Query {
            paths,
            ..Default::default()
        }
    }

    fn locate(&self, endpoint: Option<&str>, answer: &Answer) -> Result<Box<dyn super::Located>> {
        let candidates = sockets(endpoint);
        let socket =
            first_socket(answer, candidates.iter().map(String::as_str)).ok_or_else(|| {
                anyhow!(
                    "no Docker Engine socket found on the node (looked for: {}); pass \
                     --runtime-endpoint with the socket dockerd listens on (`dockerd -H`)",
                    candidates.join(", ")
                )
            })?;
        let docker = first_executable(answer, DOCKER.iter().copied()).ok_or_else(|| {
            anyhow!(
                "no docker CLI on the node (looked for: {}); Docker Engine nodes need it to \
                 load images (the docker-ce-cli or docker.io package)",
                DOCKER.join(", ")
            )
        })?;
        Ok(Box::new(Located {
            version: self.version,
            socket: socket.to_string(),
            docker: docker.to_string(),
            server: None,
        }))
    }
}

/// `--runtime-endpoint` (or the kubelet's endpoint) first, then the defaults; an endpoint
/// that is cri-dockerd's own socket is not Docker's and is left out.
fn sockets(endpoint: Option<&str>) -> Vec<String> {
    candidate_sockets(endpoint, SOCKETS, |p| !p.ends_with("/cri-dockerd.sock"))
}

/// Docker Engine found on a node.
#[derive(Debug, Clone)]
pub struct Located {
    version: Version,
    socket: String,
    docker: String,
    /// The engine's own version, once it answered.
    server: Option<String>,
}

impl Located {
    /// `docker -H unix://SOCKET ARGS…`: always this engine, never one from DOCKER_HOST or a
    /// context in root's configuration.
    fn docker(&self, args: &[&str], timeout: u64) -> Command {
        let mut argv = vec![
            self.docker.clone(),
            "-H".into(),
            format!("unix://{}", self.socket),
        ];
        argv.extend(args.iter().map(|a| a.to_string()));
        Command::new(argv).timeout(timeout)
    }
}

impl super::Located for Located {
    fn describe(&self) -> String {
        format!(
            "docker {} at {} ({})",
            self.server
                .clone()
                .unwrap_or_else(|| self.version.to_string()),
            self.socket,
            self.docker
        )
    }

    /// Whether the engine answers, and its version: a stopped dockerd is named here,
    /// before any byte is sent.
    fn probe_query(&self) -> Option<Query> {
        Some(Query {
            commands: vec![self.docker(
                &["version", "--format", "{{.Server.Version}}"],
                CALL_TIMEOUT_SECS,
            )],
            ..Default::default()
        })
    }

    fn configure(&mut self, answer: &Answer) -> Result<()> {
        match answer.results.first() {
            Some(r) if r.exit_code == 0 => {
                self.server = Some(r.stdout.trim().to_string());
                Ok(())
            }
            Some(r) => bail!(
                "Docker Engine at {} did not answer `docker version`: {}",
                self.socket,
                first_line(r)
            ),
            None => bail!("the node agent did not run `docker version`"),
        }
    }

    fn inventory_query(&self, wanted: &Wanted) -> Query {
        Query {
            commands: inspect(self, &wanted.refs),
            ..Default::default()
        }
    }

    fn inventory(&self, wanted: &Wanted, answer: &Answer) -> Result<Inventory> {
        let mut missing = Vec::new();
        for (i, r) in wanted.refs.iter().enumerate() {
            match inspected(answer.results.get(i))?.map(|i| i.id) {
                None => missing.push(format!("{r} is not in Docker Engine")),
                Some(id) if id != wanted.config => missing.push(format!(
                    "{r} is image {id} in Docker Engine, expected {}",
                    wanted.config
                )),
                Some(_) => {}
            }
        }
        Ok(Inventory {
            missing,
            // Every layer goes in the stream: `docker load` needs each one the manifest
            // names that it cannot find by chain id, and which those are is not asked.
            layers_present: Default::default(),
            checked_by: "Docker Engine (docker image inspect)".into(),
        })
    }

    fn import(&self, _wanted: &Wanted, bytes: u64) -> Run {
        Run::piped(
            self.docker(&["load", "--quiet"], IMPORT_TIMEOUT_SECS),
            bytes,
        )
    }

    fn reads_docker_manifest(&self) -> bool {
        true
    }

    /// `docker tag STAGED REF` per ref: the refs point at the image only once it is whole.
    fn name_images(&self, staged: &str, refs: &[String]) -> Vec<Command> {
        refs.iter()
            .map(|r| self.docker(&["tag", staged, r], CALL_TIMEOUT_SECS))
            .collect()
    }

    /// `docker rmi NAME…`: a name of an image with other names only goes; an image goes
    /// with its last name (the staging name when the refs were never given).
    fn remove_images(&self, refs: &[String]) -> Option<Command> {
        let mut args = vec!["rmi"];
        args.extend(refs.iter().map(String::as_str));
        Some(self.docker(&args, CALL_TIMEOUT_SECS))
    }

    /// cri-dockerd reports no image pinned, and Docker has no label the kubelet reads.
    fn pin(&self, _refs: &[String], _pinned: bool) -> Result<Vec<Command>, String> {
        Err(
            "Docker Engine nodes cannot pin: cri-dockerd reports no image pinned to the \
             kubelet's image GC; keep a pod using the image, or raise the kubelet's \
             imageGCHighThresholdPercent"
                .into(),
        )
    }

    /// cri-dockerd answers CRI from the engine's own records, so the engine is asked
    /// directly (the kubelet's socket here is cri-dockerd's, which is not looked for).
    fn cri_inspect(&self, refs: &[String]) -> Option<Vec<Command>> {
        Some(inspect(self, refs))
    }

    /// Docker has no pin: every image reads unpinned. An answer that is not "no such
    /// image" nor an image reads as not listed.
    fn read_inspect(&self, refs: &[String], results: &[CommandResult]) -> Vec<Option<CriImage>> {
        (0..refs.len())
            .map(|i| inspected(results.get(i)).ok().flatten())
            .collect()
    }

    /// `docker rmi REF`: the name goes, the image with its last name.
    fn remove_ref(&self, reference: &str) -> Option<Command> {
        super::Located::remove_images(self, &[reference.to_string()])
    }
}

/// What [`inspect`] asks Docker per image: its ID, then its names as JSON.
const INSPECT_FORMAT: &str = "{{.Id}} {{json .RepoTags}}";

/// `docker image inspect --format … -- REF`, one per ref (a missing ref fails its own
/// command only).
fn inspect(located: &Located, refs: &[String]) -> Vec<Command> {
    refs.iter()
        .map(|r| {
            located.docker(
                &["image", "inspect", "--format", INSPECT_FORMAT, "--", r],
                CALL_TIMEOUT_SECS,
            )
        })
        .collect()
}

/// One answer of [`inspect`]: the image, `None` where Docker has no such image, an error
/// where the engine could not say.
fn inspected(result: Option<&CommandResult>) -> Result<Option<CriImage>> {
    let Some(r) = result else {
        bail!("the node agent did not run `docker image inspect`");
    };
    if r.exit_code == 0 {
        let line = r.stdout.trim();
        let (id, tags) = line.split_once(' ').unwrap_or((line, "[]"));
        return Ok(Some(CriImage {
            id: id.to_string(),
            repo_tags: serde_json::from_str(tags).unwrap_or_default(),
            pinned: false,
        }));
    }
    if r.stderr.to_ascii_lowercase().contains("no such image") {
        return Ok(None);
    }
    bail!(
        "`docker image inspect` failed on the node: {}",
        first_line(r)
    )
}

fn first_line(r: &CommandResult) -> String {
    let text = if r.stderr.trim().is_empty() {
        &r.stdout
    } else {
        &r.stderr
    };
    let line = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
    format!("{} (exit {})", line.trim(), r.exit_code)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::Adapter as _;
    use sideload_agent::protocol::{PathFact, PathKind, Stdin};

    fn answer(paths: &[(&str, PathKind, bool)]) -> Answer {
        Answer {
            paths: paths
                .iter()
                .map(|(p, kind, executable)| {
                    let (kind, executable) = (*kind, *executable);
                    (p.to_string(), PathFact { kind, executable })
                })
                .collect(),
            ..Default::default()
        }
    }

    fn result(code: i32, stdout: &str, stderr: &str) -> CommandResult {
        CommandResult {
            exit_code: code,
            stdout: stdout.into(),
            stderr: stderr.into(),
            truncated: false,
        }
    }

    fn located() -> Box<dyn crate::runtime::Located> {
        let a = answer(&[
            ("/run/docker.sock", PathKind::Socket, false),
            ("/usr/bin/docker", PathKind::File, true),
        ]);
        Adapter {
            version: Version::new(28, 2, 2),
        }
        .locate(None, &a)
        .unwrap()
    }

    #[test]
    fn the_engines_socket_never_cri_dockerds() {
        assert_eq!(
            sockets(Some("unix:///run/cri-dockerd.sock")),
            ["/var/run/docker.sock", "/run/docker.sock"]
        );
        assert_eq!(
            sockets(Some("unix:///srv/d/docker.sock"))[0],
            "/srv/d/docker.sock"
        );
        let adapter = Adapter {
            version: Version::default(),
        };
        let none = answer(&[("/usr/bin/docker", PathKind::File, true)]);
        let err = adapter.locate(None, &none).unwrap_err().to_string();
        assert!(err.contains("--runtime-endpoint"), "{err}");
        let no_cli = answer(&[("/var/run/docker.sock", PathKind::Socket, false)]);
        let err = adapter.locate(None, &no_cli).unwrap_err().to_string();
        assert!(err.contains("docker CLI"), "{err}");
    }

    #[test]
    fn every_command_names_the_engine_and_passes_refs_as_arguments() {
        let l = located();
        let wanted = Wanted {
            refs: vec!["docker.io/library/app:v1".into(), "-x;$(id)".into()],
            ..Wanted::sample()
        };
        let q = l.inventory_query(&wanted);
        assert_eq!(q.commands.len(), 2);
        for c in &q.commands {
            assert_eq!(
                &c.argv[..3],
                ["/usr/bin/docker", "-H", "unix:///run/docker.sock"]
            );
        }
        // A ref that looks like a flag stays an operand.
        assert_eq!(q.commands[1].argv[7..], ["--", "-x;$(id)"]);
        let run = l.import(&wanted, 42);
        assert_eq!(run.commands[0].argv[3..], ["load", "--quiet"]);
        assert!(matches!(run.stdin, Stdin::Pipe { bytes: 42 }));
        assert!(l.reads_docker_manifest());
        let tags = l.name_images("sideload.invalid/partial:r-image", &wanted.refs);
        assert_eq!(
            tags[0].argv[3..],
            [
                "tag",
                "sideload.invalid/partial:r-image",
                "docker.io/library/app:v1"
            ]
        );
        assert!(
            l.pin(&wanted.refs, true)
                .unwrap_err()
                .contains("cannot pin")
        );
    }

    #[test]
    fn inventory_reads_image_ids_and_names_what_is_wrong() {
        let l = located();
        let wanted = Wanted {
            refs: vec!["a:1".into(), "b:1".into(), "c:1".into()],
            ..Wanted::sample()
        };
        let answer = Answer {
            results: vec![
                result(0, &format!("{} [\"a:1\"]\n", wanted.config), ""),
                result(1, "", "Error: No such image: b:1"),
                result(0, "sha256:other [\"c:1\"]\n", ""),
            ],
            ..Default::default()
        };
        let inv = l.inventory(&wanted, &answer).unwrap();
        assert_eq!(inv.missing.len(), 2, "{:?}", inv.missing);
        assert!(inv.missing[0].contains("b:1 is not in Docker Engine"));
        assert!(inv.missing[1].contains("expected"));
        assert!(inv.layers_present.is_empty());
        // status and rm read the same answers.
        let seen = l.read_inspect(&wanted.refs, &answer.results);
        assert_eq!(seen[0].as_ref().unwrap().repo_tags, ["a:1"]);
        assert!(seen[1].is_none());
        assert_eq!(seen[2].as_ref().unwrap().id, "sha256:other");
        let down = Answer {
            results: vec![result(
                1,
                "",
                "Cannot connect to the Docker daemon at unix:///run/docker.sock. Is the docker daemon running?",
            )],
            ..Default::default()
        };
        let err = l.inventory(&wanted, &down).unwrap_err().to_string();
        assert!(err.contains("Cannot connect"), "{err}");
    }

    #[test]
    fn a_silent_engine_is_named_before_any_byte_goes() {
        let mut l = located();
        let q = l.probe_query().unwrap();
        assert_eq!(q.commands[0].argv[3], "version");
        let answer = Answer {
            results: vec![result(1, "", "Cannot connect to the Docker daemon\n")],
            ..Default::default()
        };
        let err = l.configure(&answer).unwrap_err().to_string();
        assert!(
            err.contains("did not answer") && err.contains("Cannot connect"),
            "{err}"
        );
        let ok = Answer {
            results: vec![result(0, "20.10.24\n", "")],
            ..Default::default()
        };
        l.configure(&ok).unwrap();
        assert!(
            l.describe()
                .starts_with("docker 20.10.24 at /run/docker.sock")
        );
    }
}
