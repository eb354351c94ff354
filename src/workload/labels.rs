//! The `--constrain` node labels, kept true: `sideload.dev/img-<12 hex>=present` marks the
//! nodes a run loaded, and the workload's affinity keeps its pods on them. A label alone
//! cannot say what it stands for (its key is a short hash, its value at most 63
//! characters), so beside it each node carries an annotation of the same key recording the
//! images the label promises on that node: their names and their ID there (the config
//! digest of the node's platform, what CRI reports). `status` checks that record against
//! what CRI holds; `rm` removes the labels whose images it took away; `cleanup --labels`
//! removes them all.

use std::collections::BTreeMap;

use anyhow::Result;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::FIELD_MANAGER;
use super::placement::{LABEL_PREFIX, LABEL_VALUE};
use crate::cluster::errors::explain;

/// What a label promises on one node: every one of these images, under every one of its
/// names.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Record {
    pub images: Vec<Promised>,
}

/// One image a label promises.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Promised {
    pub refs: Vec<String>,
    /// The image ID on that node (its platform's config digest).
    pub id: String,
}

/// A label on a node, with its record (`None` for labels written before records were:
/// nothing can check those; `cleanup --labels` removes them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Label {
    pub key: String,
    pub record: Option<Record>,
}

/// The `sideload.dev/img-*` labels of a node, with their records.
pub fn on(node: &Node) -> Vec<Label> {
    let annotations = node.metadata.annotations.clone().unwrap_or_default();
    node.metadata
        .labels
        .iter()
        .flatten()
        .filter(|(k, _)| k.starts_with(LABEL_PREFIX))
        .map(|(k, _)| Label {
            key: k.clone(),
            // A record that does not parse is as good as none: never trusted.
            record: annotations
                .get(k)
                .and_then(|a| serde_json::from_str(a).ok()),
        })
        .collect()
}

/// Sets `key=present` on each node with its record beside it (one merge patch per node).
pub async fn set(
    client: &kube::Client,
    records: &BTreeMap<String, Record>,
    key: &str,
) -> Result<()> {
    let api: Api<Node> = Api::all(client.clone());
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    };
    // Up to 16 nodes at once: one round trip per node, one after another, added seconds
    // on a large cluster between the last import and the workload's patch. Every patch is
    // tried; the first failure is the answer (the workload is then not patched).
    let patches = records
        .iter()
        .map(|(node, record)| {
            let body = Patch::Merge(json!({"metadata": {
                "labels": {key: LABEL_VALUE},
                "annotations": {key: serde_json::to_string(record)?},
            }}));
            Ok((node.clone(), body))
        })
        .collect::<Result<Vec<_>>>()?;
    let patched: Vec<Result<()>> = futures::stream::iter(patches)
        .map(|(node, body)| {
            let (api, params) = (api.clone(), params.clone());
            async move {
                api.patch(&node, &params, &body)
                    .await
                    .map_err(|e| explain(e, "patch", &format!("node {node}")))?;
                Ok(())
            }
        })
        .buffer_unordered(PATCHES_AT_ONCE)
        .collect()
        .await;
    patched.into_iter().collect()
}

/// Node label patches in flight at once.
const PATCHES_AT_ONCE: usize = 16;

/// Removes `keys` (labels and their records) from `node`.
pub async fn remove(client: &kube::Client, node: &str, keys: &[String]) -> Result<()> {
    if keys.is_empty() {
        return Ok(());
    }
    let api: Api<Node> = Api::all(client.clone());
    let gone: serde_json::Map<String, Value> =
        keys.iter().map(|k| (k.clone(), Value::Null)).collect();
    let body = Patch::Merge(json!({"metadata": {"labels": gone, "annotations": gone}}));
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    };
    api.patch(node, &params, &body)
        .await
        .map_err(|e| explain(e, "patch", &format!("node {node}")))?;
    Ok(())
}

/// What CRI says a ref is on a node: absent, or the image ID it names.
pub type Held<'a> = BTreeMap<&'a str, Option<&'a str>>;

/// Whether `record` still holds on a node, judged by the refs `held` covers: `None` when
/// it names none of them (the label is about other images), else `Ok` or why not.
pub fn check(record: &Record, held: &Held<'_>) -> Option<Result<(), String>> {
    let mut about = false;
    let mut wrong = Vec::new();
    for image in &record.images {
        for r in &image.refs {
            let Some(now) = held.get(r.as_str()) else {
                continue;
            };
            about = true;
            match now {
                None => wrong.push(format!("{r} is not on the node")),
                // CRI-O reports IDs without the `sha256:` of the config digest.
                Some(id) if bare(id) != bare(&image.id) => wrong.push(format!(
                    "{r} is image {id} now, the label promised {}",
                    image.id
                )),
                Some(_) => {}
            }
        }
    }
    about.then(|| {
        if wrong.is_empty() {
            Ok(())
        } else {
            Err(wrong.join("; "))
        }
    })
}

fn bare(id: &str) -> &str {
    id.strip_prefix("sha256:").unwrap_or(id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn record() -> Record {
        Record {
            images: vec![Promised {
                refs: vec![
                    "docker.io/library/app:v1".into(),
                    "docker.io/library/app:latest".into(),
                ],
                id: "sha256:aaa".into(),
            }],
        }
    }

    #[test]
    fn a_label_is_read_with_its_record_and_an_unreadable_record_is_none() {
        let key = format!("{LABEL_PREFIX}0123456789ab");
        let old = format!("{LABEL_PREFIX}ba9876543210");
        let node = Node {
            metadata: ObjectMeta {
                labels: Some(BTreeMap::from([
                    (key.clone(), LABEL_VALUE.to_string()),
                    (old.clone(), LABEL_VALUE.to_string()),
                    ("kubernetes.io/arch".into(), "amd64".into()),
                ])),
                annotations: Some(BTreeMap::from([
                    (key.clone(), serde_json::to_string(&record()).unwrap()),
                    (old.clone(), "{not json".into()),
                ])),
                ..Default::default()
            },
            ..Default::default()
        };
        let labels = on(&node);
        assert_eq!(labels.len(), 2);
        assert_eq!(labels[0].key, key);
        assert_eq!(labels[0].record, Some(record()));
        assert_eq!(labels[1].record, None);
    }

    #[test]
    fn a_record_holds_while_every_ref_it_names_is_its_image() {
        let r = record();
        let held = Held::from([("docker.io/library/app:v1", Some("sha256:aaa"))]);
        assert_eq!(check(&r, &held), Some(Ok(())));
        // CRI-O's spelling of the same ID.
        let crio = Held::from([("docker.io/library/app:v1", Some("aaa"))]);
        assert_eq!(check(&r, &crio), Some(Ok(())));
        let gone = Held::from([("docker.io/library/app:v1", None)]);
        assert!(
            check(&r, &gone)
                .unwrap()
                .unwrap_err()
                .contains("not on the node")
        );
        let other = Held::from([("docker.io/library/app:v1", Some("sha256:bbb"))]);
        assert!(
            check(&r, &other)
                .unwrap()
                .unwrap_err()
                .contains("promised sha256:aaa")
        );
        // A label about other images is not judged by these refs.
        let unrelated = Held::from([("docker.io/library/web:v1", None)]);
        assert_eq!(check(&r, &unrelated), None);
    }

    /// The nodes are labelled at once: all three patches reach the API server before any
    /// is answered. One refused patch is the answer, named by its node; the others were
    /// still sent.
    #[tokio::test(start_paused = true)]
    async fn nodes_are_labelled_at_once_and_a_refusal_names_its_node() {
        use http::{Request, Response, StatusCode};
        use kube::client::Body;
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = kube::Client::new(service, "default");
        let records: BTreeMap<String, Record> = ["node-a", "node-b", "node-c"]
            .iter()
            .map(|n| (n.to_string(), record()))
            .collect();
        let labelling =
            tokio::spawn(async move { set(&client, &records, "sideload.dev/img-x").await });
        let mut pending = Vec::new();
        for _ in 0..3 {
            let next =
                tokio::time::timeout(std::time::Duration::from_secs(1), handle.next_request());
            let (request, respond) = next
                .await
                .expect("the next patch waits for an answer: sent one at a time")
                .expect("a request");
            assert_eq!(request.method(), http::Method::PATCH);
            pending.push((request.uri().path().to_string(), respond));
        }
        pending.sort_by(|a, b| a.0.cmp(&b.0));
        for (path, respond) in pending {
            let node = path.rsplit('/').next().unwrap().to_string();
            let (status, body) = if node == "node-b" {
                (
                    StatusCode::FORBIDDEN,
                    r#"{"kind":"Status","apiVersion":"v1","status":"Failure","message":"nodes \"node-b\" is forbidden","reason":"Forbidden","code":403}"#.to_string(),
                )
            } else {
                (
                    StatusCode::OK,
                    format!(
                        r#"{{"apiVersion":"v1","kind":"Node","metadata":{{"name":"{node}"}}}}"#
                    ),
                )
            };
            let mut response = Response::new(Body::from(body.into_bytes()));
            *response.status_mut() = status;
            respond.send_response(response);
        }
        let err = labelling.await.unwrap().unwrap_err().to_string();
        assert!(err.contains("patch node node-b"), "{err}");
    }
}
