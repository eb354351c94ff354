//! A kube client built from kubectl's connection flags, resolved once at start.

use anyhow::{Context, Result, anyhow};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

use crate::cli::KubeArgs;
use crate::cluster::credential;
use crate::cluster::errors::{self, Permanent};

/// A connected client plus the namespace workloads are looked up in.
#[derive(Clone)]
pub struct Cluster {
    pub client: Client,
    /// `-n`, else the context's namespace, else `default` (as kubectl does).
    pub namespace: String,
}

/// Builds the client the way kubectl would: `--kubeconfig`, else `$KUBECONFIG` (a list of
/// files, merged), else `~/.kube/config`; then `--context`/`--cluster`/`--user`, and
/// impersonation with `--as`/`--as-group`.
pub async fn connect(args: &KubeArgs) -> Result<Cluster> {
    let options = KubeConfigOptions {
        context: args.context.clone(),
        cluster: args.cluster.clone(),
        user: args.user.clone(),
    };
    let kubeconfig = match &args.kubeconfig {
        Some(path) => Kubeconfig::read_from(path).with_context(|| {
            format!(
                "cannot read kubeconfig {}; check the path given to --kubeconfig",
                path.display()
            )
        })?,
        None => Kubeconfig::read().context(
            "no kubeconfig found; set KUBECONFIG, pass --kubeconfig, or create ~/.kube/config",
        )?,
    };
    let mut config = Config::from_custom_kubeconfig(kubeconfig, &options)
        .await
        .context("kubeconfig is not usable; check --context/--cluster/--user and the file")?;
    if let Some(user) = &args.as_user {
        config.auth_info.impersonate = Some(user.clone());
    }
    if !args.as_group.is_empty() {
        config.auth_info.impersonate_groups = Some(args.as_group.clone());
    }
    if let Some(timeout) = args.request_timeout.filter(|t| !t.is_zero()) {
        // Bounds connecting and each read; an exec stream that is busy sending keeps its
        // own pace, and the helper pod's activeDeadlineSeconds bounds it on the node.
        config.connect_timeout = Some(timeout);
        config.read_timeout = Some(timeout);
    }
    let namespace = args
        .namespace
        .clone()
        .unwrap_or_else(|| config.default_namespace.clone());
    let server = config.cluster_url.to_string();
    if let Some(command) = config
        .auth_info
        .exec
        .as_ref()
        .and_then(|e| e.command.clone())
    {
        let _ = errors::CREDENTIAL_PLUGIN.set(command);
    }
    // kube-rs would run an `exec` credential plugin three times while it builds the client:
    // run it once here and give kube-rs the credential (credential.rs).
    let carried = credential::run_once(&mut config)
        .map_err(|auth| anyhow::Error::new(Permanent(errors::credentials(&auth))))?;
    // kube-rs runs the plugin (through credential.rs's shim) again when its token expires.
    let client = Client::try_from(config);
    // Built: the credential file goes; a refresh later runs the real plugin.
    drop(carried);
    let client = client.map_err(|err| match err {
        kube::Error::Auth(auth) => anyhow::Error::new(Permanent(errors::credentials(&auth))),
        other => anyhow!(other).context(format!(
            "cannot build a client for the API server at {server}"
        )),
    })?;
    Ok(Cluster { client, namespace })
}

/// Whether the cluster is OpenShift (it serves the `security.openshift.io` API group):
/// helper pods then need the privileged SCC, which the dry run mentions up front.
pub async fn is_openshift(client: &Client) -> bool {
    client
        .list_api_groups()
        .await
        .map(|groups| {
            groups
                .groups
                .iter()
                .any(|g| g.name == "security.openshift.io")
        })
        .unwrap_or(false)
}
