//! What the plugin asks the agent and what the agent answers.
//!
//! Questions ([`Query`] → [`Answer`]) go over one exec per node, `AGENT_PATH session`: one
//! JSON document per line each way. Work with a stream is `AGENT_PATH run <Run JSON>`: the
//! request travels in argv, the bulk data on stdin, and the child writes its own output. Host paths are absolute paths as the node sees them (the agent has entered the
//! host root before it resolves any of them).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Where the helper pod mounts the agent's ConfigMap (the directory) …
pub const AGENT_DIR: &str = "/.sideload";
/// … and the agent binary inside it: the container's command and every exec's argv[0].
pub const AGENT_PATH: &str = "/.sideload/agent";
/// Where the helper pod mounts the host's root filesystem (read-only).
pub const HOST_ROOT: &str = "/host";
/// Where the helper pod mounts its scratch volume (an emptyDir), for staging on CRI-O nodes.
pub const SCRATCH: &str = "/.sideload-scratch";

/// `PATH` of every host command the agent runs; nothing of the container's environment is
/// passed on.
pub const HOST_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Exit code of the agent itself failing (bad request, stream cut short, …), as opposed to
/// the exit code of the host command it ran; its stderr then starts with `sideload-agent:`.
pub const AGENT_FAILED: i32 = 125;
/// What the agent's message says when a blob's bytes do not hash to its name.
pub const CORRUPTED: &str = "corrupted in transit";
/// Exit code when stdin ended before the announced number of bytes arrived.
pub const STREAM_SHORT: i32 = 124;
/// Exit code when a command ran past its timeout and was killed.
pub const TIMED_OUT: i32 = 123;
/// Exit code of a relay member that no peer connected to in time: load it directly.
pub const NO_RELAY_SOURCE: i32 = 122;

/// The verbs, i.e. argv[1].
pub mod verb {
    /// The container's main process: waits (reaping orphans) until stopped.
    pub const PAUSE: &str = "pause";
    /// Runs one host command with stdin handled as asked: [`super::Run`]; the exit code is
    /// the command's.
    pub const RUN: &str = "run";
    /// [`super::Query`]s one per line on stdin, each answered by one [`super::Answer`] line
    /// on stdout, until an empty line (or the end of stdin): every question about a node in
    /// one exec, however many depend on earlier answers.
    pub const SESSION: &str = "session";
    /// Prints the agent's version and exits.
    pub const VERSION: &str = "version";
}

/// What to learn about the host in one exec: facts first (no host program runs for them),
/// then `commands`, each independent of the others.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Query {
    /// Paths to `lstat` (then `stat`, following links).
    #[serde(default)]
    pub paths: Vec<String>,
    /// Text files to read whole (at most [`MAX_FILE`] bytes each).
    #[serde(default)]
    pub files: Vec<String>,
    /// Directories to list (names only, sorted).
    #[serde(default)]
    pub dirs: Vec<String>,
    /// `GET` requests over a unix socket (CRI-O serves its running config this way).
    #[serde(default)]
    pub http: Vec<HttpGet>,
    /// Host commands, run one after another with their output captured.
    #[serde(default)]
    pub commands: Vec<Command>,
}

/// Longest request line a [`verb::SESSION`] reads; longer is an error.
pub const MAX_SESSION_LINE: u64 = 1 << 20;

/// Largest file [`Query::files`] returns; longer ones are an error, never cut.
pub const MAX_FILE: u64 = 4 << 20;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpGet {
    pub socket: String,
    pub path: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PathKind {
    Missing,
    Socket,
    Dir,
    File,
    Other,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathFact {
    pub kind: PathKind,
    /// A regular file with an execute bit.
    pub executable: bool,
}

/// A read that may fail: the text, or why not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Read<T> {
    Ok(T),
    Err(String),
}

impl<T> From<Result<T, String>> for Read<T> {
    fn from(result: Result<T, String>) -> Self {
        match result {
            Ok(t) => Read::Ok(t),
            Err(e) => Read::Err(e),
        }
    }
}

impl<T> Read<T> {
    pub fn ok(&self) -> Option<&T> {
        match self {
            Read::Ok(t) => Some(t),
            Read::Err(_) => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpResponse {
    pub status: u16,
    pub body: String,
}

/// The answer to a [`Query`]; every map has an entry for every path asked, and
/// `results` one per command, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answer {
    /// The agent's version ([`crate`]'s package version and protocol revision).
    pub agent: String,
    pub paths: BTreeMap<String, PathFact>,
    pub files: BTreeMap<String, Read<String>>,
    pub dirs: BTreeMap<String, Read<Vec<String>>>,
    /// In the order asked.
    pub http: Vec<Read<HttpResponse>>,
    pub results: Vec<CommandResult>,
}

/// One host command: an absolute path on the host and its arguments, never a shell
/// string. Its environment is [`HOST_PATH`] plus `env`, nothing else.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    pub argv: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Killed after this long (exit code [`TIMED_OUT`]); none when absent. In a [`Run`],
    /// the first command's timeout bounds the whole run, streaming included.
    #[serde(default)]
    pub timeout_secs: Option<u64>,
}

impl Command {
    pub fn new<S: Into<String>>(argv: impl IntoIterator<Item = S>) -> Self {
        Command {
            argv: argv.into_iter().map(Into::into).collect(),
            ..Default::default()
        }
    }

    pub fn timeout(mut self, secs: u64) -> Self {
        self.timeout_secs = Some(secs);
        self
    }
}

/// Most of a query command's stdout or stderr that is kept; the rest is dropped and
/// `truncated` says so (a listing cut short must never pass for a whole one).
pub const MAX_OUTPUT: usize = 8 << 20;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandResult {
    /// The command's exit code; [`TIMED_OUT`] if killed for its timeout, [`AGENT_FAILED`]
    /// if it could not be started (then `stderr` says why), 128+N when killed by signal N.
    pub exit_code: i32,
    pub stdout: String,
    pub stderr: String,
    /// stdout or stderr exceeded [`MAX_OUTPUT`].
    pub truncated: bool,
}

/// Host commands fed from the exec's stdin, run one after another until one fails: the
/// first gets the stream (or the staged directory is ready before it starts), the others
/// run after it with no stdin. The exit code is the first non-zero one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Run {
    pub commands: Vec<Command>,
    pub stdin: Stdin,
    /// Host directories made writable for this command only (a private mount namespace of
    /// this process; the node's own mounts never change). CRI-O nodes: the storage CRI-O
    /// reads is written by the node's skopeo directly.
    #[serde(default)]
    pub writable: Vec<String>,
    /// A host directory the pod's scratch volume ([`SCRATCH`]) is bound over for this
    /// command only: where staged files go, removed with the pod.
    #[serde(default)]
    pub scratch_at: Option<String>,
    /// Small files (path → text) written before the commands run and removed after them;
    /// each path must lie directly in `scratch_at` (configuration a host tool reads).
    #[serde(default)]
    pub files: BTreeMap<String, String>,
    /// sha256 (hex) of the `index.json` the stream must carry: the one the plugin wrote.
    #[serde(default)]
    pub index_digest: Option<String>,
    /// sha256 (hex) of the docker-archive `manifest.json` the stream carries beside its
    /// `index.json` (Docker Engine's `docker load` reads that file, not the index); absent:
    /// a `manifest.json` in the stream is refused.
    #[serde(default)]
    pub manifest_digest: Option<String>,
    /// The stream travels in frames, compressed where that pays (agent/src/frames.rs);
    /// the announced lengths are of the decoded stream.
    #[serde(default)]
    pub framed: bool,
    /// Where the stream comes from and goes on to when nodes relay it to each other;
    /// absent: from the exec's stdin, to nobody.
    #[serde(default)]
    pub relay: Option<Relay>,
    /// The stream cut into parts, one after another, each a whole OCI-layout tar whose
    /// `index.json` has the part's digest; their lengths add up to the stream's. With
    /// [`Stdin::Pipe`] the first command runs once per part, fed that part, and part k's
    /// stdin closes only once the run for part k-1 has exited: part k arrives while part
    /// k-1 is imported, and the imports still happen one after another. Empty: one part
    /// (checked against `index_digest`).
    #[serde(default)]
    pub parts: Vec<Part>,
    /// Run last, whatever happened before (unless the whole run timed out): removing what
    /// the parts created on the way.
    #[serde(default)]
    pub finally: Vec<Command>,
}

impl Run {
    /// `command` fed exactly `bytes` bytes of stream on its stdin, and nothing else: no
    /// staging, no relay, one part (the plugin fills in digests, framing and relay).
    pub fn piped(command: Command, bytes: u64) -> Run {
        Run {
            commands: vec![command],
            stdin: Stdin::Pipe { bytes },
            writable: Vec::new(),
            scratch_at: None,
            files: BTreeMap::new(),
            index_digest: None,
            manifest_digest: None,
            framed: false,
            relay: None,
            parts: Vec::new(),
            finally: Vec::new(),
        }
    }
}

/// One part of a cut stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Part {
    pub bytes: u64,
    /// sha256 (hex) of the part's `index.json`.
    pub index_digest: String,
    /// sha256 (hex) of the part's docker-archive `manifest.json`, where the stream carries
    /// one ([`Run::manifest_digest`]): each part of a Docker Engine stream names its own
    /// (prefix) image there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest_digest: Option<String>,
    /// With [`Stdin::OciDir`]: run, in order, once this part is staged, while the parts
    /// after it arrive; they read the part's own layout at [`part_view`] (its `index.json`
    /// beside the staging directory's blobs). Each part's commands start once the part
    /// before's have exited, and the run's own commands once all have. A failure here is
    /// told and ends the parts' commands, never the run: the run's commands import the
    /// whole image whatever the parts left (they are a head start, not a dependency).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub commands: Vec<Command>,
}

/// Where part `k` (from 0) of a stream staged in `dir` can be read as a layout of its own
/// for [`Part::commands`]: the agent makes it, and removes it with `dir`.
pub fn part_view(dir: &str, k: usize) -> String {
    format!("{dir}.part{k}")
}

/// One node's part in a relay: the plugin uploads once, to the head; every member passes
/// the bytes on to its `peers` as they arrive, while importing them itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Relay {
    pub source: RelaySource,
    /// `ip:port` of the members this one feeds.
    #[serde(default)]
    pub peers: Vec<String>,
    /// A per-run secret every relay connection must present first.
    pub token: String,
    /// sha256 (hex) of the stream's `index.json`: a stream that names another image is
    /// refused before anything is imported.
    pub index_digest: String,
    /// sha256 (hex) of its `manifest.json`, when it carries one ([`Run::manifest_digest`]).
    #[serde(default)]
    pub manifest_digest: Option<String>,
    /// How long to keep trying to reach each peer.
    pub connect_secs: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "from", rename_all = "kebab-case")]
pub enum RelaySource {
    /// The head: the exec's stdin.
    Stdin,
    /// A member: the first connection on `port` that presents the token, within
    /// `wait_secs` (else exit [`NO_RELAY_SOURCE`]).
    Listen { port: u16, wait_secs: u64 },
}

/// The port relay members listen on, in their own pod's network namespace.
pub const RELAY_PORT: u16 = 7741;

/// How the exec's stdin reaches the command. Lengths are announced up front: the exec
/// protocol v4 has no stdin close, so the end of a stream must be known by count.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "kebab-case")]
pub enum Stdin {
    /// The command gets no stdin (/dev/null).
    None,
    /// Exactly `bytes` bytes of stdin are piped to the command, then its stdin closes. Fewer
    /// arriving is an error ([`STREAM_SHORT`]) and the command is killed.
    Pipe { bytes: u64 },
    /// Exactly `bytes` bytes of stdin are an OCI-layout tar (`oci-layout`, `index.json`,
    /// `blobs/sha256/<hex>` only), written into the new host directory `dir` with every
    /// blob checked against its name; then the command runs with no stdin, and `dir` is
    /// removed afterwards whatever happened.
    OciDir { bytes: u64, dir: String },
}

/// The agent's version string: what [`Answer::agent`] carries.
pub fn version() -> String {
    format!("sideload-agent {} (protocol 1)", env!("CARGO_PKG_VERSION"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_as_json() {
        let run = Run {
            commands: vec![Command::new(["/usr/bin/ctr", "images", "import", "-"]).timeout(5)],
            stdin: Stdin::OciDir {
                bytes: 42,
                dir: "/var/tmp/x".into(),
            },
            writable: vec!["/var/lib/containers/storage".into()],
            scratch_at: Some("/var/tmp".into()),
            files: [(
                "/var/tmp/storage.conf".to_string(),
                "[storage]\n".to_string(),
            )]
            .into(),
            index_digest: None,
            manifest_digest: Some("2".repeat(64)),
            framed: true,
            relay: Some(Relay {
                source: RelaySource::Listen {
                    port: RELAY_PORT,
                    wait_secs: 10,
                },
                peers: vec!["10.0.0.2:7741".into()],
                token: "t".into(),
                index_digest: "0".repeat(64),
                manifest_digest: None,
                connect_secs: 5,
            }),
            parts: vec![Part {
                bytes: 42,
                index_digest: "1".repeat(64),
                manifest_digest: Some("2".repeat(64)),
                commands: vec![Command::new(["/usr/bin/skopeo", "copy"])],
            }],
            finally: vec![Command::new(["/usr/bin/ctr", "images", "rm", "x"])],
        };
        let json = serde_json::to_string(&run).unwrap();
        assert!(json.contains(r#""mode":"oci-dir""#), "{json}");
        assert_eq!(serde_json::from_str::<Run>(&json).unwrap(), run);
        let query: Query = serde_json::from_str(r#"{"paths":["/x"]}"#).unwrap();
        assert_eq!(query.paths, ["/x"]);
        assert!(query.files.is_empty() && query.commands.is_empty());
        let read: Read<String> = serde_json::from_str(r#"{"err":"gone"}"#).unwrap();
        assert_eq!(read, Read::Err("gone".into()));
    }
}
