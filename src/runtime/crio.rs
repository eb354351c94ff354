//! CRI-O nodes (OpenShift, and most RHEL-family sites). CRI-O has no import API: it reads
//! containers-storage, so the node's own `skopeo` writes the image there, into exactly the
//! storage CRI-O reads (root, run root, driver and options from CRI-O's running
//! configuration, served at `GET /config` on its socket), under fully qualified names
//! (podman's `localhost/` prefix for short names makes CRI-O miss them, cri-tools#474).
//!
//! skopeo cannot read an image from a stream, so the agent stages the stream as an OCI
//! layout in the helper pod's scratch volume (an emptyDir, removed with the pod) and runs
//! `skopeo copy oci:… containers-storage:…` once per ref. Layers the storage already holds
//! are left out of the stream; skopeo reuses them from the storage.

use std::collections::{BTreeMap, HashSet};

use anyhow::{Result, anyhow, bail};
use serde::Deserialize;
use sideload_agent::protocol::{self, Answer, Command, HttpGet, Query, Run, Stdin};

use super::cri::{self, Crictl};
use super::{Inventory, Version, Wanted, candidate_sockets, first_executable, first_socket};
use crate::archive::Prefix;
use crate::cluster::helper::Needs;

/// Where CRI-O's socket is by default (the kubelet's endpoint, when known, goes first).
const SOCKETS: &[&str] = &["/var/run/crio/crio.sock", "/run/crio/crio.sock"];
const SKOPEO: &[&str] = &["/usr/bin/skopeo", "/usr/local/bin/skopeo"];
/// CRI-O's configuration when its socket does not serve it.
const CONFIG_FILE: &str = "/etc/crio/crio.conf";
const CONFIG_DIR: &str = "/etc/crio/crio.conf.d";
const STORAGE_CONF: &str = "/etc/containers/storage.conf";
/// Inside the helper's private view: the scratch volume is bound here, and skopeo's own
/// temporary files (TMPDIR) go there too.
const STAGING_PARENT: &str = "/var/tmp";
const STAGING_DIR: &str = "/var/tmp/sideload-oci";
/// The storage.conf skopeo reads (CONTAINERS_STORAGE_CONF): CRI-O's storage, exactly.
const STORAGE_CONF_STAGED: &str = "/var/tmp/sideload-storage.conf";
const IMPORT_TIMEOUT_SECS: u64 = 3600;
/// Removing a prefix image deletes a name and a manifest; its layers stay (the image holds
/// them). A delete that takes longer is stuck (storage locked), and holds the helper.
const REMOVE_TIMEOUT_SECS: u64 = 60;

/// CRI-O, before the node was looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Adapter {
    pub version: Version,
}

/// The containers-storage CRI-O uses.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Storage {
    pub root: String,
    pub runroot: String,
    pub driver: String,
    pub options: Vec<String>,
    /// Where these came from, for the report ("CRI-O's /config", "crio.conf").
    pub source: &'static str,
}

impl Storage {
    /// skopeo's `containers-storage:[driver@root+runroot]ref`. The driver options go in a
    /// storage.conf of their own ([`Storage::conf`]): the reference's `:opt,opt` list is
    /// split at every comma, and real options hold commas (RHCOS:
    /// `overlay.mountopt=nodev,metacopy=on`).
    fn reference(&self, image: &str) -> String {
        format!(
            "containers-storage:[{}@{}+{}]{image}",
            self.driver, self.root, self.runroot
        )
    }

    /// A storage.conf saying what CRI-O runs with: its driver, roots and options. Options
    /// are `driver.key=value` (or `key=value`); a key given twice keeps its last value, as
    /// the driver itself does when it reads the list.
    fn conf(&self) -> String {
        let mut storage = toml::Table::new();
        storage.insert("driver".into(), self.driver.clone().into());
        storage.insert("graphroot".into(), self.root.clone().into());
        storage.insert("runroot".into(), self.runroot.clone().into());
        let mut options = toml::Table::new();
        let mut driver_options = toml::Table::new();
        for option in &self.options {
            let Some((key, value)) = option.split_once('=') else {
                continue;
            };
            match key.split_once('.') {
                Some((driver, key)) if driver == self.driver => {
                    driver_options.insert(key.to_string(), value.to_string().into());
                }
                Some(_) => {} // another driver's option: CRI-O's driver ignores it too
                None => {
                    options.insert(key.to_string(), value.to_string().into());
                }
            }
        }
        if !driver_options.is_empty() {
            options.insert(self.driver.clone(), driver_options.into());
        }
        if !options.is_empty() {
            storage.insert("options".into(), options.into());
        }
        let mut root = toml::Table::new();
        root.insert("storage".into(), storage.into());
        toml::to_string(&root).unwrap_or_default()
    }

    /// c/storage's own records: `<root>/<driver>-images/images.json` and
    /// `<root>/<driver>-layers/layers.json`.
    fn images_json(&self) -> String {
        format!("{}/{}-images/images.json", self.root, self.driver)
    }

    fn layers_json(&self) -> String {
        format!("{}/{}-layers/layers.json", self.root, self.driver)
    }
}

impl super::Adapter for Adapter {
    fn needs(&self) -> Needs {
        // skopeo writes containers-storage itself: layer files owned by any user, device
        // nodes for whiteouts, overlay mounts. That is root with every capability.
        Needs {
            privileged: true,
            scratch: true,
        }
    }

    fn method(&self) -> &'static str {
        "skopeo copy into CRI-O's containers-storage"
    }

    fn locate_query(&self, endpoint: Option<&str>) -> Query {
        let sockets = sockets(endpoint);
        let mut paths: Vec<String> = sockets.clone();
        paths.extend(SKOPEO.iter().map(|s| s.to_string()));
        paths.extend(cri::CRICTL_PATHS.iter().map(|s| s.to_string()));
        Query {
            paths,
            files: vec![CONFIG_FILE.into(), STORAGE_CONF.into()],
            dirs: vec![CONFIG_DIR.into()],
            http: sockets
                .into_iter()
                .map(|socket| HttpGet {
                    socket,
                    path: "/config".into(),
                })
                .collect(),
            ..Default::default()
        }
    }

    fn locate(&self, endpoint: Option<&str>, answer: &Answer) -> Result<Box<dyn super::Located>> {
        let candidates = sockets(endpoint);
        let socket =
            first_socket(answer, candidates.iter().map(String::as_str)).ok_or_else(|| {
                anyhow!(
                    "no CRI-O socket found on the node (looked for: {}); pass --runtime-endpoint \
                 with the kubelet's containerRuntimeEndpoint",
                    candidates.join(", ")
                )
            })?;
        let skopeo = first_executable(answer, SKOPEO.iter().copied()).ok_or_else(|| {
            anyhow!(
                "no skopeo on the node (looked for: {}); CRI-O nodes need skopeo to import \
                 images (RHCOS and Fedora CoreOS ship it; elsewhere install the skopeo package)",
                SKOPEO.join(", ")
            )
        })?;
        let (storage, dropins) = storage_from(answer, &candidates, socket)?;
        let crictl =
            first_executable(answer, cri::CRICTL_PATHS.iter().copied()).map(|path| Crictl {
                path: path.to_string(),
                socket: socket.to_string(),
            });
        Ok(Box::new(Located {
            version: self.version,
            socket: socket.to_string(),
            skopeo: skopeo.to_string(),
            crictl,
            storage,
            first: answer.clone(),
            dropins,
        }))
    }
}

fn sockets(endpoint: Option<&str>) -> Vec<String> {
    candidate_sockets(endpoint, SOCKETS, |_| true)
}

/// The `[crio]` table keys that name the storage.
#[derive(Debug, Default, Deserialize)]
struct CrioTable {
    root: Option<String>,
    runroot: Option<String>,
    storage_driver: Option<String>,
    storage_option: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
struct CrioConfig {
    #[serde(default)]
    crio: CrioTable,
}

/// The storage, from CRI-O's running config (its socket's `/config`, which includes
/// command-line overrides), else from its config files over storage.conf's defaults (the
/// drop-ins in crio.conf.d are read by a second query: their names are known only now).
fn storage_from(
    answer: &Answer,
    sockets: &[String],
    socket: &str,
) -> Result<(Storage, Vec<String>)> {
    let served = sockets
        .iter()
        .position(|s| s == socket)
        .and_then(|i| answer.http.get(i))
        .and_then(|r| r.ok())
        .filter(|r| r.status == 200)
        .map(|r| r.body.as_str());
    if let Some(body) = served {
        let config: CrioConfig = toml::from_str(body)
            .map_err(|e| anyhow!("CRI-O's /config is not the TOML expected: {e}"))?;
        let storage = complete(
            config.crio,
            None,
            "CRI-O's running configuration (GET /config)",
        )?;
        return Ok((storage, Vec::new()));
    }
    let dropins: Vec<String> = answer
        .dirs
        .get(CONFIG_DIR)
        .and_then(|r| r.ok())
        .map(|names| {
            names
                .iter()
                .filter(|n| n.ends_with(".conf"))
                .map(|n| format!("{CONFIG_DIR}/{n}"))
                .collect()
        })
        .unwrap_or_default();
    let pending: Vec<String> = dropins
        .iter()
        .filter(|p| !answer.files.contains_key(*p))
        .cloned()
        .collect();
    Ok((from_files(answer, &dropins)?, pending))
}

/// crio.conf, then the drop-ins in name order (later keys win), over storage.conf.
fn from_files(answer: &Answer, dropins: &[String]) -> Result<Storage> {
    // Files: crio.conf, then crio.conf.d/*.conf in name order, later keys winning.
    let mut table = CrioTable::default();
    let mut texts: Vec<&str> = Vec::new();
    if let Some(text) = answer.files.get(CONFIG_FILE).and_then(|r| r.ok()) {
        texts.push(text);
    }
    for path in dropins {
        if let Some(text) = answer.files.get(path).and_then(|r| r.ok()) {
            texts.push(text);
        }
    }
    for text in texts {
        let config: CrioConfig =
            toml::from_str(text).map_err(|e| anyhow!("CRI-O's config is not valid TOML: {e}"))?;
        let c = config.crio;
        table.root = c.root.or(table.root);
        table.runroot = c.runroot.or(table.runroot);
        table.storage_driver = c.storage_driver.or(table.storage_driver);
        table.storage_option = c.storage_option.or(table.storage_option);
    }
    let defaults = answer
        .files
        .get(STORAGE_CONF)
        .and_then(|r| r.ok())
        .and_then(|t| toml::from_str::<StorageConf>(t).ok());
    complete(table, defaults, "CRI-O's config files over storage.conf")
}

#[derive(Debug, Default, Deserialize)]
struct StorageConf {
    #[serde(default)]
    storage: StorageTable,
}

#[derive(Debug, Default, Deserialize)]
struct StorageTable {
    driver: Option<String>,
    graphroot: Option<String>,
    runroot: Option<String>,
}

fn complete(
    table: CrioTable,
    defaults: Option<StorageConf>,
    source: &'static str,
) -> Result<Storage> {
    let d = defaults.unwrap_or_default().storage;
    let pick = |own: Option<String>, default: Option<String>, fallback: &str| {
        own.filter(|s| !s.is_empty())
            .or(default.filter(|s| !s.is_empty()))
            .unwrap_or_else(|| fallback.to_string())
    };
    let storage = Storage {
        root: pick(table.root, d.graphroot, "/var/lib/containers/storage"),
        runroot: pick(table.runroot, d.runroot, "/run/containers/storage"),
        driver: pick(table.storage_driver, d.driver, "overlay"),
        options: table.storage_option.unwrap_or_default(),
        source,
    };
    for dir in [&storage.root, &storage.runroot] {
        if !dir.starts_with('/') || dir.contains("..") {
            bail!("CRI-O's storage path {dir:?} is not an absolute path");
        }
    }
    if storage.driver.contains(['@', '+', ':', '[', ']']) {
        bail!(
            "CRI-O's storage driver {:?} is not a driver name",
            storage.driver
        );
    }
    Ok(storage)
}

/// CRI-O as found on one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    pub version: Version,
    pub socket: String,
    pub skopeo: String,
    pub crictl: Option<Crictl>,
    pub storage: Storage,
    /// The first answer, kept while CRI-O's drop-in files are still to be read.
    first: Answer,
    dropins: Vec<String>,
}

/// `images.json` entries (c/storage's record of images).
#[derive(Debug, Deserialize)]
struct StoredImage {
    id: String,
    #[serde(default)]
    names: Vec<String>,
}

/// `layers.json` entries.
#[derive(Debug, Deserialize)]
struct StoredLayer {
    #[serde(rename = "compressed-diff-digest", default)]
    compressed: Option<String>,
    #[serde(rename = "diff-digest", default)]
    uncompressed: Option<String>,
    /// Set while a layer is being written; such a layer is not there.
    #[serde(default)]
    flags: BTreeMap<String, serde_json::Value>,
}

impl Located {
    /// skopeo on CRI-O's storage exactly (its storage.conf, staged beside), its temporary
    /// files in the helper's scratch volume.
    fn skopeo(&self, args: Vec<String>, timeout_secs: u64) -> Command {
        let mut argv = vec![self.skopeo.clone(), "--insecure-policy".into()];
        argv.extend(args);
        let mut c = Command::new(argv).timeout(timeout_secs);
        c.env.insert("TMPDIR".into(), STAGING_PARENT.into());
        c.env
            .insert("CONTAINERS_STORAGE_CONF".into(), STORAGE_CONF_STAGED.into());
        c
    }

    /// Copies the image of the OCI layout at `layout` into the storage as `name`.
    fn copy(&self, wanted: &Wanted, layout: &str, name: &str) -> Command {
        let platform = &wanted.platform;
        let mut args = vec![
            "--override-os".into(),
            platform.os.clone(),
            "--override-arch".into(),
            platform.architecture.clone(),
        ];
        if let Some(variant) = &platform.variant {
            args.extend(["--override-variant".into(), variant.clone()]);
        }
        args.extend([
            "copy".into(),
            "--quiet".into(),
            // Fail rather than rewrite the manifest: the image must keep its digest.
            "--preserve-digests".into(),
            format!("oci:{layout}"),
            self.storage.reference(name),
        ]);
        self.skopeo(args, IMPORT_TIMEOUT_SECS)
    }
}

impl super::Located for Located {
    fn describe(&self) -> String {
        format!(
            "cri-o {} at {} (skopeo {}, storage {}@{}+{} from {}{})",
            self.version,
            self.socket,
            self.skopeo,
            self.storage.driver,
            self.storage.root,
            self.storage.runroot,
            self.storage.source,
            if self.crictl.is_some() {
                ", crictl"
            } else {
                ""
            }
        )
    }

    fn probe_query(&self) -> Option<Query> {
        (!self.dropins.is_empty()).then(|| Query {
            files: self.dropins.clone(),
            ..Default::default()
        })
    }

    fn configure(&mut self, answer: &Answer) -> Result<()> {
        if self.dropins.is_empty() {
            return Ok(());
        }
        let mut all = self.first.clone();
        all.files.extend(answer.files.clone());
        self.storage = from_files(&all, &std::mem::take(&mut self.dropins))?;
        Ok(())
    }

    /// CRI-O has no per-image pin a client can set: it reports pinned exactly the images
    /// its `pinned_images` setting names, and changing crio.conf is not ours to do.
    fn pin(&self, _refs: &[String], _pinned: bool) -> Result<Vec<Command>, String> {
        Err(
            "CRI-O pins only the images its pinned_images setting (crio.conf) names; add the \
             refs there to pin them"
                .into(),
        )
    }

    fn cri_inspect(&self, refs: &[String]) -> Option<Vec<Command>> {
        self.crictl.as_ref().map(|c| c.inspect(refs))
    }

    /// Through CRI (`crictl rmi`): CRI-O removes the name, and the image with its last one.
    fn remove_ref(&self, reference: &str) -> Option<Command> {
        self.crictl.as_ref().map(|c| c.remove(reference))
    }

    fn inventory_query(&self, wanted: &Wanted) -> Query {
        Query {
            files: vec![self.storage.images_json(), self.storage.layers_json()],
            commands: self
                .crictl
                .as_ref()
                .map(|c| c.inspect(&wanted.refs))
                .unwrap_or_default(),
            ..Default::default()
        }
    }

    fn inventory(&self, wanted: &Wanted, answer: &Answer) -> Result<Inventory> {
        let read = |path: String| -> Result<Option<&str>> {
            match answer.files.get(&path) {
                Some(protocol::Read::Ok(text)) => Ok(Some(text.as_str())),
                // A fresh storage has written neither file yet.
                Some(protocol::Read::Err(e)) if e.contains("No such file") => Ok(None),
                Some(protocol::Read::Err(e)) => bail!("cannot read {path} on the node: {e}"),
                None => bail!("the node agent did not read {path}"),
            }
        };
        let images: Vec<StoredImage> = match read(self.storage.images_json())? {
            Some(text) => serde_json::from_str(text).map_err(|e| {
                anyhow!(
                    "{} is not what containers-storage writes: {e}",
                    self.storage.images_json()
                )
            })?,
            None => Vec::new(),
        };
        let layers: Vec<StoredLayer> = match read(self.storage.layers_json())? {
            Some(text) => serde_json::from_str(text).map_err(|e| {
                anyhow!(
                    "{} is not what containers-storage writes: {e}",
                    self.storage.layers_json()
                )
            })?,
            None => Vec::new(),
        };
        let mut missing = Vec::new();
        let want_id = wanted.config.trim_start_matches("sha256:");
        for r in &wanted.refs {
            match images.iter().find(|i| i.names.contains(r)) {
                None => missing.push(format!("{r} is not in CRI-O's storage")),
                Some(i) if i.id != want_id => missing.push(format!(
                    "{r} is image {} in CRI-O's storage, expected {want_id}",
                    i.id
                )),
                Some(_) => {}
            }
        }
        let mut checked_by = "containers-storage".to_string();
        if self.crictl.is_some() {
            missing.extend(cri::check(wanted, &answer.results));
            checked_by = "containers-storage and CRI (crictl)".into();
        }
        let complete = layers
            .iter()
            .filter(|l| !l.flags.contains_key("incomplete"));
        let mut compressed = HashSet::new();
        let mut uncompressed = HashSet::new();
        for l in complete {
            compressed.extend(l.compressed.clone());
            uncompressed.extend(l.uncompressed.clone());
        }
        // skopeo reuses a stored layer found by the blob's digest, or for an uncompressed
        // blob by its diff ID (the same digest); nothing else is safe to leave out.
        let layers_present = wanted
            .layers
            .iter()
            .zip(&wanted.diff_ids)
            .filter(|(blob, diff)| {
                compressed.contains(*blob) || (blob == diff && uncompressed.contains(*diff))
            })
            .map(|(blob, _)| blob.clone())
            .collect();
        Ok(Inventory {
            missing,
            layers_present,
            checked_by,
        })
    }

    /// skopeo reads a stream only once it is whole, so a cut stream is staged part by
    /// part, and each part's prefix image is copied into the storage while the next part
    /// arrives ([`Located::import_part`]); the last copy then finds those layers there.
    fn imports_in_parts(&self) -> bool {
        true
    }

    fn import_part(&self, wanted: &Wanted, view: &str, name: &str) -> Vec<Command> {
        vec![self.copy(wanted, view, name)]
    }

    /// skopeo writes the refs only once the image is complete: no staged name to remove,
    /// only the prefix images, one `skopeo delete` each (their layers stay, held by the
    /// image; a prefix a failed run never made fails its own delete, and nothing else).
    fn remove_partial(&self, _staged: &str, prefixes: &[Prefix]) -> Vec<Command> {
        prefixes
            .iter()
            .map(|p| {
                let delete = vec!["delete".into(), self.storage.reference(&p.name)];
                self.skopeo(delete, REMOVE_TIMEOUT_SECS)
            })
            .collect()
    }

    fn import(&self, wanted: &Wanted, bytes: u64) -> Run {
        let commands = wanted
            .refs
            .iter()
            .map(|r| self.copy(wanted, STAGING_DIR, r))
            .collect();
        Run {
            commands,
            stdin: Stdin::OciDir {
                bytes,
                dir: STAGING_DIR.into(),
            },
            writable: vec![self.storage.root.clone(), self.storage.runroot.clone()],
            scratch_at: Some(STAGING_PARENT.into()),
            files: [(STORAGE_CONF_STAGED.to_string(), self.storage.conf())].into(),
            index_digest: None,
            manifest_digest: None,
            framed: false,
            relay: None,
            parts: Vec::new(),
            finally: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::Platform;
    use crate::runtime::Adapter as _;
    use sideload_agent::protocol::{HttpResponse, PathFact, PathKind, Read};

    const CONFIG: &str = r#"
[crio]
  root = "/srv/node-d/storage"
  runroot = "/run/node-d/storage"
  storage_driver = "overlay"
  storage_option = [
    "overlay.mountopt=nodev,metacopy=on",
    "overlay.mountopt=nodev",
    "vfs.ignore_chown_errors=true",
  ]
[crio.runtime]
  conmon = "/usr/bin/conmon"
"#;

    fn answer(served: Option<&str>) -> Answer {
        let mut a = Answer::default();
        for (p, kind, x) in [
            ("/var/run/crio/crio.sock", PathKind::Socket, false),
            ("/usr/bin/skopeo", PathKind::File, true),
            ("/usr/bin/crictl", PathKind::File, true),
        ] {
            a.paths.insert(
                p.into(),
                PathFact {
                    kind,
                    executable: x,
                },
            );
        }
        a.http = vec![match served {
            Some(body) => Read::Ok(HttpResponse {
                status: 200,
                body: body.into(),
            }),
            None => Read::Err("connection refused".into()),
        }];
        a
    }

    fn wanted() -> Wanted {
        let mut w = Wanted::sample();
        w.refs.push("docker.io/library/app:latest".into());
        // The first layer stored uncompressed: its digest is its diff ID.
        w.diff_ids[0] = w.layers[0].clone();
        w.platform = Platform::new("linux", "arm64", None);
        w
    }

    fn located(served: Option<&str>) -> Box<dyn crate::runtime::Located> {
        Adapter {
            version: Version::new(1, 34, 0),
        }
        .locate(None, &answer(served))
        .unwrap()
    }

    #[test]
    fn storage_comes_from_crios_running_config() {
        let l = located(Some(CONFIG));
        let desc = l.describe();
        assert!(
            desc.contains("overlay@/srv/node-d/storage+/run/node-d/storage"),
            "{desc}"
        );
        let run = l.import(&wanted(), 99);
        assert_eq!(run.writable, ["/srv/node-d/storage", "/run/node-d/storage"]);
        assert_eq!(run.commands.len(), 2, "one skopeo copy per ref");
        let argv = &run.commands[0].argv;
        assert_eq!(
            argv.last().unwrap(),
            "containers-storage:[overlay@/srv/node-d/storage+/run/node-d/storage]docker.io/library/app:v1"
        );
        let conf: toml::Table = toml::from_str(&run.files[STORAGE_CONF_STAGED]).unwrap();
        assert_eq!(
            conf["storage"]["graphroot"].as_str(),
            Some("/srv/node-d/storage")
        );
        assert_eq!(
            conf["storage"]["options"]["overlay"]["mountopt"].as_str(),
            Some("nodev"),
            "the last of a repeated option wins, as in the driver"
        );
        assert!(conf["storage"]["options"].get("vfs").is_none());
        assert_eq!(
            run.commands[0].env["CONTAINERS_STORAGE_CONF"],
            STORAGE_CONF_STAGED
        );
        assert!(argv.contains(&"--preserve-digests".to_string()));
        assert!(argv.windows(2).any(|w| w == ["--override-arch", "arm64"]));
        assert_eq!(
            run.stdin,
            Stdin::OciDir {
                bytes: 99,
                dir: STAGING_DIR.into()
            }
        );
        assert_eq!(run.commands[0].env["TMPDIR"], STAGING_PARENT);
    }

    #[test]
    fn without_config_endpoint_the_files_decide_over_storage_conf() {
        let mut a = answer(None);
        a.files.insert(
            CONFIG_FILE.into(),
            Read::Ok("[crio]\nroot = \"/data/crio\"\n".into()),
        );
        a.files.insert(
            STORAGE_CONF.into(),
            Read::Ok("[storage]\ndriver = \"overlay\"\ngraphroot = \"/var/lib/containers/storage\"\nrunroot = \"/run/containers/storage\"\n".into()),
        );
        a.dirs
            .insert(CONFIG_DIR.into(), Read::Ok(vec!["10-run.conf".into()]));
        let mut l = Adapter {
            version: Version::new(1, 34, 0),
        }
        .locate(None, &a)
        .unwrap();
        assert!(
            l.describe()
                .contains("overlay@/data/crio+/run/containers/storage"),
            "{}",
            l.describe()
        );
        let probe = l.probe_query().expect("the drop-in is read next");
        assert_eq!(probe.files, [format!("{CONFIG_DIR}/10-run.conf")]);
        let mut second = Answer::default();
        second.files.insert(
            format!("{CONFIG_DIR}/10-run.conf"),
            Read::Ok("[crio]\nrunroot = \"/run/crio-storage\"\n".into()),
        );
        l.configure(&second).unwrap();
        assert!(
            l.describe()
                .contains("overlay@/data/crio+/run/crio-storage"),
            "{}",
            l.describe()
        );
    }

    /// A cut stream on CRI-O: every part but the last copies its prefix image from its own
    /// view while the next part arrives, by argv; the prefix images are deleted after;
    /// the real copy still reads the whole staging directory.
    #[test]
    fn a_cut_stream_imports_its_parts_ahead_from_their_views() {
        use crate::archive::testutil::{TestImage, docker_archive, write_temp};
        use crate::archive::{Archive, Source};
        let img = TestImage::new(7, "linux/amd64", 3, 4096);
        let (_dir, path) = write_temp(&docker_archive(&img, &["app:v1"]).tar());
        let archive = std::sync::Arc::new(Archive::open(&Source::Path(path)).unwrap());
        let image = archive.summary().images[0].clone();
        let transfer =
            crate::transfer::Transfer::new(archive, image, HashSet::new(), "r9", true, false)
                .unwrap();
        let l = located(Some(CONFIG));
        assert!(l.imports_in_parts());
        let run = transfer.request(l.as_ref(), &wanted(), true);
        assert_eq!(run.parts.len(), 3);
        let storage = "containers-storage:[overlay@/srv/node-d/storage+/run/node-d/storage]";
        for (k, part) in run.parts[..2].iter().enumerate() {
            let [copy] = &part.commands[..] else {
                panic!("part {k}: {:?}", part.commands)
            };
            let argv = &copy.argv;
            assert_eq!(argv[0], "/usr/bin/skopeo");
            assert_eq!(
                argv[argv.len() - 2..],
                [
                    format!("oci:{STAGING_DIR}.part{k}"),
                    format!("{storage}sideload.invalid/partial:r9-{}", k + 1)
                ]
            );
            assert!(argv.contains(&"--preserve-digests".to_string()));
            assert_eq!(copy.env["CONTAINERS_STORAGE_CONF"], STORAGE_CONF_STAGED);
        }
        assert!(run.parts[2].commands.is_empty());
        assert!(
            run.commands
                .iter()
                .all(|c| c.argv.contains(&format!("oci:{STAGING_DIR}")))
        );
        let deleted: Vec<_> = run.finally.iter().map(|c| c.argv[2..].to_vec()).collect();
        assert_eq!(
            deleted,
            (0..2)
                .map(|k| vec![
                    "delete".to_string(),
                    format!("{storage}sideload.invalid/partial:r9-{}", k + 1)
                ])
                .collect::<Vec<_>>()
        );
        // A delete is bounded like a removal, not like an import.
        assert!(
            run.finally
                .iter()
                .all(|c| c.timeout_secs == Some(REMOVE_TIMEOUT_SECS))
        );
        assert!(
            run.parts[..2]
                .iter()
                .all(|p| p.commands[0].timeout_secs == Some(IMPORT_TIMEOUT_SECS))
        );
    }

    #[test]
    fn missing_skopeo_names_the_package() {
        let mut a = answer(Some(CONFIG));
        a.paths.remove("/usr/bin/skopeo");
        let err = Adapter {
            version: Version::new(1, 34, 0),
        }
        .locate(None, &a)
        .unwrap_err();
        assert!(err.to_string().contains("skopeo"), "{err}");
    }

    #[test]
    fn inventory_reads_storage_records_and_cri() {
        let l = located(Some(CONFIG));
        let w = wanted();
        let images = format!(
            r#"[{{"id":"{}","names":["docker.io/library/app:v1","docker.io/library/app:latest"]}}]"#,
            "c".repeat(64)
        );
        let layers = format!(
            r#"[{{"id":"x","diff-digest":"{}"}},{{"id":"y","compressed-diff-digest":"{}","diff-digest":"{}","flags":{{"incomplete":true}}}}]"#,
            w.diff_ids[0], w.layers[1], w.diff_ids[1]
        );
        let inspect = format!(
            r#"{{"status":{{"id":"{}","repoTags":["docker.io/library/app:v1","docker.io/library/app:latest"]}}}}"#,
            "c".repeat(64)
        );
        let ok = |s: &str| sideload_agent::protocol::CommandResult {
            exit_code: 0,
            stdout: s.into(),
            stderr: String::new(),
            truncated: false,
        };
        let mut a = Answer::default();
        let q = l.inventory_query(&w);
        a.files.insert(q.files[0].clone(), Read::Ok(images));
        a.files.insert(q.files[1].clone(), Read::Ok(layers));
        a.results = vec![ok(&inspect), ok(&inspect)];
        let inv = l.inventory(&w, &a).unwrap();
        assert!(inv.missing.is_empty(), "{:?}", inv.missing);
        // Layer 0 is uncompressed and stored; layer 1's record is incomplete.
        assert_eq!(inv.layers_present, HashSet::from([w.layers[0].clone()]));
        a.files.insert(
            q.files[0].clone(),
            Read::Err("No such file or directory (os error 2)".into()),
        );
        let inv = l.inventory(&w, &a).unwrap();
        assert_eq!(inv.missing.len(), 2, "{:?}", inv.missing);
    }
}
