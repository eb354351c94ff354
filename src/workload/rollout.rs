//! Waiting for a patched workload to roll out, with the conditions `kubectl rollout status`
//! uses (kubectl/pkg/polymorphichelpers/rollout_status.go), and stopping early when its new
//! pods cannot get their image (a node that was not loaded, or a ref the node lacks).

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Result, anyhow, bail};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use kube::core::Selector;

use super::Workload;
use super::target::Kind;
use crate::cluster::errors::explain;

/// Where a rollout stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// Every replica runs the new template.
    Done(String),
    /// Still rolling; the message says what it waits for.
    Waiting(String),
    /// It cannot finish (progress deadline exceeded).
    Failed(String),
    /// The template change does not roll pods by itself (OnDelete, paused, CronJob).
    NotRolling(String),
}

/// kubectl's `DeploymentStatusViewer`, plus "paused" (kubectl would wait forever).
pub fn deployment(d: &Deployment) -> State {
    let spec = d.spec.clone().unwrap_or_default();
    let status = d.status.clone().unwrap_or_default();
    if spec.paused.unwrap_or(false) {
        return State::NotRolling(
            "the deployment is paused; its pods change when it is resumed \
             (kubectl rollout resume)"
                .into(),
        );
    }
    if d.metadata.generation.unwrap_or(0) > status.observed_generation.unwrap_or(0) {
        return State::Waiting("waiting for the deployment spec update to be observed".into());
    }
    if status.conditions.iter().flatten().any(|c| {
        c.type_ == "Progressing" && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
    }) {
        return State::Failed("the deployment exceeded its progress deadline".into());
    }
    let want = spec.replicas.unwrap_or(1);
    let updated = status.updated_replicas.unwrap_or(0);
    let replicas = status.replicas.unwrap_or(0);
    let available = status.available_replicas.unwrap_or(0);
    if updated < want {
        return State::Waiting(format!("{updated} of {want} new replicas updated"));
    }
    if replicas > updated {
        return State::Waiting(format!(
            "{} old replicas pending termination",
            replicas - updated
        ));
    }
    if available < updated {
        return State::Waiting(format!(
            "{available} of {updated} updated replicas available"
        ));
    }
    State::Done(format!(
        "{updated} of {want} replicas updated and available"
    ))
}

/// kubectl's `StatefulSetStatusViewer` (RollingUpdate only; partitions respected).
pub fn statefulset(s: &StatefulSet) -> State {
    let spec = s.spec.clone().unwrap_or_default();
    let status = s.status.clone().unwrap_or_default();
    let strategy = spec.update_strategy.clone().unwrap_or_default();
    if strategy.type_.as_deref().unwrap_or("RollingUpdate") != "RollingUpdate" {
        return State::NotRolling(
            "updateStrategy is OnDelete: each pod picks up the new image when it is deleted".into(),
        );
    }
    let observed = status.observed_generation.unwrap_or(0);
    if observed == 0 || s.metadata.generation.unwrap_or(0) > observed {
        return State::Waiting("waiting for the statefulset spec update to be observed".into());
    }
    let want = spec.replicas.unwrap_or(1);
    let ready = status.ready_replicas.unwrap_or(0);
    if ready < want {
        return State::Waiting(format!("{ready} of {want} pods ready"));
    }
    let updated = status.updated_replicas.unwrap_or(0);
    if let Some(partition) = strategy
        .rolling_update
        .and_then(|r| r.partition)
        .filter(|p| *p > 0)
    {
        let target = (want - partition).max(0);
        if updated < target {
            return State::Waiting(format!(
                "partitioned roll out: {updated} of {target} pods updated"
            ));
        }
        return State::Done(format!(
            "partitioned roll out complete: {updated} of {target} pods updated (partition \
             {partition} keeps the rest)"
        ));
    }
    if status.update_revision.is_some() && status.update_revision != status.current_revision {
        return State::Waiting(format!(
            "{updated} of {want} pods at revision {}",
            status.update_revision.unwrap_or_default()
        ));
    }
    State::Done(format!(
        "{want} of {want} pods at the new revision and ready"
    ))
}

/// kubectl's `DaemonSetStatusViewer`.
pub fn daemonset(d: &DaemonSet) -> State {
    let spec = d.spec.clone().unwrap_or_default();
    let status = d.status.clone().unwrap_or_default();
    let strategy = spec.update_strategy.unwrap_or_default();
    if strategy.type_.as_deref().unwrap_or("RollingUpdate") != "RollingUpdate" {
        return State::NotRolling(
            "updateStrategy is OnDelete: each pod picks up the new image when it is deleted".into(),
        );
    }
    if d.metadata.generation.unwrap_or(0) > status.observed_generation.unwrap_or(0) {
        return State::Waiting("waiting for the daemonset spec update to be observed".into());
    }
    let desired = status.desired_number_scheduled;
    let updated = status.updated_number_scheduled.unwrap_or(0);
    let available = status.number_available.unwrap_or(0);
    if updated < desired {
        return State::Waiting(format!("{updated} of {desired} pods updated"));
    }
    if available < desired {
        return State::Waiting(format!("{available} of {desired} updated pods available"));
    }
    State::Done(format!("{desired} of {desired} pods updated and available"))
}

/// Waiting reasons that mean a pod will not get its image without help.
const IMAGE_FAILURES: [&str; 4] = [
    "ErrImageNeverPull",
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
];

/// A new pod stuck on its image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodFailure {
    pub pod: String,
    pub node: String,
    pub reason: String,
    pub message: String,
}

/// The first container of `pod` that runs one of `images` (container name, image) and
/// waits with an image failure. Old pods (other images) are never blamed.
pub fn image_failure(pod: &Pod, images: &[(String, String)]) -> Option<PodFailure> {
    let spec = pod.spec.as_ref()?;
    let ours = |name: &str| {
        spec.containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
            .any(|c| {
                c.name == name
                    && images
                        .iter()
                        .any(|(n, i)| n == name && c.image.as_deref() == Some(i.as_str()))
            })
    };
    let status = pod.status.as_ref()?;
    status
        .container_statuses
        .iter()
        .flatten()
        .chain(status.init_container_statuses.iter().flatten())
        .filter(|cs| ours(&cs.name))
        .find_map(|cs| {
            let waiting = cs.state.as_ref()?.waiting.as_ref()?;
            let reason = waiting.reason.clone()?;
            IMAGE_FAILURES
                .contains(&reason.as_str())
                .then(|| PodFailure {
                    pod: pod.metadata.name.clone().unwrap_or_default(),
                    node: spec.node_name.clone().unwrap_or_default(),
                    reason,
                    message: waiting.message.clone().unwrap_or_default(),
                })
        })
}

impl PodFailure {
    /// What went wrong and what to do, knowing which nodes hold the image.
    pub fn explain(&self, covered: &BTreeSet<String>, archive: &str) -> String {
        let why = if covered.contains(&self.node) {
            format!(
                "node {} was loaded, so its runtime does not list the image the pod asks for: \
                 the ref differs, or the image was removed since (kubelet image GC); run \
                 `kubectl sideload {archive} --nodes {} --force`",
                self.node, self.node
            )
        } else {
            format!(
                "node {} was not loaded; run `kubectl sideload {archive} --nodes {}`, or \
                 pass --constrain to keep the pods on loaded nodes",
                self.node, self.node
            )
        };
        format!(
            "pod {} on node {}: {}: {}; {why}",
            self.pod, self.node, self.reason, self.message
        )
    }
}

/// Polls the workload once a second until its rollout is done, fails, or `timeout` passes;
/// each poll also looks at the workload's pods and stops at the first one whose new image
/// cannot be had. `report` gets each new progress message.
pub async fn wait(
    client: &kube::Client,
    workload: &Workload,
    covered: &BTreeSet<String>,
    archive: &str,
    timeout: Duration,
    report: &(dyn Fn(&str) + Sync),
) -> Result<State> {
    let ns = workload.namespace.as_str();
    let name = workload.target.name.as_str();
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let selector = match &workload.selector {
        Some(s) => Some(Selector::try_from(s.clone()).map_err(|e| {
            anyhow!(
                "{}: its selector cannot be used to list pods: {e}",
                workload.target
            )
        })?),
        None => None,
    };
    let images: Vec<(String, String)> = workload
        .patch
        .containers
        .iter()
        .map(|c| (c.name.clone(), c.new_image.clone()))
        .collect();
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last = String::new();
    loop {
        let state = match workload.target.kind {
            Kind::Deployment => deployment(&get::<Deployment>(client, ns, name).await?),
            Kind::StatefulSet => statefulset(&get::<StatefulSet>(client, ns, name).await?),
            Kind::DaemonSet => daemonset(&get::<DaemonSet>(client, ns, name).await?),
            Kind::CronJob => State::NotRolling(
                "a CronJob's next Job runs the new image; nothing rolls out now".into(),
            ),
        };
        match state {
            State::Waiting(ref message) => {
                if *message != last {
                    report(&format!("{}: {message}", workload.target));
                    last.clone_from(message);
                }
            }
            State::Failed(message) => bail!("{}: {message}", workload.target),
            done => return Ok(done),
        }
        if let Some(selector) = &selector {
            let list = pods
                .list(&ListParams::default().labels_from(selector))
                .await
                .map_err(|e| explain(e, "list", &format!("pods in namespace {ns}")))?;
            if let Some(failure) = list.items.iter().find_map(|p| image_failure(p, &images)) {
                bail!("{}: {}", workload.target, failure.explain(covered, archive));
            }
        }
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "{}: rollout not finished after {}s ({last}); raise --rollout-timeout, or see \
                 `kubectl rollout status {} -n {ns}`",
                workload.target,
                timeout.as_secs(),
                workload.target
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn get<K>(client: &kube::Client, ns: &str, name: &str) -> Result<K>
where
    K: kube::Resource<Scope = kube::core::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    api.get(name).await.map_err(|e| {
        explain(
            e,
            "get",
            &format!("{} in namespace {ns}", K::plural(&Default::default())),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deploy(yaml: &str) -> Deployment {
        serde_yaml::from_str(yaml).unwrap()
    }

    const DEPLOY: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: api, generation: 4}
spec:
  replicas: 3
  selector: {matchLabels: {app: api}}
  template: {spec: {containers: []}}
"#;

    fn with_status(base: &str, status: &str) -> String {
        format!("{base}status:\n{status}")
    }

    #[test]
    fn deployment_conditions_mirror_kubectl() {
        let cases = [
            ("  observedGeneration: 3\n", "spec update to be observed"),
            (
                "  observedGeneration: 4\n  replicas: 3\n  updatedReplicas: 1\n",
                "1 of 3 new replicas updated",
            ),
            (
                "  observedGeneration: 4\n  replicas: 4\n  updatedReplicas: 3\n  availableReplicas: 3\n",
                "1 old replicas pending termination",
            ),
            (
                "  observedGeneration: 4\n  replicas: 3\n  updatedReplicas: 3\n  availableReplicas: 2\n",
                "2 of 3 updated replicas available",
            ),
        ];
        for (status, want) in cases {
            match deployment(&deploy(&with_status(DEPLOY, status))) {
                State::Waiting(m) => assert!(m.contains(want), "{m} / {want}"),
                other => panic!("{status}: {other:?}"),
            }
        }
        let done = "  observedGeneration: 4\n  replicas: 3\n  updatedReplicas: 3\n  availableReplicas: 3\n";
        assert!(matches!(
            deployment(&deploy(&with_status(DEPLOY, done))),
            State::Done(_)
        ));
        let deadline = "  observedGeneration: 4\n  conditions:\n  - {type: Progressing, status: \"False\", reason: ProgressDeadlineExceeded}\n";
        assert!(matches!(
            deployment(&deploy(&with_status(DEPLOY, deadline))),
            State::Failed(_)
        ));
        let paused = DEPLOY.replace("replicas: 3", "replicas: 3\n  paused: true");
        assert!(matches!(deployment(&deploy(&paused)), State::NotRolling(_)));
    }

    const STS: &str = r#"
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db, generation: 2}
spec:
  replicas: 3
  serviceName: db
  selector: {matchLabels: {app: db}}
  template: {spec: {containers: []}}
"#;

    fn sts(extra_spec: &str, status: &str) -> StatefulSet {
        let base = STS.replace(
            "  serviceName: db\n",
            &format!("  serviceName: db\n{extra_spec}"),
        );
        serde_yaml::from_str(&with_status(&base, status)).unwrap()
    }

    #[test]
    fn statefulset_conditions_mirror_kubectl() {
        let observed = "  observedGeneration: 2\n  replicas: 3\n";
        assert!(
            matches!(statefulset(&sts("", "  observedGeneration: 1\n  replicas: 3\n")), State::Waiting(m) if m.contains("observed"))
        );
        assert!(
            matches!(statefulset(&sts("", &format!("{observed}  readyReplicas: 2\n"))), State::Waiting(m) if m.contains("2 of 3 pods ready"))
        );
        let rolling = format!(
            "{observed}  readyReplicas: 3\n  updatedReplicas: 1\n  currentRevision: db-1\n  updateRevision: db-2\n"
        );
        assert!(
            matches!(statefulset(&sts("", &rolling)), State::Waiting(m) if m.contains("revision db-2"))
        );
        let done = format!(
            "{observed}  readyReplicas: 3\n  updatedReplicas: 3\n  currentRevision: db-2\n  updateRevision: db-2\n"
        );
        assert!(matches!(statefulset(&sts("", &done)), State::Done(_)));
        // Partition 2 of 3: one updated pod is the whole roll out.
        let partition = "  updateStrategy: {type: RollingUpdate, rollingUpdate: {partition: 2}}\n";
        assert!(
            matches!(statefulset(&sts(partition, &rolling)), State::Done(m) if m.contains("partition"))
        );
        let none = format!("{observed}  readyReplicas: 3\n  updatedReplicas: 0\n");
        assert!(
            matches!(statefulset(&sts(partition, &none)), State::Waiting(m) if m.contains("0 of 1"))
        );
        let on_delete = "  updateStrategy: {type: OnDelete}\n";
        assert!(matches!(
            statefulset(&sts(on_delete, &done)),
            State::NotRolling(_)
        ));
    }

    #[test]
    fn daemonset_conditions_mirror_kubectl() {
        let ds = |status: &str| -> DaemonSet {
            serde_yaml::from_str(&format!(
                "apiVersion: apps/v1\nkind: DaemonSet\nmetadata: {{name: agent, generation: 5}}\nspec:\n  selector: {{matchLabels: {{app: a}}}}\n  template: {{spec: {{containers: []}}}}\nstatus:\n  currentNumberScheduled: 3\n  numberMisscheduled: 0\n  numberReady: 3\n{status}"
            ))
            .unwrap()
        };
        assert!(
            matches!(daemonset(&ds("  desiredNumberScheduled: 3\n  observedGeneration: 4\n")), State::Waiting(m) if m.contains("observed"))
        );
        assert!(
            matches!(daemonset(&ds("  desiredNumberScheduled: 3\n  observedGeneration: 5\n  updatedNumberScheduled: 2\n")), State::Waiting(m) if m.contains("2 of 3 pods updated"))
        );
        assert!(
            matches!(daemonset(&ds("  desiredNumberScheduled: 3\n  observedGeneration: 5\n  updatedNumberScheduled: 3\n  numberAvailable: 1\n")), State::Waiting(m) if m.contains("1 of 3 updated pods available"))
        );
        assert!(matches!(
            daemonset(&ds(
                "  desiredNumberScheduled: 3\n  observedGeneration: 5\n  updatedNumberScheduled: 3\n  numberAvailable: 3\n"
            )),
            State::Done(_)
        ));
    }

    const POD: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: api-7d9-x2}
spec:
  nodeName: node-b
  containers:
  - {name: api, image: "sideload.test/app:v2"}
status:
  containerStatuses:
  - name: api
    image: sideload.test/app:v2
    imageID: ""
    ready: false
    restartCount: 0
    state:
      waiting:
        reason: ErrImageNeverPull
        message: 'Container image "sideload.test/app:v2" is not present with pull policy of Never'
"#;

    #[test]
    fn image_failures_of_new_pods_name_pod_node_and_fix() {
        let pod: Pod = serde_yaml::from_str(POD).unwrap();
        let images = vec![("api".to_string(), "sideload.test/app:v2".to_string())];
        let failure = image_failure(&pod, &images).unwrap();
        assert_eq!(failure.node, "node-b");
        assert_eq!(failure.reason, "ErrImageNeverPull");
        let not_loaded = failure.explain(&BTreeSet::from(["node-a".into()]), "app.tar");
        assert!(
            not_loaded
                .starts_with("pod api-7d9-x2 on node node-b: ErrImageNeverPull: Container image"),
            "{not_loaded}"
        );
        assert!(
            not_loaded.contains(
                "node node-b was not loaded; run `kubectl sideload app.tar --nodes node-b`"
            ),
            "{not_loaded}"
        );
        let loaded = failure.explain(&BTreeSet::from(["node-b".into()]), "app.tar");
        assert!(loaded.contains("the ref differs"), "{loaded}");
        // An old pod (other image) is not blamed.
        let old = vec![("api".to_string(), "sideload.test/app:v3".to_string())];
        assert_eq!(image_failure(&pod, &old), None);
        // Other waiting reasons are not image failures.
        let creating: Pod =
            serde_yaml::from_str(&POD.replace("ErrImageNeverPull", "ContainerCreating")).unwrap();
        assert_eq!(image_failure(&creating, &images), None);
    }
}
