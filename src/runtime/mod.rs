//! Node container runtimes: which one a node runs, and the argv that imports, lists and
//! verifies images there. One adapter per runtime; everything node-side is an argv array
//! (image refs come from untrusted archives and never meet a shell parser).

pub mod containerd;

use std::fmt;

use serde::Serialize;

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

    /// Why this runtime cannot be loaded yet, or `None` when an adapter exists.
    pub fn unsupported_reason(&self) -> Option<String> {
        match self {
            Runtime::Containerd { .. } => None,
            Runtime::CriO { version } => Some(format!(
                "runtime cri-o {version} is not supported yet; load it with `podman load` on the node"
            )),
            Runtime::Docker { version } => Some(format!(
                "runtime docker {version} is not supported yet; load it with `docker load` on the node"
            )),
            Runtime::Other { raw } => Some(format!(
                "unknown container runtime {raw:?}; only containerd is supported"
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

/// A lenient dotted version: `1.7.22`, `v2.0.0-rc.1`, `1.6.20~ds1` → (major, minor, patch).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Serialize)]
pub struct Version {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl Version {
    #[cfg(test)]
    pub fn new(major: u32, minor: u32, patch: u32) -> Self {
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
        assert!(rt.unsupported_reason().is_none());
        let k3s = Runtime::from_node_info("containerd://2.0.5-k3s1", "v1.33.1+k3s1", false);
        assert_eq!(k3s.to_string(), "containerd 2.0.5 (k3s)");
        let crio = Runtime::from_node_info("cri-o://1.30.1", "v1.30.1", false);
        assert!(crio.unsupported_reason().unwrap().contains("cri-o"));
        let odd = Runtime::from_node_info("frakti://1", "v1.30.1", false);
        assert!(odd.unsupported_reason().unwrap().contains("frakti"));
    }
}
