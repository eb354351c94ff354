//! `os/architecture[/variant]` as images and nodes describe it, and the matching rule a node's
//! runtime applies (containerd's `platforms.Normalize`: `aarch64` is `arm64`, whose default
//! variant is `v8`; `arm` defaults to `v7`; `amd64` has no variant but `v1`).

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

use super::error::ArchiveError;

/// A platform as found in an image index, an image config, or a node's status.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Platform {
    /// `linux`, `windows`, …
    pub os: String,
    /// GOARCH spelling: `amd64`, `arm64`, `arm`, `386`, `ppc64le`, `s390x`, `riscv64`, …
    pub architecture: String,
    /// `v8`, `v7`, … when the image or node gives one.
    pub variant: Option<String>,
}

impl Platform {
    /// A platform from its parts; an empty variant counts as none.
    pub fn new(os: &str, architecture: &str, variant: Option<&str>) -> Platform {
        Platform {
            os: os.to_owned(),
            architecture: architecture.to_owned(),
            variant: variant.filter(|v| !v.is_empty()).map(str::to_owned),
        }
    }

    /// Whether an image built for `self` is the image a node of `other` runs (or the reverse:
    /// the relation is symmetric). Spellings are normalised first, so `linux/arm64/v8`
    /// matches `linux/arm64` and `linux/aarch64`.
    pub fn matches(&self, other: &Platform) -> bool {
        self.normalized() == other.normalized()
    }

    /// containerd's normal form: lowercase, GOARCH names, default variants dropped.
    fn normalized(&self) -> (String, String, Option<String>) {
        let os = self.os.to_ascii_lowercase();
        let os = if os == "macos" {
            "darwin".to_owned()
        } else {
            os
        };
        let arch = self.architecture.to_ascii_lowercase();
        let variant = self.variant.as_deref().map(str::to_ascii_lowercase);
        let (arch, variant) = match (arch.as_str(), variant.as_deref()) {
            ("i386" | "i686" | "x86", _) => ("386".to_owned(), None),
            ("x86_64" | "x86-64" | "amd64", None | Some("v1")) => ("amd64".to_owned(), None),
            ("x86_64" | "x86-64" | "amd64", Some(v)) => ("amd64".to_owned(), Some(v.to_owned())),
            ("aarch64" | "arm64", None | Some("v8" | "8")) => ("arm64".to_owned(), None),
            ("aarch64" | "arm64", Some(v)) => ("arm64".to_owned(), Some(v.to_owned())),
            ("armhf", _) => ("arm".to_owned(), Some("v7".to_owned())),
            ("armel", _) => ("arm".to_owned(), Some("v6".to_owned())),
            ("arm", None | Some("v7" | "7")) => ("arm".to_owned(), Some("v7".to_owned())),
            ("arm", Some(v)) => {
                let v = v.strip_prefix('v').unwrap_or(v);
                ("arm".to_owned(), Some(format!("v{v}")))
            }
            (a, v) => (a.to_owned(), v.map(str::to_owned)),
        };
        (os, arch, variant)
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(variant) = &self.variant {
            write!(f, "/{variant}")?;
        }
        Ok(())
    }
}

impl FromStr for Platform {
    type Err = ArchiveError;

    /// Parses `os/architecture[/variant]`, e.g. `linux/arm64/v8`.
    fn from_str(s: &str) -> Result<Platform, ArchiveError> {
        let invalid = || ArchiveError::InvalidPlatform {
            input: s.chars().take(64).collect(),
        };
        let part_ok = |p: &str| {
            !p.is_empty()
                && p.len() <= 32
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
        };
        let parts: Vec<&str> = s.split('/').collect();
        if !(2..=3).contains(&parts.len()) || !parts.iter().all(|p| part_ok(p)) {
            return Err(invalid());
        }
        Ok(Platform::new(parts[0], parts[1], parts.get(2).copied()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Platform {
        s.parse().unwrap()
    }

    #[test]
    fn display_and_parse_round_trip() {
        for s in [
            "linux/amd64",
            "linux/arm64/v8",
            "linux/arm/v7",
            "windows/amd64",
        ] {
            assert_eq!(p(s).to_string(), s);
        }
        assert_eq!(p("linux/arm64/v8").variant.as_deref(), Some("v8"));
    }

    #[test]
    fn parse_rejects_garbage() {
        for s in [
            "",
            "linux",
            "linux/",
            "/amd64",
            "linux/amd64/v8/x",
            "linux/amd 64",
            "a/b;c",
        ] {
            assert!(
                matches!(
                    s.parse::<Platform>(),
                    Err(ArchiveError::InvalidPlatform { .. })
                ),
                "{s:?} parsed"
            );
        }
    }

    #[test]
    fn matching_follows_containerd_normalisation() {
        assert!(p("linux/arm64/v8").matches(&p("linux/arm64")));
        assert!(p("linux/arm64").matches(&p("linux/aarch64")));
        assert!(p("linux/amd64").matches(&p("linux/x86_64")));
        assert!(p("linux/amd64/v1").matches(&p("linux/amd64")));
        assert!(p("linux/arm").matches(&p("linux/arm/v7")));
        assert!(!p("linux/arm/v6").matches(&p("linux/arm/v7")));
        assert!(!p("linux/amd64").matches(&p("linux/arm64")));
        assert!(!p("linux/amd64/v3").matches(&p("linux/amd64")));
        assert!(!p("windows/amd64").matches(&p("linux/amd64")));
    }
}
