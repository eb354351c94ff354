//! `--pin` and `unpin`: protecting loaded refs from the kubelet's image garbage collection,
//! or handing them back to it, on one node whose runtime is located.
//!
//! The kubelet never collects an image CRI reports `pinned` (k3s#2961 is what happens to
//! sideloaded images otherwise). The runtime adapter says how to pin, or why it cannot; the
//! result is then read back through CRI, because CRI is what the kubelet asks: a label the
//! runtime ignores must not be reported as a pin.

use anyhow::{Result, bail};
use serde::Serialize;
use sideload_agent::protocol::Query;

use crate::cluster::agent::Session;
use crate::runtime::{Located, cri};

/// What became of a pin request on one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Pin {
    /// Whether CRI now reports every ref as asked (pinned, or unpinned for `unpin`).
    pub done: bool,
    /// Why not, or what vouched for it.
    pub note: String,
}

/// How long CRI may lag behind a label change before the check gives up.
const SETTLE_TRIES: usize = 10;

/// Pins (`pinned`) or unpins `refs` on the node behind `session`. An error means the
/// runtime's own command failed; a runtime that cannot pin is `Ok` with `done: false`.
pub async fn apply(
    session: &Session,
    located: &dyn Located,
    refs: &[String],
    pinned: bool,
) -> Result<Pin> {
    let commands = match located.pin(refs, pinned) {
        Ok(commands) => commands,
        Err(why) => {
            return Ok(Pin {
                done: false,
                note: why,
            });
        }
    };
    let answer = session
        .query(
            &Query {
                commands,
                ..Default::default()
            },
            "pin",
        )
        .await?;
    for (r, result) in refs.iter().zip(&answer.results) {
        if result.exit_code != 0 {
            bail!(
                "{} {r} failed on the node (exit code {}): {}",
                if pinned { "pinning" } else { "unpinning" },
                result.exit_code,
                result.stderr.trim()
            );
        }
    }
    let Some(check) = located.cri_inspect(refs) else {
        return Ok(Pin {
            done: true,
            note: "label set; not confirmed through CRI (no crictl on the node)".into(),
        });
    };
    // containerd's CRI learns of a label change from the runtime's events: a moment.
    let mut wrong = Vec::new();
    for attempt in 0..SETTLE_TRIES {
        if attempt > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        }
        let answer = session
            .query(
                &Query {
                    commands: check.clone(),
                    ..Default::default()
                },
                "pin check",
            )
            .await?;
        let not_pinned = cri::unpinned(refs, &answer.results);
        wrong = if pinned {
            not_pinned
        } else {
            refs.iter()
                .filter(|r| !not_pinned.contains(r))
                .cloned()
                .collect()
        };
        if wrong.is_empty() {
            return Ok(Pin {
                done: true,
                note: "CRI (crictl)".into(),
            });
        }
    }
    bail!(
        "the runtime took the {} but CRI still reports {} {}",
        if pinned { "pin" } else { "unpin" },
        wrong.join(", "),
        if pinned { "unpinned" } else { "pinned" }
    )
}
