//! Round trips for every archive format, and one test per kind of bad input. Fixtures are
//! built in code by `testutil`.

use std::collections::{HashMap, HashSet};
use std::io::{self, Read, Write};

use serde_json::{Value, json};

use super::layout::sha256_digest;
use super::spec;
use super::testutil::*;
use super::*;

// ---- helpers ----

pub(super) fn open_bytes(bytes: &[u8]) -> Result<Archive, ArchiveError> {
    let (_dir, path) = write_temp(bytes);
    let result = Archive::open(&Source::Path(path));
    if let Err(e) = &result {
        assert_message_style(e);
    }
    result
}

pub(super) fn open_ok(bytes: &[u8]) -> Archive {
    open_bytes(bytes).unwrap_or_else(|e| panic!("open failed: {e}"))
}

pub(super) fn open_err(bytes: &[u8]) -> ArchiveError {
    match open_bytes(bytes) {
        Ok(a) => panic!("opened a bad archive: {:?}", a.summary()),
        Err(e) => e,
    }
}

/// House style: lowercase, no trailing period, and a next step after a `;`.
pub(super) fn assert_message_style(e: &ArchiveError) {
    let msg = e.to_string();
    let first = msg.chars().next().unwrap();
    assert!(!first.is_uppercase(), "message starts uppercase: {msg}");
    assert!(!msg.ends_with('.'), "message ends with a period: {msg}");
    if !matches!(e, ArchiveError::Write(_) | ArchiveError::Io { .. }) {
        assert!(msg.contains(';'), "message names no next step: {msg}");
    }
}

pub(super) fn platform(s: &str) -> Platform {
    s.parse().unwrap()
}

pub(super) fn no_skip() -> HashSet<String> {
    HashSet::new()
}

/// A member of a tar we wrote: its header facts and bytes.
pub(super) struct Out {
    pub(super) path: String,
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: u64,
    pub(super) data: Vec<u8>,
}

pub(super) fn untar(bytes: &[u8]) -> Vec<Out> {
    let mut a = tar::Archive::new(bytes);
    let mut out = Vec::new();
    for e in a.entries().unwrap() {
        let mut e = e.unwrap();
        assert_eq!(e.header().entry_type(), tar::EntryType::Regular);
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        out.push(Out {
            path: e.path().unwrap().to_string_lossy().into_owned(),
            mode: e.header().mode().unwrap(),
            uid: e.header().uid().unwrap(),
            gid: e.header().gid().unwrap(),
            mtime: e.header().mtime().unwrap(),
            data,
        });
    }
    out
}

pub(super) fn write(a: &Archive, image: &PlatformImage, skip: &HashSet<String>) -> Vec<u8> {
    let want = a.oci_len(image, skip).unwrap();
    let mut out = Vec::new();
    let n = a.write_oci(image, skip, &mut out).unwrap();
    assert_eq!(n, want, "write_oci returned a different count than oci_len");
    assert_eq!(out.len() as u64, want, "oci_len is not the bytes written");
    out
}

/// Checks what every OCI-layout tar we write promises (a whole stream, or one part of a cut
/// one): `oci-layout` and `index.json` first, end-of-archive blocks, no member twice, fixed
/// header facts, every blob its digest. Returns the members.
pub(super) fn check_tar(bytes: &[u8]) -> Vec<Out> {
    assert!(bytes.ends_with(&[0u8; 1024]), "no end-of-archive blocks");
    let members = untar(bytes);
    let paths: HashSet<&str> = members.iter().map(|m| m.path.as_str()).collect();
    assert_eq!(paths.len(), members.len(), "duplicate members");
    assert_eq!(members[0].path, "oci-layout");
    assert_eq!(members[1].path, "index.json");
    for m in &members {
        assert_eq!(
            (m.mode, m.uid, m.gid, m.mtime),
            (0o644, 0, 0, 0),
            "{}",
            m.path
        );
        if let Some(hex) = m.path.strip_prefix("blobs/sha256/") {
            assert_eq!(
                sha256_digest(&m.data),
                format!("sha256:{hex}"),
                "{}",
                m.path
            );
        }
    }
    members
}

/// Writes `image` as OCI and checks everything we promise about the output; returns it.
pub(super) fn check_write(a: &Archive, image: &PlatformImage, skip: &HashSet<String>) -> Vec<u8> {
    let bytes = write(a, image, skip);
    let members = check_tar(&bytes);
    let by_path: HashMap<&str, &Out> = members.iter().map(|m| (m.path.as_str(), m)).collect();
    let blob = |d: &str| {
        by_path
            .get(format!("blobs/sha256/{}", hex(d)).as_str())
            .copied()
    };
    let pos = |d: &str| {
        members
            .iter()
            .position(|m| m.path == format!("blobs/sha256/{}", hex(d)))
    };

    // index.json: one descriptor per ref, each at the target, annotated as containerd does.
    let index: Value = serde_json::from_slice(&by_path["index.json"].data).unwrap();
    let descs = index["manifests"].as_array().unwrap();
    let target = a.target_digest(image);
    let refs = &a.summary().refs;
    assert_eq!(descs.len(), refs.len().max(1));
    for (d, r) in descs.iter().zip(refs) {
        assert_eq!(d["digest"], json!(target));
        assert_eq!(d["annotations"]["io.containerd.image.name"], json!(r));
        let tag = r.rsplit(':').next().unwrap();
        if !r.contains('@') {
            assert_eq!(
                d["annotations"]["org.opencontainers.image.ref.name"],
                json!(tag)
            );
        }
    }
    let target_blob = blob(&target).expect("target blob missing");
    assert_eq!(descs[0]["size"], json!(target_blob.data.len()));

    // The manifest, reached from the target, names exactly this image's config and layers.
    // (Read with the typed structs, which skip unknown fields as containerd does: a blob
    // may carry JSON too deep for a `Value`, archive::fuzz found.)
    if target != image.manifest.digest {
        let idx: spec::Index = serde_json::from_slice(&target_blob.data).unwrap();
        let listed: Vec<&str> = idx.manifests.iter().map(|d| d.digest.as_str()).collect();
        assert!(listed.contains(&image.manifest.digest.as_str()));
        for other in &a.summary().images {
            if other.manifest.digest != image.manifest.digest {
                assert!(
                    blob(&other.manifest.digest).is_none(),
                    "other platform written"
                );
            }
        }
    }
    let manifest: spec::Manifest =
        serde_json::from_slice(&blob(&image.manifest.digest).expect("manifest").data).unwrap();
    assert_eq!(manifest.config.digest, image.config.digest);
    // `"layers": null` (as Docker 25.0.0 wrote) is no layers.
    let layer_digests: Vec<&str> = manifest
        .layers
        .iter()
        .flatten()
        .map(|l| l.digest.as_str())
        .collect();
    let want: Vec<&str> = image.layers.iter().map(|l| l.digest.as_str()).collect();
    assert_eq!(layer_digests, want);
    assert!(blob(&image.config.digest).is_some(), "config missing");

    // Layers present unless skipped; metadata first.
    let last_meta = pos(&image.manifest.digest)
        .unwrap()
        .max(pos(&image.config.digest).unwrap());
    for l in &image.layers {
        match (skip.contains(&l.digest), pos(&l.digest)) {
            (true, Some(_)) => panic!("skipped layer {} written", l.digest),
            (false, None) => panic!("layer {} missing", l.digest),
            // (A layer that is the config blob itself is written once, as the config.)
            (false, Some(p)) => assert!(
                p > last_meta || l.digest == image.config.digest,
                "layer before metadata"
            ),
            (true, None) => {}
        }
    }

    // And the output is itself an archive we read back the same (lacking what was skipped).
    if !skip.is_empty() {
        match open_bytes(&bytes) {
            Err(ArchiveError::MissingBlobs { missing, .. }) => {
                for l in image.layers.iter().filter(|l| skip.contains(&l.digest)) {
                    assert!(missing.contains(&l.digest), "{} not missing", l.digest);
                }
            }
            other => panic!("output with skipped layers opened as {other:?}"),
        }
        return bytes;
    }
    let again = open_ok(&bytes);
    let s = again.summary();
    assert_eq!(s.format, Format::OciLayout);
    assert_eq!(&s.refs, refs);
    assert_eq!(s.digest, target);
    let img = again.image_for(&image.platform).unwrap_or_else(|_| {
        s.images
            .iter()
            .find(|i| i.manifest.digest == image.manifest.digest)
            .unwrap()
    });
    assert_eq!(img.manifest.digest, image.manifest.digest);
    assert_eq!(img.config.digest, image.config.digest);
    assert_eq!(img.layers, image.layers);
    bytes
}

/// Patches the size field of member `path` in a tar (and fixes the header checksum).
pub(super) fn patch_size(tar_bytes: &mut [u8], path: &str, size: u64) {
    let mut off = 0;
    while off + 512 <= tar_bytes.len() {
        let mut h = tar::Header::new_old();
        h.as_mut_bytes().copy_from_slice(&tar_bytes[off..off + 512]);
        let this_size = h.entry_size().unwrap();
        if h.path_bytes().as_ref() == path.as_bytes() {
            h.set_size(size);
            h.set_cksum();
            tar_bytes[off..off + 512].copy_from_slice(h.as_bytes());
            return;
        }
        off += 512 + this_size.div_ceil(512) as usize * 512;
    }
    panic!("no member {path}");
}

/// Where member `path`'s data starts in a tar.
pub(super) fn data_offset(tar_bytes: &[u8], path: &str) -> usize {
    let mut a = tar::Archive::new(tar_bytes);
    for e in a.entries().unwrap() {
        let e = e.unwrap();
        if e.path_bytes().as_ref() == path.as_bytes() {
            return e.raw_file_position() as usize;
        }
    }
    panic!("no member {path}");
}

// ---- docker-archive ----

#[test]
fn docker_archive_round_trip() {
    let img = TestImage::new(1, "linux/amd64", 3, 40_000);
    let bytes = docker_archive(&img, &["app:v2", "app:latest"]).tar();
    let a = open_ok(&bytes);
    let s = a.summary();
    assert_eq!(s.format, Format::DockerArchive);
    assert!(!s.compressed);
    assert_eq!(s.size, bytes.len() as u64);
    assert_eq!(
        s.refs,
        ["docker.io/library/app:v2", "docker.io/library/app:latest"]
    );
    assert_eq!(s.images.len(), 1);
    let image = &s.images[0];
    assert_eq!(image.platform, platform("linux/amd64"));
    assert!(image.complete && image.missing.is_empty());
    assert_eq!(image.config.digest, img.config_digest());
    assert_eq!(image.config.media_type, spec::DOCKER_CONFIG);
    let layers: Vec<&str> = image.layers.iter().map(|l| l.digest.as_str()).collect();
    assert_eq!(layers, img.layer_digests());
    for (l, bytes) in image.layers.iter().zip(&img.layers) {
        assert_eq!(l.size, bytes.len() as u64);
        assert_eq!(l.media_type, spec::DOCKER_LAYER);
    }
    // The synthesised manifest is containerd's, byte for byte (Go json.Marshal field order).
    let layer_json: Vec<String> = image
        .layers
        .iter()
        .map(|l| {
            format!(
                r#"{{"mediaType":"application/vnd.docker.image.rootfs.diff.tar","digest":"{}","size":{}}}"#,
                l.digest, l.size
            )
        })
        .collect();
    let expected = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json","config":{{"mediaType":"application/vnd.docker.container.image.v1+json","digest":"{}","size":{}}},"layers":[{}]}}"#,
        image.config.digest,
        image.config.size,
        layer_json.join(",")
    );
    assert_eq!(image.manifest.digest, sha256_digest(expected.as_bytes()));
    assert_eq!(image.manifest.media_type, spec::DOCKER_MANIFEST);
    assert_eq!(s.digest, image.manifest.digest);
    assert_eq!(a.target_digest(image), image.manifest.digest);
    // Stable across runs.
    assert_eq!(open_ok(&bytes).summary().digest, s.digest);

    let image = a.image_for(&platform("linux/x86_64")).unwrap();
    check_write(&a, image, &no_skip());
}

#[test]
fn docker_archive_with_symlinked_shared_layer() {
    // docker save links a layer that appears twice to its first copy.
    let m = docker_archive_with_shared_layer(2);
    let a = open_ok(&m.tar());
    let s = a.summary();
    assert_eq!(s.refs, ["registry.example/team/app:1.0"]);
    let image = a.image_for(&platform("linux/arm64/v8")).unwrap();
    assert_eq!(image.layers.len(), 3);
    assert_eq!(image.layers[0], image.layers[2]);
    let out = check_write(&a, image, &no_skip());
    let blobs = untar(&out)
        .iter()
        .filter(|m| m.path.starts_with("blobs/"))
        .count();
    assert_eq!(blobs, 4, "manifest + config + 2 distinct layers");
}

#[test]
fn skopeo_and_podman_docker_archives() {
    let img = TestImage::new(3, "linux/amd64", 2, 5_000);
    let a = open_ok(&skopeo_docker_archive(&img, &["user/app"]).tar());
    assert_eq!(a.summary().format, Format::DockerArchive);
    assert_eq!(a.summary().refs, ["docker.io/user/app:latest"]);
    check_write(&a, &a.summary().images[0], &no_skip());

    // podman names short refs localhost/…; kept as is.
    let a = open_ok(&docker_archive(&img, &["localhost/app:v1", "localhost:5000/x:1"]).tar());
    assert_eq!(a.summary().refs, ["localhost/app:v1", "localhost:5000/x:1"]);
}

#[test]
fn docker_archive_with_gzip_layers() {
    let img = TestImage::gzipped(4, "linux/amd64", 2, 30_000);
    let a = open_ok(&docker_archive(&img, &["app:gz"]).tar());
    let image = &a.summary().images[0];
    for (l, stored) in image.layers.iter().zip(&img.layers) {
        assert_eq!(l.media_type, spec::DOCKER_LAYER_GZIP);
        assert_eq!(l.digest, sha256_digest(stored));
    }
    check_write(&a, image, &no_skip());
}

#[test]
fn untagged_docker_archive_has_no_refs_and_can_be_named() {
    let img = TestImage::new(5, "linux/amd64", 1, 1_000);
    let mut m = docker_archive(&img, &[]);
    let manifest = String::from_utf8(m.get("manifest.json").to_vec()).unwrap();
    m.replace(
        "manifest.json",
        manifest.replace("\"RepoTags\":[]", "\"RepoTags\":null"),
    );
    let a = open_ok(&m.tar());
    assert!(a.summary().refs.is_empty());
    let image = &a.summary().images[0];
    // No name: one unannotated descriptor.
    let out = write(&a, image, &no_skip());
    let index: Value = serde_json::from_slice(&untar(&out)[1].data).unwrap();
    assert_eq!(index["manifests"].as_array().unwrap().len(), 1);
    assert!(index["manifests"][0].get("annotations").is_none());
    // A user-given name.
    let refs = vec![reference::normalize("my/app:dev").unwrap()];
    let len = a.oci_len_named(image, &no_skip(), &refs).unwrap();
    let mut out = Vec::new();
    assert_eq!(
        a.write_oci_named(image, &no_skip(), &refs, &mut out)
            .unwrap(),
        len
    );
    let again = open_ok(&out);
    assert_eq!(again.summary().refs, ["docker.io/my/app:dev"]);
}

// ---- OCI layout ----

#[test]
fn oci_layout_round_trip() {
    let img = TestImage::new(10, "linux/arm64/v8", 3, 20_000);
    let entry = annotated(
        img.descriptor(),
        &[
            ("io.containerd.image.name", "docker.io/library/app:v2"),
            ("org.opencontainers.image.ref.name", "v2"),
        ],
    );
    let a = open_ok(&oci_archive(&[&img], vec![entry]).tar());
    let s = a.summary();
    assert_eq!(s.format, Format::OciLayout);
    assert_eq!(s.refs, ["docker.io/library/app:v2"]);
    assert_eq!(s.tags, ["v2"]);
    assert_eq!(s.digest, img.manifest_digest());
    let image = a.image_for(&platform("linux/arm64")).unwrap();
    assert_eq!(image.platform, platform("linux/arm64/v8"));
    assert_eq!(image.manifest.media_type, spec::OCI_MANIFEST);
    assert_eq!(image.config.digest, img.config_digest());
    let layers: Vec<&str> = image.layers.iter().map(|l| l.digest.as_str()).collect();
    assert_eq!(layers, img.layer_digests());
    assert_eq!(a.target_digest(image), img.manifest_digest());
    check_write(&a, image, &no_skip());
}

#[test]
fn oci_ref_names_full_and_bare() {
    let img = TestImage::new(11, "linux/amd64", 1, 1_000);
    // skopeo `oci-archive:x.tar:app:v1` writes the full name as ref.name.
    let entry = annotated(
        img.descriptor(),
        &[("org.opencontainers.image.ref.name", "app:v1")],
    );
    let a = open_ok(&oci_archive(&[&img], vec![entry]).tar());
    assert_eq!(a.summary().refs, ["docker.io/library/app:v1"]);

    // A bare tag alone names nothing; it is offered to the caller.
    let entry = annotated(
        img.descriptor(),
        &[("org.opencontainers.image.ref.name", "v1")],
    );
    let a = open_ok(&oci_archive(&[&img], vec![entry]).tar());
    assert!(a.summary().refs.is_empty());
    assert_eq!(a.summary().tags, ["v1"]);

    // A bare tag joins a repository named elsewhere.
    let entries = vec![
        annotated(
            img.descriptor(),
            &[("io.containerd.image.name", "ghcr.io/o/app:v1")],
        ),
        annotated(
            img.descriptor(),
            &[("org.opencontainers.image.ref.name", "stable")],
        ),
    ];
    let a = open_ok(&oci_archive(&[&img], entries).tar());
    assert_eq!(
        a.summary().refs,
        ["ghcr.io/o/app:v1", "ghcr.io/o/app:stable"]
    );
    check_write(&a, &a.summary().images[0], &no_skip());
}

#[test]
fn oci_descriptor_without_media_type_is_probed() {
    let img = TestImage::new(12, "linux/amd64", 1, 1_000);
    let mut d = img.descriptor();
    d.as_object_mut().unwrap().remove("mediaType");
    let a = open_ok(&oci_archive(&[&img], vec![d]).tar());
    assert_eq!(
        a.summary().images[0].manifest.media_type,
        spec::OCI_MANIFEST
    );
}

#[test]
fn docker25_round_trip() {
    let img = TestImage::new(20, "linux/amd64", 4, 10_000);
    let mut m = docker25_archive(&img, "app:v2", "v2");
    // RepoTags may carry a tag index.json lacks; it comes after the annotation names.
    let manifest = String::from_utf8(m.get("manifest.json").to_vec()).unwrap();
    m.replace(
        "manifest.json",
        manifest.replace(r#"["app:v2"]"#, r#"["app:v2","app:stable"]"#),
    );
    let a = open_ok(&m.tar());
    let s = a.summary();
    assert_eq!(s.format, Format::Docker25);
    assert_eq!(
        s.refs,
        ["docker.io/library/app:v2", "docker.io/library/app:stable"]
    );
    assert_eq!(s.tags, ["v2"]);
    assert_eq!(s.digest, img.manifest_digest());
    let image = a.image_for(&platform("linux/amd64")).unwrap();
    assert_eq!(image.config.digest, img.config_digest());
    check_write(&a, image, &no_skip());
}

#[test]
fn docker25_zero_layer_manifest_is_moby_47065() {
    let mut img = TestImage::new(21, "linux/amd64", 2, 1_000);
    img.manifest = oci_manifest(&img.config, &[], false);
    let e = open_err(&docker25_archive(&img, "app:v2", "v2").tar());
    assert!(
        matches!(e, ArchiveError::ZeroLayerManifest { diff_ids: 2, .. }),
        "{e}"
    );
    assert!(e.to_string().contains("25.0.1"), "{e}");
}

// ---- multi-platform ----

#[test]
fn multi_platform_index_round_trip() {
    let amd = TestImage::new(30, "linux/amd64", 2, 10_000);
    let arm = TestImage::new(31, "linux/arm64/v8", 2, 10_000);
    let index = image_index(&[&amd, &arm]);
    let a =
        open_ok(&multi_platform(&[&amd, &arm], &[&amd, &arm], "docker.io/library/app:v2").tar());
    let s = a.summary();
    assert_eq!(s.digest, sha256_digest(&index));
    assert_eq!(s.refs, ["docker.io/library/app:v2"]);
    assert_eq!(s.images.len(), 2, "attestation manifests are not platforms");
    assert!(s.images.iter().all(|i| i.complete));
    let image = a.image_for(&platform("linux/arm64")).unwrap();
    assert_eq!(image.manifest.digest, arm.manifest_digest());
    assert_eq!(a.target_digest(image), s.digest);
    check_write(&a, image, &no_skip());
    let image = a.image_for(&platform("linux/amd64")).unwrap();
    assert_eq!(image.config.digest, amd.config_digest());
    check_write(&a, image, &no_skip());
}

#[test]
fn multi_platform_with_one_platforms_blobs_is_kind_3795() {
    let amd = TestImage::new(32, "linux/amd64", 2, 10_000);
    let arm = TestImage::new(33, "linux/arm64", 2, 10_000);
    let a = open_ok(&multi_platform(&[&amd, &arm], &[&amd], "docker.io/library/app:v2").tar());
    let s = a.summary();
    let by_arch = |arch: &str| {
        s.images
            .iter()
            .find(|i| i.platform.architecture == arch)
            .unwrap()
    };
    assert!(by_arch("amd64").complete);
    assert!(!by_arch("arm64").complete);
    assert_eq!(by_arch("arm64").missing, [arm.manifest_digest()]);

    assert!(a.image_for(&platform("linux/amd64")).is_ok());
    match a.image_for(&platform("linux/arm64")) {
        Err(ArchiveError::IncompletePlatform {
            platform: p,
            missing,
        }) => {
            assert_eq!(p.architecture, "arm64");
            assert_eq!(missing, [arm.manifest_digest()]);
        }
        other => panic!("{other:?}"),
    }
    match a.image_for(&platform("linux/s390x")) {
        Err(e @ ArchiveError::NoMatchingPlatform { .. }) => {
            assert_message_style(&e);
            let msg = e.to_string();
            assert!(
                msg.contains("linux/amd64") && msg.contains("linux/arm64"),
                "{msg}"
            );
        }
        other => panic!("{other:?}"),
    }
    let e = a.image_for(&platform("linux/arm64")).unwrap_err();
    assert_message_style(&e);
    assert!(e.to_string().contains("kind#3795"));
}

#[test]
fn missing_layers_can_be_skipped_when_the_node_has_them() {
    let amd = TestImage::new(34, "linux/amd64", 1, 1_000);
    let arm = TestImage::new(35, "linux/arm64", 3, 2_000);
    let mut m = multi_platform(&[&amd, &arm], &[&amd, &arm], "docker.io/library/app:v2");
    let gone = arm.layer_digests()[1].clone();
    m.remove(&format!("blobs/sha256/{}", hex(&gone)));
    let a = open_ok(&m.tar());
    let arm_image = a
        .summary()
        .images
        .iter()
        .find(|i| i.platform.architecture == "arm64")
        .unwrap()
        .clone();
    assert_eq!(arm_image.missing, std::slice::from_ref(&gone));
    assert!(matches!(
        a.oci_len(&arm_image, &no_skip()),
        Err(ArchiveError::IncompletePlatform { .. })
    ));
    let skip: HashSet<String> = [gone].into();
    let out = write(&a, &arm_image, &skip);
    assert_eq!(
        untar(&out).len(),
        2 + 1 + 1 + 1 + 2,
        "layout, index.json, index, manifest, config, 2 layers"
    );
}

// ---- skip sets, gzip, stdin ----

#[test]
fn skip_set_omits_layers() {
    let img = TestImage::new(40, "linux/amd64", 4, 8_000);
    let a = open_ok(&docker_archive(&img, &["app:v2"]).tar());
    let image = &a.summary().images[0];
    let full = a.oci_len(image, &no_skip()).unwrap();
    let skip: HashSet<String> = [
        image.layers[0].digest.clone(),
        image.layers[3].digest.clone(),
    ]
    .into_iter()
    .collect();
    let out = check_write(&a, image, &skip);
    let saved: u64 = [0, 3]
        .iter()
        .map(|&i| 512 + image.layers[i].size.div_ceil(512) * 512)
        .sum();
    assert_eq!(out.len() as u64, full - saved);
    // Skipping everything leaves the metadata containerd needs.
    let all: HashSet<String> = image.layers.iter().map(|l| l.digest.clone()).collect();
    let members = untar(&check_write(&a, image, &all));
    assert_eq!(members.len(), 4);
}

#[test]
fn gzip_archives_give_the_same_stream_as_plain_ones() {
    let img = TestImage::new(50, "linux/amd64", 3, 100_000);
    let amd = TestImage::new(51, "linux/amd64", 2, 50_000);
    let arm = TestImage::new(52, "linux/arm64", 2, 50_000);
    let fixtures = [
        docker_archive(&img, &["app:v2"]),
        docker25_archive(&img, "app:v2", "v2"),
        multi_platform(&[&amd, &arm], &[&amd, &arm], "docker.io/library/app:v2"),
    ];
    for m in fixtures {
        let plain = open_ok(&m.tar());
        let gz = open_ok(&gzip(&m.tar()));
        assert!(gz.summary().compressed);
        assert_eq!(gz.summary().format, plain.summary().format);
        assert_eq!(gz.summary().digest, plain.summary().digest);
        for image in &plain.summary().images {
            let skip: HashSet<String> = [image.layers[0].digest.clone()].into();
            for skip in [no_skip(), skip] {
                let want = write(&plain, image, &skip);
                assert_eq!(check_write(&gz, image, &skip), want);
            }
        }
    }
}

/// A reader that hands out a few bytes at a time, like a pipe.
struct Trickle<'a>(&'a [u8]);

impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf.len().min(self.0.len()).min(4093);
        buf[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        Ok(n)
    }
}

#[test]
fn stdin_is_spooled_once_and_streams_like_a_file() {
    let img = TestImage::new(60, "linux/amd64", 3, 70_000);
    for bytes in [
        docker_archive(&img, &["app:v2"]).tar(),
        gzip(&docker25_archive(&img, "app:v2", "v2").tar()),
    ] {
        let from_file = open_ok(&bytes);
        let a = Archive::open_reader_one(Trickle(&bytes), "stdin").unwrap();
        assert_eq!(a.summary().size, bytes.len() as u64);
        assert_eq!(a.summary().digest, from_file.summary().digest);
        assert_eq!(a.summary().refs, from_file.summary().refs);
        let image = &a.summary().images[0];
        assert_eq!(
            check_write(&a, image, &no_skip()),
            write(&from_file, image, &no_skip())
        );
    }
}

#[test]
fn empty_stdin() {
    let e = Archive::open_reader_one(io::empty(), "stdin")
        .err()
        .unwrap();
    assert!(matches!(e, ArchiveError::EmptyStdin));
    assert_eq!(
        e.to_string().split(';').next().unwrap(),
        "no input on stdin"
    );
    assert_message_style(&e);
}

#[test]
fn archive_is_shared_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Archive>();

    let img = TestImage::new(70, "linux/amd64", 3, 200_000);
    for bytes in [
        docker_archive(&img, &["app:v2"]).tar(),
        gzip(&docker_archive(&img, &["app:v2"]).tar()),
    ] {
        let a = open_ok(&bytes);
        let image = &a.summary().images[0];
        let want = write(&a, image, &no_skip());
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| s.spawn(|| write(&a, image, &no_skip())))
                .collect();
            for h in handles {
                assert_eq!(h.join().unwrap(), want);
            }
        });
    }
}

#[test]
fn summary_serialises_for_json_output() {
    let img = TestImage::new(80, "linux/arm64/v8", 1, 1_000);
    let a = open_ok(&docker25_archive(&img, "app:v2", "v2").tar());
    let v = serde_json::to_value(a.summary()).unwrap();
    assert_eq!(v["format"], "docker25");
    assert_eq!(v["images"][0]["platform"]["variant"], "v8");
    assert_eq!(
        v["images"][0]["config"]["digest"],
        json!(img.config_digest())
    );
    assert_eq!(
        serde_json::to_value(Format::DockerArchive).unwrap(),
        "docker-archive"
    );
    assert_eq!(
        serde_json::to_value(Format::OciLayout).unwrap(),
        "oci-layout"
    );
}

// ---- bad input ----

#[test]
fn nonexistent_path_and_directory() {
    let e = Archive::open(&Source::Path("/nonexistent/app.tar".into()))
        .err()
        .unwrap();
    assert!(matches!(e, ArchiveError::NotFound { .. }), "{e}");
    assert!(
        e.to_string()
            .starts_with("/nonexistent/app.tar: no such file")
    );
    assert_message_style(&e);
    let dir = tempfile::tempdir().unwrap();
    let e = Archive::open(&Source::Path(dir.path().into()))
        .err()
        .unwrap();
    assert!(matches!(e, ArchiveError::NotAFile { .. }), "{e}");
    assert_message_style(&e);
}

#[test]
fn not_a_tar() {
    assert!(matches!(open_err(b""), ArchiveError::Empty { .. }));
    let cases: [(&[u8], &str); 5] = [
        (b"hello, this is a text file\n", "text"),
        (b"PK\x03\x04\x14\x00\x00\x00\x08\x00", "zip"),
        (&[0x28, 0xb5, 0x2f, 0xfd, 0, 0, 0], "zstd"),
        (&[0xde, 0xad, 0xbe, 0xef], "binary"),
        (&[b'x'; 2000], "text"),
    ];
    for (bytes, hint) in cases {
        match open_err(bytes) {
            ArchiveError::NotATar { looks_like, .. } => {
                assert!(looks_like.contains(hint), "{looks_like} lacks {hint}")
            }
            other => panic!("{other}"),
        }
    }
    match open_err(&gzip(b"just text, gzipped\n")) {
        ArchiveError::NotATar { looks_like, .. } => {
            assert!(
                looks_like.starts_with("gzip-compressed text"),
                "{looks_like}"
            )
        }
        other => panic!("{other}"),
    }
    let e = open_err(b"hello\n");
    assert!(e.to_string().contains("docker save"), "{e}");
}

#[test]
fn truncated_archives() {
    let img = TestImage::new(90, "linux/amd64", 2, 300_000);
    let bytes = docker_archive(&img, &["app:v2"]).tar();
    let layer_path = docker_archive(&img, &["app:v2"])
        .0
        .iter()
        .find(|(p, _)| p.ends_with("layer.tar"))
        .unwrap()
        .0
        .clone();
    let mid_layer = data_offset(&bytes, &layer_path) + 100_000;
    let manifest_header = data_offset(&bytes, "manifest.json") - 512;
    // (A file missing only its end-of-archive blocks is complete, and accepted, as Go's
    // archive/tar accepts it.)
    assert!(open_bytes(&bytes[..bytes.len() - 1024]).is_ok());
    for cut in [
        mid_layer,
        bytes.len() / 2,
        manifest_header,
        manifest_header + 100,
    ] {
        let e = open_err(&bytes[..cut]);
        assert!(
            matches!(e, ArchiveError::Truncated { .. }),
            "cut at {cut}: {e}"
        );
    }
    // gzip: cut mid-stream.
    let gz = gzip(&bytes);
    for cut in [gz.len() / 3, gz.len() - 4] {
        let e = open_err(&gz[..cut]);
        assert!(
            matches!(e, ArchiveError::Truncated { .. }),
            "gzip cut at {cut}: {e}"
        );
    }
    // Stdin cut mid-layer.
    let e = Archive::open_reader_one(&bytes[..mid_layer], "stdin")
        .err()
        .unwrap();
    assert!(matches!(e, ArchiveError::Truncated { .. }), "{e}");
}

#[test]
fn tar_without_an_image() {
    let mut m = Members::default();
    m.file("hello.txt", "hi");
    m.file("../../etc/evil", "x");
    assert!(matches!(open_err(&m.tar()), ArchiveError::NoImage { .. }));
    assert!(matches!(
        open_err(&[0u8; 10240]),
        ArchiveError::NoImage { .. }
    ));

    let img = TestImage::new(91, "linux/amd64", 1, 1_000);
    let mut m = oci_archive(&[&img], vec![img.descriptor()]);
    m.remove("index.json");
    let e = open_err(&m.tar());
    assert!(
        matches!(e, ArchiveError::NoImage { ref detail, .. } if detail.contains("index.json")),
        "{e}"
    );
    let mut m = oci_archive(&[&img], vec![img.descriptor()]);
    m.remove("oci-layout");
    assert!(matches!(open_err(&m.tar()), ArchiveError::NoImage { .. }));
    let m = oci_archive(&[&img], vec![]);
    assert!(matches!(open_err(&m.tar()), ArchiveError::NoImage { .. }));
    let mut m = docker_archive(&img, &["app"]);
    m.replace("manifest.json", "[]");
    assert!(matches!(open_err(&m.tar()), ArchiveError::NoImage { .. }));
}

#[test]
fn missing_blobs_are_listed() {
    let img = TestImage::new(92, "linux/amd64", 3, 1_000);
    // docker-archive: the member paths.
    let mut m = docker_archive(&img, &["app:v2"]);
    let layer_paths: Vec<String> =
        m.0.iter()
            .filter(|(p, _)| p.ends_with("layer.tar"))
            .map(|(p, _)| p.clone())
            .collect();
    m.remove(&layer_paths[0]).remove(&layer_paths[2]);
    match open_err(&m.tar()) {
        ArchiveError::MissingBlobs { missing, .. } => {
            assert_eq!(missing, [layer_paths[0].clone(), layer_paths[2].clone()])
        }
        other => panic!("{other}"),
    }
    let mut m = docker_archive(&img, &["app:v2"]);
    let config_path = format!("{}.json", hex(&img.config_digest()));
    m.remove(&config_path);
    match open_err(&m.tar()) {
        ArchiveError::MissingBlobs { missing, .. } => assert_eq!(missing, [config_path]),
        other => panic!("{other}"),
    }

    // OCI: the digests.
    let mut m = oci_archive(&[&img], vec![img.descriptor()]);
    let layers = img.layer_digests();
    m.remove(&format!("blobs/sha256/{}", hex(&layers[1])));
    m.remove(&format!("blobs/sha256/{}", hex(&img.config_digest())));
    match open_err(&m.tar()) {
        ArchiveError::MissingBlobs { missing, .. } => {
            assert_eq!(missing, [img.config_digest(), layers[1].clone()]);
            let e = ArchiveError::MissingBlobs {
                name: "x".into(),
                missing,
            };
            assert!(e.to_string().contains(&layers[1]));
        }
        other => panic!("{other}"),
    }
    let mut m = oci_archive(&[&img], vec![img.descriptor()]);
    m.remove(&format!("blobs/sha256/{}", hex(&img.manifest_digest())));
    assert!(matches!(
        open_err(&m.tar()),
        ArchiveError::MissingBlobs { .. }
    ));
    // Multi-platform with no platform complete.
    let arm = TestImage::new(93, "linux/arm64", 1, 1_000);
    let m = multi_platform(&[&img, &arm], &[], "docker.io/library/app:v2");
    assert!(matches!(
        open_err(&m.tar()),
        ArchiveError::MissingBlobs { .. }
    ));
}

#[test]
fn digest_and_size_mismatches() {
    let img = TestImage::new(94, "linux/amd64", 2, 5_000);
    // OCI layer whose bytes are not its name (same length).
    let mut m = oci_archive(&[&img], vec![img.descriptor()]);
    let path = format!("blobs/sha256/{}", hex(&img.layer_digests()[1]));
    let mut bad = m.get(&path).to_vec();
    bad[600] ^= 0xff;
    m.replace(&path, bad);
    match open_err(&m.tar()) {
        ArchiveError::DigestMismatch { file, .. } => assert!(file.contains(&path), "{file}"),
        other => panic!("{other}"),
    }
    // OCI layer of another length than its descriptor says.
    let mut m = oci_archive(&[&img], vec![img.descriptor()]);
    let mut longer = m.get(&path).to_vec();
    longer.extend_from_slice(&[0; 512]);
    m.replace(&path, longer);
    assert!(matches!(
        open_err(&m.tar()),
        ArchiveError::SizeMismatch { .. }
    ));
    // Absurd descriptor size.
    let mut d = img.descriptor();
    d["size"] = json!(u64::MAX);
    let e = open_err(&oci_archive(&[&img], vec![d]).tar());
    assert!(
        matches!(
            e,
            ArchiveError::SizeMismatch {
                expected: u64::MAX,
                ..
            }
        ),
        "{e}"
    );
    // docker-archive layer whose bytes differ from the config's diff_id.
    let mut m = docker_archive(&img, &["app:v2"]);
    let lp =
        m.0.iter()
            .find(|(p, _)| p.ends_with("layer.tar"))
            .unwrap()
            .0
            .clone();
    let mut bad = m.get(&lp).to_vec();
    bad[700] ^= 1;
    m.replace(&lp, bad);
    assert!(matches!(
        open_err(&m.tar()),
        ArchiveError::DigestMismatch { .. }
    ));
    // docker-archive config not matching its `<hex>.json` name.
    let mut m = docker_archive(&img, &["app:v2"]);
    let cp = format!("{}.json", hex(&img.config_digest()));
    let cfg = String::from_utf8(m.get(&cp).to_vec()).unwrap();
    m.replace(&cp, cfg.replace("\"test\"", "\"tset\""));
    assert!(matches!(
        open_err(&m.tar()),
        ArchiveError::DigestMismatch { .. }
    ));
}

#[test]
fn malformed_json_names_the_file() {
    let img = TestImage::new(95, "linux/amd64", 1, 1_000);
    let mut m = docker_archive(&img, &["app:v2"]);
    m.replace("manifest.json", "[{\"Config\": ");
    match open_err(&m.tar()) {
        ArchiveError::Json { file, .. } => assert_eq!(file, "manifest.json"),
        other => panic!("{other}"),
    }
    let mut m = oci_archive(&[&img], vec![img.descriptor()]);
    m.replace("index.json", "{\"manifests\": 7}");
    match open_err(&m.tar()) {
        ArchiveError::Json { file, .. } => assert_eq!(file, "index.json"),
        other => panic!("{other}"),
    }
    let mut m = oci_archive(&[&img], vec![img.descriptor()]);
    m.replace("oci-layout", "{}");
    assert!(matches!(open_err(&m.tar()), ArchiveError::Json { .. }));
    // A config that is not JSON, with consistent digests.
    let mut bad = img.clone();
    bad.config = b"{not json".to_vec();
    bad.manifest = oci_manifest(&bad.config, &bad.layers, false);
    match open_err(&oci_archive(&[&bad], vec![bad.descriptor()]).tar()) {
        ArchiveError::Json { file, .. } => assert!(file.contains("image config"), "{file}"),
        other => panic!("{other}"),
    }
}

#[test]
fn invalid_digests_refs_and_layouts() {
    let img = TestImage::new(96, "linux/amd64", 1, 1_000);
    for digest in ["sha256:zz", "md5:abcd", "sha256:../../etc/passwd", ""] {
        let mut d = img.descriptor();
        d["digest"] = json!(digest);
        let e = open_err(&oci_archive(&[&img], vec![d]).tar());
        assert!(
            matches!(e, ArchiveError::InvalidDigest { .. }),
            "{digest}: {e}"
        );
    }
    for hostile in ["app;rm -rf /", "app:v1\n", "$(reboot)", "App:V1 x"] {
        let e = open_err(&docker_archive(&img, &[hostile]).tar());
        assert!(matches!(e, ArchiveError::InvalidReference { .. }), "{e}");
        assert!(!e.to_string().contains('\n'), "raw newline in message");
        let d = annotated(img.descriptor(), &[("io.containerd.image.name", hostile)]);
        let e = open_err(&oci_archive(&[&img], vec![d]).tar());
        assert!(matches!(e, ArchiveError::InvalidReference { .. }), "{e}");
    }
    let mut m = oci_archive(&[&img], vec![img.descriptor()]);
    m.replace("oci-layout", r#"{"imageLayoutVersion":"2.0.0"}"#);
    assert!(matches!(
        open_err(&m.tar()),
        ArchiveError::UnsupportedLayout { .. }
    ));
}

#[test]
fn layer_count_must_match_diff_ids() {
    let mut img = TestImage::new(97, "linux/amd64", 3, 1_000);
    let two = img.layers[..2].to_vec();
    img.manifest = oci_manifest(&img.config, &two, false);
    let e = open_err(&oci_archive(&[&img], vec![img.descriptor()]).tar());
    assert!(
        matches!(
            e,
            ArchiveError::LayerCountMismatch {
                layers: 2,
                diff_ids: 3,
                ..
            }
        ),
        "{e}"
    );
}

/// All of an archive's images, as `Archive::open_all` gives them.
fn open_all_bytes(bytes: &[u8]) -> Vec<Archive> {
    let (_dir, path) = write_temp(bytes);
    Archive::open_all(&Source::Path(path)).unwrap_or_else(|e| panic!("open failed: {e}"))
}

#[test]
fn several_images_in_one_archive() {
    let a = TestImage::new(98, "linux/amd64", 1, 1_000);
    let b = TestImage::new(99, "linux/amd64", 1, 1_000);
    let entries = vec![
        annotated(
            a.descriptor(),
            &[("io.containerd.image.name", "docker.io/library/a:1")],
        ),
        annotated(
            b.descriptor(),
            &[("io.containerd.image.name", "docker.io/library/b:1")],
        ),
    ];
    let tar = oci_archive(&[&a, &b], entries).tar();
    // One image at a time (status, inspect): refused, naming both.
    let e = open_err(&tar);
    match &e {
        ArchiveError::MultipleImages { images, .. } => assert_eq!(images.len(), 2),
        other => panic!("{other}"),
    }
    assert!(e.to_string().contains("docker.io/library/b:1"));
    // A load takes each, in the archive's order, each streaming exactly its own blobs.
    let all = open_all_bytes(&tar);
    assert_eq!(all.len(), 2);
    for (archive, (img, name)) in all.iter().zip([(&a, "a"), (&b, "b")]) {
        let summary = archive.summary();
        assert_eq!(summary.refs, [format!("docker.io/library/{name}:1")]);
        assert_eq!(summary.digest, img.descriptor()["digest"]);
        let image = &summary.images[0];
        check_write(archive, image, &no_skip());
    }

    // docker save a:1 b:1 of two images that share their base layer: one stored copy,
    // named by both manifest.json entries.
    let base = layer(97, 2_000);
    let own = layer(96, 500);
    let config_b = serde_json::to_vec(&json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [sha256_digest(&base), sha256_digest(&own)]},
    }))
    .unwrap();
    let config_a = serde_json::to_vec(&json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [sha256_digest(&base)]},
    }))
    .unwrap();
    let mut m = Members::default();
    m.file("base/layer.tar", base.clone());
    m.file("own/layer.tar", own.clone());
    let (ca, cb) = (
        format!("{}.json", hex(&sha256_digest(&config_a))),
        format!("{}.json", hex(&sha256_digest(&config_b))),
    );
    m.file(&ca, config_a);
    m.file(&cb, config_b);
    m.file(
        "manifest.json",
        serde_json::to_vec(&json!([
            {"Config": ca, "RepoTags": ["a:1"], "Layers": ["base/layer.tar"]},
            {"Config": cb, "RepoTags": ["b:1", "b:latest"], "Layers": ["base/layer.tar", "own/layer.tar"]},
        ]))
        .unwrap(),
    );
    let all = open_all_bytes(&m.tar());
    let refs: Vec<&[String]> = all.iter().map(|a| &a.summary().refs[..]).collect();
    assert_eq!(
        refs,
        [
            &["docker.io/library/a:1".to_string()][..],
            &[
                "docker.io/library/b:1".to_string(),
                "docker.io/library/b:latest".to_string()
            ][..]
        ]
    );
    let layers: Vec<Vec<&str>> = all
        .iter()
        .map(|a| {
            a.summary().images[0]
                .layers
                .iter()
                .map(|l| l.digest.as_str())
                .collect()
        })
        .collect();
    assert_eq!(layers[0], [sha256_digest(&base)]);
    assert_eq!(layers[1], [sha256_digest(&base), sha256_digest(&own)]);
    for archive in &all {
        check_write(archive, &archive.summary().images[0], &no_skip());
    }

    // Two tags of one image are one image.
    let entries = vec![
        annotated(
            a.descriptor(),
            &[("io.containerd.image.name", "docker.io/library/a:1")],
        ),
        annotated(
            a.descriptor(),
            &[("io.containerd.image.name", "docker.io/library/a:2")],
        ),
    ];
    let arc = open_ok(&oci_archive(&[&a], entries).tar());
    assert_eq!(
        arc.summary().refs,
        ["docker.io/library/a:1", "docker.io/library/a:2"]
    );
    check_write(&arc, &arc.summary().images[0], &no_skip());
}

#[test]
fn absurd_sizes() {
    let img = TestImage::new(100, "linux/amd64", 2, 5_000);
    // A member claiming more bytes than the file holds.
    let mut bytes = docker_archive(&img, &["app:v2"]).tar();
    patch_size(&mut bytes, "manifest.json", 1 << 40);
    assert!(matches!(open_err(&bytes), ArchiveError::Truncated { .. }));
    // Metadata over containerd's 20 MiB JSON limit.
    let mut m = docker_archive(&img, &["app:v2"]);
    let mut huge = m.get("manifest.json").to_vec();
    huge.resize(21 << 20, b' ');
    m.replace("manifest.json", huge);
    assert!(matches!(open_err(&m.tar()), ArchiveError::TooLarge { .. }));
}

#[test]
fn names_are_never_paths_on_disk() {
    // Traversal names and links out of the archive are map keys, never followed to disk.
    let img = TestImage::new(101, "linux/amd64", 1, 1_000);
    let mut m = docker_archive(&img, &["app:v2"]);
    m.0.insert(
        0,
        ("../../../tmp/evil".into(), Content::File(b"x".to_vec())),
    );
    m.0.insert(0, ("/etc/evil".into(), Content::File(b"x".to_vec())));
    let a = open_ok(&m.tar());
    check_write(&a, &a.summary().images[0], &no_skip());

    let lp =
        m.0.iter()
            .find(|(p, _)| p.ends_with("layer.tar"))
            .unwrap()
            .0
            .clone();
    for target in ["/etc/passwd", "../../../../etc/passwd"] {
        let mut m = docker_archive(&img, &["app:v2"]);
        m.remove(&lp);
        m.symlink(&lp, target);
        let manifest = m.get("manifest.json").to_vec();
        m.remove("manifest.json");
        m.file("manifest.json", manifest);
        assert!(matches!(
            open_err(&m.tar()),
            ArchiveError::MissingBlobs { .. }
        ));
    }
}

// ---- write_oci errors ----

#[test]
fn write_errors() {
    let img = TestImage::new(110, "linux/amd64", 2, 50_000);
    let bytes = docker_archive(&img, &["app:v2"]).tar();
    let a = open_ok(&bytes);
    let image = a.summary().images[0].clone();

    struct Broken;
    impl Write for Broken {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::Error::new(io::ErrorKind::BrokenPipe, "pipe closed"))
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    match a.write_oci(&image, &no_skip(), Broken) {
        Err(ArchiveError::Write(e)) => assert_eq!(e.kind(), io::ErrorKind::BrokenPipe),
        other => panic!("{other:?}"),
    }

    let mut stranger = image.clone();
    stranger.manifest.digest = sha256_digest(b"other");
    assert!(matches!(
        a.oci_len(&stranger, &no_skip()),
        Err(ArchiveError::UnknownImage { .. })
    ));

    // The file changes between open and write.
    let (_dir, path) = write_temp(&bytes);
    let a = Archive::open(&Source::Path(path.clone())).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap()
        .write_all(b"more")
        .unwrap();
    let e = a.write_oci(&image, &no_skip(), io::sink()).unwrap_err();
    assert!(matches!(e, ArchiveError::SourceChanged { .. }), "{e}");
    assert_message_style(&e);
}

#[test]
fn empty_and_non_json_metadata_are_json_errors() {
    let img = TestImage::new(120, "linux/amd64", 1, 1_000);
    let mut m = docker_archive(&img, &["app:v2"]);
    m.replace("manifest.json", "");
    assert!(matches!(open_err(&m.tar()), ArchiveError::Json { .. }));
    // A config blob that does not even start like JSON (digests consistent).
    let mut bad = img.clone();
    bad.config = b"garbage, not a config".to_vec();
    bad.manifest = oci_manifest(&bad.config, &bad.layers, false);
    match open_err(&oci_archive(&[&bad], vec![bad.descriptor()]).tar()) {
        ArchiveError::Json { file, .. } => assert!(file.contains("image config"), "{file}"),
        other => panic!("{other}"),
    }
}

#[test]
fn untrusted_strings_are_escaped_in_messages() {
    let img = TestImage::new(121, "linux/amd64", 1, 1_000);
    let mut m = docker_archive(&img, &["app:v2"]);
    let mut list: Value = serde_json::from_slice(m.get("manifest.json")).unwrap();
    list[0]["Layers"] = json!(["\u{1b}]0;pwned\u{7}/layer.tar"]);
    m.replace("manifest.json", serde_json::to_vec(&list).unwrap());
    let msg = open_err(&m.tar()).to_string();
    assert!(!msg.contains('\u{1b}') && !msg.contains('\u{7}'), "{msg:?}");
    assert!(msg.contains("\\u{1b}"), "{msg}");

    // Platform values from a config are escaped too.
    let mut evil = img.clone();
    let mut cfg: Value = serde_json::from_slice(&evil.config).unwrap();
    cfg["architecture"] = json!("arm\u{1b}[2J");
    evil.config = serde_json::to_vec(&cfg).unwrap();
    evil.manifest = oci_manifest(&evil.config, &evil.layers, false);
    let a = open_ok(&oci_archive(&[&evil], vec![evil.descriptor()]).tar());
    let e = a.image_for(&platform("linux/amd64")).unwrap_err();
    assert!(!e.to_string().contains('\u{1b}'), "{e}");
}

/// A header of `kind` declaring `size` bytes, as the first block of a tar.
fn raw_header(name: &str, kind: tar::EntryType, size: u64) -> Vec<u8> {
    let mut h = tar::Header::new_gnu();
    h.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name.as_bytes());
    h.set_mode(0o644);
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_cksum();
    h.as_bytes().to_vec()
}

#[test]
fn gzip_bomb_in_tar_extension_headers_is_refused_unread() {
    // The tar crate reads a GNU long name or link, or a PAX header, into memory whole,
    // whatever size it declares: 1.2 MB of gzip declaring 256 MiB of long name made it
    // allocate (and fill) 256 MiB before this was caught, 12 MB took 2.5 GiB.
    let declared = 256 << 20;
    for kind in [
        tar::EntryType::GNULongName,
        tar::EntryType::GNULongLink,
        tar::EntryType::XHeader,
    ] {
        let mut bomb = gzip(&raw_header("././@LongLink", kind, declared));
        bomb.extend_from_slice(&gzip_zeros(declared as usize));
        let started = std::time::Instant::now();
        let (e, largest) = largest_allocation(|| open_err(&bomb));
        match &e {
            ArchiveError::TooLarge { file, size, .. } => {
                assert_eq!(*size, declared, "{e}");
                assert!(file.contains("at byte 0"), "{e}");
            }
            other => panic!("{kind:?}: {other}"),
        }
        assert!(
            largest < 8 << 20,
            "{kind:?}: allocated {largest} bytes at once"
        );
        assert!(
            started.elapsed().as_millis() < 1000,
            "{kind:?}: read the bomb"
        );
    }
    // Uncompressed, the data need not even be there.
    let e = open_err(&raw_header("x", tar::EntryType::GNULongName, 1 << 40));
    assert!(matches!(e, ArchiveError::TooLarge { .. }), "{e}");

    // A GNU sparse map goes on for as many 512-byte blocks as the tar says; the crate keeps
    // two entries per map slot (3 MiB here, all of it zeros).
    let mut h = tar::Header::new_gnu();
    h.set_path("sparse").unwrap();
    h.set_entry_type(tar::EntryType::GNUSparse);
    h.set_size(0);
    h.as_gnu_mut().unwrap().isextended[0] = 1;
    h.set_cksum();
    let mut ext = tar::GnuExtSparseHeader::new();
    ext.set_is_extended(true);
    let mut sparse = h.as_bytes().to_vec();
    for _ in 0..6 * 1024 {
        sparse.extend_from_slice(ext.as_bytes());
    }
    let e = open_err(&gzip(&sparse));
    assert!(
        matches!(e, ArchiveError::TooLarge { ref file, .. } if file.contains("sparse map")),
        "{e}"
    );
}

#[test]
fn pax_records_and_long_names_are_followed() {
    // Go's archive/tar (and so docker and containerd) writes a file over 8 GiB with its size
    // in a PAX record; names over 100 bytes go in GNU long-name entries. The bound on those
    // entries must track where each header is without ever refusing a tar like that.
    let img = TestImage::new(130, "linux/amd64", 2, 3_000);
    let m = docker_archive(&img, &["app:v2"]);
    let a = open_ok(&m.tar_pax());
    assert_eq!(a.summary().refs, ["docker.io/library/app:v2"]);
    check_write(&a, &a.summary().images[0], &no_skip());
    assert_eq!(
        open_ok(&gzip(&m.tar_pax())).summary().digest,
        a.summary().digest
    );

    let mut m = oci_archive(&[&img], vec![img.descriptor()]);
    let long = format!("{}/notes.txt", "d".repeat(150));
    m.0.insert(0, (long.clone(), Content::File(b"x".repeat(700))));
    m.symlink(&format!("{}/link", "l".repeat(120)), &format!("../{long}"));
    let mut bytes = m.tar();
    // And a PAX header under the limit (an extended attribute of 600 KiB) before it all.
    let mut b = tar::Builder::new(Vec::new());
    b.append_pax_extensions([("SCHILY.xattr.user.big", &vec![b'v'; 600 << 10][..])])
        .unwrap();
    let mut h = tar::Header::new_ustar();
    h.set_path("xattr.txt").unwrap();
    h.set_size(3);
    h.set_cksum();
    b.append(&h, &b"abc"[..]).unwrap();
    let mut prefixed = b.into_inner().unwrap();
    prefixed.truncate(prefixed.len() - 1024); // drop its end-of-archive blocks
    prefixed.append(&mut bytes);
    let a = open_ok(&prefixed);
    check_write(&a, &a.summary().images[0], &no_skip());
}

#[test]
fn bare_tags_join_no_repository_of_a_named_descriptor() {
    // `docker save a:1 b:2` of one image (Docker 25+): each index.json entry has its full
    // name and its bare tag. We named the image b:1 and a:2 as well.
    let img = TestImage::new(131, "linux/amd64", 1, 1_000);
    let named = |name, tag| {
        annotated(
            img.descriptor(),
            &[
                ("io.containerd.image.name", name),
                ("org.opencontainers.image.ref.name", tag),
            ],
        )
    };
    let entries = vec![
        named("docker.io/library/a:1", "1"),
        named("docker.io/library/b:2", "2"),
    ];
    let a = open_ok(&oci_archive(&[&img], entries).tar());
    assert_eq!(
        a.summary().refs,
        ["docker.io/library/a:1", "docker.io/library/b:2"]
    );
    assert_eq!(a.summary().tags, ["1", "2"]);
    check_write(&a, &a.summary().images[0], &no_skip());
}

#[test]
fn containerd_ref_name_objects_are_tags_not_names() {
    // containerd (and our own stream, for a name pinned to a digest) writes ref.name as
    // `reference.Spec.Object`: `@sha256:…` or `v1@sha256:…`. Found by archive::fuzz: the
    // first was refused as an invalid reference, so our own output did not read back.
    let img = TestImage::new(132, "linux/amd64", 1, 1_000);
    let pinned = format!("docker.io/library/app@{}", img.manifest_digest());
    let object = format!("@{}", img.manifest_digest());
    let entry = annotated(
        img.descriptor(),
        &[
            ("io.containerd.image.name", &pinned),
            ("org.opencontainers.image.ref.name", &object),
        ],
    );
    let a = open_ok(&oci_archive(&[&img], vec![entry]).tar());
    assert_eq!(a.summary().refs, [pinned]);
    assert!(a.summary().tags.is_empty());
    check_write(&a, &a.summary().images[0], &no_skip());

    // `v1@sha256:…` alone is the tag v1, not an image named docker.io/library/v1.
    let object = format!("v1@{}", img.manifest_digest());
    let entry = annotated(
        img.descriptor(),
        &[("org.opencontainers.image.ref.name", &object)],
    );
    let a = open_ok(&oci_archive(&[&img], vec![entry]).tar());
    assert!(a.summary().refs.is_empty(), "{:?}", a.summary().refs);
    assert_eq!(a.summary().tags, ["v1"]);
}

#[test]
fn a_tar_of_countless_entries_is_refused() {
    // Each entry kept costs memory; a gzip stream of empty entries would grow it without
    // bound. (Raw headers: tar::Builder is slow at this in a debug build.)
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o644);
    h.set_size(0);
    h.set_entry_type(tar::EntryType::Regular);
    let mut bytes = Vec::with_capacity((scan::MAX_ENTRIES + 2) * 512);
    for k in 0..=scan::MAX_ENTRIES {
        let name = format!("f{k}");
        let field = &mut h.as_old_mut().name;
        field.fill(0);
        field[..name.len()].copy_from_slice(name.as_bytes());
        h.set_cksum();
        bytes.extend_from_slice(h.as_bytes());
    }
    bytes.extend_from_slice(&[0; 1024]);
    let e = Archive::open_reader_one(&bytes[..], "stdin").err().unwrap();
    assert!(matches!(e, ArchiveError::TooManyEntries { .. }), "{e}");
    assert_message_style(&e);
}
