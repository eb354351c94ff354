//! End-to-end tests: the real plugin binary against the real test cluster
//! (`tests/cluster/up`: API server, three kubelets, three containerd versions).
//! Run with `tests/run` (or `cargo test --features e2e` once the cluster is up).

mod util;

use std::process::Stdio;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::{Value, json};
use util::*;

#[tokio::test(flavor = "multi_thread")]
async fn each_archive_format_loads_into_every_node_and_runs() {
    let _logs = LogsOnFailure;
    let client = admin_client().await;
    // Its own namespace: tests side by side never see each other's helper pods.
    let namespace = TestNamespace::new(&client, "sl-helpers").await;
    let ns = namespace.name.clone();
    let dir = tempfile::tempdir().unwrap();
    for format in ["docker", "oci", "docker25"] {
        let reference = format!("sideload.test/e2e-{format}:{}", unique("v"));
        // "sideload.test" is a domain, so the normalised ref is the ref itself.
        let full = reference.clone();
        let tar = dir.path().join(format!("{format}.tar"));
        make_image(
            &reference,
            &tar,
            &["--format", format, "--layers", "2", "--layer-mib", "2"],
        );

        let out = sideload(&[
            tar.to_str().unwrap(),
            "--nodes",
            "all",
            "-o",
            "json",
            "--helper-namespace",
            &ns,
        ]);
        assert!(
            out.status.success(),
            "{format}: sideload failed: {}",
            stderr(&out)
        );
        let report = json_out(&out);
        assert_eq!(report["image"]["refs"][0], full.as_str());
        let st = statuses(&report);
        assert_eq!(st.len(), NODES.len(), "{format}: {st:?}");
        assert!(st.iter().all(|(_, s)| s == "loaded"), "{format}: {st:?}");
        // One upload, relayed node to node: the plugin sent the image once in all.
        let sent: u64 = report["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["bytes_sent"].as_u64().unwrap())
            .sum();
        assert!(
            sent > 4 << 20 && sent < 6 << 20,
            "{format}: {sent} bytes sent: {report}"
        );
        for node in report["nodes"].as_array().unwrap() {
            assert!(node["error"].is_null());
        }
        // node-e is laid out like k3s: its socket and its ctr (under k3s's data dir) were
        // found from the kubelet's `+k3s1` version, not the kubeadm paths.
        let k3s = node_row(&report, K3S_NODE);
        let runtime = k3s["runtime"].as_str().unwrap();
        assert!(
            runtime.contains("/run/k3s/containerd/containerd.sock")
                && runtime.contains("/var/lib/rancher/k3s/data/"),
            "{format}: {runtime}"
        );
        for node in NODES {
            assert!(
                node_images(node).contains(&full),
                "{format}: {full} missing on {node}"
            );
            let logs = run_pod_on(&client, "default", node, &full).await;
            assert!(
                logs.contains("hello from"),
                "{format} on {node}: log was {logs:?}"
            );
        }
        assert!(
            helper_pods(&client, &ns).await.is_empty(),
            "helper pods left behind"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn dry_run_changes_nothing_and_shows_the_helper_pod() {
    let _logs = LogsOnFailure;
    let client = admin_client().await;
    let dir = tempfile::tempdir().unwrap();
    // Its own namespace: tests side by side never see each other's helper pods.
    let namespace = TestNamespace::new(&client, "sl-helpers").await;
    let ns = namespace.name.clone();
    let reference = format!("sideload.test/dry:{}", unique("v"));
    let tar = dir.path().join("dry.tar");
    make_image(&reference, &tar, &[]);
    let before: Vec<Vec<String>> = NODES.iter().map(|n| node_images(n)).collect();

    let out = sideload(&[
        tar.to_str().unwrap(),
        "--dry-run",
        "--helper-namespace",
        &ns,
    ]);
    assert!(out.status.success());
    let text = stdout(&out);
    for node in NODES {
        assert!(text.contains(node), "plan lists {node}: {text}");
    }
    assert!(text.contains("load"), "{text}");

    let out = sideload(&[
        tar.to_str().unwrap(),
        "--dry-run=server",
        "-o",
        "yaml",
        "--helper-namespace",
        &ns,
    ]);
    assert!(out.status.success());
    let yaml = stdout(&out);
    assert_eq!(yaml.matches("kind: Pod").count(), NODES.len(), "{yaml}");
    assert!(yaml.contains("imagePullPolicy: Never"));
    assert!(yaml.contains("nodeName: node-c"));

    // Other tests load and remove their own images meanwhile, so what is compared is
    // this image's names: its reference and its config digest (containerd lists the
    // image under both).
    let config = config_of(&tar);
    let ours = |images: &[String]| -> Vec<String> {
        images
            .iter()
            .filter(|i| **i == reference || **i == config)
            .cloned()
            .collect()
    };
    for (node, before) in NODES.iter().zip(&before) {
        assert_eq!(ours(before), Vec::<String>::new(), "{node} had the image");
        let after = node_images(node);
        assert_eq!(
            ours(&after),
            Vec::<String>::new(),
            "a dry run loaded into {node}"
        );
    }
    assert!(helper_pods(&client, &ns).await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_run_skips_nodes_that_have_the_image_and_force_reimports() {
    let _logs = LogsOnFailure;
    let dir = tempfile::tempdir().unwrap();
    let reference = format!("sideload.test/again:{}", unique("v"));
    let tar = dir.path().join("again.tar");
    make_image(&reference, &tar, &["--format", "oci"]);
    let t = tar.to_str().unwrap();
    let first = sideload(&[t, "--nodes", "node-a,node-b", "-o", "json"]);
    assert!(first.status.success());
    let second = json_out(&sideload(&[t, "--nodes", "node-a,node-b", "-o", "json"]));
    assert!(
        statuses(&second).iter().all(|(_, s)| s == "skipped"),
        "{second}"
    );
    assert!(
        second["nodes"][0]["error"]
            .as_str()
            .unwrap()
            .contains("already present")
    );
    let forced = json_out(&sideload(&[
        t, "--nodes", "node-b", "--force", "-o", "json",
    ]));
    assert_eq!(
        statuses(&forced),
        [("node-b".to_string(), "loaded".to_string())]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn stdin_archive_loads_like_a_file() {
    let _logs = LogsOnFailure;
    let reference = format!("sideload.test/piped:{}", unique("v"));
    let mut maker = std::process::Command::new(repo().join("tests/cluster/make-image"));
    maker
        .args([reference.as_str(), "-", "--format", "docker"])
        .stdout(Stdio::piped());
    let mut maker = maker.spawn().unwrap();
    let mut cmd = plugin();
    cmd.arg("--kubeconfig")
        .arg(admin_kubeconfig())
        .args(["-", "--nodes", "node-a", "-o", "json"])
        .stdin(maker.stdout.take().unwrap());
    let out = run(cmd);
    assert!(maker.wait().unwrap().success());
    assert!(out.status.success());
    assert_eq!(
        statuses(&json_out(&out)),
        [("node-a".to_string(), "loaded".to_string())]
    );
    assert!(node_images("node-a").contains(&reference));
}

#[tokio::test(flavor = "multi_thread")]
async fn selector_picks_only_matching_nodes() {
    let _logs = LogsOnFailure;
    let dir = tempfile::tempdir().unwrap();
    let reference = format!("sideload.test/green:{}", unique("v"));
    let tar = dir.path().join("g.tar");
    make_image(&reference, &tar, &[]);
    let out = sideload(&[tar.to_str().unwrap(), "-l", "pool=green", "-o", "json"]);
    assert!(out.status.success());
    // node-c is tainted NoSchedule: the helper tolerates it.
    assert_eq!(
        statuses(&json_out(&out)),
        [("node-c".to_string(), "loaded".to_string())]
    );
    assert!(!node_images("node-a").contains(&reference));

    let none = sideload(&[tar.to_str().unwrap(), "-l", "pool=nonexistent"]);
    assert!(!none.status.success());
    assert!(
        stderr(&none).contains("no node matches --selector"),
        "{}",
        stderr(&none)
    );
    let unknown = sideload(&[tar.to_str().unwrap(), "--nodes", "node-z"]);
    assert!(!unknown.status.success());
    assert!(stderr(&unknown).contains("node \"node-z\" not found"));
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_architecture_is_refused_before_anything_changes() {
    let _logs = LogsOnFailure;
    let client = admin_client().await;
    let dir = tempfile::tempdir().unwrap();
    // Its own namespace: tests side by side never see each other's helper pods.
    let namespace = TestNamespace::new(&client, "sl-helpers").await;
    let ns = namespace.name.clone();
    let reference = format!("sideload.test/arm:{}", unique("v"));
    let tar = dir.path().join("arm.tar");
    make_image(&reference, &tar, &["--platform", "linux/arm64"]);
    let out = sideload(&[tar.to_str().unwrap(), "--helper-namespace", &ns]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("nothing was changed"), "{err}");
    assert!(
        err.contains("linux/arm64") || err.contains("arm64"),
        "{err}"
    );
    assert!(helper_pods(&client, &ns).await.is_empty());
    assert!(!node_images("node-a").contains(&reference));
}

#[tokio::test(flavor = "multi_thread")]
async fn multi_platform_archive_with_one_platforms_blobs_loads_that_platform() {
    let _logs = LogsOnFailure;
    let client = admin_client().await;
    let dir = tempfile::tempdir().unwrap();
    let reference = format!("sideload.test/multi:{}", unique("v"));
    let tar = dir.path().join("multi.tar");
    make_image(
        &reference,
        &tar,
        &[
            "--format",
            "oci",
            "--multi-platform",
            "linux/amd64,linux/arm64",
            "--only-blobs-for",
            "linux/amd64",
        ],
    );
    let out = sideload(&[tar.to_str().unwrap(), "--nodes", "node-b", "-o", "json"]);
    assert!(
        out.status.success(),
        "kind#3795 case must load: {}",
        stderr(&out)
    );
    let logs = run_pod_on(&client, "default", "node-b", &reference).await;
    assert!(logs.contains("hello from"), "{logs}");
}

#[tokio::test(flavor = "multi_thread")]
async fn two_runs_at_once_do_not_collide() {
    let _logs = LogsOnFailure;
    let client = admin_client().await;
    let dir = tempfile::tempdir().unwrap();
    // Its own namespace: tests side by side never see each other's helper pods.
    let namespace = TestNamespace::new(&client, "sl-helpers").await;
    let ns = namespace.name.clone();
    let mut children = Vec::new();
    let mut refs = Vec::new();
    let mut tars = Vec::new();
    for i in 0..2 {
        let reference = format!("sideload.test/both-{i}:{}", unique("v"));
        let tar = dir.path().join(format!("both-{i}.tar"));
        make_image(&reference, &tar, &["--layers", "2", "--layer-mib", "8"]);
        refs.push(reference);
        tars.push(tar);
    }
    // Two users with different images, and a third with the first one's image at once.
    for tar in [&tars[0], &tars[1], &tars[0]] {
        let mut cmd = plugin();
        cmd.arg("--kubeconfig")
            .arg(admin_kubeconfig())
            .args([
                tar.to_str().unwrap(),
                "-o",
                "json",
                "--helper-namespace",
                &ns,
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        children.push(cmd.spawn().unwrap());
    }
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        // The same image's second run may find a node already done by the first.
        let report = json_out(&out);
        assert!(
            statuses(&report)
                .iter()
                .all(|(_, s)| s == "loaded" || s == "skipped"),
            "{report}"
        );
    }
    for node in NODES {
        let images = node_images(node);
        for r in &refs {
            assert!(images.contains(r), "{r} missing on {node}");
        }
    }
    assert!(helper_pods(&client, &ns).await.is_empty());
}

/// Starts a load of `tar` into `ns`'s helper namespace and returns once one of its helper
/// pods exists, with the run's id (from its Lease).
async fn start_load(
    client: &kube::Client,
    ns: &str,
    tar: &std::path::Path,
    nodes: &str,
    extra: &[&str],
) -> (std::process::Child, String) {
    let mut cmd = plugin();
    cmd.arg("--kubeconfig")
        .arg(admin_kubeconfig())
        .arg(tar)
        .args(["--helper-namespace", ns, "--nodes", nodes, "-o", "json"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    for _ in 0..240 {
        let ours = helper_pods(client, ns).await;
        let run = ours
            .iter()
            .find_map(|o| o.strip_prefix("lease/sideload-run-"))
            .map(str::to_string);
        if let (Some(run), true) = (run, ours.iter().any(|o| o.starts_with("pod/"))) {
            return (child, run);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    panic!("no helper pod appeared; the plugin said:\n{}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_interrupted_run_leaves_nothing_behind() {
    let _logs = LogsOnFailure;
    let client = admin_client().await;
    let dir = tempfile::tempdir().unwrap();
    // Its own namespace: tests side by side never see each other's helper pods.
    let namespace = TestNamespace::new(&client, "sl-helpers").await;
    let ns = namespace.name.clone();
    let reference = format!("sideload.test/interrupted:{}", unique("v"));
    let tar = dir.path().join("big.tar");
    make_image(&reference, &tar, &["--layers", "2", "--layer-mib", "128"]);

    // Ctrl-C, `kill`, and a terminal or ssh session closing: each unwinds the same way and
    // exits as a shell reports that signal.
    // At the helper pods' start, then while bytes stream and nodes import.
    for (signal, code, after) in [("-INT", 130, 0), ("-TERM", 143, 3), ("-HUP", 129, 6)] {
        let (child, run) = start_load(&client, &ns, &tar, "all", &[]).await;
        tokio::time::sleep(Duration::from_secs(after)).await;
        let pid = child.id().to_string();
        let status = std::process::Command::new("kill")
            .args([signal, &pid])
            .status()
            .unwrap();
        assert!(status.success());
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(code), "{signal}: {}", stderr(&out));
        let left = helper_pods(&client, &ns).await;
        assert!(
            left.is_empty(),
            "{signal} left {left:?}; plugin said:\n{}",
            stderr(&out)
        );
        assert!(
            stderr(&out).contains("no helper pod left behind"),
            "{}",
            stderr(&out)
        );
        let half: Vec<String> = NODES
            .iter()
            .flat_map(|n| node_half_states(n, &reference, &run))
            .collect();
        assert!(half.is_empty(), "{signal} after {after} s: {half:?}");
    }

    // A killed plugin cannot clean up, and its Lease still looks alive for a while: a
    // `cleanup` right away leaves the run alone, one after the Lease expired removes it all.
    let (child, run) = start_load(&client, &ns, &tar, "all", &[]).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let pid = child.id().to_string();
    let status = std::process::Command::new("kill")
        .args(["-KILL", &pid])
        .status()
        .unwrap();
    assert!(status.success());
    let _ = child.wait_with_output().unwrap();
    let early = sideload(&["cleanup", "--helper-namespace", &ns]);
    assert!(early.status.success(), "{}", stderr(&early));
    assert!(
        stdout(&early).contains("is in progress"),
        "{}",
        stdout(&early)
    );
    assert!(
        helper_pods(&client, &ns)
            .await
            .iter()
            .any(|o| o.starts_with("pod/")),
        "cleanup removed a run whose Lease is alive: {}",
        stdout(&early)
    );
    tokio::time::sleep(Duration::from_secs(21)).await;
    let cleanup = sideload(&["cleanup", "--helper-namespace", &ns]);
    assert!(cleanup.status.success(), "{}", stderr(&cleanup));
    let left = helper_pods(&client, &ns).await;
    assert!(
        left.is_empty(),
        "cleanup left {left:?}; it said:\n{}{}",
        stdout(&cleanup),
        stderr(&cleanup)
    );
    assert!(stdout(&cleanup).contains("lease/"), "{}", stdout(&cleanup));
    let half: Vec<String> = NODES
        .iter()
        .flat_map(|n| node_half_states(n, &reference, &run))
        .collect();
    assert!(
        half.is_empty(),
        "SIGKILL mid-transfer, then cleanup: {half:?}"
    );
    for node in NODES {
        node_remove_image(node, &reference);
    }
}

/// `kubectl sideload … 2>&1 | head`: the reader of the plugin's output goes away while the
/// run is in flight. Every later line (logs, progress, the report) is lost, and the run
/// still loads, removes its helper pods and exits 0 (a panic on the closed pipe used to end
/// it with every helper pod still up).
#[tokio::test(flavor = "multi_thread")]
async fn a_run_whose_output_reader_went_away_still_loads_and_leaves_nothing() {
    use std::io::BufRead;
    let _logs = LogsOnFailure;
    let client = admin_client().await;
    let dir = tempfile::tempdir().unwrap();
    let namespace = TestNamespace::new(&client, "sl-helpers").await;
    let ns = namespace.name.clone();
    let reference = format!("sideload.test/headless:{}", unique("v"));
    let tar = dir.path().join("small.tar");
    make_image(&reference, &tar, &[]);
    let mut cmd = plugin();
    cmd.arg("--kubeconfig")
        .arg(admin_kubeconfig())
        .arg(&tar)
        .args(["--helper-namespace", &ns, "--nodes", "node-a,node-b"])
        // Debug logs: lines to write at every step, the first long before the pods exist.
        .env("SIDELOAD_LOG", "kubectl_sideload=debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut first = String::new();
    std::io::BufReader::new(child.stderr.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(!first.is_empty(), "the plugin wrote nothing to stderr");
    drop(child.stdout.take());
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "first line: {first}");
    let left = helper_pods(&client, &ns).await;
    assert!(left.is_empty(), "left {left:?}");
    assert_listed_then_remove(&["node-a", "node-b"], &reference);
}

/// A run killed with SIGKILL (or crashed, or cut off) leaves its privileged helper pods up.
/// The next run removes them once the dead run's Lease has been expired for two minutes,
/// and leaves alone a run that only just stopped renewing and pods without a Lease of ours.
#[tokio::test(flavor = "multi_thread")]
async fn a_later_run_removes_what_a_long_dead_run_left_and_nothing_else() {
    use k8s_openapi::api::coordination::v1::Lease;
    use k8s_openapi::api::core::v1::ConfigMap;
    let _logs = LogsOnFailure;
    let client = admin_client().await;
    let dir = tempfile::tempdir().unwrap();
    let namespace = TestNamespace::new(&client, "sl-helpers").await;
    let ns = namespace.name.clone();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);
    let post = PostParams::default();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let iso = |secs_ago: u64| {
        let out = std::process::Command::new("date")
            .args([
                "-u",
                "-d",
                &format!("@{}", now - secs_ago),
                "+%Y-%m-%dT%H:%M:%S.000000Z",
            ])
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    let labels = |run: &str| json!({"app.kubernetes.io/managed-by": "kubectl-sideload", "sideload.dev/run": run});
    // dead5m: renewed 5 minutes ago (a 20 s Lease); stale: renewed 40 s ago; orphan: no Lease.
    for (run, renewed) in [("dead5m", Some(300)), ("stale", Some(40)), ("orphan", None)] {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": format!("sideload-node-a-{run}"), "labels": labels(run)},
            "spec": {
                "nodeName": "node-a",
                "terminationGracePeriodSeconds": 0,
                "containers": [{"name": "helper", "image": "registry.k8s.io/pause:3.10",
                                "imagePullPolicy": "Never"}]
            }
        }))
        .unwrap();
        pods.create(&post, &pod).await.unwrap();
        let map: ConfigMap = serde_json::from_value(json!({
            "metadata": {"name": format!("sideload-agent-{run}-amd64"), "labels": labels(run)}
        }))
        .unwrap();
        maps.create(&post, &map).await.unwrap();
        if let Some(ago) = renewed {
            let lease: Lease = serde_json::from_value(json!({
                "metadata": {"name": format!("sideload-run-{run}"), "labels": labels(run)},
                "spec": {"holderIdentity": "kubectl-sideload (killed)",
                         "leaseDurationSeconds": 20,
                         "acquireTime": iso(ago + 60), "renewTime": iso(ago)}
            }))
            .unwrap();
            leases.create(&post, &lease).await.unwrap();
        }
    }

    let reference = format!("sideload.test/tidy:{}", unique("v"));
    let tar = dir.path().join("small.tar");
    make_image(&reference, &tar, &[]);
    let tar = tar.to_str().unwrap();
    let out = sideload(&[tar, "--helper-namespace", &ns, "--nodes", "node-a"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("removed 1 helper pod(s) left by run dead5m, which ended 4m"),
        "{}",
        stderr(&out)
    );
    let mut left = helper_pods(&client, &ns).await;
    left.sort();
    assert_eq!(
        left,
        [
            "configmap/sideload-agent-orphan-amd64",
            "configmap/sideload-agent-stale-amd64",
            "lease/sideload-run-stale",
            "pod/sideload-node-a-orphan",
            "pod/sideload-node-a-stale",
        ],
        "{}",
        stderr(&out)
    );
    node_remove_image("node-a", &reference);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_past_its_timeout_stops_every_node_naming_the_step_and_leaves_nothing() {
    let _logs = LogsOnFailure;
    let client = admin_client().await;
    let dir = tempfile::tempdir().unwrap();
    let namespace = TestNamespace::new(&client, "sl-helpers").await;
    let ns = namespace.name.clone();
    let reference = format!("sideload.test/timeout:{}", unique("v"));
    let tar = dir.path().join("slow.tar");
    make_image(&reference, &tar, &["--layers", "2", "--layer-mib", "32"]);
    // The client's link held to 1 MiB/s: the 64 MiB (random, so the wire cannot shrink
    // them, and relayed, so every node waits on that one upload) need over a minute
    // however idle the machine is.
    let proxy = CountingProxy::start_capped(Some(1 << 20)).await;
    let mut cmd = plugin();
    cmd.arg("--kubeconfig")
        .arg(&proxy.kubeconfig)
        .arg(&tar)
        .args(["--helper-namespace", &ns, "-o", "json", "--timeout", "25s"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd.spawn().unwrap();
    // Its run id, from its Lease, to tell its staging names from other tests' runs. On a
    // busy machine the deadline may come before any pod: then nothing was staged.
    let mut run = String::from("(no run started)");
    let waiting = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap());
    while !waiting.is_finished() {
        if let Some(id) = helper_pods(&client, &ns)
            .await
            .iter()
            .find_map(|o| o.strip_prefix("lease/sideload-run-"))
        {
            run = id.to_string();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let out = waiting.await.unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("--timeout 25s passed before every node was loaded"),
        "{err}"
    );
    assert!(err.contains("no helper pod left behind"), "{err}");
    // Every row still at work names the step the deadline found it in.
    let report = json_out(&out);
    let rows: Vec<_> = real_rows(&report).collect();
    assert_eq!(rows.len(), NODES.len(), "{report}");
    for row in &rows {
        if row["status"] == "failed" {
            let why = row["error"].as_str().unwrap();
            assert!(why.starts_with("--timeout 25s passed while "), "{row}");
            assert_eq!(row["attempts"], 1, "a stopped run retries nothing: {row}");
        }
    }
    assert!(
        rows.iter().any(|r| r["status"] == "failed"),
        "25 s at 1 MiB/s cannot carry 64 MiB: {report}"
    );
    assert!(helper_pods(&client, &ns).await.is_empty());
    let half: Vec<String> = NODES
        .iter()
        .flat_map(|n| node_half_states(n, &reference, &run))
        .collect();
    assert!(half.is_empty(), "{half:?}");
    for node in NODES {
        node_remove_image(node, &reference);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn cleanup_by_another_user_leaves_a_run_in_progress_alone() {
    let _logs = LogsOnFailure;
    let client = admin_client().await;
    let dir = tempfile::tempdir().unwrap();
    let namespace = TestNamespace::new(&client, "sl-helpers").await;
    let ns = namespace.name.clone();
    let reference = format!("sideload.test/in-progress:{}", unique("v"));
    let tar = dir.path().join("busy.tar");
    make_image(&reference, &tar, &["--layers", "2", "--layer-mib", "64"]);
    let (child, _) = start_load(&client, &ns, &tar, "node-a,node-b", &[]).await;
    let before = helper_pods(&client, &ns).await;
    let cleanup = sideload(&["cleanup", "--helper-namespace", &ns]);
    assert!(cleanup.status.success(), "{}", stderr(&cleanup));
    assert!(
        stdout(&cleanup).contains("is in progress") && !stdout(&cleanup).contains("deleted"),
        "{}",
        stdout(&cleanup)
    );
    let during = helper_pods(&client, &ns).await;
    assert!(
        before
            .iter()
            .all(|o| during.contains(o) || o.starts_with("pod/")),
        "cleanup removed objects of a live run: before {before:?}, after {during:?}"
    );
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the run was disturbed: {}",
        stderr(&out)
    );
    assert!(statuses(&json_out(&out)).iter().all(|(_, s)| s == "loaded"));
    assert!(helper_pods(&client, &ns).await.is_empty());
    assert_listed_then_remove(&["node-a", "node-b"], &reference);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_api_server_that_speaks_only_exec_v4_loads_every_node() {
    // v4 has no stdin close: the import must end on the length the plugin framed, not on
    // EOF. The v4 API server hands exec websockets to the runtimes' streaming servers
    // (containerd 1.6, 1.7 and 2.4 here), which is where the protocol is negotiated.
    let _logs = LogsOnFailure;
    let client = admin_client().await;
    let namespace = TestNamespace::new(&client, "sl-helpers").await;
    let dir = tempfile::tempdir().unwrap();
    let reference = format!("sideload.test/v4:{}", unique("v"));
    let tar = dir.path().join("v4.tar");
    make_image(&reference, &tar, &["--layers", "2", "--layer-mib", "3"]);
    let mut cmd = plugin();
    cmd.env("SIDELOAD_LOG", "kubectl_sideload=debug")
        .arg("--kubeconfig")
        .arg(v4_kubeconfig())
        .args([tar.to_str().unwrap(), "-o", "json"])
        .args(["--helper-namespace", &namespace.name]);
    let out = run(cmd);
    assert!(out.status.success(), "{}", stderr(&out));
    let log = stderr(&out);
    assert!(
        log.contains("v4.channel.k8s.io") && !log.contains("v5.channel.k8s.io"),
        "the stream was not v4-only:\n{log}"
    );
    let report = json_out(&out);
    let st = statuses(&report);
    assert_eq!(st.len(), NODES.len(), "{st:?}");
    assert!(st.iter().all(|(_, s)| s == "loaded"), "{st:?}");
    for node in NODES {
        let logs = run_pod_on(&client, "default", node, &reference).await;
        assert!(logs.contains("hello from"), "{node}: log was {logs:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rebuilt_image_sends_only_the_layers_a_node_lacks() {
    // v1 and v2 share a 16 MiB base layer (seeded per test run, so no earlier run left it
    // on a node) and differ in a 1 MiB top layer, as an image rebuilt after a code change.
    let _logs = LogsOnFailure;
    let client = admin_client().await;
    let namespace = TestNamespace::new(&client, "sl-helpers").await;
    let dir = tempfile::tempdir().unwrap();
    let seed = unique("base");
    let tag = unique("v");
    let load = |version: &str, extra: &[&str]| {
        let reference = format!("sideload.test/rebuilt-{version}:{tag}");
        let tar = dir.path().join(format!("{version}.tar"));
        make_image(
            &reference,
            &tar,
            &["--base-mib", "16", "--base-seed", &seed, "--layer-mib", "1"],
        );
        // Per node: what each node lacks is what each node is sent.
        let mut args = vec![tar.to_str().unwrap(), "-o", "json", "--relay", "off"];
        args.extend(["--helper-namespace", &namespace.name]);
        args.extend(extra);
        let out = sideload(&args);
        assert!(out.status.success(), "{version}: {}", stderr(&out));
        (reference, json_out(&out))
    };
    let sent = |report: &Value| -> Vec<(u64, u64)> {
        report["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| {
                assert_eq!(n["status"], "loaded", "{n}");
                (
                    n["bytes_sent"].as_u64().unwrap(),
                    n["layers_reused"].as_u64().unwrap(),
                )
            })
            .collect()
    };
    let (_, v1) = load("v1", &[]);
    for (bytes, _) in sent(&v1) {
        assert!(bytes > 16 << 20, "v1 must carry its new base layer: {v1}");
    }
    let (v2_ref, v2) = load("v2", &[]);
    for (bytes, reused) in sent(&v2) {
        assert!(bytes < 2 << 20, "v2 resent the base layer: {v2}");
        assert!(reused >= 2, "base and /app layers should be reused: {v2}");
    }
    for node in NODES {
        let logs = run_pod_on(&client, "default", node, &v2_ref).await;
        assert!(logs.contains(&v2_ref), "{node}: log was {logs:?}");
    }
    // --force sends every layer again.
    let (_, forced) = load("v2", &["--force"]);
    for (bytes, reused) in sent(&forced) {
        assert!(
            bytes > 16 << 20 && reused == 0,
            "--force reused layers: {forced}"
        );
    }
}

/// The image names `node` reports in its status.
async fn listed_images(client: &kube::Client, node: &str) -> Vec<String> {
    let nodes: Api<Node> = Api::all(client.clone());
    let node = nodes.get(node).await.unwrap();
    node.status
        .and_then(|s| s.images)
        .unwrap_or_default()
        .into_iter()
        .flat_map(|i| i.names.unwrap_or_default())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_whose_status_no_longer_lists_the_pause_image_still_loads() {
    // node-c's kubelet lists only its largest image (tests/cluster/README.md), as a busy
    // node's list is cut at 50: once it holds anything bigger, pause is off its list.
    let _logs = LogsOnFailure;
    let client = admin_client().await;
    let namespace = TestNamespace::new(&client, "sl-helpers").await;
    let ns = namespace.name.as_str();
    let dir = tempfile::tempdir().unwrap();
    let image = |name: &str| {
        let reference = format!("sideload.test/{name}:{}", unique("v"));
        let tar = dir.path().join(format!("{name}.tar"));
        make_image(&reference, &tar, &["--layer-mib", "2"]);
        (reference, tar.to_string_lossy().into_owned())
    };
    let (_, bigger) = image("bigger");
    let out = sideload(&[&bigger, "--nodes", "node-c", "--helper-namespace", ns]);
    assert!(out.status.success(), "{}", stderr(&out));
    let is_pause = |n: &String| n.contains("/pause:");
    let mut listed = listed_images(&client, "node-c").await;
    // The kubelet refreshes its image list every 30 s and reports it within 10 s more.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while listed.iter().any(is_pause) && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(2)).await;
        listed = listed_images(&client, "node-c").await;
    }
    assert!(
        !listed.iter().any(is_pause),
        "node-c still lists the pause image: {listed:?}"
    );
    assert!(
        node_images("node-c")
            .iter()
            .any(|n| n == "registry.k8s.io/pause:3.10"),
        "the pause image should still be on node-c"
    );

    let (reference, tar) = image("unlisted");
    let plan = sideload(&[
        &tar,
        "--nodes",
        "node-c",
        "--dry-run",
        "--helper-namespace",
        ns,
    ]);
    assert!(plan.status.success(), "{}", stderr(&plan));
    let text = stdout(&plan);
    // Not a pause image of node-c's own list: it lists none now.
    assert!(
        !text.contains("(pause image the node lists)") && text.contains("helper starts from"),
        "{text}"
    );
    let out = sideload(&[
        &tar,
        "--nodes",
        "node-c",
        "--helper-namespace",
        ns,
        "-o",
        "json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        statuses(&json_out(&out)),
        [("node-c".to_string(), "loaded".to_string())]
    );
    let logs = run_pod_on(&client, "default", "node-c", &reference).await;
    assert!(logs.contains("hello from"), "log was {logs:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn pod_security_rejection_names_the_fix() {
    let _logs = LogsOnFailure;
    let client = admin_client().await;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let dir = tempfile::tempdir().unwrap();
    let reference = format!("sideload.test/psa:{}", unique("v"));
    let tar = dir.path().join("psa.tar");
    make_image(&reference, &tar, &[]);
    for level in ["baseline", "restricted"] {
        let ns_name = unique(level);
        let ns: Namespace = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": ns_name, "labels": {"pod-security.kubernetes.io/enforce": level}}
        }))
        .unwrap();
        namespaces
            .create(&PostParams::default(), &ns)
            .await
            .unwrap();
        let args = [
            tar.to_str().unwrap(),
            "--nodes",
            "node-a",
            "--helper-namespace",
            &ns_name,
        ];
        let out = sideload(&args);
        let left = helper_pods(&client, &ns_name).await;
        let dry = sideload(&[&args[..], &["--dry-run=server"]].concat());
        let _ = namespaces.delete(&ns_name, &DeleteParams::default()).await;
        assert!(!out.status.success(), "{level}");
        let all = format!("{}{}", stdout(&out), stderr(&out));
        assert!(
            all.contains("pod-security.kubernetes.io/enforce=privileged"),
            "{level}: {all}"
        );
        // Refused before any byte moved, and nothing of the run stays in the namespace.
        assert!(!all.contains("loaded"), "{level}: {all}");
        assert!(left.is_empty(), "{level}: left {left:?}");
        assert!(!dry.status.success(), "{level}");
        assert!(
            stderr(&dry).contains("pod-security.kubernetes.io/enforce=privileged"),
            "{level}: {}",
            stderr(&dry)
        );
    }
    assert!(!node_images("node-a").contains(&reference));
}

/// Nodes that exist as API objects only: a Windows node, a virtual kubelet, and a node
/// whose kubelet is gone (NotReady). None of them can take the image.
async fn fake_nodes(client: &kube::Client, prefix: &str) -> Vec<String> {
    let nodes: Api<Node> = Api::all(client.clone());
    let mut names = Vec::new();
    for (kind, labels, ready, runtime) in [
        (
            "win",
            json!({"kubernetes.io/os": "windows", "kubernetes.io/arch": "amd64"}),
            "True",
            "containerd://1.7.20",
        ),
        (
            "vk",
            json!({"type": "virtual-kubelet", "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64"}),
            "True",
            "containerd://1.7.20",
        ),
        (
            "gone",
            json!({"kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64"}),
            "False",
            "containerd://1.7.20",
        ),
    ] {
        let name = format!("{prefix}-{kind}");
        let node: Node = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": labels},
            "spec": {"taints": [{"key": "sideload.test/fake", "effect": "NoSchedule"}]}
        }))
        .unwrap();
        nodes.create(&PostParams::default(), &node).await.unwrap();
        let status = json!({"status": {
            "conditions": [{"type": "Ready", "status": ready, "reason": "Fake",
                            "lastHeartbeatTime": "2026-01-01T00:00:00Z",
                            "lastTransitionTime": "2026-01-01T00:00:00Z"}],
            "nodeInfo": {"architecture": "amd64", "operatingSystem": "linux",
                         "containerRuntimeVersion": runtime, "kubeletVersion": "v1.34.4",
                         "bootID": "", "kernelVersion": "", "kubeProxyVersion": "",
                         "machineID": "", "osImage": "", "systemUUID": ""}
        }});
        nodes
            .patch_status(
                &name,
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(&status),
            )
            .await
            .unwrap();
        names.push(name);
    }
    names
}

#[tokio::test(flavor = "multi_thread")]
async fn an_implicit_selection_skips_nodes_that_cannot_take_the_image() {
    let _logs = LogsOnFailure;
    let client = admin_client().await;
    let namespace = TestNamespace::new(&client, "sl-mixed").await;
    let ns = namespace.name.clone();
    let dir = tempfile::tempdir().unwrap();
    let reference = format!("sideload.test/mixed:{}", unique("v"));
    let tar = dir.path().join("mixed.tar");
    make_image(&reference, &tar, &[]);
    let prefix = unique("fake");
    let fakes = fake_nodes(&client, &prefix).await;
    let t = tar.to_str().unwrap();

    let out = sideload(&[t, "-o", "json", "--helper-namespace", &ns]);
    let named = sideload(&[
        t,
        "--nodes",
        &format!("node-a,{}", fakes[0]),
        "--helper-namespace",
        &ns,
    ]);
    let nodes: Api<Node> = Api::all(client.clone());
    for name in &fakes {
        let _ = nodes.delete(name, &DeleteParams::default()).await;
    }

    assert!(
        out.status.success(),
        "the loadable nodes must load: {}",
        stderr(&out)
    );
    let report = json_out(&out);
    let by_name = |name: &str| node_row(&report, name).clone();
    for node in NODES {
        assert_eq!(by_name(node)["status"], "loaded", "{report}");
    }
    for (fake, why) in fakes
        .iter()
        .zip(["windows node", "virtual kubelet", "NotReady"])
    {
        let n = by_name(fake);
        assert_eq!(n["status"], "skipped", "{n}");
        assert!(n["error"].as_str().unwrap().contains(why), "{n}");
    }
    // Named, an unfit node is refused before anything changes.
    assert!(!named.status.success());
    let err = stderr(&named);
    assert!(
        err.contains("nothing was changed") && err.contains("windows"),
        "{err}"
    );
    for node in NODES {
        node_remove_image(node, &reference);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_crio_node_holds_the_image_under_its_full_name_in_the_storage_crio_reads() {
    let _logs = LogsOnFailure;
    let client = admin_client().await;
    let namespace = TestNamespace::new(&client, "sl-crio").await;
    let dir = tempfile::tempdir().unwrap();
    // A short Docker Hub name, as `docker save app:v1` writes it: podman would store it as
    // localhost/app:v1, which CRI-O never matches to a pod's `app:v1` (cri-tools#474).
    let short = unique("sl-crio");
    let tar = dir.path().join("crio.tar");
    make_image(
        &format!("{short}:v1"),
        &tar,
        &["--format", "docker", "--layers", "2", "--layer-mib", "2"],
    );
    let full = format!("docker.io/library/{short}:v1");
    let config = {
        let mut c = plugin();
        c.args(["inspect", tar.to_str().unwrap(), "-o", "json"]);
        json_out(&run(c))["images"][0]["config"]["digest"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let dry = sideload(&[
        tar.to_str().unwrap(),
        "--nodes",
        CRIO_NODE,
        "--dry-run",
        "--helper-namespace",
        &namespace.name,
    ]);
    assert!(dry.status.success(), "{}", stderr(&dry));
    assert!(
        stdout(&dry).contains("skopeo copy into CRI-O's containers-storage"),
        "{}",
        stdout(&dry)
    );
    let out = sideload(&[
        tar.to_str().unwrap(),
        "--nodes",
        CRIO_NODE,
        "-o",
        "json",
        "--helper-namespace",
        &namespace.name,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report = json_out(&out);
    let node = &report["nodes"][0];
    assert_eq!(node["status"], "loaded", "{node}");
    let runtime = node["runtime"].as_str().unwrap();
    // node-d's storage.conf keeps the distribution's /var/lib/containers/storage; CRI-O's
    // own config points elsewhere, and that is where the image must be.
    assert!(
        runtime.contains("nodes/node-d/storage")
            && !runtime.contains("/var/lib/containers/storage"),
        "the storage must come from CRI-O's configuration: {runtime}"
    );
    assert!(
        node["verified_by"].as_str().unwrap().contains("crictl"),
        "{node}"
    );
    let inspect: Value =
        serde_json::from_str(&node_crictl(CRIO_NODE, &["inspecti", "-o", "json", &full])).unwrap();
    assert_eq!(
        inspect["status"]["id"]
            .as_str()
            .unwrap()
            .trim_start_matches("sha256:"),
        config.trim_start_matches("sha256:"),
        "{inspect}"
    );
    let listed = node_images(CRIO_NODE);
    assert!(listed.contains(&full), "{listed:?}");
    assert!(
        !listed.iter().any(|t| t.starts_with("localhost/")),
        "a localhost/ name appeared: {listed:?}"
    );
    // Both spellings a pod may use resolve, through CRI, to the image.
    for image in [full.clone(), format!("{short}:v1")] {
        let logs = run_pod_on(&client, "default", CRIO_NODE, &image).await;
        assert!(logs.contains("hello from"), "{image}: {logs}");
    }
    node_remove_image(CRIO_NODE, &full);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_podman_localhost_name_is_warned_and_tag_imports_it_under_the_name_pods_ask_for() {
    let _logs = LogsOnFailure;
    let client = admin_client().await;
    let namespace = TestNamespace::new(&client, "sl-tag").await;
    let dir = tempfile::tempdir().unwrap();
    let tag = unique("v");
    // As `podman save` writes a short name: under podman's localhost/ prefix.
    let saved = format!("localhost/tagged:{tag}");
    let tar = dir.path().join("podman.tar");
    make_image(&saved, &tar, &["--layers", "1", "--layer-mib", "1"]);
    let nodes = ["node-a", CRIO_NODE];
    let tar = tar.to_str().unwrap();
    let plain = sideload(&[tar, "--dry-run", "--nodes", &nodes.join(",")]);
    assert!(
        stderr(&plain).contains(&format!("pass --tag tagged:{tag}")),
        "{}",
        stderr(&plain)
    );
    let short = format!("tagged:{tag}");
    let out = sideload(&[
        tar,
        "--nodes",
        &nodes.join(","),
        "--helper-namespace",
        &namespace.name,
        "--tag",
        &short,
        "-o",
        "json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!stderr(&out).contains("warning"), "{}", stderr(&out));
    let report = json_out(&out);
    let wanted = format!("docker.io/library/tagged:{tag}");
    assert_eq!(report["image"]["refs"], json!([wanted]), "{report}");
    for node in nodes {
        let held = node_images(node);
        assert!(held.contains(&wanted), "{node}: {held:?}");
        assert!(
            !held.contains(&saved),
            "{node} holds the podman name: {held:?}"
        );
        // What a pod spec says, `tagged:TAG`, is what the kubelet now finds.
        run_pod_on(&client, &namespace.name, node, &short).await;
        node_remove_image(node, &wanted);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn status_and_rm_say_per_node_what_it_holds_which_pods_use_it_and_keep_those() {
    let _logs = LogsOnFailure;
    let client = admin_client().await;
    let namespace = TestNamespace::new(&client, "sl-status").await;
    let ns = namespace.name.as_str();
    let dir = tempfile::tempdir().unwrap();
    let reference = format!("sideload.test/status:{}", unique("v"));
    let tar = dir.path().join("status.tar");
    make_image(&reference, &tar, &["--layers", "1", "--layer-mib", "1"]);
    let t = tar.to_str().unwrap();
    let out = sideload(&[
        t,
        "--nodes",
        &format!("node-a,{CRIO_NODE}"),
        "--helper-namespace",
        ns,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    // A pod on node-a runs it; none on the CRI-O node; node-b never got it.
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "user"},
        "spec": {
            "nodeName": "node-a",
            "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "app", "image": reference, "imagePullPolicy": "Never"}],
        }
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    for waited in 0.. {
        let phase = pods.get("user").await.unwrap().status.and_then(|s| s.phase);
        if phase.as_deref() == Some("Running") {
            break;
        }
        assert!(waited < 120, "the pod never ran: {phase:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    let nodes = format!("node-a,node-b,{CRIO_NODE}");
    let out = sideload(&[
        "status",
        t,
        "--nodes",
        &nodes,
        "--helper-namespace",
        ns,
        "-o",
        "json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report = json_out(&out);
    let image = |node: &str| node_row(&report, node)["images"][0].clone();
    let config = config_of(&tar);
    let a = image("node-a");
    assert_eq!(a["present"], true, "{a}");
    assert_eq!(a["matches_archive"], true, "{a}");
    assert_eq!(a["id"], config.as_str(), "{a}");
    assert_eq!(a["used_by"], json!([format!("{ns}/user")]), "{a}");
    let b = image("node-b");
    assert_eq!(b["present"], false, "{b}");
    assert_eq!(b["matches_archive"], false, "{b}");
    let d = image(CRIO_NODE);
    assert_eq!(d["present"], true, "{d}");
    assert_eq!(d["matches_archive"], true, "{d}");
    assert_eq!(d["used_by"], json!([]), "{d}");
    // By ref, as a table: one row per node, no archive needed.
    let out = sideload(&[
        "status",
        &reference,
        "--nodes",
        &nodes,
        "--helper-namespace",
        ns,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let row = |node: &str| {
        text.lines()
            .find(|l| l.starts_with(node))
            .unwrap_or_else(|| panic!("no row for {node}:\n{text}"))
            .to_string()
    };
    assert!(row("node-a").contains(&format!("{ns}/user")), "{text}");
    assert!(row("node-b").contains(" no "), "{text}");
    // A status changes nothing and leaves nothing.
    assert!(helper_pods(&client, ns).await.is_empty());

    // rm: a dry run first; an image a pod uses stays unless --force.
    let rm = |extra: &[&str]| {
        let mut args = vec![
            "rm",
            reference.as_str(),
            "--helper-namespace",
            ns,
            "-o",
            "json",
        ];
        args.extend(extra);
        sideload(&args)
    };
    let action = |out: &std::process::Output, node: &str| {
        node_row(&json_out(out), node)["images"][0]["action"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    let dry = rm(&["--nodes", &nodes, "--dry-run"]);
    assert_eq!(dry.status.code(), Some(1), "{}", stderr(&dry));
    assert!(action(&dry, "node-a").starts_with(&format!("kept: used by {ns}/user")));
    assert_eq!(action(&dry, "node-b"), "not on the node");
    assert_eq!(action(&dry, CRIO_NODE), "would be removed (dry run)");
    for node in ["node-a", CRIO_NODE] {
        assert!(
            node_images(node).contains(&reference),
            "{node}: the dry run removed it"
        );
    }
    let out = rm(&["--nodes", &format!("node-a,{CRIO_NODE}")]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(action(&out, CRIO_NODE), "removed");
    assert!(!node_images(CRIO_NODE).contains(&reference));
    assert!(
        node_images("node-a").contains(&reference),
        "kept: a pod uses it"
    );
    let out = rm(&["--nodes", "node-a", "--force"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(action(&out, "node-a"), "removed");
    assert!(!node_images("node-a").contains(&reference));
    assert!(helper_pods(&client, ns).await.is_empty());
    let _ = pods
        .delete("user", &DeleteParams::default().grace_period(0))
        .await;
}
