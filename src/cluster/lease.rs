//! A run's heartbeat: a coordination.k8s.io Lease in the helper namespace, renewed while
//! the run lives, so that `cleanup` (by anyone) removes only the objects of runs that are
//! finished or dead and never those of a run still in progress.
//!
//! Why a Lease: it is the Kubernetes object for "this holder is alive until renewTime +
//! leaseDurationSeconds" (leader election and node heartbeats use it), it needs no
//! controller, and an RBAC rule names exactly what it allows. Liveness is judged on the
//! clock of whoever runs `cleanup` against the renewTime the run wrote, so two machines'
//! clocks must agree within [`DURATION`] (NTP does far better).

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Result;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use tokio_util::sync::CancellationToken;

use crate::cluster::errors::{explain, persist};
use crate::cluster::helper::{MANAGED_BY, RUN_LABEL};

/// How long a run counts as alive after its last renewal.
pub const DURATION: Duration = Duration::from_secs(20);
/// How often a live run renews: several renewals fit in [`DURATION`], so one slow request
/// does not make a live run look dead.
const RENEW_EVERY: Duration = Duration::from_secs(5);

pub fn name(run_id: &str) -> String {
    format!("sideload-run-{run_id}")
}

fn lease(namespace: &str, run_id: &str, now: Timestamp) -> Lease {
    Lease {
        metadata: ObjectMeta {
            name: Some(name(run_id)),
            namespace: Some(namespace.to_string()),
            labels: Some(BTreeMap::from([
                (MANAGED_BY.0.to_string(), MANAGED_BY.1.to_string()),
                (RUN_LABEL.to_string(), run_id.to_string()),
            ])),
            ..Default::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(format!(
                "kubectl-sideload {} pid {}",
                env!("CARGO_PKG_VERSION"),
                std::process::id()
            )),
            lease_duration_seconds: Some(DURATION.as_secs() as i32),
            acquire_time: Some(MicroTime(now)),
            renew_time: Some(MicroTime(now)),
            ..Default::default()
        }),
    }
}

/// The heartbeat of one run: renewed in the background until [`Heartbeat::stop`].
pub struct Heartbeat {
    api: Api<Lease>,
    name: String,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Heartbeat {
    /// Creates the run's Lease and starts renewing it. The Lease only protects the run from
    /// other users' `cleanup`; a user whose role predates it gets a warning, not a failure.
    pub async fn start(api: &Api<Lease>, run_id: &str) -> Result<Heartbeat, String> {
        let namespace = api.namespace().unwrap_or_default().to_string();
        let created = api
            .create(
                &PostParams::default(),
                &lease(&namespace, run_id, Timestamp::now()),
            )
            .await;
        if let Err(e) = created {
            let err = explain(
                e,
                "create",
                &format!("leases.coordination.k8s.io in namespace {namespace}"),
            );
            return Err(format!(
                "{err:#}; without its Lease this run looks dead to `kubectl sideload cleanup` \
                 run by others (plugin-manifest/role.yaml has the rule)"
            ));
        }
        let stop = CancellationToken::new();
        let task = tokio::spawn(renew(api.clone(), name(run_id), stop.clone()));
        Ok(Heartbeat {
            api: api.clone(),
            name: name(run_id),
            stop,
            task,
        })
    }

    /// Stops renewing and deletes the Lease: the run's objects are gone by now.
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
        let params = DeleteParams::default();
        let _ = persist(Duration::from_secs(30), || {
            self.api.delete(&self.name, &params)
        })
        .await;
    }
}

async fn renew(api: Api<Lease>, name: String, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(RENEW_EVERY) => {}
        }
        let patch = serde_json::json!({
            "spec": {"renewTime": MicroTime(Timestamp::now())}
        });
        // A failed renewal is retried at the next tick; several fit in DURATION.
        let _ = api
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await;
    }
}

/// Whether a Lease says its run is alive at `now`.
pub fn is_live(lease: &Lease, now: Timestamp) -> bool {
    let Some(spec) = &lease.spec else {
        return false;
    };
    let (Some(renewed), Some(seconds)) = (&spec.renew_time, spec.lease_duration_seconds) else {
        return false;
    };
    let until = renewed.0 + Duration::from_secs(u64::try_from(seconds).unwrap_or(0));
    until > now
}

/// The runs in the namespace, split into live ones (with seconds since their last renewal)
/// and the Leases whose runs are dead.
pub struct Liveness {
    pub live: BTreeMap<String, u64>,
    pub expired: Vec<Expired>,
}

/// The Lease of a run that ended without removing it (killed, crashed, cut off).
pub struct Expired {
    pub lease: String,
    /// The run it stood for, if the Lease carries the run label.
    pub run: Option<String>,
    /// How long ago it expired, if it says when it was last renewed.
    pub ago: Option<Duration>,
}

pub async fn liveness(api: &Api<Lease>) -> Result<Liveness> {
    let namespace = api.namespace().unwrap_or_default().to_string();
    let selector = format!("{}={}", MANAGED_BY.0, MANAGED_BY.1);
    let leases = api
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(|e| {
            explain(
                e,
                "list",
                &format!("leases.coordination.k8s.io in namespace {namespace}"),
            )
        })?;
    let now = Timestamp::now();
    let mut runs = Liveness {
        live: BTreeMap::new(),
        expired: Vec::new(),
    };
    for lease in leases.items {
        let run = lease
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(RUN_LABEL))
            .cloned();
        let spec = lease.spec.as_ref();
        let renewed = spec.and_then(|s| s.renew_time.as_ref());
        match run {
            Some(run) if is_live(&lease, now) => {
                let ago = renewed
                    .map(|t| now.duration_since(t.0).as_secs().max(0) as u64)
                    .unwrap_or(0);
                runs.live.insert(run, ago);
            }
            run => {
                let lasts = spec
                    .and_then(|s| s.lease_duration_seconds)
                    .and_then(|s| u64::try_from(s).ok())
                    .map(Duration::from_secs);
                let ago = renewed.zip(lasts).and_then(|(t, lasts)| {
                    Duration::try_from(now.duration_since(t.0))
                        .ok()
                        .and_then(|since| since.checked_sub(lasts))
                });
                runs.expired
                    .extend(lease.metadata.name.map(|lease| Expired { lease, run, ago }));
            }
        }
    }
    Ok(runs)
}

/// Deletes Leases by name; one already gone is fine.
pub async fn delete(api: &Api<Lease>, names: &[String]) -> Result<()> {
    let namespace = api.namespace().unwrap_or_default().to_string();
    for name in names {
        match api.delete(name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => {
                return Err(explain(
                    e,
                    "delete",
                    &format!("leases.coordination.k8s.io in namespace {namespace}"),
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_is_live_until_its_duration_after_the_last_renewal() {
        let renewed = Timestamp::from_second(1_800_000_000).unwrap();
        let lease = lease("ns", "abc123", renewed);
        assert_eq!(lease.metadata.name.as_deref(), Some("sideload-run-abc123"));
        assert!(is_live(&lease, renewed));
        assert!(is_live(&lease, renewed + Duration::from_secs(19)));
        assert!(!is_live(&lease, renewed + Duration::from_secs(20)));
        let mut without = lease.clone();
        without.spec.as_mut().unwrap().renew_time = None;
        assert!(!is_live(&without, renewed));
    }
}
