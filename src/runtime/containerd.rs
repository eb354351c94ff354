//! containerd nodes: kubeadm-style, k3s, RKE2, k0s and microk8s builds. Import goes through
//! the node's own `ctr` into namespace `k8s.io` (the only one the kubelet's CRI sees), with
//! the snapshotter CRI uses, for the node's platform only (importing all platforms is
//! kind#3795).
//!
//! Flags differ by ctr version (DESIGN.md): 1.6 imports client-side from a plain tar; 2.x
//! goes through the transfer API unless `--local` is given, and that path fails for some
//! archives ("no unpack platforms defined", containerd#11228), so 2.x always gets `--local`.

use std::collections::{BTreeMap, HashSet};
use std::fmt;

use anyhow::{Result, anyhow, bail};
use serde::Serialize;
use sha2::{Digest, Sha256};
use sideload_agent::protocol::{Answer, Command, Query, Run};

use super::cri::{self, Crictl};
use super::{Inventory, Version, Wanted, first_executable, first_socket, socket_path};
use crate::cluster::helper::Needs;

/// How long an import may take on the node before the agent kills it.
const IMPORT_TIMEOUT_SECS: u64 = 3600;
/// Removing or naming a few image records.
const REMOVE_TIMEOUT_SECS: u64 = 60;
/// How long a listing may take.
const LIST_TIMEOUT_SECS: u64 = 60;

/// Which distribution of containerd a node runs; decides where socket and `ctr` live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Flavour {
    Standard,
    K3s,
    Rke2,
    K0s,
    Microk8s,
}

impl Flavour {
    /// k3s, RKE2 and k0s stamp their kubelet version (`v1.30.4+k3s1`, `v1.30.4+rke2r1`,
    /// `v1.30.4+k0s`); microk8s labels its nodes `microk8s.io/cluster`.
    pub fn detect(kubelet_version: &str, microk8s: bool) -> Self {
        if microk8s {
            Flavour::Microk8s
        } else if kubelet_version.contains("+k3s") {
            Flavour::K3s
        } else if kubelet_version.contains("+rke2") {
            Flavour::Rke2
        } else if kubelet_version.contains("+k0s") {
            Flavour::K0s
        } else {
            Flavour::Standard
        }
    }

    /// Sockets to try, in order, when the kubelet's own endpoint is unknown.
    pub fn sockets(self) -> &'static [&'static str] {
        match self {
            Flavour::Standard => &[
                "/run/containerd/containerd.sock",
                "/var/run/containerd/containerd.sock",
            ],
            Flavour::K3s | Flavour::Rke2 => &["/run/k3s/containerd/containerd.sock"],
            Flavour::K0s => &["/run/k0s/containerd.sock"],
            Flavour::Microk8s => &["/var/snap/microk8s/common/run/containerd.sock"],
        }
    }

    /// How this flavour runs `ctr` on the host, in order of preference: a path, plus any
    /// words before ctr's own arguments (`k0s ctr …`).
    pub fn ctr_commands(self) -> &'static [(&'static str, &'static [&'static str])] {
        match self {
            Flavour::Standard => &[
                ("/usr/bin/ctr", &[]),
                ("/usr/local/bin/ctr", &[]),
                ("/opt/bin/ctr", &[]),
            ],
            Flavour::K3s => &[
                ("/var/lib/rancher/k3s/data/current/bin/ctr", &[]),
                ("/usr/local/bin/k3s", &["ctr"]),
                ("/usr/local/bin/ctr", &[]),
                ("/usr/bin/ctr", &[]),
            ],
            Flavour::Rke2 => &[
                ("/var/lib/rancher/rke2/bin/ctr", &[]),
                ("/usr/local/bin/ctr", &[]),
            ],
            Flavour::K0s => &[("/usr/local/bin/k0s", &["ctr"]), ("/usr/bin/k0s", &["ctr"])],
            Flavour::Microk8s => &[
                ("/snap/microk8s/current/bin/ctr", &[]),
                ("/usr/bin/ctr", &[]),
            ],
        }
    }

    /// containerd's configuration file for this flavour: where CRI's snapshotter is set
    /// when crictl cannot tell.
    pub fn config_file(self) -> &'static str {
        match self {
            Flavour::Standard => "/etc/containerd/config.toml",
            Flavour::K3s => "/var/lib/rancher/k3s/agent/etc/containerd/config.toml",
            Flavour::Rke2 => "/var/lib/rancher/rke2/agent/etc/containerd/config.toml",
            Flavour::K0s => "/etc/k0s/containerd.toml",
            Flavour::Microk8s => "/var/snap/microk8s/current/args/containerd-template.toml",
        }
    }
}

impl fmt::Display for Flavour {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Flavour::Standard => "containerd",
            Flavour::K3s => "k3s",
            Flavour::Rke2 => "rke2",
            Flavour::K0s => "k0s",
            Flavour::Microk8s => "microk8s",
        })
    }
}

/// containerd, before the node was looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Adapter {
    pub flavour: Flavour,
    /// The daemon's version as the node status reports it.
    pub version: Version,
}

impl super::Adapter for Adapter {
    fn needs(&self) -> Needs {
        // Every write goes through containerd's own socket: nothing but chroot is needed.
        Needs::default()
    }

    fn method(&self) -> &'static str {
        "ctr images import into containerd namespace k8s.io"
    }

    fn locate_query(&self, endpoint: Option<&str>) -> Query {
        let mut paths: Vec<String> = endpoint
            .and_then(socket_path)
            .into_iter()
            .map(str::to_string)
            .collect();
        paths.extend(self.flavour.sockets().iter().map(|s| s.to_string()));
        paths.extend(
            self.flavour
                .ctr_commands()
                .iter()
                .map(|(p, _)| p.to_string()),
        );
        paths.extend(cri::CRICTL_PATHS.iter().map(|s| s.to_string()));
        Query {
            paths,
            files: vec![self.flavour.config_file().to_string()],
            ..Default::default()
        }
    }

    fn locate(&self, endpoint: Option<&str>, answer: &Answer) -> Result<Box<dyn super::Located>> {
        let kubelet = endpoint.and_then(socket_path);
        let socket = first_socket(
            answer,
            kubelet
                .into_iter()
                .chain(self.flavour.sockets().iter().copied()),
        )
        .ok_or_else(|| {
            anyhow!(
                "no containerd socket found on the node (looked for: {}); pass \
                     --runtime-endpoint with the kubelet's containerRuntimeEndpoint",
                kubelet
                    .into_iter()
                    .chain(self.flavour.sockets().iter().copied())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })?;
        let (ctr_path, prefix) = self
            .flavour
            .ctr_commands()
            .iter()
            .find(|(p, _)| first_executable(answer, [*p]).is_some())
            .ok_or_else(|| {
                anyhow!(
                    "no ctr binary found on the node (looked for: {})",
                    self.flavour
                        .ctr_commands()
                        .iter()
                        .map(|(p, _)| *p)
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })?;
        let mut ctr = vec![ctr_path.to_string()];
        ctr.extend(prefix.iter().map(|s| s.to_string()));
        let crictl =
            first_executable(answer, cri::CRICTL_PATHS.iter().copied()).map(|path| Crictl {
                path: path.to_string(),
                socket: socket.to_string(),
            });
        let config_snapshotter = answer
            .files
            .get(self.flavour.config_file())
            .and_then(|r| r.ok())
            .and_then(|text| snapshotter_from_config(text));
        Ok(Box::new(Located {
            flavour: self.flavour,
            socket: socket.to_string(),
            ctr,
            crictl,
            client: Version::default(),
            server: self.version,
            snapshotter: config_snapshotter.unwrap_or_else(|| "overlayfs".into()),
        }))
    }
}

/// containerd as found on one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    pub flavour: Flavour,
    pub socket: String,
    /// The argv prefix that runs ctr (`/usr/bin/ctr`, or `/usr/local/bin/k0s ctr`).
    pub ctr: Vec<String>,
    pub crictl: Option<Crictl>,
    pub client: Version,
    pub server: Version,
    /// The snapshotter CRI unpacks images with: imports must use it, or the kubelet's
    /// runtime would unpack them again (or, without the blobs, not at all).
    pub snapshotter: String,
}

impl Located {
    /// `ctr --address SOCKET -n k8s.io ARGS…`.
    fn ctr(&self, args: &[&str]) -> Command {
        let mut argv = self.ctr.clone();
        argv.extend([
            "--address".into(),
            self.socket.clone(),
            "-n".into(),
            "k8s.io".into(),
        ]);
        argv.extend(args.iter().map(|a| a.to_string()));
        Command::new(argv).timeout(LIST_TIMEOUT_SECS)
    }

    fn inventory_commands(&self, wanted: &Wanted) -> (Vec<Command>, usize) {
        let mut check = vec!["images", "check", "--snapshotter", &self.snapshotter];
        let filters: Vec<String> = wanted.refs.iter().map(|r| format!("name=={r}")).collect();
        check.extend(filters.iter().map(String::as_str));
        let mut content = vec!["content", "ls", "-q"];
        let digests: Vec<String> = wanted
            .layers
            .iter()
            .map(|d| format!("digest=={d}"))
            .collect();
        content.extend(digests.iter().map(String::as_str));
        let mut commands = vec![
            self.ctr(&check),
            self.ctr(&content),
            self.ctr(&["snapshots", "--snapshotter", &self.snapshotter, "ls"]),
        ];
        let fixed = commands.len();
        if let Some(crictl) = &self.crictl {
            commands.extend(crictl.inspect(&wanted.refs));
        }
        (commands, fixed)
    }
}

impl super::Located for Located {
    fn describe(&self) -> String {
        format!(
            "containerd {} at {} (ctr {}, snapshotter {}{})",
            self.server,
            self.socket,
            self.ctr.join(" "),
            self.snapshotter,
            if self.crictl.is_some() {
                ", crictl"
            } else {
                ""
            }
        )
    }

    fn probe_query(&self) -> Option<Query> {
        let mut commands = vec![self.ctr(&["version"])];
        if let Some(crictl) = &self.crictl {
            commands.push(crictl.info());
        }
        Some(Query {
            commands,
            ..Default::default()
        })
    }

    fn configure(&mut self, answer: &Answer) -> Result<()> {
        let version = answer
            .results
            .first()
            .ok_or_else(|| anyhow!("the node agent ran no `ctr version`"))?;
        if version.exit_code != 0 {
            bail!(
                "`ctr version` failed on the node (exit code {}): {}",
                version.exit_code,
                tail(&version.stderr)
            );
        }
        let (client, server) = parse_version(&version.stdout).ok_or_else(|| {
            anyhow!(
                "unexpected output from `ctr version` on the node: {:?}",
                version.stdout.chars().take(300).collect::<String>()
            )
        })?;
        self.client = client;
        self.server = server;
        if let Some(info) = answer.results.get(1).filter(|r| r.exit_code == 0)
            && let Some(snapshotter) = snapshotter_from_crictl_info(&info.stdout)
        {
            self.snapshotter = snapshotter;
        }
        Ok(())
    }

    fn inventory_query(&self, wanted: &Wanted) -> Query {
        Query {
            commands: self.inventory_commands(wanted).0,
            ..Default::default()
        }
    }

    fn inventory(&self, wanted: &Wanted, answer: &Answer) -> Result<Inventory> {
        let (_, fixed) = self.inventory_commands(wanted);
        let results = &answer.results;
        if results.len() < fixed {
            bail!(
                "the node agent answered {} of {fixed} listings",
                results.len()
            );
        }
        let (check, content, snapshots) = (&results[0], &results[1], &results[2]);
        for (what, r) in [
            ("ctr images check", check),
            ("ctr content ls", content),
            ("ctr snapshots ls", snapshots),
        ] {
            if r.exit_code != 0 {
                bail!(
                    "{what} failed on the node (exit code {}): {}",
                    r.exit_code,
                    tail(&r.stderr)
                );
            }
            if r.truncated {
                bail!("{what} printed more than the agent keeps; the node's listing was cut short");
            }
        }
        let images = parse_check(&check.stdout);
        let mut missing = Vec::new();
        for r in &wanted.refs {
            match images.get(r) {
                None => missing.push(format!("{r} is not listed")),
                Some(row) if row.digest != wanted.target => missing.push(format!(
                    "{r} has digest {}, expected {}",
                    row.digest, wanted.target
                )),
                Some(row) if !row.complete && !row.unpacked => missing.push(format!(
                    "{r} is incomplete ({}) and not unpacked in snapshotter {}",
                    row.status, self.snapshotter
                )),
                Some(_) => {}
            }
        }
        let mut checked_by = "ctr".to_string();
        if self.crictl.is_some() {
            missing.extend(cri::check(wanted, &results[fixed..]));
            checked_by = "ctr and CRI (crictl)".into();
        }
        let content = parse_digests(&content.stdout);
        let committed = parse_snapshots(&snapshots.stdout);
        let chains = chain_ids(&wanted.diff_ids);
        let layers_present = wanted
            .layers
            .iter()
            .enumerate()
            .filter(|(i, layer)| {
                content.contains(*layer)
                    || chains
                        .get(*i)
                        .is_some_and(|chain| committed.contains(chain))
            })
            .map(|(_, layer)| layer.clone())
            .collect();
        Ok(Inventory {
            missing,
            layers_present,
            checked_by,
        })
    }

    /// ctr unpacks only once its whole input is in: fed a cut stream one part at a time,
    /// it unpacks each layer while the next one arrives.
    fn imports_in_parts(&self) -> bool {
        true
    }

    fn name_images(&self, staged: &str, refs: &[String]) -> Vec<Command> {
        refs.iter()
            .map(|r| {
                // --force: a ref that names an older image now names this one, as an
                // import would have done.
                let mut args = vec!["images", "tag", "--force"];
                if self.client.major >= 2 {
                    args.push("--local");
                }
                args.extend([staged, r.as_str()]);
                let mut command = self.ctr(&args);
                command.timeout_secs = Some(REMOVE_TIMEOUT_SECS);
                command
            })
            .collect()
    }

    fn remove_images(&self, refs: &[String]) -> Option<Command> {
        let mut args = vec!["images", "rm"];
        args.extend(refs.iter().map(String::as_str));
        let mut command = self.ctr(&args);
        command.timeout_secs = Some(REMOVE_TIMEOUT_SECS);
        Some(command)
    }

    /// containerd's CRI reports an image pinned, and the kubelet never collects it, when
    /// its record carries [`PIN_LABEL`]`=pinned`; `ctr images label` sets it (and with an
    /// empty value removes it) on every ctr from 1.6 on. Older daemons ignore the label.
    fn pin(&self, refs: &[String], pinned: bool) -> Result<Vec<Command>, String> {
        if !honours_pin_label(self.server) {
            return Err(format!(
                "containerd {} does not honour the {PIN_LABEL} label (1.6.22, 1.7.3, 2.0 and \
                 later do); upgrade containerd to pin",
                self.server
            ));
        }
        let label = if pinned {
            format!("{PIN_LABEL}=pinned")
        } else {
            format!("{PIN_LABEL}=")
        };
        Ok(refs
            .iter()
            .map(|r| {
                let mut command = self.ctr(&["images", "label", r, &label]);
                command.timeout_secs = Some(REMOVE_TIMEOUT_SECS);
                command
            })
            .collect())
    }

    fn cri_inspect(&self, refs: &[String]) -> Option<Vec<Command>> {
        self.crictl.as_ref().map(|c| c.inspect(refs))
    }

    /// `ctr images rm` removes only this name (CRI's RemoveImage would remove every name
    /// of the image); containerd's GC then drops content nothing references.
    fn remove_ref(&self, reference: &str) -> Option<Command> {
        super::Located::remove_images(self, &[reference.to_string()])
    }

    fn import(&self, wanted: &Wanted, bytes: u64) -> Run {
        let platform = wanted.platform.to_string();
        let mut args = vec![
            "images",
            "import",
            "--platform",
            &platform,
            "--snapshotter",
            &self.snapshotter,
        ];
        if self.client.major >= 2 {
            args.push("--local");
        }
        args.push("-");
        let mut command = self.ctr(&args);
        command.timeout_secs = Some(IMPORT_TIMEOUT_SECS);
        Run::piped(command, bytes)
    }
}

/// The image label containerd's CRI reads as "pinned" (containerd#7944).
pub const PIN_LABEL: &str = "io.cri-containerd.pinned";

/// The first releases whose CRI reads [`PIN_LABEL`]: 1.6.22, 1.7.3 and every 2.x.
fn honours_pin_label(v: Version) -> bool {
    match (v.major, v.minor) {
        (1, 6) => v.patch >= 22,
        (1, 7) => v.patch >= 3,
        (1, minor) => minor > 7,
        (major, _) => major >= 2,
    }
}

/// `ctr version`: client first, then server.
fn parse_version(stdout: &str) -> Option<(Version, Version)> {
    let versions: Vec<Version> = stdout
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Version:"))
        .map(Version::parse)
        .collect();
    match versions.as_slice() {
        [client, server, ..] => Some((*client, *server)),
        _ => None,
    }
}

/// One row of `ctr images check`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct CheckRow {
    digest: String,
    /// "complete (5/5)", "incomplete (3/5)" …
    status: String,
    complete: bool,
    unpacked: bool,
}

/// `ctr images check` as ref → row. Columns: REF TYPE DIGEST STATUS SIZE UNPACKED, where
/// STATUS ("complete (2/2)") and SIZE ("31.3 KiB/31.3 KiB") hold spaces: the first three
/// columns are read from the left, UNPACKED from the right.
fn parse_check(stdout: &str) -> BTreeMap<String, CheckRow> {
    stdout
        .lines()
        .skip_while(|l| !l.starts_with("REF"))
        .skip(1)
        .filter_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let (reference, digest) = (cols.first()?, cols.get(2)?);
            let status_word = cols.get(3)?;
            let status_count = cols.get(4).copied().unwrap_or("");
            let unpacked = *cols.last()? == "true";
            digest.starts_with("sha256:").then(|| {
                (
                    reference.to_string(),
                    CheckRow {
                        digest: digest.to_string(),
                        status: format!("{status_word} {status_count}").trim().to_string(),
                        complete: *status_word == "complete",
                        unpacked,
                    },
                )
            })
        })
        .collect()
}

/// `sha256:<64 hex>` lines; other lines (ctr 2.x prints deprecation warnings) are ignored.
fn parse_digests(stdout: &str) -> HashSet<String> {
    stdout
        .lines()
        .map(str::trim)
        .filter(|l| is_digest(l))
        .map(str::to_string)
        .collect()
}

fn is_digest(s: &str) -> bool {
    s.strip_prefix("sha256:")
        .is_some_and(|hex| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Committed snapshot keys of `ctr snapshots ls` (KEY PARENT KIND): unpacking commits each
/// layer under its chain ID.
fn parse_snapshots(stdout: &str) -> HashSet<String> {
    stdout
        .lines()
        .filter(|l| l.trim_end().ends_with("Committed"))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|k| is_digest(k))
        .map(str::to_string)
        .collect()
}

/// The OCI chain IDs of a layer stack: chain(0) = diff(0), chain(n) = sha256(chain(n-1) +
/// " " + diff(n)).
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut chains: Vec<String> = Vec::with_capacity(diff_ids.len());
    for diff in diff_ids {
        let next = match chains.last() {
            None => diff.clone(),
            Some(parent) => format!(
                "sha256:{}",
                hex::encode(Sha256::digest(format!("{parent} {diff}").as_bytes()))
            ),
        };
        chains.push(next);
    }
    chains
}

/// CRI's snapshotter from `crictl info`: containerd 1.x reports its CRI config under
/// `config.containerd.snapshotter`; 2.x keeps the images' snapshotter in the image service
/// config, reported as `config.containerd.snapshotter` too or per runtime handler.
fn snapshotter_from_crictl_info(stdout: &str) -> Option<String> {
    let value: serde_json::Value = serde_json::from_str(stdout).ok()?;
    let config = value.get("config")?;
    [
        "/containerd/snapshotter",
        "/imageConfig/snapshotter",
        "/snapshotter",
    ]
    .iter()
    .find_map(|p| config.pointer(p).and_then(|v| v.as_str()))
    .filter(|s| !s.is_empty())
    .map(str::to_string)
}

/// CRI's snapshotter from containerd's config.toml (schema 2: `plugins."io.containerd.grpc.
/// v1.cri".containerd.snapshotter`; schema 3: `plugins."io.containerd.cri.v1.images".
/// snapshotter`). `None` when the file does not say (containerd's default, overlayfs).
fn snapshotter_from_config(text: &str) -> Option<String> {
    let value: toml::Table = toml::from_str(text).ok()?;
    let plugins = value.get("plugins")?;
    let v3 = plugins
        .get("io.containerd.cri.v1.images")
        .and_then(|p| p.get("snapshotter"));
    let v2 = plugins
        .get("io.containerd.grpc.v1.cri")
        .and_then(|p| p.get("containerd"))
        .and_then(|c| c.get("snapshotter"));
    v3.or(v2)
        .and_then(|v| v.as_str())
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

fn tail(text: &str) -> String {
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.contains("DEPRECATION"))
        .collect();
    lines[lines.len().saturating_sub(3)..].join(" | ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::{Adapter as _, Located as _};
    use sideload_agent::protocol::{CommandResult, PathFact, PathKind};

    fn answer_with(paths: &[(&str, PathKind, bool)]) -> Answer {
        Answer {
            paths: paths
                .iter()
                .map(|(p, kind, executable)| {
                    (
                        p.to_string(),
                        PathFact {
                            kind: *kind,
                            executable: *executable,
                        },
                    )
                })
                .collect(),
            ..Default::default()
        }
    }

    fn result(stdout: &str) -> CommandResult {
        CommandResult {
            exit_code: 0,
            stdout: stdout.into(),
            stderr: String::new(),
            truncated: false,
        }
    }

    fn located() -> Located {
        Located {
            flavour: Flavour::Standard,
            socket: "/run/containerd/containerd.sock".into(),
            ctr: vec!["/usr/bin/ctr".into()],
            crictl: None,
            client: Version::new(1, 6, 20),
            server: Version::new(1, 6, 20),
            snapshotter: "overlayfs".into(),
        }
    }

    fn wanted() -> Wanted {
        Wanted::sample()
    }

    #[test]
    fn flavour_detection() {
        assert_eq!(Flavour::detect("v1.34.4", false), Flavour::Standard);
        assert_eq!(Flavour::detect("v1.33.1+k3s1", false), Flavour::K3s);
        assert_eq!(Flavour::detect("v1.33.1+rke2r1", false), Flavour::Rke2);
        assert_eq!(Flavour::detect("v1.33.1+k0s", false), Flavour::K0s);
        assert_eq!(Flavour::detect("v1.33.1", true), Flavour::Microk8s);
    }

    #[test]
    fn locate_prefers_the_kubelets_socket_and_finds_k0s_ctr() {
        let adapter = Adapter {
            flavour: Flavour::K0s,
            version: Version::new(1, 7, 22),
        };
        let query = adapter.locate_query(Some("unix:///weird/$(reboot).sock"));
        assert_eq!(query.paths[0], "/weird/$(reboot).sock");
        let answer = answer_with(&[
            ("/weird/$(reboot).sock", PathKind::Socket, false),
            ("/run/k0s/containerd.sock", PathKind::Socket, false),
            ("/usr/local/bin/k0s", PathKind::File, true),
        ]);
        let located = adapter
            .locate(Some("unix:///weird/$(reboot).sock"), &answer)
            .unwrap();
        let desc = located.describe();
        assert!(desc.contains("/weird/$(reboot).sock"), "{desc}");
        assert!(desc.contains("/usr/local/bin/k0s ctr"), "{desc}");
        let none = adapter
            .locate(None, &answer_with(&[]))
            .unwrap_err()
            .to_string();
        assert!(none.contains("no containerd socket"), "{none}");
        let no_ctr = adapter
            .locate(
                None,
                &answer_with(&[("/run/k0s/containerd.sock", PathKind::Socket, false)]),
            )
            .unwrap_err()
            .to_string();
        assert!(no_ctr.contains("no ctr binary"), "{no_ctr}");
    }

    #[test]
    fn version_and_snapshotter_from_the_probe() {
        let mut l = located();
        l.crictl = Some(Crictl {
            path: "/usr/bin/crictl".into(),
            socket: l.socket.clone(),
        });
        let version = "Client:\n  Version:  1.6.20~ds1\n  Revision: x\n\nServer:\n  Version:  v2.0.4\n  Revision: abc\n";
        let info = r#"{"status":{},"config":{"containerd":{"snapshotter":"native"}}}"#;
        l.configure(&Answer {
            results: vec![result(version), result(info)],
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            (l.client, l.server),
            (Version::new(1, 6, 20), Version::new(2, 0, 4))
        );
        assert_eq!(l.snapshotter, "native");
        assert!(l.configure(&Answer::default()).is_err());
    }

    #[test]
    fn snapshotter_from_config_files_of_both_schemas() {
        let v2 = "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd]\n  snapshotter = \"stargz\"\n";
        assert_eq!(snapshotter_from_config(v2).as_deref(), Some("stargz"));
        let v3 =
            "version = 3\n[plugins.\"io.containerd.cri.v1.images\"]\n  snapshotter = \"native\"\n";
        assert_eq!(snapshotter_from_config(v3).as_deref(), Some("native"));
        assert_eq!(snapshotter_from_config("version = 2\n"), None);
        assert_eq!(snapshotter_from_config("not toml ["), None);
    }

    #[test]
    fn import_flags_follow_ctr_version_and_pass_data_as_arguments() {
        let mut l = located();
        let w = wanted();
        let run = l.import(&w, 42);
        assert_eq!(
            run.stdin,
            sideload_agent::protocol::Stdin::Pipe { bytes: 42 }
        );
        assert_eq!(
            run.commands[0].argv,
            [
                "/usr/bin/ctr",
                "--address",
                "/run/containerd/containerd.sock",
                "-n",
                "k8s.io",
                "images",
                "import",
                "--platform",
                "linux/amd64",
                "--snapshotter",
                "overlayfs",
                "-"
            ]
        );
        l.client = Version::new(2, 1, 0);
        let run = l.import(&w, 42);
        assert!(run.commands[0].argv.contains(&"--local".to_string()));
    }

    #[test]
    fn the_staged_image_gets_each_ref_once_imported() {
        let mut l = located();
        let refs = [
            "docker.io/library/app:v1".to_string(),
            "example.com/app:v1".to_string(),
        ];
        let tags = l.name_images("sideload.invalid/partial:r1-image", &refs);
        assert_eq!(tags.len(), 2);
        assert_eq!(
            tags[1].argv[6..],
            [
                "tag",
                "--force",
                "sideload.invalid/partial:r1-image",
                "example.com/app:v1"
            ]
        );
        l.client = Version::new(2, 1, 0);
        let tags = l.name_images("sideload.invalid/partial:r1-image", &refs);
        assert!(tags[0].argv.contains(&"--local".to_string()));
    }

    fn check_output(digest: &str, status: &str, unpacked: &str) -> String {
        format!(
            "REF                       TYPE                                       DIGEST  STATUS  SIZE  UNPACKED\n\
             docker.io/library/app:v1  application/vnd.oci.image.manifest.v1+json {digest} {status} 1.0 MiB/1.0 MiB {unpacked}\n"
        )
    }

    #[test]
    fn inventory_demands_complete_or_unpacked_under_the_right_digest() {
        let l = located();
        let w = wanted();
        let chains = chain_ids(&w.diff_ids);
        let snapshots = format!("KEY PARENT KIND\n{} {} Committed\n", chains[0], "");
        let answer = |check: String| Answer {
            results: vec![
                result(&check),
                result(&format!("{}\n", w.layers[1])),
                result(&snapshots),
            ],
            ..Default::default()
        };
        let inv = l
            .inventory(
                &w,
                &answer(check_output(&w.target, "complete (3/3)", "true")),
            )
            .unwrap();
        assert!(inv.missing.is_empty(), "{:?}", inv.missing);
        // Layer 0 is unpacked (its chain is committed), layer 1 is in the content store.
        assert_eq!(inv.layers_present.len(), 2);
        let inv = l
            .inventory(
                &w,
                &answer(check_output(&w.target, "incomplete (1/3)", "false")),
            )
            .unwrap();
        assert!(
            inv.missing[0].contains("incomplete (1/3)"),
            "{:?}",
            inv.missing
        );
        // Blobs gone after unpacking (discard_unpacked_layers) is still present.
        let inv = l
            .inventory(
                &w,
                &answer(check_output(&w.target, "incomplete (1/3)", "true")),
            )
            .unwrap();
        assert!(inv.missing.is_empty());
        let other = format!("sha256:{}", "b".repeat(64));
        let inv = l
            .inventory(&w, &answer(check_output(&other, "complete (3/3)", "true")))
            .unwrap();
        assert!(inv.missing[0].contains("expected"), "{:?}", inv.missing);
        let mut cut = answer(check_output(&w.target, "complete (3/3)", "true"));
        cut.results[1].truncated = true;
        assert!(
            l.inventory(&w, &cut).is_err(),
            "a truncated listing is an error"
        );
    }

    #[test]
    fn chain_ids_follow_the_oci_definition() {
        let d = |c: &str| format!("sha256:{}", c.repeat(64));
        let chains = chain_ids(&[d("a"), d("b")]);
        assert_eq!(chains[0], d("a"));
        let expected = format!(
            "sha256:{}",
            hex::encode(Sha256::digest(format!("{} {}", d("a"), d("b")).as_bytes()))
        );
        assert_eq!(chains[1], expected);
    }

    #[test]
    fn inventory_filters_by_name_and_digest() {
        let w = wanted();
        let cmds = located().inventory_commands(&w).0;
        assert!(
            cmds[0]
                .argv
                .contains(&"name==docker.io/library/app:v1".to_string())
        );
        assert!(cmds[1].argv.contains(&format!("digest=={}", w.layers[0])));
    }

    #[test]
    fn pinning_labels_each_ref_where_the_daemon_honours_the_label() {
        use super::super::Located as _;
        let refs = vec![
            "docker.io/library/app:v1".to_string(),
            "x:$(id)".to_string(),
        ];
        // Debian 12's 1.6.20 ignores the label: nothing runs, and the reason names the fix.
        let old = located();
        let why = old.pin(&refs, true).unwrap_err();
        assert!(why.contains("1.6.20") && why.contains("1.6.22"), "{why}");
        for (server, honoured) in [
            (Version::new(1, 6, 22), true),
            (Version::new(1, 7, 2), false),
            (Version::new(1, 7, 3), true),
            (Version::new(2, 0, 0), true),
            (Version::new(2, 4, 2), true),
        ] {
            let l = Located {
                server,
                ..located()
            };
            assert_eq!(l.pin(&refs, true).is_ok(), honoured, "{server}");
        }
        let l = Located {
            server: Version::new(1, 7, 35),
            ..located()
        };
        let pin = l.pin(&refs, true).unwrap();
        assert_eq!(pin.len(), 2);
        // One argv per ref, the ref a single word: never a shell.
        assert_eq!(
            pin[1].argv[pin[1].argv.len() - 4..],
            [
                "images",
                "label",
                "x:$(id)",
                "io.cri-containerd.pinned=pinned"
            ]
        );
        let unpin = l.pin(&refs, false).unwrap();
        assert_eq!(unpin[0].argv.last().unwrap(), "io.cri-containerd.pinned=");
    }
}
