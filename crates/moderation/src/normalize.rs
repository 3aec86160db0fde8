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
use unicode_properties::{GeneralCategory, GeneralCategoryGroup, UnicodeGeneralCategory};

use crate::jp2s_table::JP2S;
use crate::t2s_table::T2S;

/// Class of a folded character: a configured separator.
pub(crate) const CLASS_SEP: u8 = 1;
/// Class of a folded character: ASCII letter (Latin word character).
pub(crate) const CLASS_ALPHA: u8 = 2;
/// Class of a folded character: ASCII digit (also a Latin word character).
pub(crate) const CLASS_DIGIT: u8 = 4;
/// Class bit of a digit read as a letter inside a Latin word (leetspeak), always with
/// `CLASS_ALPHA`: the matcher sees the letter, [`FChar::shown`] gives the digit back.
pub(crate) const CLASS_LEET: u8 = 8;
/// Class of a folded character: anything else (CJK, emoji, punctuation).
pub(crate) const CLASS_OTHER: u8 = 0;

/// One folded character and the original bytes it came from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
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

    /// The folded character as written: the digit of a leetspeak letter (for the detectors).
    #[inline]
    pub fn shown(&self) -> char {
        if self.class & CLASS_LEET != 0 {
            unleet(self.c)
        } else {
            self.c
        }
    }
}

/// The set of separator characters skipped between the characters of a word.
#[derive(Clone, Debug)]
pub(crate) struct Separators {
    ascii: u128,
    /// One bit per Basic Multilingual Plane character (8 KiB).
    bmp: Box<[u64]>,
    /// Two bits per BMP character (16 KiB, stays in L1): its `FAST_*` kind, what the plain-CJK
    /// loop of [`fold_into`] does with it.
    fast: Box<[u64; 2048]>,
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
            fast: Box::new([0u64; 2048]),
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
        // By class: every punctuation, symbol and space character of the Basic Multilingual
        // Plane (outside it, `contains` asks the category table).
        for code in 0u32..0x1_0000 {
            if let Some(c) = char::from_u32(code) {
                if is_separator_class(c) {
                    s.insert(c);
                }
            }
        }
        s.other.sort_unstable();
        s.other.dedup();
        let table = table();
        for code in 0x80u32..0x1_0000 {
            let (Some(c), Some(&e)) = (char::from_u32(code), table.bmp.get(code as usize)) else {
                continue;
            };
            // Only characters that fold to one character (`TAG_ONE`: the entry is that
            // character) and whose folding sets no flag but the numeral's.
            let Some(folded) = char::from_u32(e).filter(|_| e >> 30 == TAG_ONE) else {
                continue;
            };
            let kind = if fast_fold(code) != folded as u32 {
                FAST_STOP
            } else if s.contains(folded) {
                if folded == '@' {
                    FAST_STOP
                } else {
                    FAST_SEP
                }
            } else if folded == c {
                if cjk_digit(c).is_some() {
                    FAST_NUMERAL
                } else {
                    FAST_PLAIN
                }
            } else {
                FAST_STOP
            };
            if let Some(w) = s.fast.get_mut(code as usize >> 5) {
                *w |= kind << ((code & 31) * 2);
            }
        }
        s
    }

    /// The `FAST_*` kinds of [`Separators::fast_kind`], two bits per code point (for the
    /// plain-CJK loop).
    #[inline(always)]
    fn fast_bits(&self) -> &[u64; 2048] {
        &self.fast
    }

    /// The `FAST_*` kind of a BMP character (`FAST_STOP` outside the BMP).
    #[inline(always)]
    fn fast_kind(&self, c: char) -> u64 {
        let code = c as u32;
        if code < 0x1_0000 {
            fast_kind(&self.fast, code)
        } else {
            FAST_STOP
        }
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
            is_separator_class(c)
                || (!self.other.is_empty() && self.other.binary_search(&c).is_ok())
        }
    }
}

/// Whether `c` separates words by its Unicode general category: punctuation (`P*`), symbols
/// (`S*`: math, currency, modifiers, arrows, box drawing, dingbats, emoji) and spaces (`Z*`),
/// plus the braille blank U+2800, which renders as nothing.
pub(crate) fn is_separator_class(c: char) -> bool {
    if c == '\u{2800}' {
        return true;
    }
    matches!(
        c.general_category_group(),
        GeneralCategoryGroup::Punctuation
            | GeneralCategoryGroup::Symbol
            | GeneralCategoryGroup::Separator
    )
}

/// Whether a (folded) separator character is natural prose punctuation that ends a word or a
/// clause (comma, enumeration comma, full stop, colon, semicolon, question and exclamation
/// marks) or opens/closes a quotation or bracket (categories `Ps`, `Pe`, `Pi`, `Pf`). A
/// dictionary match across such a character is judged by the boundary rule (see
/// [`crate::Moderator`]); the ASCII `.`, `*`, `-`, `_` and symbols are filler, not prose.
pub(crate) fn is_clause_break(c: char) -> bool {
    matches!(
        c,
        ',' | ';' | ':' | '!' | '?' | '、' | '。' | '｡' | '､' | '﹐' | '﹑' | '…' | '‥'
    ) || matches!(
        c.general_category(),
        GeneralCategory::OpenPunctuation
            | GeneralCategory::ClosePunctuation
            | GeneralCategory::InitialPunctuation
            | GeneralCategory::FinalPunctuation
    )
}

/// The value of a Chinese numeral written as a digit (一三八, 零, 幺, 两), for the number
/// detectors only: the dictionary matcher sees the character itself. (壹贰叁 and 〇 fold to
/// ASCII digits already.)
pub(crate) fn cjk_digit(c: char) -> Option<u8> {
    Some(match c {
        '零' => 0,
        '一' | '幺' => 1,
        '二' | '两' | '兩' => 2,
        '三' => 3,
        '四' => 4,
        '五' => 5,
        '六' => 6,
        '七' => 7,
        '八' => 8,
        '九' => 9,
        _ => return None,
    })
}

/// Kind of a BMP character for the plain-CJK loop: anything it does not handle (ASCII,
/// characters that fold to something else or to nothing, `@`).
const FAST_STOP: u64 = 0;
/// Kind: folds to itself, class `OTHER`, no Chinese numeral (most CJK text).
const FAST_PLAIN: u64 = 1;
/// Kind: folds to one separator other than `@` (`，` -> `,`, `。`, `？` -> `?`, `“`).
const FAST_SEP: u64 = 2;
/// Kind: a Chinese numeral that folds to itself (`一`, `二`, `两`...): as `FAST_PLAIN`, and it
/// counts for [`TextFlags::has_numeral`] and [`TextFlags::digit_values`].
const FAST_NUMERAL: u64 = 3;

/// What a character of a `FAST_*` kind other than `FAST_STOP` folds to: the full-width
/// forms of ASCII punctuation (U+FF01..U+FF5E, `，` `？` `！`) to the ASCII character, all
/// others to themselves (characters that fold otherwise are `FAST_STOP`).
#[inline(always)]
fn fast_fold(code: u32) -> u32 {
    if code.wrapping_sub(0xFF01) < 0x5E {
        code - 0xFEE0
    } else {
        code
    }
}

/// The `FAST_*` kind of the BMP code point `code` in the two-bit table `fast`.
#[inline(always)]
fn fast_kind(fast: &[u64; 2048], code: u32) -> u64 {
    (fast[(code as usize >> 5) & 2047] >> ((code & 31) * 2)) & 3
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
    /// Some folded character is an ASCII letter.
    pub has_alpha: bool,
    /// Some character is a Chinese numeral (一, 零, 幺...).
    pub has_numeral: bool,
    /// How many characters are digits or Chinese numerals (counted before leetspeak reads
    /// some digits as letters, so never fewer than the number scanner sees).
    pub digit_values: u32,
}

/// Leetspeak: the letter a digit stands for inside a Latin word (`s3x`, `h4ck`, `sh1t`).
fn leet(c: char) -> Option<char> {
    Some(match c {
        '0' => 'o',
        '1' => 'i',
        '3' => 'e',
        '4' => 'a',
        '5' => 's',
        '7' => 't',
        '8' => 'b',
        _ => return None,
    })
}

/// The digit a leetspeak letter came from (the inverse of `leet`).
fn unleet(c: char) -> char {
    match c {
        'o' => '0',
        'i' => '1',
        'e' => '3',
        'a' => '4',
        's' => '5',
        't' => '7',
        'b' => '8',
        _ => c,
    }
}

fn is_regional_indicator(c: char) -> bool {
    ('\u{1F1E6}'..='\u{1F1FF}').contains(&c)
}

/// [`fold_into`] a fresh buffer: for one-off folds (rule patterns, [`normalize`], tests).
pub(crate) fn fold(text: &str, seps: &Separators) -> FoldBuf {
    let mut buf = FoldBuf::default();
    fold_into(text, seps, &mut buf, &mut Vec::new());
    buf
}

/// A folded text: the folded characters, the indices of those the matcher sees (`compact`)
/// and those characters themselves (`chars[k]` is `fchars[compact[k]].c`: what the matcher
/// and the classifier read, written as they are folded instead of gathered afterwards).
/// Kept from one check to the next: the buffers only grow, and [`fold_into`] writes them by
/// index up to a length of its own, so that its plain-CJK loop keeps every length in a
/// register (a `Vec::push` may reallocate, which keeps the vector's length in memory).
#[derive(Default)]
pub(crate) struct FoldBuf {
    f: Vec<FChar>,
    compact: Vec<u32>,
    chars: Vec<char>,
    nf: usize,
    nc: usize,
}

impl FoldBuf {
    /// The folded characters.
    #[inline]
    pub fn fchars(&self) -> &[FChar] {
        self.f.get(..self.nf).unwrap_or(&[])
    }

    /// The indices in [`FoldBuf::fchars`] of the characters the matcher sees.
    #[inline]
    pub fn compact(&self) -> &[u32] {
        self.compact.get(..self.nc).unwrap_or(&[])
    }

    /// The characters the matcher sees (those of [`FoldBuf::compact`]).
    #[inline]
    pub fn chars(&self) -> &[char] {
        self.chars.get(..self.nc).unwrap_or(&[])
    }
}

/// Writes `x` at `i` of `v`, which is at most `v.len()` (appended when it is).
#[inline(always)]
fn put<T: Copy>(v: &mut Vec<T>, i: usize, x: T) {
    match v.get_mut(i) {
        Some(slot) => *slot = x,
        None => v.push(x),
    }
}

/// The writing side of [`fold_into`]: the buffers and the lengths written so far (locals,
/// so they stay in registers).
struct Sink<'a> {
    f: &'a mut Vec<FChar>,
    compact: &'a mut Vec<u32>,
    chars: &'a mut Vec<char>,
    nf: usize,
    nc: usize,
}

impl Sink<'_> {
    /// Appends a folded character.
    #[inline(always)]
    fn push(&mut self, x: FChar) {
        put(self.f, self.nf, x);
        self.nf += 1;
    }

    /// Gives the matcher the next folded character (call before [`Sink::push`]ing it).
    #[inline(always)]
    fn push_compact(&mut self, c: char) {
        put(self.compact, self.nc, self.nf as u32);
        put(self.chars, self.nc, c);
        self.nc += 1;
    }

    /// Takes the last character back from the matcher.
    #[inline(always)]
    fn pop_compact(&mut self) {
        self.nc = self.nc.saturating_sub(1);
    }
}

/// Folds `text` into `buf`: the folded characters, and the indices of the characters the
/// dictionary matcher sees with those characters: no separators, runs of one CJK character
/// (or of three or more of one Latin letter) collapsed to one character, digits inside Latin
/// words read as the letters they stand for (leetspeak). `rtl` receives the ranges of the
/// folded characters that a right-to-left override (U+202E, U+2067) displays reversed.
///
/// Texts longer than `u32::MAX` bytes are folded up to the last character boundary before
/// that limit (the gateway caps messages far below it).
pub(crate) fn fold_into(
    text: &str,
    seps: &Separators,
    buf: &mut FoldBuf,
    rtl: &mut Vec<(u32, u32)>,
) -> TextFlags {
    fold_impl::<true>(text, seps, buf, rtl)
}

/// [`fold_into`], with its plain-CJK loop (`FAST`) or without it: every character through
/// the general path (the tests compare the two).
#[inline(always)]
fn fold_impl<const FAST: bool>(
    text: &str,
    seps: &Separators,
    buf: &mut FoldBuf,
    rtl: &mut Vec<(u32, u32)>,
) -> TextFlags {
    rtl.clear();
    let limit = u32::MAX as usize;
    // Room for one folded character per byte (more only after folds that expand, which
    // append): the plain-CJK loop writes by index within it.
    let room = text.len().min(limit) + 1;
    if buf.f.len() < room {
        buf.f.resize(room, FChar::default());
    }
    if buf.compact.len() < room {
        buf.compact.resize(room, 0);
    }
    if buf.chars.len() < room {
        buf.chars.resize(room, '\0');
    }
    let mut sink = Sink {
        f: &mut buf.f,
        compact: &mut buf.compact,
        chars: &mut buf.chars,
        nf: 0,
        nc: 0,
    };
    let table = table();
    // Kept in a local that is only ever passed to inlined functions, so that it lives in
    // registers (a closure capturing it kept it in memory on every character).
    let mut acc = Acc::default();
    let mut rtl_from: Option<u32> = None;
    // Regional indicators: a run of exactly two is a flag (a separator), others are letters.
    let mut ri_left = 0usize;
    let mut ri_flag = false;
    let bytes = text.as_bytes();
    let within_limit = bytes.get(..bytes.len().min(limit)).unwrap_or(bytes);
    let mut next = 0usize;
    while let Some(&b0) = bytes.get(next) {
        let i = next;
        // Decoded by hand for ASCII and three-byte sequences (most CJK text): `text` is valid
        // UTF-8, so a lead byte E0..EF is followed by two continuation bytes.
        let (ch, len) = match (b0, bytes.get(i + 1), bytes.get(i + 2)) {
            (0..=0x7F, _, _) => (char::from(b0), 1),
            (0xE0..=0xEF, Some(&b1), Some(&b2)) => {
                let code = (u32::from(b0 & 0x0F) << 12)
                    | (u32::from(b1 & 0x3F) << 6)
                    | u32::from(b2 & 0x3F);
                (
                    char::from_u32(code).unwrap_or(char::REPLACEMENT_CHARACTER),
                    3,
                )
            }
            _ => match text.get(i..).and_then(|t| t.chars().next()) {
                Some(c) => (c, c.len_utf8()),
                None => break,
            },
        };
        next = i + len;
        let end = next;
        if end > limit {
            break;
        }
        let (start, end) = (i as u32, end as u32);
        if FAST && len == 3 && seps.fast_kind(ch) != FAST_STOP {
            // Fast path for a run of CJK text from this character on: the three-byte
            // characters that fold to themselves, the Chinese numerals and the separators
            // that fold to one character (`，` `。` `？`), without the general dispatch.
            // Written by index into the buffers' room (the run ends where it runs out: the
            // general path appends).
            let (nf, nc) = (sink.nf, sink.nc);
            let run = match (
                sink.f.get_mut(nf..),
                sink.compact.get_mut(nc..),
                sink.chars.get_mut(nc..),
                within_limit.get(i..),
            ) {
                (Some(f), Some(compact), Some(chars), Some(rest)) => plain_run(
                    rest,
                    start,
                    seps.fast_bits(),
                    acc.last,
                    (f, compact, chars),
                    nf as u32,
                ),
                _ => Run::default(),
            };
            if run.folded > 0 {
                let (folded, matched) = (run.folded as usize, run.matched as usize);
                if let Some(&c) = matched.checked_sub(1).and_then(|m| sink.chars.get(nc + m)) {
                    // `run` only counts for Latin letters: after a CJK character its value
                    // is never read before a new character resets it.
                    acc.last = c;
                    acc.run = 1;
                }
                acc.flags.has_numeral |= run.numerals > 0;
                acc.flags.digit_values += run.numerals;
                next = i + 3 * folded;
                (sink.nf, sink.nc) = (nf + folded, nc + matched);
                continue;
            }
        }
        if ch.is_ascii() {
            if ch == '\n' {
                if let Some(from) = rtl_from.take() {
                    rtl.push((from, sink.nf as u32));
                }
            }
            push_folded(
                &mut acc,
                &mut sink,
                seps,
                ch.to_ascii_lowercase(),
                start,
                end,
            );
            continue;
        }
        match ch {
            '\u{202E}' | '\u{2067}' if rtl_from.is_none() => {
                rtl_from = Some(sink.nf as u32);
            }
            '\u{202C}' | '\u{2069}' => {
                if let Some(from) = rtl_from.take() {
                    rtl.push((from, sink.nf as u32));
                }
            }
            _ => {}
        }
        if is_regional_indicator(ch) {
            if ri_left == 0 {
                ri_left = text[i..]
                    .chars()
                    .take_while(|&c| is_regional_indicator(c))
                    .count();
                ri_flag = ri_left == 2;
            }
            ri_left -= 1;
            if ri_flag {
                sink.push(FChar {
                    c: ch,
                    start,
                    end,
                    class: CLASS_SEP,
                });
                continue;
            }
        }
        let code = ch as u32;
        if code < 0x1_0000 {
            let e = table
                .bmp
                .get(code as usize)
                .copied()
                .unwrap_or(TAG_DROP << 30);
            match e >> 30 {
                TAG_ONE => {
                    let c = char::from_u32(e & CHAR_MASK).unwrap_or(ch);
                    push_folded(&mut acc, &mut sink, seps, c, start, end);
                }
                TAG_DROP => {}
                _ => {
                    let at = (e & CHAR_MASK) as usize;
                    let len = ((e >> 21) & 0xff) as usize;
                    for &c in table.many.get(at..at + len).unwrap_or(&[]) {
                        push_folded(&mut acc, &mut sink, seps, c, start, end);
                    }
                }
            }
        } else {
            // Outside the BMP (emoji, mathematical letters): fold into a small buffer first.
            let mut cbuf = ['\0'; 32];
            let mut k = 0usize;
            fold_char(ch, |c| {
                if let Some(slot) = cbuf.get_mut(k) {
                    *slot = c;
                    k += 1;
                }
            });
            for &c in cbuf.get(..k).unwrap_or(&[]) {
                push_folded(&mut acc, &mut sink, seps, c, start, end);
            }
        }
    }
    if let Some(from) = rtl_from {
        rtl.push((from, sink.nf as u32));
    }
    let (nf, nc) = (sink.nf, sink.nc);
    buf.nf = nf;
    buf.nc = nc;
    let flags = acc.flags;
    if flags.has_digit && flags.has_alpha {
        if let Some(f) = buf.f.get_mut(..nf) {
            fold_leet(f);
        }
        // Some digits now read as letters: the matcher's characters again.
        let f = &buf.f;
        for (c, &i) in buf.chars.iter_mut().zip(buf.compact.iter().take(nc)) {
            *c = f.get(i as usize).map_or(crawdad::END_MARKER, |x| x.c);
        }
    }
    flags
}

/// What [`plain_run`] wrote.
#[derive(Default)]
struct Run {
    /// Folded characters written, one per three-byte input character read.
    folded: u32,
    /// Characters given to the matcher.
    matched: u32,
    /// How many of the characters were Chinese numerals.
    numerals: u32,
}

/// The plain-CJK loop of [`fold_into`], out of line so that all it carries stays in
/// registers: from the start of `rest` (at byte `at` of the text), the three-byte characters
/// of a `FAST_*` kind other than `FAST_STOP` (`fast`, two bits each), folded exactly as
/// [`push_folded`] would (by [`fast_fold`]): written to the first slice of `out` (the folded
/// characters), and those that are no separator and do not repeat the one before (`last` at
/// first) to the second (as indices from `nf` on) and the third. Stops at the first other
/// character or when a slice is full.
#[inline(never)]
fn plain_run(
    rest: &[u8],
    at: u32,
    fast: &[u64; 2048],
    mut last: char,
    out: (&mut [FChar], &mut [u32], &mut [char]),
    nf: u32,
) -> Run {
    let (f, compact, chars) = out;
    // One bound for the three slices and the input (the matcher's index `j` never passes
    // the folded characters' `k`).
    let n = f
        .len()
        .min(compact.len())
        .min(chars.len())
        .min(rest.len() / 3);
    let (Some(f), Some(compact), Some(chars), Some(rest)) = (
        f.get_mut(..n),
        compact.get_mut(..n),
        chars.get_mut(..n),
        rest.get(..3 * n),
    ) else {
        return Run::default();
    };
    let (mut k, mut j, mut numerals) = (0u32, 0usize, 0u32);
    for (fslot, b) in f.iter_mut().zip(rest.chunks_exact(3)) {
        let &[b0, b1, b2] = b else { break };
        if b0 & 0xF0 != 0xE0 {
            break;
        }
        let code = decode3(b0, b1, b2);
        let kind = fast_kind(fast, code);
        if kind == FAST_STOP {
            break;
        }
        let start = at + 3 * k;
        if kind == FAST_SEP {
            let Some(c) = char::from_u32(fast_fold(code)) else {
                break;
            };
            *fslot = FChar {
                c,
                start,
                end: start + 3,
                class: CLASS_SEP,
            };
        } else {
            // A character of a kind is never a surrogate (those are not characters).
            let Some(c) = char::from_u32(code) else {
                break;
            };
            if kind == FAST_NUMERAL {
                numerals += 1;
            }
            if c != last {
                let (Some(cslot), Some(chslot)) = (compact.get_mut(j), chars.get_mut(j)) else {
                    break;
                };
                *cslot = nf.wrapping_add(k);
                *chslot = c;
                j += 1;
                last = c;
            }
            *fslot = FChar {
                c,
                start,
                end: start + 3,
                class: CLASS_OTHER,
            };
        }
        k += 1;
    }
    Run {
        folded: k,
        matched: j as u32,
        numerals,
    }
}

/// The code point of a three-byte UTF-8 sequence.
#[inline(always)]
fn decode3(b0: u8, b1: u8, b2: u8) -> u32 {
    (u32::from(b0 & 0x0F) << 12) | (u32::from(b1 & 0x3F) << 6) | u32::from(b2 & 0x3F)
}

/// What [`fold_into`] carries from one character to the next.
#[derive(Default)]
struct Acc {
    flags: TextFlags,
    /// Last character given to `compact`.
    last: char,
    /// How many times it repeated.
    run: u32,
}

/// Appends one folded character (from the original bytes `start..end`), and gives it to the
/// matcher unless it is a separator or a repeat.
#[inline(always)]
fn push_folded(
    acc: &mut Acc,
    sink: &mut Sink<'_>,
    seps: &Separators,
    c: char,
    start: u32,
    end: u32,
) {
    let class = classify(c, seps);
    let flags = &mut acc.flags;
    flags.has_digit |= class == CLASS_DIGIT;
    flags.has_alpha |= class == CLASS_ALPHA;
    flags.has_at |= c == '@';
    let numeral = class == CLASS_OTHER && cjk_digit(c).is_some();
    flags.has_numeral |= numeral;
    flags.digit_values += u32::from(class == CLASS_DIGIT || numeral);
    if class != CLASS_SEP {
        if c == acc.last && class != CLASS_DIGIT {
            continue_run(sink, &mut acc.run, c, start, end, class);
            return;
        }
        acc.last = c;
        acc.run = 1;
        sink.push_compact(c);
    }
    sink.push(FChar {
        c,
        start,
        end,
        class,
    });
}

/// A repeat of the last matcher character: kept in `out` (the detectors and masking see it)
/// but not given to the matcher. Latin letters collapse from three repeats on (`fuuuck`, while
/// `ass` keeps its double letter); other characters from two (`赌赌博博`).
#[inline]
fn continue_run(sink: &mut Sink<'_>, run: &mut u32, c: char, start: u32, end: u32, class: u8) {
    *run += 1;
    if class == CLASS_ALPHA {
        if *run == 2 {
            sink.push_compact(c);
        } else if *run == 3 {
            sink.pop_compact();
        }
    }
    sink.push(FChar {
        c,
        start,
        end,
        class,
    });
}

/// Reads digits glued to a Latin letter as letters (`s3x` -> `sex`) inside Latin words of at
/// least two letters, left to right so that `l33t` chains (an identity number ending in `x`,
/// `h5` or `4s` stay digits). Only what the matcher sees changes: [`FChar::shown`] gives the
/// detectors the digit back.
fn fold_leet(out: &mut [FChar]) {
    let n = out.len();
    let mut i = 0;
    while i < n {
        if !out.get(i).is_some_and(FChar::is_word) {
            i += 1;
            continue;
        }
        let start = i;
        while out.get(i).is_some_and(FChar::is_word) {
            i += 1;
        }
        let Some(word) = out.get_mut(start..i) else {
            break;
        };
        let letters = word.iter().filter(|x| x.class == CLASS_ALPHA).count();
        if letters < 2 || letters == word.len() {
            continue;
        }
        for k in 0..word.len() {
            let Some(l) = word
                .get(k)
                .filter(|x| x.class == CLASS_DIGIT)
                .and_then(|x| leet(x.c))
            else {
                continue;
            };
            let alpha = |j: Option<usize>| {
                j.and_then(|j| word.get(j))
                    .is_some_and(|x| x.class & CLASS_ALPHA != 0)
            };
            if alpha(k.checked_sub(1)) || alpha(Some(k + 1)) {
                if let Some(fc) = word.get_mut(k) {
                    fc.c = l;
                    fc.class = CLASS_ALPHA | CLASS_LEET;
                }
            }
        }
    }
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
    if let Some(c) = stylised(ch).or_else(|| confusable(ch)) {
        emit(c);
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

/// Enclosed Latin capitals that NFKC leaves alone: squared, negative circled, negative squared
/// and regional-indicator letters (🄰 🅐 🅰 🇦).
fn stylised(c: char) -> Option<char> {
    let code = c as u32;
    let base = match code {
        0x1F130..=0x1F149 => 0x1F130,
        0x1F150..=0x1F169 => 0x1F150,
        0x1F170..=0x1F189 => 0x1F170,
        0x1F1E6..=0x1F1FF => 0x1F1E6,
        _ => return None,
    };
    char::from_u32('a' as u32 + code - base)
}

/// The Latin letter a letter of another alphabet is confusable with, by the UTS #39 skeleton
/// (Unicode's confusables data): Greek, Cyrillic, Armenian, Cherokee, IPA and Latin
/// extensions (`α` -> `a`, `ս` -> `u`, `ɡ` -> `g`). Only letters whose skeleton is one ASCII
/// letter; never CJK, kana or Hangul syllables, which stay themselves.
fn confusable(c: char) -> Option<char> {
    let code = c as u32;
    let script_ok = (0x00C0..0x2E80).contains(&code)
        || (0xA640..0xAC00).contains(&code)
        || (0x10400..0x10500).contains(&code);
    if !script_ok || c.general_category_group() != GeneralCategoryGroup::Letter {
        return None;
    }
    let mut buf = [0u8; 4];
    let mut it = unicode_security::skeleton(c.encode_utf8(&mut buf));
    match (it.next(), it.next()) {
        (Some(a), None) if a.is_ascii_alphabetic() => Some(a.to_ascii_lowercase()),
        _ => None,
    }
}

/// The simplified form of a traditional Chinese character or of a Japanese kanji form
/// (shinjitai: `売` -> `卖`, `薬` -> `药`; only forms that are not Chinese characters), or the
/// character itself.
pub(crate) fn t2s(c: char) -> char {
    if (c as u32) < 0x3400 {
        return c;
    }
    let c = match JP2S.binary_search_by_key(&c, |&(j, _)| j) {
        Ok(i) => JP2S.get(i).map_or(c, |&(_, s)| s),
        Err(_) => c,
    };
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
    static DEFAULT: OnceLock<Separators> = OnceLock::new();
    normalize_with(text, DEFAULT.get_or_init(Separators::default))
}

pub(crate) fn normalize_with(text: &str, seps: &Separators) -> Normalized {
    let buf = fold(text, seps);
    let f = buf.fchars();
    let mut n = Normalized::default();
    for fc in buf.compact().iter().filter_map(|&i| f.get(i as usize)) {
        n.text.push(fc.c);
        n.offsets.push(fc.start as usize..fc.end as usize);
    }
    n
}

/// Whether a rule pattern is one character repeated (`大大`, `真真真`): collapsed, it would
/// be that single character and match everywhere it occurs, so such entries are skipped.
pub(crate) fn is_one_char_repeated(p: &str, seps: &Separators) -> bool {
    let buf = fold(p, seps);
    let words = buf.fchars().iter().filter(|x| x.class != CLASS_SEP).count();
    buf.compact().len() == 1 && words > 1
}

/// Normalizes a rule pattern (a deny word, an allow phrase, a marker) exactly the way messages
/// are normalized for the matcher: folded, separators removed, repeats collapsed, leetspeak
/// read.
pub(crate) fn normalize_pattern(p: &str, seps: &Separators) -> String {
    normalize_with(p, seps).text
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
        assert_eq!(n("fսck"), "fuck"); // Armenian ս by the UTS #39 skeleton
        assert_eq!(n("sех"), "sex"); // Cyrillic е and х
    }

    #[test]
    fn folds_traditional_to_simplified() {
        assert_eq!(n("五星紅旗"), "五星红旗");
        assert_eq!(n("法輪功"), "法轮功");
        assert_eq!(n("賭博"), "赌博");
    }

    #[test]
    fn folds_japanese_kanji_forms() {
        assert_eq!(n("売春"), "卖春");
        assert_eq!(n("麻薬"), "麻药");
        assert_eq!(n("変態"), "变态");
        assert_eq!(n("戦争"), "战争");
        assert_eq!(n("広告"), "广告");
        assert_eq!(n("発売"), "发卖");
        assert_eq!(n("対図"), "对图");
        // Shinjitai that are also Chinese characters keep their Chinese meaning.
        assert_eq!(n("芸香"), "芸香");
        assert_eq!(n("予以"), "予以");
        assert_eq!(n("台湾"), "台湾");
    }

    #[test]
    fn reused_fold_buffers_give_what_fresh_ones_give() {
        let seps = Separators::default();
        let mut reused = FoldBuf::default();
        let mut rtl = Vec::new();
        // Long and short texts in turn, folds that expand past one character per byte
        // (`ﷺ` is 18 characters), repeats, leetspeak, separators, right-to-left overrides.
        let texts = [
            "ﷺﷺﷺﷺ法轮功法轮功",
            "a",
            "赌赌博博 s3x l33t ㎏㎏ 法*轮 fuuuck ass",
            "",
            "中文中文中文ﷺ中文中文中文中文中文",
            "\u{202E}abc\u{202C}中文 138 1234 5678",
            "ﷺ",
        ];
        for text in texts.iter().chain(texts.iter().rev()) {
            let mut fresh = FoldBuf::default();
            fold_into(text, &seps, &mut fresh, &mut rtl);
            fold_into(text, &seps, &mut reused, &mut rtl);
            assert_eq!(reused.fchars(), fresh.fchars(), "{text:?}");
            assert_eq!(reused.compact(), fresh.compact(), "{text:?}");
            assert_eq!(reused.chars(), fresh.chars(), "{text:?}");
            let gathered: Vec<char> = fresh
                .compact()
                .iter()
                .map(|&i| fresh.fchars()[i as usize].c)
                .collect();
            assert_eq!(fresh.chars(), gathered, "{text:?}");
            let n: String = gathered.iter().collect();
            assert_eq!(n, normalize(text).text);
        }
        assert_eq!(normalize("l33t s3x").text, "leetsex");
    }

    /// Folds `text` both ways, with the plain-CJK loop and through the general path only,
    /// and asserts the same folded characters, matcher characters, flags and right-to-left
    /// ranges.
    fn assert_fast_is_general(text: &str, seps: &Separators, reused: &mut FoldBuf) {
        let (mut rtl_fast, mut rtl_slow) = (Vec::new(), Vec::new());
        let mut slow = FoldBuf::default();
        let fast_flags = fold_impl::<true>(text, seps, reused, &mut rtl_fast);
        let slow_flags = fold_impl::<false>(text, seps, &mut slow, &mut rtl_slow);
        assert_eq!(reused.fchars(), slow.fchars(), "{text:?}");
        assert_eq!(reused.compact(), slow.compact(), "{text:?}");
        assert_eq!(reused.chars(), slow.chars(), "{text:?}");
        assert_eq!(
            format!("{fast_flags:?}"),
            format!("{slow_flags:?}"),
            "{text:?}"
        );
        assert_eq!(rtl_fast, rtl_slow, "{text:?}");
    }

    #[test]
    fn plain_cjk_loop_folds_what_the_general_path_folds() {
        // Plain CJK, Chinese numerals (兩 and 〇 fold to something else), CJK and full-width
        // punctuation (`，` -> `,`, `＠` -> `@` sets a flag, `｡` folds outside the full-width
        // ASCII block, `…` expands), full-width letters, traditional characters, repeats,
        // ASCII, two- and four-byte characters, invisible and right-to-left controls, a
        // separator configured by the policy.
        let alphabet: Vec<char> =
            "中文赌博哈哈一二两兩三〇零幺九，。？！、：；（）“”《》…｡＠ｆＡ１輪\
            a1@ .\né а😀🇨🇳\u{200B}\u{202E}\u{202C}ﷺ㎏"
                .chars()
                .collect();
        let mut rand = crate::test_rng(0x9E37_79B9_7F4A_7C15);
        for seps in [Separators::default(), Separators::new("一，")] {
            let mut reused = FoldBuf::default();
            for round in 0..3000 {
                let len = rand(if round % 10 == 0 { 200 } else { 24 });
                let text: String = (0..len).map(|_| alphabet[rand(alphabet.len())]).collect();
                assert_fast_is_general(&text, &seps, &mut reused);
            }
            // Every BMP character of three bytes, in runs between plain characters, and
            // repeated.
            let all: String = (0x800u32..0x1_0000)
                .filter_map(char::from_u32)
                .flat_map(|c| [c, '中', c, c, '，'])
                .collect();
            for chunk in all.as_bytes().chunks(3 * 5 * 400) {
                let text = std::str::from_utf8(chunk).unwrap();
                assert_fast_is_general(text, &seps, &mut reused);
            }
        }
    }

    #[test]
    fn offsets_point_at_original_characters() {
        let s = "a\u{200B}法＊輪😀语";
        let r = normalize(s);
        assert_eq!(r.text, "a法轮语"); // emoji are separators (category So)
        let back: Vec<&str> = r.offsets.iter().map(|o| &s[o.clone()]).collect();
        assert_eq!(back, ["a", "法", "輪", "语"]);
        let r = normalize("㎏");
        assert_eq!(r.text, "kg");
        assert_eq!(r.offsets, [0..3, 0..3]);
    }
}
