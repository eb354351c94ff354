//! Re-emits one platform image as a plain OCI-layout tar: `oci-layout`, `index.json`, the
//! target index and manifest, the config, then the layers a node lacks, streamed from the
//! source file through one fixed buffer (inflating on the fly for gzip archives).
//!
//! Plain tar, because containerd 1.6's `ctr images import` rejects a gzip stream. Headers are
//! deterministic (ustar, mode 0644, uid/gid 0, mtime 0) so equal inputs give equal bytes.

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::sync::Arc;

use flate2::bufread::MultiGzDecoder;

use super::layout::BlobData;
use super::reference::Reference;
use super::spec;
use super::{Archive, ArchiveError, Blob, PlatformImage};

/// Bytes read from the archive at a time while a stream is written. Every stream in flight
/// holds one (and a gzip archive's inflater one more): 64 KiB keeps reads cheap (16 per MiB)
/// without adding a MiB per node to the client with `--relay off` (1 MiB did).
const COPY_BUFFER: usize = 64 * 1024;

/// One member of the tar we write.
#[derive(Clone)]
pub(super) struct OutEntry {
    pub(super) path: String,
    pub(super) size: u64,
    pub(super) src: OutSource,
}

#[derive(Clone)]
pub(super) enum OutSource {
    Memory(Arc<[u8]>),
    /// `size` bytes at this offset of the source tar stream.
    Stream(u64),
}

const BLOCK: u64 = 512;
pub(super) const OCI_LAYOUT: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;

impl Archive {
    /// What `write_oci` writes, in order: metadata from memory first, then streamed blobs by
    /// ascending source offset (one forward pass through the file, or the inflater).
    pub(super) fn plan(
        &self,
        image: &PlatformImage,
        skip: &HashSet<String>,
        refs: &[String],
    ) -> Result<Vec<OutEntry>, ArchiveError> {
        let image = self.own_image(image)?;
        let parents = self
            .parents
            .get(&image.manifest.digest)
            .map_or(&[][..], Vec::as_slice);

        let absent = |b: &Blob| !self.blobs.contains_key(&b.digest);
        let mut missing: Vec<String> = Vec::new();
        for b in parents
            .iter()
            .chain([&image.manifest, &image.config])
            .chain(image.layers.iter().filter(|l| !skip.contains(&l.digest)))
        {
            if (b.digest.is_empty() || absent(b)) && !missing.contains(&b.digest) {
                missing.push(b.digest.clone());
            }
        }
        if !missing.is_empty() {
            missing.retain(|d| !d.is_empty());
            return Err(ArchiveError::IncompletePlatform {
                platform: image.platform.clone(),
                missing,
            });
        }

        let target = parents.first().unwrap_or(&image.manifest);
        let mut entries = vec![
            OutEntry {
                path: "oci-layout".to_owned(),
                size: OCI_LAYOUT.len() as u64,
                src: OutSource::Memory(Arc::from(OCI_LAYOUT)),
            },
            {
                let index = self.index_json(target, refs)?;
                OutEntry {
                    path: "index.json".to_owned(),
                    size: index.len() as u64,
                    src: OutSource::Memory(Arc::from(index)),
                }
            },
        ];
        let mut seen = HashSet::new();
        let mut streamed = Vec::new();
        let blobs = parents
            .iter()
            .chain([&image.manifest, &image.config])
            .chain(image.layers.iter().filter(|l| !skip.contains(&l.digest)));
        for b in blobs {
            if !seen.insert(b.digest.as_str()) {
                continue; // a layer listed twice is one blob
            }
            let entry = self.blob_entry(&b.digest);
            match entry.src {
                OutSource::Memory(_) => entries.push(entry),
                OutSource::Stream(_) => streamed.push(entry),
            }
        }
        streamed.sort_by_key(|e| match e.src {
            OutSource::Stream(offset) => offset,
            OutSource::Memory(_) => 0,
        });
        entries.extend(streamed);
        Ok(entries)
    }

    /// The tar member of one blob the archive holds (`plan` checked it is there).
    pub(super) fn blob_entry(&self, digest: &str) -> OutEntry {
        let path = blob_path(digest);
        match &self.blobs[digest] {
            BlobData::Memory(data) => OutEntry {
                path,
                size: data.len() as u64,
                src: OutSource::Memory(Arc::clone(data)),
            },
            BlobData::Stream { offset, size } => OutEntry {
                path,
                size: *size,
                src: OutSource::Stream(*offset),
            },
        }
    }

    /// sha256 (hex) of the `index.json` a one-part stream carries for `image` and `refs`: what
    /// the node agent checks the stream's index against. (Streams read theirs off the planned
    /// `index.json`, `parts.rs`; this computes it apart, for tests to compare.)
    #[cfg(test)]
    pub fn oci_index_sha256(
        &self,
        image: &PlatformImage,
        refs: &[String],
    ) -> Result<String, ArchiveError> {
        let image = self.own_image(image)?;
        let parents = self
            .parents
            .get(&image.manifest.digest)
            .map_or(&[][..], Vec::as_slice);
        let target = parents.first().unwrap_or(&image.manifest);
        let index = self.index_json(target, refs)?;
        Ok(super::layout::sha256_digest(&index)
            .trim_start_matches("sha256:")
            .to_string())
    }

    /// The `index.json` we write: one descriptor per ref, all pointing at `target`, named the
    /// way containerd's importer names RepoTags (`io.containerd.image.name` wins at import).
    pub(super) fn index_json(
        &self,
        target: &Blob,
        refs: &[String],
    ) -> Result<Vec<u8>, ArchiveError> {
        let descriptor = |annotations| spec::OutDescriptor {
            media_type: &target.media_type,
            digest: &target.digest,
            size: target.size,
            annotations,
        };
        let mut manifests = Vec::new();
        for r in refs {
            let parsed = Reference::parse(r).map_err(|source| ArchiveError::InvalidReference {
                name: self.name.clone(),
                file: "the image name given".to_owned(),
                source,
            })?;
            let mut annotations = BTreeMap::new();
            annotations.insert(spec::ANNOTATION_IMAGE_NAME, parsed.to_string());
            annotations.insert(spec::ANNOTATION_REF_NAME, parsed.oci_ref_name());
            manifests.push(descriptor(Some(annotations)));
        }
        if manifests.is_empty() {
            manifests.push(descriptor(None));
        }
        let index = spec::OutIndex {
            schema_version: 2,
            media_type: spec::OCI_INDEX,
            manifests,
        };
        Ok(serde_json::to_vec(&index).expect("serialising a struct of strings cannot fail"))
    }

    /// Writes each planned tar in turn (a stream cut into parts, `parts.rs`); returns the
    /// bytes written (the sum of `tar_len` of each). One inflater serves all of them, so a
    /// gzip archive is inflated once, front to back, however many parts there are.
    pub(super) fn write_tars<W: Write>(
        &self,
        tars: &[&[OutEntry]],
        mut w: W,
    ) -> Result<u64, ArchiveError> {
        self.check_unchanged()?;
        let mut buf = vec![0u8; COPY_BUFFER];
        let mut written: u64 = 0;
        // gzip archives: one inflater for the whole call, only ever moving forward.
        let mut inflater: Option<(MultiGzDecoder<BufReader<PosReader<'_>>>, u64)> = None;
        for e in tars.iter().flat_map(|t| t.iter().map(Some).chain([None])) {
            let Some(e) = e else {
                // End of one tar: two zero blocks.
                w.write_all(&[0u8; 2 * BLOCK as usize])
                    .map_err(ArchiveError::Write)?;
                written += 2 * BLOCK;
                continue;
            };
            w.write_all(&header(&e.path, e.size))
                .map_err(ArchiveError::Write)?;
            match &e.src {
                OutSource::Memory(data) => w.write_all(data).map_err(ArchiveError::Write)?,
                OutSource::Stream(offset) if self.compressed => {
                    // `plan` sorts by offset, so this only rewinds if that ever changes.
                    if inflater.as_ref().is_none_or(|(_, pos)| pos > offset) {
                        let raw = PosReader {
                            file: &self.file,
                            pos: 0,
                        };
                        let gz = MultiGzDecoder::new(BufReader::with_capacity(COPY_BUFFER, raw));
                        inflater = Some((gz, 0));
                    }
                    let Some((gz, pos)) = inflater.as_mut() else {
                        unreachable!("set just above");
                    };
                    let gap = offset - *pos;
                    self.copy_exact(&mut *gz, gap, &mut io::sink(), &mut buf, &e.path)?;
                    self.copy_exact(&mut *gz, e.size, &mut w, &mut buf, &e.path)?;
                    *pos = offset + e.size;
                }
                OutSource::Stream(offset) => {
                    let mut raw = PosReader {
                        file: &self.file,
                        pos: *offset,
                    };
                    self.copy_exact(&mut raw, e.size, &mut w, &mut buf, &e.path)?;
                }
            }
            let pad = padding(e.size);
            w.write_all(&[0u8; BLOCK as usize][..pad as usize])
                .map_err(ArchiveError::Write)?;
            written += BLOCK + e.size + pad;
        }
        w.flush().map_err(ArchiveError::Write)?;
        Ok(written)
    }

    /// Copies exactly `n` bytes from `src` to `dst` through `buf` (bounded memory whatever
    /// the blob size), telling read failures from write failures.
    fn copy_exact(
        &self,
        src: &mut impl Read,
        n: u64,
        dst: &mut impl Write,
        buf: &mut [u8],
        path: &str,
    ) -> Result<(), ArchiveError> {
        let mut src = src.take(n);
        let mut done: u64 = 0;
        loop {
            let k = match src.read(buf) {
                Ok(0) => break,
                Ok(k) => k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    return Err(ArchiveError::Io {
                        name: self.name.clone(),
                        action: "reading",
                        source,
                    });
                }
            };
            dst.write_all(&buf[..k]).map_err(ArchiveError::Write)?;
            done += k as u64;
        }
        if done != n {
            return Err(ArchiveError::SourceChanged {
                name: self.name.clone(),
                detail: format!("{path} now ends after {done} of {n} bytes"),
            });
        }
        Ok(())
    }
}

/// Where an OCI layout keeps a blob.
pub(super) fn blob_path(digest: &str) -> String {
    format!("blobs/sha256/{}", digest.trim_start_matches("sha256:"))
}

/// Bytes of the tar `write_tars` produces for `entries`.
pub(super) fn tar_len(entries: &[OutEntry]) -> u64 {
    entries
        .iter()
        .map(|e| BLOCK + e.size + padding(e.size))
        .sum::<u64>()
        + 2 * BLOCK
}

fn padding(size: u64) -> u64 {
    (BLOCK - size % BLOCK) % BLOCK
}

/// A deterministic ustar header for a regular file.
fn header(path: &str, size: u64) -> [u8; 512] {
    let mut h = tar::Header::new_ustar();
    h.set_path(path)
        .expect("our paths are short, relative and ASCII");
    h.set_size(size);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_cksum();
    *h.as_bytes()
}

/// Reads a file from an offset with positioned reads (`pread`), so any number of
/// `write_oci` calls can share one `&File` across threads.
struct PosReader<'a> {
    file: &'a File,
    pos: u64,
}

impl Read for PosReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        #[cfg(unix)]
        let n = std::os::unix::fs::FileExt::read_at(self.file, buf, self.pos)?;
        #[cfg(windows)]
        let n = std::os::windows::fs::FileExt::seek_read(self.file, buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}
