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
//!
//! By what each part completes: `words` reads what was typed (which subcommand, which
//! flags, what the word under the cursor is); `flags` the flag names and where each value's
//! candidates come from (fixed lists, files, `--workload` kinds); `cluster` what only the
//! API server or the kubeconfig knows; `candidates` filters them and writes cobra's format.
//! This file puts them together.

mod candidates;
mod cluster;
mod flags;
#[cfg(test)]
mod tests;
mod words;

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use clap::{Command, CommandFactory};

use crate::cli::Cli;
use candidates::{Candidate, Completion, matching};
use cluster::{fetch, kubeconfig_names};
use flags::{Source, flag_names, source_for, workload_kind, workload_kinds};
use words::{Request, Target, request};

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
