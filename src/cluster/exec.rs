//! Running commands in the helper pod over the exec websocket, optionally streaming a
//! large input into the command's stdin.
//!
//! Rules learned the hard way (DESIGN.md, "Exec websocket"): stdout and stderr are drained
//! concurrently or kube's 1 KiB pipes stall stdin; the stdin writer stays open until the
//! exit status arrives, because on protocol v4 closing stdin closes the whole socket and
//! the status would be lost; the status is taken before anything else is joined.

use std::io::{self, Write};

use anyhow::{Context, Result, anyhow};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Status;
use kube::api::{Api, AttachParams};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio_util::io::SyncIoBridge;

use crate::cluster::helper::CONTAINER;

/// At most this much of stdout/stderr is kept; the rest is read and dropped.
const KEEP_OUTPUT: usize = 1 << 20;
/// Bytes buffered between the archive writer and the websocket.
const STDIN_BUFFER: usize = 1 << 20;

/// What a finished command left behind.
#[derive(Debug)]
pub struct Output {
    pub stdout: String,
    pub stderr: String,
    /// 0 on success; the process's exit code otherwise (-1 when the API gave none).
    pub exit_code: i32,
    /// The API's words when the command failed without an exit code (e.g. the container
    /// was gone).
    pub message: String,
}

impl Output {
    /// Ok when the command exited 0; otherwise an error carrying its stderr.
    pub fn check(self, what: &str) -> Result<Output> {
        if self.exit_code == 0 {
            return Ok(self);
        }
        let mut detail = last_lines(&self.stderr, 5);
        if detail.is_empty() {
            detail = self.message.clone();
        }
        Err(anyhow!(
            "{what} failed with exit code {}{}",
            self.exit_code,
            if detail.is_empty() {
                String::new()
            } else {
                format!(": {detail}")
            }
        ))
    }
}

/// Runs `argv` in the helper container with no input.
pub async fn run(api: &Api<Pod>, pod: &str, argv: Vec<String>) -> Result<Output> {
    let params = AttachParams::default()
        .container(CONTAINER)
        .stdin(false)
        .stdout(true)
        .stderr(true);
    let mut process = api
        .exec(pod, argv, &params)
        .await
        .map_err(|e| crate::cluster::errors::explain(e, "create", "pods/exec"))?;
    let status = process.take_status().context("exec status already taken")?;
    let stdout = tokio::spawn(drain(process.stdout()));
    let stderr = tokio::spawn(drain(process.stderr()));
    let status = status.await;
    finish(status, stdout, stderr, process).await
}

/// Runs `argv` with `feed` writing the command's stdin from a blocking thread (the archive
/// reader is synchronous file I/O). `feed` returns how many bytes it wrote.
pub async fn run_with_input<F>(
    api: &Api<Pod>,
    pod: &str,
    argv: Vec<String>,
    feed: F,
) -> Result<(Output, io::Result<u64>)>
where
    F: FnOnce(&mut dyn Write) -> io::Result<u64> + Send + 'static,
{
    let params = AttachParams::default()
        .container(CONTAINER)
        .stdin(true)
        .stdout(true)
        .stderr(true)
        .max_stdin_buf_size(STDIN_BUFFER);
    let mut process = api
        .exec(pod, argv, &params)
        .await
        .map_err(|e| crate::cluster::errors::explain(e, "create", "pods/exec"))?;
    let status = process.take_status().context("exec status already taken")?;
    let stdout = tokio::spawn(drain(process.stdout()));
    let stderr = tokio::spawn(drain(process.stderr()));
    let stdin = process.stdin().context("exec stdin not attached")?;
    let handle = tokio::runtime::Handle::current();
    let writer = tokio::task::spawn_blocking(move || {
        let mut bridge = SyncIoBridge::new_with_handle(stdin, handle);
        let written = feed(&mut bridge).and_then(|n| bridge.flush().map(|_| n));
        // Hand the writer back instead of dropping it: dropping would close stdin, which
        // on protocol v4 closes the socket before the exit status arrives.
        (written, bridge.into_inner())
    });
    let status = status.await;
    let (written, stdin) = writer.await.context("stdin writer panicked")?;
    drop(stdin);
    let output = finish(status, stdout, stderr, process).await?;
    Ok((output, written))
}

async fn finish(
    status: Option<Status>,
    stdout: tokio::task::JoinHandle<String>,
    stderr: tokio::task::JoinHandle<String>,
    process: kube::api::AttachedProcess,
) -> Result<Output> {
    // The status is in hand; the socket can go now, which also ends the drains.
    let _ = process.join().await;
    let stdout = stdout.await.unwrap_or_default();
    let stderr = stderr.await.unwrap_or_default();
    let status = status.ok_or_else(|| {
        anyhow!(
            "the exec stream ended without an exit status (API server or kubelet restarted, \
             or the helper pod was deleted){}",
            if stderr.is_empty() {
                String::new()
            } else {
                format!("; stderr: {}", last_lines(&stderr, 3))
            }
        )
    })?;
    Ok(Output {
        exit_code: exit_code(&status),
        message: status.message.clone().unwrap_or_default(),
        stdout,
        stderr,
    })
}

/// `Success` → 0; `Failure`/`NonZeroExitCode` carries the code in `details.causes[]`.
fn exit_code(status: &Status) -> i32 {
    if status.status.as_deref() == Some("Success") {
        return 0;
    }
    status
        .details
        .as_ref()
        .and_then(|d| d.causes.as_ref())
        .and_then(|causes| {
            causes
                .iter()
                .find(|c| c.reason.as_deref() == Some("ExitCode"))
        })
        .and_then(|c| c.message.as_deref()?.parse().ok())
        .unwrap_or(-1)
}

async fn drain(reader: Option<impl AsyncRead + Unpin>) -> String {
    let Some(mut reader) = reader else {
        return String::new();
    };
    let mut kept = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = KEEP_OUTPUT.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
    String::from_utf8_lossy(&kept).into_owned()
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(json: &str) -> Status {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn exit_codes_from_status() {
        assert_eq!(
            exit_code(&status(r#"{"status":"Success","metadata":{}}"#)),
            0
        );
        let failed = status(
            r#"{"metadata":{},"status":"Failure","message":"command terminated with non-zero exit code: error executing command [sh -c exit 3], exit code 3","reason":"NonZeroExitCode","details":{"causes":[{"reason":"ExitCode","message":"3"}]}}"#,
        );
        assert_eq!(exit_code(&failed), 3);
        assert_eq!(
            exit_code(&status(
                r#"{"status":"Failure","reason":"InternalError","metadata":{}}"#
            )),
            -1
        );
    }

    #[test]
    fn check_reports_the_tail_of_stderr() {
        let out = Output {
            stdout: String::new(),
            stderr: "a\nb\n\nctr: content digest sha256:x: not found\n".into(),
            exit_code: 1,
            message: String::new(),
        };
        let err = out.check("import").unwrap_err().to_string();
        assert!(err.contains("exit code 1"), "{err}");
        assert!(err.contains("content digest sha256:x: not found"), "{err}");
    }
}
