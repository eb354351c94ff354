//! sideload-agent: the program that runs inside kubectl-sideload's helper pod.
//!
//! The helper container starts from whatever image the node already holds (an air-gapped
//! node can pull nothing), so nothing may depend on that image's files or config: a tenant
//! controls it. The agent is a static binary delivered in a ConfigMap; it is the
//! container's command and the target of every exec. It never reads a file of the image,
//! ignores its environment, enters the host's root (mounted at [`protocol::HOST_ROOT`]) and
//! runs host tools there with a fixed environment, so no dynamic loader or shell ever sees a
//! tenant's `/etc/ld.so.preload` or `LD_PRELOAD`.
//!
//! This library is the wire protocol (requests, and the framing of compressed streams);
//! the binary is `src/main.rs`.

pub mod frames;
pub mod protocol;
