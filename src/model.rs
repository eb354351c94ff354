//! Plain types several stages share (the CLI produces them, the cluster and workload
//! stages consume them). Kept here, with no logic beyond their own, so that no two stages
//! depend on each other through them.

use clap::ValueEnum;

/// Which nodes the user asked for, validated but not yet resolved against the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeSelection {
    All,
    Names(Vec<String>),
    Selector(String),
}

/// `--pull-policy`: `Always` is not offered, since it would pull instead of using the
/// sideloaded image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PullPolicy {
    /// Use the node's image; pull only where it is missing
    #[value(name = "IfNotPresent")]
    IfNotPresent,
    /// Use the node's image; never pull (pods fail with ErrImageNeverPull where it is missing)
    #[value(name = "Never")]
    Never,
}

impl PullPolicy {
    /// The value Kubernetes expects in `imagePullPolicy`.
    pub fn as_str(self) -> &'static str {
        match self {
            PullPolicy::IfNotPresent => "IfNotPresent",
            PullPolicy::Never => "Never",
        }
    }
}

/// `--runtime`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RuntimeKind {
    Containerd,
    #[value(name = "cri-o", alias = "crio")]
    CriO,
    /// Docker Engine (cri-dockerd nodes), loaded with the node's `docker load`.
    Docker,
}
