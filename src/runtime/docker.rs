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
//! Layer reuse: `docker load` skips reading a layer whose chain (the layers below it and
//! itself, by diff_id) the engine already holds. So the inventory asks for the layers
//! (`RootFS.Layers`) of every image the engine lists, and the longest bottom run of the
//! image's layers that one of them shares is left out of the stream. A chain exists only
//! for content the engine unpacked and hashed itself, so another image cannot fake one.
//! Engines on the containerd image store (`driver-type io.containerd.snapshotter.v1`)
//! load through containerd, which needs every blob: they get every layer.
//!
//! Import while streaming: the same rule lets a stream be cut into parts, one per layer
//! (archive/parts.rs), each a `docker load` of its own whose `manifest.json` names a prefix
//! image of the layers up to its own. The engine unpacks the layers of part k while part
//! k+1 arrives (the agent's pipeline); part k+1 names the layers below its own but does not
//! carry them, and `docker load` finds their chain held. The prefix images are removed
//! by name afterwards; their layers stay, held by the image. Only on engines that keep
//! their own layer store (the same condition as layer reuse).
//!
//! Proven against a real dockerd (Debian's docker.io 20.10) run in a test node's
//! namespaces, selected with `--runtime docker`; not through cri-dockerd, whose Go module
//! this machine cannot fetch.

use std::collections::HashSet;

use anyhow::{Result, anyhow, bail};
use sideload_agent::protocol::{Answer, Command, CommandResult, Query, Run};

use super::cri::CriImage;
use super::{Inventory, Version, Wanted, candidate_sockets, first_executable, first_socket};
use crate::archive::Prefix;
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
            reuse: false,
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
    /// Whether layers the engine holds by chain may be left out of a stream: its own
    /// layer store (not the containerd image store), as `docker info` said.
    reuse: bool,
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
    /// before any byte is sent. And which image store it keeps (layer reuse).
    fn probe_query(&self) -> Option<Query> {
        Some(Query {
            commands: vec![
                self.docker(
                    &["version", "--format", "{{.Server.Version}}"],
                    CALL_TIMEOUT_SECS,
                ),
                self.docker(
                    &["info", "--format", "{{json .DriverStatus}}"],
                    CALL_TIMEOUT_SECS,
                ),
            ],
            ..Default::default()
        })
    }

    fn configure(&mut self, answer: &Answer) -> Result<()> {
        // The storage driver's status: pairs such as ["Backing Filesystem","extfs"], or null
        // (vfs). An engine that does not say which store it keeps gets every layer.
        self.reuse = answer.results.get(1).is_some_and(|info| {
            info.exit_code == 0
                && !info.truncated
                && serde_json::from_str::<Option<Vec<Vec<String>>>>(info.stdout.trim()).is_ok()
                && !info.stdout.contains(CONTAINERD_STORE)
        });
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

    /// Each ref, and (where layers may be reused) the IDs of every image the engine holds.
    fn inventory_query(&self, wanted: &Wanted) -> Query {
        let mut commands = inspect(self, &wanted.refs);
        if self.reuse {
            commands.push(self.docker(
                &["image", "ls", "--all", "--quiet", "--no-trunc"],
                CALL_TIMEOUT_SECS,
            ));
        }
        Query {
            commands,
            ..Default::default()
        }
    }

    /// The layers of the images listed: one `docker image inspect` of them all.
    fn inventory_followup(&self, wanted: &Wanted, answer: &Answer) -> Option<Query> {
        let listed = answer
            .results
            .get(wanted.refs.len())
            .filter(|_| self.reuse)?;
        if listed.exit_code != 0 {
            return None;
        }
        // Image IDs only (`sha256:` and hex), as an engine lists them: nothing else of its
        // answer becomes an argument.
        let mut ids: Vec<&str> = listed
            .stdout
            .lines()
            .map(str::trim)
            .filter(|id| is_image_id(id))
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids.truncate(MAX_IMAGES_ASKED);
        if ids.is_empty() {
            return None;
        }
        let mut args = vec!["image", "inspect", "--format", LAYERS_FORMAT, "--"];
        args.extend(ids);
        Some(Query {
            commands: vec![self.docker(&args, CALL_TIMEOUT_SECS)],
            ..Default::default()
        })
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
        // The layers of the images listed (the follow-up's answer): each line one image's
        // diff_ids. An image removed meanwhile fails its part only; lines that are not
        // such a list are ignored, which can only send more.
        let chains: Vec<Vec<String>> = answer
            .results
            .get(wanted.refs.len() + 1)
            .filter(|_| self.reuse)
            .map(|r| {
                r.stdout
                    .lines()
                    .filter_map(|l| serde_json::from_str(l.trim()).ok())
                    .collect()
            })
            .unwrap_or_default();
        Ok(Inventory {
            missing,
            layers_present: held_by_chain(wanted, &chains),
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

    /// One `docker load` per part, where the engine holds layers by chain (see above).
    fn imports_in_parts(&self) -> bool {
        self.reuse
    }

    /// `docker rmi STAGED PREFIX…`: each prefix image has only its own name (its config
    /// carries that name as a label, so its ID is this run's alone) and goes with it;
    /// the staged name of the image only loses that name. `--force`: after a failed run
    /// some names were never made (the staged name comes with the last part), and `docker
    /// rmi` then exits 1 for them after removing the rest, which would read as a cleanup
    /// that failed ahead of the real error; forced, a missing name is only a note on stderr.
    /// It still removes by name, never by an ID.
    fn remove_partial(&self, staged: &str, prefixes: &[Prefix]) -> Vec<Command> {
        let mut args = vec!["rmi", "--force", staged];
        args.extend(prefixes.iter().map(|p| p.name.as_str()));
        vec![self.docker(&args, CALL_TIMEOUT_SECS)]
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
/// What the inventory's follow-up asks per image: its layers' diff_ids, bottom first.
const LAYERS_FORMAT: &str = "{{json .RootFS.Layers}}";
/// What `docker info` says of an engine on the containerd image store.
const CONTAINERD_STORE: &str = "io.containerd.snapshotter";
/// Images whose layers are asked for at most (an argv of about 70 bytes each); an engine
/// with more gets some layers sent that it holds, never fewer.
const MAX_IMAGES_ASKED: usize = 4096;

/// `sha256:` and 64 lowercase hex digits.
fn is_image_id(id: &str) -> bool {
    id.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    })
}

/// The layers of `wanted` the engine holds by chain and `docker load` will therefore not
/// open: the longest bottom run of its diff_ids that one of `chains` starts with, cut
/// below any layer that sits above it too (the stream carries that one for up there). So
/// what is left out is always a bottom run (`StreamPlan::with_docker_manifest` checks it).
fn held_by_chain(wanted: &Wanted, chains: &[Vec<String>]) -> HashSet<String> {
    let mut shared = chains
        .iter()
        .map(|chain| {
            chain
                .iter()
                .zip(&wanted.diff_ids)
                .take_while(|(a, b)| a == b)
                .count()
        })
        .max()
        .unwrap_or(0)
        .min(wanted.layers.len());
    while wanted.layers[..shared]
        .iter()
        .any(|l| wanted.layers[shared..].contains(l))
    {
        shared -= 1;
    }
    wanted.layers[..shared].iter().cloned().collect()
}

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

    #[test]
    fn layers_the_engine_holds_by_chain_are_left_out_from_the_bottom() {
        let mut l = located();
        let w = Wanted::sample();
        // Without a store answer, or on the containerd image store: no listing, no reuse.
        l.configure(&Answer {
            results: vec![
                result(0, "20.10.24\n", ""),
                result(
                    0,
                    "[[\"driver-type\",\"io.containerd.snapshotter.v1\"]]\n",
                    "",
                ),
            ],
            ..Default::default()
        })
        .unwrap();
        assert_eq!(l.inventory_query(&w).commands.len(), 1);
        // ... and no stream cut into parts: a load through containerd needs every blob.
        assert!(!l.imports_in_parts());
        let overlay = Answer {
            results: vec![
                result(0, "20.10.24\n", ""),
                result(0, "[[\"Backing Filesystem\",\"extfs\"]]\n", ""),
            ],
            ..Default::default()
        };
        l.configure(&overlay).unwrap();
        let q = l.inventory_query(&w);
        assert_eq!(q.commands.len(), 2);
        // Its own layer store: one `docker load` per part, the prefix images removed by
        // their names (never by an ID another image could have).
        assert!(l.imports_in_parts());
        let prefixes: Vec<Prefix> = (1..=2)
            .map(|k| Prefix {
                name: format!("sideload.invalid/partial:r5-{k}"),
                config: format!("sha256:{}", "f".repeat(64)),
                layers: k,
            })
            .collect();
        let [rmi] = &l.remove_partial("sideload.invalid/partial:r5-image", &prefixes)[..] else {
            panic!("one docker rmi")
        };
        assert_eq!(
            rmi.argv[3..],
            [
                "rmi",
                "--force",
                "sideload.invalid/partial:r5-image",
                "sideload.invalid/partial:r5-1",
                "sideload.invalid/partial:r5-2"
            ]
        );
        // vfs says null: its own store too.
        let vfs = Answer {
            results: vec![result(0, "20.10.24\n", ""), result(0, "null\n", "")],
            ..Default::default()
        };
        l.configure(&vfs).unwrap();
        assert_eq!(l.inventory_query(&w).commands.len(), 2);
        // An answer that is not the driver's status: no reuse.
        let odd = Answer {
            results: vec![result(0, "20.10.24\n", ""), result(0, "<no value>\n", "")],
            ..Default::default()
        };
        l.configure(&odd).unwrap();
        assert_eq!(l.inventory_query(&w).commands.len(), 1);
        l.configure(&overlay).unwrap();
        assert_eq!(
            q.commands[1].argv[3..],
            ["image", "ls", "--all", "--quiet", "--no-trunc"]
        );
        // Only image IDs become arguments; a line a hostile engine could put there does not.
        let id = |c: &str| format!("sha256:{}", c.repeat(64));
        let listed = Answer {
            results: vec![
                result(1, "", "Error: No such image: app:v1"),
                result(
                    0,
                    &format!("{}\n{}\n--rm;$(id)\n{}\n", id("7"), id("8"), id("7")),
                    "",
                ),
            ],
            ..Default::default()
        };
        let more = l.inventory_followup(&w, &listed).unwrap();
        assert_eq!(more.commands.len(), 1);
        assert_eq!(
            more.commands[0].argv[3..],
            [
                "image",
                "inspect",
                "--format",
                LAYERS_FORMAT,
                "--",
                &id("7"),
                &id("8")
            ]
        );
        // The follow-up's answer appended: image 7 shares the bottom layer, 8 nothing.
        let mut answer = listed.clone();
        answer.results.push(result(
            0,
            &format!(
                "[\"{}\"]\n[\"{}\",\"{}\"]\n",
                w.diff_ids[0],
                id("9"),
                w.diff_ids[1]
            ),
            "",
        ));
        let inv = l.inventory(&w, &answer).unwrap();
        assert_eq!(inv.layers_present, HashSet::from([w.layers[0].clone()]));
        // A layer of the image in the shared run and above it is sent (for up there).
        let twice = Wanted {
            layers: vec![
                w.layers[0].clone(),
                w.layers[1].clone(),
                w.layers[0].clone(),
            ],
            diff_ids: vec![
                w.diff_ids[0].clone(),
                w.diff_ids[1].clone(),
                w.diff_ids[0].clone(),
            ],
            ..w.clone()
        };
        let chains = vec![twice.diff_ids[..2].to_vec()];
        assert!(held_by_chain(&twice, &chains).is_empty());
        let all = vec![twice.diff_ids.clone()];
        assert_eq!(held_by_chain(&twice, &all).len(), 2);
        // Nothing listed: nothing asked, nothing reused.
        let none = Answer {
            results: vec![result(0, "", ""), result(0, "\n", "")],
            ..Default::default()
        };
        assert!(l.inventory_followup(&w, &none).is_none());
        assert!(l.inventory(&w, &none).unwrap().layers_present.is_empty());
    }
}
