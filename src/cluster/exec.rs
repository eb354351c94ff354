//! Running commands in the helper pod over the exec websocket, optionally streaming a
//! large input into the command's stdin.
//!
//! One session loop speaks the channel protocol itself over kube's upgraded websocket
//! (kube's `AttachedProcess` sends 4 KiB stdin frames and, with 1 KiB output pipes, stalls
//! stdin unless stdout is drained concurrently). Rules (DESIGN.md, "Exec websocket"): the
//! stdin side is never closed, since on protocol v4 closing it closes the whole socket and
//! the exit status would be lost; commands read a known length instead; the session ends
//! on the status message.

use std::io::{self, Write};

use anyhow::{Context, Result, anyhow};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Status;
use kube::api::{Api, AttachParams};

use crate::cluster::helper::CONTAINER;

/// At most this much of stdout/stderr is kept; the rest is read and dropped.
const KEEP_OUTPUT: usize = 1 << 20;

/// What a finished command left behind.
#[derive(Debug, Clone)]
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

/// A stdin writer that is never called (the type of "no input").
type Feed = fn(&mut dyn Write) -> io::Result<u64>;

/// Runs `argv` in the helper container with no input.
pub async fn run(api: &Api<Pod>, pod: &str, argv: Vec<String>) -> Result<Output> {
    let no_input: Option<(usize, Feed)> = None;
    Ok(session(api, pod, argv, no_input).await?.0)
}

/// Bytes of stdin per websocket frame, at most. kube-rs' own exec loop sends 4 KiB frames;
/// every frame costs a message in the API server, the kubelet and the runtime's stream
/// server, and at 4 KiB that overhead dominated a 1 GiB transfer (see bench/sideload-1g).
/// Measured on the test cluster, 256 MiB to one node: 4 KiB 18.9 s, 256 KiB 8.5-10.2 s,
/// 1 MiB 7.3-8.4 s. Several streams at once use smaller frames (`transfer::chunk_for`):
/// each frame is held three or four times over on its way out.
const MAX_FRAME: usize = 1024 * 1024;
/// Frames queued between the archive reader thread and the socket (the reader makes frames
/// far faster than a socket takes them, so one is enough). Each queued frame is 1 MiB per
/// stream in flight: 8 gave 70 MiB peak RSS for four parallel streams in bench/transfer;
/// for 256 MiB to all five nodes with `--relay off`, two runs each alternating, 3 gave
/// 63.5/63.9 MiB in 30.6/32.1 s and 1 gave 55.5/55.7 MiB in 35.2/27.1 s.
const QUEUED_FRAMES: usize = 1;

/// Runs `argv` with `feed` writing the command's stdin from a blocking thread (the archive
/// reader is synchronous file I/O). `feed` returns how many bytes it wrote.
///
/// This speaks the channel protocol itself (stdin frames of `frame` bytes, at most
/// [`MAX_FRAME`]) over kube's
/// upgraded websocket, rather than kube's `AttachedProcess`, for throughput. The stdin
/// side is never closed: commands read a known length (DESIGN.md: v4 has no stdin close),
/// and the socket stays open until the exit status arrives.
pub async fn run_with_input<F>(
    api: &Api<Pod>,
    pod: &str,
    argv: Vec<String>,
    frame: usize,
    feed: F,
) -> Result<(Output, io::Result<u64>)>
where
    F: FnOnce(&mut dyn Write) -> io::Result<u64> + Send + 'static,
{
    session(api, pod, argv, Some((frame, feed))).await
}

/// Opens the exec websocket for `argv` in the helper container.
async fn connect(
    api: &Api<Pod>,
    pod: &str,
    argv: Vec<String>,
    stdin: bool,
) -> Result<kube::client::Connection> {
    let namespace = api.namespace().unwrap_or("default").to_string();
    let params = AttachParams::default()
        .container(CONTAINER)
        .stdin(stdin)
        .stdout(true)
        .stderr(true);
    let request = kube::core::Request::new(format!("/api/v1/namespaces/{namespace}/pods"))
        .exec(pod, argv, &params)
        .context("building the exec request")?;
    let connection = api
        .clone()
        .into_client()
        .connect(request)
        .await
        .map_err(|e| crate::cluster::errors::explain(e, "create", "pods/exec"))?;
    // Either protocol works the same here (stdin is never closed); logged because which one
    // the cluster chose explains a stall (tests: the e2e v4-only API server checks this line).
    tracing::debug!(
        protocol = if connection.supports_stream_close() {
            "v5.channel.k8s.io"
        } else {
            "v4.channel.k8s.io"
        },
        "exec stream open"
    );
    Ok(connection)
}

/// One exec session: stdin from `feed` in frames of its size if given (else no stdin
/// channel at all), stdout and stderr kept, ended by the status message.
async fn session<F>(
    api: &Api<Pod>,
    pod: &str,
    argv: Vec<String>,
    feed: Option<(usize, F)>,
) -> Result<(Output, io::Result<u64>)>
where
    F: FnOnce(&mut dyn Write) -> io::Result<u64> + Send + 'static,
{
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let connection = connect(api, pod, argv, feed.is_some()).await?;
    let (mut sink, mut stream) = connection.into_stream().split();

    // Reader: stdout/stderr kept (bounded), the status channel ends it.
    let reader = tokio::spawn(async move {
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        let mut status = None;
        while let Some(message) = stream.next().await {
            let Ok(Message::Binary(frame)) = message else {
                if message.is_err() {
                    break;
                }
                continue;
            };
            let (channel, data) = match frame.split_first() {
                Some((c, d)) => (*c, d),
                None => continue,
            };
            match channel {
                1 => keep(&mut stdout, data),
                2 => keep(&mut stderr, data),
                3 => {
                    status = serde_json::from_slice::<Status>(data).ok();
                    break;
                }
                _ => {}
            }
        }
        (
            status,
            String::from_utf8_lossy(&stdout).into_owned(),
            String::from_utf8_lossy(&stderr).into_owned(),
        )
    });

    // Writer thread: the archive, cut into frames that already carry the stdin channel byte.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(QUEUED_FRAMES);
    // Without input, `tx` drops here and the loop below sees the channel end at once.
    let writer = tokio::task::spawn_blocking(move || {
        let Some((frame, feed)) = feed else {
            return Ok(0);
        };
        let mut frames = FrameWriter::new(tx, frame);
        feed(&mut frames).and_then(|n| frames.flush().map(|_| n))
    });

    let mut reader = reader;
    let mut writer = writer;
    let mut written: Option<io::Result<u64>> = None;
    let mut ping = tokio::time::interval(std::time::Duration::from_secs(30));
    ping.reset();
    let mut sending = true;
    let mut send_error = None;
    let finished = loop {
        tokio::select! {
            done = &mut reader => break done,
            frame = rx.recv(), if sending => match frame {
                Some(frame) => {
                    if let Err(e) = sink.send(Message::binary(frame)).await {
                        send_error = Some(e.to_string());
                        sending = false;
                        rx.close();
                    }
                }
                None => sending = false,
            },
            result = &mut writer, if written.is_none() => {
                let result = result.context("stdin writer panicked")?;
                if let Err(e) = &result
                    && send_error.is_none()
                {
                    // Our side failed (the archive could not be read): stop now instead of
                    // waiting for a node that waits for bytes. Dropping the socket ends the
                    // stream short on the node, where the agent discards what it got.
                    reader.abort();
                    let _ = sink.close().await;
                    return Err(anyhow!("streaming the archive failed: {e}"));
                }
                written = Some(result);
            }
            _ = ping.tick() => {
                let _ = sink.send(Message::Ping(Default::default())).await;
            }
        }
    };
    // Stop the writer if it is still going (the command exited early).
    rx.close();
    drop(rx);
    let written = match written {
        Some(w) => w,
        None => writer.await.context("stdin writer panicked")?,
    };
    let _ = sink.close().await;

    let (status, stdout, stderr) = finished.context("exec reader failed")?;
    let status = status.ok_or_else(|| no_status(send_error, &stderr))?;
    let output = Output {
        exit_code: exit_code(&status),
        message: status.message.clone().unwrap_or_default(),
        stdout,
        stderr,
    };
    Ok((output, written))
}

/// An exec whose stdin and stdout carry a line-by-line dialogue (the agent's `session`
/// verb): one websocket for many questions, so a node's lookups cost one exec set-up
/// (API server → kubelet → runtime → a new process in the container) instead of one each.
/// The socket is owned by a task; dropping the conversation stops it.
pub struct Conversation {
    to_agent: tokio::sync::mpsc::Sender<Vec<u8>>,
    from_agent: tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>,
    pending: Vec<u8>,
    task: Option<tokio::task::JoinHandle<Ended>>,
}

/// How a conversation's exec ended: its status (none if the stream broke first), its
/// stderr, and why sending failed, if it did.
type Ended = (Option<Status>, String, Option<String>);

/// Longest answer line kept; a longer one is an error (answers are a few KiB).
const MAX_ANSWER: usize = 16 << 20;

impl Conversation {
    /// Starts `argv` with stdin, stdout and stderr attached.
    pub async fn open(api: &Api<Pod>, pod: &str, argv: Vec<String>) -> Result<Conversation> {
        use futures::{SinkExt, StreamExt};
        use tokio_tungstenite::tungstenite::Message;

        let mut sink_stream = connect(api, pod, argv, true).await?.into_stream().split();
        let (to_agent, mut outgoing) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
        let (stdout_tx, from_agent) = tokio::sync::mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            let (sink, stream) = &mut sink_stream;
            let mut stderr = Vec::new();
            let mut send_error = None;
            let mut ping = tokio::time::interval(std::time::Duration::from_secs(30));
            ping.reset();
            let status = loop {
                tokio::select! {
                    message = stream.next() => match message {
                        Some(Ok(Message::Binary(frame))) => match frame.split_first() {
                            Some((1, data)) => {
                                let _ = stdout_tx.send(data.to_vec());
                            }
                            Some((2, data)) => keep(&mut stderr, data),
                            Some((3, data)) => break serde_json::from_slice::<Status>(data).ok(),
                            _ => {}
                        },
                        Some(Ok(_)) => {}
                        Some(Err(_)) | None => break None,
                    },
                    line = outgoing.recv() => match line {
                        Some(line) => {
                            let mut frame = Vec::with_capacity(line.len() + 1);
                            frame.push(0); // the stdin channel
                            frame.extend_from_slice(&line);
                            if let Err(e) = sink.send(Message::binary(frame)).await {
                                send_error = Some(e.to_string());
                                break None;
                            }
                        }
                        // The conversation was dropped: leave (the agent sees its stdin end
                        // or its pod go).
                        None => break None,
                    },
                    _ = ping.tick() => {
                        let _ = sink.send(Message::Ping(Default::default())).await;
                    }
                }
            };
            let _ = sink.close().await;
            (
                status,
                String::from_utf8_lossy(&stderr).into_owned(),
                send_error,
            )
        });
        Ok(Conversation {
            to_agent,
            from_agent,
            pending: Vec::new(),
            task: Some(task),
        })
    }

    /// Sends one line (a newline is added) and returns the next line of stdout.
    pub async fn ask(&mut self, line: &str) -> Result<String> {
        debug_assert!(!line.contains('\n'), "one request per line");
        let mut bytes = Vec::with_capacity(line.len() + 1);
        bytes.extend_from_slice(line.as_bytes());
        bytes.push(b'\n');
        if self.to_agent.send(bytes).await.is_err() {
            return Err(self.ended().await);
        }
        loop {
            if let Some(at) = self.pending.iter().position(|&b| b == b'\n') {
                let rest = self.pending.split_off(at + 1);
                let mut answer = std::mem::replace(&mut self.pending, rest);
                answer.pop();
                return String::from_utf8(answer).context("the node agent's answer is not UTF-8");
            }
            if self.pending.len() > MAX_ANSWER {
                return Err(anyhow!(
                    "the node agent's answer is longer than {MAX_ANSWER} bytes"
                ));
            }
            match self.from_agent.recv().await {
                Some(chunk) => self.pending.extend_from_slice(&chunk),
                None => return Err(self.ended().await),
            }
        }
    }

    async fn join(&mut self) -> Result<Ended> {
        let task = self.task.take().context("the conversation is over")?;
        task.await.context("exec conversation task failed")
    }

    /// Why the command stopped answering: its exit status and stderr.
    async fn ended(&mut self) -> anyhow::Error {
        match self.join().await {
            Err(e) => e,
            Ok((Some(status), stderr, _)) => {
                let out = Output {
                    exit_code: exit_code(&status),
                    message: status.message.clone().unwrap_or_default(),
                    stdout: String::new(),
                    stderr,
                };
                match out.check("the node agent") {
                    Err(e) => e,
                    Ok(_) => anyhow!("the node agent ended the conversation before answering"),
                }
            }
            Ok((None, stderr, send_error)) => no_status(send_error, &stderr),
        }
    }
}

impl Drop for Conversation {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

fn no_status(send_error: Option<String>, stderr: &str) -> anyhow::Error {
    anyhow!(
        "the exec stream ended without an exit status (API server or kubelet restarted, \
         or the helper pod was deleted){}{}",
        send_error
            .map(|e| format!("; sending failed: {e}"))
            .unwrap_or_default(),
        if stderr.is_empty() {
            String::new()
        } else {
            format!("; stderr: {}", last_lines(stderr, 3))
        }
    )
}

fn keep(buffer: &mut Vec<u8>, data: &[u8]) {
    let room = KEEP_OUTPUT.saturating_sub(buffer.len());
    buffer.extend_from_slice(&data[..data.len().min(room)]);
}

/// A `Write` that cuts its input into stdin frames (`[0, data…]`) of up to its size (at
/// most [`MAX_FRAME`]) and hands them to the socket task; blocking, for the archive
/// reader's thread.
struct FrameWriter {
    tx: tokio::sync::mpsc::Sender<Vec<u8>>,
    frame: Vec<u8>,
    /// Stdin bytes per frame.
    size: usize,
}

impl FrameWriter {
    fn new(tx: tokio::sync::mpsc::Sender<Vec<u8>>, size: usize) -> Self {
        let size = size.clamp(1, MAX_FRAME);
        FrameWriter {
            tx,
            frame: Self::empty(size),
            size,
        }
    }

    fn empty(size: usize) -> Vec<u8> {
        let mut frame = Vec::with_capacity(size + 1);
        frame.push(0); // the stdin channel
        frame
    }

    fn send(&mut self) -> io::Result<()> {
        if self.frame.len() <= 1 {
            return Ok(());
        }
        let frame = std::mem::replace(&mut self.frame, Self::empty(self.size));
        self.tx.blocking_send(frame).map_err(|_| {
            io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the remote command stopped reading",
            )
        })
    }
}

impl Write for FrameWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let room = self.size + 1 - self.frame.len();
        let n = buf.len().min(room);
        self.frame.extend_from_slice(&buf[..n]);
        if self.frame.len() == self.size + 1 {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send()
    }
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

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_carry_the_stdin_channel_and_split_at_frame_size() {
        // The size asked for, and one the writer must cap.
        for (asked, size) in [(256 * 1024, 256 * 1024), (4 * MAX_FRAME, MAX_FRAME)] {
            let (tx, mut rx) = tokio::sync::mpsc::channel(16);
            let mut w = FrameWriter::new(tx, asked);
            let data = vec![7u8; size + 10];
            w.write_all(&data).unwrap();
            w.flush().unwrap();
            drop(w);
            let first = rx.blocking_recv().unwrap();
            let second = rx.blocking_recv().unwrap();
            assert!(rx.blocking_recv().is_none());
            assert_eq!((first[0], first.len()), (0, size + 1));
            assert_eq!((second[0], second.len()), (0, 11));
        }
    }

    #[test]
    fn a_closed_socket_is_a_broken_pipe_for_the_writer() {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        drop(rx);
        let mut w = FrameWriter::new(tx, MAX_FRAME);
        let err = w.write_all(&vec![1u8; MAX_FRAME * 2]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
    }

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
