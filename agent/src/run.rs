//! Host commands fed from the exec's stdin: piped through by count (containerd's
//! `ctr images import -`), or staged as an OCI-layout directory first (skopeo on CRI-O
//! nodes, which cannot read a stream), then run one after another.

use std::io::{Read, Write};
use std::process::{Child, ChildStdin, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::sync_channel;
use std::time::Duration;

use sideload_agent::protocol::{self, Command, Part, Run, Stdin};

use crate::stream::{self, Stream};
use crate::{host, ocidir};

/// Bytes moved per read from the exec's stdin.
const BUFFER: usize = 1 << 20;

pub fn run(request: &Run) -> Result<i32, String> {
    let (first, rest) = request
        .commands
        .split_first()
        .ok_or("a run needs at least one command")?;
    let private = !request.writable.is_empty() || request.scratch_at.is_some();
    if private {
        host::private_namespace()?;
    }
    // Opened before entering the host root: afterwards no path names it.
    let scratch = match &request.scratch_at {
        Some(_) => Some(host::open_scratch()?),
        None => None,
    };
    host::enter()?;
    if private {
        host::private_view(
            &request.writable,
            scratch.as_ref().zip(request.scratch_at.as_deref()),
        )?;
    }
    if let Some(secs) = first.timeout_secs {
        watchdog(Duration::from_secs(secs))?;
    }
    let written = write_files(request)?;
    let outcome = commands(request, first, rest);
    for command in &request.finally {
        cleanup(command);
    }
    for path in written {
        let _ = std::fs::remove_file(path);
    }
    outcome
}

/// Writes the request's files (new files, directly in the scratch directory only).
fn write_files(request: &Run) -> Result<Vec<String>, String> {
    let mut written = Vec::new();
    for (path, text) in &request.files {
        let p = host::absolute(path)?;
        let inside = request
            .scratch_at
            .as_deref()
            .is_some_and(|dir| p.parent() == Some(std::path::Path::new(dir)));
        if !inside {
            return Err(format!(
                "file {path} is not directly in the scratch directory"
            ));
        }
        let mut file =
            std::fs::File::create_new(p).map_err(|e| format!("cannot create {path}: {e}"))?;
        written.push(path.clone());
        file.write_all(text.as_bytes())
            .map_err(|e| format!("cannot write {path}: {e}"))?;
    }
    Ok(written)
}

fn commands(request: &Run, first: &Command, rest: &[Command]) -> Result<i32, String> {
    if matches!(request.stdin, Stdin::None) {
        let code = plain(first)?;
        return if code != 0 { Ok(code) } else { sequence(rest) };
    }
    let mut input = match &request.relay {
        None => Stream::stdin(
            request.index_digest.clone(),
            request.manifest_digest.clone(),
            request.framed,
        ),
        Some(relay) => match Stream::relay(relay, request.framed) {
            Ok(stream) => stream,
            Err(stream::Source::NoConnection(why)) => {
                eprintln!("sideload-agent: {why}");
                return Ok(protocol::NO_RELAY_SOURCE);
            }
            Err(stream::Source::Failed(why)) => return Err(why),
        },
    };
    let announced = remaining(&request.stdin, 0);
    let sum: u64 = request.parts.iter().map(|p| p.bytes).sum();
    if !request.parts.is_empty() && sum != announced {
        return Err(format!(
            "the parts add up to {sum} bytes, not the stream's {announced}"
        ));
    }
    let code = match &request.stdin {
        Stdin::None => unreachable!("handled above"),
        Stdin::Pipe { bytes } if request.parts.is_empty() => pipe(first, *bytes, &mut input),
        Stdin::Pipe { .. } => pipeline(first, &request.parts, &mut input),
        Stdin::OciDir { bytes, dir } => {
            staged(&request.commands, *bytes, &request.parts, dir, &mut input)
        }
    };
    // The peers downstream get the rest of the stream even when the import here failed.
    if input.feeds_peers() && !input.source_failed() {
        let left = remaining(&request.stdin, input.read);
        let _ = std::io::copy(&mut (&mut input).take(left), &mut std::io::sink());
    }
    for line in input.finish() {
        eprintln!("sideload-agent: {line}");
    }
    let code = code?;
    if code != 0 || matches!(request.stdin, Stdin::OciDir { .. }) {
        return Ok(code);
    }
    sequence(rest)
}

/// Stream bytes not read yet.
fn remaining(stdin: &Stdin, read: u64) -> u64 {
    match stdin {
        Stdin::None => 0,
        Stdin::Pipe { bytes } | Stdin::OciDir { bytes, .. } => bytes.saturating_sub(read),
    }
}

/// Runs `commands` in order with no stdin; the first non-zero exit code ends it.
fn sequence(commands: &[Command]) -> Result<i32, String> {
    for command in commands {
        let code = plain(command)?;
        if code != 0 {
            return Ok(code);
        }
    }
    Ok(0)
}

/// Ends the whole agent (and so the exec) once `timeout` has passed, whatever it is
/// blocked on; the commands, in our process group, are killed with it.
fn watchdog(timeout: Duration) -> Result<(), String> {
    // Our own process group, which the commands inherit: the kill below must reach them
    // and nothing else in the container.
    // SAFETY: setpgid on ourselves.
    unsafe { libc::setpgid(0, 0) };
    host::thread()
        .spawn(move || {
            std::thread::sleep(timeout);
            eprintln!("sideload-agent: timed out after {}s", timeout.as_secs());
            // SAFETY: signalling our own process group (ourselves included).
            unsafe {
                libc::kill(0, libc::SIGKILL);
            }
        })
        .map(drop)
        .map_err(|e| format!("cannot start the watchdog: {e}"))
}

/// A `finally` command: its output is not the run's; a failure is told, never fatal.
fn cleanup(command: &Command) {
    let outcome =
        host::spawn(command, Stdio::null(), Stdio::null(), Stdio::piped()).and_then(|mut child| {
            let mut err = String::new();
            if let Some(mut stderr) = child.stderr.take() {
                let _ = stderr.read_to_string(&mut err);
            }
            host::wait(&mut child, None).map(|code| (code, err))
        });
    match outcome {
        Ok((0, _)) => {}
        Ok((code, err)) => eprintln!(
            "sideload-agent: cleaning up: {} exited {code}: {}",
            command.argv[0],
            err.trim()
        ),
        Err(e) => eprintln!("sideload-agent: cleaning up: {e}"),
    }
}

fn plain(command: &Command) -> Result<i32, String> {
    let mut child = host::spawn(command, Stdio::null(), Stdio::inherit(), Stdio::inherit())?;
    host::wait(&mut child, None)
}

fn pipe(command: &Command, bytes: u64, input: &mut Stream) -> Result<i32, String> {
    let mut child = host::spawn(command, Stdio::piped(), Stdio::inherit(), Stdio::inherit())?;
    let mut to_child = child.stdin.take().ok_or("no stdin pipe")?;
    let fed = feed(&mut to_child, bytes, input, &mut vec![0u8; BUFFER]);
    kill_if_incomplete(&mut child, &fed);
    drop(to_child); // the command's end of stream
    settle(&command.argv[0], &mut child, fed, bytes)
}

/// Runs for at most this many parts wait, fed, for the run before them to exit; then the
/// stream waits too (and with it any relay peers: they get it as fast as this node takes it).
const WAITING: usize = 2;

/// A cut stream: each part piped to its own run of `command` ([`protocol::Run::parts`]).
/// This thread feeds part k while a second one waits for run k-1 to exit, and only then
/// closes run k's stdin: the runs take their input as it arrives, but each starts its
/// import once the one before it has finished (so it finds the layers below its own
/// unpacked). The first failing run ends it; the runs after it are killed.
fn pipeline(command: &Command, parts: &[Part], input: &mut Stream) -> Result<i32, String> {
    let total: u64 = parts.iter().map(|p| p.bytes).sum();
    let failed = Arc::new(AtomicBool::new(false));
    let (queue, runs) = sync_channel::<(Child, ChildStdin, Fed, u64)>(WAITING);
    let flag = failed.clone();
    let name = command.argv[0].clone();
    let closer = host::thread()
        .spawn(move || {
            let mut outcome: Result<i32, String> = Ok(0);
            for (mut child, stdin, fed, bytes) in runs {
                if !matches!(outcome, Ok(0)) {
                    let _ = child.kill();
                    let _ = child.wait();
                    continue;
                }
                drop(stdin); // the run before has exited: this one may start its import
                outcome = settle(&name, &mut child, fed, bytes);
                if !matches!(outcome, Ok(0)) {
                    flag.store(true, Ordering::SeqCst);
                }
            }
            outcome
        })
        .map_err(|e| format!("cannot start the import waiter: {e}"))?;
    let mut buf = vec![0u8; BUFFER];
    let mut before: u64 = 0;
    let mut started = Ok(());
    for part in parts {
        if failed.load(Ordering::SeqCst) {
            break;
        }
        input.expect_part(part);
        let mut child =
            match host::spawn(command, Stdio::piped(), Stdio::inherit(), Stdio::inherit()) {
                Ok(child) => child,
                Err(e) => {
                    started = Err(e);
                    break;
                }
            };
        let Some(mut stdin) = child.stdin.take() else {
            let _ = child.kill();
            let _ = child.wait();
            started = Err("no stdin pipe".to_string());
            break;
        };
        let (fed, bytes) = match feed(&mut stdin, part.bytes, input, &mut buf) {
            // Told as a place in the whole stream, not in the part.
            Fed::Short(moved) => (Fed::Short(before + moved), total),
            fed => (fed, part.bytes),
        };
        let whole = matches!(fed, Fed::All);
        kill_if_incomplete(&mut child, &fed);
        if queue.send((child, stdin, fed, bytes)).is_err() || !whole {
            break;
        }
        before += part.bytes;
    }
    drop(queue);
    let outcome = closer
        .join()
        .map_err(|_| "the import waiter failed".to_string())?;
    started?;
    outcome
}

/// How feeding one command's stdin ended.
enum Fed {
    /// Every byte went in.
    All,
    /// The command stopped reading after this many bytes (it failed; its exit code says
    /// how).
    Stopped(u64),
    /// The stream ended (or broke) after this many bytes.
    Short(u64),
    /// The stream is not the plugin's.
    Bad(String),
}

/// Moves exactly `bytes` bytes of `input` into `to` through `buf`.
fn feed(to: &mut ChildStdin, bytes: u64, input: &mut Stream, buf: &mut [u8]) -> Fed {
    let mut moved: u64 = 0;
    while moved < bytes {
        let want = usize::try_from((bytes - moved).min(buf.len() as u64)).unwrap_or(buf.len());
        let n = match input.read(&mut buf[..want]) {
            Ok(0) => return Fed::Short(moved),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                return Fed::Bad(e.to_string());
            }
            Err(_) => return Fed::Short(moved),
        };
        moved += n as u64;
        // A command that stopped reading has failed; the peers downstream still get the
        // whole stream (the caller drains it).
        if to.write_all(&buf[..n]).is_err() {
            return Fed::Stopped(moved);
        }
    }
    Fed::All
}

/// Kills a command whose input broke off, before its stdin closes: it must never see that
/// input end as if it were complete.
fn kill_if_incomplete(child: &mut Child, fed: &Fed) {
    if matches!(fed, Fed::Short(_) | Fed::Bad(_)) {
        let _ = child.kill();
    }
}

/// The exit code of a command whose stdin was fed (and is closed now), as the feeding
/// ended: a bad or short stream kills it, whatever it made of its input must not stand.
fn settle(name: &str, child: &mut Child, fed: Fed, bytes: u64) -> Result<i32, String> {
    match fed {
        Fed::All => host::wait(child, None),
        Fed::Bad(why) => {
            let _ = child.kill();
            let _ = child.wait();
            Err(why)
        }
        Fed::Short(moved) => {
            // The plugin went away (or sent less than it announced).
            let _ = child.kill();
            let _ = child.wait();
            eprintln!("sideload-agent: the stream ended after {moved} of {bytes} bytes");
            Ok(protocol::STREAM_SHORT)
        }
        Fed::Stopped(moved) => match host::wait(child, None)? {
            0 => Err(format!(
                "{name} exited after reading {moved} of {bytes} bytes"
            )),
            code => Ok(code),
        },
    }
}

/// A stream staged as one directory first; a cut stream's parts all go into it (the last
/// part's index names the image), each part's own commands ([`Part::commands`]) running
/// while the next arrives; then the run's commands.
fn staged(
    commands: &[Command],
    bytes: u64,
    parts: &[Part],
    dir: &str,
    input: &mut Stream,
) -> Result<i32, String> {
    let path = host::absolute(dir)?;
    let mut ahead = Ahead::default();
    let received = if parts.is_empty() {
        ocidir::receive(&mut *input, bytes, path)
    } else {
        ocidir::create(path).and_then(|()| {
            let mut before = 0;
            for (k, part) in parts.iter().enumerate() {
                input.expect_part(part);
                ocidir::receive_into(&mut *input, part.bytes, path).map_err(|e| match e {
                    ocidir::Error::Short { got } => ocidir::Error::Short { got: before + got },
                    bad => bad,
                })?;
                before += part.bytes;
                if !part.commands.is_empty() {
                    ahead.queue(path, &protocol::part_view(dir, k), &part.commands);
                }
            }
            Ok(parts.len())
        })
    };
    // The parts' commands end before the run's start (or, when the stream broke, before
    // the agent cleans up): none of them outlives the run.
    let views = ahead.finish(received.is_err());
    let outcome = match received {
        Ok(_) => sequence(commands),
        Err(ocidir::Error::Short { got }) => {
            eprintln!("sideload-agent: the stream ended after {got} of {bytes} bytes");
            Ok(protocol::STREAM_SHORT)
        }
        Err(ocidir::Error::Bad(message)) => Err(message),
    };
    // Whatever happened: the staged copy never outlives the commands.
    for dir in views.iter().map(|v| v.as_path()).chain([path]) {
        if let Err(e) = std::fs::remove_dir_all(dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            eprintln!("sideload-agent: could not remove {}: {e}", dir.display());
        }
    }
    outcome
}

/// The parts' own commands, one part's after another on a thread of their own, while the
/// stream goes on arriving. They are a head start for the run's commands (which import
/// the whole image either way), so a failure is told and stops the rest of them, never
/// the run. The thread starts with the first part that has commands: a stream without
/// any (every runtime but CRI-O, and `--pipeline off`) costs none.
#[derive(Default)]
struct Ahead {
    queue: Option<std::sync::mpsc::Sender<Vec<Command>>>,
    worker: Option<std::thread::JoinHandle<()>>,
    abandon: Arc<AtomicBool>,
    views: Vec<std::path::PathBuf>,
}

impl Ahead {
    /// The worker's queue, the worker started on first use.
    fn sender(&mut self) -> Result<&std::sync::mpsc::Sender<Vec<Command>>, String> {
        let queue = match self.queue.take() {
            Some(queue) => queue,
            None => {
                let (queue, parts) = std::sync::mpsc::channel::<Vec<Command>>();
                let stop = self.abandon.clone();
                let worker = host::thread()
                    .spawn(move || {
                        for commands in parts {
                            if stop.load(Ordering::SeqCst) {
                                continue;
                            }
                            let failed = match sequence(&commands) {
                                Ok(0) => continue,
                                Ok(code) => format!("{} exited {code}", commands[0].argv[0]),
                                Err(e) => e,
                            };
                            eprintln!(
                                "sideload-agent: importing a part ahead failed ({failed}); the \
                                 import of the whole image does it"
                            );
                            stop.store(true, Ordering::SeqCst);
                        }
                    })
                    .map_err(|e| format!("cannot start the parts' import thread: {e}"))?;
                self.worker = Some(worker);
                queue
            }
        };
        Ok(self.queue.insert(queue))
    }

    /// Gives the part just staged in `dir` a layout of its own at `view` and queues its
    /// commands, unless an earlier part's failed.
    fn queue(&mut self, dir: &std::path::Path, view: &str, commands: &[Command]) {
        if self.abandon.load(Ordering::SeqCst) {
            return;
        }
        let made = host::absolute(view)
            .map_err(ocidir::Error::Bad)
            .and_then(|v| ocidir::view(dir, v).map(|()| v.to_path_buf()));
        let queued = made.map_err(|e| format!("{e:?}")).and_then(|v| {
            self.views.push(v);
            let queue = self.sender()?;
            let _ = queue.send(commands.to_vec());
            Ok(())
        });
        if let Err(e) = queued {
            eprintln!("sideload-agent: no head start for this part: {e}");
            self.abandon.store(true, Ordering::SeqCst);
        }
    }

    /// Waits for the commands queued so far (skipping those not started when `abandon`),
    /// and gives back the views made, for removal.
    fn finish(&mut self, abandon: bool) -> Vec<std::path::PathBuf> {
        if abandon {
            self.abandon.store(true, Ordering::SeqCst);
        }
        drop(self.queue.take());
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
        std::mem::take(&mut self.views)
    }
}

#[cfg(test)]
mod tests {
    use sha2::{Digest, Sha256};

    use super::*;

    fn log_file() -> std::path::PathBuf {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::SeqCst);
        let path = std::env::temp_dir().join(format!("agent-run-{}-{n}.log", std::process::id()));
        let _ = std::fs::remove_file(&path);
        path
    }

    /// A part: a tar with an index.json and one blob of `fill` bytes.
    fn part(fill: u8, len: usize) -> (Vec<u8>, Part) {
        part_with(fill, len, None)
    }

    /// A part that also carries a docker-archive `manifest.json` of its own.
    fn docker_part(fill: u8, len: usize) -> (Vec<u8>, Part) {
        part_with(fill, len, Some(format!("[{{\"Config\":\"c{fill}\"}}]")))
    }

    fn part_with(fill: u8, len: usize, manifest: Option<String>) -> (Vec<u8>, Part) {
        let index = format!("{{\"part\":{fill}}}");
        let blob = vec![fill; len];
        let mut members = vec![
            (
                "oci-layout".to_string(),
                &br#"{"imageLayoutVersion":"1.0.0"}"#[..],
            ),
            ("index.json".to_string(), index.as_bytes()),
        ];
        if let Some(m) = &manifest {
            members.push(("manifest.json".to_string(), m.as_bytes()));
        }
        members.push((
            format!("blobs/sha256/{}", hex::encode(Sha256::digest(&blob))),
            &blob[..],
        ));
        let tar = crate::testutil::tar_of(&members);
        let part = Part {
            bytes: tar.len() as u64,
            index_digest: hex::encode(Sha256::digest(index.as_bytes())),
            manifest_digest: manifest.map(|m| hex::encode(Sha256::digest(m.as_bytes()))),
            commands: Vec::new(),
        };
        (tar, part)
    }

    /// Each run gets exactly its part, and run k sees its end of input only after run k-1
    /// has exited: a slow first run still finishes before the second writes its line.
    #[test]
    fn parts_run_one_after_another_each_fed_its_own_bytes() {
        let log = log_file();
        let (a, pa) = part(1, 300_000);
        let (b, pb) = part(2, 10);
        let (c, pc) = part(3, 70_000);
        let stream = [a.clone(), b.clone(), c.clone()].concat();
        let first = stream.len();
        let mut input = Stream::of_bytes(stream, &pa.index_digest);
        // Slow when its input is large: the first run would finish last if runs overlapped.
        let mut command = Command::new([
            "/bin/sh",
            "-c",
            "n=$(wc -c); [ \"$n\" -gt 200000 ] && sleep 0.5; echo $n >> \"$LOG\"",
        ]);
        command.env.insert("LOG".into(), log.display().to_string());
        let code = pipeline(&command, &[pa, pb, pc], &mut input).unwrap();
        assert_eq!(code, 0);
        assert_eq!(input.read, first as u64);
        let lines = std::fs::read_to_string(&log).unwrap();
        assert_eq!(
            lines.split_whitespace().collect::<Vec<_>>(),
            [
                a.len().to_string(),
                b.len().to_string(),
                c.len().to_string()
            ]
        );
    }

    /// A part whose index is not the announced one ends the pipeline: nothing after it runs.
    #[test]
    fn a_part_with_a_foreign_index_stops_the_pipeline() {
        let log = log_file();
        let (a, pa) = part(1, 1000);
        let (b, mut pb) = part(2, 1000);
        let (c, pc) = part(3, 1000);
        pb.index_digest = "0".repeat(64);
        let mut input = Stream::of_bytes([a, b, c].concat(), &pa.index_digest);
        let mut command = Command::new(["/bin/sh", "-c", "exec wc -c >> \"$LOG\""]);
        command.env.insert("LOG".into(), log.display().to_string());
        let err = pipeline(&command, &[pa, pb, pc], &mut input).unwrap_err();
        assert!(err.contains("is not the one the plugin sent"), "{err}");
        let lines = std::fs::read_to_string(&log).unwrap_or_default();
        assert_eq!(
            lines.lines().count(),
            1,
            "only the first part was imported: {lines}"
        );
    }

    /// Docker Engine's parts each carry a `manifest.json` naming their own image: each is
    /// checked against its own part's announced digest, and a foreign one stops the runs.
    #[test]
    fn each_docker_part_is_checked_against_its_own_manifest() {
        let log = log_file();
        let (a, pa) = docker_part(1, 1000);
        let (b, pb) = docker_part(2, 1000);
        let (c, pc) = docker_part(3, 1000);
        let stream = [a.clone(), b.clone(), c.clone()].concat();
        let mut command = Command::new(["/bin/sh", "-c", "exec wc -c >> \"$LOG\""]);
        command.env.insert("LOG".into(), log.display().to_string());
        let mut input = Stream::of_bytes(stream.clone(), &pa.index_digest);
        let parts = [pa.clone(), pb.clone(), pc.clone()];
        assert_eq!(pipeline(&command, &parts, &mut input).unwrap(), 0);
        let lines = std::fs::read_to_string(&log).unwrap();
        assert_eq!(lines.lines().count(), 3, "{lines}");

        // Part b announced with part c's manifest: its own does not pass.
        let log = log_file();
        command.env.insert("LOG".into(), log.display().to_string());
        let mut wrong = pb;
        wrong.manifest_digest = pc.manifest_digest.clone();
        let mut input = Stream::of_bytes(stream, &pa.index_digest);
        let err = pipeline(&command, &[pa, wrong, pc], &mut input).unwrap_err();
        assert!(err.contains("manifest.json"), "{err}");
        let lines = std::fs::read_to_string(&log).unwrap_or_default();
        assert_eq!(lines.lines().count(), 1, "{lines}");
    }

    /// A staged stream's parts run their own commands while the next part arrives, each
    /// reading its own part's index through its view; the run's commands read the last
    /// part's, after all of them; nothing of the staging is left.
    #[test]
    fn staged_parts_import_ahead_each_through_its_own_view() {
        let log = log_file();
        let base = std::env::temp_dir().join(format!("agent-staged-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(&base).unwrap();
        let dir = base.join("oci").display().to_string();
        let shell = |script: &str, view: &str| {
            let mut c = Command::new(["/bin/sh", "-c", script]);
            c.env.insert("LOG".into(), log.display().to_string());
            c.env.insert("VIEW".into(), view.to_string());
            c
        };
        // Slow, so the next part is staged (its index replacing this one's) meanwhile.
        let ahead = r#"sleep 0.3; cat "$VIEW/index.json" >> "$LOG"; echo >> "$LOG"; ls "$VIEW/blobs/sha256" | wc -l >> "$LOG""#;
        let (a, mut pa) = part(1, 1000);
        let (b, mut pb) = part(2, 1000);
        let (c, pc) = part(3, 1000);
        pa.commands = vec![shell(ahead, &protocol::part_view(&dir, 0))];
        pb.commands = vec![shell(ahead, &protocol::part_view(&dir, 1))];
        let bytes = (a.len() + b.len() + c.len()) as u64;
        let mut input = Stream::of_bytes([a, b, c].concat(), &pa.index_digest);
        let last = shell(r#"cat "$VIEW/index.json" >> "$LOG""#, &dir);
        let code = staged(&[last], bytes, &[pa, pb, pc], &dir, &mut input).unwrap();
        assert_eq!(code, 0);
        let lines = std::fs::read_to_string(&log).unwrap();
        let lines: Vec<_> = lines.split_whitespace().collect();
        // Part 0 saw its own index (and at least its own blob), part 1 its own, then the run.
        assert_eq!(lines[0], r#"{"part":1}"#, "{lines:?}");
        assert!(lines[1].parse::<u32>().unwrap() >= 1, "{lines:?}");
        assert_eq!(lines[2], r#"{"part":2}"#, "{lines:?}");
        assert_eq!(lines[4], r#"{"part":3}"#, "{lines:?}");
        let left: Vec<_> = std::fs::read_dir(&base).unwrap().collect();
        assert!(left.is_empty(), "left behind: {left:?}");
    }

    /// A part's commands that fail cost the head start only: the run's commands still run
    /// and decide the outcome.
    #[test]
    fn a_failing_part_command_does_not_fail_the_run() {
        let log = log_file();
        let base = std::env::temp_dir().join(format!("agent-ahead-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(&base).unwrap();
        let dir = base.join("oci").display().to_string();
        let (a, mut pa) = part(1, 100);
        let (b, mut pb) = part(2, 100);
        let (c, pc) = part(3, 100);
        pa.commands = vec![Command::new(["/bin/false"])];
        let mut second = Command::new(["/bin/sh", "-c", "echo second >> \"$LOG\""]);
        second.env.insert("LOG".into(), log.display().to_string());
        pb.commands = vec![second];
        let bytes = (a.len() + b.len() + c.len()) as u64;
        let mut input = Stream::of_bytes([a, b, c].concat(), &pa.index_digest);
        let mut last = Command::new(["/bin/sh", "-c", "echo last >> \"$LOG\""]);
        last.env.insert("LOG".into(), log.display().to_string());
        let code = staged(&[last], bytes, &[pa, pb, pc], &dir, &mut input).unwrap();
        assert_eq!(code, 0);
        // After a failure the parts' commands stop; the run's own still ran.
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "last\n");
    }
}
