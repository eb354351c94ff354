//! End-to-end tests of `--workload`: the real plugin binary against the real test cluster
//! (`tests/cluster/up`). Each test makes its own images and its own namespace (which also
//! holds its helper pods, so "no helper pod was created" can be checked), and deletes it.
//! Run with `cargo test --features e2e --test e2e_workload`.

mod util;

use std::collections::BTreeSet;
use std::process::Output;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::CronJob;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use util::*;

/// Where every workload test starts: its own namespace (also for the helper pods), images
/// v1 and v2 made, and v1 loaded on `nodes`, ready for a workload to run it. Keep the
/// `LogsOnFailure` to the end of the test: it prints the cluster's logs if the test fails.
async fn setup(name: &str, nodes: &str) -> (LogsOnFailure, kube::Client, TestNamespace, Images) {
    let logs = LogsOnFailure;
    let client = admin_client().await;
    let ns = TestNamespace::new(&client, name).await;
    let images = Images::new(name);
    load(&images.v1, nodes, &ns.name);
    (logs, client, ns, images)
}

/// Images `REPO:v1` and `REPO:v2` (1 MiB layer each) for one test.
struct Images {
    _dir: tempfile::TempDir,
    repo: String,
    v1: String,
    v2: String,
}

impl Images {
    fn new(name: &str) -> Images {
        let dir = tempfile::tempdir().unwrap();
        let repo = format!("sideload.test/{}", unique(name));
        let v1 = dir.path().join("v1.tar").to_string_lossy().into_owned();
        let v2 = dir.path().join("v2.tar").to_string_lossy().into_owned();
        let args = ["--layers", "1", "--layer-mib", "1"];
        make_image(&format!("{repo}:v1"), v1.as_ref(), &args);
        make_image(&format!("{repo}:v2"), v2.as_ref(), &args);
        Images {
            _dir: dir,
            repo,
            v1,
            v2,
        }
    }

    fn tag(&self, tag: &str) -> String {
        format!("{}:{tag}", self.repo)
    }
}

/// The nodes are left as the test found them: neither image stays on any node (best effort:
/// an image a pod still runs may stay on the CRI-O node).
impl Drop for Images {
    fn drop(&mut self) {
        for node in NODES {
            node_remove_image(node, &self.tag("v1"));
            node_remove_image(node, &self.tag("v2"));
        }
    }
}

/// Sideloads `tar` into `nodes` (helpers in `ns`) and insists that it worked.
fn load(tar: &str, nodes: &str, ns: &str) {
    let out = sideload(&[
        tar,
        "--nodes",
        nodes,
        "--helper-namespace",
        ns,
        "-o",
        "json",
    ]);
    assert!(out.status.success(), "loading {tar}: {}", stderr(&out));
}

/// The plugin as a workload test runs it: namespace `ns` for the workload and the helper
/// pods, no prompt, a 120 s rollout timeout, JSON report; `args` adds the rest.
fn apply(ns: &str, args: &[&str]) -> Output {
    let mut all = args.to_vec();
    all.extend([
        "-n",
        ns,
        "--helper-namespace",
        ns,
        "--yes",
        "--rollout-timeout",
        "120s",
        "-o",
        "json",
    ]);
    sideload(&all)
}

async fn create<K>(client: &kube::Client, ns: &str, object: Value)
where
    K: kube::Resource<Scope = kube::core::NamespaceResourceScope>
        + Clone
        + serde::Serialize
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    let object: K = serde_json::from_value(object).unwrap();
    api.create(&PostParams::default(), &object).await.unwrap();
}

/// A pod template running `image` with `imagePullPolicy: Never`, labelled `app: NAME`.
fn template(name: &str, image: &str, extra_spec: Value) -> Value {
    let mut spec = json!({
        "terminationGracePeriodSeconds": 1,
        "containers": [{"name": "app", "image": image, "imagePullPolicy": "Never"}],
    });
    if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra_spec.as_object()) {
        for (k, v) in extra {
            spec.insert(k.clone(), v.clone());
        }
    }
    json!({"metadata": {"labels": {"app": name}}, "spec": spec})
}

fn deployment(name: &str, replicas: i32, image: &str, extra_spec: Value) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": template(name, image, extra_spec),
        }
    })
}

/// Pods of `app=NAME` that run and are not being deleted.
async fn live_pods(client: &kube::Client, ns: &str, name: &str) -> Vec<Pod> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    pods.list(&ListParams::default().labels(&format!("app={name}")))
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        .collect()
}

/// Waits until exactly `count` live pods of `app=NAME` all run `image` (every container,
/// ready), and returns them.
async fn pods_running(
    client: &kube::Client,
    ns: &str,
    name: &str,
    count: usize,
    image: &str,
) -> Vec<Pod> {
    let start = Instant::now();
    loop {
        let pods = live_pods(client, ns, name).await;
        let all_on_image = pods.iter().all(|p| {
            let status = p.status.clone().unwrap_or_default();
            let statuses: Vec<_> = status
                .container_statuses
                .into_iter()
                .flatten()
                .chain(status.init_container_statuses.into_iter().flatten())
                .collect();
            !statuses.is_empty()
                && statuses
                    .iter()
                    .all(|cs| cs.image == image && (cs.ready || cs.started == Some(true)))
        });
        if pods.len() == count && all_on_image {
            return pods;
        }
        if start.elapsed() > Duration::from_secs(120) {
            let seen: Vec<String> = pods
                .iter()
                .map(|p| {
                    format!(
                        "{} {:?}",
                        p.metadata.name.clone().unwrap_or_default(),
                        p.status.as_ref().map(|s| &s.container_statuses)
                    )
                })
                .collect();
            panic!("{count} pods of {name} never all ran {image}: {seen:#?}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Every container of every pod (init containers too) runs `image` with `policy`.
fn assert_containers(pods: &[Pod], image: &str, policy: &str) {
    for pod in pods {
        for c in containers_of(pod) {
            assert_eq!(c.image.as_deref(), Some(image), "{}", c.name);
            assert_eq!(c.image_pull_policy.as_deref(), Some(policy), "{}", c.name);
        }
    }
}

fn node_of(pod: &Pod) -> String {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .unwrap_or_default()
}

fn containers_of(pod: &Pod) -> Vec<k8s_openapi::api::core::v1::Container> {
    let spec = pod.spec.clone().unwrap_or_default();
    spec.init_containers
        .into_iter()
        .flatten()
        .chain(spec.containers)
        .collect()
}

/// Waits for a Deployment to be rolled out, as the test's own precondition.
async fn deployment_ready(client: &kube::Client, ns: &str, name: &str, replicas: usize) {
    let api: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let deploy = api.get(name).await.unwrap();
    let image = deploy.spec.unwrap().template.spec.unwrap().containers[0]
        .image
        .clone()
        .unwrap();
    pods_running(client, ns, name, replicas, &image).await;
}

fn workload_report(report: &Value) -> &Value {
    let workloads = report["workloads"].as_array().expect("workloads array");
    assert_eq!(workloads.len(), 1, "{report}");
    &workloads[0]
}

async fn label_of(client: &kube::Client, node: &str, key: &str) -> Option<String> {
    let nodes: Api<Node> = Api::all(client.clone());
    nodes
        .get(node)
        .await
        .unwrap()
        .metadata
        .labels
        .unwrap_or_default()
        .get(key)
        .cloned()
}

async fn remove_label(client: &kube::Client, node: &str, key: &str) {
    let nodes: Api<Node> = Api::all(client.clone());
    let _ = nodes
        .patch(
            node,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {key: null}}})),
        )
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deployment_moves_to_the_sideloaded_v2_init_containers_too() {
    let (_logs, client, ns, images) = setup("wl-deploy", "all").await;
    // A native sidecar (an init container that keeps running) of the same image: it must
    // move along with the main container.
    let sidecar = json!({"initContainers": [{
        "name": "sidecar", "image": images.tag("v1"), "imagePullPolicy": "Never",
        "restartPolicy": "Always",
    }]});
    create::<Deployment>(
        &client,
        &ns.name,
        deployment("web", 3, &images.tag("v1"), sidecar),
    )
    .await;
    deployment_ready(&client, &ns.name, "web", 3).await;

    let out = apply(&ns.name, &[&images.v2, "--workload", "deploy/web"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report = json_out(&out);
    let w = workload_report(&report);
    assert_eq!(w["kind"], "Deployment");
    assert_eq!(w["patched"], true, "{w}");
    assert_eq!(w["rolled_out"], true, "{w}");
    assert_eq!(w["image"], images.tag("v2").as_str());
    assert_eq!(w["pull_policy"], "IfNotPresent");
    assert_eq!(w["containers"], json!(["sidecar", "app"]));
    assert!(w["error"].is_null());
    assert!(stderr(&out).contains("rolled out"), "{}", stderr(&out));

    let pods = pods_running(&client, &ns.name, "web", 3, &images.tag("v2")).await;
    assert_containers(&pods, &images.tag("v2"), "IfNotPresent");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deployment_on_the_crio_node_moves_to_v2() {
    let (_logs, client, ns, images) = setup("wl-crio", CRIO_NODE).await;
    let on_d = json!({"nodeSelector": {"kubernetes.io/hostname": CRIO_NODE}});
    create::<Deployment>(
        &client,
        &ns.name,
        deployment("web", 2, &images.tag("v1"), on_d),
    )
    .await;
    deployment_ready(&client, &ns.name, "web", 2).await;
    let out = apply(
        &ns.name,
        &[
            &images.v2,
            "--nodes",
            CRIO_NODE,
            "--workload",
            "deploy/web",
            "--pull-policy",
            "Never",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let w = workload_report(&json_out(&out)).clone();
    assert_eq!(w["rolled_out"], true, "{w}");
    let pods = pods_running(&client, &ns.name, "web", 2, &images.tag("v2")).await;
    assert!(pods.iter().all(|p| node_of(p) == CRIO_NODE));
    assert_containers(&pods, &images.tag("v2"), "Never");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_statefulset_and_a_deployment_move_to_v2_in_one_run_with_pull_policy_never() {
    let (_logs, client, ns, images) = setup("wl-sts", "node-a,node-b").await;
    create::<StatefulSet>(
        &client,
        &ns.name,
        json!({
            "apiVersion": "apps/v1", "kind": "StatefulSet",
            "metadata": {"name": "db"},
            "spec": {
                "replicas": 2,
                "serviceName": "db",
                "podManagementPolicy": "Parallel",
                "selector": {"matchLabels": {"app": "db"}},
                "template": template("db", &images.tag("v1"), json!({"nodeSelector": {"pool": "blue"}})),
            }
        }),
    )
    .await;
    pods_running(&client, &ns.name, "db", 2, &images.tag("v1")).await;
    create::<Deployment>(
        &client,
        &ns.name,
        deployment(
            "web",
            1,
            &images.tag("v1"),
            json!({"nodeSelector": {"pool": "blue"}}),
        ),
    )
    .await;
    deployment_ready(&client, &ns.name, "web", 1).await;

    let out = apply(
        &ns.name,
        &[
            &images.v2,
            "--nodes",
            "node-a,node-b",
            "--workload",
            "sts/db",
            "--workload",
            "deployments.apps/web",
            "--pull-policy",
            "Never",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let report = json_out(&out);
    let workloads = report["workloads"].as_array().unwrap();
    let kinds: Vec<&str> = workloads
        .iter()
        .map(|w| w["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["StatefulSet", "Deployment"]);
    for w in workloads {
        assert_eq!(w["patched"], true, "{w}");
        assert_eq!(w["rolled_out"], true, "{w}");
        assert_eq!(w["pull_policy"], "Never");
    }
    for pod in pods_running(&client, &ns.name, "web", 1, &images.tag("v2")).await {
        let c = &pod.spec.unwrap().containers[0];
        assert_eq!(c.image_pull_policy.as_deref(), Some("Never"));
    }

    let sts: Api<StatefulSet> = Api::namespaced(client.clone(), &ns.name);
    let status = sts.get("db").await.unwrap().status.unwrap();
    assert_eq!(status.current_revision, status.update_revision);
    let pods = pods_running(&client, &ns.name, "db", 2, &images.tag("v2")).await;
    assert_containers(&pods, &images.tag("v2"), "Never");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_daemonset_loads_the_nodes_it_runs_on_and_moves_to_v2() {
    // No toleration: node-c's taint keeps the DaemonSet on node-a, node-b and node-d (CRI-O).
    let (_logs, client, ns, images) = setup("wl-ds", "node-a,node-b,node-d").await;
    create::<DaemonSet>(
        &client,
        &ns.name,
        json!({
            "apiVersion": "apps/v1", "kind": "DaemonSet",
            "metadata": {"name": "agent"},
            "spec": {
                "selector": {"matchLabels": {"app": "agent"}},
                "template": template("agent", &images.tag("v1"), json!({})),
            }
        }),
    )
    .await;
    pods_running(&client, &ns.name, "agent", 3, &images.tag("v1")).await;

    // No --nodes: a DaemonSet-only run loads the nodes the DaemonSet runs on.
    let out = apply(&ns.name, &[&images.v2, "--workload", "ds/agent"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report = json_out(&out);
    let loaded: BTreeSet<&str> = report["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        loaded,
        BTreeSet::from(["node-a", "node-b", "node-d"]),
        "{report}"
    );
    assert!(!node_images("node-c").contains(&images.tag("v2")));
    let w = workload_report(&report);
    assert_eq!(w["kind"], "DaemonSet");
    assert_eq!(w["rolled_out"], true, "{w}");

    let pods = pods_running(&client, &ns.name, "agent", 3, &images.tag("v2")).await;
    let nodes: BTreeSet<String> = pods.iter().map(node_of).collect();
    assert_eq!(
        nodes,
        BTreeSet::from(["node-a".into(), "node-b".into(), "node-d".into()])
    );
    for pod in pods {
        assert_eq!(
            pod.spec.unwrap().containers[0].image_pull_policy.as_deref(),
            Some("IfNotPresent")
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_same_tag_again_restarts_the_pods_onto_the_new_bytes() {
    let (_logs, client, ns, images) = setup("wl-same", "node-a,node-b").await;
    create::<Deployment>(
        &client,
        &ns.name,
        deployment(
            "web",
            2,
            &images.tag("v1"),
            json!({"nodeSelector": {"pool": "blue"}}),
        ),
    )
    .await;
    let before = pods_running(&client, &ns.name, "web", 2, &images.tag("v1")).await;
    let uids = |pods: &[Pod]| -> BTreeSet<String> {
        pods.iter().filter_map(|p| p.metadata.uid.clone()).collect()
    };
    let image_ids = |pods: &[Pod]| -> BTreeSet<String> {
        pods.iter()
            .flat_map(|p| p.status.clone().unwrap_or_default().container_statuses)
            .flatten()
            .map(|cs| cs.image_id)
            .collect()
    };

    // The same ref, new bytes (make-image writes new random layers every time).
    let rebuilt = images._dir.path().join("v1-again.tar");
    make_image(
        &images.tag("v1"),
        &rebuilt,
        &["--layers", "1", "--layer-mib", "1"],
    );
    let out = apply(
        &ns.name,
        &[
            rebuilt.to_str().unwrap(),
            "--nodes",
            "node-a,node-b",
            "--workload",
            "deployment/web",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let w = workload_report(&json_out(&out)).clone();
    assert_eq!(w["patched"], true, "{w}");
    assert_eq!(w["rolled_out"], true, "{w}");

    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let annotations = deployments
        .get("web")
        .await
        .unwrap()
        .spec
        .unwrap()
        .template
        .metadata
        .unwrap()
        .annotations
        .unwrap_or_default();
    assert!(
        annotations.contains_key("kubectl.kubernetes.io/restartedAt"),
        "{annotations:?}"
    );
    let after = pods_running(&client, &ns.name, "web", 2, &images.tag("v1")).await;
    assert!(
        uids(&before).is_disjoint(&uids(&after)),
        "pods were not restarted"
    );
    assert!(
        image_ids(&before).is_disjoint(&image_ids(&after)),
        "pods still run the old bytes: {:?} / {:?}",
        image_ids(&before),
        image_ids(&after)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_node_means_no_patch_unless_allow_partial_which_constrains() {
    let (_logs, client, ns, images) = setup("wl-partial", "node-a,node-b").await;
    // A helper image that only node-a holds: node-b's helper cannot start (ErrImageNeverPull),
    // a real load failure after the run began.
    let helper = Images::new("wl-helper");
    load(&helper.v1, "node-a", &ns.name);
    create::<Deployment>(
        &client,
        &ns.name,
        deployment(
            "web",
            2,
            &images.tag("v1"),
            json!({"nodeSelector": {"pool": "blue"}}),
        ),
    )
    .await;
    deployment_ready(&client, &ns.name, "web", 2).await;
    let helper_image = helper.tag("v1");
    let run = |extra: &[&str]| {
        let mut args = vec![
            images.v2.as_str(),
            "--nodes",
            "node-a,node-b",
            "--helper-image",
            &helper_image,
            "--workload",
            "deploy/web",
            "-n",
            &ns.name,
            "--helper-namespace",
            &ns.name,
            "--yes",
            "--rollout-timeout",
            "120s",
            "-o",
            "json",
        ];
        args.extend_from_slice(extra);
        sideload(&args)
    };

    let out = run(&[]);
    assert!(!out.status.success());
    let report = json_out(&out);
    let status: Vec<(&str, &str)> = report["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["name"].as_str().unwrap(), n["status"].as_str().unwrap()))
        .collect();
    assert_eq!(status, [("node-a", "loaded"), ("node-b", "failed")]);
    let w = workload_report(&report);
    assert_eq!(w["patched"], false, "{w}");
    assert!(w["rolled_out"].is_null());
    assert!(
        w["error"].as_str().unwrap().contains("--allow-partial"),
        "{w}"
    );
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let spec = deployments.get("web").await.unwrap().spec.unwrap();
    let c = &spec.template.spec.as_ref().unwrap().containers[0];
    assert_eq!(c.image.as_deref(), Some(images.tag("v1").as_str()));
    assert_eq!(c.image_pull_policy.as_deref(), Some("Never"));

    let out = run(&["--allow-partial"]);
    let report = json_out(&out);
    assert!(
        !out.status.success(),
        "a failed node still fails the run: {report}"
    );
    let w = workload_report(&report).clone();
    assert_eq!(w["patched"], true, "{w}");
    assert_eq!(w["constrained"], true, "{w}");
    assert_eq!(w["rolled_out"], true, "{w}");
    let key = format!(
        "sideload.dev/img-{}",
        &report["image"]["digest"].as_str().unwrap()["sha256:".len()..][..12]
    );
    let pods = pods_running(&client, &ns.name, "web", 2, &images.tag("v2")).await;
    assert!(
        pods.iter().all(|p| node_of(p) == "node-a"),
        "pods outside the loaded node"
    );
    assert_eq!(
        label_of(&client, "node-a", &key).await.as_deref(),
        Some("present")
    );
    assert_eq!(label_of(&client, "node-b", &key).await, None);
    remove_label(&client, "node-a", &key).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn loading_some_nodes_warns_and_constrain_keeps_pods_on_them() {
    let (_logs, client, ns, images) = setup("wl-place", "all").await;
    create::<Deployment>(
        &client,
        &ns.name,
        deployment("web", 2, &images.tag("v1"), json!({})),
    )
    .await;
    deployment_ready(&client, &ns.name, "web", 2).await;
    let common = [
        "-n",
        &ns.name,
        "--helper-namespace",
        &ns.name,
        "--workload",
        "deploy/web",
        "--nodes",
        "node-a",
    ];

    // Dry run: the diff, the nodes it depends on, the warning; nothing changes.
    let mut args = vec![images.v2.as_str(), "--dry-run"];
    args.extend_from_slice(&common);
    let dry = sideload(&args);
    assert!(dry.status.success(), "{}", stderr(&dry));
    let text = stdout(&dry);
    assert!(
        text.contains(&format!(
            "-  image: {}\n+  image: {}",
            images.tag("v1"),
            images.tag("v2")
        )),
        "{text}"
    );
    assert!(
        text.contains("-  imagePullPolicy: Never\n+  imagePullPolicy: IfNotPresent"),
        "{text}"
    );
    assert!(text.contains("depends on the image on: node-a"), "{text}");
    assert!(
        stderr(&dry).contains(
            "warning: pods of deployment/web can also be scheduled on node-b, node-d, which will not hold the image"
        ),
        "{}",
        stderr(&dry)
    );
    assert!(stderr(&dry).contains("--constrain"), "{}", stderr(&dry));
    assert!(!node_images("node-a").contains(&images.tag("v2")));

    // --constrain, as the user the documented roles are bound to (the Role in the default
    // helper namespace, kube-system).
    let mut cmd = plugin();
    cmd.arg("--kubeconfig")
        .arg(limited_kubeconfig())
        .args([images.v2.as_str(), "--constrain", "--yes", "-o", "json"])
        .args([
            "-n",
            &ns.name,
            "--workload",
            "deploy/web",
            "--nodes",
            "node-a",
        ]);
    let out = run(cmd);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        !stderr(&out).contains("warning: pods of"),
        "{}",
        stderr(&out)
    );
    let report = json_out(&out);
    let w = workload_report(&report);
    assert_eq!(w["constrained"], true, "{w}");
    assert_eq!(w["rolled_out"], true, "{w}");
    let key = format!(
        "sideload.dev/img-{}",
        &report["image"]["digest"].as_str().unwrap()["sha256:".len()..][..12]
    );
    let pods = pods_running(&client, &ns.name, "web", 2, &images.tag("v2")).await;
    assert!(
        pods.iter().all(|p| node_of(p) == "node-a"),
        "pods outside the loaded node"
    );
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let terms = serde_json::to_value(
        deployments
            .get("web")
            .await
            .unwrap()
            .spec
            .unwrap()
            .template
            .spec
            .unwrap()
            .affinity,
    )
    .unwrap();
    assert_eq!(
        terms["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"],
        json!([{"matchExpressions": [{"key": key, "operator": "Exists"}]}])
    );
    assert_eq!(
        label_of(&client, "node-a", &key).await.as_deref(),
        Some("present")
    );

    // cleanup --labels finds it (dry run: other tests may rely on their own labels).
    let listed = sideload(&[
        "cleanup",
        "--labels",
        "--dry-run",
        "--helper-namespace",
        &ns.name,
    ]);
    assert!(listed.status.success());
    assert!(
        stdout(&listed).contains(&format!("node/node-a label {key} would be removed")),
        "{}",
        stdout(&listed)
    );
    remove_label(&client, "node-a", &key).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn pods_on_a_node_without_the_image_stop_the_wait_early() {
    let (_logs, client, ns, images) = setup("wl-early", "node-a,node-b").await;
    // One pod per blue node, replaced all at once: a new pod lands on node-b for sure.
    let spread = json!({
        "nodeSelector": {"pool": "blue"},
        "affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [{
            "labelSelector": {"matchLabels": {"app": "web"}},
            "topologyKey": "kubernetes.io/hostname",
        }]}},
    });
    let mut object = deployment("web", 2, &images.tag("v1"), spread);
    object["spec"]["strategy"] = json!({"type": "Recreate"});
    create::<Deployment>(&client, &ns.name, object).await;
    deployment_ready(&client, &ns.name, "web", 2).await;

    let started = Instant::now();
    let out = sideload(&[
        &images.v2,
        "--nodes",
        "node-a",
        "--workload",
        "deploy/web",
        "--pull-policy",
        "Never",
        "-n",
        &ns.name,
        "--helper-namespace",
        &ns.name,
        "--yes",
        "--rollout-timeout",
        "300s",
        "-o",
        "json",
    ]);
    let took = started.elapsed();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("warning: pods of deployment/web can also be scheduled on node-b"),
        "{}",
        stderr(&out)
    );
    let w = workload_report(&json_out(&out)).clone();
    assert_eq!(w["patched"], true, "{w}");
    assert_eq!(w["rolled_out"], false, "{w}");
    let error = w["error"].as_str().unwrap();
    assert!(
        error.contains("on node node-b: ErrImageNeverPull"),
        "{error}"
    );
    assert!(error.contains("node node-b was not loaded"), "{error}");
    assert!(
        took < Duration::from_secs(120),
        "the wait did not stop early ({took:?})"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_workload_or_container_fails_before_anything_changes() {
    let _logs = LogsOnFailure;
    let client = admin_client().await;
    let ns = TestNamespace::new(&client, "wl-missing").await;
    let images = Images::new("wl-missing");
    create::<Deployment>(
        &client,
        &ns.name,
        deployment("other", 0, "sideload.test/something-else:v1", json!({})),
    )
    .await;
    let cases: [(&[&str], &str); 3] = [
        (
            &["--workload", "deploy/nope"],
            "deployment \"nope\" not found in namespace",
        ),
        (
            &["--workload", "deploy/other"],
            "has no container running sideload.test/",
        ),
        (
            &["--workload", "deploy/other", "--container", "nope"],
            "has no container \"nope\"; its containers: app (sideload.test/something-else:v1)",
        ),
    ];
    for (extra, want) in cases {
        let mut args = vec![
            images.v2.as_str(),
            "-n",
            &ns.name,
            "--helper-namespace",
            &ns.name,
            "--yes",
        ];
        args.extend_from_slice(extra);
        let out = sideload(&args);
        assert!(!out.status.success(), "{extra:?}");
        assert!(stderr(&out).contains(want), "{extra:?}: {}", stderr(&out));
        assert!(stdout(&out).is_empty(), "{extra:?}: {}", stdout(&out));
    }
    // Nothing was loaded anywhere, so no helper pod ever ran.
    for node in NODES {
        assert!(!node_images(node).contains(&images.tag("v2")), "{node}");
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    assert!(
        pods.list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cronjobs_job_template_is_patched() {
    let _logs = LogsOnFailure;
    let client = admin_client().await;
    let ns = TestNamespace::new(&client, "wl-cron").await;
    let images = Images::new("wl-cron");
    create::<CronJob>(
        &client,
        &ns.name,
        json!({
            "apiVersion": "batch/v1", "kind": "CronJob",
            "metadata": {"name": "report"},
            "spec": {
                "schedule": "0 0 1 1 *",
                "suspend": true,
                "jobTemplate": {"spec": {"template": {
                    "spec": {
                        "restartPolicy": "Never",
                        "nodeSelector": {"kubernetes.io/hostname": "node-a"},
                        "containers": [{"name": "report", "image": images.tag("v1")}],
                    }
                }}}
            }
        }),
    )
    .await;
    let out = sideload(&[
        &images.v2,
        "--nodes",
        "node-a",
        "--workload",
        "cj/report",
        "-n",
        &ns.name,
        "--helper-namespace",
        &ns.name,
        "--yes",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let table = stdout(&out);
    assert!(table.contains("cronjob/report"), "{table}");
    assert!(table.contains("next Job"), "{table}");
    let cronjobs: Api<CronJob> = Api::namespaced(client.clone(), &ns.name);
    let container = cronjobs
        .get("report")
        .await
        .unwrap()
        .spec
        .unwrap()
        .job_template
        .spec
        .unwrap()
        .template
        .spec
        .unwrap()
        .containers[0]
        .clone();
    assert_eq!(container.image.as_deref(), Some(images.tag("v2").as_str()));
    assert_eq!(container.image_pull_policy.as_deref(), Some("IfNotPresent"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_signal_during_the_rollout_wait_stops_at_once_and_leaves_no_helper() {
    let (_logs, client, ns, images) = setup("wl-signal", "node-a,node-b").await;
    // Pods that never become Ready: the rollout of v2 never completes, so the plugin is
    // surely waiting for it when the signal comes.
    let mut object = deployment(
        "stuck",
        1,
        &images.tag("v1"),
        json!({"nodeSelector": {"pool": "blue"}}),
    );
    object["spec"]["template"]["spec"]["containers"][0]["readinessProbe"] = json!({
        "exec": {"command": ["/no/such/probe"]},
        "periodSeconds": 1,
    });
    create::<Deployment>(&client, &ns.name, object).await;

    for (signal, code) in [("-TERM", 143), ("-INT", 130)] {
        let mut cmd = plugin();
        cmd.arg("--kubeconfig")
            .arg(admin_kubeconfig())
            .arg(&images.v2)
            .args(["--nodes", "node-a,node-b", "--workload", "deploy/stuck"])
            .args(["-n", &ns.name, "--helper-namespace", &ns.name, "--yes"])
            .args(["--rollout-timeout", "300s", "-o", "json"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let child = cmd.spawn().unwrap();
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
        let started = Instant::now();
        loop {
            let d = deployments.get("stuck").await.unwrap();
            let image = serde_json::to_value(&d).unwrap()["spec"]["template"]["spec"]["containers"]
                [0]["image"]
                .clone();
            if image == images.tag("v2").as_str() {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(180),
                "never patched"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // Patched: now it waits for a rollout that cannot finish.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let stopped = Instant::now();
        let pid = child.id().to_string();
        assert!(
            std::process::Command::new("kill")
                .args([signal, &pid])
                .status()
                .unwrap()
                .success()
        );
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(code), "{signal}: {}", stderr(&out));
        assert!(
            stopped.elapsed() < Duration::from_secs(10),
            "{signal} took {:?} to stop the wait",
            stopped.elapsed()
        );
        assert!(
            stderr(&out).contains("a workload already patched keeps rolling out"),
            "{}",
            stderr(&out)
        );
        let left = helper_pods(&client, &ns.name).await;
        assert!(left.is_empty(), "{signal} left {left:?}");
        // The next round patches again from v1.
        deployments
            .patch(
                "stuck",
                &PatchParams::default(),
                &Patch::Strategic(json!({"spec": {"template": {"spec": {"containers": [
                    {"name": "app", "image": images.tag("v1")}
                ]}}}})),
            )
            .await
            .unwrap();
    }
}

/// `--constrain`'s labels stay true: each node's label carries a record of what it promises
/// there (the refs and that node's image ID), `status` says whether the node still holds it
/// and names a stale one, and `rm` takes a label away with the image it promised, leaving
/// labels on other nodes alone.
#[tokio::test(flavor = "multi_thread")]
async fn constrain_labels_record_their_image_status_finds_a_stale_one_and_rm_takes_it_away() {
    let (_logs, client, ns, images) = setup("wl-lbl", "node-a").await;
    let on_a = json!({"nodeSelector": {"kubernetes.io/hostname": "node-a"}});
    create::<Deployment>(
        &client,
        &ns.name,
        deployment("web", 1, &images.tag("v1"), on_a),
    )
    .await;
    deployment_ready(&client, &ns.name, "web", 1).await;
    // containerd 1.6 and 2.4, and CRI-O.
    let nodes = "node-a,node-c,node-d";
    let out = apply(
        &ns.name,
        &[
            &images.v2,
            "--workload",
            "deploy/web",
            "--nodes",
            nodes,
            "--constrain",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let report = json_out(&out);
    assert_eq!(workload_report(&report)["constrained"], true, "{report}");
    let key = format!(
        "sideload.dev/img-{}",
        &report["image"]["digest"].as_str().unwrap()["sha256:".len()..][..12]
    );
    let _labels = Labels(client.clone(), key.clone(), nodes.split(',').collect());
    pods_running(&client, &ns.name, "web", 1, &images.tag("v2")).await;
    // The record beside each label: the image's name and its ID on that node.
    let v2 = images.tag("v2");
    let config = config_of(std::path::Path::new(&images.v2));
    for node in nodes.split(',') {
        assert_eq!(
            label_of(&client, node, &key).await.as_deref(),
            Some("present")
        );
        let record: Value =
            serde_json::from_str(&annotation_of(&client, node, &key).await.unwrap()).unwrap();
        assert_eq!(record["images"][0]["refs"], json!([v2]), "{node}: {record}");
        assert_eq!(
            record["images"][0]["id"],
            config.as_str(),
            "{node}: {record}"
        );
    }
    // No pod uses v2 any more: rm may take it.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    deployments
        .delete("web", &Default::default())
        .await
        .unwrap();
    // Gone, not only terminating: a pod still running v2 would keep it from `rm`.
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let start = Instant::now();
    while !pods
        .list(&ListParams::default().labels("app=web"))
        .await
        .unwrap()
        .items
        .is_empty()
    {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "web's pods never went"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    let status = |extra: &[&str]| {
        let mut args = vec![
            "status",
            v2.as_str(),
            "--nodes",
            nodes,
            "--helper-namespace",
            &ns.name,
        ];
        args.extend_from_slice(extra);
        sideload(&args)
    };
    let out = status(&["-o", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report = json_out(&out);
    for node in nodes.split(',') {
        let label = &node_row(&report, node)["labels"][0];
        assert_eq!(label["key"], key.as_str(), "{node}: {report}");
        assert_eq!(label["holds"], true, "{node}: {label}");
    }

    // The image goes from node-c behind the plugin's back: its label is now stale.
    node_remove_image("node-c", &v2);
    let out = status(&["-o", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report = json_out(&out);
    let stale = &node_row(&report, "node-c")["labels"][0];
    assert_eq!(stale["holds"], false, "{stale}");
    assert!(
        stale["detail"]
            .as_str()
            .unwrap()
            .contains("is not on the node"),
        "{stale}"
    );
    assert_eq!(
        node_row(&report, "node-a")["labels"][0]["holds"],
        true,
        "{report}"
    );
    let table = stdout(&status(&[]));
    assert!(
        table.lines().any(|l| l.starts_with("node-c")
            && l.contains(&format!("label {key}"))
            && l.contains("STALE")),
        "{table}"
    );

    // rm on node-a and node-c: a dry run changes nothing; then the image and both labels go
    // (node-c's was stale already), node-d's stays.
    let rm = |extra: &[&str]| {
        let mut args = vec![
            "rm",
            v2.as_str(),
            "--nodes",
            "node-a,node-c",
            "--helper-namespace",
            &ns.name,
            "-o",
            "json",
        ];
        args.extend_from_slice(extra);
        sideload(&args)
    };
    let out = rm(&["--dry-run"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report = json_out(&out);
    for node in ["node-a", "node-c"] {
        let label = &node_row(&report, node)["labels"][0];
        assert_eq!(
            label["action"], "would be removed (dry run)",
            "{node}: {report}"
        );
        assert_eq!(
            label_of(&client, node, &key).await.as_deref(),
            Some("present")
        );
    }
    assert!(node_images("node-a").contains(&v2));
    let out = rm(&[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report = json_out(&out);
    for node in ["node-a", "node-c"] {
        let label = &node_row(&report, node)["labels"][0];
        assert_eq!(label["action"], "removed", "{node}: {report}");
        assert_eq!(label_of(&client, node, &key).await, None, "{node}");
        assert_eq!(annotation_of(&client, node, &key).await, None, "{node}");
    }
    assert!(!node_images("node-a").contains(&v2));
    assert_eq!(
        label_of(&client, "node-d", &key).await.as_deref(),
        Some("present")
    );
    assert!(helper_pods(&client, &ns.name).await.is_empty());
}

async fn annotation_of(client: &kube::Client, node: &str, key: &str) -> Option<String> {
    let nodes: Api<Node> = Api::all(client.clone());
    nodes
        .get(node)
        .await
        .unwrap()
        .metadata
        .annotations
        .unwrap_or_default()
        .get(key)
        .cloned()
}

/// A `--constrain` label (and its record) removed from these nodes however the test ends.
struct Labels(kube::Client, String, Vec<&'static str>);

impl Drop for Labels {
    fn drop(&mut self) {
        let (client, key) = (self.0.clone(), self.1.clone());
        let nodes = self.2.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                let api: Api<Node> = Api::all(client);
                for node in nodes {
                    let _ = api
                        .patch(
                            node,
                            &PatchParams::default(),
                            &Patch::Merge(json!({"metadata": {"labels": {&key: null}, "annotations": {&key: null}}})),
                        )
                        .await;
                }
            });
        })
        .join();
    }
}
