//! containerd nodes: kubeadm-style, k3s, RKE2 and microk8s builds. Import goes through the
//! node's own `ctr` into namespace `k8s.io` (the only one the kubelet's CRI sees).
//!
//! Flags differ by ctr version (DESIGN.md): 1.6 imports client-side from a plain tar; 2.x
//! goes through the transfer API unless `--local` is given, and that path fails for some
//! archives ("no unpack platforms defined", containerd#11228), so 2.x always gets `--local`.

use std::collections::{BTreeMap, HashSet};
use std::fmt;

use serde::Serialize;

use super::Version;

/// Which distribution of containerd a node runs; decides where socket and `ctr` live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Flavour {
    Standard,
    K3s,
    Rke2,
    Microk8s,
}

impl Flavour {
    /// k3s and RKE2 stamp their kubelet version (`v1.30.4+k3s1`, `v1.30.4+rke2r1`);
    /// microk8s labels its nodes `microk8s.io/cluster`.
    pub fn detect(kubelet_version: &str, microk8s: bool) -> Self {
        if microk8s {
            Flavour::Microk8s
        } else if kubelet_version.contains("+k3s") {
            Flavour::K3s
        } else if kubelet_version.contains("+rke2") {
            Flavour::Rke2
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
            Flavour::Microk8s => &["/var/snap/microk8s/common/run/containerd.sock"],
        }
    }

    /// Where this flavour keeps `ctr` on the host, in order of preference.
    pub fn ctr_paths(self) -> &'static [&'static str] {
        match self {
            Flavour::Standard => &["/usr/bin/ctr", "/usr/local/bin/ctr", "/opt/bin/ctr"],
            Flavour::K3s => &[
                "/var/lib/rancher/k3s/data/current/bin/ctr",
                "/usr/local/bin/ctr",
                "/usr/bin/ctr",
            ],
            Flavour::Rke2 => &["/var/lib/rancher/rke2/bin/ctr", "/usr/local/bin/ctr"],
            Flavour::Microk8s => &["/snap/microk8s/current/bin/ctr", "/usr/bin/ctr"],
        }
    }
}

impl fmt::Display for Flavour {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Flavour::Standard => "containerd",
            Flavour::K3s => "k3s",
            Flavour::Rke2 => "rke2",
            Flavour::Microk8s => "microk8s",
        })
    }
}

/// A constant script: finds the socket and `ctr`, then prints both and `ctr version`
/// (which also proves the daemon answers). Data arrives only as positional arguments:
/// `$1` the kubelet's socket or "", then candidate sockets, `--`, candidate ctr paths.
const PROBE_SCRIPT: &str = r#"sock="$1"; shift
found=""
while [ "$#" -gt 0 ] && [ "$1" != "--" ]; do
  if [ -z "$found" ] && [ -S "$1" ]; then found="$1"; fi
  shift
done
[ "$#" -gt 0 ] && shift
[ -n "$sock" ] || sock="$found"
if [ -z "$sock" ] || [ ! -S "$sock" ]; then
  echo "no containerd socket found${sock:+ at $sock}" >&2; exit 3
fi
for c in "$@"; do
  if [ -x "$c" ]; then
    echo "socket=$sock"
    echo "ctr=$c"
    exec "$c" --address "$sock" version
  fi
done
echo "no ctr binary found (looked for: $*)" >&2; exit 4
"#;

/// A constant script: reads exactly `$1` bytes of stdin into `ctr images import`. The
/// length framing makes the end of the stream unambiguous on every exec protocol version
/// (v4 has no stdin close; DESIGN.md), and a short stream fails the import instead of
/// hanging.
const IMPORT_SCRIPT: &str = r#"n="$1"; ctr="$2"; sock="$3"; shift 3
head -c "$n" | "$ctr" --address "$sock" -n k8s.io images import "$@" -
"#;

/// Where `ctr` and the socket were found on one node, and what versions answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Located {
    pub socket: String,
    pub ctr: String,
    pub client: Version,
    pub server: Version,
}

/// Host argv that finds the socket and ctr. `kubelet_socket` comes from the kubelet's
/// configz when readable (`unix:///run/…`); otherwise the flavour's well-known paths.
pub fn probe_argv(flavour: Flavour, kubelet_socket: Option<&str>) -> Vec<String> {
    let mut argv = vec![
        "/bin/sh".to_string(),
        "-c".to_string(),
        PROBE_SCRIPT.to_string(),
        "sideload-probe".to_string(),
        kubelet_socket
            .map(|s| s.trim_start_matches("unix://").to_string())
            .unwrap_or_default(),
    ];
    argv.extend(flavour.sockets().iter().map(|s| s.to_string()));
    argv.push("--".into());
    argv.extend(flavour.ctr_paths().iter().map(|s| s.to_string()));
    argv
}

/// Reads the probe's output: `socket=…`, `ctr=…`, then `ctr version` (client first).
pub fn parse_probe(stdout: &str) -> Result<Located, String> {
    let mut socket = None;
    let mut ctr = None;
    let mut versions = Vec::new();
    for line in stdout.lines() {
        let line = line.trim();
        if let Some(v) = line.strip_prefix("socket=") {
            socket = Some(v.to_string());
        } else if let Some(v) = line.strip_prefix("ctr=") {
            ctr = Some(v.to_string());
        } else if let Some(v) = line.strip_prefix("Version:") {
            versions.push(Version::parse(v));
        }
    }
    match (socket, ctr, versions.as_slice()) {
        (Some(socket), Some(ctr), [client, server, ..]) => Ok(Located {
            socket,
            ctr,
            client: *client,
            server: *server,
        }),
        _ => Err(format!(
            "unexpected output from `ctr version` on the node: {:?}",
            stdout.chars().take(300).collect::<String>()
        )),
    }
}

/// Host argv that streams exactly `len` bytes of an OCI-layout tar from stdin into the
/// node's containerd, for the node's platform only (importing all platforms is kind#3795).
pub fn import_argv(located: &Located, len: u64, platform: &str) -> Vec<String> {
    let mut argv = vec![
        "/bin/sh".to_string(),
        "-c".to_string(),
        IMPORT_SCRIPT.to_string(),
        "sideload-import".to_string(),
        len.to_string(),
        located.ctr.clone(),
        located.socket.clone(),
        "--platform".to_string(),
        platform.to_string(),
    ];
    if located.client.major >= 2 {
        argv.push("--local".into());
    }
    argv
}

/// Host argv listing the images of the kubelet's namespace.
pub fn list_argv(located: &Located) -> Vec<String> {
    ctr_argv(located, &["images", "ls"])
}

/// `ctr --address SOCKET -n k8s.io ARGS…`: CRI's images live in namespace k8s.io.
fn ctr_argv(located: &Located, args: &[&str]) -> Vec<String> {
    let mut argv = vec![
        located.ctr.clone(),
        "--address".into(),
        located.socket.clone(),
        "-n".into(),
        "k8s.io".into(),
    ];
    argv.extend(args.iter().map(|a| a.to_string()));
    argv
}

/// `ctr content ls -q`: the digests of every blob the node's k8s.io namespace holds, so a
/// layer it already has (the base of an image rebuilt on top of it) is not sent again.
pub fn content_argv(located: &Located) -> Vec<String> {
    ctr_argv(located, &["content", "ls", "-q"])
}

/// `ctr content ls -q` as a set of digests; other lines (ctr 2.x prints deprecation
/// warnings) are ignored.
pub fn parse_content(stdout: &str) -> HashSet<String> {
    stdout
        .lines()
        .map(str::trim)
        .filter(|l| {
            l.strip_prefix("sha256:")
                .is_some_and(|hex| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
        })
        .map(str::to_string)
        .collect()
}

/// `ctr images ls` as ref → target digest. Columns: REF TYPE DIGEST SIZE PLATFORMS LABELS;
/// SIZE holds a space ("1.2 MiB"), so only the first three are read.
pub fn parse_images(stdout: &str) -> BTreeMap<String, String> {
    stdout
        .lines()
        .skip_while(|l| !l.starts_with("REF"))
        .skip(1)
        .filter_map(|line| {
            let mut cols = line.split_whitespace();
            let reference = cols.next()?;
            let _media_type = cols.next()?;
            let digest = cols.next()?;
            digest
                .starts_with("sha256:")
                .then(|| (reference.to_string(), digest.to_string()))
        })
        .collect()
}

/// What a node lacks: each ref that is absent, or present with another digest.
pub fn missing_refs(
    listed: &BTreeMap<String, String>,
    refs: &[String],
    digest: &str,
) -> Vec<String> {
    refs.iter()
        .filter_map(|r| match listed.get(r) {
            Some(d) if d == digest => None,
            Some(d) => Some(format!("{r} has digest {d}, expected {digest}")),
            None => Some(format!("{r} is not listed")),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn located(client: Version) -> Located {
        Located {
            socket: "/run/containerd/containerd.sock".into(),
            ctr: "/usr/bin/ctr".into(),
            client,
            server: client,
        }
    }

    #[test]
    fn flavour_detection() {
        assert_eq!(Flavour::detect("v1.34.4", false), Flavour::Standard);
        assert_eq!(Flavour::detect("v1.33.1+k3s1", false), Flavour::K3s);
        assert_eq!(Flavour::detect("v1.33.1+rke2r1", false), Flavour::Rke2);
        assert_eq!(Flavour::detect("v1.33.1", true), Flavour::Microk8s);
    }

    #[test]
    fn probe_passes_data_only_as_arguments() {
        let argv = probe_argv(Flavour::K3s, Some("unix:///weird path/$(reboot).sock"));
        assert_eq!(argv[0..2], ["/bin/sh", "-c"]);
        assert_eq!(argv[2], PROBE_SCRIPT, "the script itself is constant");
        assert_eq!(argv[4], "/weird path/$(reboot).sock");
        let dashes = argv.iter().position(|a| a == "--").unwrap();
        assert_eq!(argv[5..dashes], ["/run/k3s/containerd/containerd.sock"]);
        assert_eq!(
            argv[dashes + 1],
            "/var/lib/rancher/k3s/data/current/bin/ctr"
        );
    }

    #[test]
    fn probe_output_parses_client_then_server() {
        let out = "socket=/run/containerd/containerd.sock\nctr=/usr/bin/ctr\nClient:\n  Version:  v1.6.20~ds1\n  Revision: 1.6.20~ds1\n  Go version: go1.19.8\n\nServer:\n  Version:  v2.0.4\n  Revision: abc\n  UUID: x\n";
        let loc = parse_probe(out).unwrap();
        assert_eq!(loc.client, Version::new(1, 6, 20));
        assert_eq!(loc.server, Version::new(2, 0, 4));
        assert_eq!(loc.ctr, "/usr/bin/ctr");
        assert!(parse_probe("socket=/x\n").is_err());
    }

    #[test]
    fn import_flags_follow_ctr_version() {
        let old = import_argv(&located(Version::new(1, 6, 20)), 42, "linux/amd64");
        assert_eq!(old[2], IMPORT_SCRIPT);
        assert_eq!(
            old[4..],
            [
                "42",
                "/usr/bin/ctr",
                "/run/containerd/containerd.sock",
                "--platform",
                "linux/amd64"
            ]
        );
        let new = import_argv(&located(Version::new(2, 1, 0)), 42, "linux/arm64");
        assert_eq!(new.last().unwrap(), "--local");
    }

    #[test]
    fn images_ls_parses_and_compares() {
        let out = "REF                              TYPE                                                 DIGEST                                                                  SIZE      PLATFORMS   LABELS\n\
docker.io/library/app:v1         application/vnd.oci.image.manifest.v1+json           sha256:aaaa                                                             1.0 MiB   linux/amd64 -\n\
docker.io/library/app:v2         application/vnd.oci.image.manifest.v1+json           sha256:bbbb                                                             1.0 MiB   linux/amd64 io.cri-containerd.image=managed\n";
        let listed = parse_images(out);
        assert_eq!(listed.len(), 2);
        assert_eq!(listed["docker.io/library/app:v1"], "sha256:aaaa");
        let refs = vec![
            "docker.io/library/app:v1".to_string(),
            "docker.io/library/app:v3".into(),
        ];
        let missing = missing_refs(&listed, &refs, "sha256:bbbb");
        assert_eq!(missing.len(), 2);
        assert!(missing[0].contains("expected sha256:bbbb"));
        assert!(missing[1].contains("not listed"));
        assert!(missing_refs(&listed, &refs[..1], "sha256:aaaa").is_empty());
    }

    #[test]
    fn content_listing_keeps_only_digests() {
        let a = format!("sha256:{}", "a".repeat(64));
        let b = format!("sha256:{}", "0123456789abcdef".repeat(4));
        let out = format!(
            "time=\"…\" level=warning msg=\"DEPRECATION: cgroup v1\"\n{a}\n  {b}  \n\
             sha256:short\nsha256:{}\n",
            "z".repeat(64)
        );
        let got = parse_content(&out);
        assert_eq!(got, HashSet::from([a, b]));
        let argv = content_argv(&located(Version::new(1, 6, 20)));
        assert_eq!(argv[3..], ["-n", "k8s.io", "content", "ls", "-q"]);
    }
}
