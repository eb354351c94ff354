//! The completion's rules, word by word, against the real clap definition (no cluster).

use super::candidates::{Candidate, Completion, list_candidates, split_list};
use super::flags::{Source, workload_kind};
use super::words::{Request, Target, request};
use super::*;
use std::path::PathBuf;

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
