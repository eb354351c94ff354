//! Test fixtures built in code: docker-archive, OCI layout, Docker 25+, multi-platform and
//! gzip archives with deterministic pseudo-random layers. Tests edit the member lists to
//! make broken archives. Also the test binary's allocator, which can tell the largest
//! allocation a piece of code made.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::Write;
use std::path::PathBuf;

use flate2::Compression;
use flate2::write::GzEncoder;
use serde_json::{Value, json};

use super::layout::sha256_digest;

/// A tar member: a file's bytes, or a symlink's target.
#[derive(Clone, Debug)]
pub enum Content {
    File(Vec<u8>),
    Symlink(String),
}

/// An archive under construction: members in tar order.
#[derive(Clone, Debug, Default)]
pub struct Members(pub Vec<(String, Content)>);

impl Members {
    pub fn file(&mut self, path: &str, bytes: impl Into<Vec<u8>>) -> &mut Self {
        self.0.push((path.to_owned(), Content::File(bytes.into())));
        self
    }

    pub fn symlink(&mut self, path: &str, target: &str) -> &mut Self {
        self.0
            .push((path.to_owned(), Content::Symlink(target.to_owned())));
        self
    }

    pub fn remove(&mut self, path: &str) -> &mut Self {
        let before = self.0.len();
        self.0.retain(|(p, _)| p != path);
        assert!(self.0.len() < before, "no member {path}");
        self
    }

    pub fn replace(&mut self, path: &str, bytes: impl Into<Vec<u8>>) -> &mut Self {
        let bytes = bytes.into();
        let slot = self
            .0
            .iter_mut()
            .find(|(p, _)| p == path)
            .unwrap_or_else(|| panic!("no member {path}"));
        slot.1 = Content::File(bytes);
        self
    }

    /// The bytes of a (regular file) member.
    pub fn get(&self, path: &str) -> &[u8] {
        match self.0.iter().find(|(p, _)| p == path) {
            Some((_, Content::File(b))) => b,
            _ => panic!("no file {path}"),
        }
    }

    /// A ustar tar of the members (GNU headers, as docker writes, for long names).
    pub fn tar(&self) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, content) in &self.0 {
            let mut h = tar::Header::new_gnu();
            h.set_mode(0o644);
            h.set_mtime(1_700_000_000);
            match content {
                Content::File(bytes) if path.contains("..") || path.starts_with('/') => {
                    // Hostile names: the tar crate refuses to write them, so set them raw.
                    h.set_size(bytes.len() as u64);
                    h.set_entry_type(tar::EntryType::Regular);
                    h.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
                    h.set_cksum();
                    b.append(&h, &bytes[..]).unwrap();
                }
                Content::File(bytes) => {
                    h.set_size(bytes.len() as u64);
                    h.set_entry_type(tar::EntryType::Regular);
                    b.append_data(&mut h, path, &bytes[..]).unwrap();
                }
                Content::Symlink(target) => {
                    h.set_size(0);
                    h.set_entry_type(tar::EntryType::Symlink);
                    b.append_link(&mut h, path, target).unwrap();
                }
            }
        }
        b.into_inner().unwrap()
    }

    /// A tar of the members as Go's archive/tar writes a file over 8 GiB: a PAX header
    /// carrying `path` and `size` (or `linkpath`) before each member, whose own header holds
    /// a placeholder name and size 0. Readers must take both from the PAX records.
    pub fn tar_pax(&self) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (i, (path, content)) in self.0.iter().enumerate() {
            let mut h = tar::Header::new_ustar();
            h.set_mode(0o644);
            h.set_mtime(1_700_000_000);
            h.set_path(format!("pax-{i}")).unwrap();
            h.set_size(0);
            let size = match content {
                Content::File(bytes) => bytes.len().to_string(),
                Content::Symlink(_) => String::new(),
            };
            let (records, data): (Vec<(&str, &[u8])>, &[u8]) = match content {
                Content::File(bytes) => {
                    h.set_entry_type(tar::EntryType::Regular);
                    (
                        vec![("path", path.as_bytes()), ("size", size.as_bytes())],
                        bytes,
                    )
                }
                Content::Symlink(target) => {
                    h.set_entry_type(tar::EntryType::Symlink);
                    let records = vec![("path", path.as_bytes()), ("linkpath", target.as_bytes())];
                    (records, &[])
                }
            };
            b.append_pax_extensions(records).unwrap();
            h.set_cksum();
            // `append` pads what it copies, not what the header says: the data is all there.
            b.append(&h, data).unwrap();
        }
        b.into_inner().unwrap()
    }
}

/// `n` deterministic pseudo-random bytes (xorshift64*).
pub fn noise(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(n);
    out
}

/// A layer: a tar holding one file of noise.
pub fn layer(seed: u64, len: usize) -> Vec<u8> {
    let mut m = Members::default();
    m.file(&format!("data/file-{seed}"), noise(seed, len));
    m.tar()
}

/// A gzip stream of `len` zero bytes, cheap to make however long: one compressed MiB
/// repeated as gzip members (which a multi-member decoder reads as one stream).
pub fn gzip_zeros(len: usize) -> Vec<u8> {
    let mib = gzip(&vec![0u8; 1 << 20]);
    let mut out = Vec::new();
    for _ in 0..len >> 20 {
        out.extend_from_slice(&mib);
    }
    out.extend_from_slice(&gzip(&vec![0u8; len % (1 << 20)]));
    out
}

pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::new(), Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

pub fn hex(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap()
}

/// One platform's image: layers (as stored), config and OCI manifest bytes.
#[derive(Clone, Debug)]
pub struct TestImage {
    pub os: String,
    pub arch: String,
    pub variant: Option<String>,
    /// Layer bytes as stored in the archive.
    pub layers: Vec<Vec<u8>>,
    pub config: Vec<u8>,
    pub manifest: Vec<u8>,
}

impl TestImage {
    /// An image for `platform` (`linux/arm64/v8`) with `n` uncompressed layers.
    pub fn new(seed: u64, platform: &str, n: usize, layer_len: usize) -> TestImage {
        let layers = (0..n as u64)
            .map(|i| layer(seed * 100 + i, layer_len + i as usize * 1000))
            .collect();
        TestImage::with_layers(seed, platform, layers, false)
    }

    /// An image whose layers are stored gzip-compressed (diff_ids are of the uncompressed
    /// tars, as in real images).
    pub fn gzipped(seed: u64, platform: &str, n: usize, layer_len: usize) -> TestImage {
        let raw: Vec<Vec<u8>> = (0..n as u64)
            .map(|i| layer(seed * 100 + i, layer_len))
            .collect();
        let mut img = TestImage::with_layers(seed, platform, raw.clone(), false);
        img.layers = raw.iter().map(|l| gzip(l)).collect();
        img.manifest = oci_manifest(&img.config, &img.layers, true);
        img
    }

    fn with_layers(seed: u64, platform: &str, layers: Vec<Vec<u8>>, gz: bool) -> TestImage {
        let mut parts = platform.split('/');
        let os = parts.next().unwrap().to_owned();
        let arch = parts.next().unwrap().to_owned();
        let variant = parts.next().map(str::to_owned);
        let diff_ids: Vec<String> = layers.iter().map(|l| sha256_digest(l)).collect();
        let mut config = json!({
            "architecture": arch,
            "os": os,
            "config": {"Env": ["PATH=/usr/bin"], "Cmd": ["/app", &format!("--seed={seed}")]},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": [{"created_by": "test"}],
        });
        if let Some(v) = &variant {
            config["variant"] = json!(v);
        }
        let config = serde_json::to_vec(&config).unwrap();
        let manifest = oci_manifest(&config, &layers, gz);
        TestImage {
            os,
            arch,
            variant,
            layers,
            config,
            manifest,
        }
    }

    pub fn config_digest(&self) -> String {
        sha256_digest(&self.config)
    }

    pub fn manifest_digest(&self) -> String {
        sha256_digest(&self.manifest)
    }

    pub fn layer_digests(&self) -> Vec<String> {
        self.layers.iter().map(|l| sha256_digest(l)).collect()
    }

    /// This image's manifest, config and layers as `blobs/sha256/…` members.
    pub fn add_blobs(&self, m: &mut Members) {
        m.file(&blob_path(&self.manifest), self.manifest.clone());
        m.file(&blob_path(&self.config), self.config.clone());
        for l in &self.layers {
            if !m.0.iter().any(|(p, _)| *p == blob_path(l)) {
                m.file(&blob_path(l), l.clone());
            }
        }
    }

    pub fn descriptor(&self) -> Value {
        json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": self.manifest_digest(),
            "size": self.manifest.len(),
        })
    }
}

pub fn blob_path(bytes: &[u8]) -> String {
    format!("blobs/sha256/{}", hex(&sha256_digest(bytes)))
}

pub fn oci_manifest(config: &[u8], layers: &[Vec<u8>], gz: bool) -> Vec<u8> {
    let layer_type = if gz {
        "application/vnd.oci.image.layer.v1.tar+gzip"
    } else {
        "application/vnd.oci.image.layer.v1.tar"
    };
    serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": sha256_digest(config),
            "size": config.len(),
        },
        "layers": layers.iter().map(|l| json!({
            "mediaType": layer_type,
            "digest": sha256_digest(l),
            "size": l.len(),
        })).collect::<Vec<_>>(),
    }))
    .unwrap()
}

/// `docker save` (< 25): `<id>/layer.tar`, `<config hex>.json`, `manifest.json`,
/// `repositories`; manifest.json last, as docker writes it.
pub fn docker_archive(img: &TestImage, repo_tags: &[&str]) -> Members {
    let mut m = Members::default();
    let mut layer_paths = Vec::new();
    for (i, l) in img.layers.iter().enumerate() {
        let id = hex(&sha256_digest(format!("layer-id-{i}").as_bytes())).to_owned();
        let path = format!("{id}/layer.tar");
        m.file(&format!("{id}/VERSION"), "1.0");
        m.file(&format!("{id}/json"), format!("{{\"id\":\"{id}\"}}"));
        m.file(&path, l.clone());
        layer_paths.push(path);
    }
    let config_path = format!("{}.json", hex(&img.config_digest()));
    m.file(&config_path, img.config.clone());
    m.file(
        "repositories",
        serde_json::to_vec(&json!({"app": {"v2": "x"}})).unwrap(),
    );
    m.file(
        "manifest.json",
        docker_manifest(&config_path, repo_tags, &layer_paths),
    );
    m
}

/// `docker save` of an image whose first layer is also its third: docker stores it once and
/// links the second copy to it (`<id>/layer.tar -> ../<first id>/layer.tar`).
pub fn docker_archive_with_shared_layer(seed: u64) -> Members {
    let base = layer(seed * 100 + 7, 10_000);
    let other = layer(seed * 100 + 8, 1_000);
    let layers = vec![base.clone(), other, base];
    let diff_ids: Vec<String> = layers.iter().map(|l| sha256_digest(l)).collect();
    let config = serde_json::to_vec(&json!({
        "architecture": "arm64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .unwrap();
    let img = TestImage {
        os: "linux".into(),
        arch: "arm64".into(),
        variant: None,
        manifest: oci_manifest(&config, &layers, false),
        layers,
        config,
    };
    let mut m = docker_archive(&img, &["registry.example/team/app:1.0"]);
    let layer_paths: Vec<String> =
        m.0.iter()
            .filter(|(p, _)| p.ends_with("/layer.tar"))
            .map(|(p, _)| p.clone())
            .collect();
    let first_dir = layer_paths[0].split('/').next().unwrap().to_owned();
    m.remove(&layer_paths[2]);
    m.symlink(&layer_paths[2], &format!("../{first_dir}/layer.tar"));
    // manifest.json stays last, as docker writes it.
    let manifest = m.get("manifest.json").to_vec();
    m.remove("manifest.json");
    m.file("manifest.json", manifest);
    m
}

/// A docker-archive `manifest.json` naming one image.
fn docker_manifest(config_path: &str, repo_tags: &[&str], layer_paths: &[String]) -> Vec<u8> {
    serde_json::to_vec(&json!([{
        "Config": config_path,
        "RepoTags": repo_tags,
        "Layers": layer_paths,
    }]))
    .unwrap()
}

/// skopeo `docker-archive:`: layers named `<hex>.tar`, config `<hex>.json`, manifest first.
pub fn skopeo_docker_archive(img: &TestImage, repo_tags: &[&str]) -> Members {
    let layer_paths: Vec<String> = img
        .layer_digests()
        .iter()
        .map(|d| format!("{}.tar", hex(d)))
        .collect();
    let config_path = format!("{}.json", hex(&img.config_digest()));
    let mut m = Members::default();
    m.file(
        "manifest.json",
        docker_manifest(&config_path, repo_tags, &layer_paths),
    );
    m.file(&config_path, img.config.clone());
    for (p, l) in layer_paths.iter().zip(&img.layers) {
        m.file(p, l.clone());
    }
    m
}

/// An OCI layout (podman/skopeo `oci-archive:`, nerdctl): index.json entries given in full.
pub fn oci_archive(imgs: &[&TestImage], index_entries: Vec<Value>) -> Members {
    let mut m = Members::default();
    m.file("oci-layout", r#"{"imageLayoutVersion":"1.0.0"}"#);
    for img in imgs {
        img.add_blobs(&mut m);
    }
    m.file(
        "index.json",
        serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": index_entries,
        }))
        .unwrap(),
    );
    m
}

/// `descriptor` with annotations added.
pub fn annotated(mut descriptor: Value, annotations: &[(&str, &str)]) -> Value {
    let map: serde_json::Map<String, Value> = annotations
        .iter()
        .map(|(k, v)| ((*k).to_owned(), json!(v)))
        .collect();
    descriptor["annotations"] = Value::Object(map);
    descriptor
}

/// Docker 25+ `docker save`: OCI layout plus manifest.json pointing into blobs/.
pub fn docker25_archive(img: &TestImage, repo_tag: &str, tag: &str) -> Members {
    let full = super::reference::normalize(repo_tag).unwrap();
    let entry = annotated(
        img.descriptor(),
        &[
            ("io.containerd.image.name", &full),
            ("org.opencontainers.image.ref.name", tag),
        ],
    );
    let mut m = Members::default();
    img.add_blobs(&mut m);
    m.file(
        "index.json",
        serde_json::to_vec(&json!({"schemaVersion": 2, "manifests": [entry]})).unwrap(),
    );
    m.file(
        "manifest.json",
        serde_json::to_vec(&json!([{
            "Config": blob_path(&img.config),
            "RepoTags": [repo_tag],
            "Layers": img.layers.iter().map(|l| blob_path(l)).collect::<Vec<_>>(),
        }]))
        .unwrap(),
    );
    m.file("oci-layout", r#"{"imageLayoutVersion":"1.0.0"}"#);
    m.file("repositories", "{}");
    m
}

/// A multi-platform image index over `imgs` (plus a buildkit attestation entry).
pub fn image_index(imgs: &[&TestImage]) -> Vec<u8> {
    let mut manifests: Vec<Value> = imgs
        .iter()
        .map(|img| {
            let mut d = img.descriptor();
            let mut p = json!({"os": img.os, "architecture": img.arch});
            if let Some(v) = &img.variant {
                p["variant"] = json!(v);
            }
            d["platform"] = p;
            d
        })
        .collect();
    manifests.push(json!({
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": sha256_digest(b"attestation"),
        "size": 11,
        "annotations": {"vnd.docker.reference.type": "attestation-manifest"},
        "platform": {"os": "unknown", "architecture": "unknown"},
    }));
    serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": manifests,
    }))
    .unwrap()
}

/// An OCI archive whose index.json points at a multi-platform index over `imgs`; only the
/// images in `with_blobs` have their blobs in the tar (kind#3795 when that is a subset).
pub fn multi_platform(imgs: &[&TestImage], with_blobs: &[&TestImage], name: &str) -> Members {
    let index = image_index(imgs);
    let entry = annotated(
        json!({
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": sha256_digest(&index),
            "size": index.len(),
        }),
        &[
            ("io.containerd.image.name", name),
            ("org.opencontainers.image.ref.name", "v2"),
        ],
    );
    let mut m = oci_archive(with_blobs, vec![entry]);
    m.file(&blob_path(&index), index);
    m
}

/// Writes bytes to a fresh file in a temp dir.
pub fn write_temp(bytes: &[u8]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("image.tar");
    std::fs::write(&path, bytes).unwrap();
    (dir, path)
}

/// The test binary's allocator: the system's, also noting the largest single request on a
/// thread inside `largest_allocation` (elsewhere it costs one thread-local read).
struct Tracking;

thread_local! {
    static LARGEST: Cell<Option<usize>> = const { Cell::new(None) };
}

fn note(size: usize) {
    let _ = LARGEST.try_with(|largest| {
        if let Some(so_far) = largest.get()
            && size > so_far
        {
            largest.set(Some(size));
        }
    });
}

// SAFETY: every call goes to `System` unchanged; `note` only reads and writes a `Cell`.
unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Tracking = Tracking;

/// Runs `f`; returns what it returned and the largest single allocation (bytes) it made on
/// this thread. (`Archive::open` hashes and keeps metadata on the calling thread; its
/// reading thread only ever holds `CHUNK`-sized buffers.)
pub fn largest_allocation<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let outer = LARGEST.replace(Some(0));
    let out = f();
    let largest = LARGEST.replace(outer).unwrap_or(0);
    if let Some(so_far) = outer {
        LARGEST.set(Some(so_far.max(largest)));
    }
    (out, largest)
}
