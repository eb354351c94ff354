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

/// Host commands a query runs at once, at most: its commands are independent listings
/// (`ctr version`, `crictl info`, `ctr images check`, …), mostly waiting on the runtime's
/// socket, and every node answers before a load can start, so they are not run one
/// after another; a bound keeps a query for many refs from starting dozens at once.
const AT_ONCE: usize = 4;

/// Runs the commands, several at a time, answering in their order.
pub fn run_all(commands: &[Command]) -> Vec<CommandResult> {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};
    if commands.len() < 2 {
        return commands.iter().map(run).collect();
    }
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<CommandResult>>> = Mutex::new(vec![None; commands.len()]);
    std::thread::scope(|scope| {
        for _ in 0..AT_ONCE.min(commands.len()) {
            scope.spawn(|| {
                loop {
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    let Some(command) = commands.get(k) else {
                        return;
                    };
                    let result = run(command);
                    results.lock().unwrap_or_else(|e| e.into_inner())[k] = Some(result);
                }
            });
        }
    });
    results
        .into_inner()
        .unwrap_or_else(|e| e.into_inner())
        .into_iter()
        .flatten()
        .collect()
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

    /// Each command waits until all three have started: run one after another, the first
    /// would wait until its timeout. Answers come in the order asked.
    #[test]
    fn a_query_runs_its_commands_at_once_and_answers_in_order() {
        let dir = std::env::temp_dir().join(format!("agent-meet-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let meet = |k: &str| {
            let script = format!(
                "touch {dir}/{k}; while [ $(ls {dir} | wc -l) -lt 3 ]; do sleep 0.01; done; echo {k}",
                dir = dir.display()
            );
            Command::new(["/bin/sh", "-c", &script]).timeout(20)
        };
        let results = run_all(&[meet("a"), meet("b"), meet("c")]);
        let outs: Vec<(i32, &str)> = results
            .iter()
            .map(|r| (r.exit_code, r.stdout.as_str()))
            .collect();
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(outs, [(0, "a\n"), (0, "b\n"), (0, "c\n")]);
    }
}
