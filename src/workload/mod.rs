//! `--workload`: once the image is on the nodes, point workloads at it, more safely than
//! `kubectl set image` plus a hand-written `imagePullPolicy` patch.
//!
//! Stages (called from `app::sideload`): [`resolve`] before any helper pod exists (a missing
//! workload or container fails with nothing changed); [`Stage::check`] against the nodes
//! about to be loaded (placement warnings, refusals); after loading, [`Stage::apply`]:
//! nothing is patched unless every node verified the image (or `--allow-partial`), then
//! node labels (`--constrain`), confirmation, strategic merge patch, rollout wait.

pub mod labels;
pub mod patch;
pub mod placement;
pub mod rollout;
pub mod target;

use std::collections::{BTreeMap, BTreeSet};
use std::io::IsTerminal;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::CronJob;
use k8s_openapi::api::core::v1::{Node, PodSpec, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde::Serialize;
use serde_json::{Value, json};

use crate::cluster::errors::explain;
use crate::model::PullPolicy;
use patch::{AffinityChange, TemplatePatch};
use placement::{LABEL_VALUE, Placement};
pub use target::{Kind, Target};

/// The field manager recorded for our patches (kubectl uses `kubectl-set` for set image).
pub(crate) const FIELD_MANAGER: &str = "kubectl-sideload";

/// A workload as found before anything changed, with the patch it will get.
#[derive(Debug, Clone)]
pub struct Workload {
    pub target: Target,
    pub namespace: String,
    /// The pod template's spec now.
    pub spec: PodSpec,
    /// The pods' selector (none for a CronJob).
    pub selector: Option<LabelSelector>,
    pub patch: TemplatePatch,
}

impl Workload {
    fn daemonset(&self) -> bool {
        self.target.kind == Kind::DaemonSet
    }
}

/// Gets each workload, chooses its containers and builds its patch. Reads only.
pub async fn resolve(
    client: &kube::Client,
    namespace: &str,
    targets: &[Target],
    refs: &[String],
    containers: &[String],
    pull_policy: PullPolicy,
) -> Result<Vec<Workload>> {
    let mut seen = BTreeSet::new();
    let mut workloads = Vec::new();
    for target in targets {
        if !seen.insert(target.clone()) {
            continue;
        }
        let (template, selector) = fetch(client, namespace, target).await?;
        let spec = template.spec.unwrap_or_default();
        let chosen = target::choose(&spec, refs, containers)
            .map_err(|e| anyhow!("{target} in namespace {namespace} {e}"))?;
        workloads.push(Workload {
            target: target.clone(),
            namespace: namespace.to_string(),
            patch: TemplatePatch::new(target.kind, chosen, pull_policy),
            spec,
            selector,
        });
    }
    Ok(workloads)
}

async fn fetch(
    client: &kube::Client,
    ns: &str,
    target: &Target,
) -> Result<(PodTemplateSpec, Option<LabelSelector>)> {
    let name = target.name.as_str();
    let missing = || {
        anyhow!(
            "{} {name:?} not found in namespace {ns:?}; `kubectl get {}s -n {ns}` lists them, \
             and -n picks another namespace",
            target.kind,
            target.kind
        )
    };
    let what = format!("{}s in namespace {ns}", target.kind);
    macro_rules! get {
        ($ty:ty) => {{
            let api: Api<$ty> = Api::namespaced(client.clone(), ns);
            api.get_opt(name)
                .await
                .map_err(|e| explain(e, "get", &what))?
                .ok_or_else(missing)?
                .spec
                .unwrap_or_default()
        }};
    }
    Ok(match target.kind {
        Kind::Deployment => {
            let spec = get!(Deployment);
            (spec.template, Some(spec.selector))
        }
        Kind::StatefulSet => {
            let spec = get!(StatefulSet);
            (spec.template, Some(spec.selector))
        }
        Kind::DaemonSet => {
            let spec = get!(DaemonSet);
            (spec.template, Some(spec.selector))
        }
        Kind::CronJob => {
            let spec = get!(CronJob);
            (spec.job_template.spec.unwrap_or_default().template, None)
        }
    })
}

/// Reads the workload again just before patching: loading may have taken minutes, and a
/// strategic merge patch naming a container that is gone would add it back. Takes the
/// fresh pod spec (for the affinity), and fails if a chosen container changed.
async fn recheck(client: &kube::Client, w: &mut Workload) -> Result<()> {
    let (template, _) = fetch(client, &w.namespace, &w.target).await?;
    let spec = template.spec.unwrap_or_default();
    for chosen in &w.patch.containers {
        let list = if chosen.init {
            spec.init_containers.as_deref().unwrap_or_default()
        } else {
            &spec.containers
        };
        let now = list.iter().find(|c| c.name == chosen.name);
        let image = now.and_then(|c| c.image.as_deref());
        if image != Some(chosen.current_image.as_str()) {
            bail!(
                "{} changed while the image was loading (container {} {}); run again",
                w.target,
                chosen.name,
                match image {
                    Some(image) => format!("now runs {image}"),
                    None => "is gone".into(),
                }
            );
        }
    }
    w.spec = spec;
    Ok(())
}

/// Every node of the cluster, for placement (labels, taints, cordons).
pub async fn list_nodes(client: &kube::Client) -> Result<Vec<Node>> {
    let api: Api<Node> = Api::all(client.clone());
    Ok(api
        .list(&ListParams::default())
        .await
        .map_err(|e| explain(e, "list", "nodes"))?
        .items)
}

/// Flags that shape the workload stage.
#[derive(Debug, Clone)]
pub struct Options {
    pub constrain: bool,
    pub allow_partial: bool,
    pub yes: bool,
    pub wait: bool,
    pub timeout: Duration,
    /// The archive as the user named it, for the commands in hints.
    pub archive: String,
}

/// The workload stage of one run.
pub struct Stage {
    pub workloads: Vec<Workload>,
    /// Every node of the cluster.
    pub nodes: Vec<Node>,
    /// `sideload.dev/img-<12 hex>` for this archive's image.
    pub label_key: String,
    /// With `--constrain`: what the label promises on each loaded node (set once the
    /// nodes are loaded; a node without an entry gets an empty record).
    pub records: BTreeMap<String, labels::Record>,
    pub opts: Options,
}

/// How one workload ended, for the report.
#[derive(Debug, Clone, Serialize)]
pub struct WorkloadResult {
    pub kind: &'static str,
    pub name: String,
    pub namespace: String,
    pub containers: Vec<String>,
    /// The archive ref the containers were set to (comma-separated if they differ).
    pub image: String,
    pub pull_policy: &'static str,
    /// Its pods were constrained to the loaded nodes (`--constrain`, `--allow-partial`).
    pub constrained: bool,
    pub patched: bool,
    /// `null` when not waited for (`--wait=false`, not patched, or nothing rolls: CronJob,
    /// OnDelete, paused).
    pub rolled_out: Option<bool>,
    pub error: Option<String>,
    /// Notes that are not errors (why nothing rolled, a partition).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl Stage {
    /// With only DaemonSets and no `--nodes`/`--selector`, the nodes to load are the ones
    /// those DaemonSets run on. `None` when that default does not apply.
    pub fn daemonset_nodes(&self) -> Option<Vec<String>> {
        if self.workloads.is_empty() || !self.workloads.iter().all(Workload::daemonset) {
            return None;
        }
        let names: BTreeSet<String> = self
            .workloads
            .iter()
            .flat_map(|w| placement::hosts(&w.spec, &self.nodes, true))
            .collect();
        Some(names.into_iter().collect())
    }

    fn placement(&self, w: &Workload, covered: &BTreeSet<String>) -> Placement {
        Placement::of(&w.spec, &self.nodes, w.daemonset(), covered)
    }

    /// Placement against the nodes about to be loaded: warnings (stderr) for pods that
    /// could land on nodes without the image; an error when no loaded node can run a
    /// workload's pods at all (patching would strand them), so nothing is changed.
    pub fn check(&self, planned: &BTreeSet<String>) -> Result<Vec<String>> {
        let mut warnings = Vec::new();
        let mut refusals = Vec::new();
        for w in &self.workloads {
            let p = self.placement(w, planned);
            if p.loaded.is_empty() && p.not_loaded.is_empty() {
                warnings.push(format!(
                    "{}: its pods fit no node now (nodeSelector, affinity or taints); they \
                     stay Pending until one fits",
                    w.target
                ));
                continue;
            }
            if p.loaded.is_empty() {
                refusals.push(format!(
                    "  {}: none of the nodes to load can run its pods; they can run on {}: \
                     load those (--nodes {})",
                    w.target,
                    p.not_loaded.join(", "),
                    p.not_loaded.join(",")
                ));
                continue;
            }
            if !p.not_loaded.is_empty() && !self.opts.constrain {
                warnings.push(if w.daemonset() {
                    format!(
                        "{} runs a pod on {} too, which will not hold the image: those pods \
                         will fail to start; load them as well (--nodes {}), or pass \
                         --constrain to take the DaemonSet off them",
                        w.target,
                        p.not_loaded.join(", "),
                        all_nodes(&p)
                    )
                } else {
                    format!(
                        "pods of {} can also be scheduled on {}, which will not hold the \
                         image: pods placed there will fail to start; pass --constrain to \
                         keep them on the loaded nodes ({}), or load those nodes too \
                         (--nodes {})",
                        w.target,
                        p.not_loaded.join(", "),
                        p.loaded.join(", "),
                        all_nodes(&p)
                    )
                });
            }
        }
        if !refusals.is_empty() {
            bail!(
                "nothing was changed; patching would leave these workloads without a node \
                 holding the image:\n{}",
                refusals.join("\n")
            );
        }
        Ok(warnings)
    }

    /// `--dry-run`: each workload's patch as a diff and the nodes it depends on.
    pub fn dry_run_text(&self, planned: &BTreeSet<String>) -> String {
        let mut out = String::new();
        for w in &self.workloads {
            let mut patch = w.patch.clone();
            if self.opts.constrain {
                patch.affinity = Some(self.affinity(w));
            }
            let p = self.placement(w, planned);
            out.push_str(&format!(
                "\nworkload {} in namespace {}: strategic merge patch (nothing was changed)\n",
                w.target, w.namespace
            ));
            out.push_str(&patch.diff(&w.target.to_string()));
            out.push_str(&format!(
                "depends on the image on: {}\n",
                or_none(&p.loaded)
            ));
            if self.opts.constrain {
                out.push_str(&format!(
                    "node label {}={} on: {}\n",
                    self.label_key,
                    LABEL_VALUE,
                    or_none(&planned.iter().cloned().collect::<Vec<_>>())
                ));
            } else if !p.not_loaded.is_empty() {
                out.push_str(&format!(
                    "WARNING: can also be scheduled on {} (not loaded); see --constrain\n",
                    p.not_loaded.join(", ")
                ));
            }
        }
        out
    }

    /// `-o json` for `--dry-run`: the patch bodies and placements.
    pub fn dry_run_json(&self, planned: &BTreeSet<String>) -> Value {
        Value::Array(
            self.workloads
                .iter()
                .map(|w| {
                    let mut patch = w.patch.clone();
                    if self.opts.constrain {
                        patch.affinity = Some(self.affinity(w));
                    }
                    json!({
                        "kind": w.target.kind.api_kind(),
                        "name": w.target.name,
                        "namespace": w.namespace,
                        "containers": patch.containers.iter().map(|c| &c.name).collect::<Vec<_>>(),
                        "patch": patch.to_patch(),
                        "placement": self.placement(w, planned),
                        "node_label": self.opts.constrain.then(|| format!("{}={LABEL_VALUE}", self.label_key)),
                    })
                })
                .collect(),
        )
    }

    /// `--dry-run=server`: submits each patch as a server-side dry run; the errors, if any.
    pub async fn server_dry_run(&self, client: &kube::Client) -> Vec<String> {
        let mut errors = Vec::new();
        for w in &self.workloads {
            let mut patch = w.patch.clone();
            if self.opts.constrain {
                patch.affinity = Some(self.affinity(w));
            }
            if let Err(err) = submit(client, w, &patch, true).await {
                errors.push(format!("  {}: {err:#}", w.target));
            }
        }
        errors
    }

    fn affinity(&self, w: &Workload) -> AffinityChange {
        let before = placement::required_terms(&w.spec);
        let after = placement::constrained_terms(&before, &self.label_key);
        AffinityChange { before, after }
    }

    /// After loading. `covered` are the nodes that hold the image now (loaded or already
    /// there), `failed` how many nodes failed. Prints progress on stderr via `say`.
    pub async fn apply(
        mut self,
        client: &kube::Client,
        covered: &BTreeSet<String>,
        failed: usize,
        say: &(dyn Fn(&str) + Sync),
    ) -> Vec<WorkloadResult> {
        let constrain = self.opts.constrain || (failed > 0 && self.opts.allow_partial);
        let mut results: Vec<WorkloadResult> = self
            .workloads
            .iter()
            .map(|w| result(w, constrain))
            .collect();
        if failed > 0 && !self.opts.allow_partial {
            let why = format!(
                "not patched: {failed} node(s) failed to load the image; fix them and run \
                 again, or pass --allow-partial to patch with the pods kept on the loaded nodes"
            );
            for r in &mut results {
                r.error = Some(why.clone());
            }
            return results;
        }
        // Which workloads may go ahead: unchanged since they were read, and some node
        // holding the image must be able to run their pods.
        let mut go = vec![true; self.workloads.len()];
        for (i, w) in self.workloads.iter_mut().enumerate() {
            if let Err(err) = recheck(client, w).await {
                go[i] = false;
                results[i].error = Some(format!("not patched: {err:#}"));
            }
        }
        for (i, w) in self.workloads.iter().enumerate() {
            if !go[i] {
                continue;
            }
            let p = self.placement(w, covered);
            if covered.is_empty() {
                go[i] = false;
                results[i].error = Some("not patched: no node holds the image".into());
            } else if p.loaded.is_empty() && !p.not_loaded.is_empty() {
                go[i] = false;
                results[i].error = Some(format!(
                    "not patched: no node holding the image can run its pods (they can run \
                     on {})",
                    p.not_loaded.join(", ")
                ));
            }
        }
        if constrain {
            for i in 0..self.workloads.len() {
                let affinity = self.affinity(&self.workloads[i]);
                self.workloads[i].patch.affinity = Some(affinity);
            }
        }

        let summary = self.summary(covered, &go, constrain);
        if summary.is_empty() {
            return results;
        }
        say(&summary);
        match confirm(self.opts.yes).await {
            Ok(true) => {}
            Ok(false) => {
                for (i, r) in results.iter_mut().enumerate() {
                    if go[i] {
                        r.error = Some("not patched: declined at the prompt".into());
                    }
                }
                return results;
            }
            Err(err) => {
                for (i, r) in results.iter_mut().enumerate() {
                    if go[i] {
                        r.error = Some(format!("not patched: {err:#}"));
                    }
                }
                return results;
            }
        }

        if constrain && go.iter().any(|g| *g) {
            let records = covered
                .iter()
                .map(|n| (n.clone(), self.records.get(n).cloned().unwrap_or_default()))
                .collect();
            if let Err(err) = labels::set(client, &records, &self.label_key).await {
                let why = format!("not patched: labelling the loaded nodes failed: {err:#}");
                for (i, r) in results.iter_mut().enumerate() {
                    if go[i] {
                        r.error = Some(why.clone());
                    }
                }
                return results;
            }
            say(&format!(
                "labelled {} node(s) {}={LABEL_VALUE}",
                covered.len(),
                self.label_key
            ));
        }

        for (i, w) in self.workloads.iter_mut().enumerate() {
            if !go[i] {
                continue;
            }
            w.patch.stamp_now();
            match submit(client, w, &w.patch, false).await {
                Ok(()) => {
                    results[i].patched = true;
                    say(&format!("{} patched", w.target));
                }
                Err(err) => results[i].error = Some(format!("{err:#}")),
            }
        }
        if !self.opts.wait {
            return results;
        }
        let (archive, timeout) = (self.opts.archive.as_str(), self.opts.timeout);
        let waits = self.workloads.iter().enumerate().map(|(i, w)| {
            let patched = results[i].patched;
            async move {
                if !patched {
                    return None;
                }
                Some(rollout::wait(client, w, covered, archive, timeout, say).await)
            }
        });
        let outcomes = futures::future::join_all(waits).await;
        for (r, outcome) in results.iter_mut().zip(outcomes) {
            match outcome {
                None => {}
                Some(Ok(rollout::State::Done(message))) => {
                    say(&format!(
                        "{}/{}: rolled out ({message})",
                        r.kind.to_lowercase(),
                        r.name
                    ));
                    r.rolled_out = Some(true);
                }
                Some(Ok(rollout::State::NotRolling(message))) => {
                    r.detail = Some(message);
                }
                Some(Ok(other)) => r.error = Some(format!("unexpected rollout state {other:?}")),
                Some(Err(err)) => {
                    r.rolled_out = Some(false);
                    r.error = Some(format!("{err:#}"));
                }
            }
        }
        results
    }

    /// What is about to change, for the confirmation prompt (and the log when none is shown).
    fn summary(&self, covered: &BTreeSet<String>, go: &[bool], constrain: bool) -> String {
        let mut out = String::new();
        for (i, w) in self.workloads.iter().enumerate() {
            if !go[i] {
                continue;
            }
            out.push_str(&format!("{} in namespace {}:\n", w.target, w.namespace));
            for c in &w.patch.containers {
                out.push_str(&format!(
                    "  {}container {}: {} → {}, imagePullPolicy {} → {}\n",
                    if c.init { "init " } else { "" },
                    c.name,
                    c.current_image,
                    c.new_image,
                    c.current_policy.as_deref().unwrap_or("(unset)"),
                    w.patch.pull_policy.as_str()
                ));
            }
            if w.patch.restarted_at.is_some() {
                out.push_str("  same ref as now: the pods are restarted onto the new bytes\n");
            }
            let p = self.placement(w, covered);
            if constrain {
                out.push_str(&format!(
                    "  pods kept on nodes labelled {} (loaded: {})\n",
                    self.label_key,
                    or_none(&covered.iter().cloned().collect::<Vec<_>>())
                ));
            } else {
                out.push_str(&format!("  pods can run on: {}", p.loaded.join(", ")));
                if !p.not_loaded.is_empty() {
                    out.push_str(&format!(
                        "; also on {} WITHOUT the image",
                        p.not_loaded.join(", ")
                    ));
                }
                out.push('\n');
            }
        }
        out.trim_end().to_string()
    }
}

fn all_nodes(p: &Placement) -> String {
    let mut all: Vec<&str> = p
        .loaded
        .iter()
        .chain(&p.not_loaded)
        .map(String::as_str)
        .collect();
    all.sort();
    all.join(",")
}

fn or_none(names: &[String]) -> String {
    if names.is_empty() {
        "(none)".into()
    } else {
        names.join(", ")
    }
}

fn result(w: &Workload, constrained: bool) -> WorkloadResult {
    let mut images: Vec<&str> = Vec::new();
    for c in &w.patch.containers {
        if !images.contains(&c.new_image.as_str()) {
            images.push(&c.new_image);
        }
    }
    WorkloadResult {
        kind: w.target.kind.api_kind(),
        name: w.target.name.clone(),
        namespace: w.namespace.clone(),
        containers: w.patch.containers.iter().map(|c| c.name.clone()).collect(),
        image: images.join(", "),
        pull_policy: w.patch.pull_policy.as_str(),
        constrained,
        patched: false,
        rolled_out: None,
        error: None,
        detail: None,
    }
}

/// Asks in a terminal (stdin and stderr both TTYs) unless `--yes`; scripts and CI, whose
/// stdin is not a terminal, never block on a prompt and go ahead.
async fn confirm(yes: bool) -> Result<bool> {
    if yes || !std::io::stdin().is_terminal() || !std::io::stderr().is_terminal() {
        return Ok(true);
    }
    tokio::task::spawn_blocking(|| {
        dialoguer::Confirm::new()
            .with_prompt("Patch these workloads?")
            .default(false)
            .interact()
    })
    .await
    .context("the prompt panicked")?
    .context("cannot read the answer; pass --yes to skip the prompt")
}

/// Sends one workload's patch (strategic merge, by container name).
async fn submit(
    client: &kube::Client,
    w: &Workload,
    patch: &TemplatePatch,
    dry_run: bool,
) -> Result<()> {
    let mut params = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    };
    if dry_run {
        params = params.dry_run();
    }
    let body = Patch::Strategic(patch.to_patch());
    let ns = w.namespace.as_str();
    let name = w.target.name.as_str();
    let what = format!("{}s in namespace {ns}", w.target.kind);
    macro_rules! send {
        ($ty:ty) => {{
            let api: Api<$ty> = Api::namespaced(client.clone(), ns);
            api.patch(name, &params, &body)
                .await
                .map(|_| ())
                .map_err(|e| explain(e, "patch", &what))
        }};
    }
    match w.target.kind {
        Kind::Deployment => send!(Deployment),
        Kind::StatefulSet => send!(StatefulSet),
        Kind::DaemonSet => send!(DaemonSet),
        Kind::CronJob => send!(CronJob),
    }
}

/// `cleanup --labels`: every `sideload.dev/img-*` label, by node. With `remove`, deletes them
/// (and the records beside them).
pub async fn node_labels(
    client: &kube::Client,
    remove: bool,
) -> Result<BTreeMap<String, Vec<String>>> {
    let mut found = BTreeMap::new();
    for node in list_nodes(client).await? {
        let name = node.metadata.name.clone().unwrap_or_default();
        let keys: Vec<String> = labels::on(&node).into_iter().map(|l| l.key).collect();
        if keys.is_empty() {
            continue;
        }
        if remove {
            labels::remove(client, &name, &keys).await?;
        }
        found.insert(name, keys);
    }
    Ok(found)
}
