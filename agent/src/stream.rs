//! The image stream as the agent reads it: from the exec's stdin, or from a peer agent
//! (relay); checked entry by entry as it passes (only `oci-layout`, `index.json` and
//! `blobs/sha256/<hex>` regular files, and `index.json` must be the one the plugin wrote);
//! and passed on, byte for byte, to the peers this node relays to.
//!
//! The importer behind it (ctr, or the OCI-dir stager for skopeo) checks every blob against
//! its digest; this check adds the one thing a blob name cannot vouch for, the index that
//! names the image, so a stream that did not come from the plugin is never imported under
//! the image's names. Relay traffic also carries a per-run token.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc::{SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use sideload_agent::protocol::{self, Relay, RelaySource};

/// How long a relay connection may stay silent, or a peer's queue stay full, before the
/// other side counts as gone (a deleted pod's connections never close: its network goes,
/// and with it any chance of a FIN).
pub const STALL: Duration = Duration::from_secs(20);
/// Chunks (up to 1 MiB each) queued per peer.
const QUEUED: usize = 16;

/// The stream's bytes, and what became of each peer.
pub struct Stream {
    /// The decoded stream: the raw source through [`Tee`], then through the frame
    /// decoder when the stream is framed.
    input: Box<dyn Read>,
    tee: Arc<Mutex<Tee>>,
    /// The plugin's streams are OCI layouts with a known index; other uses of `run`
    /// (a benchmark's raw bytes) are passed through unchecked.
    check: Option<Check>,
    /// Decoded bytes read so far.
    pub read: u64,
}

/// The raw source, passing every byte on to the peers as it is read: peers get the wire
/// bytes (frames and all) and decode them themselves.
struct Tee {
    source: Box<dyn Read + Send>,
    peers: Vec<Peer>,
    /// The source failed (went silent, or broke): nothing more will come from it.
    failed: bool,
}

/// [`Tee`] behind a lock, readable (the decoder owns one end, `finish` needs the peers).
struct SharedTee(Arc<Mutex<Tee>>);

impl Read for SharedTee {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut tee = self
            .0
            .lock()
            .map_err(|_| io::Error::other("tee poisoned"))?;
        tee.read(buf)
    }
}

impl Read for Tee {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = match self.source.read(buf) {
            Ok(n) => n,
            Err(e) => {
                self.failed |= e.kind() != io::ErrorKind::Interrupted;
                return Err(e);
            }
        };
        if n > 0 && self.peers.iter().any(|p| p.queue.is_some()) {
            let chunk: Arc<[u8]> = Arc::from(&buf[..n]);
            for peer in &mut self.peers {
                peer.send(&chunk);
            }
        }
        Ok(n)
    }
}

/// A peer this node feeds. Its own thread writes to it from a bounded queue, so a slow or
/// dead peer never stalls this node's import or its other peers: a peer that cannot keep
/// up for [`STALL`] is dropped, and is loaded directly instead.
struct Peer {
    addr: String,
    queue: Option<SyncSender<Arc<[u8]>>>,
    writer: Option<std::thread::JoinHandle<()>>,
    /// Why it was dropped, if it was (set here, or by its writer thread).
    failed: Arc<Mutex<Option<String>>>,
}

impl Stream {
    /// The exec's stdin, with no relay.
    /// `manifest_digest`: the stream also carries a docker-archive `manifest.json` with
    /// this digest ([`protocol::Run::manifest_digest`]).
    pub fn stdin(
        index_digest: Option<String>,
        manifest_digest: Option<String>,
        framed: bool,
    ) -> Stream {
        Stream::over(
            Box::new(io::stdin()),
            Vec::new(),
            index_digest.map(|d| Check::new(Some(d)).with_manifest(manifest_digest)),
            framed,
        )
    }

    fn over(
        source: Box<dyn Read + Send>,
        peers: Vec<Peer>,
        check: Option<Check>,
        framed: bool,
    ) -> Stream {
        let tee = Arc::new(Mutex::new(Tee {
            source,
            peers,
            failed: false,
        }));
        let raw = SharedTee(tee.clone());
        let input: Box<dyn Read> = if framed {
            Box::new(sideload_agent::frames::Deframer::new(raw))
        } else {
            Box::new(raw)
        };
        Stream {
            input,
            tee,
            check,
            read: 0,
        }
    }

    /// A checked stream of these bytes (tests of what reads it).
    #[cfg(test)]
    pub fn of_bytes(bytes: Vec<u8>, index_digest: &str) -> Stream {
        Stream::over(
            Box::new(io::Cursor::new(bytes)),
            Vec::new(),
            Some(Check::new(Some(index_digest.to_string()))),
            false,
        )
    }

    /// The source failed (went silent, or broke): nothing more will come from it.
    pub fn source_failed(&self) -> bool {
        self.tee.lock().map(|t| t.failed).unwrap_or(true)
    }

    /// A relay member's stream: its peers connected (those that answer within the
    /// connect window), then its source: stdin for the head of the relay, else the first
    /// peer of ours that connects with the run's token.
    pub fn relay(relay: &Relay, framed: bool) -> Result<Stream, Source> {
        // Listen first, so the peers upstream can connect while we connect ours.
        let listener = match &relay.source {
            RelaySource::Stdin => None,
            RelaySource::Listen { port, .. } => Some(
                TcpListener::bind(("0.0.0.0", *port))
                    .map_err(|e| Source::Failed(format!("cannot listen on port {port}: {e}")))?,
            ),
        };
        let connect_window = Duration::from_secs(relay.connect_secs.max(1));
        let peers = relay
            .peers
            .iter()
            .map(|addr| connect(addr, &relay.token, connect_window))
            .collect();
        let source: Box<dyn Read + Send> = match (&relay.source, listener) {
            (RelaySource::Listen { wait_secs, .. }, Some(listener)) => Box::new(accept(
                &listener,
                &relay.token,
                Duration::from_secs(*wait_secs),
            )?),
            _ => Box::new(io::stdin()),
        };
        Ok(Stream::over(
            source,
            peers,
            Some(
                Check::new(Some(relay.index_digest.clone()))
                    .with_manifest(relay.manifest_digest.clone()),
            ),
            framed,
        ))
    }

    /// The next bytes start a new tar (a part of a cut stream) whose `index.json` (and
    /// `manifest.json`, where it carries one) must have these digests. Streams read
    /// unchecked stay unchecked.
    pub fn expect_part(&mut self, part: &protocol::Part) {
        if self.check.is_some() {
            self.check = Some(
                Check::new(Some(part.index_digest.clone()))
                    .with_manifest(part.manifest_digest.clone()),
            );
        }
    }

    /// Whether any peer is still fed.
    pub fn feeds_peers(&self) -> bool {
        self.tee
            .lock()
            .map(|t| t.peers.iter().any(|p| p.queue.is_some()))
            .unwrap_or(false)
    }

    /// Ends the stream for the peers: what is queued is written, then their connections
    /// close. Returns one line per peer for stderr: where the stream went on to.
    pub fn finish(&mut self) -> Vec<String> {
        let Ok(mut tee) = self.tee.lock() else {
            return Vec::new();
        };
        for peer in &mut tee.peers {
            peer.queue = None; // its writer drains the queue, then ends
            if let Some(writer) = peer.writer.take() {
                let _ = writer.join();
            }
        }
        tee.peers
            .iter()
            .map(|p| match p.failed.lock().ok().and_then(|f| f.clone()) {
                None => format!("relayed to {}", p.addr),
                Some(why) => format!("not relayed to {}: {why}", p.addr),
            })
            .collect()
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.input.read(buf)?;
        if n == 0 {
            return Ok(0);
        }
        if let Some(check) = &mut self.check {
            check
                .feed(&buf[..n])
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        }
        self.read += n as u64;
        Ok(n)
    }
}

/// Why a relay member got no stream.
#[derive(Debug)]
pub enum Source {
    /// Nobody connected in time (the upstream could not reach us, or failed first).
    NoConnection(String),
    Failed(String),
}

impl Peer {
    fn dropped(addr: &str, why: String) -> Peer {
        Peer {
            addr: addr.to_string(),
            queue: None,
            writer: None,
            failed: Arc::new(Mutex::new(Some(why))),
        }
    }

    fn fail(&mut self, why: String) {
        if let Ok(mut failed) = self.failed.lock()
            && failed.is_none()
        {
            *failed = Some(why);
        }
        self.queue = None;
    }

    /// Queues a chunk; a peer whose queue stays full for [`STALL`] is dropped.
    fn send(&mut self, chunk: &Arc<[u8]>) {
        let Some(queue) = &self.queue else {
            return;
        };
        let since = Instant::now();
        let mut chunk = chunk.clone();
        loop {
            match queue.try_send(chunk) {
                Ok(()) => return,
                Err(TrySendError::Full(back)) if since.elapsed() < STALL => {
                    chunk = back;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(TrySendError::Full(_)) => {
                    return self.fail(format!("it did not keep up for {}s", STALL.as_secs()));
                }
                Err(TrySendError::Disconnected(_)) => {
                    return self.fail("its connection failed".into());
                }
            }
        }
    }
}

fn connect(addr: &str, token: &str, window: Duration) -> Peer {
    let deadline = Instant::now() + window;
    let parsed: Result<SocketAddr, _> = addr.parse();
    let Ok(sock) = parsed else {
        return Peer::dropped(addr, "not an address".into());
    };
    let mut last = String::new();
    while Instant::now() < deadline {
        match TcpStream::connect_timeout(&sock, Duration::from_secs(1)) {
            Ok(mut conn) => {
                let _ = conn.set_nodelay(true);
                let _ = conn.set_write_timeout(Some(STALL));
                if conn.write_all(format!("{token}\n").as_bytes()).is_ok() {
                    return feed(addr, conn);
                }
            }
            Err(e) => last = e.to_string(),
        }
        // The peer's agent may not listen yet: its exec starts alongside ours.
        std::thread::sleep(Duration::from_millis(100));
    }
    Peer::dropped(
        addr,
        format!("no connection within {}s ({last})", window.as_secs()),
    )
}

/// A connected peer and the thread that writes its queue to it.
fn feed(addr: &str, mut conn: TcpStream) -> Peer {
    let (queue, chunks) = sync_channel::<Arc<[u8]>>(QUEUED);
    let failed = Arc::new(Mutex::new(None));
    let slot = failed.clone();
    let writer = crate::host::thread().spawn(move || {
        for chunk in chunks {
            if let Err(e) = conn.write_all(&chunk) {
                if let Ok(mut f) = slot.lock() {
                    *f = Some(format!("it stopped reading ({e})"));
                }
                return;
            }
        }
        let _ = conn.flush();
    });
    match writer {
        Ok(writer) => Peer {
            addr: addr.to_string(),
            queue: Some(queue),
            writer: Some(writer),
            failed,
        },
        Err(e) => Peer::dropped(addr, format!("cannot start a writer thread: {e}")),
    }
}

/// The first connection that presents the run's token; others are closed.
fn accept(
    listener: &TcpListener,
    token: &str,
    wait: Duration,
) -> Result<BufReader<TcpStream>, Source> {
    let deadline = Instant::now() + wait;
    listener
        .set_nonblocking(true)
        .map_err(|e| Source::Failed(e.to_string()))?;
    while Instant::now() < deadline {
        match listener.accept() {
            Ok((conn, _)) => {
                let _ = conn.set_nonblocking(false);
                // An upstream whose pod was deleted never closes its connection.
                let _ = conn.set_read_timeout(Some(STALL));
                let mut reader = BufReader::new(conn);
                let mut line = String::new();
                let presented = (&mut reader).take(256).read_line(&mut line).is_ok()
                    && constant_time_eq(line.trim_end().as_bytes(), token.as_bytes());
                if presented {
                    return Ok(reader);
                }
                eprintln!("sideload-agent: a relay connection without the run's token was closed");
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => return Err(Source::Failed(e.to_string())),
        }
    }
    Err(Source::NoConnection(format!(
        "no relay peer connected within {}s",
        wait.as_secs()
    )))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Walks the tar structure as bytes pass: 512-byte headers, contents, padding; checks
/// `index.json` against the digest the plugin announced and every blob against the digest
/// it is named by, before its last bytes reach the importer (relay peers check for
/// themselves). So a byte corrupted on the way fails the import with a message that says
/// so (containerd's importer would store the blob under its actual digest and fail later,
/// on "not found").
struct Check {
    index_digest: Option<String>,
    /// The announced `manifest.json`'s digest; `None`: the stream must carry none.
    manifest_digest: Option<String>,
    header: Vec<u8>,
    state: State,
    zero_blocks: u8,
}

enum State {
    Header,
    Content {
        left: u64,
        pad: u64,
        /// The member's hash so far, and what it must come to.
        hasher: Option<(Sha256, Expect)>,
    },
    Padding(u64),
    End,
    /// The stream failed a check: every later read fails the same way (a reader that
    /// drains the rest must not spin on a half-walked member).
    Failed(String),
}

enum Expect {
    Index(String),
    Manifest(String),
    Blob(String),
}

impl Expect {
    /// Whether a member's bytes, hashed, came to what they must.
    fn verify(&self, hasher: Sha256) -> Result<(), String> {
        let got = hex::encode(hasher.finalize());
        match self {
            Expect::Index(want) if got != *want => Err(format!(
                "the stream's index.json (sha256:{got}) is not the one the plugin sent \
                 (sha256:{want})"
            )),
            Expect::Manifest(want) if got != *want => Err(format!(
                "the stream's manifest.json (sha256:{got}) is not the one the plugin sent \
                 (sha256:{want})"
            )),
            Expect::Blob(want) if got != *want => Err(corrupted(want, &got)),
            _ => Ok(()),
        }
    }
}

/// A blob whose bytes do not hash to its name.
pub fn corrupted(expected: &str, actual: &str) -> String {
    format!(
        "blob sha256:{expected} arrived with digest sha256:{actual}: {}",
        crate::protocol::CORRUPTED
    )
}

impl Check {
    fn new(index_digest: Option<String>) -> Check {
        Check {
            index_digest,
            manifest_digest: None,
            header: Vec::with_capacity(512),
            state: State::Header,
            zero_blocks: 0,
        }
    }

    fn with_manifest(mut self, manifest_digest: Option<String>) -> Check {
        self.manifest_digest = manifest_digest;
        self
    }

    fn feed(&mut self, data: &[u8]) -> Result<(), String> {
        if let State::Failed(why) = &self.state {
            return Err(why.clone());
        }
        self.walk(data)
            .inspect_err(|why| self.state = State::Failed(why.clone()))
    }

    fn walk(&mut self, mut data: &[u8]) -> Result<(), String> {
        while !data.is_empty() {
            match &mut self.state {
                State::End => return Ok(()), // trailing zeros up to the announced length
                State::Failed(why) => return Err(why.clone()),
                State::Header => {
                    let take = (512 - self.header.len()).min(data.len());
                    self.header.extend_from_slice(&data[..take]);
                    data = &data[take..];
                    if self.header.len() == 512 {
                        let header = std::mem::take(&mut self.header);
                        self.state = self.entry(&header)?;
                    }
                }
                State::Content { left, pad, hasher } => {
                    let take = (*left).min(data.len() as u64) as usize;
                    if let Some((h, _)) = hasher {
                        h.update(&data[..take]);
                    }
                    *left -= take as u64;
                    data = &data[take..];
                    // Checked once the member's bytes are all in hand, before the last of
                    // them are passed on.
                    if *left == 0 {
                        if let Some((h, expect)) = hasher.take() {
                            expect.verify(h)?;
                        }
                        self.state = State::Padding(*pad);
                    }
                }
                State::Padding(left) => {
                    let take = (*left).min(data.len() as u64) as usize;
                    *left -= take as u64;
                    data = &data[take..];
                    if *left == 0 {
                        self.state = State::Header;
                    }
                }
            }
        }
        Ok(())
    }

    fn entry(&mut self, header: &[u8]) -> Result<State, String> {
        if header.iter().all(|&b| b == 0) {
            self.zero_blocks += 1;
            return Ok(if self.zero_blocks == 2 {
                State::End
            } else {
                State::Header
            });
        }
        self.zero_blocks = 0;
        let field = |range: std::ops::Range<usize>| {
            let raw = &header[range];
            let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
            String::from_utf8_lossy(&raw[..end]).into_owned()
        };
        let mut name = field(0..100);
        let prefix = field(345..500);
        if !prefix.is_empty() {
            name = format!("{prefix}/{name}");
        }
        let size_text = field(124..136);
        let size = u64::from_str_radix(size_text.trim(), 8)
            .map_err(|_| format!("tar entry {name:?} has a bad size {size_text:?}"))?;
        let kind = header[156];
        if kind != b'0' && kind != 0 {
            return Err(format!("tar entry {name:?} is not a regular file"));
        }
        let allowed = match name.as_str() {
            "oci-layout" | "index.json" => true,
            // Only where announced: Docker's `docker load` reads it, and it names tags.
            "manifest.json" => self.manifest_digest.is_some(),
            other => other.strip_prefix("blobs/sha256/").is_some_and(|hex| {
                hex.len() == 64
                    && hex
                        .bytes()
                        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            }),
        };
        if !allowed {
            return Err(format!("unexpected tar entry {name:?} in the stream"));
        }
        let expect = match (name.as_str(), &self.index_digest) {
            ("index.json", Some(d)) => Some(Expect::Index(d.clone())),
            ("index.json" | "oci-layout", _) => None,
            ("manifest.json", _) => self.manifest_digest.clone().map(Expect::Manifest),
            (blob, _) => blob
                .strip_prefix("blobs/sha256/")
                .map(|hex| Expect::Blob(hex.to_string())),
        };
        let pad = (512 - size % 512) % 512;
        Ok(if size == 0 {
            // An empty member never reaches the content state: checked here.
            if let Some(expect) = &expect {
                expect.verify(Sha256::new())?;
            }
            State::Padding(pad)
        } else {
            State::Content {
                left: size,
                pad,
                hasher: expect.map(|e| (Sha256::new(), e)),
            }
        })
    }
}

#[cfg(test)]
impl Peer {
    /// Closes the queue, waits for the writer, and says why the peer failed, if it did.
    fn finish_one(&mut self) -> Option<String> {
        self.queue = None;
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
        self.failed.lock().unwrap().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::tar_of;

    fn feed_in_pieces(check: &mut Check, data: &[u8], piece: usize) -> Result<(), String> {
        data.chunks(piece).try_for_each(|c| check.feed(c))
    }

    #[test]
    fn the_plugins_index_passes_another_does_not() {
        let index = br#"{"schemaVersion":2}"#;
        let digest = hex::encode(Sha256::digest(index));
        let blob = b"layer";
        let tar = tar_of(&[
            ("oci-layout", b"{}"),
            ("index.json", index),
            (
                &format!("blobs/sha256/{}", hex::encode(Sha256::digest(blob))),
                blob,
            ),
        ]);
        for piece in [1, 7, 512, 100_000] {
            let mut ok = Check::new(Some(digest.clone()));
            feed_in_pieces(&mut ok, &tar, piece).unwrap();
            assert!(matches!(ok.state, State::End), "piece {piece}");
            let mut other = Check::new(Some("0".repeat(64)));
            let err = feed_in_pieces(&mut other, &tar, piece).unwrap_err();
            assert!(err.contains("not the one the plugin sent"), "{err}");
        }
    }

    #[test]
    fn a_blob_that_does_not_hash_to_its_name_is_caught_before_its_last_byte_goes_on() {
        let blob = b"layer bytes";
        let name = format!("blobs/sha256/{}", hex::encode(Sha256::digest(blob)));
        let tar = tar_of(&[(name.as_str(), b"layer bytez"), ("index.json", b"{}")]);
        for piece in [1, 512, 100_000] {
            let mut check = Check::new(None);
            let err = feed_in_pieces(&mut check, &tar, piece).unwrap_err();
            assert!(err.contains("corrupted in transit"), "{err}");
            // Failed for good: a reader draining the rest gets the same error, at once.
            assert_eq!(check.feed(&[0; 512]).unwrap_err(), err);
        }
        // An empty member is checked too.
        let empty = format!("blobs/sha256/{}", hex::encode(Sha256::digest(blob)));
        let mut check = Check::new(None);
        let err = check.feed(&tar_of(&[(&empty, b"")])).unwrap_err();
        assert!(err.contains("corrupted in transit"), "{err}");
    }

    #[test]
    fn a_manifest_json_passes_only_where_announced_and_only_the_plugins() {
        let index = br#"{"schemaVersion":2}"#;
        let manifest = br#"[{"Config":"blobs/sha256/x"}]"#;
        let digest = |b: &[u8]| hex::encode(Sha256::digest(b));
        let tar = tar_of(&[("index.json", index), ("manifest.json", manifest)]);
        let mut ok = Check::new(Some(digest(index))).with_manifest(Some(digest(manifest)));
        feed_in_pieces(&mut ok, &tar, 100).unwrap();
        assert!(matches!(ok.state, State::End));
        let mut unannounced = Check::new(Some(digest(index)));
        let err = feed_in_pieces(&mut unannounced, &tar, 100).unwrap_err();
        assert!(
            err.contains("unexpected tar entry \"manifest.json\""),
            "{err}"
        );
        let mut other = Check::new(Some(digest(index))).with_manifest(Some("0".repeat(64)));
        let err = feed_in_pieces(&mut other, &tar, 100).unwrap_err();
        assert!(
            err.contains("manifest.json") && err.contains("not the one"),
            "{err}"
        );
    }

    #[test]
    fn foreign_entries_are_refused() {
        for name in ["etc/passwd", "blobs/sha256/abc", "../x"] {
            let mut h = tar::Header::new_gnu();
            h.set_size(0);
            let mut raw = h.as_bytes().to_vec();
            raw[..100].fill(0);
            raw[..name.len()].copy_from_slice(name.as_bytes());
            let mut header = tar::Header::from_byte_slice(&raw).clone();
            header.set_cksum();
            let mut check = Check::new(None);
            assert!(check.feed(header.as_bytes()).is_err(), "{name}");
        }
    }

    #[test]
    fn relay_tokens_gate_connections() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let intruder = {
            let addr = addr.clone();
            std::thread::spawn(move || {
                let mut c = TcpStream::connect(&addr).unwrap();
                c.write_all(b"wrong\n").unwrap();
            })
        };
        intruder.join().unwrap();
        let sender = std::thread::spawn(move || {
            let mut peer = connect(&addr, "s3cret", Duration::from_secs(5));
            peer.send(&Arc::from(&b"payload"[..]));
            assert_eq!(peer.finish_one(), None);
        });
        let mut got = accept(&listener, "s3cret", Duration::from_secs(5)).unwrap();
        sender.join().unwrap();
        let mut text = String::new();
        got.read_to_string(&mut text).unwrap();
        assert_eq!(text, "payload");
        let lonely = TcpListener::bind("127.0.0.1:0").unwrap();
        assert!(matches!(
            accept(&lonely, "x", Duration::from_millis(200)),
            Err(Source::NoConnection(_))
        ));
    }
}
