//! The kubeconfig user's `exec` credential plugin, run once per run instead of three times.
//!
//! kube-rs runs the plugin while it builds a client, once for a TLS identity, once for the
//! auth layer and once for the client's expiry, one after another. A cloud CLI's get-token
//! takes about a second each time, so on such clusters that was two needless seconds of
//! every run, a no-op included. Here the plugin runs once, the way kube-rs runs it (its
//! arguments and environment, `KUBERNETES_EXEC_INFO`, stdin and stderr passed through
//! unless `interactiveMode` is `Never`), and kube-rs is handed this binary as the plugin:
//! `kubectl-sideload __exec-credential -- PLUGIN ARGS…` prints the credential from the
//! file its environment names while that file exists and the credential stays good for
//! more than [`FRESH_FOR`], and runs the real plugin otherwise.
//!
//! The file is private (a 0700 directory of its own) and lives only while kube-rs builds
//! the client ([`Carried`] removes it): kube-rs's later refresh of an expiring token
//! reaches the real plugin, and no secret is in the environment, where kube-rs's error for
//! a failed plugin would print it. Hand-written: kube-rs offers no way to give it a
//! credential that it would still refresh.

use std::collections::HashMap;
use std::ffi::OsString;
use std::process::{Command, ExitCode, Stdio};
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::client::AuthError;
use kube::config::{ExecConfig, ExecInteractiveMode};
use serde::{Deserialize, Serialize};

/// The first argument that makes this binary the credential plugin kube-rs runs.
pub const SHIM_ARG: &str = "__exec-credential";

/// Names the file holding the credential the plugin printed (its stdout, verbatim).
const CREDENTIAL_ENV: &str = "SIDELOAD_EXEC_CREDENTIAL_FILE";

/// A credential expiring sooner than this is fetched again. More than kube-rs's refresh
/// window (60 s): a refresh must never be answered with the token it is replacing.
const FRESH_FOR: Duration = Duration::from_secs(120);

#[derive(Serialize, Deserialize)]
struct ExecCredential {
    #[serde(rename = "apiVersion", skip_serializing_if = "Option::is_none")]
    api_version: Option<String>,
    kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    spec: Option<Spec>,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<Status>,
}

#[derive(Serialize, Deserialize)]
struct Spec {
    interactive: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    cluster: Option<kube::config::ExecAuthCluster>,
}

#[derive(Serialize, Deserialize)]
struct Status {
    #[serde(rename = "expirationTimestamp")]
    expiration_timestamp: Option<String>,
    token: Option<String>,
    #[serde(rename = "clientCertificateData")]
    client_certificate_data: Option<String>,
}

/// The credential file of [`run_once`]: removed, with its directory, when dropped. Keep it
/// until the client is built.
pub struct Carried {
    _dir: Option<tempfile::TempDir>,
}

/// Runs `config`'s credential plugin now, once, and points `config` at the shim reading
/// what it printed. Nothing changes where kube-rs would not run a plugin (a token or
/// password in the kubeconfig wins over it) or where the plugin printed no credential
/// (kube-rs then runs it itself and reports what is wrong).
pub fn run_once(config: &mut kube::Config) -> Result<Carried, AuthError> {
    let none = Carried { _dir: None };
    let info = &config.auth_info;
    let Some(exec) = info.exec.clone() else {
        return Ok(none);
    };
    if info.token.is_some() || info.token_file.is_some() || info.username.is_some() {
        return Ok(none);
    }
    let (Some(plugin), Ok(me)) = (exec.command.clone(), std::env::current_exe()) else {
        return Ok(none);
    };
    let printed = run_plugin(&exec, &plugin)?;
    let usable = serde_json::from_slice::<ExecCredential>(&printed).is_ok_and(|c| {
        c.status
            .is_some_and(|s| s.token.is_some() || s.client_certificate_data.is_some())
    });
    if !usable {
        return Ok(none);
    }
    // tempfile makes the directory 0700 on Unix: only this user reaches the file.
    let Ok(dir) = tempfile::Builder::new()
        .prefix("kubectl-sideload-")
        .tempdir()
    else {
        return Ok(none);
    };
    let file = dir.path().join("credential.json");
    if std::fs::write(&file, &printed).is_err() {
        return Ok(none);
    }
    let mut shim = exec;
    shim.command = Some(me.to_string_lossy().into_owned());
    let mut args = vec![SHIM_ARG.to_string(), "--".to_string(), plugin];
    args.extend(shim.args.take().unwrap_or_default());
    shim.args = Some(args);
    let mut env = shim.env.take().unwrap_or_default();
    env.push(HashMap::from([
        ("name".to_string(), CREDENTIAL_ENV.to_string()),
        ("value".to_string(), file.to_string_lossy().into_owned()),
    ]));
    shim.env = Some(env);
    config.auth_info.exec = Some(shim);
    Ok(Carried { _dir: Some(dir) })
}

/// The plugin's stdout, run as kube-rs runs it.
fn run_plugin(exec: &ExecConfig, plugin: &str) -> Result<Vec<u8>, AuthError> {
    let mut cmd = Command::new(plugin);
    cmd.args(exec.args.iter().flatten());
    for pair in exec.env.iter().flatten() {
        if let (Some(name), Some(value)) = (pair.get("name"), pair.get("value")) {
            cmd.env(name, value);
        }
    }
    let interactive = exec.interactive_mode != Some(ExecInteractiveMode::Never);
    if interactive {
        cmd.stdin(Stdio::inherit()).stderr(Stdio::inherit());
    } else {
        cmd.stdin(Stdio::piped());
    }
    let cluster = if exec.provide_cluster_info {
        Some(
            exec.cluster
                .clone()
                .ok_or(AuthError::ExecMissingClusterInfo)?,
        )
    } else {
        None
    };
    let info = ExecCredential {
        api_version: exec.api_version.clone(),
        kind: "ExecCredential".into(),
        spec: Some(Spec {
            interactive,
            cluster,
        }),
        status: None,
    };
    cmd.env(
        "KUBERNETES_EXEC_INFO",
        serde_json::to_string(&info).map_err(AuthError::AuthExecSerialize)?,
    );
    for name in exec.drop_env.iter().flatten() {
        cmd.env_remove(name);
    }
    let out = cmd.output().map_err(AuthError::AuthExecStart)?;
    if !out.status.success() {
        return Err(AuthError::AuthExecRun {
            cmd: format!("{cmd:?}"),
            out: Box::new(out),
        });
    }
    Ok(out.stdout)
}

/// Whether the credential `printed` is good for more than [`FRESH_FOR`] after `now`: one
/// without an expiry is (kube-rs never refreshes it), one that cannot be read is not.
fn fresh(printed: &str, now: Timestamp) -> bool {
    let Ok(credential) = serde_json::from_str::<ExecCredential>(printed) else {
        return false;
    };
    let Some(status) = credential.status else {
        return false;
    };
    match status.expiration_timestamp {
        None => true,
        Some(at) => at.parse::<Timestamp>().is_ok_and(|at| {
            at.duration_since(now)
                .try_into()
                .is_ok_and(|left: Duration| left > FRESH_FOR)
        }),
    }
}

/// `kubectl-sideload __exec-credential -- PLUGIN ARGS…`, as kube-rs runs it: the carried
/// credential while its file exists and it is fresh, else the real plugin with this process's stdin, stdout,
/// stderr and environment (kube-rs's `KUBERNETES_EXEC_INFO` included).
pub fn shim(args: &[OsString]) -> ExitCode {
    let carried = std::env::var_os(CREDENTIAL_ENV)
        .and_then(|file| std::fs::read_to_string(file).ok())
        .unwrap_or_default();
    if fresh(&carried, Timestamp::now()) {
        print!("{carried}");
        return ExitCode::SUCCESS;
    }
    let args = args
        .strip_prefix(&[OsString::from("--")][..])
        .unwrap_or(args);
    let Some((plugin, rest)) = args.split_first() else {
        eprintln!("usage: kubectl-sideload {SHIM_ARG} -- PLUGIN [ARGS…]");
        return ExitCode::from(2);
    };
    let mut cmd = Command::new(plugin);
    cmd.args(rest).env_remove(CREDENTIAL_ENV);
    become_plugin(cmd, plugin)
}

/// Runs the real plugin in this process's place: its exit status is the shim's.
#[cfg(unix)]
fn become_plugin(mut cmd: Command, plugin: &OsString) -> ExitCode {
    use std::os::unix::process::CommandExt;
    let err = cmd.exec();
    eprintln!(
        "cannot run the credential plugin {}: {err}",
        plugin.to_string_lossy()
    );
    ExitCode::FAILURE
}

/// Runs the real plugin and exits with its status (no exec(2) here).
#[cfg(not(unix))]
fn become_plugin(mut cmd: Command, plugin: &OsString) -> ExitCode {
    match cmd.status() {
        Ok(status) => ExitCode::from(status.code().unwrap_or(1).clamp(0, 255) as u8),
        Err(err) => {
            eprintln!(
                "cannot run the credential plugin {}: {err}",
                plugin.to_string_lossy()
            );
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn credential(expiry: Option<&str>) -> String {
        serde_json::json!({
            "apiVersion": "client.authentication.k8s.io/v1",
            "kind": "ExecCredential",
            "status": {"token": "t", "expirationTimestamp": expiry},
        })
        .to_string()
    }

    #[test]
    fn a_credential_is_reused_only_while_it_outlives_kube_rs_refresh_window() {
        let now: Timestamp = "2026-12-06T03:00:00Z".parse().unwrap();
        assert!(fresh(&credential(None), now), "no expiry: never refreshed");
        assert!(fresh(&credential(Some("2026-12-06T03:15:00Z")), now));
        // kube-rs refreshes 60 s before the expiry; that refresh must reach the plugin.
        assert!(!fresh(&credential(Some("2026-12-06T03:01:00Z")), now));
        assert!(!fresh(&credential(Some("2026-12-06T02:59:00Z")), now));
        assert!(!fresh(&credential(Some("soon")), now));
        assert!(!fresh("", now));
        assert!(!fresh(r#"{"kind":"ExecCredential"}"#, now));
    }

    #[cfg(unix)]
    #[test]
    fn the_plugin_runs_once_and_kube_rs_is_given_the_shim_with_its_arguments() {
        let dir = tempfile::tempdir().unwrap();
        let ran = dir.path().join("ran");
        let plugin = dir.path().join("get-token");
        std::fs::write(
            &plugin,
            format!(
                "#!/bin/sh\necho \"$1 $FROM_ENV $KUBERNETES_EXEC_INFO\" >> '{}'\necho '{}'\n",
                ran.display(),
                credential(None)
            ),
        )
        .unwrap();
        std::fs::set_permissions(&plugin, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .unwrap();
        let mut config = kube::Config::new("https://127.0.0.1:6443".parse().unwrap());
        config.auth_info.exec = Some(ExecConfig {
            api_version: Some("client.authentication.k8s.io/v1".into()),
            command: Some(plugin.to_string_lossy().into_owned()),
            args: Some(vec!["--cluster=a".into()]),
            env: Some(vec![HashMap::from([
                ("name".to_string(), "FROM_ENV".to_string()),
                ("value".to_string(), "yes".to_string()),
            ])]),
            interactive_mode: Some(ExecInteractiveMode::Never),
            ..Default::default()
        });
        let carried = run_once(&mut config).unwrap();
        let said = std::fs::read_to_string(&ran).unwrap();
        assert_eq!(said.lines().count(), 1, "{said}");
        assert!(said.starts_with("--cluster=a yes {"), "{said}");
        assert!(said.contains(r#""interactive":false"#), "{said}");
        let shim = config.auth_info.exec.unwrap();
        let args = shim.args.unwrap();
        assert_eq!(args[..2], [SHIM_ARG.to_string(), "--".to_string()]);
        assert_eq!(args[2], plugin.to_string_lossy());
        assert_eq!(args[3], "--cluster=a");
        let env = shim.env.unwrap();
        assert!(
            env.iter()
                .any(|e| e.get("value").map(String::as_str) == Some("yes"))
        );
        // The environment names a file; the credential is in the file, not the environment.
        let file = env
            .iter()
            .find(|e| e.get("name").map(String::as_str) == Some(CREDENTIAL_ENV))
            .and_then(|e| e.get("value"))
            .unwrap();
        assert!(!file.contains("ExecCredential"), "{file}");
        let printed = std::fs::read_to_string(file).unwrap();
        assert!(fresh(&printed, Timestamp::now()), "{printed}");
        drop(carried);
        assert!(
            !std::path::Path::new(file).exists(),
            "the credential outlived the client's build"
        );
    }

    #[test]
    fn a_kubeconfig_token_wins_and_the_plugin_is_not_run() {
        let mut config = kube::Config::new("https://127.0.0.1:6443".parse().unwrap());
        config.auth_info.token = Some("t".to_string().into());
        config.auth_info.exec = Some(ExecConfig {
            command: Some("/nonexistent/get-token".into()),
            ..Default::default()
        });
        run_once(&mut config).unwrap();
        assert_eq!(
            config.auth_info.exec.unwrap().command.as_deref(),
            Some("/nonexistent/get-token")
        );
    }
}
