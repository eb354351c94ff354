//! What the clap definition says can be completed: the flags of a (sub)command, and where
//! the candidates for each flag's or positional's value come from (fixed lists, files, the
//! cluster, the kubeconfig); `--workload`'s kinds.

use clap::{Arg, ArgAction, Command, ValueHint};

use super::candidates::{Candidate, Completion, matching};
use super::directive;
use super::words::Request;

/// Workload kinds `--workload` accepts, as `kubectl rollout` spells them, with their
/// short names.
const WORKLOAD_KINDS: [(&str, &[&str]); 3] = [
    ("deployment", &["deploy", "deployments"]),
    ("statefulset", &["sts", "statefulsets"]),
    ("daemonset", &["ds", "daemonsets"]),
];

/// Where the candidates for a value come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Source {
    /// A fixed list from the definition (value enums), with descriptions.
    Fixed(Vec<Candidate>),
    /// Node names, comma-separated (`--nodes`).
    Nodes,
    /// `key=value` labels of the nodes, comma-separated (`--selector`).
    NodeLabels,
    Namespaces,
    /// `kind/name` of a deployment, statefulset or daemonset (`--workload`).
    Workloads,
    KubeconfigContexts,
    KubeconfigClusters,
    KubeconfigUsers,
    /// Let the shell complete file names.
    Files,
    /// A free value (a number, a duration, an image): nothing sensible to offer.
    Nothing,
}

/// Picks the source for a flag's or positional's value from its clap definition.
pub(super) fn source_for(arg: &Arg) -> Source {
    let values: Vec<Candidate> = arg
        .get_possible_values()
        .into_iter()
        .filter(|v| !v.is_hide_set())
        .map(|v| Candidate::new(v.get_name(), v.get_help().map(|h| h.to_string())))
        .collect();
    if !values.is_empty() {
        return Source::Fixed(values);
    }
    match arg.get_id().as_str() {
        "nodes" => Source::Nodes,
        "selector" => Source::NodeLabels,
        "namespace" | "helper_namespace" => Source::Namespaces,
        "workload" | "workloads" => Source::Workloads,
        "context" => Source::KubeconfigContexts,
        "cluster" => Source::KubeconfigClusters,
        "user" => Source::KubeconfigUsers,
        "archive" | "archives" => Source::Files,
        _ if matches!(
            arg.get_value_hint(),
            ValueHint::AnyPath | ValueHint::FilePath | ValueHint::DirPath
        ) =>
        {
            Source::Files
        }
        _ => Source::Nothing,
    }
}

/// `--workload`: first the kind (`deployment/`, no space after), then `kind/name` with the
/// names the caller fetched for the kind the user typed.
pub(super) fn workload_kind(typed: &str) -> Option<(&str, &str)> {
    let (kind, name) = typed.split_once('/')?;
    let canonical = WORKLOAD_KINDS
        .iter()
        .find(|(k, aliases)| *k == kind || aliases.contains(&kind))?
        .0;
    Some((canonical, name))
}

pub(super) fn workload_kinds(typed: &str) -> Completion {
    let candidates = WORKLOAD_KINDS
        .iter()
        .map(|(kind, _)| Candidate::plain(format!("{kind}/")))
        .collect();
    Completion {
        candidates: matching(candidates, typed),
        directive: directive::NO_SPACE | directive::NO_FILE_COMP,
    }
}

/// The flags of the (sub)command, without those already given once.
pub(super) fn flag_names(command: &Command, request: &Request) -> Completion {
    let mut candidates = Vec::new();
    for arg in command.get_arguments() {
        if arg.is_positional() || arg.is_hide_set() {
            continue;
        }
        let repeatable = matches!(arg.get_action(), ArgAction::Append | ArgAction::Count);
        if !repeatable
            && request
                .given
                .iter()
                .any(|(id, _)| id == arg.get_id().as_str())
        {
            continue;
        }
        let help = arg.get_help().map(|h| h.to_string());
        if let Some(long) = arg.get_long() {
            candidates.push(Candidate::new(format!("--{long}"), help.clone()));
        }
        if let Some(short) = arg.get_short() {
            candidates.push(Candidate::new(format!("-{short}"), help));
        }
    }
    Completion {
        candidates: matching(candidates, &request.typed),
        directive: directive::NO_FILE_COMP,
    }
}
