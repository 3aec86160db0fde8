//! Behaviour tests of the public API: evasions, allow-list, detectors with valid and invalid
//! checksums, masking offsets, policy, group overrides, external members, loading and reload.

// Helpers outside #[test] functions unwrap too: a failing fixture should fail the test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::path::{Path, PathBuf};

use moderation::detectors::digits::{id_check_value, luhn};
use moderation::{
    dir_fingerprint, Action, CheckContext, GroupPolicy, GroupPolicySpec, LoadError, Moderator,
};

const CTX: CheckContext<'static> = CheckContext {
    group: None,
    has_external_member: false,
};
const EXT: CheckContext<'static> = CheckContext {
    group: None,
    has_external_member: true,
};

/// A rule directory in a temp dir: `files` are (relative path, contents).
fn rules_dir(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        let p = dir.path().join(name);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, text).unwrap();
    }
    dir
}

fn fixture() -> Moderator {
    let dir = rules_dir(&[
        ("deny/politics.txt", "法轮\n法轮功\n五星红旗\n"),
        ("deny/porn.txt", "黄片\n口交\nav\npenis\n"),
        ("deny/abuse.txt", "fuck\nshit\n傻逼\n"),
        ("deny/gambling.txt", "赌博\n"),
        ("deny/ads.txt", "加微信\n"),
        ("allow.txt", "三黄片\n路口交通\n"),
        ("code_names.txt", "天穹计划\n"),
    ]);
    Moderator::load_dir(dir.path()).unwrap()
}

fn shipped_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/moderation")
}

fn action(m: &Moderator, text: &str) -> Action {
    m.check(text, &CTX).action
}

// ---------------------------------------------------------------- evasion

#[test]
fn evasions_are_caught() {
    let m = fixture();
    for text in [
        "法轮",
        "法*轮",
        "法 轮",
        "法.轮",
        "法＊轮",
        "法\u{200B}轮",
        "法\u{200D}\u{FE0F}轮",
        "法輪",
        "五星紅旗",
        "赌 博",
        "賭博",
    ] {
        assert_eq!(action(&m, text), Action::Block, "{text}");
    }
    assert_eq!(action(&m, "赌 博"), Action::Block);
    for text in [
        "fuck",
        "FUCK",
        "ｆｕｃｋ",
        "Ｆ Ｕ Ｃ Ｋ",
        "f.u.c.k",
        "f u c k",
        "f-u-c-k you",
        "ꜰᴜᴄᴋ",
        "𝐟𝐮𝐜𝐤",
        "ⓕⓤⓒⓚ",
        "f\u{0301}u\u{0308}c\u{0327}k",
        "fu\u{200B}ck",
        "\u{202E}fuck\u{202C}",
        "what the fuck!",
    ] {
        assert_eq!(action(&m, text), Action::Mask, "{text}");
    }
}

#[test]
fn latin_words_match_on_word_boundaries_only() {
    let m = fixture();
    assert_eq!(action(&m, "I have a cat"), Action::Allow);
    assert_eq!(action(&m, "have av"), Action::Block);
    assert_eq!(action(&m, "AV资源"), Action::Block);
    assert_eq!(action(&m, "this hit the target"), Action::Allow);
    assert_eq!(action(&m, "the pen is red"), Action::Allow);
    assert_eq!(action(&m, "p.e.n.i.s"), Action::Block);
    assert_eq!(action(&m, "shitake? no: shiitake"), Action::Allow);
    assert_eq!(action(&m, "oh shit."), Action::Mask);
}

#[test]
fn allow_list_suppresses_contained_hits() {
    let m = fixture();
    assert_eq!(action(&m, "路口交通很堵"), Action::Allow);
    assert_eq!(action(&m, "医生开了三黄片"), Action::Allow);
    assert_eq!(action(&m, "看黄片"), Action::Block);
    // A deny hit outside the allowed phrase still counts.
    assert_eq!(action(&m, "三黄片和黄片"), Action::Block);
    // The allow phrase is normalized too.
    assert_eq!(action(&m, "路口 交通"), Action::Allow);
}

#[test]
fn category_not_word_is_reported() {
    let m = fixture();
    let v = m.check("你在看黄片吗", &CTX);
    assert_eq!(v.action, Action::Block);
    assert_eq!(v.category.as_deref(), Some("porn"));
    assert_eq!(v.rule.as_deref(), Some("deny/porn.txt:1"));
    assert!(!v.rule.unwrap().contains("黄片"));
    assert!(v.escalate);
    assert_eq!(v.hits.len(), 1);
    assert_eq!(&"你在看黄片吗"[v.hits[0].start..v.hits[0].end], "黄片");
}

// ---------------------------------------------------------------- detectors

/// 17 digits + their computed GB 11643 check character.
fn make_id(first17: &str) -> String {
    let d: Vec<u8> = first17.bytes().map(|b| b - b'0').collect();
    let v = id_check_value(&d);
    let c = if v == 10 {
        'X'
    } else {
        char::from(b'0' + v as u8)
    };
    format!("{first17}{c}")
}

/// A Luhn-valid number from `prefix` (computes the check digit).
fn make_card(prefix: &str) -> String {
    for c in 0..10 {
        let s = format!("{prefix}{c}");
        let d: Vec<u8> = s.bytes().map(|b| b - b'0').collect();
        if luhn(&d) {
            return s;
        }
    }
    unreachable!()
}

#[test]
fn phone_numbers() {
    let m = Moderator::builtin();
    let v = m.check("电话13812345678", &CTX);
    assert_eq!(v.action, Action::Mask);
    assert_eq!(v.category.as_deref(), Some("phone"));
    assert_eq!(v.masked_text.as_deref(), Some("电话138****5678"));
    for (text, masked) in [
        ("138 1234 5678", "138 **** 5678"),
        ("138-1234-5678", "138-****-5678"),
        ("１３８１２３４５６７８", "１３８＊＊＊＊５６７８"),
        ("+86 138 1234 5678", "+86 138 **** 5678"),
        ("❶➂➇12345678", "❶➂➇****5678"),
        ("壹叁捌12345678", "壹叁捌****5678"),
    ] {
        let v = m.check(text, &CTX);
        assert_eq!(v.action, Action::Mask, "{text}");
        let got = v.masked_text.unwrap();
        // Full-width digits are masked with ASCII `*`, one per original character.
        assert_eq!(got.replace('*', "＊"), masked.replace('*', "＊"), "{text}");
        assert_eq!(got.chars().count(), text.chars().count(), "{text}");
    }
    // Not mobile numbers: wrong prefix, wrong length, part of a longer number or word.
    for text in [
        "12812345678",
        "1381234567",
        "138123456789",
        "订单号 9913812345678123",
        "id a13812345678",
    ] {
        assert_eq!(m.check(text, &CTX).action, Action::Allow, "{text}");
    }
    // With external members, personal data is blocked.
    assert_eq!(m.check("13812345678", &EXT).action, Action::Block);
}

#[test]
fn identity_numbers() {
    let m = Moderator::builtin();
    // 110105 19491231 002 -> check X (weighted sum 167, 167 mod 11 = 2 -> X), verified by hand.
    assert_eq!(make_id("11010519491231002"), "11010519491231002X");
    for id in [
        make_id("11010519491231002"),
        make_id("44030420000229123"),
        make_id("32010219851017456"),
    ] {
        let text = format!("身份证号：{id}，请核对");
        let v = m.check(&text, &CTX);
        assert_eq!(v.action, Action::Mask, "{id}");
        assert_eq!(v.category.as_deref(), Some("id_card"));
        let masked = v.masked_text.unwrap();
        assert!(
            masked.contains(&format!("{}***********{}", &id[..3], &id[14..])),
            "{masked}"
        );
        // Lower-case x works too.
        let lower = id.to_lowercase();
        assert_eq!(m.check(&lower, &CTX).action, Action::Mask);
    }
    // Wrong check digit.
    let good = make_id("32010219851017456");
    let last = good.chars().last().unwrap();
    let wrong = if last == '1' { '2' } else { '1' };
    let bad = format!("{}{}", &good[..17], wrong);
    assert_eq!(m.check(&bad, &CTX).action, Action::Allow, "{bad}");
    // Right check digit, impossible birth dates.
    for first17 in [
        "11010519490230002",
        "11010519491301002",
        "11010518991231002",
    ] {
        let id = make_id(first17);
        assert_eq!(m.check(&id, &CTX).action, Action::Allow, "{id}");
    }
}

#[test]
fn bank_cards() {
    let m = Moderator::builtin();
    let card = make_card("621700000000123");
    assert_eq!(card.len(), 16);
    let v = m.check(&format!("打到{card}"), &CTX);
    assert_eq!(v.action, Action::Mask);
    assert_eq!(v.category.as_deref(), Some("bank_card"));
    assert_eq!(
        v.masked_text.unwrap(),
        format!("打到{}********{}", &card[..4], &card[12..])
    );
    // Grouped in fours.
    let grouped = format!(
        "{} {} {} {}",
        &card[..4],
        &card[4..8],
        &card[8..12],
        &card[12..]
    );
    assert_eq!(m.check(&grouped, &CTX).action, Action::Mask);
    // Luhn failure: not a card.
    let d = card.as_bytes()[15] - b'0';
    let bad = format!("{}{}", &card[..15], (d + 1) % 10);
    assert_eq!(m.check(&bad, &CTX).action, Action::Allow);
    // Luhn-valid without a card prefix: low confidence (allowed) unless a context word is near.
    let plain = make_card("900000000000123");
    assert_eq!(m.check(&plain, &CTX).action, Action::Allow);
    assert_eq!(
        m.check(&format!("我的卡号是{plain}"), &CTX).action,
        Action::Mask
    );
    // 19 digits.
    let long = make_card("622202000000000000");
    assert_eq!(long.len(), 19);
    assert_eq!(m.check(&long, &CTX).action, Action::Mask);
}

#[test]
fn emails() {
    let m = Moderator::builtin();
    let text = "write to john.doe@example.com.";
    assert_eq!(m.check(text, &CTX).action, Action::Allow);
    let v = m.check(text, &EXT);
    assert_eq!(v.action, Action::Mask);
    assert_eq!(v.category.as_deref(), Some("email"));
    assert_eq!(
        v.masked_text.as_deref(),
        Some("write to j*******@example.com.")
    );
    let v = m.check("邮箱：ｊｏｅ＠ｅｘａｍｐｌｅ．ｃｎ谢谢", &EXT);
    assert_eq!(v.action, Action::Mask);
    assert_eq!(
        v.masked_text.as_deref(),
        Some("邮箱：ｊ**＠ｅｘａｍｐｌｅ．ｃｎ谢谢")
    );
    for text in ["a@b", "@everyone", "x@localhost", "me@host.c1", "a@.com"] {
        assert_eq!(m.check(text, &EXT).action, Action::Allow, "{text}");
    }
}

#[test]
fn addresses() {
    let m = Moderator::builtin();
    let text = "寄到北京市朝阳区建国路88号3栋502室，谢谢";
    assert_eq!(m.check(text, &CTX).action, Action::Allow);
    let v = m.check(text, &EXT);
    assert_eq!(v.action, Action::Warn);
    assert_eq!(v.category.as_deref(), Some("address"));
    let h = &v.hits[0];
    assert_eq!(&text[h.start..h.end], "北京市朝阳区建国路88号3栋502室");
    // No number, no street, or no area and no context: not an address.
    for t in [
        "路口交通",
        "坐地铁2号线到人民路",
        "市区的路很好走",
        "人民路88号见",
    ] {
        assert_eq!(m.check(t, &EXT).action, Action::Allow, "{t}");
    }
    // A street and number with a context word is enough.
    assert_eq!(m.check("我的地址是人民路88号", &EXT).action, Action::Warn);
}

// ---------------------------------------------------------------- masking

#[test]
fn masking_offsets_on_mixed_text() {
    let m = fixture();
    let text = "Hi😀 你是傻逼吗？fuck 👍🏽 call 13812345678 ok";
    let v = m.check(text, &CTX);
    assert_eq!(v.action, Action::Mask);
    assert_eq!(
        v.masked_text.as_deref(),
        Some("Hi😀 你是**吗？**** 👍🏽 call 138****5678 ok")
    );
    for h in &v.hits {
        assert!(text.is_char_boundary(h.start) && text.is_char_boundary(h.end));
    }
    let words: Vec<&str> = v.hits.iter().map(|h| &text[h.start..h.end]).collect();
    assert_eq!(words, ["傻逼", "fuck", "13812345678"]);
    // Separators inside a masked word are masked with it; text outside is untouched.
    let v = m.check("a f.u.c.k b", &CTX);
    assert_eq!(v.masked_text.as_deref(), Some("a ******* b"));
    // Multi-byte and zero-width characters inside a word.
    let v = m.check("ｆ\u{200B}ｕｃｋ!", &CTX);
    assert_eq!(v.masked_text.as_deref(), Some("*\u{200B}***!"));
}

#[test]
fn review_and_block_win_over_mask() {
    let m = fixture();
    let v = m.check("傻逼 加微信", &CTX);
    assert_eq!(v.action, Action::Review);
    assert_eq!(v.category.as_deref(), Some("ads"));
    assert_eq!(v.masked_text.as_deref(), Some("** 加微信"));
    let v = m.check("傻逼 黄片", &CTX);
    assert_eq!(v.action, Action::Block);
    assert_eq!(v.hits.len(), 2);
}

// ---------------------------------------------------------------- confidentiality, policy

#[test]
fn secret_markers_and_external_members() {
    let m = fixture();
    let v = m.check("这份是机密文件", &CTX);
    assert_eq!(v.action, Action::Warn);
    assert_eq!(v.category.as_deref(), Some("confidential"));
    assert!(!v.escalate);
    assert_eq!(m.check("这份是机密文件", &EXT).action, Action::Block);
    assert_eq!(m.check("CONFIDENTIAL: q3 plan", &EXT).action, Action::Block);
    assert_eq!(m.check("天穹计划下周上线", &CTX).action, Action::Warn);
    assert_eq!(m.check("天穹计划下周上线", &EXT).action, Action::Block);
    assert_eq!(
        m.check("天穹计划下周上线", &EXT).rule.as_deref(),
        Some("code_names.txt:1")
    );
    // Clean text stays clean with external members.
    assert_eq!(m.check("明天开会", &EXT).action, Action::Allow);
}

#[test]
fn group_overrides() {
    let m = fixture();
    let spec: GroupPolicySpec = serde_json::from_str(
        r#"{"words": ["竞品A", "内部价"], "tighten": {"abuse": "block", "phone": "block"},
            "forbid_secret_markers": true}"#,
    )
    .unwrap();
    let g = GroupPolicy::compile(&spec, &m).unwrap();
    let ctx = CheckContext {
        group: Some(&g),
        has_external_member: false,
    };
    let v = m.check("聊聊竞品 A 的内部价", &ctx);
    assert_eq!(v.action, Action::Block);
    assert_eq!(v.category.as_deref(), Some("group"));
    assert_eq!(v.rule.as_deref(), Some("group:1"));
    assert_eq!(m.check("聊聊竞品A", &CTX).action, Action::Allow);
    assert_eq!(m.check("傻逼", &ctx).action, Action::Block);
    assert_eq!(m.check("13812345678", &ctx).action, Action::Block);
    assert_eq!(m.check("机密", &ctx).action, Action::Block);
    assert_eq!(m.check("黄片", &ctx).action, Action::Block);
    assert_eq!(m.check("你好", &ctx).action, Action::Allow);
    // Tightening never loosens, and unknown names are rejected.
    let spec = GroupPolicySpec {
        tighten: [("porn".to_string(), Action::Warn)].into(),
        ..GroupPolicySpec::default()
    };
    let g = GroupPolicy::compile(&spec, &m).unwrap();
    let ctx = CheckContext {
        group: Some(&g),
        has_external_member: false,
    };
    assert_eq!(m.check("黄片", &ctx).action, Action::Block);
    let spec = GroupPolicySpec {
        tighten: [("nonsense".to_string(), Action::Block)].into(),
        ..GroupPolicySpec::default()
    };
    assert!(matches!(
        GroupPolicy::compile(&spec, &m),
        Err(LoadError::Group { .. })
    ));
}

#[test]
fn per_word_action_and_unknown_category() {
    let dir = rules_dir(&[
        ("deny/ads.txt", "广告词\n可疑词\tblock\n"),
        ("deny/custom.txt", "新词\n"),
    ]);
    let m = Moderator::load_dir(dir.path()).unwrap();
    assert_eq!(action(&m, "广告词"), Action::Review);
    assert_eq!(action(&m, "可疑词"), Action::Block);
    // A deny file without a policy entry blocks.
    let v = m.check("新词", &CTX);
    assert_eq!(v.action, Action::Block);
    assert_eq!(v.category.as_deref(), Some("custom"));
}

#[test]
fn verdict_serializes_snake_case() {
    let m = fixture();
    let v = m.check("黄片", &CTX);
    let json = serde_json::to_value(&v).unwrap();
    assert_eq!(json["action"], "block");
    assert_eq!(json["category"], "porn");
    assert_eq!(json["hits"][0]["action"], "block");
    let a: Action = serde_json::from_str("\"review\"").unwrap();
    assert_eq!(a, Action::Review);
    assert!(Action::Allow < Action::Warn && Action::Mask < Action::Review);
}

// ---------------------------------------------------------------- loading and reload

#[test]
fn shipped_rules_load_and_work() {
    let m = Moderator::load_dir(&shipped_dir()).unwrap();
    assert_eq!(action(&m, "法*轮功"), Action::Block);
    assert_eq!(action(&m, "看黃片"), Action::Block);
    assert_eq!(action(&m, "路口交通"), Action::Allow);
    assert_eq!(action(&m, "医生开了三黄片"), Action::Allow);
    assert_eq!(action(&m, "这下大麻烦了"), Action::Allow);
    assert_eq!(action(&m, "ｆｕｃｋ"), Action::Mask);
    assert_eq!(action(&m, "加我微信"), Action::Review);
    assert_eq!(action(&m, "赌 博"), Action::Review);
    assert_eq!(action(&m, "今天天气不错，我们下午三点开会"), Action::Allow);
    assert_eq!(m.escalation_config().ladder.len(), 4);
    assert!(m.stats().patterns > 100);
}

#[test]
fn broken_files_are_rejected_with_file_and_line() {
    // Bad action in a word list.
    let dir = rules_dir(&[("deny/porn.txt", "ok\n\n# c\nbad\tdestroy\n")]);
    let err = Moderator::load_dir(dir.path()).unwrap_err();
    match &err {
        LoadError::Syntax { path, line, .. } => {
            assert!(path.ends_with("deny/porn.txt"));
            assert_eq!(*line, 4);
        }
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().contains("porn.txt:4"), "{err}");
    // Invalid UTF-8 on line 2.
    let dir = rules_dir(&[("allow.txt", "fine\n")]);
    fs::write(dir.path().join("allow.txt"), b"fine\n\xff\xfe\n").unwrap();
    match Moderator::load_dir(dir.path()).unwrap_err() {
        LoadError::Syntax { line, path, .. } => {
            assert_eq!(line, 2);
            assert!(path.ends_with("allow.txt"));
        }
        other => panic!("{other:?}"),
    }
    // policy.toml: bad value on line 3, unknown key on line 2.
    let dir = rules_dir(&[(
        "policy.toml",
        "[categories]\nporn = \"block\"\nabuse = \"smite\"\n",
    )]);
    match Moderator::load_dir(dir.path()).unwrap_err() {
        LoadError::Policy { line, path, .. } => {
            assert_eq!(line, 3);
            assert!(path.ends_with("policy.toml"));
        }
        other => panic!("{other:?}"),
    }
    let dir = rules_dir(&[("policy.toml", "[normalize]\nseperators = \"*\"\n")]);
    match Moderator::load_dir(dir.path()).unwrap_err() {
        LoadError::Policy { line, .. } => assert_eq!(line, 2),
        other => panic!("{other:?}"),
    }
    let dir = rules_dir(&[(
        "policy.toml",
        "[escalation]\nladder = [{ at = 3, penalty = \"warn\" }, { at = 2, penalty = \"suspend\" }]\n",
    )]);
    assert!(matches!(
        Moderator::load_dir(dir.path()),
        Err(LoadError::Policy { line: 1, .. })
    ));
    // Missing directory.
    assert!(matches!(
        Moderator::load_dir(Path::new("/nonexistent/moderation")),
        Err(LoadError::Io { .. })
    ));
}

#[test]
fn reload_keeps_old_rules_on_error_and_fingerprint_changes() {
    let dir = rules_dir(&[("deny/porn.txt", "黄片\n")]);
    let fp1 = dir_fingerprint(dir.path()).unwrap();
    assert_eq!(fp1, dir_fingerprint(dir.path()).unwrap());
    let mut current = Moderator::load_dir(dir.path()).unwrap();
    assert_eq!(action(&current, "新黄词"), Action::Allow);

    // A broken edit: the fingerprint changes, the reload fails, the old rules stay.
    fs::write(dir.path().join("deny/porn.txt"), "黄片\n新黄词\tnuke\n").unwrap();
    let fp2 = dir_fingerprint(dir.path()).unwrap();
    assert_ne!(fp1, fp2);
    if let Ok(m) = Moderator::load_dir(dir.path()) {
        panic!("broken file accepted: {m:?}");
    }
    assert_eq!(action(&current, "黄片"), Action::Block);

    // The fix is picked up.
    fs::write(dir.path().join("deny/porn.txt"), "黄片\n新黄词\n").unwrap();
    let fp3 = dir_fingerprint(dir.path()).unwrap();
    assert_ne!(fp2, fp3);
    current = Moderator::load_dir(dir.path()).unwrap();
    assert_eq!(action(&current, "新黄词"), Action::Block);
    // Adding a file changes it too.
    fs::write(dir.path().join("allow.txt"), "x\n").unwrap();
    assert_ne!(fp3, dir_fingerprint(dir.path()).unwrap());
}

// ---------------------------------------------------------------- bad input

#[test]
fn strange_input_gets_a_verdict() {
    let m = Moderator::load_dir(&shipped_dir()).unwrap();
    let emoji = "😀".repeat(10_000);
    assert_eq!(m.check(&emoji, &CTX).action, Action::Allow);
    let combining = format!("a{}", "\u{0301}".repeat(10_000));
    assert_eq!(m.check(&combining, &CTX).action, Action::Allow);
    let rtl = "\u{202E}".repeat(1000) + "法轮功" + &"\u{202D}".repeat(1000);
    assert_eq!(m.check(&rtl, &CTX).action, Action::Block);
    let digits = "1".repeat(100_000);
    assert_eq!(m.check(&digits, &CTX).action, Action::Allow);
    let seps = "* ".repeat(50_000);
    assert_eq!(m.check(&seps, &CTX).action, Action::Allow);
    let many = "傻逼".repeat(5_000);
    let v = m.check(&many, &CTX);
    // Masked by the lexicon, and sent to review by the offensive-language classifier.
    assert_eq!(v.action, Action::Review);
    assert_eq!(v.masked_text.unwrap(), "*".repeat(10_000));
    assert_eq!(m.check("", &CTX), moderation::Verdict::allow());
    let at = "@.".repeat(10_000);
    assert_eq!(m.check(&at, &EXT).action, Action::Allow);
    // Latin tokens with a reading at every character (symbols, digits, wildcards): the walk
    // is bounded per token, so a 100 KB text of them is still linear.
    let t0 = std::time::Instant::now();
    let leet = "f*|1!$@+#_.**ck5h1tbi+ch ".repeat(4_000);
    let v = m.check(&leet, &CTX);
    assert!(v.action <= Action::Review, "{:?}", v.action);
    let tokens = format!("{} ", "$h!*".repeat(12)).repeat(2_000);
    m.check(&tokens, &CTX);
    assert!(
        t0.elapsed() < std::time::Duration::from_secs(20),
        "{:?}",
        t0.elapsed()
    );
}
