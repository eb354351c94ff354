//! Makes sense of what the scan found: which format, which image, which platforms, which
//! blobs (present, verified, or missing), and what the image is called.
//!
//! Follows containerd's importer (`core/images/archive/importer.go`): with `oci-layout`
//! present, `index.json` is authoritative even when Docker 25+ also wrote `manifest.json`;
//! otherwise `manifest.json` is a docker-archive, for which we synthesise the same Docker
//! schema 2 manifest containerd would (same JSON bytes, so the same digest).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use serde::de::DeserializeOwned;

use super::error::ArchiveError;
use super::platform::Platform;
use super::reference::{self, Reference};
use super::scan::{Member, Scan, clean, shown};
use super::spec::{self, Descriptor};
use super::{Blob, Format, PlatformImage};

/// Where a blob's bytes are when `write_oci` needs them.
#[derive(Clone, Debug)]
pub enum BlobData {
    /// Held in memory (JSON documents, and the manifest we synthesise).
    Memory(Arc<[u8]>),
    /// In the tar stream: `size` bytes at `offset` (of the decompressed stream if gzip).
    Stream { offset: u64, size: u64 },
}

/// The interpreted archive.
pub struct Resolved {
    pub format: Format,
    pub refs: Vec<String>,
    pub tags: Vec<String>,
    pub digest: String,
    pub images: Vec<PlatformImage>,
    /// Every present blob the images use, by digest.
    pub blobs: HashMap<String, BlobData>,
    /// Manifest digest → the index blobs between the archive's target and that manifest.
    pub parents: HashMap<String, Vec<Blob>>,
}

/// How deep image indexes may nest before we call the archive absurd.
const MAX_INDEX_DEPTH: usize = 4;

/// Every image the archive holds (tags of one image are one image), in the archive's order.
pub fn resolve(name: &str, scan: &Scan) -> Result<Vec<Resolved>, ArchiveError> {
    let mut ctx = Ctx {
        name,
        scan,
        blobs: HashMap::new(),
        parents: HashMap::new(),
    };
    let has_layout = scan.member("oci-layout").is_some();
    let has_manifest_json = scan.member("manifest.json").is_some();
    let result = if has_layout {
        ctx.resolve_oci(has_manifest_json)
    } else if has_manifest_json {
        ctx.resolve_docker()
    } else if scan.member("index.json").is_some() {
        Err(ArchiveError::NoImage {
            name: name.to_owned(),
            detail: "it has index.json but no oci-layout file".to_owned(),
        })
    } else {
        Err(ArchiveError::NoImage {
            name: name.to_owned(),
            detail: "neither manifest.json nor oci-layout + index.json".to_owned(),
        })
    };
    // A file cut off at an entry boundary loses its last members (docker save writes
    // manifest.json last) without any read error; say "truncated", not "no image".
    match result {
        Err(ArchiveError::NoImage { .. } | ArchiveError::MissingBlobs { .. })
            if !scan.clean_end =>
        {
            Err(ArchiveError::Truncated {
                name: name.to_owned(),
                detail: "the tar has no end-of-archive marker and lacks members the image needs"
                    .to_owned(),
            })
        }
        other => other,
    }
}

struct Ctx<'a> {
    name: &'a str,
    scan: &'a Scan,
    blobs: HashMap<String, BlobData>,
    parents: HashMap<String, Vec<Blob>>,
}

/// Names gathered for an image, kept in containerd's order of preference.
#[derive(Default)]
struct Names {
    image_names: Vec<String>,
    repo_tags: Vec<String>,
    ref_names: Vec<String>,
    tags: Vec<String>,
    /// The bare tags of descriptors that carry no `io.containerd.image.name`.
    loose_tags: Vec<String>,
}

impl Names {
    fn into_refs(self) -> (Vec<String>, Vec<String>) {
        let mut refs: Vec<String> = Vec::new();
        for r in self
            .image_names
            .into_iter()
            .chain(self.repo_tags)
            .chain(self.ref_names)
        {
            if !refs.contains(&r) {
                refs.push(r);
            }
        }
        // A bare tag (Docker 25+ writes `org.opencontainers.image.ref.name: v2`) is not a
        // name; it only names the image together with a repository found elsewhere. Only
        // the tag of a descriptor without a full name is joined: Docker 25+ writes both on
        // each, and joining every tag to every repository named `docker save a:1 b:2` b:1
        // and a:2 as well, which containerd's importer does not
        // (`tests::bare_tags_join_no_repository_of_a_named_descriptor`).
        let repos: Vec<Reference> = refs
            .iter()
            .filter_map(|r| Reference::parse(r).ok())
            .collect();
        let mut seen = HashSet::new();
        for tag in &self.loose_tags {
            for repo in &repos {
                if !seen.insert((repo.name(), tag.clone())) {
                    continue;
                }
                let r = repo.with_tag(tag).to_string();
                if !refs.contains(&r) {
                    refs.push(r);
                }
            }
        }
        (refs, self.tags)
    }
}

impl<'a> Ctx<'a> {
    fn err_name(&self) -> String {
        self.name.to_owned()
    }

    /// Parses a member that `scan` kept in memory. `scan` keeps every small member that
    /// starts like JSON; for one it did not keep, parsing its first bytes gives the error.
    fn json<T: DeserializeOwned>(&self, m: &Member, file: &str) -> Result<T, ArchiveError> {
        let data = match &m.data {
            Some(data) => &data[..],
            None if m.size > spec::JSON_LIMIT
                || m.head.first().is_some_and(|b| b"{[".contains(b)) =>
            {
                return Err(ArchiveError::TooLarge {
                    name: self.err_name(),
                    file: file.to_owned(),
                    size: m.size,
                    limit: spec::JSON_LIMIT,
                });
            }
            None => &m.head[..],
        };
        serde_json::from_slice(data).map_err(|source| ArchiveError::Json {
            name: self.err_name(),
            file: file.to_owned(),
            source,
        })
    }

    fn check_digest(&self, digest: &str, file: &str) -> Result<(), ArchiveError> {
        if reference::is_sha256_digest(digest) {
            Ok(())
        } else {
            Err(ArchiveError::InvalidDigest {
                name: self.err_name(),
                file: file.to_owned(),
                digest: digest.chars().take(80).collect(),
            })
        }
    }

    fn add_ref(&self, out: &mut Vec<String>, raw: &str, file: &str) -> Result<(), ArchiveError> {
        let r = reference::normalize(raw).map_err(|source| ArchiveError::InvalidReference {
            name: self.err_name(),
            file: file.to_owned(),
            source,
        })?;
        if !out.contains(&r) {
            out.push(r);
        }
        Ok(())
    }

    /// The blob `desc` points at, checked against the descriptor (size, sha256) and recorded
    /// for `write_oci`; `None` if the archive does not hold it.
    fn blob(&mut self, desc: &Descriptor, what: &str) -> Result<Option<&'a Member>, ArchiveError> {
        let hex = hex_of(&desc.digest);
        let path = format!("blobs/sha256/{hex}");
        let Some(m) = self.scan.member(&path) else {
            return Ok(None);
        };
        let file = format!("{path} ({what})");
        if m.size != desc.size {
            return Err(ArchiveError::SizeMismatch {
                name: self.err_name(),
                file,
                expected: desc.size,
                actual: m.size,
            });
        }
        if m.digest != desc.digest {
            return Err(ArchiveError::DigestMismatch {
                name: self.err_name(),
                file,
                expected: desc.digest.clone(),
                actual: m.digest.clone(),
            });
        }
        self.blobs.insert(desc.digest.clone(), data_of(m));
        Ok(Some(m))
    }

    // ---- OCI layout (and Docker 25+) ----

    fn resolve_oci(&mut self, docker25: bool) -> Result<Vec<Resolved>, ArchiveError> {
        let layout_member = self.scan.member("oci-layout").expect("checked by caller");
        let layout: spec::OciLayout = self.json(layout_member, "oci-layout")?;
        if layout.image_layout_version != "1.0.0" {
            return Err(ArchiveError::UnsupportedLayout {
                name: self.err_name(),
                version: layout.image_layout_version.chars().take(40).collect(),
            });
        }
        let Some(index_member) = self.scan.member("index.json") else {
            return Err(ArchiveError::NoImage {
                name: self.err_name(),
                detail: "it has oci-layout but no index.json".to_owned(),
            });
        };
        let index: spec::Index = self.json(index_member, "index.json")?;

        // Group index.json's entries by what they point at: tags of one image share a target.
        let mut targets: Vec<(Descriptor, Vec<Descriptor>)> = Vec::new();
        for d in &index.manifests {
            self.check_digest(&d.digest, "index.json")?;
            let mut d = d.clone();
            if d.media_type.is_empty() {
                d.media_type = self.probe_media_type(&d);
            }
            if !spec::is_index(&d.media_type) && !spec::is_manifest(&d.media_type) {
                continue; // artifacts and the like: nothing a runtime imports as an image
            }
            match targets.iter_mut().find(|(t, _)| t.digest == d.digest) {
                Some((_, all)) => all.push(d),
                None => targets.push((d.clone(), vec![d])),
            }
        }
        let mut names_per_target = Vec::new();
        for (_, descs) in &targets {
            names_per_target.push(self.oci_names(descs)?);
        }
        if targets.is_empty() {
            return Err(ArchiveError::NoImage {
                name: self.err_name(),
                detail: "index.json lists no image manifest or index".to_owned(),
            });
        }
        let mut resolved = Vec::with_capacity(targets.len());
        for ((target, _), names) in targets.into_iter().zip(names_per_target) {
            resolved.push(self.resolve_oci_target(target, names, docker25)?);
        }
        Ok(resolved)
    }

    /// One image of an OCI layout: the manifest or index `target` points at, named `names`.
    fn resolve_oci_target(
        &mut self,
        target: Descriptor,
        mut names: Names,
        docker25: bool,
    ) -> Result<Resolved, ArchiveError> {
        let mut images = Vec::new();
        if spec::is_index(&target.media_type) {
            let blob = blob_of(&target);
            let Some(m) = self.blob(&target, "image index")? else {
                return Err(self.missing(vec![target.digest.clone()]));
            };
            self.walk_index(m, &target.digest, vec![blob], &mut images)?;
            if images.is_empty() {
                return Err(ArchiveError::NoImage {
                    name: self.err_name(),
                    detail: format!("image index {} lists no platform images", target.digest),
                });
            }
            if !images.iter().any(|i| i.complete) {
                let mut missing: Vec<String> = Vec::new();
                for d in images.iter().flat_map(|i| &i.missing) {
                    if !missing.contains(d) {
                        missing.push(d.clone());
                    }
                }
                return Err(self.missing(missing));
            }
        } else {
            let image = self.oci_image(&target, None, Vec::new())?;
            if !image.complete {
                return Err(self.missing(image.missing));
            }
            images.push(image);
        }

        if docker25 {
            self.docker25_repo_tags(&images, &mut names)?;
        }
        let (refs, tags) = names.into_refs();
        Ok(Resolved {
            format: if docker25 {
                Format::Docker25
            } else {
                Format::OciLayout
            },
            refs,
            tags,
            digest: target.digest.clone(),
            images,
            blobs: std::mem::take(&mut self.blobs),
            parents: std::mem::take(&mut self.parents),
        })
    }

    fn missing(&self, missing: Vec<String>) -> ArchiveError {
        ArchiveError::MissingBlobs {
            name: self.err_name(),
            missing,
        }
    }

    /// Names from index.json annotations, in containerd's order.
    fn oci_names(&self, descs: &[Descriptor]) -> Result<Names, ArchiveError> {
        let mut names = Names::default();
        for d in descs {
            if let Some(n) = d.annotation(spec::ANNOTATION_IMAGE_NAME) {
                self.add_ref(
                    &mut names.image_names,
                    n,
                    &format!("index.json ({})", spec::ANNOTATION_IMAGE_NAME),
                )?;
            }
        }
        for d in descs {
            let Some(n) = d.annotation(spec::ANNOTATION_REF_NAME) else {
                continue;
            };
            let tag = if reference::is_tag(n) {
                Some(n)
            } else {
                object_tag(n)
            };
            if let Some(tag) = tag {
                if tag.is_empty() {
                    continue; // `@digest`: pinned, but no tag and no name
                }
                if !names.tags.iter().any(|t| t == tag) {
                    names.tags.push(tag.to_owned());
                }
                let named = d.annotation(spec::ANNOTATION_IMAGE_NAME).is_some();
                if !named && !names.loose_tags.iter().any(|t| t == tag) {
                    names.loose_tags.push(tag.to_owned());
                }
            } else {
                self.add_ref(
                    &mut names.ref_names,
                    n,
                    &format!("index.json ({})", spec::ANNOTATION_REF_NAME),
                )?;
            }
        }
        Ok(names)
    }

    /// Docker 25+ also lists `RepoTags` in manifest.json; they name the image whose config
    /// they point at.
    fn docker25_repo_tags(
        &self,
        images: &[PlatformImage],
        names: &mut Names,
    ) -> Result<(), ArchiveError> {
        let m = self
            .scan
            .member("manifest.json")
            .expect("checked by caller");
        let entries: Vec<spec::DockerManifestEntry> = self.json(m, "manifest.json")?;
        for e in entries {
            let Some(config) = self.scan.member(&e.config) else {
                continue;
            };
            if !images.iter().any(|i| i.config.digest == config.digest) {
                continue;
            }
            for tag in e.repo_tags.iter().flatten() {
                if is_none_tag(tag) {
                    continue;
                }
                self.add_ref(&mut names.repo_tags, tag, "manifest.json (RepoTags)")?;
            }
        }
        Ok(())
    }

    /// A descriptor without a media type: look inside the blob, if it is here.
    fn probe_media_type(&self, d: &Descriptor) -> String {
        let path = format!("blobs/sha256/{}", hex_of(&d.digest));
        let probe = self
            .scan
            .member(&path)
            .and_then(|m| m.data.as_ref())
            .and_then(|data| serde_json::from_slice::<spec::MediaTypeProbe>(data).ok());
        match probe {
            Some(p) => match p.media_type {
                Some(mt) if !mt.is_empty() => mt,
                _ if p.manifests.is_some() => spec::OCI_INDEX.to_owned(),
                _ => spec::OCI_MANIFEST.to_owned(),
            },
            // Absent (reported as missing later) or unreadable (reported when parsed).
            None => spec::OCI_MANIFEST.to_owned(),
        }
    }

    fn walk_index(
        &mut self,
        m: &Member,
        digest: &str,
        chain: Vec<Blob>,
        images: &mut Vec<PlatformImage>,
    ) -> Result<(), ArchiveError> {
        if chain.len() > MAX_INDEX_DEPTH {
            return Err(ArchiveError::Corrupt {
                name: self.err_name(),
                detail: format!("image indexes nest more than {MAX_INDEX_DEPTH} deep"),
            });
        }
        let file = format!("blobs/sha256/{} (image index)", hex_of(digest));
        let index: spec::Index = self.json(m, &file)?;
        for d in &index.manifests {
            self.check_digest(&d.digest, &file)?;
            let mut d = d.clone();
            if d.media_type.is_empty() {
                d.media_type = self.probe_media_type(&d);
            }
            // buildkit's provenance/SBOM manifests are not images: platform unknown/unknown.
            let attestation = d
                .annotation(spec::ANNOTATION_DOCKER_REFERENCE_TYPE)
                .is_some()
                || d.platform.as_ref().is_some_and(|p| p.os == "unknown");
            if attestation {
                continue;
            }
            if spec::is_index(&d.media_type) {
                let Some(child) = self.blob(&d, "image index")? else {
                    continue; // a nested index we do not have: nothing to list under it
                };
                let mut chain = chain.clone();
                chain.push(blob_of(&d));
                self.walk_index(child, &d.digest, chain, images)?;
            } else if spec::is_manifest(&d.media_type) {
                let hint = d.platform.clone();
                let image = self.oci_image(&d, hint.as_ref(), chain.clone())?;
                images.push(image);
            }
        }
        Ok(())
    }

    /// One platform's image: manifest, config and layers, each present or listed missing.
    fn oci_image(
        &mut self,
        desc: &Descriptor,
        hint: Option<&spec::PlatformJson>,
        chain: Vec<Blob>,
    ) -> Result<PlatformImage, ArchiveError> {
        let manifest_blob = blob_of(desc);
        self.parents.insert(desc.digest.clone(), chain);
        let hinted = hint.map(|p| platform_of(&p.os, &p.architecture, p.variant.as_deref()));
        let unknown = || Platform::new("unknown", "unknown", None);

        let Some(m) = self.blob(desc, "image manifest")? else {
            return Ok(PlatformImage {
                platform: hinted.unwrap_or_else(unknown),
                manifest: manifest_blob,
                config: Blob {
                    digest: String::new(),
                    size: 0,
                    media_type: String::new(),
                },
                layers: Vec::new(),
                diff_ids: Vec::new(),
                complete: false,
                missing: vec![desc.digest.clone()],
            });
        };
        let file = format!("blobs/sha256/{} (image manifest)", hex_of(&desc.digest));
        let manifest: spec::Manifest = self.json(m, &file)?;
        self.check_digest(&manifest.config.digest, &file)?;
        let mut missing = Vec::new();
        let config_member = self.blob(&manifest.config, "image config")?;
        let config: Option<spec::Config> = match config_member {
            Some(cm) => {
                let cfile = format!(
                    "blobs/sha256/{} (image config)",
                    hex_of(&manifest.config.digest)
                );
                Some(self.json(cm, &cfile)?)
            }
            None => {
                missing.push(manifest.config.digest.clone());
                None
            }
        };
        let layer_descs = manifest.layers.unwrap_or_default();
        let mut layers = Vec::with_capacity(layer_descs.len());
        for l in &layer_descs {
            self.check_digest(&l.digest, &file)?;
            if self.blob(l, "layer")?.is_none() && !missing.contains(&l.digest) {
                missing.push(l.digest.clone());
            }
            layers.push(blob_of(l));
        }
        let is_image_config = matches!(
            manifest.config.media_type.as_str(),
            "" | "application/vnd.oci.image.config.v1+json" | spec::DOCKER_CONFIG
        );
        if let Some(c) = &config
            && is_image_config
        {
            let diff_ids = c.rootfs.as_ref().map_or(0, |r| r.diff_ids.len());
            if layers.is_empty() && diff_ids > 0 {
                // moby#47065: Docker 25.0.0's `docker save` wrote manifests without layers.
                return Err(ArchiveError::ZeroLayerManifest {
                    name: self.err_name(),
                    manifest: desc.digest.clone(),
                    diff_ids,
                });
            }
            if layers.len() != diff_ids {
                return Err(ArchiveError::LayerCountMismatch {
                    name: self.err_name(),
                    manifest: desc.digest.clone(),
                    layers: layers.len(),
                    diff_ids,
                });
            }
        }
        let platform = hinted
            .or_else(|| {
                config
                    .as_ref()
                    .map(|c| platform_of(&c.os, &c.architecture, c.variant.as_deref()))
            })
            .unwrap_or_else(unknown);
        let diff_ids = config
            .as_ref()
            .and_then(|c| c.rootfs.as_ref())
            .map(|r| r.diff_ids.clone())
            .unwrap_or_default();
        Ok(PlatformImage {
            platform,
            manifest: manifest_blob,
            config: blob_of(&manifest.config),
            layers,
            diff_ids,
            complete: missing.is_empty(),
            missing,
        })
    }

    // ---- docker-archive ----

    fn resolve_docker(&mut self) -> Result<Vec<Resolved>, ArchiveError> {
        let m = self
            .scan
            .member("manifest.json")
            .expect("checked by caller");
        let entries: Vec<spec::DockerManifestEntry> = self.json(m, "manifest.json")?;
        if entries.is_empty() {
            return Err(ArchiveError::NoImage {
                name: self.err_name(),
                detail: "manifest.json lists no images".to_owned(),
            });
        }
        // Tags of one image share one entry (docker) or one config (other tools).
        let mut groups: Vec<(String, Vec<&spec::DockerManifestEntry>)> = Vec::new();
        for e in &entries {
            let key = self
                .scan
                .member(&e.config)
                .map_or_else(|| clean(&e.config), |m| m.digest.clone());
            match groups.iter_mut().find(|(k, _)| *k == key) {
                Some((_, g)) => g.push(e),
                None => groups.push((key, vec![e])),
            }
        }
        let mut resolved = Vec::with_capacity(groups.len());
        for (_, group) in &groups {
            resolved.push(self.resolve_docker_image(group)?);
        }
        Ok(resolved)
    }

    /// One image of a docker-archive: the manifest.json entries (its tags) sharing a config.
    fn resolve_docker_image(
        &mut self,
        group: &[&spec::DockerManifestEntry],
    ) -> Result<Resolved, ArchiveError> {
        let entry = group[0];

        // Paths come from the tar: `shown` escapes them for messages.
        let mut missing = Vec::new();
        let config_path = shown(&clean(&entry.config));
        let config_member = self.scan.member(&entry.config);
        if config_member.is_none() {
            missing.push(config_path.clone());
        }
        let mut layer_members = Vec::with_capacity(entry.layers.len());
        for path in &entry.layers {
            match self.scan.member(path) {
                Some(m) => layer_members.push((shown(&clean(path)), m)),
                None => missing.push(shown(&clean(path))),
            }
        }
        let Some(config_member) = config_member.filter(|_| missing.is_empty()) else {
            return Err(self.missing(missing));
        };

        // `<hex>.json` (docker) and `blobs/sha256/<hex>` are named by their digest.
        let stem = config_path
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .trim_end_matches(".json");
        if stem.len() == 64 && reference::is_sha256_digest(&format!("sha256:{stem}")) {
            let expected = format!("sha256:{stem}");
            if config_member.digest != expected {
                return Err(ArchiveError::DigestMismatch {
                    name: self.err_name(),
                    file: config_path,
                    expected,
                    actual: config_member.digest.clone(),
                });
            }
        }
        let config: spec::Config = self.json(config_member, &config_path)?;
        let diff_ids = config.rootfs.map(|r| r.diff_ids).unwrap_or_default();

        let mut layers = Vec::with_capacity(layer_members.len());
        for (i, (path, m)) in layer_members.iter().enumerate() {
            // An uncompressed layer *is* its diff: its digest must be the config's diff_id
            // (the check docker load and containerd's unpack make).
            if !m.compressed
                && let Some(diff_id) = diff_ids.get(i)
                && *diff_id != m.digest
            {
                return Err(ArchiveError::DigestMismatch {
                    name: self.err_name(),
                    file: path.clone(),
                    expected: shown(diff_id),
                    actual: m.digest.clone(),
                });
            }
            let media_type = if m.compressed {
                spec::DOCKER_LAYER_GZIP
            } else {
                spec::DOCKER_LAYER
            };
            layers.push(Blob {
                digest: m.digest.clone(),
                size: m.size,
                media_type: media_type.to_owned(),
            });
            self.blobs.insert(m.digest.clone(), data_of(m));
        }
        if layers.len() != diff_ids.len() {
            return Err(ArchiveError::LayerCountMismatch {
                name: self.err_name(),
                manifest: "manifest.json".to_owned(),
                layers: layers.len(),
                diff_ids: diff_ids.len(),
            });
        }

        let config_blob = Blob {
            digest: config_member.digest.clone(),
            size: config_member.size,
            media_type: spec::DOCKER_CONFIG.to_owned(),
        };
        self.blobs
            .insert(config_blob.digest.clone(), data_of(config_member));
        let manifest_bytes = synthesize_manifest(&config_blob, &layers);
        let manifest_blob = Blob {
            digest: sha256_digest(&manifest_bytes),
            size: manifest_bytes.len() as u64,
            media_type: spec::DOCKER_MANIFEST.to_owned(),
        };
        self.blobs.insert(
            manifest_blob.digest.clone(),
            BlobData::Memory(Arc::from(manifest_bytes)),
        );
        self.parents
            .insert(manifest_blob.digest.clone(), Vec::new());

        let mut names = Names::default();
        for e in group.iter() {
            for tag in e.repo_tags.iter().flatten() {
                if !is_none_tag(tag) {
                    self.add_ref(&mut names.repo_tags, tag, "manifest.json (RepoTags)")?;
                }
            }
        }
        let (refs, tags) = names.into_refs();
        Ok(Resolved {
            format: Format::DockerArchive,
            refs,
            tags,
            digest: manifest_blob.digest.clone(),
            images: vec![PlatformImage {
                platform: platform_of(&config.os, &config.architecture, config.variant.as_deref()),
                manifest: manifest_blob,
                config: config_blob,
                layers,
                diff_ids,
                complete: true,
                missing: Vec::new(),
            }],
            blobs: std::mem::take(&mut self.blobs),
            parents: std::mem::take(&mut self.parents),
        })
    }
}

/// The Docker schema 2 manifest containerd's importer writes for a docker-archive image,
/// byte for byte (Go's `json.Marshal` of the same fields in the same order).
pub fn synthesize_manifest(config: &Blob, layers: &[Blob]) -> Vec<u8> {
    let manifest = spec::OutDockerManifest {
        schema_version: 2,
        media_type: spec::DOCKER_MANIFEST,
        config: out(config),
        layers: layers.iter().map(out).collect(),
    };
    serde_json::to_vec(&manifest).expect("serialising a struct of strings cannot fail")
}

fn out(b: &Blob) -> spec::OutDescriptor<'_> {
    spec::OutDescriptor {
        media_type: &b.media_type,
        digest: &b.digest,
        size: b.size,
        annotations: None,
    }
}

pub fn sha256_digest(bytes: &[u8]) -> String {
    use sha2::Digest;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

/// A platform from a tar's JSON: values escaped, since they end up in messages and tables.
fn platform_of(os: &str, architecture: &str, variant: Option<&str>) -> Platform {
    let clip = |s: &str| -> String { s.chars().take(32).flat_map(char::escape_debug).collect() };
    Platform::new(&clip(os), &clip(architecture), variant.map(clip).as_deref())
}

fn blob_of(d: &Descriptor) -> Blob {
    Blob {
        digest: d.digest.clone(),
        size: d.size,
        media_type: d.media_type.clone(),
    }
}

fn data_of(m: &Member) -> BlobData {
    match &m.data {
        Some(d) => BlobData::Memory(Arc::clone(d)),
        None => BlobData::Stream {
            offset: m.offset,
            size: m.size,
        },
    }
}

/// The tag part of a `org.opencontainers.image.ref.name` that is containerd's
/// `reference.Spec.Object` with a digest, `tag@sha256:…` or `@sha256:…` (an empty tag):
/// what `ctr images export` writes for a name pinned to a digest, and what `write_oci` writes
/// (emit.rs). Not a name: read as one, `@…` was refused and `v1@…` named an image `v1`
/// (tests::containerd_ref_name_objects_are_tags_not_names). `None` for anything else.
fn object_tag(ref_name: &str) -> Option<&str> {
    let (tag, digest) = ref_name.split_once('@')?;
    (reference::is_sha256_digest(digest) && (tag.is_empty() || reference::is_tag(tag)))
        .then_some(tag)
}

/// docker writes untagged images as `<none>:<none>` in some versions; that is no name.
fn is_none_tag(tag: &str) -> bool {
    tag == "<none>:<none>" || tag == "<none>"
}

/// One image, for "several images" messages. Names come from the tar: escape them.
pub(super) fn describe(names: &[String], more: &[String], digest: &str) -> String {
    let shown: Vec<String> = names
        .iter()
        .chain(more)
        .map(|n| n.chars().take(80).flat_map(char::escape_debug).collect())
        .collect();
    if shown.is_empty() {
        let short: String = digest
            .chars()
            .take(19)
            .flat_map(char::escape_debug)
            .collect();
        format!("untagged {short}")
    } else {
        shown.join(", ")
    }
}

/// The hex part of a `sha256:` digest (validated before we get here; never panics anyway).
fn hex_of(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap_or(digest)
}
