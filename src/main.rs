//! kubectl-sideload: load image tarballs into Kubernetes nodes through the API server.
//! This file only parses, runs, prints the error once and picks the exit code.

mod app;
mod archive;
mod cli;
mod cluster;
mod complete;
mod engine;
mod load;
mod model;
mod pin;
mod plan;
mod progress;
mod reach;
mod report;
mod runtime;
mod sideload;
mod status;
mod transfer;
mod version;
mod visit;
mod workload;

use crate::app::say;
use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // kube-rs runs this binary as the kubeconfig's credential plugin (cluster/credential.rs).
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args
        .get(1)
        .is_some_and(|a| a == cluster::credential::SHIM_ARG)
    {
        return cluster::credential::shim(&args[2..]);
    }
    let cli = cli::Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SIDELOAD_LOG")
                // kube-rs logs every failed connect at ERROR; the plugin reports errors itself,
                // once, so library chatter stays off unless SIDELOAD_LOG asks for it.
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("off")),
        )
        .with_writer(std::io::stderr)
        // A log line that cannot be written (stderr's reader went away) is dropped: the
        // default reports it with `eprintln!`, which panics and would end the run with its
        // helper pods still up.
        .log_internal_errors(false)
        // Colour codes only for a person; logs piped to a file or grep stay plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            say!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(app::run(cli)) {
        Ok(code) => code,
        Err(err) => {
            say!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
