//! Personal-data detectors: hand-written linear scanners over the folded characters (no
//! regular expressions on the hot path).
//!
//! - [`digits`]: mobile numbers, resident identity numbers (GB 11643 check digit and birth
//!   date) and bank card numbers (Luhn), in any digit form the normalizer folds (full-width,
//!   circled, 壹贰叁) and with separators between digit groups.
//! - [`email`]: e-mail addresses around each `@`.
//! - [`address`]: a postal-address heuristic (area 省/市/区/县 + street 路/街 + number 号/室).
//!
//! A number that fails its checksum is not personal data. Detectors report candidates with a
//! confidence; context words (身份证, 卡号, 电话, ...) near a hit raise it (see
//! [`crate::Moderator`]).
//!
//! **The detector table.** Everything the rest of the crate knows about a detector is one row
//! of [`DETECTORS`]: its name (the category of its hits and its `[detectors.<name>]` key in
//! `policy.toml`), its rule id, its default policy, its context words and the [`Scanner`] that
//! finds it (with the cheap prefilter that skips the scan). Adding a detector is its scanner
//! file, a [`Detector`] variant and a row here; the policy file, the moderator, the group
//! overrides and the matcher's context words all read the table. Several detectors may share
//! one scanner (the digit scanner finds phones, identity numbers and bank cards in one pass):
//! the moderator runs each scanner once per message, for the detectors that are enabled.

pub mod address;
pub mod digits;
pub mod email;

use crate::action::Action;
use crate::normalize::{FChar, TextFlags};
use serde::{Deserialize, Serialize};

/// The built-in personal-data detectors (one row each in [`DETECTORS`], in this order).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum Detector {
    /// Chinese mobile numbers (`1[3-9]` + 9 digits, optional `+86`).
    Phone,
    /// 18-digit resident identity numbers (GB 11643 check digit and a real birth date).
    IdCard,
    /// Bank card numbers: length and issuer range of a card network, and Luhn.
    BankCard,
    /// E-mail addresses.
    Email,
    /// Postal addresses (省/市/区/县 ... 路/街 ... N号/室 heuristic).
    Address,
}

/// One row of the detector table.
#[derive(Debug)]
pub struct DetectorSpec {
    /// The detector.
    pub detector: Detector,
    /// Its name: the category of its hits and its key in `policy.toml` (`"phone"`, ...).
    pub name: &'static str,
    /// The rule id reported for its hits (`"detector:phone"`, ...).
    pub rule_id: &'static str,
    /// Default policy: action inside the company, with an external member, and for a
    /// low-confidence hit.
    pub default_policy: (Action, Action, Action),
    /// Words that make a nearby hit likely (and turn on a detector that needs context).
    pub context_words: &'static [&'static str],
    /// What finds it.
    pub scanner: &'static Scanner,
}

/// A scan function over folded characters, with the prefilter that decides whether a message
/// can contain any of its hits. Shared by the detectors it finds; run once per message.
pub struct Scanner {
    /// A name, for debugging.
    pub name: &'static str,
    /// Cheap facts about the whole text that a hit needs (`false` skips the scan).
    pub(crate) prefilter: fn(&TextFlags) -> bool,
    /// Appends the hits of the detectors in the set to the vector.
    pub(crate) scan: fn(&[FChar], DetectorSet, &mut DetScratch, &mut Vec<DetHit>),
}

impl std::fmt::Debug for Scanner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scanner").field("name", &self.name).finish()
    }
}

/// The detector table: one row per [`Detector`], in declaration order (a unit test checks it).
pub static DETECTORS: &[DetectorSpec] = {
    use Action::*;
    &[
        DetectorSpec {
            detector: Detector::Phone,
            name: "phone",
            rule_id: "detector:phone",
            default_policy: (Mask, Block, Mask),
            context_words: &["电话", "手机", "手机号", "联系方式", "致电", "tel", "phone"],
            scanner: &digits::SCANNER,
        },
        DetectorSpec {
            detector: Detector::IdCard,
            name: "id_card",
            rule_id: "detector:id_card",
            default_policy: (Mask, Block, Mask),
            context_words: &["身份证", "证件号"],
            scanner: &digits::SCANNER,
        },
        DetectorSpec {
            detector: Detector::BankCard,
            name: "bank_card",
            rule_id: "detector:bank_card",
            default_policy: (Mask, Block, Allow),
            context_words: &[
                "卡号",
                "银行卡",
                "信用卡",
                "借记卡",
                "账号",
                "账户",
                "开户行",
            ],
            scanner: &digits::SCANNER,
        },
        DetectorSpec {
            detector: Detector::Email,
            name: "email",
            rule_id: "detector:email",
            default_policy: (Allow, Mask, Allow),
            context_words: &["邮箱", "email"],
            scanner: &email::SCANNER,
        },
        DetectorSpec {
            detector: Detector::Address,
            name: "address",
            rule_id: "detector:address",
            default_policy: (Allow, Warn, Allow),
            context_words: &["地址", "住址", "收货", "寄到", "住在", "家住"],
            scanner: &address::SCANNER,
        },
    ]
};

/// Labels of numbers that are not personal data: order, tracking, invoice and product codes.
/// A phone or card hit near one of them (within the context window) is dropped unless a
/// context word of its own detector is near too (`订单号 13812345678` is an order id).
pub const NOT_PERSONAL_WORDS: &[&str] = &[
    "订单",
    "单号",
    "运单",
    "快递",
    "物流",
    "编号",
    "货号",
    "型号",
    "款号",
    "批次",
    "批号",
    "流水号",
    "交易号",
    "工单",
    "发票",
    "条码",
    "序列号",
    "sku",
    "order",
    "tracking",
    "invoice",
    "serial",
];

/// The context bit of [`NOT_PERSONAL_WORDS`] (above the detectors' own bits).
pub(crate) const NOT_PERSONAL_BIT: u8 = 0x80;

/// A row for a detector without one (never used while the table is complete).
static MISSING: DetectorSpec = DetectorSpec {
    detector: Detector::Phone,
    name: "",
    rule_id: "",
    default_policy: (Action::Allow, Action::Allow, Action::Allow),
    context_words: &[],
    scanner: &NO_SCANNER,
};

static NO_SCANNER: Scanner = Scanner {
    name: "none",
    prefilter: never,
    scan: scan_nothing,
};

fn never(_: &TextFlags) -> bool {
    false
}

fn scan_nothing(_: &[FChar], _: DetectorSet, _: &mut DetScratch, _: &mut Vec<DetHit>) {}

impl Detector {
    /// Every detector, in table order.
    pub fn all() -> impl Iterator<Item = Detector> {
        DETECTORS.iter().map(|s| s.detector)
    }

    /// The detector called `name` (`"phone"`, ...).
    pub fn from_name(name: &str) -> Option<Detector> {
        DETECTORS
            .iter()
            .find(|s| s.name == name)
            .map(|s| s.detector)
    }

    /// Its row of the table.
    pub fn spec(self) -> &'static DetectorSpec {
        DETECTORS
            .get(self.index())
            .filter(|s| s.detector == self)
            .unwrap_or(&MISSING)
    }

    /// The detector's name, which is also the category of its hits (`"phone"`, ...).
    pub fn as_str(self) -> &'static str {
        self.spec().name
    }

    /// The rule id reported for this detector's hits (`"detector:phone"`, ...).
    pub fn rule_id(self) -> &'static str {
        self.spec().rule_id
    }

    /// Its position in the table.
    pub(crate) fn index(self) -> usize {
        self as usize
    }

    pub(crate) fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// A set of detectors (a bit per detector).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DetectorSet(u8);

impl DetectorSet {
    /// Whether `d` is in the set.
    pub fn contains(self, d: Detector) -> bool {
        self.0 & d.bit() != 0
    }

    /// Adds `d`.
    pub fn insert(&mut self, d: Detector) {
        self.0 |= d.bit();
    }

    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

/// The scanners to run for a policy: each scanner once, with the enabled detectors it finds,
/// in table order.
pub(crate) fn plan(enabled: impl Fn(Detector) -> bool) -> Vec<(&'static Scanner, DetectorSet)> {
    let mut out: Vec<(&'static Scanner, DetectorSet)> = Vec::new();
    for spec in DETECTORS.iter().filter(|s| enabled(s.detector)) {
        match out
            .iter_mut()
            .find(|(sc, _)| std::ptr::eq(*sc, spec.scanner))
        {
            Some((_, set)) => set.insert(spec.detector),
            None => {
                let mut set = DetectorSet::default();
                set.insert(spec.detector);
                out.push((spec.scanner, set));
            }
        }
    }
    out
}

/// Scratch space the scanners reuse between messages.
#[derive(Debug, Default)]
pub(crate) struct DetScratch {
    /// Digit groups of one chain ([`digits`]).
    pub digit_groups: Vec<digits::Group>,
}

/// How a detector hit is masked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum MaskKind {
    /// Digits (and an ID's trailing `x`) between `keep_head` and `keep_tail` become `*`.
    Digits,
    /// Every character between `keep_head` and `keep_tail` becomes `*`.
    All,
}

/// One detector hit over folded characters `start..end`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct DetHit {
    /// Which detector.
    pub det: Detector,
    /// First folded character.
    pub start: u32,
    /// One past the last folded character.
    pub end: u32,
    /// Masking stops here (the `@` of an e-mail address; `end` otherwise).
    pub mask_end: u32,
    /// Characters left visible at the start of the masked part.
    pub keep_head: u8,
    /// Characters left visible at the end of the masked part.
    pub keep_tail: u8,
    /// What is masked.
    pub mask: MaskKind,
    /// Confident without context.
    pub high: bool,
    /// Only reported when a context word is near (the address heuristic without an area).
    pub needs_context: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_in_declaration_order_and_unique() {
        for (i, spec) in DETECTORS.iter().enumerate() {
            assert_eq!(spec.detector.index(), i, "{} is out of order", spec.name);
            assert!(!spec.name.is_empty());
            assert_eq!(spec.rule_id, format!("detector:{}", spec.name));
            assert_eq!(Detector::from_name(spec.name), Some(spec.detector));
            let (action, external, low) = spec.default_policy;
            assert!(external >= action && low <= action, "{}", spec.name);
        }
        assert!(
            DETECTORS.len() <= 7,
            "DetectorSet and context bits are a u8 (the top bit is NOT_PERSONAL_BIT)"
        );
    }

    #[test]
    fn shared_scanners_run_once() {
        let plan = plan(|_| true);
        assert_eq!(
            plan.iter().map(|(s, _)| s.name).collect::<Vec<_>>(),
            vec!["digits", "email", "address"]
        );
        let plan = super::plan(|d| d != Detector::IdCard);
        let digits = plan.first().map(|(_, set)| *set).unwrap_or_default();
        assert!(digits.contains(Detector::Phone) && !digits.contains(Detector::IdCard));
    }
}
