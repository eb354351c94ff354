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
    index_sha256: String,
}

impl Transfer {
    pub fn new(
        archive: Arc<Archive>,
        image: PlatformImage,
        skip: HashSet<String>,
        refs: Vec<String>,
    ) -> Result<Self> {
        let len = archive.oci_len_named(&image, &skip, &refs)?;
        let index_sha256 = archive.oci_index_sha256(&image, &refs)?;
        Ok(Transfer {
            archive,
            image,
            skip,
            refs,
            len,
            index_sha256,
        })
    }

    /// sha256 (hex) of the stream's `index.json`, which the node agent checks.
    pub fn index_sha256(&self) -> &str {
        &self.index_sha256
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
    fn the_announced_index_digest_is_the_written_index() {
        let img = TestImage::new(5, "linux/amd64", 1, 4096);
        let (_dir, path) = write_temp(&docker_archive(&img, &["app:v1"]).tar());
        let archive = Arc::new(Archive::open(&Source::Path(path)).unwrap());
        let image = archive.summary().images[0].clone();
        let t = Transfer::new(
            archive.clone(),
            image,
            HashSet::new(),
            archive.summary().refs.clone(),
        )
        .unwrap();
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
