//! `kubectl sideload <TAB>`: the hidden `__complete` command behind `kubectl_complete-sideload`.
//!
//! kubectl (1.26+) completes a plugin by running `kubectl_complete-<plugin>` with the words
//! typed after the plugin name, the last one being the word under the cursor (empty when the
//! cursor follows a space). It reads cobra's `__complete` format from stdout: one candidate
//! per line, optionally `candidate<TAB>description`, then `:<directive>` as the last line
//! (kubectl's `staging/src/k8s.io/kubectl/pkg/cmd/plugin.go`, `getPluginCompletions`).
//!
//! Flags, their values and subcommands come from clap's own definition (`Cli::command()`),
//! so completion cannot drift from the parser. Node names, labels, namespaces and workloads
//! come from the cluster, bounded by [`API_BUDGET`]. Completion never fails loudly: a
//! missing kubeconfig, an unreachable server or half-typed words just mean fewer candidates.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use clap::{Arg, ArgAction, Command, CommandFactory, ValueHint};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Namespace, Node};
use kube::api::{Api, ListParams};
use kube::config::Kubeconfig;

use crate::cli::{Cli, KubeArgs};
use crate::cluster::client;

/// Everything that talks to the API server (connecting included) must fit in this: a shell
/// waiting on TAB is a person waiting.
const API_BUDGET: Duration = Duration::from_secs(3);

/// cobra's ShellCompDirective bits (cobra `completions.go`).
pub mod directive {
    /// Let the shell do its default: complete file names when no candidate matches.
    pub const DEFAULT: u32 = 0;
    /// Do not add a space after the completion (the word goes on, e.g. `deployment/`).
    pub const NO_SPACE: u32 = 2;
    /// Do not fall back to file names.
    pub const NO_FILE_COMP: u32 = 4;
}

/// Workload kinds `--workload` accepts, as `kubectl rollout` spells them, with their
/// short names.
const WORKLOAD_KINDS: [(&str, &[&str]); 3] = [
    ("deployment", &["deploy", "deployments"]),
    ("statefulset", &["sts", "statefulsets"]),
    ("daemonset", &["ds", "daemonsets"]),
];

/// Runs `kubectl-sideload __complete WORDS…` and prints candidates in cobra's format.
pub async fn run(words: &[String]) -> Result<ExitCode> {
    let command = cli_command();
    let request = request(&command, words);
    let completion = complete(&command, &request).await;
    let mut stdout = std::io::stdout().lock();
    // A closed pipe means the shell lost interest; nothing to report.
    let _ = stdout.write_all(completion.render().as_bytes());
    let _ = stdout.flush();
    Ok(ExitCode::SUCCESS)
}

/// The CLI definition with clap's derived parts (help flags, globals in subcommands) filled in.
fn cli_command() -> Command {
    let mut command = Cli::command();
    command.build();
    command
}

/// What the word under the cursor is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    /// A flag name (`-`, `--no`).
    FlagName,
    /// The value of the flag with this clap id. `emit_prefix` goes in front of every
    /// candidate: `-n` when the value is glued to a short flag (`-nkube`), else empty (for
    /// `--flag=value` cobra's shell scripts put the `--flag=` back themselves).
    FlagValue { id: String, emit_prefix: String },
    /// The positional argument at this index of the (sub)command; index 0 of the top-level
    /// command may also be a subcommand name.
    Positional { index: usize },
}

/// The words, understood: where we are, and the flag values typed so far.
#[derive(Debug, Clone)]
struct Request {
    /// The subcommand the words entered, if any.
    subcommand: Option<String>,
    /// The part of the current word being completed (after `--flag=` or `-n`).
    typed: String,
    target: Target,
    /// Flags given in the complete words: (clap id, value if any).
    given: Vec<(String, Option<String>)>,
}

impl Request {
    fn value(&self, id: &str) -> Option<&str> {
        self.given
            .iter()
            .rev()
            .find(|(given, _)| given == id)
            .and_then(|(_, value)| value.as_deref())
    }

    fn values(&self, id: &str) -> Vec<String> {
        self.given
            .iter()
            .filter(|(given, _)| given == id)
            .filter_map(|(_, value)| value.clone())
            .collect()
    }

    /// The connection flags typed so far, so completion asks the same cluster the command
    /// would talk to.
    fn kube_args(&self) -> KubeArgs {
        KubeArgs {
            kubeconfig: self.value("kubeconfig").map(PathBuf::from),
            context: self.value("context").map(str::to_string),
            cluster: self.value("cluster").map(str::to_string),
            user: self.value("user").map(str::to_string),
            namespace: self.value("namespace").map(str::to_string),
            as_user: self.value("as_user").map(str::to_string),
            as_group: self.values("as_group"),
            request_timeout: Some(API_BUDGET),
        }
    }
}

fn find_long<'a>(command: &'a Command, long: &str) -> Option<&'a Arg> {
    command.get_arguments().find(|a| {
        a.get_long() == Some(long) || a.get_all_aliases().is_some_and(|al| al.contains(&long))
    })
}

fn find_short(command: &Command, short: char) -> Option<&Arg> {
    command
        .get_arguments()
        .find(|a| a.get_short() == Some(short))
}

/// A flag that takes its value from the next word (not `--dry-run`, which needs `=`).
fn takes_separate_value(arg: &Arg) -> bool {
    arg.get_action().takes_values() && !arg.is_require_equals_set()
}

/// Reads the complete words (all but the last) the way clap would, tolerating anything.
fn request(root: &Command, words: &[String]) -> Request {
    let (current, done) = match words.split_last() {
        Some((last, rest)) => (last.as_str(), rest),
        None => ("", &[][..]),
    };
    let mut command = root;
    let mut subcommand = None;
    let mut given = Vec::new();
    let mut positionals = 0usize;
    let mut pending: Option<String> = None;
    let mut only_positionals = false;
    for word in done {
        if let Some(id) = pending.take() {
            given.push((id, Some(word.clone())));
            continue;
        }
        if only_positionals || word == "-" || !word.starts_with('-') {
            if subcommand.is_none()
                && positionals == 0
                && !only_positionals
                && let Some(sub) = command.find_subcommand(word)
            {
                subcommand = Some(sub.get_name().to_string());
                command = sub;
                continue;
            }
            positionals += 1;
        } else if word == "--" {
            only_positionals = true;
        } else if let Some(long) = word.strip_prefix("--") {
            let (name, inline) = match long.split_once('=') {
                Some((name, value)) => (name, Some(value.to_string())),
                None => (long, None),
            };
            if let Some(arg) = find_long(command, name) {
                let id = arg.get_id().as_str().to_string();
                if inline.is_none() && takes_separate_value(arg) {
                    pending = Some(id);
                } else {
                    given.push((id, inline));
                }
            }
        } else {
            // A cluster of short flags; the first one that takes a value eats the rest.
            let shorts = &word[1..];
            for (at, ch) in shorts.char_indices() {
                let Some(arg) = find_short(command, ch) else {
                    break;
                };
                let id = arg.get_id().as_str().to_string();
                if !arg.get_action().takes_values() {
                    given.push((id, None));
                    continue;
                }
                let rest = &shorts[at + ch.len_utf8()..];
                let rest = rest.strip_prefix('=').unwrap_or(rest);
                if !rest.is_empty() {
                    given.push((id, Some(rest.to_string())));
                } else if !arg.is_require_equals_set() {
                    pending = Some(id);
                }
                break;
            }
        }
    }

    let (target, typed) = if let Some(id) = pending {
        (
            Target::FlagValue {
                id,
                emit_prefix: String::new(),
            },
            current.to_string(),
        )
    } else if only_positionals || !current.starts_with('-') {
        (
            Target::Positional { index: positionals },
            current.to_string(),
        )
    } else if let Some((name, value)) = current.strip_prefix("--").and_then(|l| l.split_once('=')) {
        match find_long(command, name) {
            Some(arg) if arg.get_action().takes_values() => (
                Target::FlagValue {
                    id: arg.get_id().as_str().to_string(),
                    emit_prefix: String::new(),
                },
                value.to_string(),
            ),
            _ => (Target::FlagName, current.to_string()),
        }
    } else {
        let mut chars = current.chars().skip(1);
        match (chars.next(), current.starts_with("--")) {
            (Some(ch), false) if current.len() > 2 => match find_short(command, ch) {
                Some(arg) if arg.get_action().takes_values() => {
                    let rest = &current[1 + ch.len_utf8()..];
                    let (emit_prefix, rest) = match rest.strip_prefix('=') {
                        Some(rest) => (String::new(), rest),
                        None => (format!("-{ch}"), rest),
                    };
                    (
                        Target::FlagValue {
                            id: arg.get_id().as_str().to_string(),
                            emit_prefix,
                        },
                        rest.to_string(),
                    )
                }
                _ => (Target::FlagName, current.to_string()),
            },
            _ => (Target::FlagName, current.to_string()),
        }
    };
    Request {
        subcommand,
        typed,
        target,
        given,
    }
}

/// Where the candidates for a value come from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Source {
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
fn source_for(arg: &Arg) -> Source {
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

#[derive(Debug, Clone, PartialEq, Eq)]
struct Candidate {
    value: String,
    description: Option<String>,
}

impl Candidate {
    fn new(value: impl Into<String>, description: Option<String>) -> Self {
        Self {
            value: value.into(),
            description,
        }
    }

    fn plain(value: impl Into<String>) -> Self {
        Self::new(value, None)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Completion {
    candidates: Vec<Candidate>,
    directive: u32,
}

impl Completion {
    fn none() -> Self {
        Self {
            candidates: Vec::new(),
            directive: directive::NO_FILE_COMP,
        }
    }

    fn files() -> Self {
        Self {
            candidates: Vec::new(),
            directive: directive::DEFAULT,
        }
    }

    /// cobra's `__complete` output: candidates, then `:<directive>`.
    fn render(&self) -> String {
        let mut out = String::new();
        for candidate in &self.candidates {
            // A newline would split a candidate, a tab would start its description.
            out.push_str(&one_line(&candidate.value));
            if let Some(description) = candidate.description.as_deref().map(one_line)
                && !description.is_empty()
            {
                out.push('\t');
                out.push_str(&description);
            }
            out.push('\n');
        }
        out.push_str(&format!(":{}\n", self.directive));
        out
    }
}

fn one_line(text: &str) -> String {
    let line = text.lines().next().unwrap_or_default();
    line.replace('\t', " ").trim().to_string()
}

/// Keeps the candidates the shell would show for `typed`: cobra leaves prefix filtering to
/// the program, and filtering here lets the shell fall back to files when nothing matches.
fn matching(candidates: Vec<Candidate>, typed: &str) -> Vec<Candidate> {
    candidates
        .into_iter()
        .filter(|c| c.value.starts_with(typed))
        .collect()
}

/// Splits a comma-separated list being typed into the part already done (with its final
/// comma) and the item under the cursor: `a,b,no` → (`a,b,`, `no`).
fn split_list(typed: &str) -> (&str, &str) {
    match typed.rfind(',') {
        Some(at) => typed.split_at(at + 1),
        None => ("", typed),
    }
}

/// Candidates for the item under the cursor of a comma-separated list: each is the whole
/// word (done part + item), items already in the list are left out.
fn list_candidates(typed: &str, items: &[String]) -> Vec<Candidate> {
    let (done, current) = split_list(typed);
    let already: BTreeSet<&str> = done.split(',').filter(|s| !s.is_empty()).collect();
    items
        .iter()
        .filter(|item| item.starts_with(current) && !already.contains(item.as_str()))
        .map(|item| Candidate::plain(format!("{done}{item}")))
        .collect()
}

/// `--workload`: first the kind (`deployment/`, no space after), then `kind/name` with the
/// names the caller fetched for the kind the user typed.
fn workload_kind(typed: &str) -> Option<(&str, &str)> {
    let (kind, name) = typed.split_once('/')?;
    let canonical = WORKLOAD_KINDS
        .iter()
        .find(|(k, aliases)| *k == kind || aliases.contains(&kind))?
        .0;
    Some((canonical, name))
}

fn workload_kinds(typed: &str) -> Completion {
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
fn flag_names(command: &Command, request: &Request) -> Completion {
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

/// What to do for the word under the cursor, before any cluster is asked.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Plan {
    Done(Completion),
    /// Ask for dynamic candidates from this source; `emit_prefix` as in [`Target`].
    Fetch {
        source: Source,
        emit_prefix: String,
    },
}

fn plan(root: &Command, request: &Request) -> Plan {
    let command = match &request.subcommand {
        Some(name) => match root.find_subcommand(name) {
            Some(sub) => sub,
            None => return Plan::Done(Completion::none()),
        },
        None => root,
    };
    match &request.target {
        Target::FlagName => Plan::Done(flag_names(command, request)),
        Target::FlagValue { id, emit_prefix } => {
            let Some(arg) = command.get_arguments().find(|a| a.get_id().as_str() == id) else {
                return Plan::Done(Completion::none());
            };
            static_or_fetch(source_for(arg), &request.typed, emit_prefix)
        }
        Target::Positional { index } => {
            // Past the last positional, a positional that takes many values (ARCHIVE…)
            // takes the word.
            let positional = command.get_positionals().nth(*index).or_else(|| {
                command
                    .get_positionals()
                    .last()
                    .filter(|a| a.get_num_args().is_some_and(|n| n.max_values() > 1))
            });
            let mut subcommands = Vec::new();
            if request.subcommand.is_none() && *index == 0 {
                subcommands = command
                    .get_subcommands()
                    .filter(|s| !s.is_hide_set())
                    .map(|s| Candidate::new(s.get_name(), s.get_about().map(|a| a.to_string())))
                    .collect();
            }
            let mut completion = match positional.map(source_for) {
                Some(Source::Fixed(values)) => Completion {
                    candidates: matching(values, &request.typed),
                    directive: directive::NO_FILE_COMP,
                },
                Some(Source::Files) => Completion::files(),
                Some(_) => Completion::none(),
                None if subcommands.is_empty() => Completion::none(),
                None => Completion {
                    candidates: Vec::new(),
                    directive: directive::NO_FILE_COMP,
                },
            };
            // Subcommand names come first; with the default directive the shell still
            // completes files once no subcommand name matches what was typed.
            let mut candidates = matching(subcommands, &request.typed);
            candidates.append(&mut completion.candidates);
            completion.candidates = candidates;
            Plan::Done(completion)
        }
    }
}

fn static_or_fetch(source: Source, typed: &str, emit_prefix: &str) -> Plan {
    let prefixed = |mut completion: Completion| {
        for candidate in &mut completion.candidates {
            candidate.value.insert_str(0, emit_prefix);
        }
        completion
    };
    match source {
        Source::Fixed(values) => Plan::Done(prefixed(Completion {
            candidates: matching(values, typed),
            directive: directive::NO_FILE_COMP,
        })),
        Source::Files => Plan::Done(Completion::files()),
        Source::Nothing => Plan::Done(Completion::none()),
        Source::Workloads if workload_kind(typed).is_none() => {
            Plan::Done(prefixed(workload_kinds(typed)))
        }
        source => Plan::Fetch {
            source,
            emit_prefix: emit_prefix.to_string(),
        },
    }
}

async fn complete(root: &Command, request: &Request) -> Completion {
    let (source, emit_prefix) = match plan(root, request) {
        Plan::Done(completion) => return completion,
        Plan::Fetch {
            source,
            emit_prefix,
        } => (source, emit_prefix),
    };
    let typed = request.typed.as_str();
    let candidates = match source {
        Source::KubeconfigContexts | Source::KubeconfigClusters | Source::KubeconfigUsers => {
            let names = kubeconfig_names(&source, request.value("kubeconfig"));
            matching(names.into_iter().map(Candidate::plain).collect(), typed)
        }
        source => {
            let kube = request.kube_args();
            match tokio::time::timeout(API_BUDGET, fetch(&source, &kube, typed)).await {
                Ok(Some(candidates)) => candidates,
                // Unreachable, forbidden or slow: fewer candidates, never an error.
                Ok(None) | Err(_) => Vec::new(),
            }
        }
    };
    let mut completion = Completion {
        candidates,
        directive: directive::NO_FILE_COMP,
    };
    for candidate in &mut completion.candidates {
        candidate.value.insert_str(0, &emit_prefix);
    }
    completion
}

/// Context, cluster or user names from the kubeconfig (no API call).
fn kubeconfig_names(source: &Source, path: Option<&str>) -> Vec<String> {
    let config = match path {
        Some(path) => Kubeconfig::read_from(path),
        None => Kubeconfig::read(),
    };
    let Ok(config) = config else {
        return Vec::new();
    };
    match source {
        Source::KubeconfigContexts => config.contexts.into_iter().map(|c| c.name).collect(),
        Source::KubeconfigClusters => config.clusters.into_iter().map(|c| c.name).collect(),
        Source::KubeconfigUsers => config.auth_infos.into_iter().map(|c| c.name).collect(),
        _ => Vec::new(),
    }
}

/// Candidates from the API server; `None` on any error.
async fn fetch(source: &Source, kube: &KubeArgs, typed: &str) -> Option<Vec<Candidate>> {
    let cluster = client::connect(kube).await.ok()?;
    let client = cluster.client;
    let candidates = match source {
        Source::Nodes => {
            let nodes = names(Api::<Node>::all(client)).await?;
            let mut candidates = Vec::new();
            if split_list(typed).0.is_empty() && "all".starts_with(typed) {
                candidates.push(Candidate::new(
                    "all",
                    Some("every node (the default)".into()),
                ));
            }
            candidates.extend(list_candidates(typed, &nodes));
            candidates
        }
        Source::NodeLabels => {
            let nodes = Api::<Node>::all(client)
                .list_metadata(&ListParams::default())
                .await
                .ok()?;
            let labels: BTreeSet<String> = nodes
                .items
                .into_iter()
                .flat_map(|n| n.metadata.labels.unwrap_or_default())
                .map(|(key, value)| format!("{key}={value}"))
                .collect();
            list_candidates(typed, &labels.into_iter().collect::<Vec<_>>())
        }
        Source::Namespaces => {
            let namespaces = names(Api::<Namespace>::all(client)).await?;
            matching(
                namespaces.into_iter().map(Candidate::plain).collect(),
                typed,
            )
        }
        Source::Workloads => {
            let (kind, _) = workload_kind(typed)?;
            let (typed_kind, _) = typed.split_once('/')?;
            let ns = cluster.namespace.as_str();
            let found = match kind {
                "deployment" => names(Api::<Deployment>::namespaced(client, ns)).await?,
                "statefulset" => names(Api::<StatefulSet>::namespaced(client, ns)).await?,
                _ => names(Api::<DaemonSet>::namespaced(client, ns)).await?,
            };
            // Keep the kind as the user spelled it (`deploy/…` stays `deploy/…`).
            let candidates = found
                .into_iter()
                .map(|name| Candidate::plain(format!("{typed_kind}/{name}")))
                .collect();
            matching(candidates, typed)
        }
        _ => Vec::new(),
    };
    Some(candidates)
}

/// Sorted names of every object the API lists (metadata only: the lightest list there is).
async fn names<K>(api: Api<K>) -> Option<Vec<String>>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let list = api.list_metadata(&ListParams::default()).await.ok()?;
    let mut names: Vec<String> = list
        .items
        .into_iter()
        .filter_map(|o| o.metadata.name)
        .collect();
    names.sort();
    Some(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(words: &[&str]) -> Request {
        let words: Vec<String> = words.iter().map(|w| w.to_string()).collect();
        request(&cli_command(), &words)
    }

    fn planned(words: &[&str]) -> Plan {
        plan(&cli_command(), &req(words))
    }

    fn done(words: &[&str]) -> Completion {
        match planned(words) {
            Plan::Done(completion) => completion,
            other => panic!("{words:?}: expected a static completion, got {other:?}"),
        }
    }

    fn values(completion: &Completion) -> Vec<&str> {
        completion
            .candidates
            .iter()
            .map(|c| c.value.as_str())
            .collect()
    }

    fn flag_value(id: &str, prefix: &str) -> Target {
        Target::FlagValue {
            id: id.into(),
            emit_prefix: prefix.into(),
        }
    }

    #[test]
    fn no_words_is_the_first_positional() {
        let r = req(&[]);
        assert_eq!(r.target, Target::Positional { index: 0 });
        assert_eq!(r.typed, "");
    }

    #[test]
    fn which_flag_value_is_being_completed() {
        let r = req(&["app.tar", "--nodes", ""]);
        assert_eq!(r.target, flag_value("nodes", ""));
        let r = req(&["--nodes=node-a,no"]);
        assert_eq!(
            (r.target, r.typed.as_str()),
            (flag_value("nodes", ""), "node-a,no")
        );
        let r = req(&["-l", "po"]);
        assert_eq!(
            (r.target, r.typed.as_str()),
            (flag_value("selector", ""), "po")
        );
        let r = req(&["-nkube"]);
        assert_eq!(
            (r.target, r.typed.as_str()),
            (flag_value("namespace", "-n"), "kube")
        );
        let r = req(&["-n=kube"]);
        assert_eq!(
            (r.target, r.typed.as_str()),
            (flag_value("namespace", ""), "kube")
        );
        let r = req(&["--helper-namespace", "k"]);
        assert_eq!(r.target, flag_value("helper_namespace", ""));
        let r = req(&["cleanup", "--helper-namespace", ""]);
        assert_eq!(r.subcommand.as_deref(), Some("cleanup"));
        assert_eq!(r.target, flag_value("helper_namespace", ""));
    }

    #[test]
    fn values_of_earlier_flags_are_not_positionals() {
        let r = req(&["--kubeconfig", "/k", "-n", "ops", ""]);
        assert_eq!(r.target, Target::Positional { index: 0 });
        let r = req(&["--kubeconfig", "/k", "app.tar", ""]);
        assert_eq!(r.target, Target::Positional { index: 1 });
        // --dry-run takes its value only with `=`: the next word is the archive.
        let r = req(&["--dry-run", ""]);
        assert_eq!(r.target, Target::Positional { index: 0 });
        let r = req(&["--", "-weird.tar", ""]);
        assert_eq!(r.target, Target::Positional { index: 1 });
    }

    #[test]
    fn connection_flags_reach_the_client() {
        let r = req(&[
            "--kubeconfig",
            "/k",
            "--context=c",
            "-nops",
            "--as",
            "me",
            "--as-group",
            "g1",
            "--as-group=g2",
            "--cluster",
            "cl",
            "--user",
            "u",
            "app.tar",
            "--nodes",
            "",
        ]);
        let kube = r.kube_args();
        assert_eq!(kube.kubeconfig, Some(PathBuf::from("/k")));
        assert_eq!(kube.context.as_deref(), Some("c"));
        assert_eq!(kube.namespace.as_deref(), Some("ops"));
        assert_eq!(kube.as_user.as_deref(), Some("me"));
        assert_eq!(kube.as_group, vec!["g1".to_string(), "g2".to_string()]);
        assert_eq!(kube.cluster.as_deref(), Some("cl"));
        assert_eq!(kube.user.as_deref(), Some("u"));
        assert_eq!(kube.request_timeout, Some(API_BUDGET));
    }

    #[test]
    fn half_typed_and_unknown_words_are_tolerated() {
        for words in [
            &["--no-such-flag", ""][..],
            &["-", ""],
            &["--nodes="],
            &["-Z", ""],
            &["--kubeconfig"],
            &["inspect", "x", "y", "z", ""],
            &["--=", ""],
            &["-é", ""],
        ] {
            let _ = planned(words);
        }
    }

    #[test]
    fn flag_names_come_from_clap() {
        let c = done(&["app.tar", "--no"]);
        assert_eq!(values(&c), ["--nodes"]);
        assert_eq!(c.directive, directive::NO_FILE_COMP);
        assert!(
            c.candidates[0]
                .description
                .as_deref()
                .unwrap()
                .starts_with("Nodes to load")
        );
        let c = done(&["-"]);
        for flag in [
            "--nodes",
            "-l",
            "--selector",
            "-o",
            "--kubeconfig",
            "-n",
            "--helper-image",
        ] {
            assert!(
                values(&c).contains(&flag),
                "{flag} missing from {:?}",
                values(&c)
            );
        }
        assert!(!values(&c).iter().any(|v| v.contains("complete")));
    }

    #[test]
    fn flags_given_once_are_not_offered_again() {
        let c = done(&["--force", "--f"]);
        assert!(!values(&c).contains(&"--force"));
        let c = done(&["--as-group", "g", "--as-"]);
        assert!(values(&c).contains(&"--as-group"), "repeatable flags stay");
    }

    #[test]
    fn subcommand_flags_are_its_own_and_the_globals() {
        let c = done(&["cleanup", "--"]);
        let v = values(&c);
        assert!(
            v.contains(&"--helper-namespace") && v.contains(&"--kubeconfig"),
            "{v:?}"
        );
        assert!(!v.contains(&"--nodes"), "{v:?}");
    }

    #[test]
    fn fixed_values_come_from_value_enums() {
        let c = done(&["app.tar", "-o", ""]);
        assert_eq!(values(&c), ["table", "json", "yaml"]);
        assert_eq!(c.directive, directive::NO_FILE_COMP);
        let c = done(&["app.tar", "--output=j"]);
        assert_eq!(values(&c), ["json"]);
        let c = done(&["app.tar", "--dry-run=s"]);
        assert_eq!(values(&c), ["server"]);
        let c = done(&["completion", ""]);
        assert_eq!(values(&c), ["bash", "elvish", "fish", "powershell", "zsh"]);
        let c = done(&["-ojs"]);
        assert_eq!(values(&c), ["-ojson"]);
    }

    #[test]
    fn the_archive_is_a_file_and_subcommands_come_first() {
        let c = done(&[""]);
        assert_eq!(
            values(&c),
            [
                "inspect",
                "cleanup",
                "status",
                "unpin",
                "rm",
                "completion",
                "help"
            ]
        );
        assert_eq!(c.directive, directive::DEFAULT);
        let c = done(&["c"]);
        assert_eq!(values(&c), ["cleanup", "completion"]);
        let c = done(&["my"]);
        assert!(c.candidates.is_empty());
        assert_eq!(
            c.directive,
            directive::DEFAULT,
            "the shell completes file names"
        );
        let c = done(&["inspect", ""]);
        assert_eq!((c.candidates.len(), c.directive), (0, directive::DEFAULT));
        // Several archives in one run: the second is a file too (never a subcommand).
        let c = done(&["a.tar", ""]);
        assert_eq!((c.candidates.len(), c.directive), (0, directive::DEFAULT));
        let c = done(&["--kubeconfig", ""]);
        assert_eq!((c.candidates.len(), c.directive), (0, directive::DEFAULT));
    }

    #[test]
    fn nothing_more_after_the_archive() {
        let c = done(&["cleanup", ""]);
        assert_eq!(
            (c.candidates.len(), c.directive),
            (0, directive::NO_FILE_COMP)
        );
        let c = done(&["app.tar", "--parallel", ""]);
        assert_eq!(
            (c.candidates.len(), c.directive),
            (0, directive::NO_FILE_COMP)
        );
    }

    #[test]
    fn cluster_values_are_fetched() {
        let fetch = |source: Source| Plan::Fetch {
            source,
            emit_prefix: String::new(),
        };
        assert_eq!(planned(&["app.tar", "--nodes", "a,"]), fetch(Source::Nodes));
        assert_eq!(planned(&["-l", ""]), fetch(Source::NodeLabels));
        assert_eq!(planned(&["-n", ""]), fetch(Source::Namespaces));
        assert_eq!(planned(&["--helper-namespace="]), fetch(Source::Namespaces));
        assert_eq!(
            planned(&["--context", ""]),
            fetch(Source::KubeconfigContexts)
        );
        assert_eq!(
            planned(&["-nk"]),
            Plan::Fetch {
                source: Source::Namespaces,
                emit_prefix: "-n".into()
            }
        );
    }

    #[test]
    fn comma_lists_complete_the_last_item() {
        assert_eq!(split_list(""), ("", ""));
        assert_eq!(split_list("no"), ("", "no"));
        assert_eq!(split_list("node-a,"), ("node-a,", ""));
        assert_eq!(split_list("a,b,no"), ("a,b,", "no"));
        let nodes: Vec<String> = ["node-a", "node-b", "other"].map(String::from).to_vec();
        let v = |typed| -> Vec<String> {
            list_candidates(typed, &nodes)
                .into_iter()
                .map(|c| c.value)
                .collect()
        };
        assert_eq!(v(""), ["node-a", "node-b", "other"]);
        assert_eq!(v("node-a,"), ["node-a,node-b", "node-a,other"]);
        assert_eq!(v("node-a,n"), ["node-a,node-b"]);
        assert_eq!(v("node-b,node-a,"), ["node-b,node-a,other"]);
    }

    #[test]
    fn workloads_complete_kind_then_name() {
        let c = workload_kinds("");
        assert_eq!(values(&c), ["deployment/", "statefulset/", "daemonset/"]);
        assert_eq!(c.directive, directive::NO_SPACE | directive::NO_FILE_COMP);
        assert_eq!(values(&workload_kinds("st")), ["statefulset/"]);
        assert_eq!(workload_kind("deploy/web"), Some(("deployment", "web")));
        assert_eq!(workload_kind("sts/"), Some(("statefulset", "")));
        assert_eq!(workload_kind("daemonset/x"), Some(("daemonset", "x")));
        assert_eq!(workload_kind("pod/x"), None);
        assert_eq!(workload_kind("deploy"), None);
        assert!(matches!(
            static_or_fetch(Source::Workloads, "dep", ""),
            Plan::Done(Completion { directive: 6, .. })
        ));
        assert!(matches!(
            static_or_fetch(Source::Workloads, "deploy/w", ""),
            Plan::Fetch {
                source: Source::Workloads,
                ..
            }
        ));
    }

    #[test]
    fn output_follows_cobra() {
        let c = Completion {
            candidates: vec![
                Candidate::new("--nodes", Some("Nodes to load:\tall\nor names".into())),
                Candidate::plain("json"),
            ],
            directive: directive::NO_FILE_COMP,
        };
        assert_eq!(c.render(), "--nodes\tNodes to load: all\njson\n:4\n");
        assert_eq!(Completion::files().render(), ":0\n");
    }

    /// kubectl_complete-sideload runs `__complete -- WORDS…`: without the `--`, clap would
    /// take global flags such as `--kubeconfig K` for itself and the words would lose them.
    #[test]
    fn words_reach_the_hidden_command_intact() {
        use clap::Parser;
        let typed = ["--kubeconfig", "/k", "-n", "x", "--", "-h", "--nodes", ""];
        let argv = ["kubectl-sideload", "__complete", "--"]
            .into_iter()
            .chain(typed);
        let cli = Cli::try_parse_from(argv).unwrap();
        match cli.command {
            Some(crate::cli::Command::Complete(args)) => assert_eq!(args.words, typed),
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(cli.kube.kubeconfig, None);
    }
}
