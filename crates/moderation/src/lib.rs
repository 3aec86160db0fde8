//! The moderation filter: normalize -> match -> detect personal data -> score -> decide.
//!
//! A pure library (no network, no database; it only reads rule files) that the gateway calls on
//! every message before it is stored:
//!
//! - [`mod@normalize`]: per-character folding (width, case, NFKC, traditional and Japanese
//!   kanji forms -> simplified, digit look-alikes, invisible characters, separators between the
//!   characters of a word) with a map back to the original bytes.
//! - [`leet`]: look-alike symbols, digits and masking wildcards in Latin words read as letters
//!   where the result is a Latin rule entry (`sh!t`, `$hit`, `f*ck`, `fvck`).
//! - [`matcher`]: one character-wise double-array trie over all deny words, allow phrases,
//!   secret markers and detector context words, searched from the positions a Bloom filter
//!   lets through.
//! - [`detectors`]: mobile numbers, identity numbers (GB 11643), bank cards (Luhn), e-mail
//!   addresses and postal addresses, as hand-written linear scanners.
//! - [`classifier`]: an offensive-language score (hashed character n-grams, logistic
//!   regression, weights shipped in the crate) mapped by policy to `warn` or `review`.
//! - [`policy`]: actions per category and detector, external-member rules, group overrides.
//! - [`escalation`]: a sliding-window ladder of penalties for repeat offenders.
//! - [`load`]: the rule directory format, errors with file and line, and a fingerprint for
//!   hot reload.
//!
//! ```
//! use moderation::{Action, CheckContext, Moderator};
//! let m = Moderator::builtin();
//! let v = m.check("call me: 138 1234 5678", &CheckContext::default());
//! assert_eq!(v.action, Action::Mask);
//! assert_eq!(v.masked_text.as_deref(), Some("call me: 138 **** 5678"));
//! ```

mod action;
pub mod classifier;
pub mod detectors;
mod error;
pub mod escalation;
pub mod group;
mod jp2s_table;
pub mod leet;
pub mod load;
pub mod matcher;
pub mod moderator;
pub mod normalize;
pub mod policy;
mod romanize;
mod t2s_table;

use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use escalation::{EscalationConfig, Escalator, LadderStep, Penalty, StepPenalty, ViolationLog};
pub use group::GroupPolicy;
pub use load::{dir_fingerprint, LoadError};
pub use moderator::{LoadStats, Moderator, ModeratorBuilder};
pub use normalize::{normalize, Normalized};
pub use policy::{
    Action, CategoryPolicy, ClassifierConfig, Detector, DetectorPolicy, GroupPolicySpec,
    PolicyFile, CONFIDENTIAL, DEFAULT_CATEGORIES, OFFENSIVE,
};

/// Where a message is sent, as far as moderation cares.
#[derive(Clone, Copy, Debug, Default)]
pub struct CheckContext<'a> {
    /// The group's compiled overrides, when the message goes to a group that has some.
    pub group: Option<&'a GroupPolicy>,
    /// The conversation has at least one member from outside the company.
    pub has_external_member: bool,
}

/// One rule or detector that fired.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hit {
    /// Rule id: `deny/porn.txt:12`, `builtin:secret:1`, `group:3`, `detector:phone`...
    /// Never the matched word itself (rule ids are safe to log and show to admins). Shared
    /// with the rule set, so a verdict's hits allocate no strings.
    pub rule: Arc<str>,
    /// Category (`porn`, `confidential`, `phone`...), shared like `rule`.
    pub category: Arc<str>,
    /// The action this hit asks for.
    pub action: Action,
    /// Byte offset of the first matched character in the original text.
    pub start: usize,
    /// Byte offset just past the last matched character in the original text.
    pub end: usize,
}

/// The decision for one message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdict {
    /// The most severe action of all hits (`Allow` when nothing fired).
    pub action: Action,
    /// Category of the first most severe hit: what a blocked sender is told. Shared with the
    /// hit (and the rule set), so a flagged message allocates no string for it.
    pub category: Option<Arc<str>>,
    /// Rule id of the first most severe hit (for the audit log), shared like `category`.
    pub rule: Option<Arc<str>>,
    /// The text with every `mask` hit replaced by `*`; `Some` when `action` is `Mask`, and also
    /// for `Review` when some hit asked for masking (deliver this if the admin approves).
    pub masked_text: Option<String>,
    /// Every hit whose action is not `Allow`, in text order.
    pub hits: Vec<Hit>,
    /// Some hit belongs to a category that counts toward escalation: the caller should call
    /// [`Escalator::record`] for the sender.
    pub escalate: bool,
}

impl Verdict {
    /// The verdict for a clean message.
    pub fn allow() -> Verdict {
        Verdict {
            action: Action::Allow,
            category: None,
            rule: None,
            masked_text: None,
            hits: Vec::new(),
            escalate: false,
        }
    }

    /// The text to store and deliver: the masked text when there is one, else `original`.
    /// (Meaningless for `Block`: a blocked message is not stored.)
    pub fn text_to_deliver<'t>(&'t self, original: &'t str) -> &'t str {
        self.masked_text.as_deref().unwrap_or(original)
    }
}

/// A seeded xorshift generator for the unit tests' random texts: each call gives a number
/// below `n` (the same sequence for the same seed, so a failure reproduces).
#[cfg(test)]
pub(crate) fn test_rng(mut x: u64) -> impl FnMut(usize) -> usize {
    move |n| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x % n as u64) as usize
    }
}
