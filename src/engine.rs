//! `docker://REF` and `podman://REF`: an image read straight out of the user's local engine,
//! as `kind load docker-image` does, with no `save` to a file first.
//!
//! The engine's own CLI writes the archive (`docker save`, `podman save`) into a pipe that
//! the archive reader scans and spools in one pass. The CLI, not the engine's API socket,
//! because it already honours everything the user configured: `DOCKER_HOST`, docker
//! contexts, `CONTAINER_HOST`, podman's remote connections and rootless stores. The spool
//! (an unlinked temporary file) is unavoidable: the plan reads the config and manifest,
//! which `docker save` writes last, before it knows which blobs each node lacks, and nodes
//! then read different blobs at different paces.

use std::io::Read;
use std::process::{Child, ChildStdout, Command, Stdio};

use anyhow::{Result, anyhow, bail};

use crate::archive::Archive;

/// A local image engine whose `save` writes an archive the reader understands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    Docker,
    Podman,
}

impl Engine {
    /// The engine a `scheme://` argument names, and the image ref after the scheme.
    pub fn parse(arg: &str) -> Option<(Engine, &str)> {
        if let Some(r) = arg.strip_prefix("docker://") {
            Some((Engine::Docker, r))
        } else if let Some(r) = arg.strip_prefix("podman://") {
            Some((Engine::Podman, r))
        } else {
            None
        }
    }

    fn cli(self) -> &'static str {
        match self {
            Engine::Docker => "docker",
            Engine::Podman => "podman",
        }
    }

    /// The argv of the save: the ref after `--`, so a ref that starts with `-` is never read
    /// as an option (`docker save --output=/etc/x` would write a file instead).
    fn save_argv(self, reference: &str) -> Vec<String> {
        vec![
            self.cli().to_owned(),
            "save".to_owned(),
            "--".to_owned(),
            reference.to_owned(),
        ]
    }
}

/// Reads the image `reference` out of `engine` into an opened archive named `arg` (the
/// argument as the user typed it): one image, or more if the ref names several (podman
/// resolves a short name to one). Blocking: call it on a blocking thread.
pub fn open(engine: Engine, reference: &str, arg: &str) -> Result<Vec<Archive>> {
    if reference.is_empty() || reference.starts_with('-') || reference.contains(char::is_whitespace)
    {
        bail!(
            "{arg}: not an image reference; write {scheme}://NAME:TAG or {scheme}://IMAGE-ID, \
             e.g. {scheme}://app:v2",
            scheme = engine.cli()
        );
    }
    let argv = engine.save_argv(reference);
    let mut child = Saving::spawn(engine, &argv, arg)?;
    let stdout = child.stdout()?;
    let opened = Archive::open_reader(stdout, arg);
    // The engine's verdict comes first: a missing image or a stopped daemon shows up to the
    // reader as an empty or cut-short archive, which would name the wrong problem.
    let status = child.finish();
    match (opened, status) {
        (_, Err(e)) => Err(e),
        (Ok(archive), Ok(())) => Ok(archive),
        (Err(e), Ok(())) => Err(anyhow!(e).context(format!(
            "{arg}: `{}` wrote an archive the reader cannot use",
            argv.join(" ")
        ))),
    }
}

/// A running `save`, killed and reaped if dropped before it finished (an archive error, a
/// panic), so no engine process outlives the plugin's interest in it.
struct Saving {
    child: Option<Child>,
    engine: Engine,
    argv: Vec<String>,
    arg: String,
    stderr: Option<std::thread::JoinHandle<String>>,
}

impl Saving {
    fn spawn(engine: Engine, argv: &[String], arg: &str) -> Result<Saving> {
        let mut child = Command::new(&argv[0])
            .args(&argv[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    anyhow!(
                        "{arg}: the {cli} command is not on PATH; install {cli} here, or run \
                         `{cli} save -o image.tar {reference}` where it is and pass image.tar",
                        cli = engine.cli(),
                        reference = &argv[argv.len() - 1],
                    )
                } else {
                    anyhow!("{arg}: cannot run {}: {e}", engine.cli())
                }
            })?;
        // Read stderr alongside: an engine that writes much of it must not block on a full
        // pipe while the archive reader waits on stdout.
        let stderr = child.stderr.take().map(|mut s| {
            std::thread::spawn(move || {
                let mut text = String::new();
                let _ = s.by_ref().take(64 * 1024).read_to_string(&mut text);
                let _ = std::io::copy(&mut s, &mut std::io::sink());
                text
            })
        });
        Ok(Saving {
            child: Some(child),
            engine,
            argv: argv.to_vec(),
            arg: arg.to_owned(),
            stderr,
        })
    }

    fn stdout(&mut self) -> Result<ChildStdout> {
        self.child
            .as_mut()
            .and_then(|c| c.stdout.take())
            .ok_or_else(|| anyhow!("{}: {} save has no stdout", self.arg, self.engine.cli()))
    }

    /// Waits for the save to exit; an error that quotes the engine if it failed.
    fn finish(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let status = child.wait();
        let said = self
            .stderr
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        let status =
            status.map_err(|e| anyhow!("{}: waiting for {}: {e}", self.arg, self.argv[0]))?;
        if status.success() {
            return Ok(());
        }
        Err(anyhow!(failure(
            self.engine,
            &self.arg,
            &self.argv,
            &status.to_string(),
            &said
        )))
    }
}

impl Drop for Saving {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The message for a failed save: the command, its exit status, what it said, and the next
/// step for the two failures users meet (no such image; the engine not running).
fn failure(engine: Engine, arg: &str, argv: &[String], status: &str, said: &str) -> String {
    let said = said.trim();
    let lower = said.to_lowercase();
    let reference = &argv[argv.len() - 1];
    let cli = engine.cli();
    let hint = if lower.contains("no such image")
        || lower.contains("image not known")
        || lower.contains("reference does not exist")
        || lower.contains("not found")
    {
        format!(
            "the {cli} engine has no image {reference}; list what it has with `{cli} images`, \
             or build or pull it first"
        )
    } else if lower.contains("cannot connect") || lower.contains("connection refused") {
        match engine {
            Engine::Docker => "the Docker daemon is not reachable; start it, or point DOCKER_HOST \
                 (or `docker context use`) at the engine that holds the image"
                .to_owned(),
            Engine::Podman => "podman cannot reach its service; check `podman info`, or \
                 CONTAINER_HOST / `podman system connection`"
                .to_owned(),
        }
    } else {
        format!("check that `{cli} save {reference}` works here")
    };
    let said = if said.is_empty() {
        "(it printed nothing)".to_owned()
    } else {
        said.lines()
            .rev()
            .take(5)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join(" / ")
    };
    format!(
        "{arg}: `{}` failed ({status}): {said}; {hint}",
        argv.join(" ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemes_name_the_engine_and_the_ref() {
        assert_eq!(
            Engine::parse("docker://app:v2"),
            Some((Engine::Docker, "app:v2"))
        );
        assert_eq!(
            Engine::parse("podman://localhost/app:v2"),
            Some((Engine::Podman, "localhost/app:v2"))
        );
        assert_eq!(Engine::parse("app.tar"), None);
        assert_eq!(Engine::parse("oci://x"), None);
    }

    #[test]
    fn the_ref_is_never_an_option_of_the_save() {
        assert_eq!(
            Engine::Docker.save_argv("--output=/etc/passwd"),
            ["docker", "save", "--", "--output=/etc/passwd"]
        );
        let e = open(
            Engine::Docker,
            "--output=/etc/x",
            "docker://--output=/etc/x",
        )
        .unwrap_err();
        assert!(e.to_string().contains("not an image reference"), "{e}");
    }

    #[test]
    fn failures_quote_the_engine_and_name_the_next_step() {
        let argv = Engine::Docker.save_argv("app:v2");
        let m = failure(
            Engine::Docker,
            "docker://app:v2",
            &argv,
            "exit status: 1",
            "Error response from daemon: reference does not exist\n",
        );
        assert!(
            m.contains("`docker save -- app:v2` failed (exit status: 1)"),
            "{m}"
        );
        assert!(m.contains("reference does not exist"), "{m}");
        assert!(m.contains("`docker images`"), "{m}");
        let m = failure(
            Engine::Docker,
            "docker://app:v2",
            &argv,
            "exit status: 1",
            "Cannot connect to the Docker daemon at unix:///var/run/docker.sock. Is the docker daemon running?",
        );
        assert!(m.contains("DOCKER_HOST"), "{m}");
        let m = failure(
            Engine::Podman,
            "podman://x",
            &Engine::Podman.save_argv("x"),
            "exit status: 125",
            "",
        );
        assert!(m.contains("(it printed nothing)"), "{m}");
    }

    #[test]
    fn a_missing_cli_is_named_with_the_way_around_it() {
        let argv = vec![
            "sideload-no-such-engine-cli".to_owned(),
            "save".to_owned(),
            "--".to_owned(),
            "app:v2".to_owned(),
        ];
        let e = Saving::spawn(Engine::Podman, &argv, "podman://app:v2")
            .err()
            .unwrap();
        let m = e.to_string();
        assert!(m.contains("not on PATH"), "{m}");
        assert!(m.contains("podman save -o image.tar app:v2"), "{m}");
    }
}
