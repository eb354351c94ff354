//! Reading the words typed so far the way clap would, tolerating anything: which
//! (sub)command they entered, which flags they gave, and what the word under the cursor is.

use std::path::PathBuf;

use clap::{Arg, Command};

use super::API_BUDGET;
use crate::cli::KubeArgs;

/// What the word under the cursor is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Target {
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
pub(super) struct Request {
    /// The subcommand the words entered, if any.
    pub(super) subcommand: Option<String>,
    /// The part of the current word being completed (after `--flag=` or `-n`).
    pub(super) typed: String,
    pub(super) target: Target,
    /// Flags given in the complete words: (clap id, value if any).
    pub(super) given: Vec<(String, Option<String>)>,
}

impl Request {
    pub(super) fn value(&self, id: &str) -> Option<&str> {
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
    pub(super) fn kube_args(&self) -> KubeArgs {
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
pub(super) fn request(root: &Command, words: &[String]) -> Request {
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
