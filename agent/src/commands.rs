//! The commands of a query: each runs to its end (or its timeout) with its output captured,
//! bounded, independent of the others.

use std::io::Read;
use std::process::Stdio;
use std::time::Duration;

use sideload_agent::protocol::{self, Command, CommandResult};

use crate::host;

/// Runs one command (the caller has entered the host root); failures to start it are
/// results too, with [`protocol::AGENT_FAILED`].
pub fn run(cmd: &Command) -> CommandResult {
    match capture(cmd) {
        Ok(result) => result,
        Err(message) => CommandResult {
            exit_code: protocol::AGENT_FAILED,
            stdout: String::new(),
            stderr: message,
            truncated: false,
        },
    }
}

fn capture(cmd: &Command) -> Result<CommandResult, String> {
    let mut child = host::spawn(cmd, Stdio::null(), Stdio::piped(), Stdio::piped())?;
    // Both pipes drained at once, or a command filling one while we wait on the other
    // would never finish.
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        host::thread()
            .spawn(move || keep(pipe))
            .map_err(|e| format!("cannot start a reader thread: {e}"))
    };
    let out = drain(child.stdout.take().map(|p| Box::new(p) as _))?;
    let err = drain(child.stderr.take().map(|p| Box::new(p) as _))?;
    let exit_code = host::wait(&mut child, cmd.timeout_secs.map(Duration::from_secs))?;
    let (stdout, cut_out) = out.join().map_err(|_| "reader thread panicked")?;
    let (stderr, cut_err) = err.join().map_err(|_| "reader thread panicked")?;
    Ok(CommandResult {
        exit_code,
        stdout,
        stderr,
        truncated: cut_out || cut_err,
    })
}

/// Reads a pipe to its end, keeping at most `MAX_OUTPUT` bytes.
fn keep(pipe: Option<Box<dyn Read + Send>>) -> (String, bool) {
    let Some(mut pipe) = pipe else {
        return (String::new(), false);
    };
    let mut kept = Vec::new();
    let mut buf = [0u8; 64 * 1024];
    let mut truncated = false;
    loop {
        match pipe.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = protocol::MAX_OUTPUT.saturating_sub(kept.len());
                truncated |= n > room;
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
    (String::from_utf8_lossy(&kept).into_owned(), truncated)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captures_output_and_exit_codes_without_entering_anything() {
        let ok = run(&Command::new([
            "/bin/sh",
            "-c",
            "echo out; echo err >&2; exit 3",
        ]));
        assert_eq!((ok.exit_code, ok.stdout.as_str()), (3, "out\n"));
        assert_eq!(ok.stderr, "err\n");
        assert!(!ok.truncated);
        let missing = run(&Command::new(["/nonexistent/ctr"]));
        assert_eq!(missing.exit_code, protocol::AGENT_FAILED);
        assert!(
            missing.stderr.contains("/nonexistent/ctr"),
            "{}",
            missing.stderr
        );
        let slow = run(&Command::new(["/bin/sleep", "5"]).timeout(0));
        assert_eq!(slow.exit_code, protocol::TIMED_OUT);
    }
}
