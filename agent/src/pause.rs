//! The container's main process. It must not be the image's entrypoint (a tenant's
//! program), so it is the agent: PID 1 of the helper container, reaping whatever exec'd
//! commands leave behind, until the pod is stopped.

use sideload_agent::protocol;

/// SIGTERM (pod deletion), SIGINT and SIGHUP end it at once: PID 1 gets no default signal
/// handling, so without handlers the kubelet would wait out the grace period.
extern "C" fn stop(_: libc::c_int) {
    // SAFETY: _exit is async-signal-safe.
    unsafe { libc::_exit(0) }
}

pub fn run() -> Result<i32, String> {
    // SAFETY: installing a handler that only calls an async-signal-safe function.
    unsafe {
        for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            libc::signal(sig, stop as *const () as libc::sighandler_t);
        }
    }
    // Nothing to read or resolve here, but entering the host root first keeps the rule
    // simple: the agent never looks at the image. (It also releases the image's rootfs
    // as working directory.)
    crate::host::enter()?;
    eprintln!("{} ready", protocol::version());
    loop {
        // Blocks until an orphan re-parented to us exits; with none, ECHILD at once.
        // SAFETY: waitpid with a null status pointer.
        let reaped = unsafe { libc::waitpid(-1, std::ptr::null_mut(), 0) };
        if reaped <= 0 {
            std::thread::sleep(std::time::Duration::from_secs(1));
        }
    }
}
