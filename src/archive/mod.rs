//! Image archives: read `docker save` / `podman save` / `skopeo` / `nerdctl save` tars without
//! extracting them, and re-emit one platform's image (minus the layers a node already has)
//! as a plain OCI-layout tar stream for `ctr images import`.
//!
//! `Archive::open` makes one sequential pass (through gzip if the file is compressed),
//! hashing every member, unless the file is unchanged since a pass remembered it
//! (`cache.rs`); `write_oci` makes one more, streaming layers from the file.

mod cache;
mod emit;
mod error;
#[cfg(test)]
mod fuzz;
mod layout;
mod parts;
mod platform;
pub mod reference;
mod scan;
mod spec;
#[cfg(test)]
mod tests;
#[cfg(test)]
pub(crate) mod testutil;

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use flate2::bufread::MultiGzDecoder;
use serde::Serialize;

pub use error::ArchiveError;
use layout::BlobData;
pub use parts::{Prefix, StreamPlan};
pub use platform::Platform;
use scan::{CHUNK, ScanOpts};

/// Where the archive comes from.
#[derive(Clone, Debug)]
pub enum Source {
    /// A file (or a FIFO such as `<(docker save app)`, which is spooled like stdin).
    Path(PathBuf),
    /// Standard input, spooled once to an unlinked temporary file in `$TMPDIR`.
    Stdin,
}

/// The archive's layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Format {
    /// `manifest.json` + `<id>/layer.tar`: `docker save` before 25, podman and skopeo
    /// `docker-archive:`.
    #[serde(rename = "docker-archive")]
    DockerArchive,
    /// `oci-layout` + `index.json` + `blobs/sha256/`: podman/skopeo `oci-archive:`,
    /// nerdctl, buildkit.
    #[serde(rename = "oci-layout")]
    OciLayout,
    /// Docker 25+: an OCI layout that also carries `manifest.json` (index.json wins, as in
    /// containerd).
    #[serde(rename = "docker25")]
    Docker25,
}

/// A blob as a descriptor names it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Blob {
    /// `sha256:<hex>`.
    pub digest: String,
    /// Bytes.
    pub size: u64,
    /// Its media type (for docker-archive layers, containerd's: `…rootfs.diff.tar` if stored
    /// uncompressed, `…rootfs.diff.tar.gzip` if compressed).
    pub media_type: String,
}

/// One platform's image in the archive.
#[derive(Clone, Debug, Serialize)]
pub struct PlatformImage {
    /// From the index descriptor, else from the config.
    pub platform: Platform,
    /// The image manifest. For a docker-archive it is the Docker schema 2 manifest
    /// containerd's importer would synthesise (same bytes, so the same digest every run).
    pub manifest: Blob,
    /// The config; its digest is the image ID the kubelet shows. Empty digest if the
    /// manifest itself is missing (then the config is unknown).
    pub config: Blob,
    /// Layers in manifest order.
    pub layers: Vec<Blob>,
    /// The config's `rootfs.diff_ids` (digests of the uncompressed layers), in layer order;
    /// empty when the config is unknown. Runtimes key unpacked layers by these.
    pub diff_ids: Vec<String>,
    /// Every blob this image needs is in the archive (false: kind#3795).
    pub complete: bool,
    /// Digests this image needs that the archive lacks.
    pub missing: Vec<String>,
}

/// What `open` found.
#[derive(Debug, Serialize)]
pub struct Summary {
    /// The archive's layout.
    pub format: Format,
    /// The file (or stdin) was gzip-compressed as a whole.
    pub compressed: bool,
    /// Fully qualified names (`docker.io/library/app:v2`), in containerd's order:
    /// `io.containerd.image.name`, then RepoTags, then full `org.opencontainers.image.ref.name`
    /// values, then bare tags joined to the repositories found. Empty if the image is unnamed.
    pub refs: Vec<String>,
    /// Bare tags from `org.opencontainers.image.ref.name` (`v2`): not names by themselves; a
    /// caller given a repository name may join them to it.
    pub tags: Vec<String>,
    /// The multi-platform index digest if the archive's image is an index, else the manifest
    /// digest.
    pub digest: String,
    /// One entry per platform the archive lists.
    pub images: Vec<PlatformImage>,
    /// Archive bytes on disk (spooled bytes for stdin).
    pub size: u64,
}

/// An opened archive: the file plus what one pass over it found. `Send + Sync`: `write_oci`
/// reads with positioned reads, so several nodes can be streamed from one `Archive` at once.
pub struct Archive {
    /// The archive as the user named it, for messages.
    name: String,
    /// The archive file, or stdin's unlinked spool file (the OS deletes it on drop); shared
    /// by the `Archive`s of one file's images.
    file: Arc<File>,
    compressed: bool,
    /// Length and mtime at open, for path sources: `write_oci` refuses a file changed since.
    stamp: Option<(u64, Option<SystemTime>)>,
    summary: Summary,
    blobs: HashMap<String, BlobData>,
    parents: HashMap<String, Vec<Blob>>,
}

impl std::fmt::Debug for Archive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Archive")
            .field("name", &self.name)
            .field("summary", &self.summary)
            .finish_non_exhaustive()
    }
}

/// The one pass over `source`, through gzip if it is `compressed`, its reads overlapping
/// the hashing.
fn scan_through(
    source: impl Read + Send,
    compressed: bool,
    opts: &ScanOpts<'_>,
) -> Result<scan::Scan, ArchiveError> {
    if compressed {
        let gz = MultiGzDecoder::new(BufReader::with_capacity(CHUNK, source));
        scan::prefetched(gz, |r| scan::scan(r, opts))
    } else {
        scan::prefetched(source, |r| scan::scan(r, opts))
    }
}

impl Archive {
    /// Opens and inspects an archive that must hold one image (its tags are fine); one with
    /// several is refused with `MultipleImages`, which lists them.
    #[cfg(test)]
    pub fn open(src: &Source) -> Result<Archive, ArchiveError> {
        Archive::one(Archive::open_all(src)?)
    }

    /// Opens and inspects an archive: one sequential read, every blob hashed and checked.
    /// One `Archive` per image it holds (`docker save a b`, `podman save -m`), in the
    /// archive's order, all reading the one file.
    pub fn open_all(src: &Source) -> Result<Vec<Archive>, ArchiveError> {
        match src {
            Source::Path(path) => Archive::open_path(path),
            Source::Stdin => Archive::open_reader(io::stdin(), "stdin"),
        }
    }

    /// [`Archive::open_reader`] of an archive that must hold one image.
    #[cfg(test)]
    pub(crate) fn open_reader_one(
        r: impl Read + Send,
        name: &str,
    ) -> Result<Archive, ArchiveError> {
        Archive::one(Archive::open_reader(r, name)?)
    }

    /// The only image of `all`, or `MultipleImages`.
    pub(crate) fn one(mut all: Vec<Archive>) -> Result<Archive, ArchiveError> {
        if all.len() == 1 {
            return Ok(all.remove(0));
        }
        Err(ArchiveError::MultipleImages {
            name: all.first().map(|a| a.name.clone()).unwrap_or_default(),
            images: all
                .iter()
                .map(|a| layout::describe(&a.summary.refs, &[], &a.summary.digest))
                .collect(),
        })
    }

    /// Opens a path: a regular file through the scan cache (`cache.rs`), anything else
    /// read once like stdin.
    fn open_path(path: &std::path::Path) -> Result<Vec<Archive>, ArchiveError> {
        // Unit tests open thousands of throwaway archives: they never touch the user's cache.
        let dir = if cfg!(test) {
            None
        } else {
            cache::default_dir()
        };
        Archive::open_path_cached(path, dir.as_deref())
    }

    fn open_path_cached(
        path: &std::path::Path,
        cache_dir: Option<&std::path::Path>,
    ) -> Result<Vec<Archive>, ArchiveError> {
        let name = path.display().to_string();
        let file = File::open(path).map_err(|source| match source.kind() {
            io::ErrorKind::NotFound => ArchiveError::NotFound { name: name.clone() },
            _ => ArchiveError::Io {
                name: name.clone(),
                action: "opening",
                source,
            },
        })?;
        let meta = file.metadata().map_err(|source| ArchiveError::Io {
            name: name.clone(),
            action: "opening",
            source,
        })?;
        if meta.is_dir() {
            return Err(ArchiveError::NotAFile { name });
        }
        if !meta.is_file() {
            // A FIFO or character device (`<(docker save …)`, /dev/stdin): read it once,
            // like stdin.
            return Archive::open_reader(file, &name);
        }
        let len = meta.len();
        let mut head = [0u8; 2];
        let n = scan::read_full(&mut &file, &mut head).map_err(|source| ArchiveError::Io {
            name: name.clone(),
            action: "reading",
            source,
        })?;
        let compressed = n == 2 && head == [0x1f, 0x8b];
        let opts = ScanOpts {
            name: &name,
            known_len: (!compressed).then_some(len),
            drain: compressed,
            gzip: compressed,
        };
        let remembered = cache_dir.zip(cache::key(path, &meta));
        let hit = remembered
            .as_ref()
            .and_then(|(dir, key)| cache::load(dir, key));
        let scanned = match hit {
            Some(scanned) => scanned,
            None => {
                let started = SystemTime::now();
                let source = io::Cursor::new(&head[..n]).chain(&file);
                let scanned = scan_through(source, compressed, &opts)?;
                // Remembered only if the file is the one whose identity was taken before
                // the scan, and had settled by then.
                if let (Some((dir, key)), Ok(after)) = (&remembered, file.metadata())
                    && cache::key(path, &after).as_ref() == Some(key)
                    && cache::settled(&after, started)
                {
                    cache::store(dir, key, &scanned);
                }
                scanned
            }
        };
        let stamp = Some((len, meta.modified().ok()));
        Archive::build(name, file, compressed, len, stamp, &scanned)
    }

    /// Opens an archive from any reader (stdin, a pipe): spools it once to an unlinked
    /// temporary file in `$TMPDIR` while scanning it, in the same pass.
    pub(crate) fn open_reader(
        r: impl Read + Send,
        name: &str,
    ) -> Result<Vec<Archive>, ArchiveError> {
        let spool_err = |source| ArchiveError::Io {
            name: name.to_owned(),
            action: "creating a temporary file in $TMPDIR to spool the input",
            source,
        };
        let file = tempfile::tempfile().map_err(spool_err)?;
        let mut r = r;
        let mut head = [0u8; 2];
        let n = scan::read_full(&mut r, &mut head).map_err(|source| ArchiveError::Io {
            name: name.to_owned(),
            action: "reading",
            source,
        })?;
        if n == 0 {
            return Err(if name == "stdin" {
                ArchiveError::EmptyStdin
            } else {
                ArchiveError::Empty {
                    name: name.to_owned(),
                }
            });
        }
        let compressed = n == 2 && head == [0x1f, 0x8b];
        let opts = ScanOpts {
            name,
            known_len: None,
            drain: true,
            gzip: compressed,
        };
        let tee = scan::Tee {
            inner: io::Cursor::new(&head[..n]).chain(r),
            copy: &file,
        };
        let scanned = scan_through(tee, compressed, &opts)?;
        let len = file
            .metadata()
            .map_err(|source| ArchiveError::Io {
                name: name.to_owned(),
                action: "spooling the input to $TMPDIR",
                source,
            })?
            .len();
        Archive::build(name.to_owned(), file, compressed, len, None, &scanned)
    }

    fn build(
        name: String,
        file: File,
        compressed: bool,
        size: u64,
        stamp: Option<(u64, Option<SystemTime>)>,
        scanned: &scan::Scan,
    ) -> Result<Vec<Archive>, ArchiveError> {
        let file = Arc::new(file);
        let resolved = layout::resolve(&name, scanned)?;
        Ok(resolved
            .into_iter()
            .map(|resolved| Archive {
                name: name.clone(),
                file: Arc::clone(&file),
                compressed,
                stamp,
                summary: Summary {
                    format: resolved.format,
                    compressed,
                    refs: resolved.refs,
                    tags: resolved.tags,
                    digest: resolved.digest,
                    images: resolved.images,
                    size,
                },
                blobs: resolved.blobs,
                parents: resolved.parents,
            })
            .collect())
    }

    /// What the archive holds.
    pub fn summary(&self) -> &Summary {
        &self.summary
    }

    /// Names the image `refs` (fully qualified, see [`reference::normalize`]) instead of
    /// the names the archive gives it (`--tag`). Only names change: every digest stays.
    pub fn rename(&mut self, refs: Vec<String>) {
        self.summary.refs = refs;
    }

    /// The image for a node's platform.
    ///
    /// Errors with `NoMatchingPlatform` if the archive has none, or `IncompletePlatform` if it
    /// lists the platform without all of its blobs (kind#3795). A node that already holds the
    /// missing layers can still be served: pass the image from `summary().images` to
    /// `write_oci` with those layers in `skip`.
    pub fn image_for(&self, platform: &Platform) -> Result<&PlatformImage, ArchiveError> {
        let images = &self.summary.images;
        // A lone image whose config names no architecture runs wherever the runtime
        // agrees to run it; we cannot check more than that.
        if let [only] = images.as_slice()
            && only.platform.architecture.is_empty()
        {
            return Ok(only);
        }
        let mut candidates = images.iter().filter(|i| i.platform.matches(platform));
        let Some(first) = candidates.next() else {
            return Err(ArchiveError::NoMatchingPlatform {
                wanted: platform.clone(),
                available: images.iter().map(|i| i.platform.clone()).collect(),
            });
        };
        if first.complete {
            return Ok(first);
        }
        if let Some(complete) = candidates.find(|i| i.complete) {
            return Ok(complete);
        }
        Err(ArchiveError::IncompletePlatform {
            platform: first.platform.clone(),
            missing: first.missing.clone(),
        })
    }

    /// Exact number of bytes `write_oci` will write for this image and skip set.
    pub fn oci_len(
        &self,
        image: &PlatformImage,
        skip: &HashSet<String>,
    ) -> Result<u64, ArchiveError> {
        self.oci_len_named(image, skip, &self.summary.refs)
    }

    /// `oci_len` for `write_oci_named`.
    pub fn oci_len_named(
        &self,
        image: &PlatformImage,
        skip: &HashSet<String>,
        refs: &[String],
    ) -> Result<u64, ArchiveError> {
        Ok(emit::tar_len(&self.plan(image, skip, refs)?))
    }

    /// Writes a plain OCI-layout tar of `image`: `oci-layout`, `index.json` (one descriptor
    /// per ref in `summary().refs`, annotated with `io.containerd.image.name` and
    /// `org.opencontainers.image.ref.name`, all pointing at `target_digest`), the target
    /// index if the archive's image is multi-platform (with only this platform's manifest),
    /// the manifest, the config, and every layer not in `skip`. Metadata comes first, then
    /// layers streamed from the source with one 1 MiB buffer. Returns the bytes written,
    /// which equal `oci_len`.
    #[cfg(test)]
    pub fn write_oci<W: std::io::Write>(
        &self,
        image: &PlatformImage,
        skip: &HashSet<String>,
        w: W,
    ) -> Result<u64, ArchiveError> {
        self.write_oci_named(image, skip, &self.summary.refs, w)
    }

    /// `write_oci` naming the image `refs` instead of the archive's own refs (for an
    /// unnamed image and a user-given name). Each ref must be a full reference; use
    /// `reference::normalize` first. (Nodes get `write_plan`'s stream, which this is when
    /// the stream is one part.)
    #[cfg(test)]
    pub fn write_oci_named<W: std::io::Write>(
        &self,
        image: &PlatformImage,
        skip: &HashSet<String>,
        refs: &[String],
        w: W,
    ) -> Result<u64, ArchiveError> {
        let plan = self.plan(image, skip, refs)?;
        let written = self.write_tars(&[&plan], w)?;
        debug_assert_eq!(written, emit::tar_len(&plan));
        Ok(written)
    }

    /// The digest containerd records as each ref's target after importing `write_oci`'s
    /// output: the multi-platform index digest when the archive's image is an index (it is
    /// kept), else the manifest digest.
    pub fn target_digest(&self, image: &PlatformImage) -> String {
        self.parents
            .get(&image.manifest.digest)
            .and_then(|p| p.first())
            .map_or_else(|| image.manifest.digest.clone(), |b| b.digest.clone())
    }

    /// This archive's copy of `image` (callers may pass a clone).
    fn own_image(&self, image: &PlatformImage) -> Result<&PlatformImage, ArchiveError> {
        self.summary
            .images
            .iter()
            .find(|i| i.manifest.digest == image.manifest.digest)
            .ok_or_else(|| ArchiveError::UnknownImage {
                name: self.name.clone(),
                manifest: image.manifest.digest.clone(),
            })
    }

    /// Refuses to stream from a file that changed since `open` verified it.
    fn check_unchanged(&self) -> Result<(), ArchiveError> {
        let Some((len, mtime)) = self.stamp else {
            return Ok(()); // our own spool file: nobody else can reach it
        };
        let meta = self.file.metadata().map_err(|source| ArchiveError::Io {
            name: self.name.clone(),
            action: "checking",
            source,
        })?;
        if meta.len() != len || meta.modified().ok() != mtime {
            return Err(ArchiveError::SourceChanged {
                name: self.name.clone(),
                detail: format!(
                    "it was {len} bytes when opened, now {} bytes with a new modification time",
                    meta.len()
                ),
            });
        }
        Ok(())
    }
}
