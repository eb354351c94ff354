//! Errors from reading an image archive and re-emitting it. Every message names the problem
//! and the next step, because most of them end up in front of a user holding a bad tar.

use std::io;

use super::platform::Platform;
use super::reference::ReferenceError;

/// Everything that can go wrong between opening an archive and streaming it out.
///
/// `name` fields hold the archive as the user named it (`app.tar`, or `stdin`).
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// The path does not exist.
    #[error("{name}: no such file; check the path, or pass `-` to read the archive from stdin")]
    NotFound {
        /// The path as given.
        name: String,
    },

    /// The path exists but is not a regular file (a directory, say).
    #[error(
        "{name}: not a regular file; pass the tar file written by `docker save`, `podman save` \
         or `skopeo copy … docker-archive:`/`oci-archive:` (an OCI layout directory must be \
         tarred first: `tar -C DIR -cf image.tar .`)"
    )]
    NotAFile {
        /// The path as given.
        name: String,
    },

    /// Reading the archive (or spooling stdin to a temporary file) failed at the OS level.
    #[error("{name}: {action} failed: {source}")]
    Io {
        /// The archive.
        name: String,
        /// What we were doing, e.g. "reading" or "spooling stdin to $TMPDIR".
        action: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },

    /// Stdin was empty.
    #[error(
        "no input on stdin; pipe an image archive in, e.g. `docker save app:v2 | kubectl \
         sideload -`, or pass the archive's path"
    )]
    EmptyStdin,

    /// The file is empty.
    #[error("{name}: file is empty; save the image again")]
    Empty {
        /// The archive.
        name: String,
    },

    /// The bytes are not a tar archive (nor a gzip-compressed one).
    #[error(
        "{name}: not a tar archive (first bytes look like {looks_like}); pass the file written \
         by `docker save`, `podman save` or `skopeo copy … docker-archive:`"
    )]
    NotATar {
        /// The archive.
        name: String,
        /// A short description of what the first bytes look like.
        looks_like: String,
    },

    /// The archive ends early: a cut-off copy or download.
    #[error(
        "{name}: archive is truncated ({detail}); the file is incomplete: copy or save it again"
    )]
    Truncated {
        /// The archive.
        name: String,
        /// Where it ended.
        detail: String,
    },

    /// The tar or gzip structure is damaged.
    #[error("{name}: archive is corrupt ({detail}); copy or save it again")]
    Corrupt {
        /// The archive.
        name: String,
        /// What the tar or gzip reader reported.
        detail: String,
    },

    /// A valid tar with no image in it.
    #[error(
        "{name}: no image in this tar ({detail}); pass the file written by `docker save`, \
         `podman save` or `skopeo copy … docker-archive:`/`oci-archive:`"
    )]
    NoImage {
        /// The archive.
        name: String,
        /// What is missing.
        detail: String,
    },

    /// `oci-layout` names a layout version we (and containerd) do not read.
    #[error(
        "{name}: unsupported OCI layout version {version:?} (only 1.0.0 exists); save the image \
         with a current docker, podman or skopeo"
    )]
    UnsupportedLayout {
        /// The archive.
        name: String,
        /// The version found.
        version: String,
    },

    /// A JSON file in the archive does not parse.
    #[error("{name}: {file} is not valid JSON ({source}); the archive is damaged: save it again")]
    Json {
        /// The archive.
        name: String,
        /// The member, e.g. `manifest.json` or `blobs/sha256/ab12… (image config)`.
        file: String,
        /// The parser's complaint.
        #[source]
        source: serde_json::Error,
    },

    /// A descriptor holds a digest that is not `sha256:<64 hex>`.
    #[error(
        "{name}: {file} holds the digest {digest:?}, which is not a sha256 digest; only sha256 \
         content is supported: save the image again with docker, podman or skopeo"
    )]
    InvalidDigest {
        /// The archive.
        name: String,
        /// Where the digest was found.
        file: String,
        /// The offending value (escaped when shown).
        digest: String,
    },

    /// An image name inside the archive is not a valid reference (the tar is untrusted input).
    #[error(
        "{name}: {file} names the image with an invalid reference: {source}; re-tag the image \
         with a valid name and save it again"
    )]
    InvalidReference {
        /// The archive.
        name: String,
        /// Where the reference was found.
        file: String,
        /// Why it was rejected.
        #[source]
        source: ReferenceError,
    },

    /// Manifests reference blobs (config, layers, manifests) that the archive does not hold.
    #[error(
        "{name}: the image references content the archive does not hold: {}; save the image \
         again (`docker save`/`podman save` include every layer)",
        missing.join(", ")
    )]
    MissingBlobs {
        /// The archive.
        name: String,
        /// Digests (or, for docker-archive, member paths) that are absent.
        missing: Vec<String>,
    },

    /// A blob's content does not hash to its name (or a layer to its config's diff_id).
    #[error(
        "{name}: {file} does not match its digest (expected {expected}, content hashes to \
         {actual}); the archive is corrupt: save it again"
    )]
    DigestMismatch {
        /// The archive.
        name: String,
        /// The member.
        file: String,
        /// The digest it is named or referenced by.
        expected: String,
        /// What its bytes hash to.
        actual: String,
    },

    /// A blob's size in the tar differs from the size its descriptor claims.
    #[error(
        "{name}: {file} is {actual} bytes but its descriptor says {expected}; the archive is \
         corrupt: save it again"
    )]
    SizeMismatch {
        /// The archive.
        name: String,
        /// The member.
        file: String,
        /// Size from the descriptor.
        expected: u64,
        /// Size in the tar.
        actual: u64,
    },

    /// A metadata file (JSON) is larger than any real one; refused rather than read into memory.
    #[error(
        "{name}: {file} is {size} bytes, over the {limit}-byte limit for image metadata; this \
         is not an image written by docker, podman or skopeo"
    )]
    TooLarge {
        /// The archive.
        name: String,
        /// The member.
        file: String,
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },

    /// The tar holds more files and links than any image archive (`scan::MAX_ENTRIES`).
    #[error(
        "{name}: the tar holds more than {limit} files and links, far more than an image \
         needs; this is not an image written by docker, podman or skopeo"
    )]
    TooManyEntries {
        /// The archive.
        name: String,
        /// The limit.
        limit: usize,
    },

    /// Docker 25.0.0 wrote OCI manifests without layers (moby#47065).
    #[error(
        "{name}: manifest {manifest} lists no layers although its config has {diff_ids}; this \
         archive was written by Docker 25.0.0, whose `docker save` dropped the layers \
         (moby#47065): re-save the image with Docker 25.0.1 or newer"
    )]
    ZeroLayerManifest {
        /// The archive.
        name: String,
        /// The manifest digest.
        manifest: String,
        /// How many diff_ids its config lists.
        diff_ids: usize,
    },

    /// The manifest's layer count differs from the config's `rootfs.diff_ids`.
    #[error(
        "{name}: {manifest} lists {layers} layers but its config lists {diff_ids} diff_ids; \
         the image is inconsistent and no runtime will unpack it: save it again"
    )]
    LayerCountMismatch {
        /// The archive.
        name: String,
        /// The manifest (digest or `manifest.json`).
        manifest: String,
        /// Layers in the manifest.
        layers: usize,
        /// diff_ids in the config.
        diff_ids: usize,
    },

    /// The archive holds several different images where one was asked for (`status`);
    /// a load takes them all.
    #[error(
        "{name}: the archive holds {} different images ({}); this command reads one image \
         per archive: name the images' refs instead (a load, `kubectl sideload ARCHIVE`, \
         takes them all)",
        images.len(),
        images.join("; ")
    )]
    MultipleImages {
        /// The archive.
        name: String,
        /// One description per image (its names, or its digest).
        images: Vec<String>,
    },

    /// A platform string did not parse.
    #[error("invalid platform {input:?}: expected os/architecture[/variant], e.g. linux/arm64")]
    InvalidPlatform {
        /// What was given.
        input: String,
    },

    /// The archive has no image for the node's platform.
    #[error(
        "the image has no {wanted} variant (the archive holds {}); build or pull the image for \
         {wanted} and save it again, or choose nodes of a platform it has",
        join_platforms(available)
    )]
    NoMatchingPlatform {
        /// The node's platform.
        wanted: Platform,
        /// Platforms the archive lists.
        available: Vec<Platform>,
    },

    /// The archive lists the platform but lacks some of its blobs: a multi-platform index saved
    /// with one platform's content only (kind#3795).
    #[error(
        "the archive lists {platform} but does not hold all of its content (missing {}); it was \
         saved from a multi-platform image pulled for another platform (kind#3795): pull it \
         for {platform} (`docker pull --platform {platform} …`) and save it again",
        missing.join(", ")
    )]
    IncompletePlatform {
        /// The platform asked for.
        platform: Platform,
        /// Absent digests.
        missing: Vec<String>,
    },

    /// `oci_len`/`write_oci` got a `PlatformImage` that is not from this archive's summary.
    #[error(
        "{name}: image {manifest} is not in this archive; pass an image from this archive's \
         summary() or image_for()"
    )]
    UnknownImage {
        /// The archive.
        name: String,
        /// The manifest digest passed in.
        manifest: String,
    },

    /// The archive file changed on disk between `open` and `write_oci`.
    #[error("{name}: the file changed since it was read ({detail}); run the command again")]
    SourceChanged {
        /// The archive.
        name: String,
        /// What changed.
        detail: String,
    },

    /// A stream the node's runtime cannot import was asked for (a caller's mistake, not
    /// the archive's).
    #[error("cannot build this node's image stream: {0}")]
    StreamShape(String),

    /// The destination of `write_oci` failed (the stream to the node broke, say).
    #[error("writing the image stream failed: {0}")]
    Write(#[source] io::Error),
}

fn join_platforms(platforms: &[Platform]) -> String {
    if platforms.is_empty() {
        return "no platform at all".to_owned();
    }
    platforms
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}
