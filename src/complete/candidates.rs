//! Candidates and cobra's `__complete` output: one per line (`value<TAB>description`),
//! then `:<directive>`; and the prefix filtering cobra leaves to the program.

use std::collections::BTreeSet;

use super::directive;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Candidate {
    pub(super) value: String,
    pub(super) description: Option<String>,
}

impl Candidate {
    pub(super) fn new(value: impl Into<String>, description: Option<String>) -> Self {
        Self {
            value: value.into(),
            description,
        }
    }

    pub(super) fn plain(value: impl Into<String>) -> Self {
        Self::new(value, None)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Completion {
    pub(super) candidates: Vec<Candidate>,
    pub(super) directive: u32,
}

impl Completion {
    pub(super) fn none() -> Self {
        Self {
            candidates: Vec::new(),
            directive: directive::NO_FILE_COMP,
        }
    }

    pub(super) fn files() -> Self {
        Self {
            candidates: Vec::new(),
            directive: directive::DEFAULT,
        }
    }

    /// cobra's `__complete` output: candidates, then `:<directive>`.
    pub(super) fn render(&self) -> String {
        let mut out = String::new();
        for candidate in &self.candidates {
            // A newline would split a candidate, a tab would start its description.
            out.push_str(&one_line(&candidate.value));
            if let Some(description) = candidate.description.as_deref().map(one_line)
                && !description.is_empty()
            {
                out.push('\t');
                out.push_str(&description);
            }
            out.push('\n');
        }
        out.push_str(&format!(":{}\n", self.directive));
        out
    }
}

fn one_line(text: &str) -> String {
    let line = text.lines().next().unwrap_or_default();
    line.replace('\t', " ").trim().to_string()
}

/// Keeps the candidates the shell would show for `typed`: cobra leaves prefix filtering to
/// the program, and filtering here lets the shell fall back to files when nothing matches.
pub(super) fn matching(candidates: Vec<Candidate>, typed: &str) -> Vec<Candidate> {
    candidates
        .into_iter()
        .filter(|c| c.value.starts_with(typed))
        .collect()
}

/// Splits a comma-separated list being typed into the part already done (with its final
/// comma) and the item under the cursor: `a,b,no` → (`a,b,`, `no`).
pub(super) fn split_list(typed: &str) -> (&str, &str) {
    match typed.rfind(',') {
        Some(at) => typed.split_at(at + 1),
        None => ("", typed),
    }
}

/// Candidates for the item under the cursor of a comma-separated list: each is the whole
/// word (done part + item), items already in the list are left out.
pub(super) fn list_candidates(typed: &str, items: &[String]) -> Vec<Candidate> {
    let (done, current) = split_list(typed);
    let already: BTreeSet<&str> = done.split(',').filter(|s| !s.is_empty()).collect();
    items
        .iter()
        .filter(|item| item.starts_with(current) && !already.contains(item.as_str()))
        .map(|item| Candidate::plain(format!("{done}{item}")))
        .collect()
}
