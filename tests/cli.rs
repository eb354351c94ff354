//! CLI behaviour that needs no cluster: bad input gets one clear line naming the problem
//! and the fix, a non-zero exit, and never a panic.

mod util;

use std::io::Write;
use std::process::Stdio;

use util::*;

/// Runs the plugin with a kubeconfig whose server refuses connections, so any test that
/// got past input validation would fail on "cannot reach", not hang.
fn sideload_offline(args: &[&str]) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        "apiVersion: v1\nkind: Config\ncurrent-context: x\nclusters:\n- name: x\n  cluster:\n    server: https://127.0.0.1:1\ncontexts:\n- name: x\n  context:\n    cluster: x\n    user: x\nusers:\n- name: x\n  user:\n    token: t\n",
    )
    .unwrap();
    let mut cmd = plugin();
    cmd.arg("--kubeconfig").arg(&kubeconfig).args(args);
    run(cmd)
}

fn assert_clean_failure(out: &std::process::Output, needle: &str) {
    let err = stderr(out);
    assert!(!out.status.success(), "should fail: {err}");
    assert_ne!(out.status.code(), Some(101), "panicked: {err}");
    assert!(!err.contains("panicked"), "panicked: {err}");
    assert!(err.contains(needle), "expected {needle:?} in: {err}");
    assert!(err.starts_with("error: "), "one error line: {err}");
}

fn tar_with(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, data) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder.append_data(&mut header, path, *data).unwrap();
    }
    builder.into_inner().unwrap()
}

#[test]
fn a_missing_file_names_the_path() {
    let out = sideload_offline(&["/nonexistent/app.tar"]);
    assert_clean_failure(&out, "/nonexistent/app.tar");
}

#[test]
fn a_file_that_is_not_a_tar_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notes.txt");
    std::fs::write(&path, "hello, this is not an image\n".repeat(100)).unwrap();
    let out = sideload_offline(&[path.to_str().unwrap()]);
    assert_clean_failure(&out, "not a tar");
}

#[test]
fn a_truncated_archive_says_so() {
    let layer = vec![7u8; 100_000];
    let bytes = tar_with(&[("abc/layer.tar", &layer), ("manifest.json", b"[]")]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cut.tar");
    std::fs::write(&path, &bytes[..50_000]).unwrap();
    let out = sideload_offline(&[path.to_str().unwrap()]);
    assert_clean_failure(&out, "truncated");
}

#[test]
fn a_tar_without_an_image_says_so() {
    let bytes = tar_with(&[("README", b"just a file")]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("plain.tar");
    std::fs::write(&path, bytes).unwrap();
    let out = sideload_offline(&[path.to_str().unwrap()]);
    assert_clean_failure(&out, "no image");
}

#[test]
fn missing_layers_are_named() {
    let config = br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":["sha256:1111111111111111111111111111111111111111111111111111111111111111"]}}"#;
    let manifest = br#"[{"Config":"cfg.json","RepoTags":["app:v1"],"Layers":["abc/layer.tar"]}]"#;
    let bytes = tar_with(&[("cfg.json", config), ("manifest.json", manifest)]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nolayers.tar");
    std::fs::write(&path, bytes).unwrap();
    let out = sideload_offline(&[path.to_str().unwrap()]);
    assert_clean_failure(&out, "abc/layer.tar");
}

#[test]
fn empty_stdin_says_so() {
    let mut cmd = plugin();
    cmd.args(["inspect", "-"]).stdin(Stdio::piped());
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    assert_clean_failure(&out, "stdin");
}

#[test]
fn an_unreachable_api_server_names_the_fix() {
    // A valid archive, so the failure is the connection.
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let manifest = br#"[{"Config":"cfg.json","RepoTags":["app:v1"],"Layers":[]}]"#;
    let bytes = tar_with(&[("cfg.json", config), ("manifest.json", manifest)]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ok.tar");
    std::fs::write(&path, bytes).unwrap();
    let out = sideload_offline(&[path.to_str().unwrap()]);
    assert_clean_failure(&out, "cannot reach the API server");
}

#[test]
fn bad_tags_and_podman_short_names_are_named_before_the_cluster_is_asked() {
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let manifest = br#"[{"Config":"cfg.json","RepoTags":["localhost/app:v1"],"Layers":[]}]"#;
    let bytes = tar_with(&[("cfg.json", config), ("manifest.json", manifest)]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("podman.tar");
    std::fs::write(&path, bytes).unwrap();
    let path = path.to_str().unwrap();
    let out = sideload_offline(&[path, "--tag", "app@sha256:0000"]);
    assert_clean_failure(&out, "names a digest");
    let out = sideload_offline(&[path, "--tag", "Bad Name:1"]);
    assert_clean_failure(&out, "--tag \"Bad Name:1\" is not an image reference");
    // podman's localhost/ prefix: a warning that names the fix, then on to the cluster.
    let out = sideload_offline(&[path]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("warning: the archive names the image localhost/app:v1")
            && err.contains("--tag app:v1"),
        "{err}"
    );
    let out = sideload_offline(&[path, "--tag", "app:v1"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("warning"), "{err}");
    assert!(err.contains("cannot reach the API server"), "{err}");
}

#[test]
fn flag_errors_name_the_flag() {
    let out = sideload_offline(&["x.tar", "--nodes", "a", "--selector", "b=c"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--selector"), "{}", stderr(&out));
    let out = sideload_offline(&["x.tar", "--nodes", "a,,b"]);
    assert_clean_failure(&out, "--nodes");
}

#[test]
fn inspect_prints_json_for_scripts() {
    let config =
        br#"{"architecture":"arm64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let manifest = br#"[{"Config":"cfg.json","RepoTags":["app:v1"],"Layers":[]}]"#;
    let bytes = tar_with(&[("cfg.json", config), ("manifest.json", manifest)]);
    let mut cmd = plugin();
    cmd.args(["inspect", "-", "-o", "json"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    child.stdin.take().unwrap().write_all(&bytes).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["refs"][0], "docker.io/library/app:v1");
    assert_eq!(v["format"], "docker-archive");
    assert_eq!(v["images"][0]["platform"]["architecture"], "arm64");
}

#[test]
fn version_names_the_commit() {
    let mut cmd = plugin();
    cmd.arg("--version");
    let out = run(cmd);
    assert!(out.status.success());
    assert!(stdout(&out).contains("(commit "), "{}", stdout(&out));
}

/// The credential shim kube-rs runs (src/cluster/credential.rs): the credential it carries
/// while that is fresh, the real plugin (its arguments, its stdout and exit code) once it
/// is about to expire, as when kube-rs refreshes a token mid-run.
#[cfg(unix)]
#[test]
fn the_credential_shim_reuses_a_fresh_credential_and_refreshes_an_expiring_one() {
    let dir = tempfile::tempdir().unwrap();
    let plugin_path = dir.path().join("get-token");
    std::fs::write(&plugin_path, "#!/bin/sh\necho \"new $1\"\nexit 7\n").unwrap();
    std::fs::set_permissions(
        &plugin_path,
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    let credential = |expiry: &str| {
        format!(
            r#"{{"apiVersion":"client.authentication.k8s.io/v1","kind":"ExecCredential","status":{{"token":"old","expirationTimestamp":"{expiry}"}}}}"#
        )
    };
    let file = dir.path().join("credential.json");
    let shim = |carried: &str| {
        if carried.is_empty() {
            let _ = std::fs::remove_file(&file);
        } else {
            std::fs::write(&file, carried).unwrap();
        }
        let mut cmd = plugin();
        cmd.args(["__exec-credential", "--"])
            .arg(&plugin_path)
            .arg("--region=x")
            .env("SIDELOAD_EXEC_CREDENTIAL_FILE", &file);
        run(cmd)
    };
    let fresh = credential("2099-01-01T00:00:00Z");
    let out = shim(&fresh);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), fresh);
    // Expiring within kube-rs's 60 s refresh window, or its file gone (removed once the
    // client is built): the real plugin answers.
    let soon = k8s_openapi::jiff::Timestamp::now() + std::time::Duration::from_secs(30);
    for carried in [credential(&soon.to_string()), String::new()] {
        let out = shim(&carried);
        assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
        assert_eq!(stdout(&out), "new --region=x\n");
    }
}
