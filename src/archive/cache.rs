//! Scans remembered by file identity, so a rerun of the same archive (a no-op, a retry, a
//! second batch of nodes) skips the pass that hashes every byte: 0.39 s of a 512 MiB
//! no-op's 3.4 s on the test machine, and the whole inflate of a gzip archive.
//!
//! An entry is keyed by the file's device, inode, size, mtime and ctime (nanoseconds). Any
//! write to the file moves its ctime, which only the kernel sets, so an edited file never
//! meets its old entry, even with its mtime put back. The entry holds the scan as it was
//! (member offsets and digests, the small JSON documents), not conclusions: the layout is
//! validated again from it on every open. And a digest vouched for by an entry is still
//! checked where it matters, by the importer on the node, for every blob it takes.
//!
//! The cache is an optimisation only: any failure to read or write it means a full scan,
//! never an error. Written to `$XDG_CACHE_HOME/kubectl-sideload/scans` (else
//! `~/.cache/…`), private to the user, newest [`KEEP`] entries kept; `SIDELOAD_SCAN_CACHE=off`
//! turns it off.

use std::fs::{self, Metadata};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::scan::Scan;

/// Entries kept: each is a few KiB (offsets, digests, manifests and configs).
const KEEP: usize = 64;
/// An archive whose kept JSON passes this is scanned every time instead of remembered.
const MOST_DATA: usize = 4 << 20;
/// Bumped whenever what a scan records changes: an entry from another format is a miss.
const FORMAT: u32 = 1;

/// The cache directory, unless turned off or there is no home.
pub fn default_dir() -> Option<PathBuf> {
    if std::env::var_os("SIDELOAD_SCAN_CACHE").is_some_and(|v| v == "off") {
        return None;
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("kubectl-sideload").join("scans"))
}

/// What identifies one state of one file; `None` off Unix, where std exposes neither an
/// inode nor a ctime (no cache there).
pub fn key(path: &Path, meta: &Metadata) -> Option<String> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let path = fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        Some(format!(
            "{FORMAT}\0{}\0{}\0{}\0{}\0{}\0{}\0{}\0{}",
            env!("CARGO_PKG_VERSION"),
            path.display(),
            meta.dev(),
            meta.ino(),
            meta.len(),
            meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128,
            meta.ctime() as i128 * 1_000_000_000 + meta.ctime_nsec() as i128,
            meta.mode(),
        ))
    }
    #[cfg(not(unix))]
    {
        let _ = (path, meta);
        None
    }
}

/// Whether a file last changed (ctime) at least a second before `scan_started`: only such a
/// file is remembered. File times are as coarse as the kernel's clock tick, so a write
/// during the scan could otherwise leave the ctime it had when the scan began.
pub fn settled(meta: &Metadata, scan_started: std::time::SystemTime) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let changed = std::time::UNIX_EPOCH
            + std::time::Duration::new(meta.ctime().max(0) as u64, meta.ctime_nsec().max(0) as u32);
        changed + std::time::Duration::from_secs(1) <= scan_started
    }
    #[cfg(not(unix))]
    {
        let _ = (meta, scan_started);
        false
    }
}

/// The scan remembered under `key`, if any.
pub fn load(dir: &Path, key: &str) -> Option<Scan> {
    let bytes = fs::read(entry_path(dir, key)).ok()?;
    let entry: Entry = serde_json::from_slice(&bytes).ok()?;
    // The name is a hash of the key; the key itself settles it.
    (entry.key == key).then_some(entry.scan)
}

/// Remembers `scan` under `key` (best effort).
pub fn store(dir: &Path, key: &str, scan: &Scan) {
    let data: usize = scan
        .members
        .values()
        .map(|m| m.data.as_ref().map_or(0, |d| d.len()))
        .sum();
    if data > MOST_DATA {
        return;
    }
    let _ = write(dir, key, scan);
    prune(dir);
}

fn write(dir: &Path, key: &str, scan: &Scan) -> std::io::Result<()> {
    fs::create_dir_all(dir)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
    }
    let bytes = serde_json::to_vec(&EntryRef { key, scan })?;
    // A whole entry or none: written aside, then renamed into place.
    let mut file = tempfile::NamedTempFile::new_in(dir)?;
    file.write_all(&bytes)?;
    file.persist(entry_path(dir, key))?;
    Ok(())
}

/// Keeps the newest [`KEEP`] entries.
fn prune(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let mut found: Vec<(std::time::SystemTime, PathBuf)> = entries
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    if found.len() <= KEEP {
        return;
    }
    found.sort();
    for (_, path) in &found[..found.len() - KEEP] {
        let _ = fs::remove_file(path);
    }
}

fn entry_path(dir: &Path, key: &str) -> PathBuf {
    dir.join(format!(
        "{}.json",
        hex::encode(Sha256::digest(key.as_bytes()))
    ))
}

/// [`Entry`] as written, borrowing the scan.
#[derive(Serialize)]
struct EntryRef<'a> {
    key: &'a str,
    scan: &'a Scan,
}

/// A scan as stored, under the key it was taken for.
#[derive(Serialize, Deserialize)]
struct Entry {
    key: String,
    scan: Scan,
}

#[cfg(test)]
mod tests {
    use std::fs::File;
    use std::os::unix::fs::FileExt;
    use std::time::Duration;

    use super::super::testutil::{TestImage, docker_archive, write_temp};
    use super::super::{Archive, ArchiveError};
    use super::*;

    /// An archive file old enough (ctime a second past) to be remembered.
    fn settled_archive(seed: u64) -> (tempfile::TempDir, PathBuf, TestImage) {
        let img = TestImage::new(seed, "linux/amd64", 2, 4096);
        let (dir, path) = write_temp(&docker_archive(&img, &["app:v1"]).tar());
        std::thread::sleep(Duration::from_millis(1100));
        (dir, path, img)
    }

    fn entries(dir: &Path) -> usize {
        fs::read_dir(dir).map_or(0, |d| d.count())
    }

    #[test]
    fn a_settled_archive_is_remembered_and_its_second_open_reads_the_entry() {
        let (_d, path, img) = settled_archive(1);
        let cache = tempfile::tempdir().unwrap();
        let first = Archive::open_path_cached(&path, Some(cache.path())).unwrap();
        assert_eq!(entries(cache.path()), 1);
        let key = key(&path, &fs::metadata(&path).unwrap()).unwrap();
        let remembered = load(cache.path(), &key).expect("an entry under the file's key");
        let layer = img.layer_digests()[0].clone();
        assert!(
            remembered.members.values().any(|m| m.digest == layer),
            "the entry holds the layer digests"
        );
        // The entry is what the second open uses: one doctored in the cache shows through.
        let mut doctored = remembered;
        doctored.members.clear();
        store(cache.path(), &key, &doctored);
        let second = Archive::open_path_cached(&path, Some(cache.path()));
        assert!(second.is_err(), "an empty remembered scan holds no image");
        // Unharmed, it gives the same image as the scan did.
        fs::remove_dir_all(cache.path()).unwrap();
        Archive::open_path_cached(&path, Some(cache.path())).unwrap();
        let third = Archive::open_path_cached(&path, Some(cache.path())).unwrap();
        assert_eq!(first[0].summary().digest, third[0].summary().digest);
        assert_eq!(first[0].summary().refs, third[0].summary().refs);
    }

    #[test]
    fn a_file_changed_in_place_with_its_mtime_put_back_is_scanned_again() {
        let (_d, path, _img) = settled_archive(2);
        let cache = tempfile::tempdir().unwrap();
        Archive::open_path_cached(&path, Some(cache.path())).unwrap();
        let before = fs::metadata(&path).unwrap();
        // The same size, one byte of the last layer flipped, the old mtime restored: only
        // the ctime (which the kernel sets) tells.
        let file = File::options().write(true).read(true).open(&path).unwrap();
        let scan = load(cache.path(), &key(&path, &before).unwrap()).unwrap();
        let layer = scan
            .members
            .values()
            .filter(|m| m.data.is_none())
            .max_by_key(|m| m.offset)
            .unwrap();
        let mut byte = [0u8; 1];
        file.read_exact_at(&mut byte, layer.offset).unwrap();
        file.write_all_at(&[byte[0] ^ 0xff], layer.offset).unwrap();
        file.set_modified(before.modified().unwrap()).unwrap();
        let after = fs::metadata(&path).unwrap();
        assert_eq!(after.modified().unwrap(), before.modified().unwrap());
        assert_ne!(key(&path, &before), key(&path, &after));
        let err = Archive::open_path_cached(&path, Some(cache.path())).unwrap_err();
        assert!(
            matches!(err, ArchiveError::DigestMismatch { .. }),
            "the edit must be found by a fresh scan: {err}"
        );
    }

    #[test]
    fn a_file_not_yet_settled_is_not_remembered() {
        let img = TestImage::new(3, "linux/amd64", 1, 512);
        let (_d, path) = write_temp(&docker_archive(&img, &["app:v1"]).tar());
        let cache = tempfile::tempdir().unwrap();
        Archive::open_path_cached(&path, Some(cache.path())).unwrap();
        assert_eq!(entries(cache.path()), 0);
    }

    #[test]
    fn an_entry_under_another_key_is_a_miss() {
        let (_d, path, _img) = settled_archive(4);
        let cache = tempfile::tempdir().unwrap();
        Archive::open_path_cached(&path, Some(cache.path())).unwrap();
        let key = key(&path, &fs::metadata(&path).unwrap()).unwrap();
        let file = entry_path(cache.path(), &key);
        let mut entry: Entry = serde_json::from_slice(&fs::read(&file).unwrap()).unwrap();
        entry.key.push('x');
        fs::write(&file, serde_json::to_vec(&entry).unwrap()).unwrap();
        assert!(load(cache.path(), &key).is_none());
        fs::write(&file, b"not json").unwrap();
        assert!(load(cache.path(), &key).is_none());
    }

    #[test]
    fn only_the_newest_entries_are_kept() {
        let cache = tempfile::tempdir().unwrap();
        for i in 0..KEEP + 5 {
            store(cache.path(), &format!("k{i}"), &Scan::default());
        }
        assert_eq!(entries(cache.path()), KEEP);
    }
}
