//! End-to-end tests a hostile tenant would write, and the sharp edges around the helper
//! (issue 8): tenant images never run in the helper, a truncated archive fails fast, a
//! helper image that is gone is replaced, a half-done import is redone, the documented
//! roles are enough, and an archive edited after a run is not trusted from the scan cache.
//! The real plugin binary against the real test cluster.

mod util;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::json;
use util::*;

/// What the tenant's code prints wherever it runs (tests/cluster/images/tenant/mark.h).
const MARK: &str = "SIDELOAD-TENANT-CODE-RAN";
/// Files it tries to leave on the host (the nodes' /tmp is the host's /tmp here).
const MARK_FILES: [&str; 2] = [
    "/tmp/sideload-tenant-mark",
    "/tmp/sideload-tenant-mark-host",
];
const EVIL_PAUSE: &str = "evil.example/tenant/pause:1";
const EVIL_PRELOAD: &str = "evil.example/tenant/preload:1";

/// The plugin as admin with debug logs: every node-side output is in stderr.
fn sideload_debug(args: &[&str]) -> std::process::Output {
    let mut cmd = plugin();
    cmd.env("SIDELOAD_LOG", "kubectl_sideload=debug")
        .arg("--kubeconfig")
        .arg(admin_kubeconfig())
        .args(args);
    run(cmd)
}

async fn start_pod(client: &kube::Client, ns: &str, name: &str, node: &str, image: &str) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "nodeName": node,
            "terminationGracePeriodSeconds": 1,
            "tolerations": [{"operator": "Exists"}],
            "containers": [{"name": "app", "image": image, "imagePullPolicy": "Never"}]
        }
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
}

async fn wait_running(client: &kube::Client, ns: &str, name: &str) -> Pod {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let pod = pods.get(name).await.unwrap();
        if pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running") {
            return pod;
        }
        assert!(
            Instant::now() < deadline,
            "pod {name} never ran: {:?}",
            pod.status
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Removes an image under every name CRI gives it (the tag and `sha256:<config>`).
fn remove_everywhere(reference: &str, config: Option<&str>) {
    for node in NODES {
        node_remove_image(node, reference);
        if let Some(config) = config {
            node_remove_image(node, config);
        }
    }
}

/// Held by the tests that decide which images the nodes offer as helper images: the
/// tenant test puts a large pause-named image on every node, which node-c (it lists only
/// its largest image) then offers first, ahead of the image the gone-image test needs
/// first. Side by side, that test once failed in the suite.
static HELPER_CANDIDATES: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread")]
async fn tenant_images_never_run_in_the_helper() {
    let _logs = LogsOnFailure;
    let _candidates = HELPER_CANDIDATES.lock().await;
    let client = admin_client().await;
    let namespace = TestNamespace::new(&client, "sl-tenant").await;
    let ns = namespace.name.as_str();
    let dir = tempfile::tempdir().unwrap();
    let status = std::process::Command::new(repo().join("tests/cluster/tenant-images"))
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(status.success(), "tenant-images failed");
    for f in MARK_FILES {
        let _ = std::fs::remove_file(f);
    }
    let pause_tar = dir.path().join("evil-pause.tar");
    let preload_tar = dir.path().join("evil-preload.tar");
    let configs = [config_of(&pause_tar), config_of(&preload_tar)];

    // The tenant's images on every node: a big "pause" image, and one whose
    // /etc/ld.so.preload and LD_PRELOAD name a library of theirs.
    for tar in [&pause_tar, &preload_tar] {
        let out = sideload(&[tar.to_str().unwrap(), "--helper-namespace", ns]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    // A tenant pod of the preload image on every node: its own program shows the library is
    // live in that image (and its image becomes a helper image candidate there).
    for node in NODES {
        start_pod(&client, ns, &format!("tenant-{node}"), node, EVIL_PRELOAD).await;
    }
    for node in NODES {
        let name = format!("tenant-{node}");
        wait_running(&client, ns, &name).await;
        let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
        let mut logs = String::new();
        for _ in 0..60 {
            logs = pods
                .logs(&name, &Default::default())
                .await
                .unwrap_or_default();
            if logs.contains("preload-armed") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        assert!(
            logs.contains("preload-armed") && logs.contains("tenant app running"),
            "the tenant image's library does not run in its own pod: {logs:?}"
        );
    }

    // Sideload a fresh image three ways: helper images as the plugin picks them, and forced
    // onto each tenant image in turn. Every node must load, and no tenant code may run.
    let reference = format!("sideload.test/victim:{}", unique("v"));
    let tar = dir.path().join("victim.tar");
    make_image(&reference, &tar, &["--layers", "1", "--layer-mib", "1"]);
    for helper in [None, Some(EVIL_PAUSE), Some(EVIL_PRELOAD)] {
        let mut args = vec![tar.to_str().unwrap(), "--force", "--helper-namespace", ns];
        if let Some(image) = helper {
            args.extend(["--helper-image", image]);
        }
        let dry = sideload(&[&args[..], &["--dry-run", "-o", "yaml"]].concat());
        assert!(dry.status.success(), "{}", stderr(&dry));
        args.extend(["-o", "json"]);
        let yaml = stdout(&dry);
        assert_eq!(
            yaml.matches("- /.sideload/agent\n    - pause").count(),
            NODES.len(),
            "every helper runs the agent, never an image's entrypoint: {yaml}"
        );
        let out = sideload_debug(&args);
        let err = stderr(&out);
        assert!(out.status.success(), "helper image {helper:?}: {err}");
        let report = json_out(&out);
        assert!(
            statuses(&report).iter().all(|(_, s)| s == "loaded"),
            "{helper:?}: {report}"
        );
        assert!(
            !err.contains(MARK),
            "tenant code ran in the helper ({helper:?}):\n{err}"
        );
        if let Some(image) = helper {
            assert!(
                err.contains(&format!("image={image}")),
                "the helper did not start from {image}: {err}"
            );
        }
    }
    for f in MARK_FILES {
        assert!(!Path::new(f).exists(), "tenant code left {f} on the host");
    }
    for node in NODES {
        let logs = run_pod_on(&client, "default", node, &reference).await;
        assert!(logs.contains("hello from"), "{node}: {logs}");
    }

    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    for node in NODES {
        let _ = pods
            .delete(
                &format!("tenant-{node}"),
                &DeleteParams::default().grace_period(0),
            )
            .await;
    }
    for node in NODES {
        let name = format!("tenant-{node}");
        for _ in 0..120 {
            if pods.get_opt(&name).await.ok().flatten().is_none() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    remove_everywhere(EVIL_PAUSE, Some(&configs[0]));
    remove_everywhere(EVIL_PRELOAD, Some(&configs[1]));
    remove_everywhere(&reference, None);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_truncated_archive_fails_its_node_within_seconds() {
    let _logs = LogsOnFailure;
    let client = admin_client().await;
    let namespace = TestNamespace::new(&client, "sl-trunc").await;
    let ns = namespace.name.clone();
    let dir = tempfile::tempdir().unwrap();
    let reference = format!("sideload.test/truncated:{}", unique("v"));
    let tar = dir.path().join("big.tar");
    make_image(&reference, &tar, &["--layers", "2", "--layer-mib", "128"]);
    let mut cmd = plugin();
    cmd.arg("--kubeconfig")
        .arg(admin_kubeconfig())
        .arg(&tar)
        .args(["--nodes", "node-b", "-o", "json", "--helper-namespace", &ns])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd.spawn().unwrap();
    // Once its helper runs, the stream follows within a second: cut the file under it.
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let running = pods
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .iter()
            .any(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"));
        if running {
            break;
        }
        assert!(Instant::now() < deadline, "the helper never ran");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    std::fs::OpenOptions::new()
        .write(true)
        .open(&tar)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let cut = Instant::now();
    let out = child.wait_with_output().unwrap();
    let took = cut.elapsed();
    eprintln!("stderr:\n{}", stderr(&out));
    assert!(!out.status.success());
    assert!(
        took < Duration::from_secs(10),
        "the node failed only after {took:?}"
    );
    let report = json_out(&out);
    assert_eq!(
        statuses(&report),
        [("node-b".to_string(), "failed".to_string())]
    );
    let error = report["nodes"][0]["error"].as_str().unwrap();
    assert!(
        error.contains("truncated") || error.contains("changed") || error.contains("streaming"),
        "{error}"
    );
    let left = helper_pods(&client, &ns).await;
    assert!(left.is_empty(), "left behind: {left:?}");
    assert!(
        !node_images("node-b").contains(&reference),
        "a cut stream was imported"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_helper_image_gone_from_the_node_is_replaced_by_the_next_candidate() {
    let _logs = LogsOnFailure;
    let _candidates = HELPER_CANDIDATES.lock().await;
    let client = admin_client().await;
    let namespace = TestNamespace::new(&client, "sl-gone").await;
    let ns = namespace.name.as_str();
    let dir = tempfile::tempdir().unwrap();
    // An image of a pod running on node-c: a helper candidate, listed before anything the
    // node lists (node-c lists only its largest image, never pause). Then the image is
    // removed while the pod runs on, as the kubelet's own image GC or an admin might.
    let gone = format!("aaaa.test/gone:{}", unique("v"));
    let gone_tar = dir.path().join("gone.tar");
    make_image(&gone, &gone_tar, &[]);
    let out = sideload(&[
        gone_tar.to_str().unwrap(),
        "--nodes",
        "node-c",
        "--helper-namespace",
        ns,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    start_pod(&client, ns, "holder", "node-c", &gone).await;
    wait_running(&client, ns, "holder").await;
    node_remove_image("node-c", &gone);
    node_remove_image("node-c", &config_of(&gone_tar));
    assert!(!node_images("node-c").contains(&gone));

    let reference = format!("sideload.test/after-gone:{}", unique("v"));
    let tar = dir.path().join("after.tar");
    make_image(&reference, &tar, &[]);
    // The plan must start node-c's helper from the gone image. A pause-named image that
    // the tenant test removed may still be in node-c's listing for a while (the kubelet's
    // list trails a removal by up to a minute), and pause images come first: wait it out.
    let first = format!("helper starts from {gone}");
    let mut plan = String::new();
    let start = Instant::now();
    while !plan.contains(&first) {
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "the removed image should be the first candidate: {plan}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        let out = sideload(&[
            tar.to_str().unwrap(),
            "--nodes",
            "node-c",
            "--dry-run",
            "--helper-namespace",
            ns,
        ]);
        assert!(out.status.success(), "{}", stderr(&out));
        plan = stdout(&out);
    }
    let out = sideload_debug(&[
        tar.to_str().unwrap(),
        "--nodes",
        "node-c",
        "-o",
        "json",
        "--helper-namespace",
        ns,
    ]);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert_eq!(
        statuses(&json_out(&out)),
        [("node-c".to_string(), "loaded".to_string())]
    );
    assert!(
        err.contains("helper image unusable, trying the next"),
        "{err}"
    );
    let left = helper_pods(&client, ns).await;
    assert!(left.is_empty(), "left behind: {left:?}");
    let logs = run_pod_on(&client, "default", "node-c", &reference).await;
    assert!(logs.contains("hello from"), "{logs}");
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let _ = pods
        .delete("holder", &DeleteParams::default().grace_period(0))
        .await;
    node_remove_image("node-c", &reference);
}

/// An OCI archive without its layer blobs: imported with `--no-unpack`, the image is listed
/// but neither complete nor unpacked, as after an import that died half-way.
fn without_layers(src: &Path, dst: &Path, layers: &[String]) {
    let mut input = tar::Archive::new(std::fs::File::open(src).unwrap());
    let mut output = tar::Builder::new(std::fs::File::create(dst).unwrap());
    for entry in input.entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = entry.path().unwrap().to_string_lossy().into_owned();
        if layers
            .iter()
            .any(|l| path.ends_with(l.trim_start_matches("sha256:")))
        {
            continue;
        }
        let mut header = entry.header().clone();
        output.append_data(&mut header, &path, &mut entry).unwrap();
    }
    output.finish().unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_half_imported_image_is_imported_again_and_its_pods_run() {
    let _logs = LogsOnFailure;
    let client = admin_client().await;
    let dir = tempfile::tempdir().unwrap();
    let reference = format!("sideload.test/half:{}", unique("v"));
    let tar = dir.path().join("full.tar");
    make_image(
        &reference,
        &tar,
        &["--format", "oci", "--layers", "1", "--layer-mib", "2"],
    );
    let inspect = {
        let mut c = plugin();
        c.args(["inspect", tar.to_str().unwrap(), "-o", "json"]);
        json_out(&run(c))
    };
    // The random layer only: the shared /app layer is on every node already.
    let layers: Vec<String> = inspect["images"][0]["layers"]
        .as_array()
        .unwrap()
        .iter()
        .skip(1)
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect();
    let partial = dir.path().join("partial.tar");
    without_layers(&tar, &partial, &layers);
    for node in CONTAINERD_NODES {
        node_ctr(
            node,
            &[
                "-n",
                "k8s.io",
                "images",
                "import",
                "--no-unpack",
                partial.to_str().unwrap(),
            ],
        );
        assert!(node_images(node).contains(&reference), "{node}: not listed");
    }
    // containerd's half-done import; CRI-O's skopeo marks a layer incomplete until it is
    // whole, and the storage drops such layers itself.
    let containerd = CONTAINERD_NODES.join(",");
    let out = sideload(&[tar.to_str().unwrap(), "--nodes", &containerd, "-o", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report = json_out(&out);
    assert!(
        statuses(&report).iter().all(|(_, s)| s == "loaded"),
        "a listed but incomplete image must be imported again: {report}"
    );
    for node in CONTAINERD_NODES {
        let logs = run_pod_on(&client, "default", node, &reference).await;
        assert!(logs.contains("hello from"), "{node}: {logs}");
    }
    let again = json_out(&sideload(&[
        tar.to_str().unwrap(),
        "--nodes",
        &containerd,
        "-o",
        "json",
    ]));
    assert!(
        statuses(&again).iter().all(|(_, s)| s == "skipped"),
        "now it is complete: {again}"
    );
    remove_everywhere(&reference, None);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_documented_roles_are_enough_for_load_dry_run_cleanup_and_completion() {
    let _logs = LogsOnFailure;
    let dir = tempfile::tempdir().unwrap();
    let reference = format!("sideload.test/rbac:{}", unique("v"));
    let tar = dir.path().join("rbac.tar");
    make_image(&reference, &tar, &[]);
    let limited = |args: &[&str]| {
        let mut cmd = plugin();
        cmd.arg("--kubeconfig").arg(limited_kubeconfig()).args(args);
        run(cmd)
    };
    let t = tar.to_str().unwrap();
    let out = limited(&[t, "--nodes", "node-a", "-o", "json"]);
    assert!(
        out.status.success(),
        "limited user failed: {}",
        stderr(&out)
    );
    // The run's Lease is in the Role: no warning about its heartbeat.
    assert!(!stderr(&out).contains("lease"), "{}", stderr(&out));
    assert_eq!(
        statuses(&json_out(&out)),
        [("node-a".to_string(), "loaded".to_string())]
    );
    let dry = limited(&[t, "--dry-run=server", "--nodes", "node-b"]);
    assert!(dry.status.success(), "{}", stderr(&dry));
    let cleanup = limited(&["cleanup"]);
    assert!(cleanup.status.success(), "{}", stderr(&cleanup));
    // status and an rm dry run need nothing more than a load.
    for args in [
        vec!["status", t, "--nodes", "node-a", "-o", "json"],
        vec!["rm", reference.as_str(), "--nodes", "node-a", "--dry-run"],
    ] {
        let out = limited(&args);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        assert!(
            !stderr(&out).contains("warning"),
            "{args:?}: {}",
            stderr(&out)
        );
    }
    let status = json_out(&limited(&["status", t, "--nodes", "node-a", "-o", "json"]));
    assert_eq!(
        node_row(&status, "node-a")["images"][0]["matches_archive"],
        true,
        "{status}"
    );
    for (words, expect) in [
        (vec!["x.tar", "--nodes", "node-"], "node-b"),
        (vec!["x.tar", "-n", "kube-"], "kube-system"),
        (vec!["x.tar", "--workload", "deploy/"], ":4"),
    ] {
        // Completion reads the connection flags from the words typed, as kubectl passes
        // them (kubectl_complete-sideload runs `__complete -- WORDS…`).
        let kc = limited_kubeconfig().to_string_lossy().into_owned();
        let mut args = vec!["__complete", "--", "--kubeconfig", kc.as_str()];
        args.extend(&words);
        let out = run({
            let mut c = plugin();
            c.args(&args);
            c
        });
        assert!(out.status.success(), "{words:?}: {}", stderr(&out));
        assert!(stdout(&out).contains(expect), "{words:?}: {}", stdout(&out));
        assert!(!stderr(&out).contains("forbidden"), "{}", stderr(&out));
    }

    // Outside the Role's namespace the same user may not create helper pods: the error
    // names the verb, the resource and the fix.
    let denied = limited(&[t, "--nodes", "node-a", "--helper-namespace", "default"]);
    assert!(!denied.status.success());
    let err = stderr(&denied);
    assert!(
        err.contains("permission denied") && err.contains("configmaps"),
        "{err}"
    );
    node_remove_image("node-a", &reference);
}

/// What a run by a user holding the documented roles minus one rule must show.
enum Expect {
    /// Fails, and stderr names this verb and resource.
    Denied(&'static str, &'static str),
    /// Succeeds (an optional rule), with this in stderr when not empty.
    Works(&'static str),
}

#[tokio::test(flavor = "multi_thread")]
async fn each_documented_rule_removed_in_turn_is_named_or_not_needed() {
    use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
    let _logs = LogsOnFailure;
    let client = admin_client().await;
    let namespace = TestNamespace::new(&client, "sl-rbac").await;
    let ns = namespace.name.clone();
    let manifest = |file: &str| {
        std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("plugin-manifest")
                .join(file),
        )
        .unwrap()
    };
    let cluster_role: ClusterRole = serde_yaml::from_str(&manifest("clusterrole.yaml")).unwrap();
    let role: Role = serde_yaml::from_str(&manifest("role.yaml")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let reference = format!("sideload.test/rbac-rules:{}", unique("v"));
    let tar = dir.path().join("rules.tar");
    make_image(&reference, &tar, &[]);
    // A workload for the rules only --workload needs (never rolled out: the denial comes first).
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> =
        Api::namespaced(client.clone(), &ns);
    deployments
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": "rules"},
                "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "rules"}},
                    "template": {"metadata": {"labels": {"app": "rules"}},
                        "spec": {"containers": [{"name": "app", "image": "sideload.test/rbac-rules:old"}]}}}
            }))
            .unwrap(),
        )
        .await
        .unwrap();
    // In the order of the files; a new rule there fails this test until it is listed here.
    let cluster_cases = [
        Expect::Denied("list", "nodes"),
        Expect::Works(""),
        Expect::Works(""),
        Expect::Denied("get", "deployments"),
        Expect::Works(""),
        Expect::Works(""),
    ];
    let role_cases = [
        Expect::Denied("create", "pods"),
        Expect::Denied("create", "pods/exec"),
        Expect::Denied("create", "configmaps"),
        Expect::Works("cannot create leases.coordination.k8s.io"),
    ];
    assert_eq!(
        cluster_role.rules.as_ref().unwrap().len(),
        cluster_cases.len()
    );
    assert_eq!(role.rules.as_ref().unwrap().len(), role_cases.len());
    let cases = cluster_cases
        .iter()
        .enumerate()
        .map(|(i, e)| (true, i, e))
        .chain(role_cases.iter().enumerate().map(|(i, e)| (false, i, e)));
    let cluster_roles: Api<ClusterRole> = Api::all(client.clone());
    let cluster_bindings: Api<ClusterRoleBinding> = Api::all(client.clone());
    let roles: Api<Role> = Api::namespaced(client.clone(), &ns);
    let bindings: Api<RoleBinding> = Api::namespaced(client.clone(), &ns);
    for (cluster, index, expect) in cases {
        let user = unique(&format!("rbac-{}-{index}", if cluster { "c" } else { "r" }));
        let mut cr = cluster_role.clone();
        let mut r = role.clone();
        let removed = if cluster {
            cr.rules.as_mut().unwrap().remove(index)
        } else {
            r.rules.as_mut().unwrap().remove(index)
        };
        cr.metadata = serde_json::from_value(json!({"name": user})).unwrap();
        r.metadata = serde_json::from_value(json!({"name": user, "namespace": ns})).unwrap();
        let subject =
            json!([{"kind": "User", "name": user, "apiGroup": "rbac.authorization.k8s.io"}]);
        cluster_roles
            .create(&PostParams::default(), &cr)
            .await
            .unwrap();
        roles.create(&PostParams::default(), &r).await.unwrap();
        let crb: ClusterRoleBinding = serde_json::from_value(json!({
            "metadata": {"name": user}, "subjects": subject,
            "roleRef": {"kind": "ClusterRole", "name": user, "apiGroup": "rbac.authorization.k8s.io"}
        }))
        .unwrap();
        let rb: RoleBinding = serde_json::from_value(json!({
            "metadata": {"name": user, "namespace": ns}, "subjects": subject,
            "roleRef": {"kind": "Role", "name": user, "apiGroup": "rbac.authorization.k8s.io"}
        }))
        .unwrap();
        cluster_bindings
            .create(&PostParams::default(), &crb)
            .await
            .unwrap();
        bindings.create(&PostParams::default(), &rb).await.unwrap();
        rules_in_effect(&client, &user, &ns, &cr.rules.unwrap(), &r.rules.unwrap()).await;
        // Impersonated by the admin: the denial is then the user's RBAC, never impersonation's.
        let mut args = vec![
            tar.to_str().unwrap(),
            "--as",
            &user,
            "--nodes",
            "node-a",
            "--helper-namespace",
            &ns,
            "--force",
        ];
        let workload_rule = matches!(expect, Expect::Denied(_, "deployments"));
        if workload_rule {
            args.extend(["--workload", "deploy/rules", "-n", &ns, "--dry-run"]);
        }
        let out = sideload(&args);
        // The rows (stdout) carry a node's error, stderr the run's.
        let err = format!("{}{}", stdout(&out), stderr(&out));
        let what = format!(
            "{:?} without {:?}",
            if cluster { "ClusterRole" } else { "Role" },
            removed.resources
        );
        assert!(!err.contains("impersonate"), "{what}: {err}");
        match expect {
            Expect::Denied(verb, resource) => {
                assert!(!out.status.success(), "{what}: succeeded");
                assert!(
                    err.contains("permission denied")
                        && err.contains(&format!("cannot {verb} {resource}"))
                        && err.contains(&user),
                    "{what}: the error must name {verb} {resource} and the user: {err}"
                );
                assert!(
                    err.contains("plugin-manifest/"),
                    "{what}: names the fix: {err}"
                );
            }
            Expect::Works(warning) => {
                assert!(out.status.success(), "{what}: {err}");
                assert!(err.contains(warning), "{what}: {err}");
            }
        }
        let left = helper_pods(&client, &ns).await;
        assert!(left.is_empty(), "{what}: left {left:?}");
        let _ = cluster_bindings
            .delete(&user, &DeleteParams::default())
            .await;
        let _ = cluster_roles.delete(&user, &DeleteParams::default()).await;
    }
    node_remove_image("node-a", &reference);
}

/// The scan cache (src/archive/cache.rs) must never vouch for bytes it did not hash: an
/// archive a tenant edits in place after a run, size kept and mtime put back, is hashed
/// again and refused before anything changes.
#[tokio::test(flavor = "multi_thread")]
async fn an_archive_edited_in_place_after_a_run_is_hashed_again_and_refused() {
    let _logs = LogsOnFailure;
    let client = admin_client().await;
    let namespace = TestNamespace::new(&client, "sl-edited").await;
    let dir = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let reference = format!("sideload.test/edited:{}", unique("v"));
    let tar = dir.path().join("edited.tar");
    make_image(&reference, &tar, &["--layers", "1", "--layer-mib", "4"]);
    // Only a file that has not changed for a second is remembered.
    std::thread::sleep(Duration::from_millis(1100));
    let load = |extra: &[&str]| {
        let mut cmd = plugin();
        cmd.env("XDG_CACHE_HOME", cache.path())
            .arg("--kubeconfig")
            .arg(admin_kubeconfig())
            .arg(&tar)
            .args(["--nodes", "node-a", "--helper-namespace", &namespace.name])
            .args(extra);
        run(cmd)
    };
    let first = load(&[]);
    assert!(first.status.success(), "{}", stderr(&first));
    let scans = cache.path().join("kubectl-sideload/scans");
    assert_eq!(
        std::fs::read_dir(&scans).unwrap().count(),
        1,
        "the scan was remembered"
    );

    // One byte of the layer flipped in place, the mtime put back.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&tar)
        .unwrap();
    let before = file.metadata().unwrap();
    let at = before.len() / 2;
    let mut byte = [0u8; 1];
    std::os::unix::fs::FileExt::read_exact_at(&file, &mut byte, at).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&file, &[byte[0] ^ 0x01], at).unwrap();
    file.set_modified(before.modified().unwrap()).unwrap();
    drop(file);

    let again = load(&["--force"]);
    assert!(!again.status.success(), "an edited archive must be refused");
    let err = stderr(&again);
    // Found by the plugin's own hashing (a remembered scan would have let it reach the
    // node, whose importer refuses it only after the helpers started).
    assert!(
        err.contains("edited.tar") && err.contains("does not match its digest"),
        "{err}"
    );
    let left = helper_pods(&client, &namespace.name).await;
    assert!(
        left.is_empty(),
        "nothing starts for a refused archive: {left:?}"
    );
    assert!(
        node_images("node-a").contains(&reference),
        "the image the first run loaded stays"
    );
    node_remove_image("node-a", &reference);
}
