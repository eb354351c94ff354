//! Build script: records the git commit for `--version`, and builds the node agent
//! (agent/) as a static musl binary for every node architecture, to be embedded.
//!
//! Why a nested `cargo build` here rather than a separate step: `cargo install --path .`
//! and a plain `cargo build` must produce a plugin that works, and the agent must be built
//! for the nodes' architectures, not the plugin's. Cargo has no stable way to depend on a
//! binary built for another target (artifact dependencies are unstable), so this script
//! runs cargo for the agent itself, in its own target directory (no lock shared with the
//! outer build), with the workspace's `agent` profile.
//!
//! `SIDELOAD_AGENT_DIR=DIR` skips the build and embeds `DIR/sideload-agent-<arch>` instead
//! (scripts/release builds the agents once for all platforms). A target that cannot be
//! built (its rustup target is not installed) is embedded as empty, with a warning: the
//! plugin then refuses nodes of that architecture, naming the missing target.
use std::path::{Path, PathBuf};
use std::process::Command;

/// Node architectures (Kubernetes `kubernetes.io/arch`) and their Rust targets.
const AGENT_TARGETS: &[(&str, &str)] = &[
    ("amd64", "x86_64-unknown-linux-musl"),
    ("arm64", "aarch64-unknown-linux-musl"),
];

fn main() {
    git_commit();
    agents();
}

fn git_commit() {
    let commit = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into());
    let dirty = Command::new("git")
        .args(["status", "--porcelain", "--untracked-files=no"])
        .output()
        .ok()
        .is_some_and(|o| o.status.success() && !o.stdout.is_empty());
    let commit = if dirty && commit != "unknown" {
        format!("{commit}-dirty")
    } else {
        commit
    };
    println!("cargo:rustc-env=SIDELOAD_GIT_COMMIT={commit}");
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/index");
}

fn agents() {
    let manifest_dir = PathBuf::from(env("CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(env("OUT_DIR"));
    println!("cargo:rerun-if-env-changed=SIDELOAD_AGENT_DIR");
    println!("cargo:rerun-if-changed=agent/src");
    println!("cargo:rerun-if-changed=agent/Cargo.toml");
    println!("cargo:rerun-if-changed=Cargo.lock");
    // The workspace manifest holds the agent's build profile.
    println!("cargo:rerun-if-changed=Cargo.toml");
    let prebuilt = std::env::var_os("SIDELOAD_AGENT_DIR").map(PathBuf::from);
    let mut missing = false;
    for (arch, target) in AGENT_TARGETS {
        let embedded = out_dir.join(format!("sideload-agent-{arch}"));
        let bytes = match &prebuilt {
            Some(dir) => {
                let path = dir.join(format!("sideload-agent-{arch}"));
                std::fs::read(&path).unwrap_or_else(|e| {
                    panic!("SIDELOAD_AGENT_DIR: cannot read {}: {e}", path.display())
                })
            }
            None => build_agent(&manifest_dir, target).unwrap_or_else(|why| {
                missing = true;
                println!(
                    "cargo:warning=no node agent for {arch} nodes ({why}); \
                     `rustup target add {target}` and build again to support them"
                );
                Vec::new()
            }),
        };
        std::fs::write(&embedded, bytes).expect("writing the embedded agent");
    }
    // The error a missing agent gives says "`rustup target add` and rebuild": the rebuild
    // must then run this script again, though no source changed. Adding a target creates
    // its directory under the toolchain's rustlib, so watch that directory.
    if missing && let Some(rustlib) = toolchain_rustlib() {
        println!("cargo:rerun-if-changed={}", rustlib.display());
    }
}

/// `<sysroot>/lib/rustlib` of the compiler cargo builds with, where targets are installed.
fn toolchain_rustlib() -> Option<PathBuf> {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let output = Command::new(rustc)
        .args(["--print", "sysroot"])
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    let sysroot = String::from_utf8(output.stdout).ok()?;
    let rustlib = Path::new(sysroot.trim()).join("lib").join("rustlib");
    rustlib.is_dir().then_some(rustlib)
}

/// Builds the agent for `target`, returning the binary's bytes.
fn build_agent(manifest_dir: &Path, target: &str) -> Result<Vec<u8>, String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest_dir.join("target"))
        .join("agent");
    let mut cmd = Command::new(cargo);
    cmd.current_dir(manifest_dir)
        .args([
            "build",
            "--package",
            "sideload-agent",
            "--bin",
            "sideload-agent",
        ])
        .args(["--profile", "agent", "--target", target])
        .arg("--target-dir")
        .arg(&target_dir);
    // The outer build's settings are for the plugin's target, not the agent's.
    for var in [
        "RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_RUSTFLAGS",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
    ] {
        cmd.env_remove(var);
    }
    // Paths remapped, so the agent's bytes (and the plugin's hash) do not depend on where
    // the tree or the cargo home lives: release builds are reproducible.
    let cargo_home = std::env::var("CARGO_HOME")
        .ok()
        .or_else(|| std::env::var("HOME").ok().map(|h| format!("{h}/.cargo")))
        .unwrap_or_default();
    cmd.env(
        "CARGO_ENCODED_RUSTFLAGS",
        format!(
            "--remap-path-prefix={}=kubectl-sideload\x1f--remap-path-prefix={cargo_home}=cargo",
            manifest_dir.display()
        ),
    );
    // The toolchain's own lld links static musl binaries for any target: no cross C
    // toolchain is needed.
    let linker_var = format!(
        "CARGO_TARGET_{}_LINKER",
        target.to_uppercase().replace('-', "_")
    );
    if std::env::var_os(&linker_var).is_none() {
        cmd.env(&linker_var, "rust-lld");
    }
    let output = cmd.output().map_err(|e| format!("cannot run cargo: {e}"))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let last: Vec<&str> = stderr.lines().rev().take(3).collect();
        return Err(last.into_iter().rev().collect::<Vec<_>>().join(" | "));
    }
    let binary = target_dir.join(target).join("agent").join("sideload-agent");
    std::fs::read(&binary).map_err(|e| format!("cannot read {}: {e}", binary.display()))
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("cargo sets {name}"))
}
