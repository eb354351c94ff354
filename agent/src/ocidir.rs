//! Receives an OCI-layout tar stream into a directory, trusting nothing in it: only
//! `oci-layout`, `index.json` and `blobs/sha256/<64 hex>` regular files are accepted (no
//! links, no other paths, no duplicates), and every blob must hash to its name.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;

use sha2::{Digest, Sha256};

/// The metadata files are small; a larger one is not ours.
const MAX_METADATA: u64 = 4 << 20;

#[derive(Debug, PartialEq, Eq)]
pub enum Error {
    /// stdin ended after `got` bytes, before the announced count.
    Short {
        got: u64,
    },
    Bad(String),
}

/// Reads exactly `bytes` bytes of `input` as a tar into the new directory `dir` (its parent
/// must exist). Returns the number of blobs written. On error `dir` may hold a part; the
/// caller removes it.
pub fn receive(input: impl Read, bytes: u64, dir: &Path) -> Result<usize, Error> {
    create(dir)?;
    receive_into(input, bytes, dir)
}

/// Makes the new directory `dir` and its blob directory.
pub fn create(dir: &Path) -> Result<(), Error> {
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(dir)
        .map_err(|e| Error::Bad(format!("cannot create {}: {e}", dir.display())))?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir.join("blobs/sha256"))
        .map_err(|e| Error::Bad(format!("cannot create the blob directory: {e}")))?;
    Ok(())
}

/// One more tar into `dir` (made by [`create`]): a part of a cut stream. Its `oci-layout`
/// and `index.json` replace the part before's, so the last part's index names the image;
/// a blob an earlier part wrote may not come again.
pub fn receive_into(input: impl Read, bytes: u64, dir: &Path) -> Result<usize, Error> {
    for name in ["oci-layout", "index.json"] {
        match std::fs::remove_file(dir.join(name)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::Bad(format!("cannot replace {name}: {e}"))),
        }
    }
    let mut counted = Counted {
        inner: input.take(bytes),
        count: 0,
        eof: false,
    };
    let result = unpack(&mut counted, dir);
    // Whatever the tar said, the stream is `bytes` long: read the rest (the end-of-archive
    // blocks) so a short stream is told apart from a bad one.
    let drained = io::copy(&mut counted, &mut io::sink());
    // The stream's own check failed (agent/src/stream.rs: a blob corrupted in transit, an
    // index that is not the plugin's): that, not the shortfall it causes, is the reason.
    if let Err(e) = &drained
        && e.kind() == io::ErrorKind::InvalidData
    {
        return Err(Error::Bad(e.to_string()));
    }
    if counted.count < bytes {
        return Err(Error::Short { got: counted.count });
    }
    drained.map_err(|e| Error::Bad(format!("reading the stream: {e}")))?;
    result
}

/// A layout of its own at `view` for the part just staged in `dir` (made by [`create`]):
/// copies of that part's `oci-layout` and `index.json`, which the next part replaces in
/// `dir`, and a link to `dir`'s blobs, which only grow (every blob was checked on arrival).
pub fn view(dir: &Path, view: &Path) -> Result<(), Error> {
    let bad = |what: &str, e: io::Error| Error::Bad(format!("{what} {}: {e}", view.display()));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(view)
        .map_err(|e| bad("cannot create", e))?;
    for name in ["oci-layout", "index.json"] {
        std::fs::copy(dir.join(name), view.join(name)).map_err(|e| bad(name, e))?;
    }
    std::os::unix::fs::symlink(dir.join("blobs"), view.join("blobs"))
        .map_err(|e| bad("cannot link the blobs into", e))
}

fn unpack(input: &mut Counted<impl Read>, dir: &Path) -> Result<usize, Error> {
    let mut archive = tar::Archive::new(input);
    let mut seen = std::collections::HashSet::new();
    let mut blobs = 0;
    let entries = archive
        .entries()
        .map_err(|e| Error::Bad(format!("not a tar stream: {e}")))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| Error::Bad(format!("bad tar entry: {e}")))?;
        let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let name = raw
            .trim_start_matches("./")
            .trim_end_matches('/')
            .to_string();
        let kind = entry.header().entry_type();
        if kind.is_dir() && matches!(name.as_str(), "" | "blobs" | "blobs/sha256") {
            continue;
        }
        if !kind.is_file() {
            return Err(Error::Bad(format!(
                "tar entry {raw:?} is not a regular file"
            )));
        }
        let digest = match name.as_str() {
            "oci-layout" | "index.json" => None,
            other => Some(
                other
                    .strip_prefix("blobs/sha256/")
                    .filter(|hex| {
                        hex.len() == 64
                            && hex
                                .bytes()
                                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
                    })
                    .ok_or_else(|| Error::Bad(format!("unexpected tar entry {raw:?}")))?
                    .to_string(),
            ),
        };
        if !seen.insert(name.clone()) {
            return Err(Error::Bad(format!("tar entry {raw:?} appears twice")));
        }
        let size = entry
            .header()
            .size()
            .map_err(|e| Error::Bad(e.to_string()))?;
        if digest.is_none() && size > MAX_METADATA {
            return Err(Error::Bad(format!("{name} is {size} bytes; too large")));
        }
        let mut file = File::create_new(dir.join(&name))
            .map_err(|e| Error::Bad(format!("cannot create {name}: {e}")))?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut written = 0u64;
        loop {
            let n = entry
                .read(&mut buf)
                .map_err(|e| Error::Bad(format!("reading {name}: {e}")))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            file.write_all(&buf[..n])
                .map_err(|e| Error::Bad(format!("writing {name}: {e}")))?;
            written += n as u64;
        }
        if written != size {
            return Err(Error::Bad(format!(
                "{name} ended after {written} of {size} bytes"
            )));
        }
        if let Some(expected) = digest {
            let actual = hex::encode(hasher.finalize());
            if actual != expected {
                return Err(Error::Bad(crate::stream::corrupted(&expected, &actual)));
            }
            blobs += 1;
        }
    }
    Ok(blobs)
}

/// Counts what was read and whether the source ran dry.
struct Counted<R> {
    inner: R,
    count: u64,
    eof: bool,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        self.eof |= n == 0;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::tar_of;

    fn sha(data: &[u8]) -> String {
        hex::encode(Sha256::digest(data))
    }

    fn tmp(name: &str) -> std::path::PathBuf {
        let base = std::env::temp_dir().join(format!("agent-ocidir-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(&base).unwrap();
        base.join("img")
    }

    #[test]
    fn a_good_layout_is_written_and_checked() {
        let blob = b"layer bytes";
        let tar = tar_of(&[
            ("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#),
            ("index.json", b"{}"),
            (&format!("blobs/sha256/{}", sha(blob)), blob),
        ]);
        let dir = tmp("good");
        let n = receive(&tar[..], tar.len() as u64, &dir).unwrap();
        assert_eq!(n, 1);
        assert_eq!(
            std::fs::read(dir.join(format!("blobs/sha256/{}", sha(blob)))).unwrap(),
            blob
        );
    }

    #[test]
    fn a_view_keeps_its_parts_index_while_the_next_part_arrives() {
        let (one, two) = (b"layer one".as_slice(), b"layer two".as_slice());
        let part = |index: &[u8], blob: &[u8]| {
            tar_of(&[
                ("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#),
                ("index.json", index),
                (&format!("blobs/sha256/{}", sha(blob)), blob),
            ])
        };
        let dir = tmp("view");
        let first = part(b"{\"part\":0}", one);
        create(&dir).unwrap();
        receive_into(&first[..], first.len() as u64, &dir).unwrap();
        let view_path = dir.with_extension("part0");
        view(&dir, &view_path).unwrap();
        let second = part(b"{\"part\":1}", two);
        receive_into(&second[..], second.len() as u64, &dir).unwrap();
        assert_eq!(
            std::fs::read(view_path.join("index.json")).unwrap(),
            b"{\"part\":0}"
        );
        assert_eq!(
            std::fs::read(dir.join("index.json")).unwrap(),
            b"{\"part\":1}"
        );
        // Blobs of the parts before and after, through the link.
        for blob in [one, two] {
            let path = view_path.join(format!("blobs/sha256/{}", sha(blob)));
            assert_eq!(std::fs::read(path).unwrap(), blob);
        }
    }

    #[test]
    fn a_flipped_byte_is_caught() {
        let blob = b"layer bytes";
        let tar = tar_of(&[(&format!("blobs/sha256/{}", sha(blob)), b"layer bytez")]);
        let err = receive(&tar[..], tar.len() as u64, &tmp("flip")).unwrap_err();
        assert!(
            matches!(&err, Error::Bad(m) if m.contains("corrupted in transit")),
            "{err:?}"
        );
    }

    #[test]
    fn hostile_names_and_short_streams_are_refused() {
        for path in [
            "../escape",
            "blobs/sha256/../../x",
            "etc/passwd",
            "blobs/sha256/abc",
        ] {
            let mut h = tar::Header::new_gnu();
            h.set_size(1);
            h.set_cksum();
            let mut raw = h.as_bytes().to_vec();
            // Write the name by hand: the tar crate's builder refuses "..".
            raw[..100].fill(0);
            raw[..path.len()].copy_from_slice(path.as_bytes());
            let mut header = tar::Header::from_byte_slice(&raw).clone();
            header.set_cksum();
            let mut tar = header.as_bytes().to_vec();
            tar.extend_from_slice(b"x");
            tar.resize(1024 + 1024, 0);
            let err = receive(&tar[..], tar.len() as u64, &tmp("hostile")).unwrap_err();
            assert!(matches!(err, Error::Bad(_)), "{path}: {err:?}");
        }
        let tar = tar_of(&[("index.json", b"{}")]);
        let err = receive(&tar[..100], tar.len() as u64, &tmp("short")).unwrap_err();
        assert_eq!(err, Error::Short { got: 100 });
        let twice = tar_of(&[("index.json", b"{}"), ("index.json", b"{}")]);
        assert!(receive(&twice[..], twice.len() as u64, &tmp("twice")).is_err());
    }
}
