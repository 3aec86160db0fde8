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
