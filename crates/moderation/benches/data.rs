//! Test and benchmark data shared by `benches/moderation.rs` and `examples/fp_rate.rs`
//! (included with `#[path]`): the lexicon as a rule directory, padding, and COLD comments.
//!
//! The data lives in `../shared/data/moderation` next to the workspace (or wherever
//! `MODERATION_DATA` points); callers skip with a message when it is absent.

#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};

/// The data directory, if present.
pub fn data_dir() -> Option<PathBuf> {
    let p = match std::env::var_os("MODERATION_DATA") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/moderation"),
    };
    (p.join("lexicon").is_dir() && p.join("cold").is_dir()).then_some(p)
}

/// The shipped rule directory.
pub fn shipped_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/moderation")
}

/// Our category for a lexicon file (its name is its Chinese category).
pub fn lexicon_category(stem: &str) -> &'static str {
    match stem {
        "色情类型" | "色情词库" => "porn",
        "暴恐词库" | "涉枪涉爆" => "violence",
        "政治类型" | "反动词库" | "新思想启蒙" | "GFW补充词库" | "贪腐词库" | "民生词库" => {
            "politics"
        }
        "广告类型" => "ads",
        "非法网址" => "illegal",
        _ => "other",
    }
}

/// Lexicon files: (category, file name, text).
pub fn lexicon_files(data: &Path) -> Vec<(&'static str, String, String)> {
    let mut out = Vec::new();
    let Ok(rd) = fs::read_dir(data.join("lexicon")) else {
        return out;
    };
    let mut paths: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "txt"))
        .collect();
    paths.sort();
    for p in paths {
        let stem = p
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("")
            .to_string();
        let bytes = fs::read(&p).unwrap_or_default();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        out.push((lexicon_category(&stem), format!("{stem}.txt"), text));
    }
    out
}

/// `n` generated patterns (3–5 random CJK characters each, deterministic), to pad a rule set.
pub fn padding(n: usize) -> String {
    let mut s = String::with_capacity(n * 14);
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for _ in 0..n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let len = 3 + (x % 3) as usize;
        let mut y = x;
        for _ in 0..len {
            y = y
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let c = 0x4E00 + ((y >> 33) % 0x51A5) as u32;
            s.push(char::from_u32(c).unwrap_or('中'));
        }
        s.push('\n');
    }
    s
}

/// Writes the lexicon as a rule directory: `deny/<category>.txt` per lexicon file (named
/// `<category>-<n>.txt` is not possible: one file per category, so files are concatenated),
/// plus `deny/padding.txt` with generated patterns so that the total is about `total` lines.
/// `policy` and `allow` are written when given.
pub fn write_rule_dir(
    data: &Path,
    out: &Path,
    total: usize,
    policy: Option<&str>,
    allow: Option<&str>,
) -> std::io::Result<usize> {
    fs::create_dir_all(out.join("deny"))?;
    let mut by_cat: std::collections::BTreeMap<&str, String> = Default::default();
    let mut lines = 0;
    for (cat, _name, text) in lexicon_files(data) {
        let t = by_cat.entry(cat).or_default();
        for l in text.lines() {
            t.push_str(l);
            t.push('\n');
            lines += 1;
        }
    }
    for (cat, text) in &by_cat {
        fs::write(out.join("deny").join(format!("{cat}.txt")), text)?;
    }
    let pad = total.saturating_sub(lines);
    fs::write(out.join("deny/padding.txt"), padding(pad))?;
    if let Some(p) = policy {
        fs::write(out.join("policy.toml"), p)?;
    }
    if let Some(a) = allow {
        fs::write(out.join("allow.txt"), a)?;
    }
    Ok(lines + pad)
}

/// Policy for the raw lexicon: everything as-is (single characters too), `other` blocks.
pub const RAW_POLICY: &str =
    "[normalize]\nmin_pattern_chars = 1\n[categories]\nother = \"block\"\npadding = \"block\"\n";

/// COLD comments: (label, text). Label 1 is offensive, 0 safe.
pub fn cold_comments(data: &Path) -> Vec<(u8, String)> {
    let mut out = Vec::new();
    for name in ["train.csv", "dev.csv"] {
        let Ok(text) = fs::read_to_string(data.join("cold").join(name)) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let mut parts = line.splitn(5, ',');
            let (_, _, _, label, body) = (
                parts.next(),
                parts.next(),
                parts.next(),
                parts.next(),
                parts.next(),
            );
            let (Some(label), Some(body)) = (label, body) else {
                continue;
            };
            let Ok(label) = label.trim().parse::<u8>() else {
                continue;
            };
            let body = body
                .strip_prefix('"')
                .and_then(|b| b.strip_suffix('"'))
                .map(|b| b.replace("\"\"", "\""))
                .unwrap_or_else(|| body.to_string());
            out.push((label, body));
        }
    }
    out
}
