//! The commands: each subcommand to its module (the load itself: sideload.rs), and what
//! they share: opening archives and engine sources, stdout, run ids, signals; `inspect`,
//! `cleanup` and `completion`, which are small enough to live here.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::CommandFactory;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::Api;

use crate::archive::{Archive, Source, Summary};
use crate::cli::{CleanupArgs, Cli, Command, CompletionArgs, InspectArgs, KubeArgs, Output};
use crate::cluster::helper::Runs;
use crate::cluster::lease;
use crate::cluster::{agent, client, helper};
use crate::report;
use crate::workload;

pub async fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Some(Command::Inspect(args)) => inspect(args).await,
        Some(Command::Cleanup(args)) => cleanup(&cli.kube, args).await,
        Some(Command::Status(args)) => crate::status::status(&cli.kube, args).await,
        Some(Command::Unpin(args)) => crate::status::unpin(&cli.kube, args).await,
        Some(Command::Rm(args)) => crate::status::remove(&cli.kube, args).await,
        Some(Command::Completion(args)) => completion(args),
        Some(Command::Complete(args)) => crate::complete::run(&args.words).await,
        None => crate::sideload::run(cli.load, &cli.kube).await,
    }
}

/// Opens an archive that must hold one image (`inspect`, `status`).
pub async fn open_archive(arg: &str) -> Result<Archive> {
    Ok(Archive::one(open_images(arg).await?)?)
}

/// Opens an archive on a blocking thread: it is one sequential read of the whole file (or
/// of what `docker save` / `podman save` writes, for `docker://` and `podman://`). One
/// `Archive` per image the archive holds.
pub async fn open_images(arg: &str) -> Result<Vec<Archive>> {
    if let Some((engine, reference)) = crate::engine::Engine::parse(arg) {
        let (reference, arg) = (reference.to_owned(), arg.to_owned());
        return tokio::task::spawn_blocking(move || crate::engine::open(engine, &reference, &arg))
            .await
            .context("archive reader panicked")?;
    }
    let source = if arg == "-" {
        if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
            bail!(
                "ARCHIVE is - but stdin is a terminal; pipe an archive in (docker save app:v2 | kubectl sideload -) or pass a path"
            );
        }
        Source::Stdin
    } else {
        Source::Path(arg.into())
    };
    let images = tokio::task::spawn_blocking(move || Archive::open_all(&source))
        .await
        .context("archive reader panicked")??;
    Ok(images)
}

/// What an archive holds: one summary, or (for an archive of several images) a list.
async fn inspect(args: InspectArgs) -> Result<ExitCode> {
    let images = open_images(&args.archive).await?;
    let summaries: Vec<&Summary> = images.iter().map(Archive::summary).collect();
    let text = match (args.output, summaries.as_slice()) {
        (Output::Json, [one]) => serde_json::to_string_pretty(one)?,
        (Output::Json, several) => serde_json::to_string_pretty(several)?,
        (Output::Yaml, [one]) => serde_yaml::to_string(one)?,
        (Output::Yaml, several) => serde_yaml::to_string(several)?,
        (Output::Table, several) => several
            .iter()
            .map(|s| inspect_table(s))
            .collect::<Vec<_>>()
            .join("\n"),
    };
    print_stdout(&text);
    Ok(ExitCode::SUCCESS)
}

fn inspect_table(summary: &Summary) -> String {
    let mut out = format!(
        "format:  {}{}\nrefs:    {}\ndigest:  {}\nsize:    {}\n",
        serde_json::to_value(summary.format)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default(),
        if summary.compressed { " (gzip)" } else { "" },
        if summary.refs.is_empty() {
            "(none)".to_string()
        } else {
            summary.refs.join(", ")
        },
        summary.digest,
        report::human_bytes(summary.size),
    );
    for image in &summary.images {
        let layer_bytes: u64 = image.layers.iter().map(|l| l.size).sum();
        out.push_str(&format!(
            "platform {}: manifest {}, config {}, {} layer(s), {}{}\n",
            image.platform,
            image.manifest.digest,
            image.config.digest,
            image.layers.len(),
            report::human_bytes(layer_bytes),
            if image.complete {
                String::new()
            } else {
                format!(", INCOMPLETE ({} blob(s) missing)", image.missing.len())
            }
        ));
    }
    out
}

async fn cleanup(kube: &KubeArgs, args: CleanupArgs) -> Result<ExitCode> {
    let cluster = client::connect(kube).await?;
    let namespace = &args.helper_namespace;
    // Runs still renewing their Lease are in progress (another user's, or another terminal's):
    // their objects are left alone.
    let leases: Api<Lease> = Api::namespaced(cluster.client.clone(), namespace);
    let liveness = lease::liveness(&leases)
        .await
        .context("cannot tell which runs are still in progress, so nothing was deleted")?;
    let live: Vec<String> = liveness.live.keys().cloned().collect();
    let runs = Runs::AllBut(&live);
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), namespace);
    let names = if args.dry_run {
        helper::list(&pods, runs).await?
    } else {
        // A run killed a moment ago may still have a create in the API's hands: sweep
        // until the namespace stays empty for a second.
        helper::sweep(&pods, runs, Duration::from_secs(1)).await?
    };
    let configmaps: Api<ConfigMap> = Api::namespaced(cluster.client.clone(), namespace);
    let maps = if args.dry_run {
        agent::list_configmaps(&configmaps, runs).await?
    } else {
        agent::delete_configmaps(&configmaps, runs).await?
    };
    if !args.dry_run {
        let expired: Vec<String> = liveness.expired.iter().map(|e| e.lease.clone()).collect();
        lease::delete(&leases, &expired).await?;
    }
    for (run, ago) in &liveness.live {
        print_stdout(&format!(
            "run {run} is in progress (its lease was renewed {ago} s ago): left alone; a run \
             counts as ended {} s after its last renewal\n",
            lease::DURATION.as_secs()
        ));
    }
    if names.is_empty() && maps.is_empty() && liveness.live.is_empty() {
        print_stdout(&format!("no helper pods in namespace {namespace}\n"));
    }
    let objects = names
        .iter()
        .map(|n| format!("pod/{n}"))
        .chain(maps.iter().map(|m| format!("configmap/{m}")))
        .chain(
            liveness
                .expired
                .iter()
                .map(|e| format!("lease/{}", e.lease)),
        );
    for object in objects {
        if args.dry_run {
            print_stdout(&format!("{object} would be deleted (dry run)\n"));
        } else {
            print_stdout(&format!("{object} deleted\n"));
        }
    }
    if args.labels {
        let labelled = workload::node_labels(&cluster.client, !args.dry_run).await?;
        if labelled.is_empty() {
            print_stdout("no node carries a sideload.dev/img-* label\n");
        }
        for (node, keys) in &labelled {
            for key in keys {
                let done = if args.dry_run {
                    "would be removed (dry run)"
                } else {
                    "removed"
                };
                print_stdout(&format!("node/{node} label {key} {done}\n"));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn completion(args: CompletionArgs) -> Result<ExitCode> {
    let mut command = Cli::command();
    let mut out = Vec::new();
    clap_complete::generate(args.shell, &mut command, "kubectl-sideload", &mut out);
    print_stdout(&String::from_utf8_lossy(&out));
    Ok(ExitCode::SUCCESS)
}

/// Prints results; a closed pipe (`| head`) is not an error worth reporting.
pub fn print_stdout(text: &str) {
    print_to(&mut std::io::stdout().lock(), text);
}

/// Prints a message to stderr. Not `eprintln!`: it panics once stderr's reader went away
/// (`kubectl sideload … 2>&1 | head`), and a panic mid-run ends the process with helper
/// pods still on the nodes; a lost message is the lesser harm.
pub fn print_stderr(text: &str) {
    print_to(&mut std::io::stderr().lock(), text);
}

fn print_to(out: &mut impl Write, text: &str) {
    let _ = out.write_all(text.as_bytes());
    if !text.ends_with('\n') {
        let _ = out.write_all(b"\n");
    }
    let _ = out.flush();
}

/// `eprintln!` through [`print_stderr`]: the same arguments, never a panic.
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::app::print_stderr(&format!($($arg)*))
    };
}
pub(crate) use say;

/// A per-run secret (256 bits from the OS, hex) that relay connections between helper
/// pods must present.
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    // The OS's random source failing is not something a user can act on; a token from the
    // fallback is still unguessable by anyone who cannot read the helper pods' execs.
    if getrandom::fill(&mut bytes).is_err() {
        let fallback = format!("{}{}", run_id(), run_id());
        bytes[..fallback.len().min(32)]
            .copy_from_slice(&fallback.as_bytes()[..fallback.len().min(32)]);
    }
    hex::encode(bytes)
}

/// A short random id for this run's helper pods (`[a-z0-9]{6}`), without a rand crate:
/// std's RandomState is seeded from the OS.
pub fn run_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    hasher.write_u32(std::process::id());
    let mut n = hasher.finish();
    let alphabet = b"abcdefghijklmnopqrstuvwxyz0123456789";
    (0..6)
        .map(|_| {
            let c = alphabet[(n % 36) as usize] as char;
            n /= 36;
            c
        })
        .collect()
}

/// Ctrl-C, SIGTERM and SIGHUP (the terminal closed, an ssh session dropped), listened for
/// from creation on: created just before the first object of the run, so no signal between
/// "pod created" and "select polled" escapes cleanup.
pub struct Signals {
    #[cfg(unix)]
    interrupt: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    terminate: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    hangup: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    pub fn listen() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Signals {
                interrupt: signal(SignalKind::interrupt()).ok(),
                terminate: signal(SignalKind::terminate()).ok(),
                hangup: signal(SignalKind::hangup()).ok(),
            }
        }
        #[cfg(not(unix))]
        Signals {}
    }

    /// Resolves on the first signal: its name, and the exit code shells report for a
    /// process it ended (128 + its number).
    pub async fn recv(&mut self) -> (&'static str, u8) {
        #[cfg(unix)]
        {
            async fn next(s: &mut Option<tokio::signal::unix::Signal>) {
                match s {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            }
            tokio::select! {
                _ = next(&mut self.interrupt) => ("interrupt", 130),
                _ = next(&mut self.terminate) => ("terminated", 143),
                _ = next(&mut self.hangup) => ("hangup", 129),
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            ("interrupt", 130)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_ids_are_short_label_safe_and_differ() {
        let a = run_id();
        let b = run_id();
        assert_eq!(a.len(), 6);
        assert!(
            a.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        );
        assert_ne!(a, b);
    }
}
