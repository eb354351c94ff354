//! End-to-end faults during a transfer (issue 11): the node's kubelet restarted, its
//! runtime restarted, the API server down for seconds, the node going NotReady. Each at a
//! known point: the e2e build's pause hook (`SIDELOAD_E2E_PAUSE_AT_BYTE`) holds the stream
//! after its first 16 MiB until the fault is in place, then lets it go on. Each time the
//! node is retried with a new helper (and loads) or is reported failed with the reason;
//! nothing of the run is left in the API or on the node, and the image is whole or absent.
//!
//! These stop cluster components, so they run one at a time, after the other e2e tests
//! (`tests/run`: `--test e2e_faults -- --test-threads=1`).

mod util;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use util::*;

const PAUSE_AT: u64 = 16 << 20;

/// A kubelet stopped by a test is started again however the test ends.
struct KubeletBack(&'static str);

impl Drop for KubeletBack {
    fn drop(&mut self) {
        let name = format!("{}-kubelet", self.0);
        let _ = Command::new(repo().join("tests/cluster/fault"))
            .args(["start", &name])
            .status();
    }
}

/// The controller-manager, stopped by a test, is started again however the test ends.
struct ControllerManagerBack;

impl Drop for ControllerManagerBack {
    fn drop(&mut self) {
        let _ = Command::new(repo().join("tests/cluster/fault"))
            .args(["start", "kube-controller-manager"])
            .status();
    }
}

/// Loads `tar` onto `node`, holding the stream at [`PAUSE_AT`] while `break_it` runs, and
/// returns the plugin's output (JSON report on stdout).
async fn load_through(
    ns: &str,
    tar: &Path,
    node: &str,
    extra: &[&str],
    break_it: impl FnOnce(),
) -> Output {
    let mut cmd = plugin();
    cmd.arg("--kubeconfig")
        .arg(admin_kubeconfig())
        .arg(tar)
        .args(["--nodes", node, "--helper-namespace", ns, "-o", "json"])
        .args(extra);
    let held = Held::start(cmd, PAUSE_AT);
    break_it();
    let out = held.release().await;
    eprintln!("stderr:\n{}", stderr(&out));
    out
}

/// The run left nothing: no object in the API, no staging or half image on the node.
async fn nothing_left(client: &kube::Client, ns: &str, node: &str, reference: &str, run: &str) {
    let left = helper_pods(client, ns).await;
    assert!(left.is_empty(), "left behind: {left:?}");
    let half = node_half_states(node, reference, run);
    assert!(half.is_empty(), "{half:?}");
}

/// The node was retried once and loaded: the first attempt failed, the second (a new
/// helper, the inventory taken again) loaded it, and a rerun finds it complete.
async fn retried_and_loaded(
    out: &Output,
    client: &kube::Client,
    ns: &str,
    node: &str,
    tar: &Path,
    reference: &str,
) {
    assert!(
        out.status.success(),
        "the retry must load it: {}",
        stdout(out)
    );
    let report = json_out(out);
    let row = util::node_row(&report, node);
    assert_eq!(row["status"], "loaded", "{row}");
    assert_eq!(row["attempts"], 2, "{row}");
    assert_eq!(
        row["earlier_failures"].as_array().map(Vec::len),
        Some(1),
        "{row}"
    );
    let run = report["run"].as_str().unwrap();
    nothing_left(client, ns, node, reference, run).await;
    assert!(node_images(node).contains(&reference.to_string()));
    let again = sideload(&[
        tar.to_str().unwrap(),
        "--nodes",
        node,
        "--helper-namespace",
        ns,
    ]);
    assert!(again.status.success(), "{}", stderr(&again));
    assert!(
        stdout(&again).contains("already present"),
        "the retried import is whole and has the archive's digest:\n{}",
        stdout(&again)
    );
}

fn image(dir: &Path, name: &str) -> (String, PathBuf) {
    let reference = format!("sideload.test/{name}:{}", unique("v"));
    let tar = dir.join(format!("{name}.tar"));
    make_image(&reference, &tar, &["--layers", "2", "--layer-mib", "24"]);
    (reference, tar)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_kubelet_restarted_mid_transfer_is_retried_and_the_node_loads() {
    let _logs = LogsOnFailure;
    let client = admin_client().await;
    let namespace = TestNamespace::new(&client, "sl-fault-kubelet").await;
    let dir = tempfile::tempdir().unwrap();
    let (reference, tar) = image(dir.path(), "kubelet-restart");
    let node = "node-b";
    let out = load_through(&namespace.name, &tar, node, &[], || {
        fault(&["restart", "node-b-kubelet"])
    })
    .await;
    retried_and_loaded(&out, &client, &namespace.name, node, &tar, &reference).await;
    node_remove_image(node, &reference);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_runtime_restarted_mid_transfer_is_retried_and_the_node_loads() {
    let _logs = LogsOnFailure;
    let client = admin_client().await;
    let namespace = TestNamespace::new(&client, "sl-fault-runtime").await;
    let dir = tempfile::tempdir().unwrap();
    for (node, component) in [("node-c", "node-c-containerd"), (CRIO_NODE, "node-d-crio")] {
        let (reference, tar) = image(dir.path(), &format!("runtime-restart-{node}"));
        let out = load_through(&namespace.name, &tar, node, &[], || {
            fault(&["restart", component, "1"])
        })
        .await;
        retried_and_loaded(&out, &client, &namespace.name, node, &tar, &reference).await;
        node_remove_image(node, &reference);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_api_server_down_mid_transfer_is_waited_for_and_nothing_is_left() {
    let _logs = LogsOnFailure;
    let client = admin_client().await;
    let namespace = TestNamespace::new(&client, "sl-fault-api").await;
    let dir = tempfile::tempdir().unwrap();
    let (reference, tar) = image(dir.path(), "apiserver-down");
    let node = "node-a";
    // Down for 5 s, then its start (several more): the failed attempt's helper must still
    // be deleted, and the retry must wait for the API server instead of failing at once.
    let out = load_through(&namespace.name, &tar, node, &[], || {
        fault(&["restart", "kube-apiserver", "5"])
    })
    .await;
    retried_and_loaded(&out, &client, &namespace.name, node, &tar, &reference).await;
    node_remove_image(node, &reference);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_going_notready_mid_transfer_is_reported_with_the_reason() {
    let _logs = LogsOnFailure;
    let client = admin_client().await;
    let namespace = TestNamespace::new(&client, "sl-fault-notready").await;
    let dir = tempfile::tempdir().unwrap();
    let (reference, tar) = image(dir.path(), "notready");
    let node = "node-b";
    let back = KubeletBack(node);
    // The kubelet stops for good mid-stream: the stream breaks, the retry's helper pod can
    // never start, and once the node controller marks the node NotReady (its grace period,
    // 50 s) the plugin says so instead of waiting out --helper-timeout.
    let out = load_through(
        &namespace.name,
        &tar,
        node,
        &["--retries", "1", "--helper-timeout", "5m"],
        || fault(&["stop", "node-b-kubelet"]),
    )
    .await;
    assert!(!out.status.success(), "a node that is gone is a failed run");
    let report = json_out(&out);
    let row = util::node_row(&report, node);
    assert_eq!(row["status"], "failed", "{row}");
    let error = row["error"].as_str().unwrap();
    assert!(error.contains("NotReady"), "{error}");
    let run = report["run"].as_str().unwrap().to_string();
    // Nothing in the API; the node's half state can only be checked with its kubelet back
    // (which also removes the orphaned helper containers).
    let left = helper_pods(&client, &namespace.name).await;
    assert!(left.is_empty(), "left behind: {left:?}");
    drop(back);
    let half = node_half_states(node, &reference, &run);
    assert!(half.is_empty(), "{half:?}");
    assert!(
        !node_images(node).contains(&reference),
        "the failed import must not name the image"
    );
}

/// A helper namespace made just before the run has no ServiceAccount for a moment (the
/// controller-manager makes it; after an API server restart it can take seconds), and
/// admission refuses every pod until then. The run waits for it instead of failing the
/// node with "permission denied … bind the Role" (what CI met right after the API server
/// restart above). The controller-manager is held stopped for 6 s to make the moment long.
#[tokio::test(flavor = "multi_thread")]
async fn a_helper_namespace_made_a_moment_ago_is_waited_for() {
    let _logs = LogsOnFailure;
    let client = admin_client().await;
    let dir = tempfile::tempdir().unwrap();
    let (reference, tar) = image(dir.path(), "new-namespace");
    let node = "node-a";
    let back = ControllerManagerBack;
    fault(&["stop", "kube-controller-manager"]);
    let namespace = TestNamespace::new(&client, "sl-fault-sa").await;
    let run = plugin()
        .arg("--kubeconfig")
        .arg(admin_kubeconfig())
        .arg(&tar)
        .args([
            "--nodes",
            node,
            "--helper-namespace",
            &namespace.name,
            "-o",
            "json",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Long enough for a run that took the refusal for a denial (or retried it twice, 1 s
    // and 2 s apart) to have ended.
    std::thread::sleep(std::time::Duration::from_secs(6));
    drop(back);
    let out = run.wait_with_output().unwrap();
    eprintln!("stderr:\n{}", stderr(&out));
    assert!(out.status.success(), "{}", stdout(&out));
    let report = json_out(&out);
    let row = util::node_row(&report, node);
    assert_eq!(row["status"], "loaded", "{row}");
    assert_eq!(row["attempts"], 1, "waited within the first attempt: {row}");
    let run = report["run"].as_str().unwrap();
    nothing_left(&client, &namespace.name, node, &reference, run).await;
    assert!(node_images(node).contains(&reference));
    node_remove_image(node, &reference);
}
