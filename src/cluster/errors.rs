//! Turns API errors into messages a user can act on: which permission is missing, which
//! namespace label admits the helper pod, whether the API server is reachable at all.

use std::future::Future;
use std::time::Duration;

use anyhow::anyhow;
use tokio::time::Instant;

/// A failure that a retry would meet again: a denial, an admission rejection, bad
/// credentials, nothing on the node to start a helper from. Nodes failing so are not retried.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Permanent(pub String);

/// Admission refused a pod because its namespace has no ServiceAccount "default" yet. The
/// controller-manager makes one in every namespace moments after the namespace exists
/// (longer while it reconnects to a restarted API server), so a helper namespace created
/// just before the run meets this: worth waiting for, never a missing permission.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct NoServiceAccountYet(pub String);

/// Whether `err` would come back the same on a retry: marked [`Permanent`], or an API
/// answer of 4xx other than 404 (gone meanwhile), 408, 409 (a name still in use) and 429
/// (throttled), which all pass.
pub fn is_permanent(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        e.is::<Permanent>()
            || matches!(
                e.downcast_ref::<kube::Error>(),
                Some(kube::Error::Api(s)) if (400..500).contains(&s.code)
                    && ![404, 408, 409, 429].contains(&s.code)
            )
    })
}

/// Whether a call that failed with `err` may succeed in a moment: the API server
/// unreachable (restarting, a dropped connection) or answering 408, 429 or 5xx.
pub fn is_transient(err: &kube::Error) -> bool {
    match err {
        kube::Error::Api(s) => s.code == 408 || s.code == 429 || s.code >= 500,
        // A credential plugin that failed fails the same way next second.
        kube::Error::Service(inner) => inner.downcast_ref::<kube::client::AuthError>().is_none(),
        kube::Error::HyperError(_) => true,
        _ => false,
    }
}

/// Runs `call` until it succeeds, fails for a reason that is not [transient](is_transient),
/// or `within` has passed (then its last error), a second between tries. For the calls that
/// must not give up at the first refused connection: deleting what the run created, and
/// the wait for the API server before a retry. Hand-written: a loop of six lines, where a
/// retry crate would want its own error and policy types.
pub async fn persist<T, F, Fut>(within: Duration, mut call: F) -> Result<T, kube::Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, kube::Error>>,
{
    let until = Instant::now() + within;
    loop {
        match call().await {
            Err(e) if is_transient(&e) && Instant::now() + PERSIST_PAUSE < until => {
                tracing::debug!(error = %e, "transient API error; trying again");
                tokio::time::sleep(PERSIST_PAUSE).await;
            }
            done => return done,
        }
    }
}

const PERSIST_PAUSE: Duration = Duration::from_secs(1);

/// The kubeconfig user's credential plugin (`exec.command`), once the client is built: the
/// name a credential error gives, instead of the env-laden command line kube-rs reports.
pub static CREDENTIAL_PLUGIN: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// A failure to get credentials (a credential plugin, a token file), for the user: which
/// plugin and what it said, then the fix.
pub fn credentials(err: &kube::client::AuthError) -> String {
    use kube::client::AuthError;
    let plugin = CREDENTIAL_PLUGIN.get().map_or("", String::as_str);
    let said = match err {
        AuthError::AuthExecRun { out, .. } => {
            let text = String::from_utf8_lossy(if out.stderr.is_empty() {
                &out.stdout
            } else {
                &out.stderr
            })
            .trim()
            .to_string();
            // The end of a long output: where the reason usually is.
            let skip = text.chars().count().saturating_sub(500);
            let tail: String = text.chars().skip(skip).collect();
            format!(
                "the credential plugin {plugin} failed ({}): {tail}",
                out.status
            )
        }
        other if !plugin.is_empty() => format!("the credential plugin {plugin}: {other}"),
        other => other.to_string(),
    };
    format!(
        "cannot get credentials for the API server from your kubeconfig's user: {said}; fix \
         that credential plugin or token (`kubectl config view --minify` shows which one this \
         context uses)"
    )
}

/// Wraps a kube error from `verb` on `resource` with the next step for the user.
pub fn explain(err: kube::Error, verb: &str, resource: &str) -> anyhow::Error {
    match &err {
        kube::Error::Api(status)
            if status.code == 403
                && status.message.contains("error looking up service account") =>
        {
            // "… error looking up service account NAMESPACE/NAME: serviceaccount … not found"
            let account = status
                .message
                .split("error looking up service account ")
                .nth(1)
                .and_then(|rest| rest.split(':').next())
                .unwrap_or_default();
            let (namespace, name) = account
                .split_once('/')
                .unwrap_or(("<helper namespace>", "default"));
            anyhow::Error::new(NoServiceAccountYet(format!(
                "cannot {verb} {resource}: its service account {name:?} does not exist (yet), \
                 and the API server admits no pod without one ({}); the controller-manager \
                 creates \"default\" moments after a namespace is made: if `kubectl get \
                 serviceaccount {name} -n {namespace}` stays empty, check that \
                 kube-controller-manager runs, or use another --helper-namespace",
                status.message
            )))
        }
        kube::Error::Api(status) if status.code == 403 => {
            let text = if status.message.contains("security context constraint") {
                format!(
                    "OpenShift's security context constraints rejected the helper pod: {}; let \
                     the helper namespace's default service account use the privileged SCC: \
                     apply plugin-manifest/openshift-scc.yaml (or `oc adm policy \
                     add-scc-to-user privileged -z default -n <helper namespace>`)",
                    status.message
                )
            } else if status.message.contains("PodSecurity") {
                format!(
                    "pod security admission rejected the helper pod: {}; use --helper-namespace \
                     kube-system or label the namespace pod-security.kubernetes.io/enforce=privileged",
                    status.message
                )
            } else {
                // Helper objects are granted per namespace (the Role), the rest cluster-wide.
                let namespaced = ["pods in", "pods/exec", "configmaps", "leases"]
                    .iter()
                    .any(|r| resource.starts_with(r));
                let fix = if namespaced {
                    "bind the Role in plugin-manifest/role.yaml to your user in the helper \
                     namespace (--helper-namespace)"
                } else {
                    "bind the ClusterRole in plugin-manifest/clusterrole.yaml to your user"
                };
                format!(
                    "permission denied: cannot {verb} {resource} ({}); {fix}",
                    status.message
                )
            };
            anyhow::Error::new(Permanent(text))
        }
        kube::Error::Api(status) if status.code == 401 => anyhow::Error::new(Permanent(format!(
            "the API server rejected your credentials ({}); refresh them or check --user/--context",
            status.message
        ))),
        // The client's auth layer runs the kubeconfig's exec plugin (or reads its token
        // file) before each request; its failures arrive as service errors, but they are
        // about credentials, not the network.
        kube::Error::Service(inner)
            if inner.downcast_ref::<kube::client::AuthError>().is_some() =>
        {
            let auth = inner
                .downcast_ref::<kube::client::AuthError>()
                .expect("checked");
            anyhow::Error::new(Permanent(credentials(auth)))
        }
        kube::Error::HyperError(_) | kube::Error::Service(_) => anyhow!(
            "cannot reach the API server while trying to {verb} {resource}: {err}; check the \
             server address in your kubeconfig (--context/--kubeconfig) and your network"
        ),
        _ => anyhow!(err).context(format!("cannot {verb} {resource}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::Status;

    fn api_error(code: u16, message: &str) -> kube::Error {
        kube::Error::Api(
            Status::failure(message, "Forbidden")
                .with_code(code)
                .boxed(),
        )
    }

    #[test]
    fn a_failing_credential_plugin_is_not_called_a_network_problem() {
        let err = kube::Error::Service(Box::new(kube::client::AuthError::AuthExec(
            "auth exec command '/bin/get-token' failed: no session".into(),
        )));
        let msg = explain(err, "list", "nodes").to_string();
        assert!(msg.contains("cannot get credentials"), "{msg}");
        assert!(
            msg.contains("/bin/get-token") && msg.contains("no session"),
            "{msg}"
        );
        assert!(!msg.contains("network"), "{msg}");
        let status = std::process::Command::new("false").status().unwrap();
        let run = kube::client::AuthError::AuthExecRun {
            cmd: "KUBERNETES_EXEC_INFO=\"{}\" \"/bin/x\"".into(),
            out: Box::new(std::process::Output {
                status,
                stdout: Vec::new(),
                stderr: b"token expired\n".to_vec(),
            }),
        };
        let msg = credentials(&run);
        assert!(
            msg.contains("failed (exit status: 1): token expired;"),
            "{msg}"
        );
        assert!(!msg.contains("KUBERNETES_EXEC_INFO"), "{msg}");
        let again = kube::Error::Service(Box::new(kube::client::AuthError::AuthExec("x".into())));
        assert!(!is_transient(&again));
    }

    #[test]
    fn forbidden_names_verb_resource_and_fix() {
        let msg = explain(
            api_error(
                403,
                r#"pods is forbidden: User "bob" cannot create resource "pods""#,
            ),
            "create",
            "pods in kube-system",
        )
        .to_string();
        assert!(msg.contains("cannot create pods in kube-system"), "{msg}");
        assert!(msg.contains("plugin-manifest/role.yaml"), "{msg}");
        let nodes = explain(api_error(403, "nodes is forbidden"), "list", "nodes").to_string();
        assert!(
            nodes.contains("plugin-manifest/clusterrole.yaml"),
            "{nodes}"
        );
    }

    #[test]
    fn a_namespace_without_its_service_account_yet_is_not_called_a_permission_problem() {
        let err = explain(
            api_error(
                403,
                r#"pods "sideload-node-b-1" is forbidden: error looking up service account sl-new/default: serviceaccount "default" not found"#,
            ),
            "create",
            "pods in namespace sl-new",
        );
        assert!(err.is::<NoServiceAccountYet>(), "{err}");
        assert!(!is_permanent(&err), "worth waiting for: {err}");
        let msg = err.to_string();
        assert!(
            msg.contains(r#"service account "default" does not exist"#),
            "{msg}"
        );
        assert!(
            msg.contains("kubectl get serviceaccount default -n sl-new"),
            "{msg}"
        );
        assert!(!msg.contains("role.yaml"), "{msg}");
    }

    #[test]
    fn openshift_scc_rejection_names_the_scc_fix() {
        let msg = explain(
            api_error(
                403,
                r#"pods "x" is forbidden: unable to validate against any security context constraint: [provider "anyuid": Forbidden: not usable by user or serviceaccount]"#,
            ),
            "create",
            "pods in namespace kube-system",
        )
        .to_string();
        assert!(msg.contains("plugin-manifest/openshift-scc.yaml"), "{msg}");
        assert!(msg.contains("add-scc-to-user privileged"), "{msg}");
    }

    #[test]
    fn pod_security_names_the_label() {
        let msg = explain(
            api_error(
                403,
                r#"pods "x" is forbidden: violates PodSecurity "baseline:latest""#,
            ),
            "create",
            "pods",
        )
        .to_string();
        assert!(
            msg.contains("pod-security.kubernetes.io/enforce=privileged"),
            "{msg}"
        );
    }

    #[test]
    fn transient_errors_are_the_passing_ones() {
        for code in [408, 429, 500, 503] {
            assert!(is_transient(&api_error(code, "x")), "{code}");
        }
        for code in [400, 401, 403, 404, 409, 422] {
            assert!(!is_transient(&api_error(code, "x")), "{code}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn persist_retries_transient_errors_until_success_or_its_bound() {
        let calls = std::cell::Cell::new(0);
        let ok = persist(Duration::from_secs(10), || {
            calls.set(calls.get() + 1);
            let n = calls.get();
            async move {
                if n < 3 {
                    Err(api_error(503, "restarting"))
                } else {
                    Ok(n)
                }
            }
        })
        .await;
        assert_eq!(ok.unwrap(), 3);

        calls.set(0);
        let denied = persist(Duration::from_secs(10), || {
            calls.set(calls.get() + 1);
            async { Err::<(), _>(api_error(403, "no")) }
        })
        .await;
        assert!(denied.is_err());
        assert_eq!(calls.get(), 1, "a denial is not retried");

        calls.set(0);
        let started = Instant::now();
        let down = persist(Duration::from_secs(5), || {
            calls.set(calls.get() + 1);
            async { Err::<(), _>(api_error(503, "down")) }
        })
        .await;
        assert!(down.is_err());
        assert!(started.elapsed() <= Duration::from_secs(5), "bounded");
        assert!((4..=5).contains(&calls.get()), "{}", calls.get());
    }
}
