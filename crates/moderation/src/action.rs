//! [`Action`]: what happens to a message, the vocabulary shared by the policy, the detector
//! table and the verdict. A module of its own so that both the policy and the detectors use
//! it without importing each other.

use serde::{Deserialize, Serialize};

/// What to do with a message, ordered by severity (`Allow < Warn < Mask < Review < Block`).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Deliver as is.
    #[default]
    Allow,
    /// Deliver as is; tell the sender a rule fired.
    Warn,
    /// Store and deliver with the matched characters replaced by `*`.
    Mask,
    /// Hold for a group admin to approve or reject.
    Review,
    /// Neither store nor deliver; the sender gets `blocked` with the category.
    Block,
}

impl Action {
    /// The action's name as written in rule files (`"block"`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Warn => "warn",
            Action::Mask => "mask",
            Action::Review => "review",
            Action::Block => "block",
        }
    }

    /// Parses an action name as written in rule files.
    pub fn parse(s: &str) -> Option<Action> {
        Some(match s.trim() {
            "allow" => Action::Allow,
            "warn" => Action::Warn,
            "mask" => Action::Mask,
            "review" => Action::Review,
            "block" => Action::Block,
            _ => return None,
        })
    }
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
