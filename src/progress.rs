//! Progress bars on stderr, one per node, shown only when stderr is a terminal so that
//! scripts and `-o json | jq` see nothing but results.

use crate::app::say;
use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

#[derive(Clone)]
pub struct Progress {
    multi: Option<MultiProgress>,
}

impl Progress {
    /// Bars when stderr is a terminal, nothing otherwise.
    pub fn for_stderr() -> Self {
        let multi = std::io::stderr()
            .is_terminal()
            .then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()));
        Progress { multi }
    }

    /// A bar for one node: bytes sent, rate and ETA once its length is set.
    pub fn node_bar(&self, node: &str) -> ProgressBar {
        let Some(multi) = &self.multi else {
            return ProgressBar::hidden();
        };
        let style = ProgressStyle::with_template(
            "{prefix:>14.bold} [{bar:30}] {bytes:>10}/{total_bytes:<10} {binary_bytes_per_sec:>12} eta {eta:>4} {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
        let bar = multi.add(ProgressBar::new(0).with_style(style));
        bar.set_prefix(node.to_string());
        bar.enable_steady_tick(Duration::from_millis(250));
        bar
    }

    /// Prints a line above the bars (or plainly to stderr without them).
    pub fn println(&self, line: &str) {
        match &self.multi {
            Some(multi) => {
                let _ = multi.println(line);
            }
            None => say!("{line}"),
        }
    }
}
