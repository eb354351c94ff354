//! Node container runtimes: which one a node runs (from its status), and one adapter per
//! runtime behind one interface: where its socket and tools are, what it holds of an
//! image, the import, and the verification.
//!
//! Adapters never talk to the cluster. They say what to ask the node agent ([`Query`],
//! [`Run`]) and read its answers, so every rule is a unit test over recorded answers, and
//! `load.rs` drives any runtime the same way. Everything node-side is an argv array: image
//! refs come from untrusted archives and never meet a shell.

pub mod containerd;
pub mod cri;
pub mod crio;
pub mod docker;

use std::collections::HashSet;
use std::fmt;

use anyhow::Result;
use serde::Serialize;
use sideload_agent::protocol::{Answer, Command, Query, Run};

use crate::archive::{Platform, Prefix};
use crate::cluster::helper::Needs;
use crate::model::RuntimeKind;

/// The runtime a node reports in `status.nodeInfo.containerRuntimeVersion`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Runtime {
    Containerd {
        version: Version,
        flavour: containerd::Flavour,
    },
    CriO {
        version: Version,
    },
    Docker {
        version: Version,
    },
    Other {
        raw: String,
    },
}

impl Runtime {
    /// Parses `containerd://1.7.22`, `cri-o://1.30.1`, `docker://24.0.7`; the kubelet
    /// version tells k3s/RKE2/k0s builds of containerd apart (`v1.30.4+k3s1`).
    pub fn from_node_info(runtime_version: &str, kubelet_version: &str, microk8s: bool) -> Self {
        let (scheme, rest) = runtime_version
            .split_once("://")
            .unwrap_or((runtime_version, ""));
        let version = Version::parse(rest);
        match scheme {
            "containerd" => Runtime::Containerd {
                version,
                flavour: containerd::Flavour::detect(kubelet_version, microk8s),
            },
            "cri-o" => Runtime::CriO { version },
            "docker" => Runtime::Docker { version },
            _ => Runtime::Other {
                raw: runtime_version.to_string(),
            },
        }
    }

    /// `--runtime KIND`: this node taken to run KIND. The version stays when the node
    /// reports that kind already (it is only used for display then).
    pub fn overridden(&self, kind: RuntimeKind, kubelet_version: &str) -> Runtime {
        match (kind, self) {
            (RuntimeKind::Containerd, Runtime::Containerd { .. })
            | (RuntimeKind::CriO, Runtime::CriO { .. })
            | (RuntimeKind::Docker, Runtime::Docker { .. }) => self.clone(),
            (RuntimeKind::Containerd, _) => Runtime::Containerd {
                version: Version::default(),
                flavour: containerd::Flavour::detect(kubelet_version, false),
            },
            (RuntimeKind::CriO, _) => Runtime::CriO {
                version: Version::default(),
            },
            (RuntimeKind::Docker, _) => Runtime::Docker {
                version: Version::default(),
            },
        }
    }

    /// The adapter for this runtime, or why none exists.
    pub fn adapter(&self) -> Result<Box<dyn Adapter>, String> {
        match self {
            Runtime::Containerd { version, flavour } => Ok(Box::new(containerd::Adapter {
                flavour: *flavour,
                version: *version,
            })),
            Runtime::CriO { version } => Ok(Box::new(crio::Adapter { version: *version })),
            Runtime::Docker { version } => Ok(Box::new(docker::Adapter { version: *version })),
            Runtime::Other { raw } => Err(format!(
                "unknown container runtime {raw:?}; containerd, CRI-O and Docker Engine are \
                 supported"
            )),
        }
    }
}

impl fmt::Display for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Runtime::Containerd { version, flavour } => match flavour {
                containerd::Flavour::Standard => write!(f, "containerd {version}"),
                other => write!(f, "containerd {version} ({other})"),
            },
            Runtime::CriO { version } => write!(f, "cri-o {version}"),
            Runtime::Docker { version } => write!(f, "docker {version}"),
            Runtime::Other { raw } => write!(f, "{raw}"),
        }
    }
}

/// The image as a node must end up holding it, taken from the archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    /// Every name the image must be listed under.
    pub refs: Vec<String>,
    /// What each ref must point at: the manifest, or for a multi-platform archive the index.
    pub target: String,
    pub manifest: String,
    /// The config digest: the image ID CRI reports.
    pub config: String,
    /// Layer digests, in manifest order.
    pub layers: Vec<String>,
    /// The config's diff_ids, in the same order (runtimes key unpacked layers by these).
    pub diff_ids: Vec<String>,
    pub platform: Platform,
}

impl Wanted {
    /// An image with one ref and two layers, for the adapters' unit tests.
    #[cfg(test)]
    pub fn sample() -> Wanted {
        let digest = |c: &str| format!("sha256:{}", c.repeat(64));
        Wanted {
            refs: vec!["docker.io/library/app:v1".into()],
            target: digest("a"),
            manifest: digest("a"),
            config: digest("c"),
            layers: vec![digest("1"), digest("2")],
            diff_ids: vec![digest("d"), digest("e")],
            platform: Platform::new("linux", "amd64", None),
        }
    }
}

/// What a node holds of a [`Wanted`] image.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Inventory {
    /// Why the image is not there, complete, under every ref; empty when it is.
    pub missing: Vec<String>,
    /// Layers (digests of [`Wanted::layers`]) the node already holds, as content or
    /// unpacked: they need not be sent.
    pub layers_present: HashSet<String>,
    /// What vouched for it: "CRI (crictl)", or the runtime's own tool where no crictl is.
    pub checked_by: String,
}

/// One runtime's node-side steps, before anything is known about the node.
pub trait Adapter: Send + Sync + fmt::Debug {
    /// What the helper pod needs on this runtime.
    fn needs(&self) -> Needs;
    /// How the import goes, for `--dry-run` ("ctr images import into containerd's k8s.io").
    fn method(&self) -> &'static str;
    /// The first query: where the socket and the tools are. `endpoint` is the kubelet's
    /// `containerRuntimeEndpoint` when the plugin could read it.
    fn locate_query(&self, endpoint: Option<&str>) -> Query;
    /// Its answer, read.
    fn locate(&self, endpoint: Option<&str>, answer: &Answer) -> Result<Box<dyn Located>>;
}

/// A runtime found on a node.
pub trait Located: Send + Sync + fmt::Debug {
    /// "containerd 1.7.35 at /run/containerd/containerd.sock" …, for logs and errors.
    fn describe(&self) -> String;
    /// A second look, once paths are known (versions, the CRI configuration), if needed.
    fn probe_query(&self) -> Option<Query>;
    fn configure(&mut self, answer: &Answer) -> Result<()>;
    /// What the node holds of `wanted`.
    fn inventory_query(&self, wanted: &Wanted) -> Query;
    /// A second question the first answer raises, if any (Docker: the layers of the images
    /// the first answer listed). Its results are appended to the first answer's before
    /// [`Located::inventory`] reads them.
    fn inventory_followup(&self, _wanted: &Wanted, _answer: &Answer) -> Option<Query> {
        None
    }
    fn inventory(&self, wanted: &Wanted, answer: &Answer) -> Result<Inventory>;
    /// The import: a host command fed `bytes` bytes of OCI-layout tar.
    fn import(&self, wanted: &Wanted, bytes: u64) -> Run;
    /// Whether [`Located::import`] takes a stream cut into parts (archive/parts.rs), one
    /// run of its command per part; the prefix images the parts create are removed after
    /// with [`Located::remove_images`].
    fn imports_in_parts(&self) -> bool {
        false
    }
    /// Whether the import reads a docker-archive `manifest.json` (Docker Engine's
    /// `docker load`), which the stream then carries beside its `index.json`.
    fn reads_docker_manifest(&self) -> bool {
        false
    }
    /// Host commands run once the import succeeded, giving the image its real names: the
    /// stream names it only by a staging name (`transfer::staging_name`), so an import that
    /// fails half-way (a corrupted blob, a killed helper) never leaves a broken image under,
    /// or takes away the image that was under, the refs. Empty for importers that write
    /// the refs only once the whole image is in (skopeo, CRI-O).
    fn name_images(&self, _staged: &str, _refs: &[String]) -> Vec<Command> {
        Vec::new()
    }
    /// Host commands importing the prefix image `name` (archive/parts.rs) from the layout
    /// at `view` as soon as its part is staged ([`sideload_agent::protocol::Part::commands`]), for
    /// importers that stage the whole stream first (skopeo, CRI-O): the real import then
    /// finds those layers in place. Empty where the parts are imported as they come.
    fn import_part(&self, _wanted: &Wanted, _view: &str, _name: &str) -> Vec<Command> {
        Vec::new()
    }
    /// Host commands removing what an import made on the way, once it ended: the staged
    /// name and a cut stream's prefix images (by name and, as CRI's containerd plugin
    /// also records an image, by config digest). Their layers stay, held by the image.
    fn remove_partial(&self, staged: &str, prefixes: &[Prefix]) -> Vec<Command> {
        let mut names = vec![staged.to_string()];
        names.extend(
            prefixes
                .iter()
                .flat_map(|p| [p.name.clone(), p.config.clone()]),
        );
        self.remove_images(&names).into_iter().collect()
    }
    /// A host command removing these image records (not their layers) from the runtime.
    fn remove_images(&self, _refs: &[String]) -> Option<Command> {
        None
    }
    /// Host commands that protect `refs` from the kubelet's image garbage collection
    /// (`pinned`) or give them back to it, or why this runtime cannot do that: then nothing
    /// runs and the report says so, never that the image is pinned.
    fn pin(&self, refs: &[String], pinned: bool) -> Result<Vec<Command>, String>;
    /// Host commands asking CRI about each of `refs` (`crictl inspecti`), read by
    /// [`cri::inspected`]; `None` where the node has no crictl.
    fn cri_inspect(&self, refs: &[String]) -> Option<Vec<Command>>;
    /// The answers to [`Located::cri_inspect`], one per ref: the image as the kubelet sees
    /// it, or `None` where it is not listed.
    fn read_inspect(
        &self,
        refs: &[String],
        results: &[sideload_agent::protocol::CommandResult],
    ) -> Vec<Option<cri::CriImage>> {
        cri::inspected(refs, results)
    }
    /// A host command removing the name `reference` from the runtime (`rm`): the image
    /// goes with its last name, its layers when nothing else uses them.
    fn remove_ref(&self, reference: &str) -> Option<Command>;
}

/// A lenient dotted version: `1.7.22`, `v2.0.0-rc.1`, `1.6.20~ds1` → (major, minor, patch).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Serialize)]
pub struct Version {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl Version {
    #[cfg(test)]
    pub const fn new(major: u32, minor: u32, patch: u32) -> Self {
        Version {
            major,
            minor,
            patch,
        }
    }

    /// Never fails: missing or odd parts read as 0, which callers treat as "oldest".
    pub fn parse(text: &str) -> Self {
        let text = text.trim().trim_start_matches('v');
        let mut parts = text.split('.').map(|part| {
            part.chars()
                .take_while(|c| c.is_ascii_digit())
                .collect::<String>()
                .parse::<u32>()
                .unwrap_or(0)
        });
        Version {
            major: parts.next().unwrap_or(0),
            minor: parts.next().unwrap_or(0),
            patch: parts.next().unwrap_or(0),
        }
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// The first of `candidates` the answer shows as a socket.
fn first_socket<'a>(
    answer: &Answer,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    candidates.into_iter().find(|p| {
        answer
            .paths
            .get(*p)
            .is_some_and(|f| f.kind == sideload_agent::protocol::PathKind::Socket)
    })
}

/// The first of `candidates` the answer shows as an executable file.
fn first_executable<'a>(
    answer: &Answer,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    candidates
        .into_iter()
        .find(|p| answer.paths.get(*p).is_some_and(|f| f.executable))
}

/// The sockets to look for: `endpoint`'s path first (unless `usable` says it is not this
/// runtime's), then `defaults` not already named.
fn candidate_sockets(
    endpoint: Option<&str>,
    defaults: &[&str],
    usable: impl Fn(&str) -> bool,
) -> Vec<String> {
    let mut out: Vec<String> = endpoint
        .and_then(socket_path)
        .filter(|p| usable(p))
        .into_iter()
        .map(str::to_string)
        .collect();
    for s in defaults {
        if !out.iter().any(|o| o == s) {
            out.push(s.to_string());
        }
    }
    out
}

/// `unix:///run/x.sock` → `/run/x.sock`; other schemes are not sockets we can use.
fn socket_path(endpoint: &str) -> Option<&str> {
    match endpoint.split_once("://") {
        Some(("unix", path)) => Some(path),
        Some(_) => None,
        None => Some(endpoint),
    }
    .filter(|p| p.starts_with('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_leniently() {
        assert_eq!(Version::parse("1.7.22"), Version::new(1, 7, 22));
        assert_eq!(Version::parse("v2.0.0-rc.1"), Version::new(2, 0, 0));
        assert_eq!(Version::parse("1.6.20~ds1"), Version::new(1, 6, 20));
        assert_eq!(Version::parse("garbage"), Version::new(0, 0, 0));
        assert!(Version::parse("1.10.0") > Version::parse("1.9.9"));
    }

    #[test]
    fn runtimes_from_node_info() {
        let rt = Runtime::from_node_info("containerd://1.7.22", "v1.34.4", false);
        assert_eq!(
            rt,
            Runtime::Containerd {
                version: Version::new(1, 7, 22),
                flavour: containerd::Flavour::Standard
            }
        );
        assert!(rt.adapter().is_ok());
        let k3s = Runtime::from_node_info("containerd://2.0.5-k3s1", "v1.33.1+k3s1", false);
        assert_eq!(k3s.to_string(), "containerd 2.0.5 (k3s)");
        let crio = Runtime::from_node_info("cri-o://1.34.0", "v1.34.0", false);
        assert_eq!(crio.to_string(), "cri-o 1.34.0");
        assert!(crio.adapter().is_ok());
        let docker = Runtime::from_node_info("docker://28.2.2", "v1.34.0", false);
        assert_eq!(docker.to_string(), "docker 28.2.2");
        assert_eq!(
            docker.adapter().unwrap().method(),
            "docker load into Docker Engine"
        );
        let odd = Runtime::from_node_info("frakti://1", "v1.30.1", false);
        assert!(odd.adapter().unwrap_err().contains("frakti"));
    }

    #[test]
    fn endpoints_to_socket_paths() {
        assert_eq!(
            socket_path("unix:///run/containerd/containerd.sock"),
            Some("/run/containerd/containerd.sock")
        );
        assert_eq!(
            socket_path("/var/run/crio/crio.sock"),
            Some("/var/run/crio/crio.sock")
        );
        assert_eq!(socket_path("npipe:////./pipe/containerd"), None);
        assert_eq!(socket_path("unix://relative.sock"), None);
    }
}
