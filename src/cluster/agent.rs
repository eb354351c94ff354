//! The node agent (agent/): its binaries embedded in the plugin, one per node
//! architecture; the per-run ConfigMap that delivers them to the helper pods without any
//! pull; and typed calls to it over exec.
//!
//! Why a ConfigMap (Zarf delivers its injector the same way): the helper container starts
//! from an image the node already holds, which may be a tenant's; the agent, not that
//! image's entrypoint, must be the container's command, and it must not need anything of
//! the image (static, no loader, no shell). A ConfigMap holds at most 1 MiB; the agent is
//! about 650 KiB, one ConfigMap per architecture in use.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use sha2::{Digest, Sha256};
use sideload_agent::protocol::{self, Answer, Query, Run};

use crate::cluster::errors::{explain, persist};
use crate::cluster::exec::{self, Output};
use crate::cluster::helper::{MANAGED_BY, RUN_LABEL, Runs};

static AGENT_AMD64: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/sideload-agent-amd64"));
static AGENT_ARM64: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/sideload-agent-arm64"));

/// How long one question to the agent may take (the runtime's own commands have shorter
/// timeouts of their own on the node; this covers the connection).
const QUERY_TIMEOUT: Duration = Duration::from_secs(120);

/// The ConfigMap key holding the binary.
pub const KEY: &str = "agent";
/// Largest ConfigMap the API server stores.
const CONFIGMAP_MAX: usize = 1 << 20;

/// The agent for a node architecture, or why there is none.
pub fn binary(arch: &str) -> Result<&'static [u8], String> {
    let (bytes, target) = match arch {
        "amd64" => (AGENT_AMD64, "x86_64-unknown-linux-musl"),
        "arm64" => (AGENT_ARM64, "aarch64-unknown-linux-musl"),
        other => {
            return Err(format!(
                "no node agent for architecture {other} (amd64 and arm64 are supported)"
            ));
        }
    };
    if bytes.is_empty() {
        return Err(format!(
            "this build of kubectl-sideload has no node agent for {arch} (it was built without \
             the {target} Rust target; `rustup target add {target}` and rebuild)"
        ));
    }
    Ok(bytes)
}

/// `sha256:<hex>` of the agent for `arch`, recorded on the ConfigMap for audits.
pub fn digest(arch: &str) -> Option<String> {
    binary(arch)
        .ok()
        .map(|b| format!("sha256:{}", hex::encode(Sha256::digest(b))))
}

/// The ConfigMap of one run for one architecture.
pub fn configmap_name(run_id: &str, arch: &str) -> String {
    format!("sideload-agent-{run_id}-{arch}")
}

/// The ConfigMap delivering the agent for `arch` to this run's helper pods. Immutable: the
/// kubelet then does not watch it, and nobody can swap the binary under a running pod.
pub fn configmap(namespace: &str, run_id: &str, arch: &str) -> Result<ConfigMap> {
    let bytes = binary(arch).map_err(|e| anyhow!(e))?;
    if bytes.len() > CONFIGMAP_MAX - 1024 {
        bail!(
            "the node agent for {arch} is {} bytes, more than a ConfigMap holds",
            bytes.len()
        );
    }
    Ok(ConfigMap {
        metadata: ObjectMeta {
            name: Some(configmap_name(run_id, arch)),
            namespace: Some(namespace.to_string()),
            labels: Some(BTreeMap::from([
                (MANAGED_BY.0.to_string(), MANAGED_BY.1.to_string()),
                (RUN_LABEL.to_string(), run_id.to_string()),
            ])),
            annotations: Some(BTreeMap::from([
                (
                    "sideload.dev/agent-digest".to_string(),
                    digest(arch).unwrap_or_default(),
                ),
                (
                    "sideload.dev/version".to_string(),
                    crate::version::SHORT.to_string(),
                ),
            ])),
            ..Default::default()
        },
        binary_data: Some(BTreeMap::from([(
            KEY.to_string(),
            ByteString(bytes.to_vec()),
        )])),
        immutable: Some(true),
        ..Default::default()
    })
}

/// Creates the run's agent ConfigMaps, one per architecture.
pub async fn create_configmaps(
    api: &Api<ConfigMap>,
    run_id: &str,
    archs: &[String],
    server_dry_run: bool,
) -> Result<()> {
    let namespace = api.namespace().unwrap_or_default().to_string();
    for arch in archs {
        let cm = configmap(&namespace, run_id, arch)?;
        let params = PostParams {
            dry_run: server_dry_run,
            ..Default::default()
        };
        api.create(&params, &cm)
            .await
            .map_err(|e| explain(e, "create", &format!("configmaps in namespace {namespace}")))?;
    }
    Ok(())
}

/// Names of agent ConfigMaps in the namespace of these runs.
pub async fn list_configmaps(api: &Api<ConfigMap>, runs: Runs<'_>) -> Result<Vec<String>> {
    let params = ListParams::default().labels(&runs.selector());
    Ok(
        persist(Duration::from_secs(30), || api.list_metadata(&params))
            .await
            .map_err(|e| explain(e, "list", "configmaps"))?
            .items
            .into_iter()
            .filter_map(|m| m.metadata.name)
            .collect(),
    )
}

/// Deletes the agent ConfigMaps of these runs; returns their names.
pub async fn delete_configmaps(api: &Api<ConfigMap>, runs: Runs<'_>) -> Result<Vec<String>> {
    let names = list_configmaps(api, runs).await?;
    for name in &names {
        let params = DeleteParams::default();
        match persist(Duration::from_secs(30), || api.delete(name, &params)).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(explain(e, "delete", "configmaps")),
        }
    }
    Ok(names)
}

/// The agent in one running helper pod.
pub struct Agent<'a> {
    pub pods: &'a Api<Pod>,
    pub pod: &'a str,
}

impl Agent<'_> {
    /// One host command fed from `feed`, which writes exactly the number of bytes `run`
    /// announces (see `transfer::Transfer`), sent in websocket frames of `frame` bytes.
    pub async fn run<F>(
        &self,
        run: &Run,
        frame: usize,
        feed: F,
    ) -> Result<(Output, io::Result<u64>)>
    where
        F: FnOnce(&mut dyn Write) -> io::Result<u64> + Send + 'static,
    {
        let argv = argv(protocol::verb::RUN, run)?;
        let (out, written) = exec::run_with_input(self.pods, self.pod, argv, frame, feed).await?;
        tracing::debug!(pod = self.pod, code = out.exit_code, stdout = %out.stdout, stderr = %out.stderr, "agent run finished");
        Ok((out, written))
    }
}

impl Agent<'_> {
    /// A host command fed by someone else (a relay peer): no stdin from the plugin.
    pub async fn run_without_input(&self, run: &Run) -> Result<Output> {
        let out = exec::run(self.pods, self.pod, argv(protocol::verb::RUN, run)?).await?;
        tracing::debug!(pod = self.pod, code = out.exit_code, stdout = %out.stdout, stderr = %out.stderr, "agent run finished");
        Ok(out)
    }
}

/// One node's questions over one exec: the agent's `session` verb answers a [`Query`] per
/// line. Locating the runtime, probing it, listing what the node holds and verifying the
/// import each took an exec of their own before (each a new websocket through the API
/// server and the kubelet, and a new process in the container).
pub struct Session {
    conversation: tokio::sync::Mutex<exec::Conversation>,
}

impl Session {
    pub async fn open(agent: &Agent<'_>) -> Result<Session> {
        let argv = vec![
            protocol::AGENT_PATH.to_string(),
            protocol::verb::SESSION.to_string(),
        ];
        let opened = exec::Conversation::open(agent.pods, agent.pod, argv);
        let conversation = tokio::time::timeout(QUERY_TIMEOUT, opened)
            .await
            .map_err(|_| {
                anyhow!(
                    "the exec into helper pod {} did not open within {} s",
                    agent.pod,
                    QUERY_TIMEOUT.as_secs()
                )
            })??;
        Ok(Session {
            conversation: tokio::sync::Mutex::new(conversation),
        })
    }

    /// One query, answered over the open exec within [`QUERY_TIMEOUT`]: a wedged runtime
    /// or a lost connection fails the step by name instead of hanging the node.
    pub async fn query(&self, query: &Query, what: &str) -> Result<Answer> {
        let line = serde_json::to_string(query).context("encoding the agent request")?;
        let asked = async { self.conversation.lock().await.ask(&line).await };
        let answer = tokio::time::timeout(QUERY_TIMEOUT, asked)
            .await
            .map_err(|_| {
                anyhow!(
                    "the node agent did not answer ({what}) within {} s",
                    QUERY_TIMEOUT.as_secs()
                )
            })?
            .with_context(|| format!("the node agent ({what})"))?;
        tracing::debug!(what, "agent session answered");
        serde_json::from_str(&answer).with_context(|| {
            format!(
                "the node agent's answer ({what}) is not what this plugin expects: {:?}",
                answer.chars().take(200).collect::<String>()
            )
        })
    }
}

fn argv<T: serde::Serialize>(verb: &str, request: &T) -> Result<Vec<String>> {
    Ok(vec![
        protocol::AGENT_PATH.to_string(),
        verb.to_string(),
        serde_json::to_string(request).context("encoding the agent request")?,
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_architectures_are_embedded_and_fit_a_configmap() {
        for arch in ["amd64", "arm64"] {
            let bytes = binary(arch).expect("build.rs embeds every architecture");
            assert!(bytes.starts_with(b"\x7fELF"), "{arch}: not an ELF binary");
            let cm = configmap("kube-system", "r1", arch).unwrap();
            assert_eq!(cm.immutable, Some(true));
            assert!(cm.binary_data.unwrap()[KEY].0.len() < CONFIGMAP_MAX);
        }
        // e_machine: x86-64 is 62, AArch64 is 183.
        assert_eq!(binary("amd64").unwrap()[18], 62);
        assert_eq!(binary("arm64").unwrap()[18], 183);
        assert!(binary("s390x").unwrap_err().contains("s390x"));
    }

    #[test]
    fn requests_are_one_json_argument() {
        let run: Run = serde_json::from_str(
            r#"{"commands":[{"argv":["ctr","version"]}],"stdin":{"mode":"none"}}"#,
        )
        .unwrap();
        let argv = argv(protocol::verb::RUN, &run).unwrap();
        assert_eq!(argv[0], protocol::AGENT_PATH);
        assert_eq!(argv[1], "run");
        let back: Run = serde_json::from_str(&argv[2]).unwrap();
        assert_eq!(back, run);
    }
}
