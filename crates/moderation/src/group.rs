//! Per-group overrides, compiled: the group's own words in a small automaton of their own,
//! tightened actions, and the ban on secret markers. Compile once per group (and again after
//! a rule reload) and cache it; pass it in [`crate::CheckContext::group`].

use crate::load::LoadError;
use crate::matcher::{Matcher, MatcherBuilder};
use crate::moderator::Moderator;
use crate::normalize::normalize_pattern;
use crate::policy::{Action, Detector, GroupPolicySpec, CONFIDENTIAL};

/// Most words a group may add.
pub const MAX_GROUP_WORDS: usize = 10_000;

/// A group's compiled overrides.
pub struct GroupPolicy {
    matcher: Matcher,
    words_action: Action,
    category: String,
    tighten: Vec<(String, Action)>,
    forbid_secret_markers: bool,
}

impl std::fmt::Debug for GroupPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupPolicy")
            .field("words", &self.matcher.len())
            .field("words_action", &self.words_action)
            .field("category", &self.category)
            .field("tighten", &self.tighten)
            .field("forbid_secret_markers", &self.forbid_secret_markers)
            .finish()
    }
}

impl GroupPolicy {
    /// Compiles `spec` against the rule set it will be used with (its separators and category
    /// names). Unknown category or detector names in `tighten` are an error.
    pub fn compile(
        spec: &GroupPolicySpec,
        moderator: &Moderator,
    ) -> Result<GroupPolicy, LoadError> {
        let category = spec
            .words_category
            .clone()
            .unwrap_or_else(|| "group".to_string());
        if spec.words.len() > MAX_GROUP_WORDS {
            return Err(LoadError::Group {
                message: format!("{} words (at most {MAX_GROUP_WORDS})", spec.words.len()),
            });
        }
        let known = |name: &str| {
            name == category
                || name == CONFIDENTIAL
                || moderator.categories().any(|c| c == name)
                || Detector::ALL.iter().any(|d| d.as_str() == name)
        };
        let mut tighten = Vec::new();
        for (name, action) in &spec.tighten {
            if !known(name) {
                return Err(LoadError::Group {
                    message: format!("unknown category or detector {name:?} in tighten"),
                });
            }
            tighten.push((name.clone(), *action));
        }
        let words_action = spec.words_action.unwrap_or(Action::Block);
        let mut mb = MatcherBuilder::default();
        for (i, w) in spec.words.iter().enumerate() {
            let p = normalize_pattern(w, moderator.separators());
            if !p.is_empty() {
                mb.deny(&p, i as u32, words_action);
            }
        }
        let matcher = mb.build().map_err(|message| LoadError::Group {
            message: format!("cannot build the automaton: {message}"),
        })?;
        Ok(GroupPolicy {
            matcher,
            words_action,
            category,
            tighten,
            forbid_secret_markers: spec.forbid_secret_markers,
        })
    }

    pub(crate) fn matcher(&self) -> &Matcher {
        &self.matcher
    }

    /// Category reported for the group's own words.
    pub fn category(&self) -> &str {
        &self.category
    }

    /// Action of the group's own words.
    pub fn words_action(&self) -> Action {
        self.words_action
    }

    /// The minimum action this group sets for a category or detector (`Allow` if none).
    pub fn tightened(&self, name: &str) -> Action {
        self.tighten
            .iter()
            .find(|(k, _)| k == name)
            .map_or(Action::Allow, |(_, a)| *a)
    }

    /// Whether secret markers and code names are blocked in this group.
    pub fn forbids_secret_markers(&self) -> bool {
        self.forbid_secret_markers
    }
}
