//! Everything that talks to the API server: the client, nodes, the helper pod and exec.

pub mod agent;
pub mod client;
pub mod credential;
pub mod errors;
pub mod exec;
pub mod helper;
pub mod lease;
pub mod nodes;
