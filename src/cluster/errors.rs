//! Turns API errors into messages a user can act on: which permission is missing, which
//! namespace label admits the helper pod, whether the API server is reachable at all.

use anyhow::anyhow;

/// A failure that a retry would meet again: a denial, an admission rejection, bad
/// credentials, nothing on the node to start a helper from. Nodes failing so are not retried.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Permanent(pub String);

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

/// Wraps a kube error from `verb` on `resource` with the next step for the user.
pub fn explain(err: kube::Error, verb: &str, resource: &str) -> anyhow::Error {
    match &err {
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
}
