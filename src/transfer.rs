//! How bytes reach a node: one type owns a transfer's contract. What is announced to the
//! node (its length, in the agent's request) is what is written, which is what the node
//! reads: the length is computed once, from the same plan the writer follows, and a writer
//! that would write another count is an error, never a silently short or long stream.

use std::collections::HashSet;
use std::io::{self, Write};
use std::sync::Arc;

use anyhow::Result;

use crate::archive::{Archive, PlatformImage};

/// One node's stream: an OCI-layout tar of one platform image, named `refs`, without the
/// layers in `skip` (the node has them).
#[derive(Debug, Clone)]
pub struct Transfer {
    archive: Arc<Archive>,
    image: PlatformImage,
    skip: HashSet<String>,
    refs: Vec<String>,
    len: u64,
}

impl Transfer {
    pub fn new(
        archive: Arc<Archive>,
        image: PlatformImage,
        skip: HashSet<String>,
        refs: Vec<String>,
    ) -> Result<Self> {
        let len = archive.oci_len_named(&image, &skip, &refs)?;
        Ok(Transfer {
            archive,
            image,
            skip,
            refs,
            len,
        })
    }

    /// The exact number of bytes [`Transfer::write`] writes: what the node is told to read.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Layers left out because the node holds them.
    pub fn reused(&self) -> usize {
        self.skip.len()
    }

    /// Writes the stream. A local read error (the archive file replaced or truncated since
    /// it was opened) is an error here, at once: the caller then drops the exec, and the
    /// node side sees its stream end short and discards what it got.
    pub fn write(&self, w: &mut dyn Write) -> io::Result<u64> {
        let written = self
            .archive
            .write_oci_named(&self.image, &self.skip, &self.refs, w)
            .map_err(|e| io::Error::other(e.to_string()))?;
        if written != self.len {
            return Err(io::Error::other(format!(
                "wrote {written} bytes of a stream announced as {} bytes",
                self.len
            )));
        }
        Ok(written)
    }
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
        let refs = archive.summary().refs.clone();
        let all =
            Transfer::new(archive.clone(), image.clone(), HashSet::new(), refs.clone()).unwrap();
        let mut out = Vec::new();
        assert_eq!(all.write(&mut out).unwrap(), all.len());
        assert_eq!(out.len() as u64, all.len());
        let skip = HashSet::from([image.layers[0].digest.clone()]);
        let less = Transfer::new(archive, image, skip, refs).unwrap();
        assert!(less.len() < all.len());
        assert_eq!(less.reused(), 1);
    }

    #[test]
    fn a_file_changed_since_opening_fails_the_write() {
        let img = TestImage::new(4, "linux/amd64", 1, 4096);
        let (_dir, path) = write_temp(&docker_archive(&img, &["app:v1"]).tar());
        let archive = Arc::new(Archive::open(&Source::Path(path.clone())).unwrap());
        let image = archive.summary().images[0].clone();
        let t = Transfer::new(
            archive.clone(),
            image,
            HashSet::new(),
            archive.summary().refs.clone(),
        )
        .unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(100)
            .unwrap();
        assert!(t.write(&mut Vec::new()).is_err());
    }
}
