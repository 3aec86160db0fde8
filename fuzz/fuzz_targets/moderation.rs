//! The moderation pipeline (normalize -> match -> detectors -> policy -> mask) on arbitrary
//! UTF-8, with the shipped rules of `config/moderation` loaded once, with and without a group
//! policy and external members. Invariants (the crate's documented contract):
//!
//! - no panic; the same text gives the same verdict twice (scratch buffers are reused);
//! - every hit lies inside the text on character boundaries, asks for more than `allow`, no
//!   more than the verdict's action, and hits come in text order;
//! - `category`/`rule` are set exactly when something fired;
//! - `masked_text` is present exactly for `mask`, or `review` with a masking hit; it has the
//!   same number of characters as the text, and differs from it only inside masking hits,
//!   where a character is itself or one `*`;
//! - `normalize` maps every normalized character to a character of the original text.
#![no_main]

use libfuzzer_sys::fuzz_target;
use moderation::{Action, CheckContext, GroupPolicy, GroupPolicySpec, Moderator};
use std::path::Path;
use std::sync::OnceLock;

struct Rules {
    shipped: Moderator,
    group: GroupPolicy,
}

fn rules() -> &'static Rules {
    static R: OnceLock<Rules> = OnceLock::new();
    R.get_or_init(|| {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/moderation");
        let shipped = Moderator::load_dir(&dir).unwrap_or_else(|e| panic!("shipped rules: {e}"));
        let spec = GroupPolicySpec {
            words: vec![
                "项目甲".into(),
                "launch date".into(),
                "x".into(),
                "会议室".into(),
            ],
            words_action: Some(Action::Mask),
            words_category: Some("project".into()),
            tighten: [
                ("phone".to_string(), Action::Block),
                ("abuse".to_string(), Action::Block),
            ]
            .into_iter()
            .collect(),
            forbid_secret_markers: true,
            // The group words' pinyin and initials forms too.
            words_pinyin: true,
            words_initials: true,
        };
        let group = GroupPolicy::compile(&spec, &shipped).unwrap_or_else(|e| panic!("group: {e}"));
        Rules { shipped, group }
    })
}

fn check_verdict(m: &Moderator, text: &str, ctx: &CheckContext<'_>) {
    let v = m.check(text, ctx);
    assert_eq!(v, m.check(text, ctx), "verdict is not deterministic");
    let mut last_start = 0;
    for h in &v.hits {
        assert!(
            h.start <= h.end && h.end <= text.len(),
            "hit {h:?} outside the text"
        );
        assert!(
            text.is_char_boundary(h.start) && text.is_char_boundary(h.end),
            "hit {h:?}"
        );
        assert!(
            h.action > Action::Allow && h.action <= v.action,
            "hit {h:?} vs {:?}",
            v.action
        );
        assert!(h.start >= last_start, "hits out of text order");
        last_start = h.start;
    }
    assert_eq!(v.category.is_some(), v.action != Action::Allow);
    assert_eq!(v.rule.is_some(), v.action != Action::Allow);
    assert_eq!(v.hits.is_empty(), v.action == Action::Allow);
    let masking = v.hits.iter().any(|h| h.action == Action::Mask);
    assert_eq!(
        v.masked_text.is_some(),
        v.action == Action::Mask || (v.action == Action::Review && masking)
    );
    if let Some(masked) = &v.masked_text {
        assert_eq!(
            masked.chars().count(),
            text.chars().count(),
            "{text:?} -> {masked:?}"
        );
        let in_mask = |at: usize| {
            v.hits
                .iter()
                .any(|h| h.action == Action::Mask && h.start <= at && at < h.end)
        };
        for ((at, o), c) in text.char_indices().zip(masked.chars()) {
            if o != c {
                assert!(
                    c == '*' && in_mask(at),
                    "{text:?} -> {masked:?} at byte {at}"
                );
            }
        }
        assert_eq!(v.text_to_deliver(text), masked);
    } else {
        assert_eq!(v.text_to_deliver(text), text);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    let r = rules();
    let ctx = CheckContext {
        group: (flags & 1 != 0).then_some(&r.group),
        has_external_member: flags & 2 != 0,
    };
    check_verdict(&r.shipped, &text, &ctx);

    let n = r.shipped.normalize(&text);
    assert_eq!(n.text.chars().count(), n.offsets.len());
    let mut last = 0;
    for o in &n.offsets {
        assert!(o.start < o.end && o.end <= text.len(), "offset {o:?}");
        assert!(text.is_char_boundary(o.start) && text.is_char_boundary(o.end));
        assert!(o.start >= last, "offsets go backwards");
        last = o.start;
    }
});
