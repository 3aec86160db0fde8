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

pub mod address;
pub mod digits;
pub mod email;

use crate::policy::Detector;

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

/// The context words built into every rule set, per detector.
pub(crate) const CONTEXT_WORDS: &[(&str, Detector)] = &[
    ("电话", Detector::Phone),
    ("手机", Detector::Phone),
    ("手机号", Detector::Phone),
    ("联系方式", Detector::Phone),
    ("致电", Detector::Phone),
    ("tel", Detector::Phone),
    ("phone", Detector::Phone),
    ("身份证", Detector::IdCard),
    ("证件号", Detector::IdCard),
    ("卡号", Detector::BankCard),
    ("银行卡", Detector::BankCard),
    ("信用卡", Detector::BankCard),
    ("借记卡", Detector::BankCard),
    ("账号", Detector::BankCard),
    ("账户", Detector::BankCard),
    ("开户行", Detector::BankCard),
    ("邮箱", Detector::Email),
    ("email", Detector::Email),
    ("地址", Detector::Address),
    ("住址", Detector::Address),
    ("收货", Detector::Address),
    ("寄到", Detector::Address),
    ("住在", Detector::Address),
    ("家住", Detector::Address),
];
