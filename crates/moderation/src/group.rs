//! Per-group overrides, compiled: the group's own words in a small automaton of their own,
//! tightened actions, and the ban on secret markers. Compile once per group (and again after
//! a rule reload) and cache it; pass it in [`crate::CheckContext::group`]. Compiling needs the
//! rule set's separators and categories, so [`GroupPolicy::compile`] lives beside the
//! moderator (`moderator.rs`), which keeps this module free of imports back into it.

use crate::matcher::Matcher;
use crate::policy::Action;

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
    /// The compiled parts ([`GroupPolicy::compile`] checks and builds them).
    pub(crate) fn from_parts(
        matcher: Matcher,
        words_action: Action,
        category: String,
        tighten: Vec<(String, Action)>,
        forbid_secret_markers: bool,
    ) -> GroupPolicy {
        GroupPolicy {
            matcher,
            words_action,
            category,
            tighten,
            forbid_secret_markers,
        }
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
