//! A node's stream cut into parts, each a whole OCI-layout tar a runtime imports by itself,
//! so that a node unpacks one layer while the next is still arriving (issue 10: import
//! while streaming). `ctr images import` unpacks only once its whole input has arrived;
//! fed one part per layer it unpacks each layer as soon as that layer is in.
//!
//! Part k (every part but the last) carries one layer and a *prefix image* naming it: a
//! manifest of the image's layers up to and including that one, and a config whose
//! `rootfs.diff_ids` are theirs, named `<partial>-<k>`. Importing part k after part k-1
//! finds the layers below unpacked and unpacks just the new one: runtimes key an unpacked
//! layer by its chain id (the diff_ids up to it), which a prefix image shares with the real
//! image. The last part is the stream as it would be whole, less the layers the parts
//! before it carried: its import finds every layer unpacked and records the image under its
//! names. The prefix images are removed afterwards (the agent's `finally`); their layers
//! stay, held by the real image.
//!
//! The cut needs the layers in the archive in manifest order (one forward pass through the
//! source, which a gzip archive needs), and at least two layers to send; otherwise the
//! stream is one part, as before.

use std::collections::HashSet;
use std::sync::Arc;

use serde_json::json;

use super::emit::{OCI_LAYOUT, OutEntry, OutSource, blob_path, tar_len};
use super::layout::{BlobData, sha256_digest};
use super::spec;
use super::{Archive, ArchiveError, Blob, PlatformImage};

/// OCI media type of the prefix images' configs.
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";

/// What one node's stream is: its parts, in order.
#[derive(Clone)]
pub struct StreamPlan {
    parts: Vec<Part>,
}

/// One part: a whole OCI-layout tar.
#[derive(Clone)]
pub struct Part {
    entries: Vec<OutEntry>,
    /// Its exact length in bytes.
    pub len: u64,
    /// sha256 (hex) of its `index.json`, which the node checks.
    pub index_sha256: String,
    /// sha256 (hex) of its docker-archive `manifest.json`, if it carries one
    /// ([`StreamPlan::with_docker_manifest`]); the node checks it too.
    pub manifest_sha256: Option<String>,
    /// The prefix image it creates; `None` for the last part (the image itself).
    pub prefix: Option<Prefix>,
}

/// A prefix image as a runtime records it: by its name, and (CRI's containerd plugin) by
/// its config digest, the image id.
#[derive(Clone, Debug)]
pub struct Prefix {
    pub name: String,
    pub config: String,
    /// How many of the image's layers it has (its bottom ones).
    pub layers: usize,
}

/// Config label of every prefix image: its own name.
const PREFIX_LABEL: &str = "io.sideload.partial";

impl Part {
    /// A part of these members: its length and index digest read off what is written.
    fn of(entries: Vec<OutEntry>, prefix: Option<Prefix>) -> Part {
        let index_sha256 = entries
            .iter()
            .find_map(|e| match &e.src {
                OutSource::Memory(data) if e.path == "index.json" => Some(sha256_digest(data)),
                _ => None,
            })
            .expect("every planned part has an index.json in memory")
            .trim_start_matches("sha256:")
            .to_string();
        Part {
            len: tar_len(&entries),
            entries,
            index_sha256,
            manifest_sha256: None,
            prefix,
        }
    }
}

impl StreamPlan {
    pub fn parts(&self) -> &[Part] {
        &self.parts
    }

    /// The whole stream's length.
    pub fn len(&self) -> u64 {
        self.parts.iter().map(|p| p.len).sum()
    }

    /// The prefix images the parts create on the node (to remove afterwards).
    pub fn prefixes(&self) -> Vec<Prefix> {
        self.parts.iter().filter_map(|p| p.prefix.clone()).collect()
    }

    /// sha256 (hex) of the last part's `index.json`: the one naming the image.
    pub fn index_sha256(&self) -> &str {
        self.parts.last().map_or("", |p| p.index_sha256.as_str())
    }

    /// sha256 (hex) of the stream's `manifest.json`, if it carries one.
    pub fn manifest_sha256(&self) -> Option<&str> {
        self.parts.last().and_then(|p| p.manifest_sha256.as_deref())
    }

    /// The stream with a docker-archive `manifest.json` beside each part's `index.json`:
    /// the last part's names `image` by `refs`, each other part's its prefix image.
    /// Docker Engine's `docker load` reads only that file (before Docker 25 it knows no
    /// `index.json`), and finds the config and layers at their OCI paths. It opens every
    /// layer whose chain it does not hold, so a part may leave layers out only as a bottom
    /// run: the engine holds those by chain, from the parts loaded before it or from
    /// earlier images (runtime/docker.rs).
    pub fn with_docker_manifest(
        mut self,
        image: &PlatformImage,
        refs: &[String],
    ) -> Result<StreamPlan, ArchiveError> {
        let layers: Vec<String> = image.layers.iter().map(|l| blob_path(&l.digest)).collect();
        for part in &mut self.parts {
            let (config, names, count) = match &part.prefix {
                Some(prefix) => (
                    blob_path(&prefix.config),
                    vec![prefix.name.clone()],
                    prefix.layers,
                ),
                None => (blob_path(&image.config.digest), refs.to_vec(), layers.len()),
            };
            let named = &layers[..count];
            let carried = |path: &String| part.entries.iter().any(|e| &e.path == path);
            let bottom = named.iter().take_while(|p| !carried(p)).count();
            if let Some(absent) = named[bottom..].iter().find(|p| !carried(p)) {
                return Err(ArchiveError::StreamShape(format!(
                    "a docker load stream needs every layer above the ones left out at the \
                     bottom, and {absent} was left out"
                )));
            }
            let manifest = serde_json::to_vec(&json!([{
                "Config": config,
                "RepoTags": names,
                "Layers": named,
            }]))
            .expect("serialising strings cannot fail");
            let at = part
                .entries
                .iter()
                .position(|e| e.path == "index.json")
                .map_or(0, |i| i + 1);
            part.manifest_sha256 = Some(
                sha256_digest(&manifest)
                    .trim_start_matches("sha256:")
                    .to_string(),
            );
            part.entries.insert(
                at,
                OutEntry {
                    path: "manifest.json".to_owned(),
                    size: manifest.len() as u64,
                    src: OutSource::Memory(Arc::from(manifest)),
                },
            );
            part.len = tar_len(&part.entries);
        }
        Ok(self)
    }
}

impl Archive {
    /// The stream for `image` named `refs` without the layers in `skip`: one part, or with
    /// `partial` (a reference without tag, e.g. `sideload.invalid/partial`) cut into one
    /// part per layer sent, whose prefix images are tagged `<partial>:<tag>-<k>`.
    pub fn stream_plan(
        &self,
        image: &PlatformImage,
        skip: &HashSet<String>,
        refs: &[String],
        partial: Option<(&str, &str)>,
    ) -> Result<StreamPlan, ArchiveError> {
        let image = self.own_image(image)?;
        let whole = |skip: &HashSet<String>| Ok(Part::of(self.plan(image, skip, refs)?, None));
        let sent = match partial {
            Some(_) => self.cuttable(image, skip),
            None => Vec::new(),
        };
        // Every layer sent but the last gets a part of its own; the last goes with the image.
        let (repo, tag, carried) = match (partial, sent.as_slice()) {
            (Some((repo, tag)), [carried @ .., _last]) if !carried.is_empty() => {
                (repo, tag, carried)
            }
            _ => {
                return Ok(StreamPlan {
                    parts: vec![whole(skip)?],
                });
            }
        };
        let mut parts = Vec::with_capacity(sent.len());
        let mut rest_skip = skip.clone();
        for (k, &i) in carried.iter().enumerate() {
            let name = format!("{repo}:{tag}-{}", k + 1);
            parts.push(self.prefix_part(image, i, &name)?);
            rest_skip.insert(image.layers[i].digest.clone());
        }
        parts.push(whole(&rest_skip)?);
        Ok(StreamPlan { parts })
    }

    /// Writes the stream `plan` describes; returns the bytes written (== `plan.len()`).
    pub fn write_plan<W: std::io::Write>(
        &self,
        plan: &StreamPlan,
        w: W,
    ) -> Result<u64, ArchiveError> {
        let tars: Vec<&[OutEntry]> = plan.parts.iter().map(|p| &p.entries[..]).collect();
        self.write_tars(&tars, w)
    }

    /// Indexes (into `image.layers`) of the layers a cut stream sends, one part each, or
    /// nothing when the image cannot be cut: its layers are not in the archive in manifest
    /// order, its metadata is not in memory, or its platform or diff_ids are unknown.
    fn cuttable(&self, image: &PlatformImage, skip: &HashSet<String>) -> Vec<usize> {
        if image.platform.architecture.is_empty() || image.diff_ids.len() != image.layers.len() {
            return Vec::new();
        }
        let in_memory = |b: &Blob| matches!(self.blobs.get(&b.digest), Some(BlobData::Memory(_)));
        let parents = self
            .parents
            .get(&image.manifest.digest)
            .map_or(&[][..], Vec::as_slice);
        if !parents
            .iter()
            .chain([&image.manifest, &image.config])
            .all(in_memory)
        {
            return Vec::new();
        }
        let mut seen = HashSet::new();
        let mut sent = Vec::new();
        let mut last_offset = None;
        for (i, layer) in image.layers.iter().enumerate() {
            if skip.contains(&layer.digest) || !seen.insert(layer.digest.as_str()) {
                continue;
            }
            match self.blobs.get(&layer.digest) {
                Some(BlobData::Stream { offset, .. }) => {
                    if last_offset.is_some_and(|last| *offset < last) {
                        return Vec::new();
                    }
                    last_offset = Some(*offset);
                }
                Some(BlobData::Memory(_)) => {}
                None => return Vec::new(),
            }
            sent.push(i);
        }
        sent
    }

    /// The part carrying layer `i`: a prefix image of layers `0..=i` named `name`.
    fn prefix_part(
        &self,
        image: &PlatformImage,
        i: usize,
        name: &str,
    ) -> Result<Part, ArchiveError> {
        let platform = &image.platform;
        // The label makes the config (so the image id a CRI runtime records for it, next
        // to the name) this run's alone: removing that id can never touch another image.
        let mut config = json!({
            "architecture": platform.architecture,
            "os": platform.os,
            "config": {"Labels": {PREFIX_LABEL: name}},
            "rootfs": {"type": "layers", "diff_ids": &image.diff_ids[..=i]},
        });
        if let Some(variant) = &platform.variant {
            config["variant"] = json!(variant);
        }
        let config = serde_json::to_vec(&config).expect("a JSON value serialises");
        let config_digest = sha256_digest(&config);
        let layers = image.layers[..=i]
            .iter()
            .map(|l| spec::OutDescriptor {
                media_type: &l.media_type,
                digest: &l.digest,
                size: l.size,
                annotations: None,
            })
            .collect();
        let manifest = spec::OutDockerManifest {
            schema_version: 2,
            media_type: spec::OCI_MANIFEST,
            config: spec::OutDescriptor {
                media_type: OCI_CONFIG,
                digest: &config_digest,
                size: config.len() as u64,
                annotations: None,
            },
            layers,
        };
        let manifest = serde_json::to_vec(&manifest).expect("a struct of strings serialises");
        let target = Blob {
            digest: sha256_digest(&manifest),
            size: manifest.len() as u64,
            media_type: spec::OCI_MANIFEST.to_owned(),
        };
        let index = self.index_json(&target, &[name.to_owned()])?;
        let memory = |path: String, data: Vec<u8>| OutEntry {
            path,
            size: data.len() as u64,
            src: OutSource::Memory(Arc::from(data)),
        };
        let entries = vec![
            memory("oci-layout".to_owned(), OCI_LAYOUT.to_vec()),
            memory("index.json".to_owned(), index),
            memory(blob_path(&target.digest), manifest),
            memory(blob_path(&config_digest), config),
            self.blob_entry(&image.layers[i].digest),
        ];
        Ok(Part::of(
            entries,
            Some(Prefix {
                name: name.to_owned(),
                config: config_digest,
                layers: i + 1,
            }),
        ))
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;
    use crate::archive::Source;
    use crate::archive::testutil::{TestImage, docker_archive, gzip, write_temp};

    /// Splits a written stream back into its tars: (path, bytes) per member, per tar.
    fn tars(mut stream: &[u8], plan: &StreamPlan) -> Vec<Vec<(String, Vec<u8>)>> {
        plan.parts()
            .iter()
            .map(|p| {
                let (mine, rest) = stream.split_at(p.len as usize);
                stream = rest;
                let mut members = Vec::new();
                for e in tar::Archive::new(mine).entries().unwrap() {
                    let mut e = e.unwrap();
                    let path = e.path().unwrap().to_string_lossy().into_owned();
                    let mut data = Vec::new();
                    e.read_to_end(&mut data).unwrap();
                    members.push((path, data));
                }
                members
            })
            .collect()
    }

    #[test]
    fn a_cut_stream_is_one_importable_tar_per_layer_each_layer_once() {
        for gz in [false, true] {
            let img = TestImage::new(11, "linux/amd64", 3, 4096);
            let bytes = docker_archive(&img, &["app:v1"]).tar();
            let bytes = if gz { gzip(&bytes) } else { bytes };
            let (_dir, path) = write_temp(&bytes);
            let a = Archive::open(&Source::Path(path)).unwrap();
            let image = a.summary().images[0].clone();
            let refs = a.summary().refs.clone();
            let plan = a
                .stream_plan(
                    &image,
                    &HashSet::new(),
                    &refs,
                    Some(("sideload.invalid/partial", "r1")),
                )
                .unwrap();
            assert_eq!(plan.parts().len(), 3);
            let mut out = Vec::new();
            assert_eq!(a.write_plan(&plan, &mut out).unwrap(), plan.len());
            assert_eq!(out.len() as u64, plan.len());
            let tars = tars(&out, &plan);
            let mut layers_seen = Vec::new();
            for (k, (members, part)) in tars.iter().zip(plan.parts()).enumerate() {
                let get = |name: &str| &members.iter().find(|(p, _)| p == name).unwrap().1;
                let index = get("index.json");
                assert_eq!(
                    sha256_digest(index),
                    format!("sha256:{}", part.index_sha256)
                );
                let index: serde_json::Value = serde_json::from_slice(index).unwrap();
                let target = index["manifests"][0]["digest"]
                    .as_str()
                    .unwrap()
                    .to_string();
                let manifest: serde_json::Value =
                    serde_json::from_slice(get(&format!("blobs/sha256/{}", &target[7..]))).unwrap();
                let listed = manifest["layers"].as_array().unwrap().len();
                if k < 2 {
                    // A prefix image of the first k+1 layers, named for this run.
                    assert_eq!(listed, k + 1);
                    let name = &part.prefix.as_ref().unwrap().name;
                    assert_eq!(name, &format!("sideload.invalid/partial:r1-{}", k + 1));
                    let config: serde_json::Value = serde_json::from_slice(get(&format!(
                        "blobs/sha256/{}",
                        &manifest["config"]["digest"].as_str().unwrap()[7..]
                    )))
                    .unwrap();
                    assert_eq!(
                        config["rootfs"]["diff_ids"].as_array().unwrap().len(),
                        k + 1
                    );
                    assert_eq!(config["architecture"], "amd64");
                } else {
                    assert!(part.prefix.is_none());
                    assert_eq!(target, image.manifest.digest, "the last part is the image");
                    assert_eq!(
                        part.index_sha256,
                        a.oci_index_sha256(&image, &refs).unwrap()
                    );
                }
                for l in &image.layers {
                    if members.iter().any(|(p, _)| p.ends_with(&l.digest[7..])) {
                        layers_seen.push(l.digest.clone());
                    }
                }
            }
            let want: Vec<String> = image.layers.iter().map(|l| l.digest.clone()).collect();
            assert_eq!(layers_seen, want, "each layer once, in order (gz {gz})");
        }
    }

    #[test]
    fn one_layer_to_send_or_no_cut_asked_is_one_part() {
        let img = TestImage::new(12, "linux/amd64", 2, 4096);
        let (_dir, path) = write_temp(&docker_archive(&img, &["app:v1"]).tar());
        let a = Archive::open(&Source::Path(path)).unwrap();
        let image = a.summary().images[0].clone();
        let refs = a.summary().refs.clone();
        let whole = a.stream_plan(&image, &HashSet::new(), &refs, None).unwrap();
        assert_eq!(whole.parts().len(), 1);
        let mut out = Vec::new();
        a.write_plan(&whole, &mut out).unwrap();
        let mut plain = Vec::new();
        a.write_oci_named(&image, &HashSet::new(), &refs, &mut plain)
            .unwrap();
        assert!(out == plain, "one part is the plain stream");
        let skip = HashSet::from([image.layers[0].digest.clone()]);
        let cut = a
            .stream_plan(
                &image,
                &skip,
                &refs,
                Some(("sideload.invalid/partial", "r1")),
            )
            .unwrap();
        assert_eq!(cut.parts().len(), 1, "one layer left to send");
        assert!(cut.prefixes().is_empty());
    }

    #[test]
    fn a_docker_load_stream_adds_a_manifest_json_naming_the_config_and_every_layer() {
        let img = TestImage::new(13, "linux/amd64", 2, 4096);
        let (_dir, path) = write_temp(&docker_archive(&img, &["app:v1"]).tar());
        let a = Archive::open(&Source::Path(path)).unwrap();
        let image = a.summary().images[0].clone();
        let staged = vec!["sideload.invalid/partial:r1-image".to_string()];
        let plain = a
            .stream_plan(&image, &HashSet::new(), &staged, None)
            .unwrap();
        let plan = plain.clone().with_docker_manifest(&image, &staged).unwrap();
        assert_eq!(plan.index_sha256(), plain.index_sha256(), "the same index");
        let mut out = Vec::new();
        assert_eq!(a.write_plan(&plan, &mut out).unwrap(), plan.len());
        let members = &tars(&out, &plan)[0];
        let (_, manifest) = members.iter().find(|(p, _)| p == "manifest.json").unwrap();
        assert_eq!(
            sha256_digest(manifest),
            format!("sha256:{}", plan.manifest_sha256().unwrap())
        );
        let manifest: serde_json::Value = serde_json::from_slice(manifest).unwrap();
        assert_eq!(manifest[0]["RepoTags"], serde_json::json!(staged));
        // Every path it names is a member of the stream: docker load opens them.
        let mut named = vec![manifest[0]["Config"].as_str().unwrap().to_string()];
        named.extend(
            manifest[0]["Layers"]
                .as_array()
                .unwrap()
                .iter()
                .map(|l| l.as_str().unwrap().to_string()),
        );
        assert_eq!(named.len(), 3);
        for path in &named {
            assert!(members.iter().any(|(p, _)| p == path), "{path}");
        }
        // Docker skips the layers it holds by chain: a bottom run may be left out (the
        // manifest still names them), a layer above one that is carried may not.
        let skip = HashSet::from([image.layers[0].digest.clone()]);
        let less = a.stream_plan(&image, &skip, &staged, None).unwrap();
        let plan = less.with_docker_manifest(&image, &staged).unwrap();
        let mut out = Vec::new();
        assert_eq!(a.write_plan(&plan, &mut out).unwrap(), plan.len());
        let members = &tars(&out, &plan)[0];
        let (_, manifest) = members.iter().find(|(p, _)| p == "manifest.json").unwrap();
        let manifest: serde_json::Value = serde_json::from_slice(manifest).unwrap();
        assert_eq!(manifest[0]["Layers"].as_array().unwrap().len(), 2);
        let bottom = blob_path(&image.layers[0].digest);
        assert!(!members.iter().any(|(p, _)| *p == bottom));
        let skip = HashSet::from([image.layers[1].digest.clone()]);
        let gap = a.stream_plan(&image, &skip, &staged, None).unwrap();
        let err = gap.with_docker_manifest(&image, &staged).err().unwrap();
        assert!(err.to_string().contains("every layer above"), "{err}");
    }

    /// A cut Docker stream: each part's `manifest.json` names its own image (a prefix
    /// image of the layers up to its own, by the prefix's config; the last the image by
    /// its refs), every layer it names that it does not carry sits below the ones it does
    /// (held by chain from the parts before), and each is checked by its own digest.
    #[test]
    fn a_cut_docker_stream_names_each_parts_own_image_in_its_manifest() {
        let img = TestImage::new(17, "linux/amd64", 3, 4096);
        let (_dir, path) = write_temp(&docker_archive(&img, &["app:v1"]).tar());
        let a = Archive::open(&Source::Path(path)).unwrap();
        let image = a.summary().images[0].clone();
        let staged = vec!["sideload.invalid/partial:r2-image".to_string()];
        let cut = a
            .stream_plan(
                &image,
                &HashSet::new(),
                &staged,
                Some(("sideload.invalid/partial", "r2")),
            )
            .unwrap();
        assert_eq!(cut.parts().len(), 3);
        let plan = cut.with_docker_manifest(&image, &staged).unwrap();
        let mut out = Vec::new();
        assert_eq!(a.write_plan(&plan, &mut out).unwrap(), plan.len());
        let layers: Vec<String> = image.layers.iter().map(|l| blob_path(&l.digest)).collect();
        for (k, (members, part)) in tars(&out, &plan).iter().zip(plan.parts()).enumerate() {
            let (_, manifest) = members.iter().find(|(p, _)| p == "manifest.json").unwrap();
            assert_eq!(
                sha256_digest(manifest),
                format!("sha256:{}", part.manifest_sha256.as_deref().unwrap())
            );
            let manifest: serde_json::Value = serde_json::from_slice(manifest).unwrap();
            let named: Vec<&str> = manifest[0]["Layers"]
                .as_array()
                .unwrap()
                .iter()
                .map(|l| l.as_str().unwrap())
                .collect();
            assert_eq!(
                named,
                layers[..=k],
                "part {k} names the layers up to its own"
            );
            // It carries its own layer, none below it, and the config it names.
            assert!(members.iter().any(|(p, _)| *p == layers[k]), "part {k}");
            for below in &layers[..k] {
                assert!(!members.iter().any(|(p, _)| p == below), "part {k}");
            }
            let config = manifest[0]["Config"].as_str().unwrap();
            assert!(members.iter().any(|(p, _)| p == config), "part {k}");
            let tags = &manifest[0]["RepoTags"];
            match &part.prefix {
                Some(prefix) => {
                    assert_eq!(tags, &serde_json::json!([prefix.name]));
                    assert_eq!(config, blob_path(&prefix.config));
                    assert_eq!(prefix.layers, k + 1);
                }
                None => {
                    assert_eq!(k, 2, "only the last part names the image");
                    assert_eq!(tags, &serde_json::json!(staged));
                    assert_eq!(config, blob_path(&image.config.digest));
                }
            }
        }
        assert_eq!(
            plan.manifest_sha256(),
            plan.parts()[2].manifest_sha256.as_deref()
        );
    }
}
