//! End-to-end `--pin` (issue 12): sideloaded images must survive the kubelet's image garbage
//! collection when asked (k3s#2961 is what happens otherwise), proved against the real
//! kubelet: one node runs for a while with a short `imageMaximumGCAge`, and of two images
//! loaded the same way only the pinned one is still there after its collection.
//!
//! The GC test changes one kubelet's configuration and waits out the kubelet's 5-minute
//! image GC period, so this suite runs after the others (`tests/run`).

mod util;

use std::time::Duration;

use util::*;

/// The node whose kubelet collects images quickly for the GC test; the other test here
/// stays off it.
const GC_NODE: &str = "node-b";

/// The node's kubelet set back to the configuration `up` writes, however the test ends.
struct KubeletConfigBack(&'static str);

impl Drop for KubeletConfigBack {
    fn drop(&mut self) {
        let _ = std::process::Command::new(repo().join("tests/cluster/fault"))
            .args(["kubelet-config", self.0])
            .status();
    }
}

/// What CRI says of `reference` on `node`: `Some(pinned)`, or `None` when it does not list it.
fn cri_pinned(node: &str, reference: &str) -> Option<bool> {
    let out = std::process::Command::new(repo().join("tests/cluster/node-crictl"))
        .args([node, "inspecti", "-o", "json", reference])
        .output()
        .unwrap();
    if !out.status.success() {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    Some(v["status"]["pinned"] == true)
}

#[tokio::test(flavor = "multi_thread")]
async fn pin_is_set_where_the_runtime_honours_it_and_reported_where_it_cannot() {
    let _logs = LogsOnFailure;
    let client = admin_client().await;
    let namespace = TestNamespace::new(&client, "sl-pin").await;
    let dir = tempfile::tempdir().unwrap();
    let reference = format!("sideload.test/pinned:{}", unique("v"));
    let tar = dir.path().join("pinned.tar");
    make_image(&reference, &tar, &["--layers", "1", "--layer-mib", "1"]);
    // node-a: Debian's containerd 1.6.20 (ignores the label), node-c: 2.4.2, node-d: CRI-O
    // (pins only by its configuration), node-e: k3s's layout of 2.4.2.
    let nodes = ["node-a", "node-c", CRIO_NODE, "node-e"];
    let args = [
        tar.to_str().unwrap(),
        "--nodes",
        &nodes.join(","),
        "--helper-namespace",
        &namespace.name,
        "--pin",
        "-o",
        "json",
    ];
    let out = sideload(&args);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    let report = json_out(&out);
    for node in ["node-c", "node-e"] {
        let row = node_row(&report, node);
        assert_eq!(row["status"], "loaded", "{row}");
        assert_eq!(row["pinned"], true, "{row}");
        assert_eq!(cri_pinned(node, &reference), Some(true), "{node}");
    }
    let old = node_row(&report, "node-a");
    assert_eq!(old["status"], "loaded", "{old}");
    assert_eq!(old["pinned"], false, "{old}");
    assert!(
        old["pin_note"].as_str().unwrap().contains("1.6.22"),
        "{old}"
    );
    assert_eq!(cri_pinned("node-a", &reference), Some(false));
    let crio = node_row(&report, CRIO_NODE);
    assert_eq!(crio["status"], "loaded", "{crio}");
    assert_eq!(crio["pinned"], false, "{crio}");
    assert!(
        crio["pin_note"].as_str().unwrap().contains("pinned_images"),
        "{crio}"
    );
    assert_eq!(cri_pinned(CRIO_NODE, &reference), Some(false));

    // Loaded before without --pin, pinned by a rerun that sends nothing.
    let later = format!("sideload.test/pinned-later:{}", unique("v"));
    let later_tar = dir.path().join("later.tar");
    make_image(&later, &later_tar, &["--layers", "1", "--layer-mib", "1"]);
    let first = sideload(&[
        later_tar.to_str().unwrap(),
        "--nodes",
        "node-c",
        "--helper-namespace",
        &namespace.name,
    ]);
    assert!(first.status.success(), "{}", stderr(&first));
    assert_eq!(cri_pinned("node-c", &later), Some(false));
    let again = sideload(&[
        later_tar.to_str().unwrap(),
        "--nodes",
        "node-c",
        "--helper-namespace",
        &namespace.name,
        "--pin",
    ]);
    assert!(again.status.success(), "{}", stderr(&again));
    let text = stdout(&again);
    assert!(
        text.contains("already present") && text.contains("pinned"),
        "{text}"
    );
    assert_eq!(cri_pinned("node-c", &later), Some(true));

    // unpin gives them back to GC where pinned; says why not elsewhere.
    let out = sideload(&[
        "unpin",
        &reference,
        "--nodes",
        "node-a,node-c,node-e",
        "--helper-namespace",
        &namespace.name,
        "-o",
        "json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report = json_out(&out);
    for node in ["node-c", "node-e"] {
        let image = &node_row(&report, node)["images"][0];
        assert_eq!(image["action"], "unpinned", "{image}");
        assert_eq!(cri_pinned(node, &reference), Some(false), "{node}");
    }
    let old = &node_row(&report, "node-a")["images"][0];
    assert!(old["action"].as_str().unwrap().contains("1.6.22"), "{old}");
    // status shows it: pinned where it still is, not where it was unpinned.
    let out = sideload(&[
        "status",
        &later,
        &reference,
        "--nodes",
        "node-c",
        "--helper-namespace",
        &namespace.name,
        "-o",
        "json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report = json_out(&out);
    let images = node_row(&report, "node-c")["images"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(images[0]["pinned"], true, "{images:?}");
    assert_eq!(images[1]["pinned"], false, "{images:?}");

    assert!(helper_pods(&client, &namespace.name).await.is_empty());
    for node in nodes {
        node_remove_image(node, &reference);
    }
    node_remove_image("node-c", &later);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pinned_image_survives_the_kubelets_image_gc_and_an_unpinned_one_does_not() {
    let _logs = LogsOnFailure;
    let client = admin_client().await;
    let namespace = TestNamespace::new(&client, "sl-pin-gc").await;
    let dir = tempfile::tempdir().unwrap();
    let load = |name: &str, pin: bool| {
        let reference = format!("sideload.test/{name}:{}", unique("v"));
        let tar = dir.path().join(format!("{name}.tar"));
        make_image(&reference, &tar, &["--layers", "1", "--layer-mib", "1"]);
        let mut args = vec![
            tar.to_str().unwrap().to_string(),
            "--nodes".into(),
            GC_NODE.into(),
            "--helper-namespace".into(),
            namespace.name.clone(),
        ];
        if pin {
            args.push("--pin".into());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = sideload(&args);
        assert!(out.status.success(), "{}", stderr(&out));
        reference
    };
    let pinned = load("gc-pinned", true);
    let unpinned = load("gc-unpinned", false);
    assert_eq!(cri_pinned(GC_NODE, &pinned), Some(true));
    assert_eq!(cri_pinned(GC_NODE, &unpinned), Some(false));

    // Unused images older than 10 s go at the kubelet's next image GC; it runs every
    // 5 minutes (pkg/kubelet ImageGCPeriod) and not before imageMaximumGCAge has passed
    // since the kubelet started, so the first one that counts is 5 minutes after restart.
    let config = dir.path().join("gc.yaml");
    std::fs::write(&config, "imageMinimumGCAge: 1s\nimageMaximumGCAge: 10s\n").unwrap();
    let _back = KubeletConfigBack(GC_NODE);
    fault(&["kubelet-config", GC_NODE, config.to_str().unwrap()]);
    eventually(
        "the kubelet's image GC to remove the unpinned image",
        Duration::from_secs(420),
        || (!node_images(GC_NODE).contains(&unpinned)).then_some(()),
    );
    let left = node_images(GC_NODE);
    assert!(
        left.contains(&pinned),
        "the pinned image was collected too: {left:?}"
    );
    assert_eq!(cri_pinned(GC_NODE, &pinned), Some(true));
    node_remove_image(GC_NODE, &pinned);
}
