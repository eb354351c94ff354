//! Host commands fed from the exec's stdin: piped through by count (containerd's
//! `ctr images import -`), or staged as an OCI-layout directory first (skopeo on CRI-O
//! nodes, which cannot read a stream), then run one after another.

use std::io::{Read, Write};
use std::process::Stdio;
use std::time::Duration;

use sideload_agent::protocol::{self, Command, Run, Stdin};

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
        None => Stream::stdin(request.index_digest.clone(), request.framed),
        Some(relay) => match Stream::relay(relay, request.framed) {
            Ok(stream) => stream,
            Err(stream::Source::NoConnection(why)) => {
                eprintln!("sideload-agent: {why}");
                return Ok(protocol::NO_RELAY_SOURCE);
            }
            Err(stream::Source::Failed(why)) => return Err(why),
        },
    };
    let code = match &request.stdin {
        Stdin::None => unreachable!("handled above"),
        Stdin::Pipe { bytes } => pipe(first, *bytes, &mut input),
        Stdin::OciDir { bytes, dir } => staged(&request.commands, *bytes, dir, &mut input),
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

fn plain(command: &Command) -> Result<i32, String> {
    let mut child = host::spawn(command, Stdio::null(), Stdio::inherit(), Stdio::inherit())?;
    host::wait(&mut child, None)
}

fn pipe(command: &Command, bytes: u64, input: &mut Stream) -> Result<i32, String> {
    let mut child = host::spawn(command, Stdio::piped(), Stdio::inherit(), Stdio::inherit())?;
    let mut to_child = Some(child.stdin.take().ok_or("no stdin pipe")?);
    let mut buf = vec![0u8; BUFFER];
    let mut moved: u64 = 0;
    let mut child_stopped_reading = false;
    let mut bad_stream = None;
    while moved < bytes {
        let want = usize::try_from((bytes - moved).min(BUFFER as u64)).unwrap_or(BUFFER);
        let n = match input.read(&mut buf[..want]) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                bad_stream = Some(e.to_string());
                break;
            }
            Err(_) => break,
        };
        moved += n as u64;
        if let Some(pipe) = &mut to_child
            && pipe.write_all(&buf[..n]).is_err()
        {
            child_stopped_reading = true;
            to_child = None;
        }
        // A command that stopped reading has failed; the peers downstream still get the
        // whole stream (the caller drains it).
        if to_child.is_none() {
            break;
        }
    }
    drop(to_child); // the command's end of stream
    if let Some(why) = bad_stream {
        let _ = child.kill();
        let _ = child.wait();
        return Err(why);
    }
    if moved < bytes && !child_stopped_reading {
        // The plugin went away (or sent less than it announced): whatever the command
        // made of a partial stream must not stand.
        let _ = child.kill();
        let _ = child.wait();
        eprintln!("sideload-agent: the stream ended after {moved} of {bytes} bytes");
        return Ok(protocol::STREAM_SHORT);
    }
    let code = host::wait(&mut child, None)?;
    if code == 0 && moved < bytes {
        return Err(format!(
            "{} exited after reading {moved} of {bytes} bytes",
            command.argv[0]
        ));
    }
    Ok(code)
}

fn staged(commands: &[Command], bytes: u64, dir: &str, input: &mut Stream) -> Result<i32, String> {
    let dir = host::absolute(dir)?;
    let received = ocidir::receive(input, bytes, dir);
    let outcome = match received {
        Ok(_) => sequence(commands),
        Err(ocidir::Error::Short { got }) => {
            eprintln!("sideload-agent: the stream ended after {got} of {bytes} bytes");
            Ok(protocol::STREAM_SHORT)
        }
        Err(ocidir::Error::Bad(message)) => Err(message),
    };
    // Whatever happened: the staged copy never outlives the commands.
    if let Err(e) = std::fs::remove_dir_all(dir)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        eprintln!("sideload-agent: could not remove {}: {e}", dir.display());
    }
    outcome
}
