//! Shared helpers for the CLI and end-to-end tests: the plugin binary, the test cluster's
//! kubeconfig and scripts, and log tails when an e2e test fails.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod};
use kube::api::{Api, DeleteParams, ListParams, LogParams, PostParams};
use serde_json::{Value, json};

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Where `tests/cluster/up` keeps kubeconfigs and logs.
pub fn e2e_dir() -> PathBuf {
    std::env::var_os("SIDELOAD_E2E_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".e2e"))
}

pub fn admin_kubeconfig() -> PathBuf {
    e2e_dir().join("kubeconfig")
}

pub fn limited_kubeconfig() -> PathBuf {
    e2e_dir().join("kubeconfig-limited")
}

/// Admin on the second API server, whose exec speaks only `v4.channel.k8s.io`
/// (tests/cluster/README.md).
pub fn v4_kubeconfig() -> PathBuf {
    e2e_dir().join("kubeconfig-v4")
}

/// The plugin binary cargo built for this test run.
pub fn plugin() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kubectl-sideload"));
    cmd.env_remove("KUBECONFIG").stdin(Stdio::null());
    cmd
}

/// The plugin against the test cluster as admin.
pub fn sideload(args: &[&str]) -> Output {
    let mut cmd = plugin();
    cmd.arg("--kubeconfig").arg(admin_kubeconfig()).args(args);
    run(cmd)
}

pub fn run(mut cmd: Command) -> Output {
    let out = cmd.output().expect("spawn");
    eprintln!(
        "$ {:?}\nexit: {:?}\nstdout:\n{}\nstderr:\n{}",
        cmd,
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `tests/cluster/make-image REF OUT [args…]`
pub fn make_image(reference: &str, out: &Path, args: &[&str]) {
    let mut cmd = Command::new(repo().join("tests/cluster/make-image"));
    cmd.arg(reference).arg(out).args(args);
    let output = run(cmd);
    assert!(output.status.success(), "make-image failed");
}

/// `tests/cluster/fault ARGS…`; panics with its output when it fails.
pub fn fault(args: &[&str]) {
    let out = Command::new(repo().join("tests/cluster/fault"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "tests/cluster/fault {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `tests/cluster/node-ctr NODE args…`, stdout.
pub fn node_ctr(node: &str, args: &[&str]) -> String {
    let mut cmd = Command::new(repo().join("tests/cluster/node-ctr"));
    cmd.arg(node).args(args);
    let out = cmd.output().expect("node-ctr");
    assert!(
        out.status.success(),
        "node-ctr {node} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `tests/cluster/node-crictl NODE args…`, stdout.
///
/// CRI-O fails a whole listing while any image in its storage is half written ("locating
/// item named \"manifest\" for image …"): tests run side by side, so another test's
/// import on the node is retried past, for up to 10 s. (The plugin never lists: it reads
/// the storage's records and inspects only its own image.)
pub fn node_crictl(node: &str, args: &[&str]) -> String {
    let mut out;
    let mut tries = 0;
    loop {
        let mut cmd = Command::new(repo().join("tests/cluster/node-crictl"));
        cmd.arg(node).args(args);
        out = cmd.output().expect("node-crictl");
        tries += 1;
        let half_written = String::from_utf8_lossy(&out.stderr).contains("locating item named");
        if out.status.success() || !half_written || tries == 40 {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(
        out.status.success(),
        "node-crictl {node} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Image refs the node's runtime holds: containerd's `k8s.io` namespace, or on the CRI-O
/// node what CRI lists (its repo tags).
pub fn node_images(node: &str) -> Vec<String> {
    if node == CRIO_NODE {
        let listed: serde_json::Value =
            serde_json::from_str(&node_crictl(node, &["images", "-o", "json"])).unwrap();
        return listed["images"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|i| i["repoTags"].as_array().cloned().unwrap_or_default())
            .filter_map(|t| t.as_str().map(str::to_string))
            .collect();
    }
    node_ctr(node, &["-n", "k8s.io", "images", "ls", "-q"])
        .lines()
        .map(str::to_string)
        .collect()
}

/// What run `run` may leave in a node's runtime after it failed or was stopped: nothing
/// under its staging names, and `reference` either absent or whole (containerd's `images
/// check` says complete; CRI-O's store names an image only once it is whole). Returns the
/// problems. Other runs' staging names are theirs: tests run side by side.
pub fn node_half_states(node: &str, reference: &str, run: &str) -> Vec<String> {
    let staging = format!("sideload.invalid/partial:{run}-");
    let mut problems: Vec<String> = node_images(node)
        .into_iter()
        .filter(|r| r.starts_with(&staging))
        .map(|r| format!("{node}: staging image {r} left"))
        .collect();
    if node != CRIO_NODE && node_images(node).iter().any(|r| r == reference) {
        let check = node_ctr(
            node,
            &[
                "-n",
                "k8s.io",
                "images",
                "check",
                &format!("name=={reference}"),
            ],
        );
        if !check.lines().skip(1).all(|l| l.contains("complete")) {
            problems.push(format!("{node}: {reference} is not whole:\n{check}"));
        }
    }
    problems
}

/// Asserts each node lists `reference`, then removes it there (the test's own image).
pub fn assert_listed_then_remove(nodes: &[&str], reference: &str) {
    for node in nodes {
        assert!(
            node_images(node).iter().any(|r| r == reference),
            "{reference} missing on {node}"
        );
        node_remove_image(node, reference);
    }
}

/// Removes an image from a node, so tests start from "not there".
pub fn node_remove_image(node: &str, reference: &str) {
    let mut cmd = if node == CRIO_NODE {
        let mut cmd = Command::new(repo().join("tests/cluster/node-crictl"));
        cmd.args([node, "rmi", reference]);
        cmd
    } else {
        let mut cmd = Command::new(repo().join("tests/cluster/node-ctr"));
        cmd.args([node, "-n", "k8s.io", "images", "rm", "--sync", reference]);
        cmd
    };
    let _ = cmd.output();
}

/// Every node of the test cluster (tests/cluster/README.md).
pub const NODES: [&str; 5] = ["node-a", "node-b", "node-c", "node-d", "node-e"];
/// The containerd nodes (1.6, 1.7, 2.4, and 2.4 laid out like k3s), where `node_ctr` works.
pub const CONTAINERD_NODES: [&str; 4] = ["node-a", "node-b", "node-c", "node-e"];
/// The node laid out like k3s (kubelet v1.34.4+k3s1, containerd under /run/k3s).
pub const K3S_NODE: &str = "node-e";
/// The CRI-O node, laid out like RHCOS: no ctr.
pub const CRIO_NODE: &str = "node-d";

/// Polls `check` until it returns `Some`, or panics after `timeout` naming `what`.
pub fn eventually<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = check() {
            return v;
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// A unique-enough suffix for names in one test run.
pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "{prefix}-{:x}{:x}",
        std::process::id() % 4096,
        nanos % 65536
    )
}

/// On a failing e2e test, prints the tails of the cluster's logs (issue 2: "a failing e2e
/// test prints the tail of the relevant ones"). Hold one for the test's whole body.
pub struct LogsOnFailure;

impl Drop for LogsOnFailure {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let dir = e2e_dir().join("logs");
        let Ok(entries) = std::fs::read_dir(&dir) else {
            eprintln!("(no logs under {})", dir.display());
            return;
        };
        let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        paths.sort();
        for path in paths {
            // Kubelet and containerd logs say why a pod or an import failed.
            let name = path
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            if !(name.contains("kubelet")
                || name.contains("containerd")
                || name.contains("apiserver"))
            {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(15)..];
            eprintln!(
                "==> {} (last {} lines) <==\n{}",
                path.display(),
                tail.len(),
                tail.join("\n")
            );
        }
    }
}

/// Objects of ours (helper pods, agent ConfigMaps, run Leases) currently in `namespace`:
/// `pod/NAME`, `configmap/NAME`, `lease/NAME`.
pub async fn helper_pods(client: &kube::Client, namespace: &str) -> Vec<String> {
    let ours = ListParams::default().labels("app.kubernetes.io/managed-by=kubectl-sideload");
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let mut names: Vec<String> = pods
        .list_metadata(&ours)
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|p| p.metadata.name)
        .map(|n| format!("pod/{n}"))
        .collect();
    names.extend(
        maps.list_metadata(&ours)
            .await
            .unwrap()
            .items
            .into_iter()
            .filter_map(|m| m.metadata.name)
            .map(|n| format!("configmap/{n}")),
    );
    let leases: Api<Lease> = Api::namespaced(client.clone(), namespace);
    names.extend(
        leases
            .list_metadata(&ours)
            .await
            .unwrap()
            .items
            .into_iter()
            .filter_map(|m| m.metadata.name)
            .map(|n| format!("lease/{n}")),
    );
    names
}

/// Runs a pod with `imagePullPolicy: Never` pinned to `node` and returns its log once it
/// runs: the proof that the kubelet can use the sideloaded image.
pub async fn run_pod_on(client: &kube::Client, namespace: &str, node: &str, image: &str) -> String {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let name = unique(&format!("probe-{node}"));
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "nodeName": node,
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 1,
            "tolerations": [{"operator": "Exists"}],
            "containers": [{"name": "app", "image": image, "imagePullPolicy": "Never"}]
        }
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    let mut phase_detail = String::new();
    for _ in 0..120 {
        let p = pods.get(&name).await.unwrap();
        let status = p.status.unwrap_or_default();
        if status.phase.as_deref() == Some("Running") {
            let mut logs = String::new();
            for _ in 0..20 {
                logs = pods
                    .logs(&name, &LogParams::default())
                    .await
                    .unwrap_or_default();
                if !logs.is_empty() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            let _ = pods
                .delete(&name, &DeleteParams::default().grace_period(0))
                .await;
            return logs;
        }
        phase_detail = format!("{:?}", status.container_statuses);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let _ = pods
        .delete(&name, &DeleteParams::default().grace_period(0))
        .await;
    panic!("pod with {image} on {node} never ran: {phase_detail}");
}

/// The report's row for `node`; panics naming the node and the report when it has none.
pub fn node_row<'a>(report: &'a Value, node: &str) -> &'a Value {
    report["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == node)
        .unwrap_or_else(|| panic!("no row for {node} in {report}"))
}

pub fn statuses(report: &Value) -> Vec<(String, String)> {
    real_rows(report)
        .map(|n| {
            (
                n["name"].as_str().unwrap().to_string(),
                n["status"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// The report's node rows, without the API-only nodes `fake_nodes` (tests/e2e.rs) creates
/// for a while: a run over every node, beside that test, also lists them (as skipped).
pub fn real_rows(report: &Value) -> impl Iterator<Item = &Value> {
    report["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| !n["name"].as_str().unwrap_or_default().starts_with("fake-"))
}

/// A client for the test cluster as admin, for assertions the plugin's output cannot make.
pub async fn admin_client() -> kube::Client {
    let kubeconfig = kube::config::Kubeconfig::read_from(admin_kubeconfig())
        .expect("run tests/cluster/up first");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    kube::Client::try_from(config).unwrap()
}

/// The plugin's stdout as JSON (`-o json`).
pub fn json_out(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", stdout(out)))
}

/// A namespace for one test (workloads and helper pods), deleted when dropped, also when
/// the test fails.
pub struct TestNamespace {
    pub name: String,
}

impl TestNamespace {
    pub async fn new(client: &kube::Client, prefix: &str) -> TestNamespace {
        let name = unique(prefix);
        let namespaces: Api<Namespace> = Api::all(client.clone());
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}
        }))
        .unwrap();
        namespaces
            .create(&PostParams::default(), &ns)
            .await
            .unwrap();
        TestNamespace { name }
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop cannot await; a thread with its own runtime can.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Runtime::new().unwrap();
            rt.block_on(async {
                let namespaces: Api<Namespace> = Api::all(admin_client().await);
                let _ = namespaces.delete(&name, &DeleteParams::default()).await;
            });
        })
        .join();
    }
}

/// A TCP proxy in front of the API server that counts the bytes the client sends: what
/// the plugin uploaded, measured outside the plugin (issue 10). It can also hold the
/// client's upload to a fixed rate, a narrow link that no machine load makes wider.
pub struct CountingProxy {
    pub kubeconfig: PathBuf,
    sent: std::sync::Arc<std::sync::atomic::AtomicU64>,
    _dir: tempfile::TempDir,
}

impl CountingProxy {
    /// Starts the proxy on 127.0.0.1 (the API server's certificate names it) and writes an
    /// admin kubeconfig that goes through it.
    pub async fn start() -> CountingProxy {
        Self::start_capped(None).await
    }

    /// As `start`, with the client's upload held to `cap` bytes per second when given: on
    /// average since the proxy started, over all its connections together.
    pub async fn start_capped(cap: Option<u64>) -> CountingProxy {
        use std::sync::atomic::{AtomicU64, Ordering};
        let began = std::time::Instant::now();
        let text = std::fs::read_to_string(admin_kubeconfig()).unwrap();
        let server = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("server: "))
            .expect("the kubeconfig names a server")
            .trim()
            .to_string();
        let upstream = server.trim_start_matches("https://").to_string();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let sent = std::sync::Arc::new(AtomicU64::new(0));
        let counter = sent.clone();
        tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let upstream = upstream.clone();
                let counter = counter.clone();
                tokio::spawn(async move {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else {
                        return;
                    };
                    let (mut from_client, mut to_client) = client.into_split();
                    let (mut from_server, mut to_server) = server.into_split();
                    // Counted as it passes, not when the connection ends.
                    let up = async move {
                        let mut buf = vec![0u8; 64 * 1024];
                        while let Ok(n) = from_client.read(&mut buf).await {
                            if n == 0 || to_server.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                            let total = counter.fetch_add(n as u64, Ordering::SeqCst) + n as u64;
                            if let Some(cap) = cap {
                                // Ahead of the cap: wait until the total is due.
                                let due = Duration::from_secs_f64(total as f64 / cap as f64);
                                tokio::time::sleep_until((began + due).into()).await;
                            }
                        }
                        let _ = to_server.shutdown().await;
                    };
                    let down = async move {
                        let _ = tokio::io::copy(&mut from_server, &mut to_client).await;
                        let _ = to_client.shutdown().await;
                    };
                    tokio::join!(up, down);
                });
            }
        });
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = dir.path().join("kubeconfig-proxy");
        std::fs::write(
            &kubeconfig,
            text.replace(&server, &format!("https://127.0.0.1:{port}")),
        )
        .unwrap();
        CountingProxy {
            kubeconfig,
            sent,
            _dir: dir,
        }
    }

    /// Bytes clients sent through the proxy so far.
    pub async fn sent(&self) -> u64 {
        self.sent.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// Runs the plugin as admin through `kubeconfig`, off the async runtime's threads.
pub async fn sideload_via(kubeconfig: &Path, args: &[&str]) -> Output {
    let mut cmd = plugin();
    cmd.arg("--kubeconfig").arg(kubeconfig).args(args);
    tokio::task::spawn_blocking(move || run(cmd)).await.unwrap()
}

/// The config digest (`sha256:…`) of the archive's first image, as `inspect` reports it:
/// what CRI's image id must be once the image is loaded.
pub fn config_of(tar: &Path) -> String {
    let out = run({
        let mut c = plugin();
        c.args(["inspect", tar.to_str().unwrap(), "-o", "json"]);
        c
    });
    json_out(&out)["images"][0]["config"]["digest"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Runs `cmd` (a plugin load with `-o json`) with one byte of its stream flipped on the
/// wire at byte `at` (the e2e build's `SIDELOAD_E2E_FLIP_WIRE_BYTE`): the run must fail.
/// Its report.
pub fn run_with_byte_flipped(mut cmd: Command, at: u64) -> serde_json::Value {
    cmd.env("SIDELOAD_E2E_FLIP_WIRE_BYTE", at.to_string());
    let out = run(cmd);
    assert!(
        !out.status.success(),
        "a corrupted stream must fail the run"
    );
    json_out(&out)
}

/// A plugin run held at one byte of its first stream by the e2e build's pause hook
/// (`SIDELOAD_E2E_PAUSE_AT_BYTE`), so a test can act at a known point of a transfer.
/// Dropped unreleased (a failed assertion), the run is killed.
pub struct Held {
    child: Option<std::process::Child>,
    paused: PathBuf,
    _dir: tempfile::TempDir,
}

impl Held {
    /// Starts `cmd` (a [`plugin`] command; stdout and stderr are piped) to be held at byte
    /// `at`, and returns once it is. Panics with the plugin's stderr if the run ended first.
    pub fn start(mut cmd: Command, at: u64) -> Held {
        let dir = tempfile::tempdir().unwrap();
        let paused = dir.path().join("paused");
        cmd.env("SIDELOAD_E2E_PAUSE_AT_BYTE", at.to_string())
            .env("SIDELOAD_E2E_PAUSE_FILE", &paused)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let held = eventually("the stream to be held", Duration::from_secs(120), || {
            if child.try_wait().unwrap().is_some() {
                return Some(false);
            }
            paused.exists().then_some(true)
        });
        if !held {
            let out = child.wait_with_output().unwrap();
            panic!(
                "the run ended before its stream reached byte {at}; the plugin said:\n{}",
                stderr(&out)
            );
        }
        Held {
            child: Some(child),
            paused,
            _dir: dir,
        }
    }

    /// Lets the stream go on; the run's output once it has ended.
    pub async fn release(mut self) -> Output {
        std::fs::remove_file(&self.paused).unwrap();
        let child = self.child.take().unwrap();
        tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
            .await
            .unwrap()
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The API server's RBAC authorizer learns of new roles and bindings from its informers, a
/// moment after they are created (a CI run once saw "cannot list nodes" for a user whose
/// binding had just been made). Waits until every rule given to `user` (cluster-wide, and
/// in `ns`) is in effect, asked of that same authorizer, so a denial a run reports is
/// never the cache's lag.
pub async fn rules_in_effect(
    client: &kube::Client,
    user: &str,
    ns: &str,
    cluster: &[k8s_openapi::api::rbac::v1::PolicyRule],
    namespaced: &[k8s_openapi::api::rbac::v1::PolicyRule],
) {
    use k8s_openapi::api::authorization::v1::{
        ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
    };
    let reviews: Api<SubjectAccessReview> = Api::all(client.clone());
    let rules = cluster
        .iter()
        .map(|rule| (None, rule))
        .chain(namespaced.iter().map(|rule| (Some(ns.to_string()), rule)));
    for (namespace, rule) in rules {
        let first = |list: &Option<Vec<String>>| list.as_ref().and_then(|l| l.first()).cloned();
        let resource = first(&rule.resources).unwrap();
        let (resource, subresource) = match resource.split_once('/') {
            Some((r, sub)) => (r.to_string(), Some(sub.to_string())),
            None => (resource, None),
        };
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(user.to_string()),
                resource_attributes: Some(ResourceAttributes {
                    group: first(&rule.api_groups),
                    resource: Some(resource),
                    subresource,
                    verb: Some(rule.verbs[0].clone()),
                    namespace,
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let start = Instant::now();
        loop {
            let answer = reviews
                .create(&PostParams::default(), &review)
                .await
                .unwrap();
            if answer.status.is_some_and(|s| s.allowed) {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "{user}'s rule {rule:?} not in effect after 30 s"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// The rules of a role in plugin-manifest/ (`clusterrole.yaml`, `role.yaml`).
pub fn documented_rules(file: &str) -> Vec<k8s_openapi::api::rbac::v1::PolicyRule> {
    let text = std::fs::read_to_string(repo().join("plugin-manifest").join(file)).unwrap();
    // Either kind: only the rules are read (k8s-openapi would refuse the other kind).
    let role: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    serde_yaml::from_value(role["rules"].clone()).unwrap()
}
