//! The one sequential pass over an archive: walk the tar (through gzip if need be), hash every
//! member with sha256 as it streams by, remember where each member's bytes start, and keep
//! the small JSON documents in memory. Nothing is extracted; member names are only map keys.
//!
//! Reading (and decompressing, and spooling stdin) runs on a second thread that hands 1 MiB
//! chunks to the hashing thread, so I/O or inflate overlaps with sha256.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::sync::Arc;
use std::sync::mpsc;
use std::thread;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::error::ArchiveError;
use super::spec::JSON_LIMIT;

/// Read size for every pass over archive data (and the copy buffer of `write_oci`).
pub const CHUNK: usize = 1 << 20;
/// Chunks in flight between the reading thread and the hashing thread.
const PREFETCH_DEPTH: usize = 4;
/// Most JSON we keep in memory for one archive. Real archives hold kilobytes; past this we
/// stop caching, and anything we later need from an uncached member is refused as too large.
const CACHE_BUDGET: u64 = 256 << 20;
/// Most bytes a GNU long-name or long-link entry, a PAX extended header or a GNU sparse map
/// may take: the limit of Go's archive/tar (which containerd reads archives with) and of
/// libarchive, so nothing a runtime would import is refused.
pub const SPECIAL_LIMIT: u64 = 1 << 20;
/// Most files and links one archive may hold: an image archive holds a few per layer and
/// per platform (runtimes stack at most ~128 layers), hundreds in all. Each entry kept
/// costs a few hundred bytes, so without a cap a gzip stream of millions of empty entries
/// grows memory with its decompressed size; at the cap it is about 10 MB.
pub const MAX_ENTRIES: usize = 1 << 15;

/// A regular file in the archive.
#[derive(Debug, Serialize, Deserialize)]
pub struct Member {
    /// Where its data starts in the tar stream (decompressed stream for gzip archives).
    pub offset: u64,
    /// Its size in bytes.
    pub size: u64,
    /// `sha256:<hex>` of its bytes.
    pub digest: String,
    /// Its data starts with a gzip or zstd magic number.
    pub compressed: bool,
    /// Its bytes, if it looked like JSON and was small enough to keep.
    pub data: Option<Arc<[u8]>>,
    /// Its first bytes (up to 32), so a member that is not JSON can be reported as such.
    pub head: Box<[u8]>,
}

/// What one pass over the tar found (serializable for the scan cache, `cache.rs`).
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Scan {
    /// Regular files by cleaned path.
    pub members: HashMap<String, Member>,
    /// Symlinks and hard links: cleaned path → cleaned target path.
    pub links: HashMap<String, String>,
    /// The tar ended with its end-of-archive marker (a cut-off file usually does not).
    pub clean_end: bool,
}

impl Scan {
    /// The regular file at `path`, following links (at most 8 hops).
    pub fn member(&self, path: &str) -> Option<&Member> {
        let mut path = clean(path);
        for _ in 0..8 {
            if let Some(m) = self.members.get(&path) {
                return Some(m);
            }
            path = self.links.get(&path)?.clone();
        }
        None
    }
}

/// How `scan` should treat the stream.
pub struct ScanOpts<'a> {
    /// The archive as the user named it, for messages.
    pub name: &'a str,
    /// Total tar bytes if known up front (uncompressed files): a member claiming more is
    /// reported as truncation before anything is read.
    pub known_len: Option<u64>,
    /// Read the stream to its end after the tar ends (gzip: checks the CRC; stdin: completes
    /// the spool).
    pub drain: bool,
    /// The stream was gzip-compressed (for messages).
    pub gzip: bool,
}

/// Walks the tar stream `input` once. See the module docs.
pub fn scan(input: impl Read, opts: &ScanOpts<'_>) -> Result<Scan, ArchiveError> {
    let mut counted = Counting {
        inner: input,
        pos: 0,
        eof: false,
    };
    let mut first = [0u8; 512];
    let n = read_full(&mut counted, &mut first).map_err(|e| classify(e, opts, counted.eof))?;
    check_first_block(&first[..n], opts)?;

    let mut scan = Scan::default();
    let walked = walk(
        io::Cursor::new(&first[..n]).chain(&mut counted),
        &mut scan,
        opts,
    );
    let last_end = match walked {
        Ok(end) => end,
        Err(Failure::Archive(e)) => return Err(e),
        Err(Failure::Io(e)) => return Err(classify(e, opts, counted.eof)),
    };
    scan.clean_end = counted.pos > last_end;
    if opts.drain {
        io::copy(&mut counted, &mut io::sink()).map_err(|e| classify(e, opts, counted.eof))?;
    }
    Ok(scan)
}

enum Failure {
    Io(io::Error),
    Archive(ArchiveError),
}

impl From<io::Error> for Failure {
    fn from(e: io::Error) -> Failure {
        Failure::Io(e)
    }
}

/// Reads every entry; returns where the last entry's (padded) data ends.
fn walk(input: impl Read, scan: &mut Scan, opts: &ScanOpts<'_>) -> Result<u64, Failure> {
    let mut archive = tar::Archive::new(HeaderGuard::new(input));
    let mut buf = vec![0u8; CHUNK];
    let mut cached: u64 = 0;
    let mut last_end = 0;
    for entry in archive.entries()? {
        let mut entry = entry?;
        let path = clean(&String::from_utf8_lossy(&entry.path_bytes()));
        let offset = entry.raw_file_position();
        let size = entry.size();
        last_end = offset.saturating_add(size.div_ceil(512).saturating_mul(512));
        let kind = entry.header().entry_type();
        match kind {
            tar::EntryType::Symlink | tar::EntryType::Link => {
                let Some(target) = entry.link_name_bytes() else {
                    continue;
                };
                let target = String::from_utf8_lossy(&target).into_owned();
                // A symlink is relative to its directory (docker save links shared layers as
                // `../<id>/layer.tar`); a hard link names an archive path.
                let target = if kind == tar::EntryType::Symlink {
                    clean(&format!("{}/{target}", parent(&path)))
                } else {
                    clean(&target)
                };
                scan.links.insert(path, target);
                check_entries(scan, opts)?;
                continue;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {}
            _ => continue,
        }
        if let Some(len) = opts.known_len
            && offset.saturating_add(size) > len
        {
            return Err(Failure::Archive(ArchiveError::Truncated {
                name: opts.name.to_owned(),
                detail: format!(
                    "{} should hold {size} bytes but the file ends {} bytes into it",
                    shown(&path),
                    len.saturating_sub(offset)
                ),
            }));
        }

        let keep_json = size <= JSON_LIMIT && cached + size <= CACHE_BUDGET;
        let mut hasher = Sha256::new();
        let mut data: Option<Vec<u8>> =
            (keep_json && is_metadata_name(&path)).then(|| Vec::with_capacity(size as usize));
        let mut head: Box<[u8]> = Box::default();
        let mut got: u64 = 0;
        loop {
            let n = entry.read(&mut buf)?;
            if n == 0 {
                break;
            }
            let chunk = &buf[..n];
            if got == 0 {
                head = chunk[..n.min(32)].into();
                if data.is_none() && keep_json && looks_like_json(chunk) {
                    data = Some(Vec::with_capacity(size as usize));
                }
            }
            hasher.update(chunk);
            if let Some(d) = &mut data {
                d.extend_from_slice(chunk);
            }
            got += n as u64;
        }
        if got != size {
            return Err(Failure::Archive(ArchiveError::Truncated {
                name: opts.name.to_owned(),
                detail: format!("{} ends after {got} of its {size} bytes", shown(&path)),
            }));
        }
        if let Some(d) = &data {
            cached += d.len() as u64;
        }
        scan.members.insert(
            path,
            Member {
                offset,
                size,
                digest: format!("sha256:{}", hex::encode(hasher.finalize())),
                compressed: head.starts_with(&[0x1f, 0x8b])
                    || head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]),
                data: data.map(Arc::from),
                head,
            },
        );
        check_entries(scan, opts)?;
    }
    Ok(last_end)
}

fn check_entries(scan: &Scan, opts: &ScanOpts<'_>) -> Result<(), Failure> {
    if scan.members.len() + scan.links.len() > MAX_ENTRIES {
        return Err(Failure::Archive(ArchiveError::TooManyEntries {
            name: opts.name.to_owned(),
            limit: MAX_ENTRIES,
        }));
    }
    Ok(())
}

/// Names whose content we always want in memory (if small).
fn is_metadata_name(path: &str) -> bool {
    matches!(
        path,
        "manifest.json" | "index.json" | "oci-layout" | "repositories"
    ) || path.ends_with(".json")
}

/// Blobs are opaque; JSON ones (indexes, manifests, configs) start with `{` (or `[`). Layers
/// are tar, gzip or zstd and never do in practice (a tar would need a member named `{…`).
fn looks_like_json(chunk: &[u8]) -> bool {
    matches!(
        chunk.iter().find(|b| !b.is_ascii_whitespace()),
        Some(b'{' | b'[')
    )
}

/// An untrusted string (a member name, a value from a tar's JSON) made safe to print: cut
/// to 200 characters, control characters escaped so no terminal sequence gets through.
pub fn shown(s: &str) -> String {
    s.chars().take(200).flat_map(char::escape_debug).collect()
}

/// Rejects streams whose first block is not a tar header, with a hint of what they are.
fn check_first_block(block: &[u8], opts: &ScanOpts<'_>) -> Result<(), ArchiveError> {
    let name = opts.name.to_owned();
    if block.is_empty() {
        return Err(if opts.gzip {
            ArchiveError::NotATar {
                name,
                looks_like: "an empty gzip stream".to_owned(),
            }
        } else {
            ArchiveError::Empty { name }
        });
    }
    if block.len() == 512 && block.iter().all(|b| *b == 0) {
        return Err(ArchiveError::NoImage {
            name,
            detail: "the tar is empty".to_owned(),
        });
    }
    if block.len() < 512 || !is_tar_header(block) {
        let what = looks_like(block);
        return Err(ArchiveError::NotATar {
            name,
            looks_like: if opts.gzip {
                format!("gzip-compressed {what}")
            } else {
                what
            },
        });
    }
    Ok(())
}

/// A tar header block: its checksum field matches its bytes (true of every tar flavour).
pub fn is_tar_header(block: &[u8]) -> bool {
    if block.len() < 512 {
        return false;
    }
    let field = &block[148..156];
    let digits: String = field
        .iter()
        .map(|b| *b as char)
        .filter(|c| ('0'..='7').contains(c))
        .collect();
    let Ok(want) = u32::from_str_radix(&digits, 8) else {
        return false;
    };
    let sum: u32 = block[..512]
        .iter()
        .enumerate()
        .map(|(i, b)| {
            if (148..156).contains(&i) {
                32
            } else {
                *b as u32
            }
        })
        .sum();
    sum == want
}

/// A short, safe description of what some bytes look like, for "not a tar" messages.
pub fn looks_like(head: &[u8]) -> String {
    let magic: &[(&[u8], &str)] = &[
        (b"PK\x03\x04", "a zip archive"),
        (
            b"\x28\xb5\x2f\xfd",
            "zstd-compressed data (decompress it with `zstd -d` first)",
        ),
        (
            b"\xfd7zXZ\x00",
            "xz-compressed data (decompress it with `xz -d` first)",
        ),
        (
            b"BZh",
            "bzip2-compressed data (decompress it with `bzip2 -d` first)",
        ),
        (b"\x7fELF", "an executable"),
        (b"%PDF", "a PDF document"),
    ];
    if let Some((_, what)) = magic.iter().find(|(m, _)| head.starts_with(m)) {
        return (*what).to_owned();
    }
    let sample = &head[..head.len().min(24)];
    match std::str::from_utf8(&head[..head.len().min(512)]) {
        Ok(text) if !text.chars().any(|c| c.is_control() && !c.is_whitespace()) => {
            let snippet: String = text.chars().take(24).collect();
            format!("text: {snippet:?}")
        }
        _ => format!("binary data: {}", hex::encode(sample)),
    }
}

/// Turns a read error in the pass into the error a user can act on.
fn classify(e: io::Error, opts: &ScanOpts<'_>, hit_eof: bool) -> ArchiveError {
    let name = opts.name.to_owned();
    if let Some(big) = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<SpecialTooLarge>())
    {
        return ArchiveError::TooLarge {
            name,
            file: format!("the tar's {} at byte {}", big.what, big.at),
            size: big.size,
            limit: SPECIAL_LIMIT,
        };
    }
    if let Some(spool) = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<SpoolError>())
    {
        return ArchiveError::Io {
            name,
            action: "spooling stdin to a temporary file in $TMPDIR",
            source: io::Error::new(spool.0.kind(), spool.0.to_string()),
        };
    }
    if hit_eof || e.kind() == io::ErrorKind::UnexpectedEof {
        return ArchiveError::Truncated {
            name,
            detail: format!("it ends in the middle of an entry: {e}"),
        };
    }
    match e.kind() {
        io::ErrorKind::InvalidData | io::ErrorKind::InvalidInput | io::ErrorKind::Other => {
            ArchiveError::Corrupt {
                name,
                detail: if opts.gzip {
                    format!("gzip or tar: {e}")
                } else {
                    format!("tar: {e}")
                },
            }
        }
        _ => ArchiveError::Io {
            name,
            action: "reading",
            source: e,
        },
    }
}

/// Counts bytes and notes whether the inner reader reached its end.
struct Counting<R> {
    inner: R,
    pos: u64,
    eof: bool,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && !buf.is_empty() {
            self.eof = true;
        }
        self.pos += n as u64;
        Ok(n)
    }
}

/// Sits under the tar crate and follows the tar's block structure as the crate reads it, to
/// fail the read that completes a header whose extension data is over `SPECIAL_LIMIT`. The
/// tar crate (0.4.46, `EntryFields::read_all`) buffers a GNU long name or long link and a
/// PAX header whole, whatever size it declares, and keeps a GNU sparse map entry by entry:
/// without this, a few kilobytes of gzip declaring gigabytes of long name fill memory
/// (`tests::gzip_bomb_in_tar_extension_headers_is_refused_unread`).
///
/// It mirrors the crate's rules for where the next header starts (a PAX `size` record
/// overrides the header's, sparse extension blocks follow their header). Where it cannot
/// follow (the end-of-archive block, a bad checksum or size field) the crate stops too, so
/// it stops checking.
struct HeaderGuard<R> {
    inner: R,
    /// Bytes passed through.
    pos: u64,
    /// Where the next block to check (a header or a sparse extension block) starts.
    at: u64,
    block: [u8; 512],
    filled: usize,
    expect: Expect,
    /// A PAX header's data being gathered: where it ends, and the bytes so far.
    pax_data: Option<(u64, Vec<u8>)>,
    /// A PAX header was read for the coming entry; with its `size` record, if any.
    pax: Option<Option<u64>>,
    off: bool,
}

#[derive(Clone, Copy)]
enum Expect {
    Header,
    /// GNU sparse extension blocks; then `data` (padded) bytes of data.
    SparseExt {
        header: u64,
        data: u64,
        blocks: u64,
    },
}

/// An extension entry over `SPECIAL_LIMIT`, told apart by `classify`.
#[derive(Debug)]
struct SpecialTooLarge {
    what: &'static str,
    at: u64,
    size: u64,
}

impl std::fmt::Display for SpecialTooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} at byte {} is {} bytes",
            self.what, self.at, self.size
        )
    }
}

impl std::error::Error for SpecialTooLarge {}

impl<R> HeaderGuard<R> {
    fn new(inner: R) -> HeaderGuard<R> {
        HeaderGuard {
            inner,
            pos: 0,
            at: 0,
            block: [0; 512],
            filled: 0,
            expect: Expect::Header,
            pax_data: None,
            pax: None,
            off: false,
        }
    }

    /// Looks at the bytes `chunk`, which start at `self.pos`.
    fn observe(&mut self, chunk: &[u8]) -> io::Result<()> {
        let mut p = 0;
        while p < chunk.len() && !self.off {
            let here = self.pos + p as u64;
            let left = chunk.len() - p;
            if let Some((end, data)) = &mut self.pax_data {
                let n = left.min(usize::try_from(*end - here).unwrap_or(usize::MAX));
                data.extend_from_slice(&chunk[p..p + n]);
                p += n;
                if here + n as u64 == *end {
                    self.pax = Some(pax_size(data));
                    self.pax_data = None;
                }
                continue;
            }
            if here < self.at {
                p += left.min(usize::try_from(self.at - here).unwrap_or(usize::MAX));
                continue;
            }
            let n = left.min(512 - self.filled);
            self.block[self.filled..self.filled + n].copy_from_slice(&chunk[p..p + n]);
            self.filled += n;
            p += n;
            if self.filled == 512 {
                self.filled = 0;
                match self.expect {
                    Expect::Header => self.header()?,
                    Expect::SparseExt { .. } => self.sparse_ext()?,
                }
            }
        }
        Ok(())
    }

    /// A whole header block at `self.at`: where does the next one start, and is its
    /// extension data within bounds?
    fn header(&mut self) -> io::Result<()> {
        let start = self.at;
        if self.block.iter().all(|b| *b == 0) || !is_tar_header(&self.block) {
            self.off = true; // the end, or a header the tar crate refuses: it stops here
            return Ok(());
        }
        let mut h = tar::Header::new_old();
        h.as_mut_bytes().copy_from_slice(&self.block);
        let Ok(mut size) = h.entry_size() else {
            self.off = true;
            return Ok(());
        };
        let ty = h.entry_type();
        let recognized = h.as_gnu().is_some() || h.as_ustar().is_some();
        let extension = ty.is_gnu_longname()
            || ty.is_gnu_longlink()
            || ty.is_pax_local_extensions()
            || ty.is_pax_global_extensions();
        // What the tar crate reads into memory and then goes on to the entry it describes.
        let buffered = recognized
            && (ty.is_gnu_longname() || ty.is_gnu_longlink() || ty.is_pax_local_extensions());
        if !extension && let Some(Some(pax_size)) = self.pax {
            size = pax_size;
        }
        if !buffered {
            self.pax = None; // the crate hands this entry out; PAX records applied to it only
        }
        if buffered && size > SPECIAL_LIMIT {
            let what = if ty.is_gnu_longname() {
                "GNU long-name entry"
            } else if ty.is_gnu_longlink() {
                "GNU long-link entry"
            } else {
                "PAX extended header"
            };
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                SpecialTooLarge {
                    what,
                    at: start,
                    size,
                },
            ));
        }
        let data_start = start + 512;
        if buffered && ty.is_pax_local_extensions() {
            if self.pax.is_some() {
                self.off = true; // two PAX headers for one entry: the crate fails
                return Ok(());
            }
            if size == 0 {
                self.pax = Some(None);
            } else {
                self.pax_data = Some((data_start + size, Vec::with_capacity(size as usize)));
            }
        }
        let Some(padded) = size.checked_add(511).map(|s| s & !511) else {
            self.off = true;
            return Ok(());
        };
        if !buffered && ty.is_gnu_sparse() {
            match h.as_gnu() {
                Some(gnu) if gnu.is_extended() => {
                    self.expect = Expect::SparseExt {
                        header: start,
                        data: padded,
                        blocks: 0,
                    };
                    self.at = data_start;
                    return Ok(());
                }
                Some(_) => {}
                None => {
                    self.off = true;
                    return Ok(());
                }
            }
        }
        match data_start.checked_add(padded) {
            Some(next) => self.at = next,
            None => self.off = true,
        }
        Ok(())
    }

    /// A GNU sparse extension block: 21 more map entries, and whether another block follows.
    fn sparse_ext(&mut self) -> io::Result<()> {
        let Expect::SparseExt {
            header,
            data,
            blocks,
        } = self.expect
        else {
            unreachable!("called for sparse extension blocks only");
        };
        let blocks = blocks + 1;
        if blocks * 512 > SPECIAL_LIMIT {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                SpecialTooLarge {
                    what: "GNU sparse map",
                    at: header,
                    size: blocks * 512,
                },
            ));
        }
        let end = self.at + 512;
        if self.block[504] == 1 {
            self.expect = Expect::SparseExt {
                header,
                data,
                blocks,
            };
            self.at = end;
        } else {
            self.expect = Expect::Header;
            match end.checked_add(data) {
                Some(next) => self.at = next,
                None => self.off = true,
            }
        }
        Ok(())
    }
}

/// The `size` record of PAX header data, read as the tar crate reads it (the first `size`
/// record, none if a record before it is malformed).
fn pax_size(data: &[u8]) -> Option<u64> {
    for record in tar::PaxExtensions::new(data) {
        let record = record.ok()?;
        if record.key() == Ok("size") {
            return record.value().ok()?.parse().ok();
        }
    }
    None
}

impl<R: Read> Read for HeaderGuard<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if !self.off {
            self.observe(&buf[..n])?;
        }
        self.pos += n as u64;
        Ok(n)
    }
}

/// Reads until `buf` is full or the reader ends; returns the bytes read.
pub fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Go's `path.Clean` for archive member names: no `.`/empty components, `..` resolved
/// lexically (a leading `..` stays and so can never match a name we look up), no leading
/// `./` or `/`.
pub fn clean(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if matches!(parts.last(), Some(p) if *p != "..") {
                    parts.pop();
                } else {
                    parts.push("..");
                }
            }
            p => parts.push(p),
        }
    }
    parts.join("/")
}

fn parent(path: &str) -> &str {
    path.rsplit_once('/').map_or("", |(dir, _)| dir)
}

/// Copies stdin into the spool file as it is read.
pub struct Tee<R, W> {
    pub inner: R,
    pub copy: W,
}

/// A failed write to the spool file, told apart from a failed read by `classify`.
#[derive(Debug)]
struct SpoolError(io::Error);

impl std::fmt::Display for SpoolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for SpoolError {}

impl<R: Read, W: Write> Read for Tee<R, W> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.copy
            .write_all(&buf[..n])
            .map_err(|e| io::Error::other(SpoolError(e)))?;
        Ok(n)
    }
}

/// Runs `consume` on a reader fed by a second thread that reads `source` in `CHUNK`s, so the
/// source's cost (disk, inflate, stdin) overlaps with the consumer's (sha256).
pub fn prefetched<T>(source: impl Read + Send, consume: impl FnOnce(&mut dyn Read) -> T) -> T {
    thread::scope(|s| {
        let (full_tx, full_rx) = mpsc::sync_channel::<io::Result<(Vec<u8>, usize)>>(PREFETCH_DEPTH);
        let (empty_tx, empty_rx) = mpsc::channel::<Vec<u8>>();
        s.spawn(move || {
            let mut source = source;
            loop {
                let mut buf = empty_rx.try_recv().unwrap_or_else(|_| vec![0u8; CHUNK]);
                let sent = match read_full(&mut source, &mut buf) {
                    Ok(0) => return,
                    Ok(n) => full_tx.send(Ok((buf, n))),
                    Err(e) => {
                        let _ = full_tx.send(Err(e));
                        return;
                    }
                };
                if sent.is_err() {
                    return; // the consumer is done (or failed); stop reading
                }
            }
        });
        let mut reader = ChannelReader {
            full: full_rx,
            empty: empty_tx,
            current: Vec::new(),
            len: 0,
            pos: 0,
        };
        consume(&mut reader)
        // `reader` drops here, closing the channel, so the reading thread stops and the
        // scope's join returns.
    })
}

struct ChannelReader {
    full: mpsc::Receiver<io::Result<(Vec<u8>, usize)>>,
    empty: mpsc::Sender<Vec<u8>>,
    current: Vec<u8>,
    len: usize,
    pos: usize,
}

impl Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.pos == self.len {
            match self.full.recv() {
                Ok(Ok((buf, len))) => {
                    let done = std::mem::replace(&mut self.current, buf);
                    if !done.is_empty() {
                        let _ = self.empty.send(done);
                    }
                    self.len = len;
                    self.pos = 0;
                }
                Ok(Err(e)) => return Err(e),
                Err(mpsc::RecvError) => return Ok(0),
            }
        }
        let n = out.len().min(self.len - self.pos);
        out[..n].copy_from_slice(&self.current[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_matches_go_path_clean() {
        for (input, want) in [
            ("./manifest.json", "manifest.json"),
            ("blobs//sha256/./ab", "blobs/sha256/ab"),
            ("/abs/x", "abs/x"),
            ("a/../b", "b"),
            ("../../etc/passwd", "../../etc/passwd"),
            ("a/b/../../../x", "../x"),
            ("", ""),
        ] {
            assert_eq!(clean(input), want, "{input}");
        }
    }

    #[test]
    fn prefetched_delivers_every_byte_in_order() {
        let data: Vec<u8> = (0..(3 * CHUNK + 123)).map(|i| (i % 251) as u8).collect();
        let out = prefetched(&data[..], |r| {
            let mut v = Vec::new();
            r.read_to_end(&mut v).unwrap();
            v
        });
        assert_eq!(out, data);
    }

    #[test]
    fn prefetched_stops_reading_when_consumer_quits_early() {
        // An endless source: the scope must still end once the consumer returns.
        let endless = io::repeat(7);
        let first = prefetched(endless, |r| {
            let mut b = [0u8; 10];
            r.read_exact(&mut b).unwrap();
            b
        });
        assert_eq!(first, [7; 10]);
    }

    #[test]
    fn looks_like_names_common_non_tars() {
        assert!(looks_like(b"PK\x03\x04rest").contains("zip"));
        assert!(looks_like(b"hello world\n").starts_with("text: \"hello world"));
        assert!(looks_like(b"\x00\x01\x02\xff").starts_with("binary data: 000102ff"));
        assert!(looks_like(b"\x28\xb5\x2f\xfdxx").contains("zstd"));
    }
}
