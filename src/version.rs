//! Version strings shown by `--version` and recorded in helper pod labels.

/// `0.1.0 (commit 1a2b3c4d5e6f)`
pub const LONG: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("SIDELOAD_GIT_COMMIT"),
    ")"
);

/// The crate version alone, safe for a label value.
pub const SHORT: &str = env!("CARGO_PKG_VERSION");
