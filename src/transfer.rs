//! How bytes reach a node: one type owns a transfer's contract, and the relay plan says who
//! passes the stream on to whom.
//!
//! What is announced to the node (its length and its index's digest, in the agent's
//! request) is what is written, which is what the node reads: both are computed once, from
//! the same plan the writer follows, and a writer that would write another count is an
//! error, never a silently short or long stream.
//!
//! Relay: with several nodes that need the same stream, the plugin uploads it once, to the
//! head of a tree; every member's agent passes the bytes on to its children while it
//! imports them (agent/src/stream.rs). A binary tree keeps the depth at log2(N) and every
//! member's upload at two copies; a member nobody reaches in time, or whose upstream dies,
//! is loaded directly instead.

use std::collections::HashSet;
use std::io::{self, Write};
use std::sync::Arc;

use anyhow::Result;
use indicatif::ProgressBar;
use sideload_agent::frames::{self, CHUNK, RAW, ZSTD};
use sideload_agent::protocol::{self, Part, Run, Stdin};
use tokio_util::sync::CancellationToken;

use crate::archive::{Archive, PlatformImage, StreamPlan};
use crate::runtime::{Located, Wanted};

/// One node's stream: an OCI-layout tar of one platform image, named `refs`, without the
/// layers in `skip` (the node has them); cut into one part per layer when the node's runtime
/// imports parts (archive/parts.rs), so the node unpacks each layer while the next arrives.
#[derive(Clone)]
pub struct Transfer {
    archive: Arc<Archive>,
    skip: HashSet<String>,
    plan: StreamPlan,
    /// The one name the stream gives the image ([`staging_name`]).
    staged: String,
}

/// Repository of the prefix images a cut stream creates on a node for as long as its
/// import runs (`.invalid`: no registry can ever serve, or be asked for, such a name).
pub const PARTIAL_REPOSITORY: &str = "sideload.invalid/partial";

/// The name a stream gives its image, instead of the image's refs: runtimes that record
/// a name before the import is complete (containerd) get the real names only once the
/// import succeeded ([`Located::name_images`]), and this one is removed after. One per run,
/// so every node gets the same stream (and the same index digest) whatever its runtime.
pub fn staging_name(run_id: &str) -> String {
    format!("{PARTIAL_REPOSITORY}:{run_id}-image")
}

impl std::fmt::Debug for Transfer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transfer")
            .field("len", &self.len())
            .field("parts", &self.plan.parts().len())
            .finish_non_exhaustive()
    }
}

impl Transfer {
    /// `run_id` tells this run's staging and prefix images from another run's; `cut`: the
    /// stream is cut into parts, one per layer; `docker_load`: it also carries the
    /// `manifest.json` Docker Engine reads ([`Located::reads_docker_manifest`]).
    pub fn new(
        archive: Arc<Archive>,
        image: PlatformImage,
        skip: HashSet<String>,
        run_id: &str,
        cut: bool,
        docker_load: bool,
    ) -> Result<Self> {
        let staged = staging_name(run_id);
        let names = std::slice::from_ref(&staged);
        // `docker load` opens a layer by its place in the image, so a layer the image has
        // twice would be looked for in a part that does not carry it (the cut sends it
        // once): such an image goes whole.
        let cut = cut && !(docker_load && repeats_a_layer(&image));
        let mut plan = archive.stream_plan(
            &image,
            &skip,
            names,
            cut.then_some((PARTIAL_REPOSITORY, run_id)),
        )?;
        if docker_load {
            plan = plan.with_docker_manifest(&image, names)?;
        }
        Ok(Transfer {
            archive,
            skip,
            plan,
            staged,
        })
    }

    /// sha256 (hex) of the stream's (last part's) `index.json`, which the node agent checks.
    pub fn index_sha256(&self) -> &str {
        self.plan.index_sha256()
    }

    /// sha256 (hex) of the stream's `manifest.json`, when it carries one.
    pub fn manifest_sha256(&self) -> Option<&str> {
        self.plan.manifest_sha256()
    }

    /// The exact number of bytes [`Transfer::write`] writes: what the node is told to read.
    pub fn len(&self) -> u64 {
        self.plan.len()
    }

    /// How many parts the node imports one after another.
    pub fn parts(&self) -> usize {
        self.plan.parts().len()
    }

    /// Layers left out because the node holds them.
    pub fn reused(&self) -> usize {
        self.skip.len()
    }

    /// The agent's import request for this stream, as `located` imports it: the length,
    /// parts and index digests announced are this transfer's, so they match what
    /// [`Transfer::feed`] writes by construction.
    pub fn request(&self, located: &dyn Located, wanted: &Wanted, framed: bool) -> Run {
        let mut request = located.import(wanted, self.len());
        request.index_digest = Some(self.index_sha256().to_string());
        request.manifest_digest = self.manifest_sha256().map(str::to_string);
        request.framed = framed;
        request
            .commands
            .extend(located.name_images(&self.staged, &wanted.refs));
        let prefixes = self.plan.prefixes();
        if !prefixes.is_empty() {
            // A staging importer's parts are imported ahead, each from its own view of the
            // staging directory, while the next arrives.
            let staging = match &request.stdin {
                Stdin::OciDir { dir, .. } => Some(dir.clone()),
                _ => None,
            };
            request.parts = self
                .plan
                .parts()
                .iter()
                .enumerate()
                .map(|(k, p)| Part {
                    bytes: p.len,
                    index_digest: p.index_sha256.clone(),
                    manifest_digest: p.manifest_sha256.clone(),
                    commands: match (&staging, &p.prefix) {
                        (Some(dir), Some(prefix)) => {
                            located.import_part(wanted, &protocol::part_view(dir, k), &prefix.name)
                        }
                        _ => Vec::new(),
                    },
                })
                .collect();
        }
        request
            .finally
            .extend(located.remove_partial(&self.staged, &prefixes));
        request
    }

    /// What writes the stream into a node's exec: counted into the node's progress bar
    /// (stream bytes), framed and compressed where that pays when `framed` (as the
    /// [`Transfer::request`] with the same `framed` announces). Returns the bytes that
    /// went on the wire.
    /// `chunk` ([`chunk_for`]) is how much the framer gathers before it compresses and sends.
    pub fn feed(
        self,
        bar: ProgressBar,
        framed: bool,
        chunk: usize,
        stop: CancellationToken,
    ) -> impl FnOnce(&mut dyn Write) -> io::Result<u64> + Send + 'static {
        move |w: &mut dyn Write| {
            // Once the run stops, the next write fails: the stream ends short and the node
            // side discards what it staged, while the plugin waits for it to finish.
            let mut stopping = Stopping { inner: w, stop };
            let w: &mut dyn Write = &mut stopping;
            #[cfg(feature = "e2e")]
            let mut flipped = fault::Flip::from_env(w);
            #[cfg(feature = "e2e")]
            let w: &mut dyn Write = &mut flipped;
            #[cfg(feature = "e2e")]
            let mut paused = fault::Pause::from_env(w);
            #[cfg(feature = "e2e")]
            let w: &mut dyn Write = &mut paused;
            if !framed {
                return self.write(&mut Counting { inner: w, bar });
            }
            let mut framer = Framer::new(w, chunk)?;
            self.write(&mut Counting {
                inner: &mut framer,
                bar,
            })?;
            framer.flush()?;
            Ok(framer.wire)
        }
    }

    /// Writes the stream. A local read error (the archive file replaced or truncated since
    /// it was opened) is an error here, at once: the caller then drops the exec, and the
    /// node side sees its stream end short and discards what it got.
    pub fn write(&self, w: &mut dyn Write) -> io::Result<u64> {
        let written = self
            .archive
            .write_plan(&self.plan, w)
            .map_err(|e| io::Error::other(e.to_string()))?;
        if written != self.len() {
            return Err(io::Error::other(format!(
                "wrote {written} bytes of a stream announced as {} bytes",
                self.len()
            )));
        }
        Ok(written)
    }
}

/// Whether `image` lists one layer blob more than once.
fn repeats_a_layer(image: &PlatformImage) -> bool {
    let mut seen = HashSet::new();
    !image.layers.iter().all(|l| seen.insert(&l.digest))
}

/// The size of one stream's buffers (the framer's chunk, the exec's websocket frames) when
/// `streams` streams leave the client at once. A stream holds several buffers this big (the
/// chunk, its compressed copy, the frame being filled, one queued, one in the socket), so
/// they are cut as streams are added, and the client's memory stays near that of one stream
/// however many nodes are loaded directly (`--relay off`, or nodes that cannot relay). Alone,
/// a stream gets 1 MiB: fewer, larger frames are faster through the API server
/// (cluster/exec.rs); 256 KiB at least, where per-frame costs would start to dominate.
pub fn chunk_for(streams: usize) -> usize {
    (CHUNK / streams.max(1)).clamp(MIN_CHUNK, CHUNK)
}

/// The smallest [`chunk_for`].
const MIN_CHUNK: usize = 256 * 1024;

/// Cuts a stream into frames of at most `chunk` bytes (agent/src/frames.rs has the format), each
/// zstd-compressed where that saves a tenth or more, else sent as is: text-like layers
/// (what `docker save` writes uncompressed) shrink, random data and gzip layers cost one
/// quick attempt per chunk. The node decodes them into the very same bytes.
pub struct Framer<'a> {
    inner: &'a mut dyn Write,
    chunk: Vec<u8>,
    /// Bytes gathered per frame.
    size: usize,
    compressor: zstd::bulk::Compressor<'static>,
    /// The compressed chunk, one buffer for the whole stream: a new 1 MiB allocation per
    /// chunk, on as many threads as there are streams, is what grows an allocator's heap.
    compressed: Vec<u8>,
    /// Bytes that went out on the wire (frames and headers).
    pub wire: u64,
}

/// zstd level 1: the fastest level that still compresses text 3-4x.
const LEVEL: i32 = 1;

impl<'a> Framer<'a> {
    /// `chunk`: bytes per frame, at most the agent's [`CHUNK`] (what it decodes at most).
    pub fn new(inner: &'a mut dyn Write, chunk: usize) -> io::Result<Self> {
        let chunk = chunk.clamp(1, CHUNK);
        Ok(Framer {
            inner,
            chunk: Vec::with_capacity(chunk),
            size: chunk,
            compressor: zstd::bulk::Compressor::new(LEVEL)?,
            compressed: Vec::with_capacity(zstd::zstd_safe::compress_bound(chunk)),
            wire: 0,
        })
    }

    fn emit(&mut self) -> io::Result<()> {
        if self.chunk.is_empty() {
            return Ok(());
        }
        self.compressed.clear();
        self.compressor
            .compress_to_buffer(&self.chunk, &mut self.compressed)?;
        let (tag, payload) = if frames::pays(self.compressed.len(), self.chunk.len()) {
            (ZSTD, &self.compressed[..])
        } else {
            (RAW, &self.chunk[..])
        };
        let header = frames::header(tag, payload.len(), self.chunk.len());
        self.inner.write_all(&header)?;
        self.inner.write_all(payload)?;
        self.wire += (header.len() + payload.len()) as u64;
        self.chunk.clear();
        Ok(())
    }
}

impl Write for Framer<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = (self.size - self.chunk.len()).min(buf.len());
        self.chunk.extend_from_slice(&buf[..n]);
        if self.chunk.len() == self.size {
            self.emit()?;
        }
        Ok(n)
    }

    /// Sends the chunk so far as a frame (the end of the stream).
    fn flush(&mut self) -> io::Result<()> {
        self.emit()?;
        self.inner.flush()
    }
}

/// Counts bytes into the node's progress bar as they go out.
/// Fails every write once `stop` is cancelled (not with `ErrorKind::Interrupted`, which
/// `write_all` retries forever).
struct Stopping<'a> {
    inner: &'a mut dyn Write,
    stop: CancellationToken,
}

impl Write for Stopping<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.stop.is_cancelled() {
            return Err(io::Error::other("the run was stopped"));
        }
        self.inner.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

struct Counting<'a> {
    inner: &'a mut dyn Write,
    bar: ProgressBar,
}

impl Write for Counting<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.bar.inc(n as u64);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Faults for the e2e suite only (the `e2e` feature; never in a release build).
/// `SIDELOAD_E2E_FLIP_WIRE_BYTE=N` flips the bits of the Nth byte each stream puts on the
/// wire, after framing and compression, as a bad link or a hostile middlebox would.
/// `SIDELOAD_E2E_PAUSE_AT_BYTE=N` with `SIDELOAD_E2E_PAUSE_FILE=PATH`: the first stream to
/// reach its Nth byte creates PATH and holds until PATH is removed, so a test can break
/// something at a known point of a transfer (once per process: a retry is not held).
#[cfg(feature = "e2e")]
mod fault {
    use std::io::{self, Write};
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    static PAUSED_ONCE: AtomicBool = AtomicBool::new(false);

    pub struct Pause<'a> {
        inner: &'a mut dyn Write,
        at: Option<(u64, PathBuf)>,
        seen: u64,
    }

    impl<'a> Pause<'a> {
        pub fn from_env(inner: &'a mut dyn Write) -> Self {
            let at = std::env::var("SIDELOAD_E2E_PAUSE_AT_BYTE")
                .ok()
                .and_then(|v| v.parse().ok())
                .zip(std::env::var_os("SIDELOAD_E2E_PAUSE_FILE").map(PathBuf::from));
            Pause { inner, at, seen: 0 }
        }
    }

    impl Write for Pause<'_> {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if let Some((at, file)) = &self.at
                && self.seen + buf.len() as u64 > *at
                && !PAUSED_ONCE.swap(true, Ordering::SeqCst)
            {
                // Runs on the stream's blocking thread: sleeping here holds only it.
                std::fs::write(file, b"paused")?;
                while file.exists() {
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
            let n = self.inner.write(buf)?;
            self.seen += n as u64;
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            self.inner.flush()
        }
    }

    pub struct Flip<'a> {
        inner: &'a mut dyn Write,
        at: u64,
        seen: u64,
    }

    impl<'a> Flip<'a> {
        pub fn from_env(inner: &'a mut dyn Write) -> Self {
            let at = std::env::var("SIDELOAD_E2E_FLIP_WIRE_BYTE")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(u64::MAX);
            Flip { inner, at, seen: 0 }
        }
    }

    impl Write for Flip<'_> {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let end = self.seen + buf.len() as u64;
            if (self.seen..end).contains(&self.at) {
                let mut copy = buf.to_vec();
                copy[(self.at - self.seen) as usize] ^= 0xff;
                self.inner.write_all(&copy)?;
            } else {
                self.inner.write_all(buf)?;
            }
            self.seen = end;
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            self.inner.flush()
        }
    }
}

/// Children per relay member: each uploads the stream this many times (plus its own
/// import), and the tree is log2(N) deep.
pub const FANOUT: usize = 2;

/// The relay tree over `n` members in a fixed order: member `i` feeds `FANOUT*i+1 ..`.
/// Returns, for each member, the indexes it feeds.
pub fn relay_tree(n: usize) -> Vec<Vec<usize>> {
    (0..n)
        .map(|i| {
            (1..=FANOUT)
                .map(|k| FANOUT * i + k)
                .filter(|&c| c < n)
                .collect()
        })
        .collect()
}

/// How many hops the stream takes to reach the deepest member.
pub fn relay_depth(n: usize) -> usize {
    let mut depth = 0;
    let mut i = n.saturating_sub(1);
    while i > 0 {
        i = (i - 1) / FANOUT;
        depth += 1;
    }
    depth
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::Source;
    use crate::archive::testutil::{TestImage, docker_archive, write_temp};

    #[test]
    fn what_is_written_is_what_was_announced() {
        let img = TestImage::new(3, "linux/amd64", 2, 4096);
        let (_dir, path) = write_temp(&docker_archive(&img, &["app:v1"]).tar());
        let archive = Arc::new(Archive::open(&Source::Path(path)).unwrap());
        let image = archive.summary().images[0].clone();
        let all = Transfer::new(
            archive.clone(),
            image.clone(),
            HashSet::new(),
            "r1",
            false,
            false,
        )
        .unwrap();
        let mut out = Vec::new();
        assert_eq!(all.write(&mut out).unwrap(), all.len());
        assert_eq!(out.len() as u64, all.len());
        let skip = HashSet::from([image.layers[0].digest.clone()]);
        let less = Transfer::new(archive, image, skip, "r1", false, false).unwrap();
        assert!(less.len() < all.len());
        assert_eq!(less.reused(), 1);
    }

    #[test]
    fn the_announced_index_digest_is_the_written_index() {
        let img = TestImage::new(5, "linux/amd64", 1, 4096);
        let (_dir, path) = write_temp(&docker_archive(&img, &["app:v1"]).tar());
        let archive = Arc::new(Archive::open(&Source::Path(path)).unwrap());
        let image = archive.summary().images[0].clone();
        let t = Transfer::new(archive.clone(), image, HashSet::new(), "r1", false, false).unwrap();
        let mut out = Vec::new();
        t.write(&mut out).unwrap();
        let mut tar = tar::Archive::new(&out[..]);
        let mut index = Vec::new();
        for entry in tar.entries().unwrap() {
            let mut entry = entry.unwrap();
            if entry.path().unwrap().to_str() == Some("index.json") {
                std::io::Read::read_to_end(&mut entry, &mut index).unwrap();
            }
        }
        use sha2::{Digest, Sha256};
        assert_eq!(hex::encode(Sha256::digest(&index)), t.index_sha256());
        // The stream names the image by the run's staging name only: the runtime gets the
        // real refs once the import succeeded.
        let index = String::from_utf8(index).unwrap();
        assert!(index.contains(&staging_name("r1")), "{index}");
        assert!(!index.contains("app:v1"), "{index}");
    }

    /// A Docker Engine stream is cut like any other, each part announced with its own
    /// `manifest.json`; an image that lists one layer twice goes whole.
    #[test]
    fn a_docker_stream_is_cut_unless_the_image_repeats_a_layer() {
        let img = TestImage::new(7, "linux/amd64", 3, 4096);
        let (_dir, path) = write_temp(&docker_archive(&img, &["app:v1"]).tar());
        let archive = Arc::new(Archive::open(&Source::Path(path)).unwrap());
        let image = archive.summary().images[0].clone();
        let t = Transfer::new(archive, image.clone(), HashSet::new(), "r3", true, true).unwrap();
        assert_eq!(t.parts(), 3);
        let digests: Vec<_> = t
            .plan
            .parts()
            .iter()
            .map(|p| {
                p.manifest_sha256
                    .clone()
                    .expect("every part names its image")
            })
            .collect();
        assert_eq!(digests.len(), 3);
        assert!(digests[0] != digests[1] && digests[1] != digests[2]);
        assert_eq!(t.manifest_sha256(), Some(digests[2].as_str()));
        assert!(!repeats_a_layer(&image));
        let mut twice = image;
        twice.layers.push(twice.layers[0].clone());
        assert!(repeats_a_layer(&twice));
    }

    /// The relay plan for 100 and 1,000 nodes (issue 10): the client uploads once whatever
    /// N is, every member uploads at most FANOUT copies, and the depth is O(log N).
    #[test]
    fn relay_trees_reach_everyone_once_in_log_depth() {
        for n in [1, 2, 3, 4, 5, 100, 1000] {
            let tree = relay_tree(n);
            let mut fed = vec![0usize; n];
            for children in &tree {
                assert!(children.len() <= FANOUT);
                for &c in children {
                    fed[c] += 1;
                }
            }
            assert_eq!(fed[0], 0, "the head is fed by the client alone");
            assert!(
                fed[1..].iter().all(|&f| f == 1),
                "n={n}: every member fed once"
            );
            let bound = (n as f64).log2().ceil() as usize;
            assert!(
                relay_depth(n) <= bound.max(1),
                "n={n}: depth {}",
                relay_depth(n)
            );
        }
        assert_eq!(relay_depth(1000), 9);
        assert_eq!(relay_tree(4), vec![vec![1, 2], vec![3], vec![], vec![]]);
    }

    /// The agent's decoder must get the very stream back from what the Framer sends.
    #[test]
    fn framed_streams_carry_the_same_bytes_in_fewer() {
        let text: Vec<u8> = b"def handler(request, response):\n    return value\n"
            .iter()
            .copied()
            .cycle()
            .take(3 * CHUNK + 123)
            .collect();
        let mut random = vec![0u8; CHUNK + 7];
        getrandom::fill(&mut random).unwrap();
        let input = [text.clone(), random.clone()].concat();
        // The sizes chunk_for gives (one stream, several), and one the framer must cap.
        for chunk in [CHUNK, MIN_CHUNK, 4 * CHUNK] {
            let mut wire = Vec::new();
            let mut framer = Framer::new(&mut wire, chunk).unwrap();
            framer.write_all(&input).unwrap();
            framer.flush().unwrap();
            let sent = framer.wire;
            assert_eq!(sent, wire.len() as u64);
            assert!(
                sent < (input.len() as u64) / 2,
                "text compresses in {chunk}-byte chunks: {sent} of {}",
                input.len()
            );
            // Decode as the agent does.
            let mut back = Vec::new();
            std::io::Read::read_to_end(
                &mut sideload_agent::frames::Deframer::new(&wire[..]),
                &mut back,
            )
            .unwrap();
            assert!(
                back == input,
                "decoded stream differs ({chunk}-byte chunks)"
            );
        }
    }

    /// One stream gets the fastest frames; several share about what one would hold.
    #[test]
    fn streams_at_once_share_one_streams_buffers() {
        assert_eq!(chunk_for(0), CHUNK);
        assert_eq!(chunk_for(1), CHUNK);
        assert_eq!(chunk_for(2), CHUNK / 2);
        assert_eq!(chunk_for(4), MIN_CHUNK);
        assert_eq!(chunk_for(64), MIN_CHUNK);
    }

    #[test]
    fn a_file_changed_since_opening_fails_the_write() {
        let img = TestImage::new(4, "linux/amd64", 1, 4096);
        let (_dir, path) = write_temp(&docker_archive(&img, &["app:v1"]).tar());
        let archive = Arc::new(Archive::open(&Source::Path(path.clone())).unwrap());
        let image = archive.summary().images[0].clone();
        let t = Transfer::new(archive.clone(), image, HashSet::new(), "r1", false, false).unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(100)
            .unwrap();
        assert!(t.write(&mut Vec::new()).is_err());
    }
}
