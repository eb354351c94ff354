//! End-to-end: the kubeconfigs users really have (issue 13). Cloud clusters (EKS, GKE,
//! AKS) authenticate through an `exec` credential plugin, others with a bearer token. Both
//! users here are a ServiceAccount bound to exactly the roles in plugin-manifest/, its token
//! from the TokenRequest API; the plugin loads, dry-runs and patches a workload with each,
//! and a credential plugin that fails is named with what it said.

mod util;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{ClusterRoleBinding, RoleBinding};
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::{Value, json};
use util::*;

/// The test cluster's server and CA, from the admin kubeconfig.
fn cluster_entry() -> Value {
    let text = std::fs::read_to_string(admin_kubeconfig()).unwrap();
    let config: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    serde_json::to_value(&config["clusters"][0]["cluster"]).unwrap()
}

/// A kubeconfig at `path` whose only user is `user` (a kubeconfig `user:` entry).
fn kubeconfig(path: &Path, user: Value) {
    let config = json!({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "e2e", "cluster": cluster_entry()}],
        "users": [{"name": "u", "user": user}],
        "contexts": [{"name": "u@e2e", "context": {"cluster": "e2e", "user": "u"}}],
        "current-context": "u@e2e",
    });
    std::fs::write(path, serde_yaml::to_string(&config).unwrap()).unwrap();
}

/// An executable shell script at `path`.
fn script(path: &Path, body: &str) {
    std::fs::write(path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700)).unwrap();
}

/// The exec user entry kubectl and client-go write for a credential plugin.
fn exec_user(command: &Path) -> Value {
    json!({"exec": {
        "apiVersion": "client.authentication.k8s.io/v1",
        "command": command,
        "interactiveMode": "Never",
    }})
}

/// A ServiceAccount bound to the documented ClusterRole and (in kube-system, the default
/// helper namespace) the documented Role; the bindings go when it is dropped.
struct BoundAccount {
    client: kube::Client,
    namespace: String,
    name: String,
    bindings: String,
}

impl BoundAccount {
    async fn new(client: &kube::Client, namespace: &str) -> BoundAccount {
        let name = "sideload-exec".to_string();
        let bindings = unique("sl-auth");
        let sa: ServiceAccount =
            serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
        Api::<ServiceAccount>::namespaced(client.clone(), namespace)
            .create(&PostParams::default(), &sa)
            .await
            .unwrap();
        let subject = json!([{"kind": "ServiceAccount", "name": name, "namespace": namespace}]);
        let crb: ClusterRoleBinding = serde_json::from_value(json!({
            "metadata": {"name": bindings},
            "subjects": subject,
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "kubectl-sideload"},
        }))
        .unwrap();
        Api::<ClusterRoleBinding>::all(client.clone())
            .create(&PostParams::default(), &crb)
            .await
            .unwrap();
        let rb: RoleBinding = serde_json::from_value(json!({
            "metadata": {"name": bindings, "namespace": "kube-system"},
            "subjects": subject,
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "kubectl-sideload-helper"},
        }))
        .unwrap();
        Api::<RoleBinding>::namespaced(client.clone(), "kube-system")
            .create(&PostParams::default(), &rb)
            .await
            .unwrap();
        rules_in_effect(
            client,
            &format!("system:serviceaccount:{namespace}:{name}"),
            "kube-system",
            &documented_rules("clusterrole.yaml"),
            &documented_rules("role.yaml"),
        )
        .await;
        BoundAccount {
            client: client.clone(),
            namespace: namespace.to_string(),
            name,
            bindings,
        }
    }

    /// A token for the account from the TokenRequest API, as a cloud's plugin would fetch.
    async fn token(&self) -> String {
        let request: TokenRequest =
            serde_json::from_value(json!({"spec": {"audiences": [], "expirationSeconds": 3600}}))
                .unwrap();
        let made = Api::<ServiceAccount>::namespaced(self.client.clone(), &self.namespace)
            .create_token_request(&self.name, &PostParams::default(), &request)
            .await
            .unwrap();
        made.status.unwrap().token
    }
}

impl Drop for BoundAccount {
    fn drop(&mut self) {
        let (client, name) = (self.client.clone(), self.bindings.clone());
        // Drop is synchronous; the namespace (and the account in it) goes with TestNamespace.
        let _ = std::thread::spawn(move || {
            tokio::runtime::Runtime::new().unwrap().block_on(async {
                let dp = DeleteParams::default();
                let _ = Api::<ClusterRoleBinding>::all(client.clone())
                    .delete(&name, &dp)
                    .await;
                let _ = Api::<RoleBinding>::namespaced(client, "kube-system")
                    .delete(&name, &dp)
                    .await;
            })
        })
        .join();
    }
}

fn with_kubeconfig(kc: &Path, args: &[&str]) -> std::process::Output {
    let mut cmd = plugin();
    cmd.arg("--kubeconfig").arg(kc).args(args);
    run(cmd)
}

#[tokio::test(flavor = "multi_thread")]
async fn exec_plugin_and_bearer_token_users_load_dry_run_and_patch_a_workload() {
    let _logs = LogsOnFailure;
    let client = admin_client().await;
    let ns = TestNamespace::new(&client, "sl-auth").await;
    let account = BoundAccount::new(&client, &ns.name).await;
    let token = account.token().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();

    // The credential plugin: prints an ExecCredential and leaves a mark that it ran.
    let ran: PathBuf = d.join("ran");
    let credential = json!({
        "apiVersion": "client.authentication.k8s.io/v1",
        "kind": "ExecCredential",
        // An expiry, as a cloud CLI's get-token gives: kube-rs then keeps it refreshable.
        "status": {"token": token, "expirationTimestamp": "2099-01-01T00:00:00Z"},
    });
    let plugin_path = d.join("get-token");
    script(
        &plugin_path,
        &format!(
            "echo ran >> '{}'\ncat <<'EOF'\n{credential}\nEOF",
            ran.display()
        ),
    );
    let exec_kc = d.join("exec.kubeconfig");
    kubeconfig(&exec_kc, exec_user(&plugin_path));
    let token_kc = d.join("token.kubeconfig");
    kubeconfig(&token_kc, json!({"token": token}));

    let repo_name = format!("sideload.test/{}", unique("auth"));
    let (v1, v2) = (d.join("v1.tar"), d.join("v2.tar"));
    let args = ["--layers", "1", "--layer-mib", "1"];
    make_image(&format!("{repo_name}:v1"), &v1, &args);
    make_image(&format!("{repo_name}:v2"), &v2, &args);
    let (v1, v2) = (v1.to_str().unwrap(), v2.to_str().unwrap());
    let nodes = "node-a,node-b";

    // Through the exec plugin: a load, a dry run, and a workload moved to v2.
    let out = with_kubeconfig(&exec_kc, &[v1, "--nodes", nodes, "-o", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    // Once per run: kube-rs alone would run it three times while building its client.
    let runs = std::fs::read_to_string(&ran).unwrap_or_default();
    assert_eq!(
        runs.lines().count(),
        1,
        "the credential plugin ran {runs:?}"
    );
    let web = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": {
                "nodeSelector": {"pool": "blue"},
                "terminationGracePeriodSeconds": 1,
                "containers": [{"name": "app", "image": format!("{repo_name}:v1"), "imagePullPolicy": "Never"}],
            }},
        }
    });
    let web: Deployment = serde_json::from_value(web).unwrap();
    Api::<Deployment>::namespaced(client.clone(), &ns.name)
        .create(&PostParams::default(), &web)
        .await
        .unwrap();
    let dry = with_kubeconfig(&exec_kc, &[v2, "--nodes", nodes, "--dry-run=server"]);
    assert!(dry.status.success(), "{}", stderr(&dry));
    let moved = with_kubeconfig(
        &exec_kc,
        &[
            v2,
            "--nodes",
            nodes,
            "--workload",
            "deploy/web",
            "-n",
            &ns.name,
            "--yes",
            "--rollout-timeout",
            "120s",
            "-o",
            "json",
        ],
    );
    assert!(moved.status.success(), "{}", stderr(&moved));
    let report = json_out(&moved);
    assert_eq!(report["workloads"][0]["rolled_out"], true, "{report}");

    // With a plain bearer token: the same user, the image already there.
    let again = with_kubeconfig(&token_kc, &[v2, "--nodes", nodes]);
    assert!(again.status.success(), "{}", stderr(&again));
    assert!(
        stdout(&again).contains("already present"),
        "{}",
        stdout(&again)
    );
    let dry = with_kubeconfig(&token_kc, &[v1, "--nodes", nodes, "--dry-run"]);
    assert!(dry.status.success(), "{}", stderr(&dry));

    // A credential plugin that fails: the error names it and what it said, not the network.
    let broken = d.join("broken-get-token");
    script(
        &broken,
        "echo 'no session for sideload-exec: log in first' >&2\nexit 3",
    );
    let broken_kc = d.join("broken.kubeconfig");
    kubeconfig(&broken_kc, exec_user(&broken));
    let failed = with_kubeconfig(&broken_kc, &[v2, "--nodes", nodes]);
    assert_eq!(failed.status.code(), Some(1), "{}", stderr(&failed));
    let err = stderr(&failed);
    assert!(err.contains("cannot get credentials"), "{err}");
    assert!(err.contains("broken-get-token"), "{err}");
    assert!(err.contains("no session for sideload-exec"), "{err}");
    assert!(!err.contains("network"), "{err}");

    for node in ["node-a", "node-b"] {
        node_remove_image(node, &format!("{repo_name}:v1"));
        node_remove_image(node, &format!("{repo_name}:v2"));
    }
    drop(account);
}
