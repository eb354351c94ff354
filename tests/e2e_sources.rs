//! End-to-end `docker://REF` and `podman://REF` (issue 12): the image is read out of a real
//! local engine, Debian's dockerd and podman, through their own `save`, and loaded into
//! nodes of every runtime. Each test starts its own engine with its own store in a
//! temporary directory, so nothing of the machine's (or of CRI-O's node-d) is touched.
//! Their `save` output is also a test of the archive reader: docker 20.10 writes the
//! pre-25 docker-archive from its vfs layers, podman re-creates the tars from its store.
//!
//! Also several images in one run: two archives whose images share a base layer (sent once
//! per node), and one `docker save a b` archive whose images go to the two containers of
//! one Deployment.

mod util;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;
use util::*;

/// A dockerd of the test's own: its socket, data and exec roots under a temporary
/// directory, no bridge, no iptables (the host's network is the test cluster's), vfs
/// storage. It starts its own containerd under its exec root; SIGTERM stops both.
struct Dockerd {
    child: Child,
    dir: tempfile::TempDir,
}

impl Dockerd {
    fn start() -> Dockerd {
        Dockerd::start_on(None)
    }

    /// With a node: dockerd runs in that node's network and mount namespaces
    /// (tests/cluster/node-exec), as the Docker Engine of a cri-dockerd node would, and the
    /// plugin's helper on that node reaches it at [`Dockerd::endpoint`].
    fn start_on(node: Option<&str>) -> Dockerd {
        // Short path: the socket of the containerd dockerd starts must fit in 108 bytes.
        let dir = tempfile::Builder::new()
            .prefix("sl-dk")
            .tempdir_in("/tmp")
            .unwrap();
        let d = dir.path();
        let log = std::fs::File::create(d.join("dockerd.log")).unwrap();
        let mut cmd = match node {
            Some(node) => {
                let mut cmd = Command::new(repo().join("tests/cluster/node-exec"));
                cmd.args([node, "dockerd"]);
                cmd
            }
            None => Command::new("dockerd"),
        };
        let child = cmd
            .arg("--host")
            .arg(format!("unix://{}/docker.sock", d.display()))
            .arg("--data-root")
            .arg(d.join("root"))
            .arg("--exec-root")
            .arg(d.join("exec"))
            .arg("--pidfile")
            .arg(d.join("docker.pid"))
            .args([
                "--bridge=none",
                "--iptables=false",
                "--ip6tables=false",
                "--ip-masq=false",
                "--storage-driver=vfs",
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("dockerd (Debian's docker.io; tests/cluster/up installs it)");
        let dockerd = Dockerd { child, dir };
        eventually("dockerd answers", Duration::from_secs(60), || {
            dockerd.docker(&["version"]).status.success().then_some(())
        });
        dockerd
    }

    fn host(&self) -> String {
        format!("unix://{}/docker.sock", self.dir.path().display())
    }

    /// `--runtime-endpoint` for a dockerd started on a node: the same path, which the
    /// node's view of /tmp shares with the host's.
    fn endpoint(&self) -> String {
        self.host()
    }

    /// Docker's image id for `reference`, if it holds it.
    fn image_id(&self, reference: &str) -> Option<String> {
        let out = self.docker(&["image", "inspect", "--format", "{{.Id}}", reference]);
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// The plugin's staging names (`sideload.invalid/…`) the engine holds.
    fn staging_names(&self) -> Vec<String> {
        let out = self.docker(&["images", "--format", "{{.Repository}}:{{.Tag}}"]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|n| n.starts_with("sideload.invalid/"))
            .map(str::to_string)
            .collect()
    }

    fn docker(&self, args: &[&str]) -> Output {
        Command::new("docker")
            .env("DOCKER_HOST", self.host())
            .args(args)
            .output()
            .unwrap()
    }

    /// The plugin as admin, talking to this engine.
    fn sideload(&self, ns: &str, args: &[&str]) -> Output {
        sideload_with("DOCKER_HOST", self.host(), ns, args)
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(self.dir.path().join("dockerd.log"));
            eprintln!("dockerd log:\n{}", log.unwrap_or_default());
        }
    }
}

/// A dockerd in node-b's namespaces, and the plugin's arguments that load node-b through
/// it (JSON report).
fn docker_on_node_b() -> (Dockerd, Vec<String>) {
    let dockerd = Dockerd::start_on(Some("node-b"));
    let args = [
        "--nodes",
        "node-b",
        "--runtime",
        "docker",
        "--runtime-endpoint",
    ]
    .into_iter()
    .map(str::to_string)
    .chain([dockerd.endpoint(), "-o".into(), "json".into()])
    .collect();
    (dockerd, args)
}

/// The plugin as admin with `var` set (the engine it reads `docker://`/`podman://` from),
/// its helpers in `ns`.
fn sideload_with(var: &str, value: impl AsRef<std::ffi::OsStr>, ns: &str, args: &[&str]) -> Output {
    let mut cmd = plugin();
    cmd.env(var, value)
        .args(["--helper-namespace", ns])
        .arg("--kubeconfig")
        .arg(admin_kubeconfig())
        .args(args);
    run(cmd)
}

/// A podman store of the test's own, named by CONTAINERS_STORAGE_CONF (podman's own way to
/// point at another store), so the host's and node-d's storage stay untouched.
struct PodmanStore {
    dir: tempfile::TempDir,
}

impl PodmanStore {
    fn new() -> PodmanStore {
        let dir = tempfile::Builder::new()
            .prefix("sl-pm")
            .tempdir_in("/tmp")
            .unwrap();
        let d = dir.path();
        std::fs::write(
            d.join("storage.conf"),
            format!(
                "[storage]\ndriver = \"vfs\"\ngraphroot = \"{0}/root\"\nrunroot = \"{0}/run\"\n",
                d.display()
            ),
        )
        .unwrap();
        PodmanStore { dir }
    }

    fn conf(&self) -> PathBuf {
        self.dir.path().join("storage.conf")
    }

    fn podman(&self, args: &[&str]) -> Output {
        let out = Command::new("podman")
            .env("CONTAINERS_STORAGE_CONF", self.conf())
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "podman {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    fn sideload(&self, ns: &str, args: &[&str]) -> Output {
        sideload_with("CONTAINERS_STORAGE_CONF", self.conf().as_os_str(), ns, args)
    }
}

impl Drop for PodmanStore {
    fn drop(&mut self) {
        // vfs layers are plain directories; podman's own reset unmounts what it mounted.
        let _ = Command::new("podman")
            .env("CONTAINERS_STORAGE_CONF", self.conf())
            .args(["system", "reset", "--force"])
            .output();
    }
}

/// CRI's image id (the config digest, `sha256:…`; CRI-O leaves out the `sha256:`) for
/// `reference` on `node`, if it lists the image.
fn cri_id(node: &str, reference: &str) -> Option<String> {
    let out = Command::new(repo().join("tests/cluster/node-crictl"))
        .args([node, "inspecti", "-o", "json", reference])
        .output()
        .unwrap();
    if !out.status.success() {
        return None;
    }
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["status"]["id"]
        .as_str()
        .map(|id| format!("sha256:{}", id.trim_start_matches("sha256:")))
}

/// Images to remove from nodes however the test ends.
struct Loaded(Vec<(&'static str, String)>);

impl Drop for Loaded {
    fn drop(&mut self) {
        for (node, reference) in &self.0 {
            node_remove_image(node, reference);
        }
    }
}

/// A test image `docker.io/library/<unique prefix>:v1` made with `make-image ARGS` into
/// a tar of a temporary directory of its own.
struct Made {
    _dir: tempfile::TempDir,
    tar: PathBuf,
    name: String,
    reference: String,
}

impl Made {
    fn new(prefix: &str, args: &[&str]) -> Made {
        let name = unique(prefix);
        let reference = format!("docker.io/library/{name}:v1");
        let dir = tempfile::tempdir().unwrap();
        let tar = dir.path().join("made.tar");
        make_image(&reference, &tar, args);
        Made {
            _dir: dir,
            tar,
            name,
            reference,
        }
    }
}

async fn no_helpers_left(client: &kube::Client, namespace: &TestNamespace) {
    let left = helper_pods(client, &namespace.name).await;
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_image_in_docker_loads_by_name_into_every_runtime_as_the_same_image() {
    let _logs = LogsOnFailure;
    let client = admin_client().await;
    let namespace = TestNamespace::new(&client, "sl-dk").await;
    let ns = namespace.name.as_str();
    let dockerd = Dockerd::start();
    let made = Made::new("dksrc", &["--layers", "2", "--layer-mib", "4"]);
    let (name, reference, tar) = (&made.name, &made.reference, &made.tar);
    let loaded = dockerd.docker(&["load", "-i", tar.to_str().unwrap()]);
    assert!(loaded.status.success(), "{loaded:?}");
    let nodes = ["node-a", "node-c", CRIO_NODE];
    let _cleanup = Loaded(nodes.iter().map(|n| (*n, reference.clone())).collect());

    let arg = format!("docker://{name}:v1");
    let out = dockerd.sideload(ns, &[&arg, "--nodes", &nodes.join(","), "-o", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report = json_out(&out);
    for node in nodes {
        assert_eq!(node_row(&report, node)["status"], "loaded", "{report}");
        // The image docker holds, not a re-encoding of it: the config digest is the one the
        // tar the test made has, and CRI lists it under the name the user gave docker.
        assert_eq!(
            cri_id(node, reference).as_deref(),
            Some(config_of(tar).as_str()),
            "{node}"
        );
    }
    // status reads the engine's image the same way and finds it whole on those nodes.
    let out = dockerd.sideload(
        ns,
        &["status", &arg, "--nodes", &nodes.join(","), "-o", "json"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let status = json_out(&out);
    for node in status["nodes"].as_array().unwrap() {
        let image = &node["images"][0];
        assert_eq!(image["present"], true, "{node}");
        assert_eq!(image["matches_archive"], true, "{node}");
    }
    no_helpers_left(&client, &namespace).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_image_a_stopped_docker_and_a_hostile_ref_are_named_and_change_nothing() {
    let _logs = LogsOnFailure;
    let client = admin_client().await;
    let namespace = TestNamespace::new(&client, "sl-dkx").await;
    let ns = namespace.name.as_str();
    let dockerd = Dockerd::start();
    let name = unique("dknone");

    let out = dockerd.sideload(ns, &[&format!("docker://{name}:v1"), "--nodes", "node-a"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains(&format!("docker://{name}:v1")), "{err}");
    assert!(err.contains("`docker images`"), "{err}");
    assert!(!err.contains("panicked"), "{err}");

    // A ref that is shell syntax reaches docker as one argv element and is refused by it;
    // nothing runs it.
    let marker = std::env::temp_dir().join(unique("sl-pwned"));
    let hostile = format!("docker://x$(touch {})", marker.display());
    let out = dockerd.sideload(ns, &[&hostile, "--nodes", "node-a"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(!marker.exists(), "the ref was run by a shell");
    // A ref that looks like an option of `docker save` is refused before docker runs.
    let out = dockerd.sideload(
        ns,
        &["docker://--output=/tmp/sl-written", "--nodes", "node-a"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("not an image reference"),
        "{}",
        stderr(&out)
    );
    assert!(!Path::new("/tmp/sl-written").exists());

    let host = dockerd.host();
    drop(dockerd);
    let gone = format!("docker://{name}:v1");
    let out = sideload_with("DOCKER_HOST", &host, ns, &[&gone, "--nodes", "node-a"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("Docker daemon is not reachable"), "{err}");
    assert!(err.contains("DOCKER_HOST"), "{err}");
    no_helpers_left(&client, &namespace).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_image_in_podman_loads_under_the_name_pods_ask_for() {
    let _logs = LogsOnFailure;
    let client = admin_client().await;
    let namespace = TestNamespace::new(&client, "sl-pm").await;
    let ns = namespace.name.as_str();
    let store = PodmanStore::new();
    let made = Made::new("pmsrc", &["--layers", "2", "--layer-mib", "4"]);
    let (name, reference, tar) = (&made.name, &made.reference, &made.tar);
    store.podman(&["load", "-i", tar.to_str().unwrap()]);
    // podman keeps a short name as localhost/NAME (kind#2038's trap).
    store.podman(&[
        "tag",
        &format!("localhost/{name}:v1"),
        &format!("localhost/{name}:short"),
    ]);
    let nodes = ["node-b", CRIO_NODE];
    let _cleanup = Loaded(
        nodes
            .iter()
            .flat_map(|n| {
                [
                    (*n, reference.clone()),
                    (*n, format!("localhost/{name}:v1")),
                ]
            })
            .collect(),
    );

    // As podman names it: a warning that pods asking for the short name will not find it.
    let out = store.sideload(
        ns,
        &[
            &format!("podman://{name}:v1"),
            "--nodes",
            &nodes.join(","),
            "--dry-run",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("pass --tag {name}:v1")),
        "{}",
        stderr(&out)
    );

    // With --tag: imported under the name the pods ask for, the same image podman holds.
    let out = store.sideload(
        ns,
        &[
            &format!("podman://{name}:v1"),
            "--tag",
            &format!("{name}:v1"),
            "--nodes",
            &nodes.join(","),
            "-o",
            "json",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let report = json_out(&out);
    for node in nodes {
        assert_eq!(node_row(&report, node)["status"], "loaded", "{report}");
        assert_eq!(
            cri_id(node, reference).as_deref(),
            Some(config_of(tar).as_str()),
            "{node}"
        );
        assert_eq!(
            cri_id(node, &format!("localhost/{name}:v1")),
            None,
            "{node}"
        );
    }

    // `podman save -m` of two images: the reader finds both (a load takes them all).
    let other = format!("docker.io/library/{name}-other:v1");
    let dir = made.tar.parent().unwrap();
    let other_tar = dir.join("other.tar");
    make_image(&other, &other_tar, &["--layers", "1", "--layer-mib", "1"]);
    store.podman(&["load", "-i", other_tar.to_str().unwrap()]);
    let multi = dir.join("multi.tar");
    store.podman(&[
        "save",
        "-m",
        "-o",
        multi.to_str().unwrap(),
        &format!("localhost/{name}:v1"),
        &format!("localhost/{name}-other:v1"),
    ]);
    let out = run({
        let mut c = plugin();
        c.args(["inspect", multi.to_str().unwrap(), "-o", "json"]);
        c
    });
    assert!(out.status.success(), "{}", stderr(&out));
    let images = json_out(&out);
    let configs: Vec<&str> = images
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["images"][0]["config"]["digest"].as_str().unwrap())
        .collect();
    let (mine, theirs) = (config_of(tar), config_of(&other_tar));
    assert_eq!(configs.len(), 2, "{images}");
    assert!(
        configs.contains(&mine.as_str()) && configs.contains(&theirs.as_str()),
        "{images}"
    );

    let out = store.sideload(ns, &[&format!("podman://{name}:nope"), "--nodes", "node-b"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("image not known"), "{err}");
    assert!(err.contains("`podman images`"), "{err}");
    no_helpers_left(&client, &namespace).await;
}

/// The node row of `node` in the `images[i]` entry of a several-image report.
/// Where the image named `reference` is in the report's `images`.
fn image_index(report: &Value, reference: &str) -> usize {
    report["images"]
        .as_array()
        .unwrap_or_else(|| panic!("no images in {report}"))
        .iter()
        .position(|i| {
            i["image"]["refs"]
                .as_array()
                .is_some_and(|refs| refs.iter().any(|x| x == reference))
        })
        .unwrap_or_else(|| panic!("no image {reference} in {report}"))
}

fn image_row<'a>(report: &'a Value, i: usize, node: &str) -> &'a Value {
    report["images"][i]["nodes"]
        .as_array()
        .unwrap_or_else(|| panic!("no images[{i}].nodes in {report}"))
        .iter()
        .find(|n| n["name"] == node)
        .unwrap_or_else(|| panic!("no row for {node} in images[{i}]: {report}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn two_archives_in_one_run_send_their_shared_base_layer_once_per_node() {
    let _logs = LogsOnFailure;
    let client = admin_client().await;
    let namespace = TestNamespace::new(&client, "sl-two").await;
    let dir = tempfile::tempdir().unwrap();
    // A 16 MiB base both images share, seeded for this test alone, so no node has it yet.
    let seed = unique("base");
    let (a, b) = (unique("two-a"), unique("two-b"));
    let refs = [
        format!("docker.io/library/{a}:v1"),
        format!("docker.io/library/{b}:v1"),
    ];
    let tars = [dir.path().join("a.tar"), dir.path().join("b.tar")];
    for (r, tar) in refs.iter().zip(&tars) {
        make_image(
            r,
            tar,
            &[
                "--layers",
                "1",
                "--layer-mib",
                "1",
                "--base-mib",
                "16",
                "--base-seed",
                &seed,
            ],
        );
    }
    let nodes = ["node-a", "node-c", CRIO_NODE];
    let _cleanup = Loaded(
        nodes
            .iter()
            .flat_map(|n| refs.iter().map(move |r| (*n, r.clone())))
            .collect(),
    );

    let out = sideload(&[
        tars[0].to_str().unwrap(),
        tars[1].to_str().unwrap(),
        "--nodes",
        &nodes.join(","),
        "--helper-namespace",
        &namespace.name,
        "-o",
        "json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report = json_out(&out);
    assert_eq!(
        report["images"].as_array().map(Vec::len),
        Some(2),
        "{report}"
    );
    const BASE: u64 = 16 << 20;
    for node in nodes {
        let first = image_row(&report, 0, node);
        let second = image_row(&report, 1, node);
        assert_eq!(first["status"], "loaded", "{first}");
        assert_eq!(second["status"], "loaded", "{second}");
        // The base crossed with the first image; the second sent only its own layer.
        assert!(
            first["bytes_received"].as_u64().unwrap() > BASE,
            "{node}: {first}"
        );
        assert!(
            second["bytes_received"].as_u64().unwrap() < 4 << 20,
            "{node}: {second}"
        );
        assert!(
            second["layers_reused"].as_u64().unwrap() >= 1,
            "{node}: {second}"
        );
        // One helper pod served the node for both images.
        assert!(first["helper"].is_string(), "{node}: {first}");
        assert_eq!(first["helper"], second["helper"], "{node}: {report}");
        for (r, tar) in refs.iter().zip(&tars) {
            assert_eq!(
                cri_id(node, r).as_deref(),
                Some(config_of(tar).as_str()),
                "{node} {r}"
            );
        }
    }
    // The table has a section per image.
    let out = sideload(&[
        tars[0].to_str().unwrap(),
        tars[1].to_str().unwrap(),
        "--nodes",
        "node-a",
        "--helper-namespace",
        &namespace.name,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let table = stdout(&out);
    for r in &refs {
        assert!(table.contains(&format!("image {r} (")), "{table}");
    }
    assert_eq!(table.matches("already present").count(), 2, "{table}");
    no_helpers_left(&client, &namespace).await;
}

/// The containers of the Deployment's live, running pods, as (name, image) pairs, once
/// every pod runs what `want` says and there are `replicas` of them.
async fn pods_run(
    client: &kube::Client,
    ns: &str,
    name: &str,
    replicas: usize,
    want: &[(&str, &str)],
) {
    use k8s_openapi::api::core::v1::Pod;
    let pods: kube::Api<Pod> = kube::Api::namespaced(client.clone(), ns);
    let start = std::time::Instant::now();
    loop {
        let list = pods
            .list(&kube::api::ListParams::default().labels(&format!("app={name}")))
            .await
            .unwrap();
        let live: Vec<&Pod> = list
            .items
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .collect();
        let ok = live.len() == replicas
            && live.iter().all(|p| {
                let statuses = p
                    .status
                    .as_ref()
                    .and_then(|s| s.container_statuses.clone())
                    .unwrap_or_default();
                want.iter().all(|(c, image)| {
                    statuses
                        .iter()
                        .any(|s| s.name == *c && s.image == *image && s.ready)
                })
            });
        if ok {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "pods of {name} never all ran {want:?}: {:#?}",
            live.iter()
                .map(|p| p.status.as_ref().map(|s| &s.container_statuses))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_docker_save_of_two_images_loads_both_and_each_container_gets_its_own() {
    let _logs = LogsOnFailure;
    let client = admin_client().await;
    let namespace = TestNamespace::new(&client, "sl-both").await;
    let ns = namespace.name.as_str();
    let dockerd = Dockerd::start();
    let dir = tempfile::tempdir().unwrap();
    let (web, side) = (unique("web"), unique("side"));
    let refs = [
        format!("docker.io/library/{web}:v1"),
        format!("docker.io/library/{side}:v1"),
    ];
    for (i, r) in refs.iter().enumerate() {
        let tar = dir.path().join(format!("{i}.tar"));
        make_image(r, &tar, &["--layers", "1", "--layer-mib", "1"]);
        let loaded = dockerd.docker(&["load", "-i", tar.to_str().unwrap()]);
        assert!(loaded.status.success(), "{loaded:?}");
    }
    // What an air-gap bundle usually is: one `docker save` of every image.
    let both = dir.path().join("both.tar");
    let saved = dockerd.docker(&[
        "save",
        "-o",
        both.to_str().unwrap(),
        &format!("{web}:v1"),
        &format!("{side}:v1"),
    ]);
    assert!(saved.status.success(), "{saved:?}");
    // Every node a pod of the Deployment can be scheduled on (node-c and node-e are
    // tainted).
    let nodes = ["node-a", "node-b", CRIO_NODE];
    let _cleanup = Loaded(
        nodes
            .iter()
            .flat_map(|n| refs.iter().map(move |r| (*n, r.clone())))
            .collect(),
    );

    // A Deployment whose two containers run older tags of the two repositories.
    let deployments: kube::Api<k8s_openapi::api::apps::v1::Deployment> =
        kube::Api::namespaced(client.clone(), ns);
    let deployment = serde_json::json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "pair"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "pair"}},
            "template": {
                "metadata": {"labels": {"app": "pair"}},
                "spec": {
                    "terminationGracePeriodSeconds": 1,
                    "containers": [
                        {"name": "web", "image": format!("{web}:v0"), "imagePullPolicy": "Never"},
                        {"name": "side", "image": format!("{side}:v0"), "imagePullPolicy": "Never"},
                    ],
                },
            },
        },
    });
    deployments
        .create(
            &kube::api::PostParams::default(),
            &serde_json::from_value(deployment).unwrap(),
        )
        .await
        .unwrap();

    let out = sideload(&[
        both.to_str().unwrap(),
        "--nodes",
        &nodes.join(","),
        "--workload",
        "deploy/pair",
        "-n",
        ns,
        "--helper-namespace",
        ns,
        "-o",
        "json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report = json_out(&out);
    // `docker save` writes its manifest in no set order (the engine walks a map), and the
    // report keeps the archive's order: look each image up by its ref.
    assert_eq!(
        report["images"].as_array().map(Vec::len),
        Some(2),
        "{report}"
    );
    for r in &refs {
        let i = image_index(&report, r);
        for node in nodes {
            assert_eq!(image_row(&report, i, node)["status"], "loaded", "{report}");
        }
    }
    let w = &report["workloads"][0];
    assert_eq!(w["patched"], true, "{w}");
    assert_eq!(w["rolled_out"], true, "{w}");
    assert_eq!(w["containers"], serde_json::json!(["web", "side"]), "{w}");
    assert_eq!(w["image"], format!("{}, {}", refs[0], refs[1]), "{w}");
    pods_run(
        &client,
        ns,
        "pair",
        2,
        &[("web", refs[0].as_str()), ("side", refs[1].as_str())],
    )
    .await;
    no_helpers_left(&client, &namespace).await;
    // The pods go before the images do: CRI-O keeps an image a container still uses.
    deployments
        .delete("pair", &kube::api::DeleteParams::foreground())
        .await
        .unwrap();
    let pods: kube::Api<k8s_openapi::api::core::v1::Pod> =
        kube::Api::namespaced(client.clone(), ns);
    let start = std::time::Instant::now();
    while !pods
        .list(&kube::api::ListParams::default().labels("app=pair"))
        .await
        .unwrap()
        .items
        .is_empty()
        && start.elapsed() < Duration::from_secs(60)
    {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The Docker Engine adapter (`--runtime docker`) against a real dockerd in node-b's
/// namespaces, the engine a cri-dockerd node's kubelet is served by: the image is loaded
/// with the node's own `docker load`, tagged only once whole, verified by the engine, seen
/// by `status`, removed by `rm`; a stopped engine is named before any byte goes.
#[tokio::test(flavor = "multi_thread")]
async fn a_docker_engine_node_loads_verifies_shows_and_removes_the_image() {
    let _logs = LogsOnFailure;
    let client = admin_client().await;
    let namespace = TestNamespace::new(&client, "sl-dkn").await;
    let ns = namespace.name.as_str();
    let dockerd = Dockerd::start_on(Some("node-b"));
    let endpoint = dockerd.endpoint();
    let on_docker = [
        "--nodes",
        "node-b",
        "--runtime",
        "docker",
        "--runtime-endpoint",
        &endpoint,
    ];
    // v2 keeps v1's bottom layers (/app and an 8 MiB base) and adds its own on top.
    let seed = unique("dkbase");
    let base = ["--base-mib", "8", "--base-seed", seed.as_str()];
    let made = Made::new(
        "dknode",
        &[&["--layers", "2", "--layer-mib", "4"], &base[..]].concat(),
    );
    let rebuilt = Made::new(
        "dknode2",
        &[&["--layers", "1", "--layer-mib", "1"], &base[..]].concat(),
    );
    let (reference, tar) = (&made.reference, &made.tar);
    let config = config_of(tar);
    let sideload = |args: &[&str]| {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(on_docker);
        all.extend(["-o", "json"]);
        dockerd.sideload(ns, &all)
    };

    let out = sideload(&[tar.to_str().unwrap(), "--pin"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report = json_out(&out);
    let row = node_row(&report, "node-b");
    assert_eq!(row["status"], "loaded", "{report}");
    assert!(
        row["runtime"].as_str().unwrap().starts_with("docker 20.10"),
        "{row}"
    );
    assert!(
        row["verified_by"]
            .as_str()
            .unwrap()
            .contains("Docker Engine"),
        "{row}"
    );
    // Docker cannot pin, and the report says so rather than pretending.
    assert_eq!(row["pinned"], false, "{row}");
    assert!(
        row["pin_note"].as_str().unwrap().contains("cannot pin"),
        "{row}"
    );
    // The engine holds the very image (its id is the archive's config digest) under the
    // ref, and nothing under the staging name.
    assert_eq!(
        dockerd.image_id(reference).as_deref(),
        Some(config.as_str())
    );
    let names = dockerd.docker(&["images", "--format", "{{.Repository}}:{{.Tag}}"]);
    let names = String::from_utf8_lossy(&names.stdout).to_string();
    assert!(!names.contains("sideload.invalid"), "{names}");
    // node-b's containerd was not touched.
    assert!(!node_images("node-b").contains(reference));

    // Again: found there, nothing sent.
    let out = sideload(&[tar.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report = json_out(&out);
    let row = node_row(&report, "node-b");
    assert_eq!(row["bytes_sent"], 0, "{row}");
    assert_ne!(row["status"], "loaded", "{row}");

    // The rebuilt image: the layers Docker holds by chain (/app and the base) stay home;
    // `docker load` takes the stream without them and the image is whole.
    let out = sideload(&[rebuilt.tar.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report = json_out(&out);
    let row = node_row(&report, "node-b");
    assert_eq!(row["status"], "loaded", "{report}");
    assert_eq!(row["layers_reused"], 2, "{row}");
    assert!(
        row["bytes_received"].as_u64().unwrap() < 3 << 20,
        "the 8 MiB base went again: {row}"
    );
    assert_eq!(
        dockerd.image_id(&rebuilt.reference).as_deref(),
        Some(config_of(&rebuilt.tar).as_str())
    );
    let out = sideload(&["rm", &rebuilt.reference]);
    assert!(out.status.success(), "{}", stderr(&out));

    let out = sideload(&["status", tar.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let status = json_out(&out);
    let image = &node_row(&status, "node-b")["images"][0];
    assert_eq!(image["present"], true, "{image}");
    assert_eq!(image["matches_archive"], true, "{image}");
    assert_eq!(image["id"], config.as_str(), "{image}");

    let out = sideload(&["rm", reference]);
    assert!(out.status.success(), "{}", stderr(&out));
    let removed = json_out(&out);
    let action = &node_row(&removed, "node-b")["images"][0]["action"];
    assert_eq!(action, "removed");
    assert_eq!(dockerd.image_id(reference), None);

    // A stopped engine: named, before any byte is sent, and nothing is left.
    let host = dockerd.host();
    drop(dockerd);
    let mut args = vec![tar.to_str().unwrap()];
    args.extend(on_docker);
    args.extend(["-o", "json"]);
    let out = sideload_with("DOCKER_HOST", &host, ns, &args);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let report = json_out(&out);
    let row = node_row(&report, "node-b");
    let why = row["error"].as_str().unwrap_or_default();
    assert!(
        why.contains("Docker Engine") || why.contains("socket"),
        "{report}"
    );
    assert_eq!(row["bytes_sent"], 0, "{row}");
    no_helpers_left(&client, &namespace).await;
}

/// Import while streaming on Docker Engine (issue 10): the stream is cut into one
/// `docker load` per layer, so while the last layer is still on its way the engine already
/// holds the prefix images of the layers below it, and not yet the image. The image it
/// ends with is the one a plain `docker load` of the whole stream gives (same ID, same
/// diff_ids), and no prefix name is left.
#[tokio::test(flavor = "multi_thread")]
async fn a_docker_engine_node_imports_each_layer_while_the_next_arrives() {
    let _logs = LogsOnFailure;
    let client = admin_client().await;
    let namespace = TestNamespace::new(&client, "sl-dkpipe").await;
    let ns = namespace.name.clone();
    let (dockerd, on_docker) = docker_on_node_b();
    let on_docker: Vec<&str> = on_docker.iter().map(String::as_str).collect();
    let dir = tempfile::tempdir().unwrap();
    let reference = format!("sideload.test/dkahead:{}", unique("v"));
    let tar = dir.path().join("dkahead.tar");
    make_image(&reference, &tar, &["--layers", "3", "--layer-mib", "8"]);
    let inspect = || -> String {
        let out = dockerd.docker(&[
            "image",
            "inspect",
            "--format",
            "{{.Id}} {{json .RootFS.Layers}}",
            &reference,
        ]);
        assert!(out.status.success(), "{}", stderr(&out));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };

    // First as one `docker load` of the whole stream.
    let mut args = vec![tar.to_str().unwrap(), "--pipeline", "off"];
    args.extend(&on_docker);
    let out = dockerd.sideload(&ns, &args);
    assert!(out.status.success(), "{}", stderr(&out));
    let report = json_out(&out);
    assert_eq!(node_row(&report, "node-b")["import_parts"], 1, "{report}");
    let plain = inspect();
    let out = dockerd.docker(&["rmi", &reference]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(dockerd.image_id(&reference), None);

    // Then pipelined, held inside the last layer.
    let mut cmd = plugin();
    cmd.arg("--kubeconfig")
        .arg(admin_kubeconfig())
        .arg(&tar)
        .args(&on_docker)
        .args([
            "--relay",
            "off",
            "--compress",
            "none",
            "--helper-namespace",
            &ns,
        ]);
    // Past /app and the first two layers (8 MiB each, random), inside the third.
    let held = Held::start(cmd, 20 << 20);
    let ahead = eventually(
        "the parts before the last to be loaded",
        Duration::from_secs(60),
        || {
            let ours: Vec<_> = dockerd
                .staging_names()
                .into_iter()
                .filter(|n| n.ends_with("-1") || n.ends_with("-2"))
                .collect();
            (ours.len() >= 2).then_some(ours)
        },
    );
    assert_eq!(
        dockerd.image_id(&reference),
        None,
        "the image itself is not there before its last layer"
    );
    let out = held.release().await;
    assert!(out.status.success(), "{}", stderr(&out));
    let report = json_out(&out);
    let run = report["run"].as_str().unwrap();
    let row = node_row(&report, "node-b");
    assert_eq!(row["status"], "loaded", "{row}");
    // make-image's /app layer and the three 8 MiB layers: one load each.
    assert_eq!(row["import_parts"], 4, "{row}");
    let ours = format!("sideload.invalid/partial:{run}-");
    assert_eq!(
        ahead.iter().filter(|n| n.starts_with(&ours)).count(),
        2,
        "this run's prefix images were there mid-stream: {ahead:?}"
    );
    let left = dockerd.staging_names();
    assert!(left.is_empty(), "names left: {left:?}");
    let pipelined = inspect();
    assert_eq!(
        pipelined, plain,
        "the pipelined load gives the plain load's image"
    );
    assert!(
        plain.starts_with(&config_of(&tar)),
        "{plain} is the archive's image"
    );
    no_helpers_left(&client, &namespace).await;
}

/// A hostile middlebox (or a bad link) between the plugin and a Docker Engine node: one
/// byte of the last layer flipped on the wire, after the parts below it were loaded. The
/// agent's digest check stops the stream before `docker load` reads that layer whole: the
/// node fails saying so, the engine holds neither the image nor any staging name, and no
/// helper is left. The same run over a clean link then loads it.
#[tokio::test(flavor = "multi_thread")]
async fn a_docker_engine_node_refuses_a_layer_corrupted_on_the_wire() {
    let _logs = LogsOnFailure;
    let client = admin_client().await;
    let namespace = TestNamespace::new(&client, "sl-dkflip").await;
    let ns = namespace.name.clone();
    let (dockerd, on_docker) = docker_on_node_b();
    let dir = tempfile::tempdir().unwrap();
    let reference = format!("sideload.test/dkflip:{}", unique("v"));
    let tar = dir.path().join("dkflip.tar");
    make_image(&reference, &tar, &["--layers", "3", "--layer-mib", "2"]);
    let size = std::fs::metadata(&tar).unwrap().len();
    let mut args = vec![tar.to_str().unwrap(), "--relay", "off"];
    args.extend(on_docker.iter().map(String::as_str));

    // Random layers travel as raw frames: the byte lands in the last layer's data.
    let mut cmd = plugin();
    cmd.env("DOCKER_HOST", dockerd.host())
        .args(["--helper-namespace", &ns, "--kubeconfig"])
        .arg(admin_kubeconfig())
        .args(&args);
    let report = run_with_byte_flipped(cmd, size * 5 / 6);
    let row = node_row(&report, "node-b");
    assert_eq!(row["status"], "failed", "{row}");
    assert!(
        row["error"]
            .as_str()
            .is_some_and(|e| e.contains("corrupted in transit") && !e.contains("cleaning up")),
        "the node says why, and only that (its staging names went quietly): {row}"
    );
    assert_eq!(dockerd.image_id(&reference), None, "the corrupted image");
    let left = dockerd.staging_names();
    assert!(left.is_empty(), "staging names left: {left:?}");
    no_helpers_left(&client, &namespace).await;

    let out = dockerd.sideload(&ns, &args);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        dockerd
            .image_id(&reference)
            .is_some_and(|id| id == config_of(&tar)),
        "the clean run loads the archive's image"
    );
}
