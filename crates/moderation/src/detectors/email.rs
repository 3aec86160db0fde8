//! E-mail addresses, plain and obfuscated, found around each *at marker* over the folded
//! characters (full-width `＠` and `．` are folded already).
//!
//! - Plain: local part `[a-z0-9._%+-]+`, `@`, a domain of at least two labels `[a-z0-9-]+`
//!   separated by dots, ending in a top-level label of at least two letters.
//! - Obfuscated: the at marker may also be the word `at` (bare, or in brackets: `(at)`,
//!   `[at]`) or `艾特`; a dot may also be the word `dot` or `点`; separators (spaces,
//!   brackets, up to three) may surround both, and around a plain `@` or `.`. An obfuscated address must end in a common top-level domain
//!   (`meet at home dot now` is no address).
//!
//! The local part is masked, except its first character.

use super::Detector;
use super::{DetHit, MaskKind};
use crate::normalize::{FChar, CLASS_SEP};

fn local_char(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '%' | '+' | '-')
}

fn label_char(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'
}

/// Top-level domains accepted after an obfuscated at or dot.
const COMMON_TLDS: &[&str] = &[
    "com", "net", "org", "cn", "edu", "gov", "io", "co", "me", "info", "biz", "us", "uk", "jp",
    "hk", "tw", "sg", "de", "fr", "ru", "cc", "tv", "xyz", "top", "vip", "ai", "app", "dev",
];

/// The e-mail scanner: runs when the text has an `@` or ASCII letters or digits.
pub(crate) static SCANNER: super::Scanner = super::Scanner {
    name: "email",
    prefilter: may_have_email,
    scan: scan_set,
};

fn may_have_email(flags: &crate::normalize::TextFlags) -> bool {
    flags.has_at || flags.has_alpha
}

fn scan_set(f: &[FChar], _: super::DetectorSet, _: &mut super::DetScratch, out: &mut Vec<DetHit>) {
    scan(f, out);
}

fn ch(f: &[FChar], i: usize) -> char {
    f.get(i).map_or('\0', FChar::shown)
}

/// The ASCII word at `i..i + w.len()`, not glued to other ASCII letters or digits.
fn word_at(f: &[FChar], i: usize, w: &str) -> bool {
    let n = w.len();
    w.chars().enumerate().all(|(k, c)| ch(f, i + k) == c)
        && (i == 0 || !ch(f, i - 1).is_ascii_alphanumeric())
        && !ch(f, i + n).is_ascii_alphanumeric()
}

/// The at marker starting at `i`: its length and whether it is an obfuscated one.
fn at_marker(f: &[FChar], i: usize) -> Option<(usize, bool)> {
    match ch(f, i) {
        '@' => Some((1, false)),
        'a' if word_at(f, i, "at") => Some((2, true)),
        '艾' if ch(f, i + 1) == '特' => Some((2, true)),
        _ => None,
    }
}

/// The dot marker starting at `i`: its length and whether it is an obfuscated one.
fn dot_marker(f: &[FChar], i: usize) -> Option<(usize, bool)> {
    match ch(f, i) {
        '.' => Some((1, false)),
        'd' if word_at(f, i, "dot") => Some((3, true)),
        '点' => Some((1, true)),
        _ => None,
    }
}

/// Skips up to three separators (not dots) from `i` forwards.
fn skip_fwd(f: &[FChar], mut i: usize) -> usize {
    let stop = i + 3;
    while i < stop && f.get(i).is_some_and(|x| x.class == CLASS_SEP && x.c != '.') {
        i += 1;
    }
    i
}

/// Appends e-mail hits in `f` to `out`.
pub(crate) fn scan(f: &[FChar], out: &mut Vec<DetHit>) {
    let mut from = 0usize; // do not start a local part inside the previous address
    let mut at = 0usize;
    while at < f.len() {
        let Some((at_len, mut obfuscated)) = at_marker(f, at) else {
            at += 1;
            continue;
        };
        if at < from {
            at += 1;
            continue;
        }
        // Local part: back over up to three separators (`john (at)`), then local characters.
        let mut le = at;
        while le > from && at - le < 3 && f[le - 1].class == CLASS_SEP && f[le - 1].c != '.' {
            le -= 1;
        }
        // Spaces around a plain `@` are obfuscation too.
        obfuscated |= le != at;
        let mut s = le;
        while s > from && local_char(ch(f, s - 1)) {
            s -= 1;
        }
        while s < le && ch(f, s) == '.' {
            s += 1;
        }
        if s == le {
            at += 1;
            continue;
        }
        // Domain: labels joined by dot markers.
        let mut i = skip_fwd(f, at + at_len);
        let mut labels = 0usize;
        let mut best: Option<usize> = None;
        loop {
            let ls = i;
            while i < f.len() && label_char(ch(f, i)) {
                i += 1;
            }
            if i == ls {
                break;
            }
            labels += 1;
            // The longest prefix of labels that makes an address wins.
            let tld_ok = if obfuscated {
                let tld: String = (ls..i).map(|k| ch(f, k)).collect();
                COMMON_TLDS.contains(&tld.as_str())
            } else {
                i - ls >= 2 && (ls..i).all(|k| ch(f, k).is_ascii_lowercase())
            };
            if labels >= 2 && tld_ok {
                best = Some(i);
            }
            // A dot marker, maybe with separators around it.
            let j = skip_fwd(f, i);
            let Some((dl, dot_obf)) = dot_marker(f, j) else {
                break;
            };
            let k = skip_fwd(f, j + dl);
            if !f.get(k).is_some_and(|x| label_char(x.shown())) {
                break;
            }
            obfuscated |= dot_obf || j != i || k != j + dl;
            i = k;
        }
        let Some(end) = best else {
            at += 1;
            continue;
        };
        out.push(DetHit {
            det: Detector::Email,
            start: s as u32,
            end: end as u32,
            mask_end: le as u32,
            keep_head: 1,
            keep_tail: 0,
            mask: MaskKind::All,
            high: true,
            needs_context: false,
        });
        from = end;
        at = end;
    }
}
