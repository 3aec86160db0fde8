//! Postal addresses, heuristically: a house number (digits followed by 号/室/栋/幢/楼/单元/弄)
//! with a street marker (路/街/巷/道/弄/村/里) in the 24 characters before it, and either an
//! area marker (省/市/区/县/镇/乡) there too or a context word (地址, 住址, 收货...) nearby.
//! `路口交通` has no number; `3号线` has no street. The hit starts up to three characters before
//! the first marker (the place name, stopping at words like 到/在/住) and ends after the number and its unit (`3栋502室`).

use super::Detector;
use super::{DetHit, MaskKind};
use crate::normalize::{FChar, CLASS_DIGIT, CLASS_SEP};

fn is_unit(c: char) -> bool {
    matches!(
        c,
        '号' | '室' | '栋' | '幢' | '楼' | '单' | '弄' | '座' | '层'
    )
}

fn is_street(c: char) -> bool {
    matches!(c, '路' | '街' | '巷' | '道' | '弄' | '村' | '里')
}

fn is_area(c: char) -> bool {
    matches!(c, '省' | '市' | '区' | '县' | '镇' | '乡')
}

/// A CJK character that can start a place name (not a verb or particle like 到/在/住/寄).
fn is_place_char(c: char) -> bool {
    matches!(c as u32, 0x3400..=0x9FFF)
        && !matches!(
            c,
            '到' | '在'
                | '住'
                | '寄'
                | '是'
                | '址'
                | '往'
                | '于'
                | '至'
                | '的'
                | '从'
                | '去'
                | '来'
                | '送'
                | '为'
        )
}

const LOOKBACK: usize = 24;

/// The address scanner: runs when the text has a digit (an address ends in a number).
pub(crate) static SCANNER: super::Scanner = super::Scanner {
    name: "address",
    prefilter: has_digit,
    scan: scan_set,
};

fn has_digit(flags: &crate::normalize::TextFlags) -> bool {
    flags.has_digit
}

fn scan_set(f: &[FChar], _: super::DetectorSet, _: &mut super::DetScratch, out: &mut Vec<DetHit>) {
    scan(f, out);
}

/// Appends address hits in `f` to `out`.
pub(crate) fn scan(f: &[FChar], out: &mut Vec<DetHit>) {
    let n = f.len();
    let mut i = 0;
    let mut from = 0; // end of the previous hit
    while i < n {
        if f[i].class != CLASS_DIGIT {
            i += 1;
            continue;
        }
        let num_start = i;
        while i < n && (f[i].class == CLASS_DIGIT || f[i].c == '-') {
            i += 1;
        }
        if i >= n || !is_unit(f[i].c) {
            continue;
        }
        // Look back for street and area markers.
        let lo = num_start.saturating_sub(LOOKBACK).max(from);
        let mut street = None;
        let mut area = None;
        for k in (lo..num_start).rev() {
            let c = f[k].c;
            if is_street(c) {
                street = Some(k);
            } else if is_area(c) {
                area = Some(k);
            }
        }
        let Some(street_at) = street else {
            i += 1;
            continue;
        };
        let first = area.map_or(street_at, |a| a.min(street_at));
        // The place name before the first marker: up to three CJK characters.
        let mut s = first;
        while s > lo && first - s < 3 && is_place_char(f[s - 1].c) {
            s -= 1;
        }
        // Extend over the rest of the number: 3栋2单元502室.
        let mut e = i + 1;
        while e < n && (f[e].class == CLASS_DIGIT || is_unit(f[e].c) || f[e].c == '元') {
            e += 1;
        }
        while s < e && f[s].class == CLASS_SEP {
            s += 1;
        }
        out.push(DetHit {
            det: Detector::Address,
            start: s as u32,
            end: e as u32,
            mask_end: e as u32,
            keep_head: 0,
            keep_tail: 0,
            mask: MaskKind::All,
            high: true,
            needs_context: area.is_none(),
        });
        from = e;
        i = e;
    }
}
