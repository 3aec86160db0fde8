//! Rule-directory and policy parsing from arbitrary bytes: `Moderator::load_dir` on a
//! directory written from the input, `PolicyFile::from_toml`, and a group policy
//! (`GroupPolicySpec` as JSON, then `GroupPolicy::compile`). Errors, never panics; a load
//! error names a line that exists; a rule set that loads can check text.
//!
//! Input: up to seven parts separated by the byte 0xFF (which never occurs in UTF-8): the
//! files `policy.toml`, `deny/abuse.txt`, `allow.txt`, `secrets.txt`, `code_names.txt`,
//! `deny/fuzz.txt` (a category the policy does not name), then a group policy as JSON.
//! A missing part is a missing file.
#![no_main]

use libfuzzer_sys::fuzz_target;
use moderation::{CheckContext, GroupPolicy, GroupPolicySpec, LoadError, Moderator, PolicyFile};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

const FILES: [&str; 6] = [
    "policy.toml",
    "deny/abuse.txt",
    "allow.txt",
    "secrets.txt",
    "code_names.txt",
    "deny/fuzz.txt",
];

/// Text a freshly loaded rule set is checked against: words of the shipped lists, personal
/// data for the detectors, separators.
const PROBE: &str = "傻逼 f.u.c.k 加微信 机密 项目 call 138 1234 5678, 身份证 11010519491231002X, \
                     卡号 6217 0012 3456 7890 123, mail a.b@example.com 北京市海淀区中关村大街1号";

fn dir() -> &'static Path {
    static D: OnceLock<PathBuf> = OnceLock::new();
    D.get_or_init(|| {
        let d = tempfile::Builder::new()
            .prefix("chatd-fuzz-rules-")
            .tempdir()
            .unwrap_or_else(|e| panic!("temp dir: {e}"))
            .keep();
        std::fs::create_dir_all(d.join("deny")).unwrap_or_else(|e| panic!("{e}"));
        d
    })
}

fn lines_of(bytes: &[u8]) -> usize {
    bytes.iter().filter(|&&b| b == b'\n').count() + 1
}

fuzz_target!(|data: &[u8]| {
    let parts: Vec<&[u8]> = data.split(|&b| b == 0xFF).collect();
    let dir = dir();
    for (i, name) in FILES.iter().enumerate() {
        let path = dir.join(name);
        match parts.get(i) {
            Some(p) => std::fs::write(&path, p).unwrap_or_else(|e| panic!("write: {e}")),
            None => {
                let _ = std::fs::remove_file(&path);
            }
        }
    }

    // The policy file alone, as text.
    if let Some(Ok(text)) = parts.first().map(|p| std::str::from_utf8(p)) {
        if let Err((line, message)) = PolicyFile::from_toml(text) {
            assert!(line <= lines_of(text.as_bytes()), "line {line}: {message}");
        }
    }

    let loaded = Moderator::load_dir(dir);
    let _ = moderation::dir_fingerprint(dir);
    let m = match loaded {
        Ok(m) => m,
        Err(e) => {
            let shown = e.to_string();
            assert!(!shown.is_empty());
            match &e {
                LoadError::Syntax { path, line, .. } | LoadError::Policy { path, line, .. } => {
                    let i = FILES
                        .iter()
                        .position(|f| dir.join(f) == *path)
                        .unwrap_or_else(|| panic!("error names an unknown file: {shown}"));
                    let bytes = parts.get(i).copied().unwrap_or_default();
                    assert!(*line <= lines_of(bytes), "{shown}");
                }
                _ => {}
            }
            return;
        }
    };
    let v = m.check(PROBE, &CheckContext::default());
    for h in &v.hits {
        assert!(PROBE.is_char_boundary(h.start) && PROBE.is_char_boundary(h.end));
    }
    assert!(m.categories().count() > 0);

    let Some(group) = parts.get(6) else { return };
    let Ok(spec) = serde_json::from_slice::<GroupPolicySpec>(group) else {
        return;
    };
    if let Ok(g) = GroupPolicy::compile(&spec, &m) {
        for ext in [false, true] {
            let ctx = CheckContext {
                group: Some(&g),
                has_external_member: ext,
            };
            let v = m.check(PROBE, &ctx);
            for h in &v.hits {
                assert!(PROBE.is_char_boundary(h.start) && PROBE.is_char_boundary(h.end));
            }
            for w in spec.words.iter().take(8) {
                let _ = m.check(w, &ctx);
            }
        }
    }
});
