//! Normalization with an offset map.
//!
//! Every character of a message is *folded* on its own: invisible and format characters are
//! dropped, compatibility forms are decomposed (NFKC-style: full-width, circled, mathematical
//! letters), combining marks are dropped, case is folded, traditional Chinese characters become
//! simplified ones, and a few tables cover what NFKC misses (❶ ➃ ⓿ 〇 壹贰叁, small capitals,
//! Cyrillic look-alikes). Each folded character remembers the byte range of the original
//! character it came from, so a match in the folded text maps back to exact original bytes.
//!
//! The folded characters form a sequence of `FChar`s. Configured *separator* characters
//! (spaces, `*`, `.`, ...) stay in that sequence, marked as such: the dictionary matcher skips
//! them (so `法*轮` reads `法轮`) and uses them as word gaps for Latin word boundaries, while the
//! personal-data detectors see them (an e-mail address needs its dots).
//!
//! Folding of the Basic Multilingual Plane is precomputed once into a dense table, so the hot
//! path is one table load per character.

use std::ops::Range;
use std::sync::OnceLock;

use unicode_normalization::char::{decompose_compatible, is_combining_mark};

use crate::t2s_table::T2S;

/// Class of a folded character: a configured separator.
pub(crate) const CLASS_SEP: u8 = 1;
/// Class of a folded character: ASCII letter (Latin word character).
pub(crate) const CLASS_ALPHA: u8 = 2;
/// Class of a folded character: ASCII digit (also a Latin word character).
pub(crate) const CLASS_DIGIT: u8 = 4;
/// Class of a folded character: anything else (CJK, emoji, punctuation).
pub(crate) const CLASS_OTHER: u8 = 0;

/// One folded character and the original bytes it came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FChar {
    /// The folded character.
    pub c: char,
    /// Byte offset of the original character.
    pub start: u32,
    /// Byte offset just past the original character.
    pub end: u32,
    /// `CLASS_*` of `c`.
    pub class: u8,
}

impl FChar {
    /// True for ASCII letters and digits (Latin word characters).
    #[inline]
    pub fn is_word(&self) -> bool {
        self.class & (CLASS_ALPHA | CLASS_DIGIT) != 0
    }
}

/// The set of separator characters skipped between the characters of a word.
#[derive(Clone, Debug)]
pub(crate) struct Separators {
    ascii: u128,
    /// One bit per Basic Multilingual Plane character (8 KiB).
    bmp: Box<[u64]>,
    /// One bit per non-ASCII BMP character that folds to itself, is no separator and so is
    /// class `OTHER` (8 KiB, stays in L1): the fast path for CJK text.
    plain: Box<[u64]>,
    /// Separators outside the BMP, sorted.
    other: Vec<char>,
}

/// Unicode `White_Space` characters outside ASCII (most fold to a space anyway).
const WHITESPACE: &[char] = &[
    '\u{85}', '\u{A0}', '\u{1680}', '\u{2000}', '\u{2001}', '\u{2002}', '\u{2003}', '\u{2004}',
    '\u{2005}', '\u{2006}', '\u{2007}', '\u{2008}', '\u{2009}', '\u{200A}', '\u{2028}', '\u{2029}',
    '\u{202F}', '\u{205F}', '\u{3000}',
];

/// Separators used when the policy does not configure any.
pub(crate) const DEFAULT_SEPARATORS: &str = " \t\r\n*.-_|/\\~`'\"+=^#·•・‧丶";

impl Separators {
    /// Separators from the characters of `chars`, folded; whitespace is always a separator.
    pub fn new(chars: &str) -> Separators {
        let mut s = Separators {
            ascii: 0,
            bmp: vec![0u64; 0x1_0000 / 64].into_boxed_slice(),
            plain: vec![0u64; 0x1_0000 / 64].into_boxed_slice(),
            other: Vec::new(),
        };
        for c in chars
            .chars()
            .chain([' ', '\t', '\r', '\n', '\u{B}', '\u{C}'])
        {
            fold_char(c, |f| s.insert(f));
        }
        for &c in WHITESPACE {
            s.insert(c);
            fold_char(c, |f| s.insert(f));
        }
        s.other.sort_unstable();
        s.other.dedup();
        let table = table();
        for code in 0x80u32..0x1_0000 {
            let idx = code as usize;
            let identity = table.bmp.get(idx).is_some_and(|&e| e == code);
            let sep = s
                .bmp
                .get(idx >> 6)
                .is_some_and(|w| w & (1 << (code & 63)) != 0);
            if identity && !sep {
                if let Some(w) = s.plain.get_mut(idx >> 6) {
                    *w |= 1 << (code & 63);
                }
            }
        }
        s
    }

    /// Whether `c` (non-ASCII, BMP) folds to itself and is class `OTHER`.
    #[inline(always)]
    fn is_plain(&self, c: char) -> bool {
        self.plain
            .get(c as usize >> 6)
            .is_some_and(|w| w & (1u64 << (c as u32 & 63)) != 0)
    }

    fn insert(&mut self, c: char) {
        if c.is_ascii() {
            self.ascii |= 1u128 << (c as u32);
        } else if let Some(w) = self.bmp.get_mut(c as usize >> 6) {
            *w |= 1u64 << (c as u32 & 63);
        } else {
            self.other.push(c);
        }
    }

    /// Whether the (folded) character is a separator.
    #[inline]
    pub fn contains(&self, c: char) -> bool {
        if c.is_ascii() {
            self.ascii & (1u128 << (c as u32)) != 0
        } else if let Some(w) = self.bmp.get(c as usize >> 6) {
            w & (1u64 << (c as u32 & 63)) != 0
        } else {
            !self.other.is_empty() && self.other.binary_search(&c).is_ok()
        }
    }
}

impl Default for Separators {
    fn default() -> Self {
        Separators::new(DEFAULT_SEPARATORS)
    }
}

/// Cheap facts about a folded message, used to skip detectors that cannot fire.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct TextFlags {
    /// Some folded character is an ASCII digit.
    pub has_digit: bool,
    /// Some folded character is `@`.
    pub has_at: bool,
}

/// Folds `text` into `out` (cleared first), and the indices of its non-separator characters
/// into `compact`.
///
/// Texts longer than `u32::MAX` bytes are folded up to the last character boundary before
/// that limit (the gateway caps messages far below it).
pub(crate) fn fold_text(
    text: &str,
    seps: &Separators,
    out: &mut Vec<FChar>,
    compact: &mut Vec<u32>,
) -> TextFlags {
    out.clear();
    compact.clear();
    out.reserve(text.len());
    compact.reserve(text.len());
    let table = table();
    let mut flags = TextFlags::default();
    let limit = u32::MAX as usize;
    for (i, ch) in text.char_indices() {
        let end = i + ch.len_utf8();
        if end > limit {
            break;
        }
        let (start, end) = (i as u32, end as u32);
        if seps.is_plain(ch) {
            compact.push(out.len() as u32);
            out.push(FChar {
                c: ch,
                start,
                end,
                class: CLASS_OTHER,
            });
            continue;
        }
        let mut push = |c: char| {
            let class = classify(c, seps);
            flags.has_digit |= class == CLASS_DIGIT;
            flags.has_at |= c == '@';
            if class != CLASS_SEP {
                compact.push(out.len() as u32);
            }
            out.push(FChar {
                c,
                start,
                end,
                class,
            });
        };
        if ch.is_ascii() {
            push(ch.to_ascii_lowercase());
            continue;
        }
        let code = ch as u32;
        if code < 0x1_0000 {
            let e = table.bmp[code as usize];
            match e >> 30 {
                TAG_ONE => push(char::from_u32(e & CHAR_MASK).unwrap_or(ch)),
                TAG_DROP => {}
                _ => {
                    let at = (e & CHAR_MASK) as usize;
                    let len = ((e >> 21) & 0xff) as usize;
                    for &c in table.many.get(at..at + len).unwrap_or(&[]) {
                        push(c);
                    }
                }
            }
        } else {
            fold_char(ch, push);
        }
    }
    flags
}

#[inline]
fn classify(c: char, seps: &Separators) -> u8 {
    if seps.contains(c) {
        CLASS_SEP
    } else if c.is_ascii_lowercase() {
        CLASS_ALPHA
    } else if c.is_ascii_digit() {
        CLASS_DIGIT
    } else {
        CLASS_OTHER
    }
}

const TAG_ONE: u32 = 0;
const TAG_DROP: u32 = 1;
const TAG_MANY: u32 = 2;
const CHAR_MASK: u32 = (1 << 21) - 1;

struct FoldTable {
    bmp: Box<[u32]>,
    many: Vec<char>,
}

fn table() -> &'static FoldTable {
    static TABLE: OnceLock<FoldTable> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut bmp = vec![0u32; 0x1_0000].into_boxed_slice();
        let mut many = Vec::new();
        let mut buf = Vec::with_capacity(8);
        for (code, slot) in bmp.iter_mut().enumerate() {
            let Some(ch) = char::from_u32(code as u32) else {
                // Surrogates never occur in a `str`.
                *slot = TAG_DROP << 30;
                continue;
            };
            buf.clear();
            fold_char(ch, |c| buf.push(c));
            *slot = match buf.as_slice() {
                [] => TAG_DROP << 30,
                [c] => *c as u32,
                more => {
                    let at = many.len() as u32;
                    many.extend_from_slice(more);
                    (TAG_MANY << 30) | ((more.len() as u32 & 0xff) << 21) | at
                }
            };
        }
        FoldTable { bmp, many }
    })
}

/// Folds one character, calling `emit` for each folded character (none when it is dropped).
pub(crate) fn fold_char(ch: char, mut emit: impl FnMut(char)) {
    if is_invisible(ch) {
        return;
    }
    if let Some(s) = special(ch) {
        s.chars().for_each(emit);
        return;
    }
    decompose_compatible(ch, |d| {
        if is_combining_mark(d) || is_invisible(d) {
            return;
        }
        for l in d.to_lowercase() {
            if is_combining_mark(l) {
                continue;
            }
            let s = t2s(l);
            match special(s) {
                Some(x) => x.chars().for_each(&mut emit),
                None => emit(s),
            }
        }
    });
}

/// The simplified form of a traditional Chinese character, or the character itself.
pub(crate) fn t2s(c: char) -> char {
    if (c as u32) < 0x3400 {
        return c;
    }
    match T2S.binary_search_by_key(&c, |&(t, _)| t) {
        Ok(i) => T2S.get(i).map_or(c, |&(_, s)| s),
        Err(_) => c,
    }
}

/// Zero-width, bidirectional, format and variation-selector characters, dropped entirely.
fn is_invisible(c: char) -> bool {
    matches!(c as u32,
        0x80..=0x9F
        | 0xAD
        | 0x34F
        | 0x61C
        | 0x115F..=0x1160
        | 0x17B4..=0x17B5
        | 0x180B..=0x180F
        | 0x200B..=0x200F
        | 0x202A..=0x202E
        | 0x2060..=0x206F
        | 0x3164
        | 0xFE00..=0xFE0F
        | 0xFEFF
        | 0xFFA0
        | 0xFFF9..=0xFFFB
        | 0x1D173..=0x1D17A
        | 0xE0000..=0xE007F
        | 0xE0100..=0xE01EF)
}

/// Folds that NFKC does not do: dingbat and double-circled digits, Chinese numerals used to
/// spell digits, Latin small capitals and the most common Cyrillic/Greek look-alikes.
fn special(c: char) -> Option<&'static str> {
    const DIGITS: [&str; 21] = [
        "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15", "16",
        "17", "18", "19", "20",
    ];
    let code = c as u32;
    let digit = |n: u32| DIGITS.get(n as usize).copied();
    match code {
        // ❶..❿ dingbat negative circled, ➀..➉ circled sans-serif, ➊..➓ negative circled sans-serif
        0x2776..=0x277F => digit(code - 0x2776 + 1),
        0x2780..=0x2789 => digit(code - 0x2780 + 1),
        0x278A..=0x2793 => digit(code - 0x278A + 1),
        // ⓫..⓴ negative circled 11..20, ⓵..⓾ double circled 1..10, ⓿
        0x24EB..=0x24F4 => digit(code - 0x24EB + 11),
        0x24F5..=0x24FE => digit(code - 0x24F5 + 1),
        0x24FF => digit(0),
        _ => match c {
            '〇' => Some("0"),
            '壹' => Some("1"),
            '贰' | '貳' | '弍' => Some("2"),
            '叁' | '參' | '弎' => Some("3"),
            '肆' => Some("4"),
            '伍' => Some("5"),
            '陆' | '陸' => Some("6"),
            '柒' => Some("7"),
            '捌' => Some("8"),
            '玖' => Some("9"),
            // Latin letter small capitals (not NFKC-decomposable).
            'ᴀ' => Some("a"),
            'ʙ' => Some("b"),
            'ᴄ' => Some("c"),
            'ᴅ' => Some("d"),
            'ᴇ' => Some("e"),
            'ꜰ' => Some("f"),
            'ɢ' => Some("g"),
            'ʜ' => Some("h"),
            'ɪ' => Some("i"),
            'ᴊ' => Some("j"),
            'ᴋ' => Some("k"),
            'ʟ' => Some("l"),
            'ᴍ' => Some("m"),
            'ɴ' => Some("n"),
            'ᴏ' => Some("o"),
            'ᴘ' => Some("p"),
            'ꞯ' => Some("q"),
            'ʀ' => Some("r"),
            'ꜱ' => Some("s"),
            'ᴛ' => Some("t"),
            'ᴜ' => Some("u"),
            'ᴠ' => Some("v"),
            'ᴡ' => Some("w"),
            'ʏ' => Some("y"),
            'ᴢ' => Some("z"),
            // Cyrillic and Greek letters that look like Latin ones (after lowercasing).
            'а' => Some("a"),
            'в' => Some("b"),
            'е' => Some("e"),
            'к' => Some("k"),
            'м' => Some("m"),
            'н' => Some("h"),
            'о' | 'ο' => Some("o"),
            'р' | 'ρ' => Some("p"),
            'с' => Some("c"),
            'т' => Some("t"),
            'у' => Some("y"),
            'х' | 'χ' => Some("x"),
            'і' | 'ι' => Some("i"),
            'ј' => Some("j"),
            'ѕ' => Some("s"),
            'ԁ' => Some("d"),
            'ν' => Some("v"),
            _ => None,
        },
    }
}

/// A normalized text with the original byte range of every normalized character.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Normalized {
    /// The normalized text, separators removed.
    pub text: String,
    /// For every character of `text`, in order, the byte range of the original character it
    /// came from (several normalized characters may share one range, e.g. `㎏` -> `kg`).
    pub offsets: Vec<Range<usize>>,
}

/// Normalizes `text` with the default separators (see [`crate::Moderator::normalize`] for the
/// separators of a loaded rule set). The result is what the dictionary matcher sees.
pub fn normalize(text: &str) -> Normalized {
    normalize_with(text, &Separators::default())
}

pub(crate) fn normalize_with(text: &str, seps: &Separators) -> Normalized {
    let mut f = Vec::new();
    fold_text(text, seps, &mut f, &mut Vec::new());
    let mut n = Normalized::default();
    for fc in f.iter().filter(|fc| fc.class != CLASS_SEP) {
        n.text.push(fc.c);
        n.offsets.push(fc.start as usize..fc.end as usize);
    }
    n
}

/// Normalizes a rule pattern (a deny word, an allow phrase, a marker) the way messages are
/// normalized: folded, separators removed.
pub(crate) fn normalize_pattern(p: &str, seps: &Separators) -> String {
    let table = table();
    let mut out = String::with_capacity(p.len());
    let mut emit = |c: char| {
        if !seps.contains(c) {
            out.push(c);
        }
    };
    for ch in p.chars() {
        let code = ch as u32;
        if code >= 0x1_0000 {
            fold_char(ch, &mut emit);
            continue;
        }
        let e = table
            .bmp
            .get(code as usize)
            .copied()
            .unwrap_or(TAG_DROP << 30);
        match e >> 30 {
            TAG_ONE => emit(char::from_u32(e & CHAR_MASK).unwrap_or(ch)),
            TAG_DROP => {}
            _ => {
                let at = (e & CHAR_MASK) as usize;
                let len = ((e >> 21) & 0xff) as usize;
                for &c in table.many.get(at..at + len).unwrap_or(&[]) {
                    emit(c);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> String {
        normalize(s).text
    }

    #[test]
    fn folds_width_case_and_separators() {
        assert_eq!(n("ｆｕｃｋ"), "fuck");
        assert_eq!(n("F.U.C.K"), "fuck");
        assert_eq!(n("法*轮"), "法轮");
        assert_eq!(n("赌 博"), "赌博");
        assert_eq!(n("１３８"), "138");
    }

    #[test]
    fn drops_invisible_and_combining() {
        assert_eq!(n("法\u{200B}轮\u{FEFF}"), "法轮");
        assert_eq!(n("f\u{0338}u\u{0338}c\u{0338}k\u{0338}"), "fuck");
        assert_eq!(n("\u{202E}abc\u{202C}"), "abc");
        assert_eq!(n("fück"), "fuck");
    }

    #[test]
    fn folds_what_nfkc_misses() {
        assert_eq!(n("❶➃⓿〇"), "1400");
        assert_eq!(n("壹贰叁"), "123");
        assert_eq!(n("ꜰᴜᴄᴋ"), "fuck");
        assert_eq!(n("①②"), "12");
        assert_eq!(n("𝐟𝐮𝐜𝐤"), "fuck");
        assert_eq!(n("ⓕⓤⓒⓚ"), "fuck");
        assert_eq!(n("fսck"), "fսck"); // Armenian is left alone
        assert_eq!(n("sех"), "sex"); // Cyrillic е and х
    }

    #[test]
    fn folds_traditional_to_simplified() {
        assert_eq!(n("五星紅旗"), "五星红旗");
        assert_eq!(n("法輪功"), "法轮功");
        assert_eq!(n("賭博"), "赌博");
    }

    #[test]
    fn offsets_point_at_original_characters() {
        let s = "a\u{200B}法＊輪😀";
        let r = normalize(s);
        assert_eq!(r.text, "a法轮😀");
        let back: Vec<&str> = r.offsets.iter().map(|o| &s[o.clone()]).collect();
        assert_eq!(back, ["a", "法", "輪", "😀"]);
        let r = normalize("㎏");
        assert_eq!(r.text, "kg");
        assert_eq!(r.offsets, [0..3, 0..3]);
    }
}
