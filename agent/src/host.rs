//! Entering the host and starting host commands.
//!
//! The order matters: `enter` is the first thing every verb that touches a path does, so
//! every later path (and every symlink in it) resolves in the host's root, never in the
//! image's. Host commands start with an empty environment plus a fixed `PATH`: the
//! container's environment comes from the image's config (a tenant's `LD_PRELOAD`,
//! `LD_LIBRARY_PATH` …) and must not reach a dynamically linked host binary.

use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use sideload_agent::protocol::{self, Command};

/// Enters the host root mounted at `/host` and makes `/` the working directory.
pub fn enter() -> Result<(), String> {
    std::os::unix::fs::chroot(protocol::HOST_ROOT)
        .map_err(|e| format!("cannot enter the host root at {}: {e}", protocol::HOST_ROOT))?;
    std::env::set_current_dir("/").map_err(|e| format!("cannot chdir to / on the host: {e}"))
}

/// Gives this process a mount namespace of its own, private: no mount it makes propagates
/// back to the container, let alone the node, and all of them vanish when it exits.
/// Must come before [`open_scratch`]: a bind's source must be a mount of the caller's own
/// namespace (mount(2) fails with EINVAL otherwise).
pub fn private_namespace() -> Result<(), String> {
    // SAFETY: plain syscalls with valid arguments; no memory is shared.
    unsafe {
        if libc::unshare(libc::CLONE_NEWNS) != 0 {
            return Err(format!(
                "cannot create a private mount namespace: {}",
                std::io::Error::last_os_error()
            ));
        }
        mount(None, "/", libc::MS_REC | libc::MS_PRIVATE)
    }
}

/// Opens the pod's scratch volume, before [`enter`]: afterwards no path names it.
pub fn open_scratch() -> Result<OwnedFd, String> {
    let dir = std::fs::File::open(protocol::SCRATCH)
        .map_err(|e| format!("cannot open the scratch volume {}: {e}", protocol::SCRATCH))?;
    Ok(dir.into())
}

/// In the private namespace, after [`enter`] (so every path resolves on the host): makes
/// the `writable` host directories writable and binds the scratch volume over
/// `scratch_at`, for this process and its children only.
pub fn private_view(writable: &[String], scratch: Option<(&OwnedFd, &str)>) -> Result<(), String> {
    for dir in writable {
        absolute(dir)?;
        // A bind of a read-only mount starts read-only; remounting that bind without
        // MS_RDONLY makes only this view of `dir` writable.
        // SAFETY: mount(2) with valid C strings.
        unsafe {
            mount(Some(dir), dir, libc::MS_BIND | libc::MS_REC)?;
            mount(None, dir, libc::MS_REMOUNT | libc::MS_BIND)?;
        }
    }
    if let Some((fd, target)) = scratch {
        absolute(target)?;
        // The scratch volume lies outside the host root we entered, so no path names it:
        // with the working directory set to it (fchdir works beyond the root), "." does.
        // SAFETY: fchdir on an open directory, then mount(2) with valid C strings.
        unsafe {
            if libc::fchdir(fd.as_raw_fd()) != 0 {
                return Err(format!(
                    "cannot reach the scratch volume: {}",
                    std::io::Error::last_os_error()
                ));
            }
            let bound = mount(Some("."), target, libc::MS_BIND);
            std::env::set_current_dir("/").map_err(|e| format!("cannot chdir to /: {e}"))?;
            bound?;
        }
    }
    Ok(())
}

/// mount(2) for binds and remounts (no filesystem type, no data).
unsafe fn mount(source: Option<&str>, target: &str, flags: libc::c_ulong) -> Result<(), String> {
    let c = |s: &str| CString::new(s).map_err(|_| format!("path {s:?} contains NUL"));
    let source_c = source.map(c).transpose()?;
    let target_c = c(target)?;
    // SAFETY: the pointers are valid C strings (or NULL) for the duration of the call.
    let rc = unsafe {
        libc::mount(
            source_c.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
            target_c.as_ptr(),
            std::ptr::null(),
            flags,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(format!(
            "cannot mount {} on {target}: {}",
            source.unwrap_or("(remount)"),
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// Host paths in requests are absolute and plain: no `..`, no NUL.
pub fn absolute(path: &str) -> Result<&Path, String> {
    let p = Path::new(path);
    let plain = p.is_absolute()
        && !path.contains('\0')
        && p.components()
            .all(|c| !matches!(c, std::path::Component::ParentDir));
    if plain {
        Ok(p)
    } else {
        Err(format!("host path {path:?} must be absolute, without '..'"))
    }
}

/// A host command ready to spawn: argv[0] an absolute host path, environment fixed.
pub fn command(cmd: &Command) -> Result<std::process::Command, String> {
    let (program, args) = cmd
        .argv
        .split_first()
        .ok_or("a command needs at least a program")?;
    absolute(program)?;
    let mut c = std::process::Command::new(program);
    c.args(args)
        .env_clear()
        .env("PATH", protocol::HOST_PATH)
        .env("HOME", "/root")
        .env("LC_ALL", "C");
    for (key, value) in &cmd.env {
        if key.is_empty() || key.contains('=') || key.as_bytes().contains(&0) {
            return Err(format!("bad environment variable name {key:?}"));
        }
        c.env(key, value);
    }
    c.current_dir("/");
    Ok(c)
}

/// Spawns `cmd` with the given stdio, naming the program on failure. A piped stdin gets a
/// [`STDIN_PIPE`] buffer.
pub fn spawn(cmd: &Command, stdin: Stdio, stdout: Stdio, stderr: Stdio) -> Result<Child, String> {
    command(cmd)?
        .stdin(stdin)
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
        .inspect(|child| {
            if let Some(stdin) = &child.stdin {
                widen(stdin);
            }
        })
        .map_err(|e| {
            format!(
                "cannot run {}: {e}",
                String::from_utf8_lossy(Path::new(&cmd.argv[0]).as_os_str().as_bytes())
            )
        })
}

/// The pipe buffer of an importer's stdin. Linux gives a pipe 64 KiB: the agent, the
/// importer (`ctr` and containerd, `docker load`) and the exec stream behind them then
/// take turns on a few pages at a time, every hop stalling the next. 1 MiB (the default
/// `fs.pipe-max-size`) lets each side run a frame ahead: a 512 MiB cold load of node-a took
/// 10.3-10.8 s instead of 11.7-12.6 s (alternating runs, one build each), and 4 MiB was no
/// better than the default.
pub const STDIN_PIPE: i32 = 1 << 20;

/// Gives `pipe` a [`STDIN_PIPE`] buffer. Best effort: a kernel that refuses (an older one,
/// or a lower `fs.pipe-max-size`) leaves the default, which is only slower.
fn widen(pipe: &impl AsRawFd) {
    // SAFETY: fcntl on an fd this process owns; F_SETPIPE_SZ reads no memory.
    unsafe {
        libc::fcntl(pipe.as_raw_fd(), libc::F_SETPIPE_SZ, STDIN_PIPE);
    }
}

/// Waits for `child`, killing it once `timeout` has passed; returns its exit code
/// (128+N for signal N, [`protocol::TIMED_OUT`] after a timeout).
pub fn wait(child: &mut Child, timeout: Option<Duration>) -> Result<i32, String> {
    let deadline = timeout.map(|t| Instant::now() + t);
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Ok(exit_code(status)),
            Ok(None) => {}
            Err(e) => return Err(format!("waiting for the command: {e}")),
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(protocol::TIMED_OUT);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

pub fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

/// Threads the agent starts get an explicit stack size: std would otherwise read
/// `RUST_MIN_STACK` from the (tenant-controlled) environment.
pub fn thread() -> std::thread::Builder {
    std::thread::Builder::new().stack_size(256 * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_paths_must_be_plain_and_absolute() {
        assert!(absolute("/usr/bin/ctr").is_ok());
        assert!(absolute("usr/bin/ctr").is_err());
        assert!(absolute("/usr/../etc/shadow").is_err());
        assert!(absolute("").is_err());
    }

    #[test]
    fn commands_get_a_fixed_environment() {
        let mut cmd = Command::new(["/usr/bin/env"]);
        cmd.env.insert("TMPDIR".into(), "/var/tmp".into());
        // SAFETY: the test sets a variable before spawning; nothing reads it concurrently.
        unsafe { std::env::set_var("LD_PRELOAD", "/evil.so") };
        let out = command(&cmd).unwrap().output().unwrap();
        let env = String::from_utf8(out.stdout).unwrap();
        assert!(!env.contains("LD_PRELOAD"), "{env}");
        assert!(env.contains("TMPDIR=/var/tmp"), "{env}");
        assert!(
            env.contains(&format!("PATH={}", protocol::HOST_PATH)),
            "{env}"
        );
        let bad = Command {
            argv: vec!["/bin/true".into()],
            env: [("A=B".to_string(), "x".to_string())].into(),
            timeout_secs: None,
        };
        assert!(command(&bad).is_err());
        assert!(
            command(&Command::new(["true"])).is_err(),
            "relative program"
        );
    }

    #[test]
    fn a_command_past_its_timeout_is_killed() {
        let cmd = Command::new(["/bin/sleep", "5"]);
        let mut child = spawn(&cmd, Stdio::null(), Stdio::null(), Stdio::null()).unwrap();
        let started = Instant::now();
        let code = wait(&mut child, Some(Duration::from_millis(100))).unwrap();
        assert_eq!(code, protocol::TIMED_OUT);
        assert!(started.elapsed() < Duration::from_secs(3));
    }

    /// An importer's stdin is a pipe with a 1 MiB buffer, not the default 64 KiB (1 MiB is
    /// Linux's default `fs.pipe-max-size`, and root may go past it).
    #[test]
    fn an_importers_stdin_pipe_holds_a_mebibyte() {
        let cmd = Command::new(["/bin/cat"]);
        let mut child = spawn(&cmd, Stdio::piped(), Stdio::null(), Stdio::null()).unwrap();
        let stdin = child.stdin.take().unwrap();
        // SAFETY: F_GETPIPE_SZ on an fd this process owns.
        let size = unsafe { libc::fcntl(stdin.as_raw_fd(), libc::F_GETPIPE_SZ) };
        drop(stdin);
        child.wait().unwrap();
        assert_eq!(size, STDIN_PIPE);
    }
}
