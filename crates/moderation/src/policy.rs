//! Policy: what happens when a rule or a detector fires.
//!
//! Every deny category and every personal-data detector maps to an [`Action`], with a second,
//! usually stricter action for conversations that have an external member. `policy.toml` in the
//! rule directory sets them (see `docs/MODERATION.md`); [`PolicyFile::default`] is the built-in
//! policy. Per-group overrides ([`GroupPolicySpec`]) can only tighten.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::escalation::EscalationConfig;

pub use crate::action::Action;
pub use crate::detectors::Detector;

/// Category of the built-in and configured secret markers and project code names.
pub const CONFIDENTIAL: &str = "confidential";

/// The default deny categories (one `deny/<category>.txt` each).
pub const DEFAULT_CATEGORIES: [&str; 9] = [
    "illegal",
    "porn",
    "violence",
    "politics",
    "gambling",
    "drugs",
    "abuse",
    "discrimination",
    "ads",
];

/// Policy of one category: its action inside the company and with external members.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CategoryPolicy {
    /// Action when a word of this category matches.
    pub action: Action,
    /// Action when the conversation has an external member (never looser than `action`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<Action>,
    /// Whether a hit counts as a violation for the escalation ladder.
    #[serde(default = "yes")]
    pub escalate: bool,
}

fn yes() -> bool {
    true
}

impl CategoryPolicy {
    /// A category that does `action` everywhere and escalates.
    pub fn new(action: Action) -> CategoryPolicy {
        CategoryPolicy {
            action,
            external: None,
            escalate: true,
        }
    }

    /// The action for a conversation with or without external members.
    pub fn effective(&self, has_external: bool) -> Action {
        match (has_external, self.external) {
            (true, Some(ext)) => ext.max(self.action),
            _ => self.action,
        }
    }
}

/// `policy.toml` accepts `porn = "block"` as well as `porn = { action = "block", ... }`.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
enum CategoryEntry {
    Short(Action),
    Full(CategoryPolicy),
}

/// Policy of one personal-data detector.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetectorPolicy {
    /// Whether the detector runs at all.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Action inside the company.
    pub action: Action,
    /// Action with external members (never looser than `action`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<Action>,
    /// Action for a low-confidence hit (no context word nearby and nothing else that makes it
    /// likely: e.g. a Luhn-valid number without a card prefix). Never stricter than the normal
    /// action.
    #[serde(default)]
    pub low_confidence: Action,
}

impl DetectorPolicy {
    fn new(action: Action, external: Action, low_confidence: Action) -> DetectorPolicy {
        DetectorPolicy {
            enabled: true,
            action,
            external: Some(external),
            low_confidence,
        }
    }

    /// The action for a hit.
    pub fn effective(&self, has_external: bool, high_confidence: bool) -> Action {
        let full = match (has_external, self.external) {
            (true, Some(ext)) => ext.max(self.action),
            _ => self.action,
        };
        if high_confidence {
            full
        } else {
            self.low_confidence.min(full)
        }
    }
}

/// Normalization settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NormalizeConfig {
    /// Characters skipped between the characters of a word (whitespace always is).
    pub separators: String,
    /// Patterns shorter than this many characters (after normalization) are ignored, with a
    /// count in [`crate::LoadStats`]. `1` keeps everything; `2` drops single characters.
    pub min_pattern_chars: usize,
    /// Read look-alike symbols, digits and masking wildcards in Latin words as letters where
    /// the result is a Latin rule entry (`sh!t`, `$hit`, `f*ck`, `fvck`; see [`crate::leet`]).
    pub read_symbols: bool,
    /// Initials of an entry that opts in (`赌博<TAB>initials` -> `db`) shorter than this many
    /// letters are not used: short initials collide with everyday abbreviations.
    pub min_initials: usize,
}

impl Default for NormalizeConfig {
    fn default() -> Self {
        NormalizeConfig {
            separators: crate::normalize::DEFAULT_SEPARATORS.to_string(),
            min_pattern_chars: 2,
            read_symbols: true,
            min_initials: 3,
        }
    }
}

/// Secret-marker settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecretsConfig {
    /// Use the built-in markers (机密, 绝密, 秘密, 内部资料, 商业秘密, confidential, ...).
    pub builtin_markers: bool,
    /// Characters around a personal-data hit searched for context words (身份证, 卡号, 电话...).
    pub context_window: usize,
}

impl Default for SecretsConfig {
    fn default() -> Self {
        SecretsConfig {
            builtin_markers: true,
            context_window: 12,
        }
    }
}

/// Category of the offensive-language classifier's hits (and its `tighten` name in a group).
pub const OFFENSIVE: &str = "offensive";

/// Settings of the offensive-language classifier ([`crate::classifier`]): score bands mapped
/// to actions, inside the company and with an external member. A score at or above
/// `review_at` asks for `review`, at or above `warn_at` for `warn`; the classifier never
/// blocks by itself (a group may tighten `offensive`). Hits do not count toward escalation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClassifierConfig {
    /// Whether the classifier runs.
    pub enabled: bool,
    /// Texts with fewer normalized characters are not scored (too little signal).
    pub min_chars: usize,
    /// Score from which a message gets `warn` (the default flags 2 % of COLD's safe comments).
    pub warn_at: f32,
    /// Score from which a message goes to `review` (the default flags 0.5 % of them).
    pub review_at: f32,
    /// `warn_at` in conversations with an external member.
    pub external_warn_at: f32,
    /// `review_at` in conversations with an external member.
    pub external_review_at: f32,
}

impl Eq for ClassifierConfig {}

/// Default band: about 2 % of the safe comments of COLD dev score at or above it.
pub const DEFAULT_WARN_AT: f32 = 0.834;
/// Default band: about 0.5 % of the safe comments of COLD dev score at or above it.
pub const DEFAULT_REVIEW_AT: f32 = 0.948;

impl Default for ClassifierConfig {
    fn default() -> Self {
        ClassifierConfig {
            enabled: true,
            min_chars: 6,
            warn_at: DEFAULT_WARN_AT,
            review_at: DEFAULT_REVIEW_AT,
            external_warn_at: DEFAULT_WARN_AT,
            external_review_at: DEFAULT_REVIEW_AT,
        }
    }
}

impl ClassifierConfig {
    /// The action for a score: `review`, `warn` or `allow` by band.
    pub fn action(&self, score: f32, has_external: bool) -> Action {
        let (warn, review) = if has_external {
            (self.external_warn_at, self.external_review_at)
        } else {
            (self.warn_at, self.review_at)
        };
        if score >= review {
            Action::Review
        } else if score >= warn {
            Action::Warn
        } else {
            Action::Allow
        }
    }
}

/// The detector policies, one per row of the detector table ([`crate::detectors::DETECTORS`]),
/// written in `policy.toml` as `[detectors.<name>]`; a detector the file does not name keeps
/// its default, and an unknown name is an error that lists the known ones.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DetectorPolicies(Vec<DetectorPolicy>);

/// The policy of a detector missing from the table (never used while the table is complete).
static DISABLED: DetectorPolicy = DetectorPolicy {
    enabled: false,
    action: Action::Allow,
    external: None,
    low_confidence: Action::Allow,
};

impl Default for DetectorPolicies {
    fn default() -> Self {
        DetectorPolicies(
            crate::detectors::DETECTORS
                .iter()
                .map(|d| {
                    let (action, external, low) = d.default_policy;
                    DetectorPolicy::new(action, external, low)
                })
                .collect(),
        )
    }
}

impl DetectorPolicies {
    /// The policy of one detector.
    pub fn get(&self, d: Detector) -> &DetectorPolicy {
        self.0.get(d.index()).unwrap_or(&DISABLED)
    }

    /// The policy of one detector, to change it.
    pub fn get_mut(&mut self, d: Detector) -> Option<&mut DetectorPolicy> {
        self.0.get_mut(d.index())
    }
}

impl Serialize for DetectorPolicies {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for d in Detector::all() {
            map.serialize_entry(d.as_str(), self.get(d))?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for DetectorPolicies {
    fn deserialize<D: serde::Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        let given = BTreeMap::<String, DetectorPolicy>::deserialize(de)?;
        let mut out = DetectorPolicies::default();
        for (name, policy) in given {
            let slot = Detector::from_name(&name).and_then(|d| out.get_mut(d));
            let Some(slot) = slot else {
                let known: Vec<&str> = Detector::all().map(Detector::as_str).collect();
                return Err(serde::de::Error::custom(format!(
                    "unknown detector `{name}`, expected one of {}",
                    known.join(", ")
                )));
            };
            *slot = policy;
        }
        Ok(out)
    }
}

/// The parsed `policy.toml`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PolicyFile {
    /// Normalization settings.
    pub normalize: NormalizeConfig,
    /// Category name -> policy. Categories of deny files missing here get `block`.
    pub categories: BTreeMap<String, CategoryPolicy>,
    /// Detector policies.
    pub detectors: DetectorPolicies,
    /// Secret-marker settings.
    pub secrets: SecretsConfig,
    /// The escalation ladder (used by the caller to build an [`crate::Escalator`]).
    pub escalation: EscalationConfig,
    /// The offensive-language classifier's score bands.
    pub classifier: ClassifierConfig,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    #[serde(default)]
    normalize: NormalizeConfig,
    #[serde(default)]
    categories: BTreeMap<String, CategoryEntry>,
    #[serde(default)]
    detectors: DetectorPolicies,
    #[serde(default)]
    secrets: SecretsConfig,
    #[serde(default)]
    escalation: EscalationConfig,
    #[serde(default)]
    classifier: ClassifierConfig,
}

impl Default for PolicyFile {
    fn default() -> Self {
        use Action::*;
        let mut categories = BTreeMap::new();
        for (name, action) in [
            ("illegal", Block),
            ("porn", Block),
            ("violence", Block),
            ("politics", Block),
            ("gambling", Block),
            ("drugs", Block),
            ("abuse", Mask),
            ("discrimination", Warn),
            ("ads", Review),
        ] {
            categories.insert(name.to_string(), CategoryPolicy::new(action));
        }
        categories.insert(
            CONFIDENTIAL.to_string(),
            CategoryPolicy {
                action: Warn,
                external: Some(Block),
                escalate: false,
            },
        );
        PolicyFile {
            normalize: NormalizeConfig::default(),
            categories,
            detectors: DetectorPolicies::default(),
            secrets: SecretsConfig::default(),
            escalation: EscalationConfig::default(),
            classifier: ClassifierConfig::default(),
        }
    }
}

impl PolicyFile {
    /// Parses `policy.toml` text. Categories given in the file replace the defaults of the
    /// same name; the other defaults stay. Errors carry the 1-based line number.
    pub fn from_toml(text: &str) -> Result<PolicyFile, (usize, String)> {
        let raw: RawPolicy = toml::from_str(text).map_err(|e| {
            let line = e
                .span()
                .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1)
                .unwrap_or(0);
            (line, e.message().to_string())
        })?;
        let mut p = PolicyFile::default();
        for (name, entry) in raw.categories {
            let c = match entry {
                CategoryEntry::Short(a) => CategoryPolicy {
                    external: p.categories.get(&name).and_then(|c| c.external),
                    escalate: p.categories.get(&name).is_none_or(|c| c.escalate),
                    action: a,
                },
                CategoryEntry::Full(c) => c,
            };
            p.categories.insert(name, c);
        }
        p.normalize = raw.normalize;
        p.detectors = raw.detectors;
        p.secrets = raw.secrets;
        p.escalation = raw.escalation;
        p.classifier = raw.classifier;
        if let Err(msg) = p.escalation.validate() {
            let line = text
                .lines()
                .position(|l| l.trim_start().starts_with("[escalation"))
                .map_or(0, |i| i + 1);
            return Err((line, msg));
        }
        Ok(p)
    }
}

/// A group's overrides, as stored with the group (serde: JSON or TOML).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GroupPolicySpec {
    /// Extra words banned in this group only.
    pub words: Vec<String>,
    /// Action for the extra words (default `block`).
    pub words_action: Option<Action>,
    /// Category reported for the extra words (default `"group"`).
    pub words_category: Option<String>,
    /// Category or detector name -> minimum action in this group (tightens only).
    pub tighten: BTreeMap<String, Action>,
    /// Block secret markers and code names in this group, even without external members.
    pub forbid_secret_markers: bool,
    /// The extra words also match their pinyin, without tones, joined or split (`赌博`:
    /// `dubo`, `du bo`, `du-bo`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub words_pinyin: bool,
    /// The extra words also match the initials of their pinyin (`法轮功`: `flg`), when at
    /// least `normalize.min_initials` letters long.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub words_initials: bool,
}
