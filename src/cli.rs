//! Command-line definitions. Parsing only: nothing here touches the cluster or the disk.
//!
//! kubectl passes no flags of its own to a plugin, so the connection flags a kubectl user
//! expects (`--kubeconfig`, `--context`, `-n` …) are parsed here and applied once in
//! `cluster::client`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

pub use crate::model::{NodeSelection, PullPolicy, RuntimeKind};

const EXAMPLES: &str = "\
Examples:
  # Load an image into every node of the cluster
  kubectl sideload app.tar

  # Pipe straight from docker (or podman/nerdctl) save, into two nodes
  docker save app:v2 | kubectl sideload - --nodes node-a,node-b

  # Preview: which nodes get what, and the helper pod that would run; changes nothing
  kubectl sideload app.tar --selector pool=gpu --dry-run -o yaml

  # Load, then point a StatefulSet at the image and wait for its rollout
  kubectl sideload app.tar --workload statefulset/airflow-worker -n airflow

  # Show the patch as a diff, and the nodes it depends on; changes nothing
  kubectl sideload app.tar --workload deploy/api --dry-run

  # Keep the Deployment's pods on the nodes that were loaded
  kubectl sideload app.tar --nodes node-a,node-b --workload deploy/api --constrain --yes

  # Show what is inside an archive
  kubectl sideload inspect app.tar -o json

  # Which nodes hold exactly this archive's image, pinned or not, used by which pods
  kubectl sideload status app.tar

  # Load and protect from the kubelet's image GC; later give it back, or remove it
  kubectl sideload app.tar --pin
  kubectl sideload unpin app:v2
  kubectl sideload rm app:v2 --dry-run

  # Remove helper pods left behind by an interrupted run
  kubectl sideload cleanup";

/// Load container image tarballs into Kubernetes nodes through the API server.
///
/// kubectl-sideload streams an image archive (from `docker save`, `podman save`,
/// `nerdctl save` or `skopeo copy`) to each selected node through a short-lived helper pod
/// and imports it into the node's container runtime, so pods can run it with
/// `imagePullPolicy: Never` or `IfNotPresent`. No SSH, no registry: your kubeconfig is all
/// it needs.
#[derive(Debug, Parser)]
#[command(
    name = "kubectl-sideload",
    bin_name = "kubectl sideload",
    version = crate::version::LONG,
    after_help = EXAMPLES,
    subcommand_negates_reqs = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    #[command(flatten)]
    pub load: LoadArgs,

    #[command(flatten)]
    pub kube: KubeArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show the images, platforms and layers inside an archive (no cluster needed)
    Inspect(InspectArgs),
    /// Delete helper pods and agent ConfigMaps left behind by interrupted runs
    Cleanup(CleanupArgs),
    /// What each node holds of images: present, image ID, pinned, used by which pods; with
    /// an archive, whether each node holds exactly its image. Changes nothing on the nodes
    Status(StatusArgs),
    /// Give images pinned with --pin back to the kubelet's image garbage collection
    Unpin(UnpinArgs),
    /// Remove images from the nodes' runtimes (kept where a pod uses them, unless --force)
    Rm(RmArgs),
    /// Print a shell completion script (bash, zsh, fish, powershell)
    Completion(CompletionArgs),
    /// Completion candidates for `kubectl sideload <TAB>`, in cobra's format; run by
    /// kubectl_complete-sideload as `__complete -- WORDS…`
    #[command(name = "__complete", hide = true, disable_help_flag = true)]
    Complete(CompleteArgs),
}

#[derive(Debug, Args)]
pub struct CompleteArgs {
    /// The words typed after `kubectl sideload`; the last one is being completed
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, num_args = 0..)]
    pub words: Vec<String>,
}

#[derive(Debug, Args)]
pub struct LoadArgs {
    /// Image archive to load: a path, `-` for standard input (spooled once to a temporary
    /// file), or an image in the local engine: `docker://app:v2`, `podman://app:v2` (read
    /// with its `save`). Plain or gzip-compressed; docker-archive, OCI layout or Docker 25+
    /// format. Several ARCHIVEs (and archives that hold several images: `docker save a b`,
    /// `podman save -m`) are loaded in one run, one image after another, each layer once per
    /// node
    #[arg(value_name = "ARCHIVE", required = true, num_args = 1..)]
    pub archives: Vec<String>,

    /// Nodes to load: `all`, or a comma-separated list of node names. Default: all (with
    /// only DaemonSets as --workload: the nodes those DaemonSets run on)
    #[arg(long, value_name = "all|NAME,…", conflicts_with = "selector")]
    pub nodes: Option<String>,

    /// Load only the nodes matching this label selector (e.g. `pool=gpu`)
    #[arg(short = 'l', long, value_name = "SELECTOR")]
    pub selector: Option<String>,

    /// Skip nodes that are not Ready instead of refusing to start
    #[arg(long)]
    pub skip_unready: bool,

    /// Re-import even where the node already has the image with the same digest, and send
    /// every layer (none taken from the node's content store)
    #[arg(long)]
    pub force: bool,

    /// Upload once and let the nodes pass the image on to each other (`auto`), where
    /// several nodes need the same bytes and their helper pods can reach each other; nodes
    /// the relay does not reach are loaded directly. `off`: every node gets its own upload
    #[arg(long, value_enum, value_name = "auto|off", default_value = "auto")]
    pub relay: Relay,

    /// Compress streams on the wire where that pays (`auto`: zstd per 1 MiB chunk, sent as
    /// is where it does not shrink by a tenth; the node decodes the very same bytes), or
    /// never (`none`)
    #[arg(long, value_enum, value_name = "auto|none", default_value = "auto")]
    pub compress: Compress,

    /// Import while the image arrives (`auto`: on containerd, CRI-O and Docker Engine nodes
    /// the stream is cut into one part per layer, each unpacked as soon as it is in), or only
    /// once all of it has arrived (`off`)
    #[arg(long, value_enum, value_name = "auto|off", default_value = "auto")]
    pub pipeline: Pipeline,

    /// Import the image under this name instead of the names in the archive (repeat for
    /// several), e.g. `--tag app:v2` for an archive podman saved as `localhost/app:v2`.
    /// Short names are completed as the kubelet completes them (docker.io/library/app:v2)
    #[arg(long, value_name = "REF")]
    pub tag: Vec<String>,

    /// Protect the loaded image from the kubelet's image garbage collection: containerd
    /// 1.6.22, 1.7.3, 2.0 and later mark it pinned (CRI then reports it so); where the
    /// runtime cannot pin (CRI-O, older containerd) the report says so for that node.
    /// `kubectl sideload unpin REF` gives it back to GC
    #[arg(long)]
    pub pin: bool,

    /// How many nodes to load at the same time
    #[arg(long, value_name = "N", default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub parallel: u16,

    /// Resolve everything and print the plan without changing the cluster. `server` also
    /// submits each helper pod with a server-side dry run, so admission problems show up now
    #[arg(long, value_name = "client|server", num_args = 0..=1, require_equals = true, default_missing_value = "client")]
    pub dry_run: Option<DryRun>,

    /// Output format: a table for people, `json` for scripts, `yaml` (with --dry-run: the
    /// helper pod manifests)
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    pub output: Output,

    /// Namespace the helper pods run in; it must allow privileged pods
    #[arg(long, value_name = "NAMESPACE", default_value = "kube-system")]
    pub helper_namespace: String,

    /// Image the helper pods start from. Any image present on the node will do: the
    /// helper runs the plugin's own agent, never the image's programs. By default one the
    /// node already holds is picked (its pause image first), so nothing is ever pulled
    #[arg(long, value_name = "IMAGE")]
    pub helper_image: Option<String>,

    /// The container runtime of every selected node, instead of what the nodes report
    #[arg(long, value_enum, value_name = "RUNTIME")]
    pub runtime: Option<RuntimeKind>,

    /// The runtime's socket on every selected node (e.g. unix:///run/containerd/containerd.sock),
    /// instead of the kubelet's containerRuntimeEndpoint or the well-known paths
    #[arg(long, value_name = "ENDPOINT")]
    pub runtime_endpoint: Option<String>,

    /// Give up on a node whose helper pod is not running after this long
    #[arg(long, value_name = "DURATION", default_value = "2m", value_parser = parse_duration)]
    pub helper_timeout: Duration,

    /// Try a failed node again up to N times (1 s, 2 s, 4 s … apart), starting it over with a
    /// new helper pod; a retry sends only what the node still lacks. Failures that would
    /// come back the same (a denied permission, an admission rejection) are not retried
    #[arg(long, value_name = "N", default_value_t = 2)]
    pub retries: u32,

    /// Once every node verified the image, point this workload at it (strategic merge
    /// patch of image and imagePullPolicy, as `kubectl set image` does) and wait for the
    /// rollout. KIND/NAME in the -n namespace: deploy/NAME, sts/NAME, ds/NAME, cj/NAME.
    /// Repeat for several
    #[arg(long, value_name = "KIND/NAME", value_parser = crate::workload::Target::parse, help_heading = "Workloads")]
    pub workload: Vec<crate::workload::Target>,

    /// The container(s) to change (regular or init); repeat for several. Default: those
    /// whose image has the repository of an image in the archive
    #[arg(
        long,
        value_name = "NAME",
        requires = "workload",
        help_heading = "Workloads"
    )]
    pub container: Vec<String>,

    /// imagePullPolicy for the changed containers. Never fails fast where the image is
    /// missing; IfNotPresent lets a node pull it if it can
    #[arg(
        long,
        value_enum,
        value_name = "POLICY",
        default_value = "IfNotPresent",
        ignore_case = true,
        help_heading = "Workloads"
    )]
    pub pull_policy: PullPolicy,

    /// Keep the workloads' pods on the loaded nodes: label those nodes
    /// `sideload.dev/img-<12 hex of the digest>=present` and add a required node affinity on
    /// that label to the pod template (`cleanup --labels` removes the labels)
    #[arg(long, requires = "workload", help_heading = "Workloads")]
    pub constrain: bool,

    /// Patch the workloads even if some nodes failed to load; their pods are then always
    /// constrained to the nodes that hold the image (as with --constrain)
    #[arg(long, requires = "workload", help_heading = "Workloads")]
    pub allow_partial: bool,

    /// Do not ask before patching (no prompt is shown anyway when stdin is not a terminal)
    #[arg(short = 'y', long, help_heading = "Workloads")]
    pub yes: bool,

    /// Wait for the patched workloads to roll out (--wait=false to return at once)
    #[arg(long, value_name = "true|false", default_value_t = true, num_args = 0..=1, require_equals = true, default_missing_value = "true", action = clap::ArgAction::Set, help_heading = "Workloads")]
    pub wait: bool,

    /// How long to wait for each rollout (within --timeout, when that is given)
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = parse_duration, help_heading = "Workloads")]
    pub rollout_timeout: Duration,

    /// Give up on the whole run after this long (archive, helper pods, transfers, imports,
    /// verification and rollout wait): every node still at work stops, its row names the
    /// step it was in, helpers are removed and no workload is patched unless every node
    /// finished first. Default: no limit but the per-step ones (--helper-timeout, the
    /// rollout wait)
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub timeout: Option<Duration>,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// Image archive: a path, `-` for standard input, or `docker://REF` / `podman://REF`
    #[arg(value_name = "ARCHIVE")]
    pub archive: String,

    /// Output format
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    pub output: Output,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Image refs (app:v2, docker.io/library/app:v2) or image archives (a path to a file, or
    /// docker://REF / podman://REF: its refs, and whether each node holds exactly its image)
    #[arg(value_name = "REF|ARCHIVE", required = true)]
    pub images: Vec<String>,

    #[command(flatten)]
    pub on: NodeArgs,

    /// Output format
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    pub output: Output,
}

#[derive(Debug, Args)]
pub struct UnpinArgs {
    /// Image refs to unpin (app:v2, docker.io/library/app:v2)
    #[arg(value_name = "REF", required = true)]
    pub refs: Vec<String>,

    #[command(flatten)]
    pub on: NodeArgs,

    /// Output format
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    pub output: Output,
}

#[derive(Debug, Args)]
pub struct RmArgs {
    /// Image refs to remove (app:v2, docker.io/library/app:v2)
    #[arg(value_name = "REF", required = true)]
    pub refs: Vec<String>,

    /// Remove a ref even where a pod on the node uses it (its running containers keep
    /// going; a restart on that node then needs the image again)
    #[arg(long)]
    pub force: bool,

    /// Say what would be removed, and what is kept because pods use it; change nothing
    #[arg(long)]
    pub dry_run: bool,

    #[command(flatten)]
    pub on: NodeArgs,

    /// Output format
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    pub output: Output,
}

/// Which nodes a command visits and how its helper pods run (`status`, `unpin`).
#[derive(Debug, Args)]
pub struct NodeArgs {
    /// Nodes to visit: `all` (default), or a comma-separated list of node names
    #[arg(long, value_name = "all|NAME,…", conflicts_with = "selector")]
    pub nodes: Option<String>,

    /// Visit only the nodes matching this label selector
    #[arg(short = 'l', long, value_name = "SELECTOR")]
    pub selector: Option<String>,

    /// Namespace the helper pods run in; it must allow privileged pods
    #[arg(long, value_name = "NAMESPACE", default_value = "kube-system")]
    pub helper_namespace: String,

    /// Image the helper pods start from (default: one the node already holds)
    #[arg(long, value_name = "IMAGE")]
    pub helper_image: Option<String>,

    /// The container runtime of every selected node, instead of what the nodes report
    #[arg(long, value_enum, value_name = "RUNTIME")]
    pub runtime: Option<RuntimeKind>,

    /// The runtime's socket on every selected node
    #[arg(long, value_name = "ENDPOINT")]
    pub runtime_endpoint: Option<String>,

    /// Give up on a node whose helper pod is not running after this long
    #[arg(long, value_name = "DURATION", default_value = "2m", value_parser = parse_duration)]
    pub helper_timeout: Duration,
}

#[derive(Debug, Args)]
pub struct CleanupArgs {
    /// Namespace the helper pods run in
    #[arg(long, value_name = "NAMESPACE", default_value = "kube-system")]
    pub helper_namespace: String,

    /// Show what would be deleted without deleting it
    #[arg(long)]
    pub dry_run: bool,

    /// Also remove the sideload.dev/img-* node labels that --constrain set. Pods of
    /// workloads still constrained on them can no longer be scheduled: re-sideload those
    /// first, or remove the affinity
    #[arg(long)]
    pub labels: bool,
}

#[derive(Debug, Args)]
pub struct CompletionArgs {
    /// The shell to write a completion script for
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// The connection flags every kubectl command accepts.
#[derive(Debug, Args, Clone, Default)]
pub struct KubeArgs {
    /// Path to the kubeconfig file (default: $KUBECONFIG, then ~/.kube/config)
    #[arg(long, value_name = "PATH", global = true)]
    pub kubeconfig: Option<PathBuf>,

    /// The kubeconfig context to use
    #[arg(long, value_name = "NAME", global = true)]
    pub context: Option<String>,

    /// The kubeconfig cluster to use
    #[arg(long, value_name = "NAME", global = true)]
    pub cluster: Option<String>,

    /// The kubeconfig user to use
    #[arg(long, value_name = "NAME", global = true)]
    pub user: Option<String>,

    /// Namespace for workloads (default: the context's namespace)
    #[arg(short = 'n', long, value_name = "NAMESPACE", global = true)]
    pub namespace: Option<String>,

    /// Username to impersonate for the operation
    #[arg(long = "as", value_name = "USER", global = true)]
    pub as_user: Option<String>,

    /// Group to impersonate for the operation; repeat for several groups
    #[arg(long = "as-group", value_name = "GROUP", global = true)]
    pub as_group: Vec<String>,

    /// How long to wait for a single API request before giving up (e.g. 30s, 1m); 0 waits
    /// forever. Streams to nodes are not cut by this
    #[arg(long, value_name = "DURATION", global = true, value_parser = parse_duration)]
    pub request_timeout: Option<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DryRun {
    /// Print the plan; nothing is sent to the cluster but reads
    Client,
    /// Also submit each helper pod with a server-side dry run
    Server,
}

/// `--compress`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Compress {
    Auto,
    None,
}

/// `--pipeline`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Pipeline {
    Auto,
    Off,
}

/// `--relay`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Relay {
    Auto,
    Off,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
    Yaml,
}

/// A duration as `parse_duration` reads it back: `1m30s`, `5m`, `1h30m`.
pub fn format_duration(d: Duration) -> String {
    let secs = d.as_secs();
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    let mut out = String::new();
    for (n, unit) in [(h, 'h'), (m, 'm'), (s, 's')] {
        if n > 0 {
            out.push_str(&format!("{n}{unit}"));
        }
    }
    if out.is_empty() {
        out.push_str("0s");
    }
    out
}

/// Parses kubectl-style durations: `90s`, `2m`, `1h`, `1m30s`, or plain seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("invalid duration {text:?}; use a number with a unit, like 30s, 2m or 1h");
    if let Ok(secs) = text.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let mut total = 0u64;
    let mut number = String::new();
    for ch in text.chars() {
        if ch.is_ascii_digit() {
            number.push(ch);
            continue;
        }
        let unit = match ch {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            _ => return Err(bad()),
        };
        let value: u64 = number.parse().map_err(|_| bad())?;
        total = value
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(bad)?;
        number.clear();
    }
    if !number.is_empty() || text.is_empty() {
        return Err(bad());
    }
    Ok(Duration::from_secs(total))
}

impl LoadArgs {
    /// Whether the user chose nodes (`--nodes` or `--selector`) rather than the default.
    pub fn nodes_chosen(&self) -> bool {
        self.nodes.is_some() || self.selector.is_some()
    }

    /// Turns `--nodes`/`--selector` into one selection, rejecting empty names early.
    pub fn node_selection(&self) -> Result<NodeSelection, String> {
        node_selection(self.nodes.as_deref(), self.selector.as_deref())
    }
}

/// `--nodes`/`--selector` as one selection, empty names rejected early.
pub fn node_selection(
    nodes: Option<&str>,
    selector: Option<&str>,
) -> Result<NodeSelection, String> {
    if let Some(selector) = selector {
        if selector.trim().is_empty() {
            return Err("--selector is empty; pass a label selector such as pool=gpu".into());
        }
        return Ok(NodeSelection::Selector(selector.to_string()));
    }
    let Some(nodes) = nodes else {
        return Ok(NodeSelection::All);
    };
    if nodes.trim() == "all" {
        return Ok(NodeSelection::All);
    }
    let names: Vec<String> = nodes.split(',').map(|n| n.trim().to_string()).collect();
    if names.iter().any(|n| n.is_empty()) {
        return Err(format!(
            "--nodes {nodes:?} has an empty name; pass `all` or names separated by commas"
        ));
    }
    let mut unique = names.clone();
    unique.sort();
    unique.dedup();
    if unique.len() != names.len() {
        return Err(format!("--nodes {nodes:?} names a node twice"));
    }
    Ok(NodeSelection::Names(names))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn durations_parse_like_kubectl() {
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        for bad in ["", "m", "1x", "1m3", "-1s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("kubectl-sideload").chain(args.iter().copied()))
            .unwrap()
    }

    #[test]
    fn node_selection_variants() {
        let cli = parse(&["app.tar"]);
        assert_eq!(cli.load.node_selection().unwrap(), NodeSelection::All);
        let cli = parse(&["app.tar", "--nodes", "a,b"]);
        assert_eq!(
            cli.load.node_selection().unwrap(),
            NodeSelection::Names(vec!["a".into(), "b".into()])
        );
        let cli = parse(&["app.tar", "-l", "pool=gpu"]);
        assert_eq!(
            cli.load.node_selection().unwrap(),
            NodeSelection::Selector("pool=gpu".into())
        );
        assert!(
            parse(&["app.tar", "--nodes", "a,,b"])
                .load
                .node_selection()
                .is_err()
        );
        assert!(
            parse(&["app.tar", "--nodes", "a,a"])
                .load
                .node_selection()
                .is_err()
        );
    }

    #[test]
    fn nodes_and_selector_conflict() {
        let err = Cli::try_parse_from(["kubectl-sideload", "x.tar", "--nodes", "a", "-l", "x=y"])
            .unwrap_err();
        assert!(err.to_string().contains("--selector"), "{err}");
    }

    #[test]
    fn workload_flags() {
        let cli = parse(&[
            "x.tar",
            "--workload",
            "deploy/api",
            "--workload",
            "sts/db",
            "--pull-policy",
            "never",
            "--wait=false",
            "--rollout-timeout",
            "90s",
            "--timeout",
            "10m",
        ]);
        assert_eq!(cli.load.workload.len(), 2);
        assert_eq!(cli.load.workload[1].to_string(), "statefulset/db");
        assert_eq!(cli.load.pull_policy, PullPolicy::Never);
        assert!(!cli.load.wait);
        assert_eq!(cli.load.rollout_timeout, Duration::from_secs(90));
        assert_eq!(cli.load.timeout, Some(Duration::from_secs(600)));
        for text in ["1m30s", "25s", "5m", "1h30m", "0s"] {
            assert_eq!(format_duration(parse_duration(text).unwrap()), text);
        }
        let defaults = parse(&["x.tar", "--workload", "ds/agent"]);
        assert_eq!(defaults.load.pull_policy, PullPolicy::IfNotPresent);
        assert!(defaults.load.wait);
        assert!(!defaults.load.nodes_chosen());
        assert!(parse(&["x.tar", "--wait"]).load.wait);

        for args in [
            &["x.tar", "--container", "api"][..],
            &["x.tar", "--constrain"],
            &["x.tar", "--allow-partial"],
        ] {
            let err = Cli::try_parse_from(
                std::iter::once("kubectl-sideload").chain(args.iter().copied()),
            )
            .unwrap_err();
            assert!(err.to_string().contains("--workload"), "{args:?}: {err}");
        }
        let err =
            Cli::try_parse_from(["kubectl-sideload", "x.tar", "--workload", "rs/api"]).unwrap_err();
        assert!(err.to_string().contains("Deployment that owns it"), "{err}");
        let err = Cli::try_parse_from([
            "kubectl-sideload",
            "x.tar",
            "--workload",
            "deploy/api",
            "--pull-policy",
            "Always",
        ])
        .unwrap_err();
        assert!(err.to_string().contains("IfNotPresent"), "{err}");
    }

    #[test]
    fn dry_run_without_value_means_client() {
        assert_eq!(
            parse(&["x.tar", "--dry-run"]).load.dry_run,
            Some(DryRun::Client)
        );
        assert_eq!(
            parse(&["x.tar", "--dry-run=server"]).load.dry_run,
            Some(DryRun::Server)
        );
    }

    /// Regression: with args_conflicts_with_subcommands, a connection flag before the
    /// subcommand made `cleanup` read as an archive path.
    #[test]
    fn connection_flags_may_come_before_the_subcommand() {
        let cli = parse(&["--kubeconfig", "/k", "cleanup"]);
        assert!(matches!(cli.command, Some(Command::Cleanup(_))));
    }

    #[test]
    fn subcommands_parse_with_kube_flags() {
        let cli = parse(&["cleanup", "--kubeconfig", "/k", "--helper-namespace", "ops"]);
        match cli.command {
            Some(Command::Cleanup(c)) => {
                assert_eq!(c.helper_namespace, "ops");
                assert_eq!(
                    cli.kube.kubeconfig.as_deref(),
                    Some(std::path::Path::new("/k"))
                );
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
