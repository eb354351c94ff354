//! Image references (`registry/repo:tag@digest`) parsed and normalised by Docker's rules, the
//! way containerd names what it imports (`app:v2` → `docker.io/library/app:v2`).
//!
//! References come out of untrusted tars and end up in commands, labels and pod specs, so the
//! grammar is enforced strictly: anything outside it (whitespace, control characters, shell
//! metacharacters, uppercase repositories, names over 255 bytes) is rejected.

use std::fmt;

/// Longest `domain/path` Docker accepts (`NameTotalLengthMax`).
const NAME_MAX: usize = 255;
/// Longest tag Docker accepts.
const TAG_MAX: usize = 128;

/// Why a string is not an image reference.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{input:?} is not an image reference: {reason}")]
pub struct ReferenceError {
    /// The rejected input, cut to 80 characters (it may be hostile).
    pub input: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// A parsed, normalised reference: `domain/path[:tag][@digest]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    domain: String,
    path: String,
    tag: Option<String>,
    digest: Option<String>,
}

impl Reference {
    /// Parses `s` the way `docker`'s `ParseNormalizedNamed` does: a first component with a
    /// `.` or `:`, or `localhost`, is a registry; otherwise the registry is `docker.io`, and
    /// single-component Docker Hub names get `library/`. No tag is added.
    pub fn parse(s: &str) -> Result<Reference, ReferenceError> {
        let err = |reason| ReferenceError {
            input: s.chars().take(80).collect(),
            reason,
        };
        if s.is_empty() {
            return Err(err("it is empty"));
        }
        if s.len() > NAME_MAX + 1 + TAG_MAX + 1 + 71 {
            return Err(err("it is too long"));
        }
        if let Some(b) = s.bytes().find(|b| !is_ref_byte(*b)) {
            return Err(err(if b.is_ascii_whitespace() {
                "it contains whitespace"
            } else if b.is_ascii_control() || b >= 0x80 {
                "it contains control or non-ASCII characters"
            } else {
                "it contains characters outside the reference grammar"
            }));
        }

        let (rest, digest) = match s.split_once('@') {
            Some((rest, digest)) => {
                if !is_sha256_digest(digest) {
                    return Err(err("its digest is not sha256:<64 lowercase hex>"));
                }
                (rest, Some(digest.to_owned()))
            }
            None => (s, None),
        };
        // A ':' after the last '/' separates the tag; before it, it is a registry port.
        let (name, tag) = match rest.rfind(':') {
            Some(i) if !rest[i..].contains('/') => (&rest[..i], Some(&rest[i + 1..])),
            _ => (rest, None),
        };
        if let Some(tag) = tag
            && !is_tag(tag)
        {
            return Err(err("its tag is not [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"));
        }
        if name.is_empty() {
            return Err(err("it has no repository name"));
        }
        if is_hex64(name) {
            return Err(err("a 64-character hex string is an image ID, not a name"));
        }

        let (domain, path) = match name.split_once('/') {
            Some((first, remainder))
                if first.contains(['.', ':'])
                    || first == "localhost"
                    || first.bytes().any(|b| b.is_ascii_uppercase()) =>
            {
                (first, remainder.to_owned())
            }
            _ => ("docker.io", name.to_owned()),
        };
        let domain = if domain == "index.docker.io" {
            "docker.io"
        } else {
            domain
        };
        let path = if domain == "docker.io" && !path.contains('/') {
            format!("library/{path}")
        } else {
            path
        };
        if !is_domain(domain) {
            return Err(err("its registry is not a valid host[:port]"));
        }
        if path.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(err("its repository must be lowercase"));
        }
        if !path.split('/').all(is_path_component) {
            return Err(err(
                "its repository is not lowercase components separated by '/' (each \
                 [a-z0-9] runs joined by '.', '_', '__' or '-')",
            ));
        }
        if domain.len() + 1 + path.len() > NAME_MAX {
            return Err(err("its name is longer than 255 characters"));
        }
        Ok(Reference {
            domain: domain.to_owned(),
            path,
            tag: tag.map(str::to_owned),
            digest,
        })
    }

    /// `ParseDockerRef`: the reference a runtime stores. A name alone gets `:latest`; a name
    /// with both tag and digest keeps only the digest.
    pub fn parse_docker(s: &str) -> Result<Reference, ReferenceError> {
        let mut r = Reference::parse(s)?;
        if r.digest.is_some() {
            r.tag = None;
        } else if r.tag.is_none() {
            r.tag = Some("latest".to_owned());
        }
        Ok(r)
    }

    /// `domain/path`, e.g. `docker.io/library/app`.
    pub fn name(&self) -> String {
        format!("{}/{}", self.domain, self.path)
    }

    /// The reference with a different tag (and no digest).
    pub fn with_tag(&self, tag: &str) -> Reference {
        Reference {
            domain: self.domain.clone(),
            path: self.path.clone(),
            tag: Some(tag.to_owned()),
            digest: None,
        }
    }

    /// The part containerd writes as `org.opencontainers.image.ref.name`: the tag, or
    /// `tag@digest` / `@digest` (containerd's `reference.Spec.Object`).
    pub fn oci_ref_name(&self) -> String {
        match (&self.tag, &self.digest) {
            (Some(t), Some(d)) => format!("{t}@{d}"),
            (Some(t), None) => t.clone(),
            (None, Some(d)) => format!("@{d}"),
            (None, None) => String::new(),
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.domain, self.path)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

/// Normalises a reference the way containerd names images it imports from `RepoTags`:
/// `app:v2` → `docker.io/library/app:v2`, `user/app` → `docker.io/user/app:latest`.
pub fn normalize(s: &str) -> Result<String, ReferenceError> {
    Reference::parse_docker(s).map(|r| r.to_string())
}

/// Whether `s` is a bare tag (`v1`, `1.2.3-rc1`), as Docker 25+ writes in
/// `org.opencontainers.image.ref.name`.
pub fn is_tag(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= TAG_MAX
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

/// Whether `s` is `sha256:` followed by 64 lowercase hex digits (go-digest's canonical form).
pub fn is_sha256_digest(s: &str) -> bool {
    s.strip_prefix("sha256:").is_some_and(is_hex64)
}

fn is_hex64(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn is_ref_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/' | b':' | b'@' | b'[' | b']')
}

/// `host[:port]`, host being dot-separated `[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?` labels or
/// a bracketed IPv6 address.
fn is_domain(d: &str) -> bool {
    let (host, port) = if let Some(rest) = d.strip_prefix('[') {
        let Some((v6, after)) = rest.split_once(']') else {
            return false;
        };
        if v6.is_empty() || !v6.bytes().all(|b| b.is_ascii_hexdigit() || b == b':') {
            return false;
        }
        match after {
            "" => return true,
            _ => match after.strip_prefix(':') {
                Some(port) => ("x", Some(port)),
                None => return false,
            },
        }
    } else {
        match d.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (d, None),
        }
    };
    let label_ok = |l: &str| {
        let b = l.as_bytes();
        !b.is_empty()
            && b[0].is_ascii_alphanumeric()
            && b[b.len() - 1].is_ascii_alphanumeric()
            && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
    };
    let port_ok =
        port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()));
    host.split('.').all(label_ok) && port_ok
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`
fn is_path_component(c: &str) -> bool {
    let b = c.as_bytes();
    if b.is_empty() || !is_alnum(b[0]) || !is_alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if is_alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !is_alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = matches!(sep, "." | "_" | "__") || sep.bytes().all(|s| s == b'-');
        if !ok {
            return false;
        }
    }
    true
}

fn is_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn normalisation_table() {
        let digest_ref = format!("app@{D}");
        let digest_norm = format!("docker.io/library/app@{D}");
        let tag_digest = format!("quay.io/x/y:1@{D}");
        let tag_digest_norm = format!("quay.io/x/y@{D}");
        let table: &[(&str, &str)] = &[
            ("app", "docker.io/library/app:latest"),
            ("app:v2", "docker.io/library/app:v2"),
            ("user/app", "docker.io/user/app:latest"),
            ("user/app:1.0", "docker.io/user/app:1.0"),
            ("docker.io/app:1", "docker.io/library/app:1"),
            ("index.docker.io/app:1", "docker.io/library/app:1"),
            ("docker.io/library/app:1", "docker.io/library/app:1"),
            ("localhost/app", "localhost/app:latest"),
            ("localhost:5000/x:1", "localhost:5000/x:1"),
            ("registry.example/a/b:t", "registry.example/a/b:t"),
            (
                "registry.example:443/a/b",
                "registry.example:443/a/b:latest",
            ),
            ("[::1]:5000/a:b", "[::1]:5000/a:b"),
            (
                "ghcr.io/o/r/deep/name:v1.2.3-rc_1",
                "ghcr.io/o/r/deep/name:v1.2.3-rc_1",
            ),
            ("a.b/c__d/e--f/g.h:T_", "a.b/c__d/e--f/g.h:T_"),
            ("Registry.Example/app", "Registry.Example/app:latest"),
            (&digest_ref, &digest_norm),
            (&tag_digest, &tag_digest_norm),
        ];
        for (input, want) in table {
            assert_eq!(normalize(input).as_deref(), Ok(*want), "{input}");
        }
    }

    #[test]
    fn hostile_and_malformed_refs_are_rejected() {
        let long_name = format!("registry.example/{}", "a".repeat(250));
        let long_tag = format!("app:{}", "t".repeat(129));
        let bad: &[&str] = &[
            "",
            " app",
            "app ",
            "app:v1 ",
            "app\n",
            "app\tx",
            "app;rm -rf /",
            "app:$(reboot)",
            "app:`id`",
            "app|x",
            "app&",
            "app>x",
            "a'b",
            "a\"b",
            "app\u{0}",
            "app\u{1b}[31m",
            "äpp",
            "App",
            "user/App",
            "../../etc/passwd",
            "/app",
            "app/",
            "a//b",
            "app:",
            ":tag",
            "app:-x",
            "app:.x",
            "@sha256:abc",
            "app@sha256:abc",
            "app@sha512:0123",
            "app@@x",
            "app_",
            "-app",
            "a..b",
            "a___b",
            "localhost:port/app",
            "bad_host.example/app",
            "host-.example/app",
            "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            &long_name,
            &long_tag,
        ];
        for input in bad {
            assert!(normalize(input).is_err(), "{input:?} was accepted");
        }
    }

    #[test]
    fn error_message_escapes_and_truncates_input() {
        let e = normalize(&format!("evil\n{}", "x".repeat(500))).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("\\n"), "{msg}");
        assert!(msg.len() < 200, "{msg}");
    }

    #[test]
    fn tags_and_oci_ref_names() {
        assert!(is_tag("v1"));
        assert!(is_tag("1.2.3-rc_1"));
        assert!(!is_tag("app:v1"));
        assert!(!is_tag("-v1"));
        assert!(!is_tag("registry/app"));
        let r = Reference::parse_docker("app:v2").unwrap();
        assert_eq!(r.oci_ref_name(), "v2");
        assert_eq!(r.name(), "docker.io/library/app");
        assert_eq!(r.with_tag("v3").to_string(), "docker.io/library/app:v3");
        let d = Reference::parse_docker(&format!("app@{D}")).unwrap();
        assert_eq!(d.oci_ref_name(), format!("@{D}"));
    }
}
