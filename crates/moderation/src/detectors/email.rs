//! E-mail addresses: scan out from each `@` over the folded characters (full-width `＠` and
//! `．` are folded already). Local part `[a-z0-9._%+-]+`, domain of at least two labels
//! `[a-z0-9-]+` separated by dots, ending in a top-level label of at least two letters.
//! The local part is masked, except its first character.

use super::Detector;
use super::{DetHit, MaskKind};
use crate::normalize::FChar;

fn local_char(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '%' | '+' | '-')
}

fn domain_char(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-')
}

/// The e-mail scanner: runs when the text has an `@`.
pub(crate) static SCANNER: super::Scanner = super::Scanner {
    name: "email",
    prefilter: has_at,
    scan: scan_set,
};

fn has_at(flags: &crate::normalize::TextFlags) -> bool {
    flags.has_at
}

fn scan_set(f: &[FChar], _: super::DetectorSet, _: &mut super::DetScratch, out: &mut Vec<DetHit>) {
    scan(f, out);
}

/// Appends e-mail hits in `f` to `out`.
pub(crate) fn scan(f: &[FChar], out: &mut Vec<DetHit>) {
    let mut from = 0usize; // do not start a local part inside the previous address
    for (at, fc) in f.iter().enumerate() {
        if fc.c != '@' || at < from {
            continue;
        }
        let mut s = at;
        while s > from && local_char(f[s - 1].c) {
            s -= 1;
        }
        while s < at && f[s].c == '.' {
            s += 1;
        }
        if s == at {
            continue;
        }
        let mut e = at + 1;
        while e < f.len() && domain_char(f[e].c) {
            e += 1;
        }
        // Trailing dots and hyphens belong to the sentence.
        while e > at + 1 && matches!(f[e - 1].c, '.' | '-') {
            e -= 1;
        }
        if !valid_domain(&f[at + 1..e]) {
            continue;
        }
        out.push(DetHit {
            det: Detector::Email,
            start: s as u32,
            end: e as u32,
            mask_end: at as u32,
            keep_head: 1,
            keep_tail: 0,
            mask: MaskKind::All,
            high: true,
            needs_context: false,
        });
        from = e;
    }
}

fn valid_domain(d: &[FChar]) -> bool {
    let mut labels = 0;
    let mut label_len = 0;
    let mut label_alpha = true;
    for fc in d {
        if fc.c == '.' {
            if label_len == 0 {
                return false;
            }
            labels += 1;
            label_len = 0;
            label_alpha = true;
        } else {
            label_len += 1;
            label_alpha &= fc.c.is_ascii_lowercase();
        }
    }
    labels >= 1 && label_len >= 2 && label_alpha
}
