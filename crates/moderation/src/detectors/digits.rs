//! Numbers: Chinese mobile numbers, 18-digit resident identity numbers and bank cards.
//!
//! One pass splits the folded text into *chains* of digit groups joined by short runs (up to
//! three characters) of separators of any kind (so `138 1234 5678`, `138/1234_5678`,
//! `138、1234、5678` and `１３８１２３４５６７８` are one chain). Digits may be written as
//! Chinese numerals (一三八, 零, 幺, 两; 壹贰叁 fold to digits already). Within a chain, every run of consecutive whole groups is a candidate; at each group
//! the longest valid candidate wins (identity number, then bank card, then mobile number) and
//! scanning resumes after it. A candidate must not touch a Latin letter or digit (so digits
//! inside a hash or a longer number are not personal data), except the `x` check character of
//! an identity number.

use super::Detector;
use super::{DetHit, MaskKind};
use crate::normalize::{cjk_digit, FChar, CLASS_DIGIT, CLASS_OTHER, CLASS_SEP};

/// The scanner of the three number detectors (phone, identity number, bank card).
pub(crate) static SCANNER: super::Scanner = super::Scanner {
    name: "digits",
    prefilter: has_digit,
    scan: scan_set,
};

/// The fewest digits any number hit has: an 11-digit mobile number (identity numbers have 18,
/// cards 13 to 19).
const MIN_DIGITS: u32 = 11;

/// A text with fewer digits (and Chinese numerals) than the shortest number cannot hold one:
/// most Chinese text has a numeral or two (一个, 三天) and is not scanned.
fn has_digit(flags: &crate::normalize::TextFlags) -> bool {
    flags.digit_values >= MIN_DIGITS
}

/// The digit value of a folded character: an ASCII digit or a Chinese numeral.
#[inline]
fn dval(fc: &FChar) -> Option<u8> {
    if fc.class == CLASS_DIGIT {
        fc.c.to_digit(10).map(|d| d as u8)
    } else if fc.class == CLASS_OTHER {
        cjk_digit(fc.c)
    } else {
        None
    }
}

fn scan_set(
    f: &[FChar],
    on: super::DetectorSet,
    scratch: &mut super::DetScratch,
    out: &mut Vec<DetHit>,
) {
    let en = Enabled {
        phone: on.contains(Detector::Phone),
        id_card: on.contains(Detector::IdCard),
        bank_card: on.contains(Detector::BankCard),
    };
    scan(f, en, &mut scratch.digit_groups, out);
}

/// Which number detectors are enabled.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Enabled {
    pub phone: bool,
    pub id_card: bool,
    pub bank_card: bool,
}

/// A run of consecutive digits: folded characters `start..end`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Group {
    start: u32,
    end: u32,
}

fn is_join(fc: &FChar) -> bool {
    fc.class == CLASS_SEP
}

/// Appends number hits in `f` to `out`; `groups` is scratch space.
pub(crate) fn scan(f: &[FChar], en: Enabled, groups: &mut Vec<Group>, out: &mut Vec<DetHit>) {
    if !(en.phone || en.id_card || en.bank_card) {
        return;
    }
    let n = f.len();
    let mut i = 0;
    while i < n {
        if dval(&f[i]).is_none() {
            i += 1;
            continue;
        }
        // Collect one chain of groups starting at i.
        groups.clear();
        let mut j = i;
        loop {
            let gs = j;
            while j < n && dval(&f[j]).is_some() {
                j += 1;
            }
            groups.push(Group {
                start: gs as u32,
                end: j as u32,
            });
            let mut k = j;
            while k < n && k - j < 3 && is_join(&f[k]) {
                k += 1;
            }
            if k > j && k < n && dval(&f[k]).is_some() {
                j = k;
            } else {
                break;
            }
        }
        scan_chain(f, groups, en, out);
        i = j.max(i + 1);
    }
}

fn digit_at(f: &[FChar], i: usize) -> u32 {
    f.get(i).and_then(dval).map_or(0, u32::from)
}

fn scan_chain(f: &[FChar], groups: &[Group], en: Enabled, out: &mut Vec<DetHit>) {
    let mut digits = [0u8; 19];
    let mut gi = 0;
    while gi < groups.len() {
        let mut best: Option<(usize, DetHit)> = None; // (last group index, hit)
        let mut count = 0usize;
        for (gj, g) in groups.iter().enumerate().skip(gi) {
            let glen = (g.end - g.start) as usize;
            if count + glen > 19 {
                break;
            }
            for (k, slot) in digits[count..count + glen].iter_mut().enumerate() {
                *slot = digit_at(f, g.start as usize + k) as u8;
            }
            count += glen;
            let start = groups[gi].start as usize;
            let end = g.end as usize;
            if let Some(hit) = classify(f, &digits[..count], start, end, en) {
                best = Some((gj, hit));
            }
        }
        match best {
            Some((last, hit)) => {
                out.push(hit);
                gi = last + 1;
            }
            None => gi += 1,
        }
    }
}

fn is_word(f: &[FChar], i: usize) -> bool {
    f.get(i).is_some_and(FChar::is_word)
}

/// The hit for the digits `d` at folded characters `start..end`, if they are personal data.
fn classify(f: &[FChar], d: &[u8], start: usize, end: usize, en: Enabled) -> Option<DetHit> {
    if start > 0 && is_word(f, start - 1) {
        return None;
    }
    let x_after = f.get(end).is_some_and(|c| c.c == 'x');
    let hit = |det, end: usize, head, tail, high| DetHit {
        det,
        start: start as u32,
        end: end as u32,
        mask_end: end as u32,
        keep_head: head,
        keep_tail: tail,
        mask: MaskKind::Digits,
        high,
        needs_context: false,
    };
    if en.id_card && d.len() == 17 && x_after && !is_word(f, end + 1) {
        if valid_id(d, 10) {
            return Some(hit(Detector::IdCard, end + 1, 3, 4, true));
        }
        return None;
    }
    if is_word(f, end) {
        return None;
    }
    if d.len() == 18 {
        if let Some(first17) = d.get(..17) {
            if en.id_card && valid_id(first17, u32::from(d[17])) {
                return Some(hit(Detector::IdCard, end, 3, 4, true));
            }
            // Shaped like an identity number (region, birth date) with a wrong check
            // character: a typo'd or made-up ID, never a card.
            if id_shaped(first17) {
                return None;
            }
        }
    }
    if en.bank_card && (13..=19).contains(&d.len()) && luhn(d) {
        match card_network(d) {
            Some(_) => return Some(hit(Detector::BankCard, end, 4, 4, true)),
            // Luhn-valid but no network issues it: low confidence (needs a context word).
            None if d.len() >= 16 => return Some(hit(Detector::BankCard, end, 4, 4, false)),
            None => {}
        }
    }
    if en.phone && d.len() == 11 && is_mobile(d) {
        return Some(hit(Detector::Phone, end, 3, 4, true));
    }
    if en.phone && d.len() == 13 && d[0] == 8 && d[1] == 6 && is_mobile(&d[2..]) {
        return Some(hit(Detector::Phone, end, 5, 4, true));
    }
    None
}

/// A card network: its name, issuer ranges (IIN prefixes) and card lengths.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Network {
    /// Name (`"visa"`, `"unionpay"`...).
    pub name: &'static str,
    /// Inclusive IIN ranges, each as (first, last) of the same number of digits.
    pub ranges: &'static [(u32, u32)],
    /// Valid card lengths, inclusive range.
    pub lengths: (usize, usize),
    /// Lengths inside `lengths` that are not issued (Visa has 13, 16 and 19 only).
    pub skip_lengths: &'static [usize],
}

/// Card networks by issuer range and length (ISO/IEC 7812 IIN ranges as the networks publish
/// them). A Luhn-valid number of the right length in one of these ranges is a card with high
/// confidence.
pub static NETWORKS: &[Network] = &[
    Network {
        name: "unionpay",
        ranges: &[(62, 62)],
        lengths: (16, 19),
        skip_lengths: &[],
    },
    Network {
        name: "visa",
        ranges: &[(4, 4)],
        lengths: (13, 19),
        skip_lengths: &[14, 15, 17, 18],
    },
    Network {
        name: "mastercard",
        ranges: &[(51, 55), (2221, 2720)],
        lengths: (16, 16),
        skip_lengths: &[],
    },
    Network {
        name: "amex",
        ranges: &[(34, 34), (37, 37)],
        lengths: (15, 15),
        skip_lengths: &[],
    },
    Network {
        name: "jcb",
        ranges: &[(3528, 3589)],
        lengths: (16, 19),
        skip_lengths: &[],
    },
    Network {
        name: "discover",
        ranges: &[(6011, 6011), (644, 649), (65, 65)],
        lengths: (16, 19),
        skip_lengths: &[],
    },
    Network {
        name: "diners",
        ranges: &[(300, 305), (36, 36), (38, 39)],
        lengths: (14, 19),
        skip_lengths: &[15],
    },
];

/// The network that issues a number of this length and prefix, if any (Luhn is not checked).
pub fn card_network(d: &[u8]) -> Option<&'static Network> {
    let prefix = |k: usize| {
        d.get(..k)
            .map(|p| p.iter().fold(0u32, |a, &x| a * 10 + u32::from(x)))
    };
    NETWORKS.iter().find(|n| {
        let len_ok =
            (n.lengths.0..=n.lengths.1).contains(&d.len()) && !n.skip_lengths.contains(&d.len());
        len_ok
            && n.ranges.iter().any(|&(lo, hi)| {
                let k = lo.checked_ilog10().map_or(1, |l| l as usize + 1);
                prefix(k).is_some_and(|p| (lo..=hi).contains(&p))
            })
    })
}

/// Province codes (first two digits) of resident identity numbers (GB/T 2260).
fn id_province(p: u32) -> bool {
    matches!(p, 11..=15 | 21..=23 | 31..=37 | 41..=46 | 50..=54 | 61..=65 | 71 | 81..=83 | 91)
}

/// Whether 17 digits look like the body of an identity number: a province code and a real
/// birth date (the check character is not looked at).
pub fn id_shaped(d17: &[u8]) -> bool {
    if d17.len() != 17 {
        return false;
    }
    let num =
        |r: std::ops::Range<usize>| d17[r].iter().fold(0u32, |acc, &x| acc * 10 + u32::from(x));
    id_province(num(0..2)) && valid_date(num(6..10), num(10..12), num(12..14))
}

fn is_mobile(d: &[u8]) -> bool {
    d.len() == 11 && d[0] == 1 && (3..=9).contains(&d[1])
}

/// GB 11643-1999 check value (0..=10, 10 written `X`) of the first 17 digits.
pub fn id_check_value(d17: &[u8]) -> u32 {
    const W: [u32; 17] = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
    let sum: u32 = d17.iter().zip(W).map(|(&d, w)| u32::from(d) * w).sum();
    (12 - sum % 11) % 11
}

/// Whether 17 digits plus check value `check` form a valid identity number: the GB 11643
/// check value matches, the region starts with 1..=9 and the birth date (digits 7..14) is a
/// real date between 1900 and 2099.
pub fn valid_id(d17: &[u8], check: u32) -> bool {
    if d17.len() != 17 || d17[0] == 0 || id_check_value(d17) != check {
        return false;
    }
    let num =
        |r: std::ops::Range<usize>| d17[r].iter().fold(0u32, |acc, &x| acc * 10 + u32::from(x));
    valid_date(num(6..10), num(10..12), num(12..14))
}

fn valid_date(y: u32, m: u32, d: u32) -> bool {
    if !(1900..=2099).contains(&y) || !(1..=12).contains(&m) || d == 0 {
        return false;
    }
    let leap = (y.is_multiple_of(4) && !y.is_multiple_of(100)) || y.is_multiple_of(400);
    let days = match m {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    };
    d <= days
}

/// Luhn checksum over digits (the last one is the check digit).
pub fn luhn(d: &[u8]) -> bool {
    let sum: u32 = d
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &x)| {
            let x = u32::from(x);
            if i % 2 == 1 {
                let y = x * 2;
                if y > 9 {
                    y - 9
                } else {
                    y
                }
            } else {
                x
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digits(s: &str) -> Vec<u8> {
        s.bytes().map(|b| b - b'0').collect()
    }

    #[test]
    fn id_check_digit_by_hand() {
        // 110105 19491231 002: weighted sum 167, 167 mod 11 = 2, (12 - 2) mod 11 = 10 -> X.
        assert_eq!(id_check_value(&digits("11010519491231002")), 10);
        assert!(valid_id(&digits("11010519491231002"), 10));
        assert!(!valid_id(&digits("11010519491231002"), 9));
        // Real-date check: February 30th and month 13 are rejected even with a right check value.
        let bad = digits("11010519490230002");
        assert!(!valid_id(&bad, id_check_value(&bad)));
        let bad = digits("11010519491331002");
        assert!(!valid_id(&bad, id_check_value(&bad)));
        let leap = digits("11010520000229123");
        assert!(valid_id(&leap, id_check_value(&leap)));
        let not_leap = digits("11010519000229123");
        assert!(!valid_id(&not_leap, id_check_value(&not_leap)));
    }

    #[test]
    fn luhn_vectors() {
        // 4111 1111 1111 1111: the classic test Visa number; doubled digits sum to 30 -> valid.
        assert!(luhn(&digits("4111111111111111")));
        assert!(!luhn(&digits("4111111111111112")));
        assert!(luhn(&digits("79927398713")));
        assert!(!luhn(&digits("79927398710")));
    }
}
