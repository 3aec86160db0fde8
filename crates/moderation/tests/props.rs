//! Property tests: normalization and checking never panic, offsets land on character
//! boundaries, and masking changes nothing outside a hit.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use moderation::{normalize, Action, CheckContext, Moderator};
use proptest::prelude::*;
use std::sync::OnceLock;

fn moderator() -> &'static Moderator {
    static M: OnceLock<Moderator> = OnceLock::new();
    M.get_or_init(|| {
        let mut b = Moderator::builder(moderation::PolicyFile::default());
        for (cat, words) in [
            ("porn", &["黄片", "av", "口交"][..]),
            ("abuse", &["傻逼", "fuck", "shit"][..]),
            ("politics", &["法轮功", "五星红旗"][..]),
            ("ads", &["加微信"][..]),
        ] {
            for (i, w) in words.iter().enumerate() {
                b.add_word(cat, &format!("{cat}:{i}"), w, None);
            }
        }
        b.add_allow(std::path::Path::new("allow.txt"), "三黄片\n路口交通\n")
            .unwrap();
        b.build().unwrap()
    })
}

/// Strings mixing the characters that matter: CJK words, Latin, digits in many forms,
/// separators, zero-width and RTL controls, combining marks, emoji.
fn text() -> impl Strategy<Value = String> {
    let pieces = prop::sample::select(vec![
        "黄",
        "片",
        "法",
        "轮",
        "功",
        "傻",
        "逼",
        "加",
        "微信",
        "路口",
        "交通",
        "三",
        "f",
        "u",
        "c",
        "k",
        "a",
        "v",
        "h",
        "e",
        "Ｆ",
        "ｕ",
        "1",
        "3",
        "8",
        "５",
        "❶",
        "壹",
        "0",
        "X",
        "@",
        ".",
        "-",
        " ",
        "*",
        "com",
        "\u{200B}",
        "\u{202E}",
        "\u{0301}",
        "\u{FE0F}",
        "😀",
        "👍🏽",
        "號",
        "路",
        "市",
        "区",
        "室",
        "机密",
        "é",
        "ß",
        "İ",
        "㎏",
        "ﬁ",
        "\u{10FFFF}",
        "\t",
        "$",
        "!",
        "|",
        "#",
        "_",
        "+",
        "€",
        "s",
        "i",
        "t",
    ]);
    prop_oneof![
        prop::collection::vec(pieces, 0..40).prop_map(|v| v.concat()),
        any::<String>(),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn normalization_offsets_are_char_boundaries(s in text()) {
        let n = normalize(&s);
        prop_assert_eq!(n.text.chars().count(), n.offsets.len());
        let mut last = 0;
        for r in &n.offsets {
            prop_assert!(s.is_char_boundary(r.start) && s.is_char_boundary(r.end));
            prop_assert!(r.start < r.end && r.end <= s.len());
            prop_assert!(r.start >= last);
            last = r.start;
        }
    }

    #[test]
    fn check_never_panics_and_hits_are_on_boundaries(s in text(), ext in any::<bool>()) {
        let ctx = CheckContext { group: None, has_external_member: ext };
        let v = moderator().check(&s, &ctx);
        for h in &v.hits {
            prop_assert!(h.start <= h.end && h.end <= s.len());
            prop_assert!(s.is_char_boundary(h.start) && s.is_char_boundary(h.end));
            prop_assert!(h.action <= v.action);
        }
        prop_assert_eq!(v.masked_text.is_some(), v.action == Action::Mask
            || (v.action == Action::Review && v.hits.iter().any(|h| h.action == Action::Mask)));
    }

    #[test]
    fn masking_changes_nothing_outside_hits(s in text(), ext in any::<bool>()) {
        let ctx = CheckContext { group: None, has_external_member: ext };
        let v = moderator().check(&s, &ctx);
        if let Some(masked) = &v.masked_text {
            let mut spans: Vec<(usize, usize)> = v.hits.iter()
                .filter(|h| h.action == Action::Mask)
                .map(|h| (h.start, h.end))
                .collect();
            spans.sort();
            // Walk the original and the masked text together: outside spans they agree
            // byte for byte; inside, each original character is itself or one `*`.
            let mut o = 0;
            let mut m = 0;
            let ob = s.as_bytes();
            let mb = masked.as_bytes();
            for (a, b) in spans.iter().copied() {
                if b <= o {
                    continue;
                }
                let a = a.max(o);
                prop_assert_eq!(&ob[o..a], &mb[m..m + (a - o)]);
                m += a - o;
                for ch in s[a..b].chars() {
                    let rest = &masked[m..];
                    if rest.starts_with('*') {
                        m += 1;
                    } else {
                        prop_assert!(rest.starts_with(ch));
                        m += ch.len_utf8();
                    }
                }
                o = b;
            }
            prop_assert_eq!(&ob[o..], &mb[m..]);
        }
    }
}

/// One character of a deny word in a random written form: itself, full-width, a confusable
/// from another script, a stylised letter, repeated.
fn letter_form(c: char) -> impl Strategy<Value = String> {
    let forms: Vec<&str> = match c {
        'f' => vec!["f", "ｆ", "ƒ", "🅵", "𝐟", "F"],
        'u' => vec!["u", "ｕ", "ս", "🆄", "𝐮", "ü"],
        'c' => vec!["c", "ｃ", "с", "🅲", "𝐜", "ⓒ"],
        'k' => vec!["k", "ｋ", "к", "🅺", "𝐤", "K"],
        's' => vec!["s", "ѕ", "ꜱ", "🆂", "ｓ", "S"],
        'h' => vec!["h", "һ", "🅷", "ｈ", "H", "𝐡"],
        'i' => vec!["i", "і", "🅸", "ｉ", "ɪ", "ı"],
        't' => vec!["t", "ｔ", "🆃", "𝐭", "T", "ᴛ"],
        '傻' => vec!["傻", "傻傻"],
        '逼' => vec!["逼", "逼逼"],
        other => return prop::sample::select(vec![other.to_string()]),
    };
    prop::sample::select(forms.into_iter().map(String::from).collect::<Vec<_>>())
}

/// An evasion of one abuse word (masked by the policy): letter forms with separators of any
/// class between them, inside random context. (Spaces are left out: `fuc k` is two words by
/// the Latin boundary rule, on purpose.)
fn evasion() -> impl Strategy<Value = String> {
    let seps = prop::sample::select(vec![
        "", "", "*", "、", "·", "—", "😀", "👍🏽", "\u{2800}", "→", "★", "\u{200B}", "│", "¥",
    ]);
    let pre = prop::sample::select(vec!["", "你好 ", "ok ", "说：", "😀"]);
    let post = prop::sample::select(vec!["", " 你好", " ok", "！", "😀"]);
    (
        prop::sample::select(vec!["fuck", "shit", "傻逼"]),
        pre,
        post,
    )
        .prop_flat_map(move |(word, pre, post)| {
            let forms: Vec<_> = word.chars().map(letter_form).collect();
            let gaps = prop::collection::vec(seps.clone(), word.chars().count());
            (forms, gaps, Just(pre), Just(post))
        })
        .prop_map(|(forms, gaps, pre, post)| {
            let mut s = pre.to_string();
            for (f, g) in forms.iter().zip(gaps) {
                s.push_str(f);
                s.push_str(g);
            }
            s.push_str(post);
            s
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// Every generated evasion is caught, and its mask maps back to the original text: one `*`
    /// per masked original character, everything else unchanged.
    #[test]
    fn folded_evasions_are_caught_and_masks_map_back(s in evasion()) {
        let v = moderator().check(&s, &CheckContext::default());
        prop_assert!(v.action >= Action::Mask, "{:?}: {:?}", s, v);
        let masked = v.masked_text.clone().unwrap_or_default();
        prop_assert_eq!(masked.chars().count(), s.chars().count(), "{:?} -> {:?}", s, masked);
        let first = v.hits.iter().filter(|h| h.action == Action::Mask).min_by_key(|h| h.start);
        if let Some(h) = first {
            prop_assert!(h.start < h.end);
            prop_assert_eq!(masked.get(..h.start), s.get(..h.start));
        }
    }
}

/// One letter of a Latin deny word, itself or a symbol, digit or wildcard standing for it:
/// `(written, is a real letter)`.
fn symbol_forms(c: char) -> Vec<(&'static str, bool)> {
    let forms: &[&'static str] = match c {
        'f' => &["f", "F"],
        'u' => &["u", "v", "*", "#"],
        'c' => &["c", "¢", "*"],
        'k' => &["k", "K"],
        's' => &["s", "$", "5", "§"],
        'h' => &["h", "H"],
        'i' => &["i", "!", "1", "|", "*"],
        't' => &["t", "+", "7"],
        _ => &[],
    };
    forms
        .iter()
        .map(|f| (*f, f.chars().all(|x| x.is_ascii_alphabetic())))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// A Latin deny word with some letters written as look-alike symbols, digits or wildcards
    /// (at least two real letters left, as the reading requires) is caught in any context, and
    /// the mask covers exactly the word.
    #[test]
    fn symbol_evasions_are_caught_and_masked_exactly(
        word in prop::sample::select(vec!["fuck", "shit"]),
        pre in prop::sample::select(vec!["", "你好 ", "ok ", "说：", "\"", "("]),
        post in prop::sample::select(vec!["", " 你好", " ok", "！", "!", "?", ".", "\""]),
        seed in any::<u64>(),
    ) {
        let mut x = seed | 1;
        let mut written = String::new();
        let mut literal = 0;
        for c in word.chars() {
            let f = symbol_forms(c);
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let (w, lit) = f[(x % f.len() as u64) as usize];
            written.push_str(w);
            literal += usize::from(lit);
        }
        prop_assume!(literal >= 2);
        let text = format!("{pre}{written}{post}");
        let v = moderator().check(&text, &CheckContext::default());
        prop_assert!(v.action >= Action::Mask, "{:?}: {:?}", text, v);
        let masked = v.masked_text.clone().unwrap_or_default();
        let expect = format!("{pre}{}{post}", "*".repeat(written.chars().count()));
        prop_assert_eq!(masked, expect, "{:?}", text);
    }
}
