//! End-to-end tests of how bytes reach the nodes (issue 10): one upload relayed node to
//! node, proved by a proxy that counts what the plugin sent; a relay member the others
//! cannot reach, and one killed mid-transfer, while the rest still finish. The real plugin
//! binary against the real test cluster.

mod util;

use std::process::Stdio;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams};
use serde_json::Value;
use util::*;

fn sent_per_node(report: &Value) -> Vec<(String, u64, String)> {
    report["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["name"].as_str().unwrap().to_string(),
                n["bytes_sent"].as_u64().unwrap(),
                n["via"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn one_upload_reaches_every_node_through_the_relay() {
    let _logs = LogsOnFailure;
    let client = admin_client().await;
    let namespace = TestNamespace::new(&client, "sl-relay").await;
    let ns = namespace.name.clone();
    let dir = tempfile::tempdir().unwrap();
    let make = |name: &str| {
        let reference = format!("sideload.test/{name}:{}", unique("v"));
        let tar = dir.path().join(format!("{name}.tar"));
        make_image(&reference, &tar, &["--layers", "2", "--layer-mib", "16"]);
        (reference, tar)
    };
    let (relayed, tar) = make("relayed");
    let size = std::fs::metadata(&tar).unwrap().len();

    let proxy = CountingProxy::start().await;
    let out = sideload_via(
        &proxy.kubeconfig,
        &[
            tar.to_str().unwrap(),
            "-o",
            "json",
            "--helper-namespace",
            &ns,
        ],
    )
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let uploaded = proxy.sent().await;
    let report = json_out(&out);
    assert!(
        statuses(&report).iter().all(|(_, s)| s == "loaded"),
        "{report}"
    );
    let per_node = sent_per_node(&report);
    let heads: Vec<_> = per_node.iter().filter(|(_, b, _)| *b > 0).collect();
    assert_eq!(heads.len(), 1, "one node gets the upload: {per_node:?}");
    assert!(
        per_node
            .iter()
            .filter(|(_, _, via)| via.starts_with("relay from"))
            .count()
            == NODES.len() - 1,
        "{per_node:?}"
    );
    // Measured outside the plugin: about one archive went to the API server in all.
    assert!(
        uploaded < size + size / 10 + (1 << 20),
        "the client sent {uploaded} bytes for a {size}-byte archive to {} nodes",
        NODES.len()
    );
    // Import while streaming: one part per layer sent (a prefix image per layer but the
    // last, then the image), on every runtime (containerd imports each part as it arrives,
    // CRI-O copies each part's prefix image while the next arrives); the prefix images are
    // gone. Three layers: the two random ones and /app, which every test image shares and
    // which stays home when every node of the relay holds it (a test running beside this
    // one may just have removed it from a node).
    for n in report["nodes"].as_array().unwrap() {
        let sent = 3 - n["layers_reused"].as_u64().unwrap();
        assert!(sent >= 2, "{n}");
        assert_eq!(n["import_parts"], sent, "{n}");
    }
    // This run's staging names (other tests' runs have their own).
    let staging = format!(
        "sideload.invalid/partial:{}-",
        report["run"].as_str().unwrap()
    );
    for node in NODES {
        let logs = run_pod_on(&client, "default", node, &relayed).await;
        assert!(logs.contains("hello from"), "{node}: {logs}");
        let partial: Vec<_> = node_images(node)
            .into_iter()
            .filter(|i| i.starts_with(&staging))
            .collect();
        assert!(partial.is_empty(), "{node} kept {partial:?}");
    }

    // The same without relay: one upload per node.
    let (direct, tar) = make("direct");
    let proxy = CountingProxy::start().await;
    let out = sideload_via(
        &proxy.kubeconfig,
        &[
            tar.to_str().unwrap(),
            "-o",
            "json",
            "--relay",
            "off",
            "--helper-namespace",
            &ns,
        ],
    )
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let uploaded_direct = proxy.sent().await;
    assert!(
        uploaded_direct > size * (NODES.len() as u64 - 1),
        "--relay off sent only {uploaded_direct} bytes"
    );
    eprintln!(
        "client bytes for a {size}-byte archive to {} nodes: relay {uploaded}, direct {uploaded_direct}",
        NODES.len()
    );
    let left = helper_pods(&client, &ns).await;
    assert!(left.is_empty(), "left behind: {left:?}");
    for node in NODES {
        node_remove_image(node, &relayed);
        node_remove_image(node, &direct);
    }
}

/// Cuts node-a's route to node-c's pods (and back), as a NetworkPolicy or a firewall
/// between nodes would; restored on drop.
struct Cut;

impl Cut {
    fn new() -> Cut {
        for (ns, cidr) in [
            ("sl-node-a", "10.214.3.0/24"),
            ("sl-node-c", "10.214.1.0/24"),
        ] {
            let status = std::process::Command::new("ip")
                .args(["-n", ns, "route", "replace", "unreachable", cidr])
                .status()
                .unwrap();
            assert!(status.success());
        }
        Cut
    }
}

impl Drop for Cut {
    fn drop(&mut self) {
        for (ns, cidr, via) in [
            ("sl-node-a", "10.214.3.0/24", "10.213.0.13"),
            ("sl-node-c", "10.214.1.0/24", "10.213.0.11"),
        ] {
            let _ = std::process::Command::new("ip")
                .args([
                    "-n", ns, "route", "replace", cidr, "via", via, "dev", "eth0",
                ])
                .status();
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_relay_member_the_others_cannot_reach_is_loaded_directly() {
    let _logs = LogsOnFailure;
    let client = admin_client().await;
    let namespace = TestNamespace::new(&client, "sl-cut").await;
    let dir = tempfile::tempdir().unwrap();
    let reference = format!("sideload.test/cut:{}", unique("v"));
    let tar = dir.path().join("cut.tar");
    make_image(&reference, &tar, &["--layers", "1", "--layer-mib", "4"]);
    // node-a heads the relay (the first node), node-c is one of its children.
    let nodes = "node-a,node-b,node-c";
    let cut = Cut::new();
    let out = sideload(&[
        tar.to_str().unwrap(),
        "--nodes",
        nodes,
        "-o",
        "json",
        "--helper-namespace",
        &namespace.name,
    ]);
    drop(cut);
    assert!(out.status.success(), "{}", stderr(&out));
    let report = json_out(&out);
    assert!(
        statuses(&report).iter().all(|(_, s)| s == "loaded"),
        "{report}"
    );
    let per_node = sent_per_node(&report);
    let c = per_node.iter().find(|(n, _, _)| n == "node-c").unwrap();
    assert!(
        c.2.starts_with("direct (the relay did not reach it"),
        "{per_node:?}"
    );
    assert!(c.1 > 4 << 20, "node-c got its own upload: {per_node:?}");
    let b = per_node.iter().find(|(n, _, _)| n == "node-b").unwrap();
    assert_eq!(b.2, "relay from node-a", "{per_node:?}");
    for node in ["node-a", "node-b", "node-c"] {
        let logs = run_pod_on(&client, "default", node, &reference).await;
        assert!(logs.contains("hello from"), "{node}: {logs}");
        node_remove_image(node, &reference);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_relay_member_killed_mid_transfer_is_retried_and_the_others_load() {
    let _logs = LogsOnFailure;
    let client = admin_client().await;
    let namespace = TestNamespace::new(&client, "sl-kill").await;
    let ns = namespace.name.clone();
    let dir = tempfile::tempdir().unwrap();
    let reference = format!("sideload.test/killed:{}", unique("v"));
    let tar = dir.path().join("killed.tar");
    make_image(&reference, &tar, &["--layers", "2", "--layer-mib", "96"]);
    // node-a heads, node-b relays on to node-d; node-b's helper is killed mid-stream.
    let mut cmd = plugin();
    cmd.arg("--kubeconfig")
        .arg(admin_kubeconfig())
        .args([
            tar.to_str().unwrap(),
            "--nodes",
            "node-a,node-b,node-c,node-d",
            "-o",
            "json",
        ])
        .args(["--helper-namespace", &ns])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd.spawn().unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let victim = loop {
        let list = pods.list(&Default::default()).await.unwrap().items;
        let running = list
            .iter()
            .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
            .count();
        if running == 4 {
            break list
                .into_iter()
                .find(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some("node-b"))
                .and_then(|p| p.metadata.name)
                .unwrap();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // The inventories take about a second; then the stream flows for several.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    pods.delete(&victim, &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    eprintln!("stderr:\n{}", stderr(&out));
    let report = json_out(&out);
    let st = statuses(&report);
    for node in ["node-a", "node-b", "node-c", "node-d"] {
        assert!(
            st.contains(&(node.to_string(), "loaded".to_string())),
            "{node} must load: {report}"
        );
    }
    // node-b's helper was killed: its first attempt failed, and a retry with a new helper
    // pod loaded it.
    let b = node_row(&report, "node-b");
    assert_eq!(b["attempts"], 2, "{b}");
    assert_eq!(
        b["earlier_failures"].as_array().map(Vec::len),
        Some(1),
        "{b}"
    );
    for node in ["node-a", "node-c", "node-d"] {
        let n = node_row(&report, node);
        assert_eq!(n["attempts"], 1, "{n}");
    }
    let d = sent_per_node(&report)
        .into_iter()
        .find(|(n, _, _)| n == "node-d")
        .unwrap();
    assert!(
        d.2.starts_with("direct ("),
        "node-d lost its upstream and was loaded directly: {d:?}"
    );
    let left = helper_pods(&client, &ns).await;
    assert!(left.is_empty(), "left behind: {left:?}");
    for node in ["node-a", "node-b", "node-c", "node-d"] {
        let logs = run_pod_on(&client, "default", node, &reference).await;
        assert!(logs.contains("hello from"), "{node}: {logs}");
    }
    for node in NODES {
        node_remove_image(node, &reference);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn compression_on_and_off_give_the_same_image_in_fewer_bytes() {
    let _logs = LogsOnFailure;
    let client = admin_client().await;
    let namespace = TestNamespace::new(&client, "sl-zstd").await;
    let dir = tempfile::tempdir().unwrap();
    let reference = format!("sideload.test/zstd:{}", unique("v"));
    let tar = dir.path().join("zstd.tar");
    // docker save writes layers uncompressed: one text-like (a library tree), one random.
    make_image(
        &reference,
        &tar,
        &[
            "--format",
            "docker",
            "--layers",
            "2",
            "--text-layers",
            "1",
            "--layer-mib",
            "16",
        ],
    );
    let config = config_of(&tar);
    let mut seen = Vec::new();
    for (compress, node) in [("none", "node-b"), ("auto", "node-c"), ("auto", CRIO_NODE)] {
        let out = sideload(&[
            tar.to_str().unwrap(),
            "--nodes",
            node,
            "--compress",
            compress,
            "-o",
            "json",
            "--helper-namespace",
            &namespace.name,
        ]);
        assert!(out.status.success(), "{compress}: {}", stderr(&out));
        let report = json_out(&out);
        let n = &report["nodes"][0];
        assert_eq!(n["status"], "loaded", "{n}");
        let inspect: Value =
            serde_json::from_str(&node_crictl(node, &["inspecti", "-o", "json", &reference]))
                .unwrap();
        let id = inspect["status"]["id"]
            .as_str()
            .unwrap()
            .trim_start_matches("sha256:")
            .to_string();
        assert_eq!(
            id,
            config.trim_start_matches("sha256:"),
            "{node}: {inspect}"
        );
        seen.push((
            compress,
            n["bytes_sent"].as_u64().unwrap(),
            n["bytes_received"].as_u64().unwrap(),
        ));
        let logs = run_pod_on(&client, "default", node, &reference).await;
        assert!(logs.contains("hello from"), "{node}: {logs}");
        node_remove_image(node, &reference);
    }
    let (_, plain_sent, plain_received) = seen[0];
    let (_, zstd_sent, zstd_received) = seen[1];
    assert_eq!(
        plain_received, zstd_received,
        "the same stream arrives: {seen:?}"
    );
    assert_eq!(
        plain_sent, plain_received,
        "uncompressed, sent is received: {seen:?}"
    );
    // The text layer shrinks about 3-4x, the random one not at all.
    assert!(
        zstd_sent < plain_sent * 3 / 4,
        "compression saved too little: {seen:?}"
    );
}

/// CRI-O (skopeo) reads a stream only once it is whole, so the agent stages it, and copies
/// each part's prefix image into the storage while the next part arrives. Held in the last
/// layer, the node already holds the prefix images of the layers before it; the image that
/// results is the one `--pipeline off` gives, and no prefix image stays.
#[tokio::test(flavor = "multi_thread")]
async fn crio_imports_each_part_while_the_next_arrives_and_ends_with_the_plain_image() {
    let _logs = LogsOnFailure;
    let client = admin_client().await;
    let namespace = TestNamespace::new(&client, "sl-crio-ahead").await;
    let ns = namespace.name.clone();
    let dir = tempfile::tempdir().unwrap();
    let reference = format!("sideload.test/ahead:{}", unique("v"));
    let tar = dir.path().join("ahead.tar");
    make_image(&reference, &tar, &["--layers", "3", "--layer-mib", "8"]);
    let inspect = |what: &str| -> Value {
        let v: Value = serde_json::from_str(&node_crictl(
            CRIO_NODE,
            &["inspecti", "-o", "json", &reference],
        ))
        .unwrap();
        let status = &v["status"];
        eprintln!("{what}: {status}");
        serde_json::json!([status["id"], status["repoDigests"], status["size"]])
    };

    // First imported whole (no pod ever uses it, so removing it takes its layers too).
    let out = sideload(&[
        tar.to_str().unwrap(),
        "--nodes",
        CRIO_NODE,
        "--pipeline",
        "off",
        "-o",
        "json",
        "--helper-namespace",
        &ns,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report = json_out(&out);
    assert_eq!(node_row(&report, CRIO_NODE)["import_parts"], 1, "{report}");
    let plain = inspect("plain");
    node_remove_image(CRIO_NODE, &reference);
    assert!(!node_images(CRIO_NODE).contains(&reference));

    // Then pipelined, held in the last layer.
    let mut cmd = plugin();
    cmd.arg("--kubeconfig")
        .arg(admin_kubeconfig())
        .arg(&tar)
        .args(["--nodes", CRIO_NODE, "--relay", "off", "--compress", "none"])
        .args(["-o", "json", "--helper-namespace", &ns]);
    // Past the first two layers (8 MiB each, random), inside the third.
    let held = Held::start(cmd, 20 << 20);
    // While the last layer is still on its way, both prefix images are in CRI-O's storage.
    let partial = |images: Vec<String>| -> Vec<String> {
        images
            .into_iter()
            .filter(|i| i.starts_with("sideload.invalid/partial:"))
            .collect()
    };
    let ahead = eventually(
        "the parts before the last to be imported",
        Duration::from_secs(60),
        || {
            let seen = partial(node_images(CRIO_NODE));
            let ours: Vec<_> = seen
                .iter()
                .filter(|i| i.ends_with("-1") || i.ends_with("-2"))
                .cloned()
                .collect();
            (ours.len() >= 2).then_some(ours)
        },
    );
    assert!(
        !node_images(CRIO_NODE).contains(&reference),
        "the image itself is not there before its last layer"
    );
    let out = held.release().await;
    assert!(out.status.success(), "{}", stderr(&out));
    let report = json_out(&out);
    let run = report["run"].as_str().unwrap();
    let row = node_row(&report, CRIO_NODE);
    assert_eq!(row["status"], "loaded", "{row}");
    assert_eq!(row["import_parts"], 3, "{row}");
    assert!(
        row["bytes_received"].as_u64().unwrap() > 24 << 20,
        "the three layers were sent: {row}"
    );
    let ours = format!("sideload.invalid/partial:{run}-");
    assert!(
        ahead.iter().filter(|i| i.starts_with(&ours)).count() == 2,
        "this run's prefix images were there mid-stream: {ahead:?}"
    );
    let left: Vec<_> = partial(node_images(CRIO_NODE))
        .into_iter()
        .filter(|i| i.starts_with(&ours))
        .collect();
    assert!(left.is_empty(), "prefix images left: {left:?}");
    let pipelined = inspect("pipelined");
    assert_eq!(
        pipelined, plain,
        "the pipelined import gives the plain import's image"
    );
    assert_eq!(
        pipelined[0].as_str().unwrap().trim_start_matches("sha256:"),
        config_of(&tar).trim_start_matches("sha256:")
    );
    let logs = run_pod_on(&client, "default", CRIO_NODE, &reference).await;
    assert!(logs.contains("hello from"), "{logs}");
    node_remove_image(CRIO_NODE, &reference);
    let left = helper_pods(&client, &ns).await;
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_byte_corrupted_on_the_wire_fails_the_node_and_imports_nothing() {
    let _logs = LogsOnFailure;
    let client = admin_client().await;
    let namespace = TestNamespace::new(&client, "sl-flip").await;
    let ns = namespace.name.clone();
    let dir = tempfile::tempdir().unwrap();
    let reference = format!("sideload.test/flipped:{}", unique("v"));
    let tar = dir.path().join("flipped.tar");
    // Three random layers: containerd imports the stream in three parts (two prefix images
    // exist by the time the last layer arrives); CRI-O stages it and checks every blob.
    make_image(&reference, &tar, &["--layers", "3", "--layer-mib", "2"]);
    let size = std::fs::metadata(&tar).unwrap().len();
    let nodes = ["node-b", CRIO_NODE];
    let args = [
        tar.to_str().unwrap(),
        "--nodes",
        "node-b,node-d",
        "--relay",
        "off",
        "-o",
        "json",
        "--helper-namespace",
        &ns,
    ];
    // One byte of the last layer flipped on its way to every node (random layers travel
    // as raw frames: the byte lands in the layer's data).
    let mut cmd = plugin();
    cmd.arg("--kubeconfig").arg(admin_kubeconfig()).args(args);
    let report = run_with_byte_flipped(cmd, size * 5 / 6);
    for n in report["nodes"].as_array().unwrap() {
        assert_eq!(n["status"], "failed", "{n}");
        assert!(
            n["error"]
                .as_str()
                .is_some_and(|e| e.contains("corrupted in transit")),
            "a failed node says why: {n}"
        );
    }
    for node in nodes {
        let images = node_images(node);
        assert!(
            !images.iter().any(|i| i.contains(&reference)),
            "{node} holds the corrupted image: {images:?}"
        );
        let staging = format!(
            "sideload.invalid/partial:{}-",
            report["run"].as_str().unwrap()
        );
        let partial: Vec<_> = images.iter().filter(|i| i.starts_with(&staging)).collect();
        assert!(partial.is_empty(), "{node} kept {partial:?}");
    }
    let left = helper_pods(&client, &ns).await;
    assert!(left.is_empty(), "left behind: {left:?}");

    // The same run over a clean link loads both.
    let out = sideload(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    for node in nodes {
        let logs = run_pod_on(&client, "default", node, &reference).await;
        assert!(logs.contains("hello from"), "{node}: {logs}");
        node_remove_image(node, &reference);
    }
}
