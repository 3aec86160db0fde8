//! False-positive measurement on COLD (`cargo run --release -p moderation --example fp_rate`).
//!
//! For each rule set, runs every COLD comment through the full pipeline and reports how many
//! safe comments (label 0) get a verdict other than `allow` (flagged) and how many are
//! blocked, next to the same numbers for offensive comments (label 1), plus the rules that
//! flag the most safe comments. Rule sets:
//!
//! - `raw`: the whole lexicon as-is (single characters included, no allow-list);
//! - `curated`: the lexicon with single-character entries dropped, the over-broad entries of
//!   `examples/lexicon_stoplist.txt` removed and the shipped allow-list;
//! - `shipped`: the default rules in `config/moderation/`.

#[path = "../benches/data.rs"]
mod data;

use std::collections::{HashMap, HashSet};
use std::path::Path;

use moderation::{Action, CheckContext, Moderator};

fn main() {
    let Some(data) = data::data_dir() else {
        println!(
            "moderation data not found (../shared/data/moderation or MODERATION_DATA): skipping"
        );
        return;
    };
    let cold = data::cold_comments(&data);
    let safe = cold.iter().filter(|(l, _)| *l == 0).count();
    println!(
        "COLD: {} comments, {} safe (label 0), {} offensive",
        cold.len(),
        safe,
        cold.len() - safe
    );
    let stoplist: HashSet<String> = include_str!("lexicon_stoplist.txt")
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| moderation::normalize(l.trim()).text)
        .collect();
    let shipped = data::shipped_dir();
    let allow = std::fs::read_to_string(shipped.join("allow.txt")).unwrap_or_default();

    let tmp = std::env::temp_dir().join(format!("moderation-fp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);

    // raw
    let raw_dir = tmp.join("raw");
    let res = data::write_rule_dir(&data, &raw_dir, 0, Some(data::RAW_POLICY), None);
    if let Err(e) = res {
        println!("cannot write {}: {e}", raw_dir.display());
        return;
    }
    report("raw", &raw_dir, &cold, &data);

    // curated: drop stoplisted entries, min 2 chars (the default), shipped allow-list.
    let cur_dir = tmp.join("curated");
    let _ = std::fs::create_dir_all(cur_dir.join("deny"));
    let mut by_cat: std::collections::BTreeMap<&str, String> = Default::default();
    let mut dropped = 0;
    for (cat, _, text) in data::lexicon_files(&data) {
        let t = by_cat.entry(cat).or_default();
        for l in text.lines() {
            if stoplist.contains(&moderation::normalize(l.trim()).text) {
                dropped += 1;
                t.push_str("# stoplisted\n");
            } else {
                t.push_str(l);
                t.push('\n');
            }
        }
    }
    for (cat, text) in &by_cat {
        let _ = std::fs::write(cur_dir.join("deny").join(format!("{cat}.txt")), text);
    }
    let _ = std::fs::write(cur_dir.join("allow.txt"), &allow);
    let _ = std::fs::write(
        cur_dir.join("policy.toml"),
        "[categories]\nother = \"block\"\n",
    );
    println!("curated: {dropped} stoplisted lexicon lines");
    report("curated", &cur_dir, &cold, &data);

    report("shipped", &shipped, &cold, &data);
    let _ = std::fs::remove_dir_all(&tmp);
}

fn report(name: &str, dir: &Path, cold: &[(u8, String)], data: &Path) {
    let t = std::time::Instant::now();
    let m = match Moderator::load_dir(dir) {
        Ok(m) => m,
        Err(e) => {
            println!("{name}: load failed: {e}");
            return;
        }
    };
    let load = t.elapsed();
    let ctx = CheckContext::default();
    let mut flagged = [0usize; 2];
    let mut blocked = [0usize; 2];
    let mut total = [0usize; 2];
    let mut by_rule: HashMap<String, usize> = HashMap::new();
    for (label, text) in cold {
        let l = usize::from(*label).min(1);
        total[l] += 1;
        let v = m.check(text, &ctx);
        if v.action != Action::Allow {
            flagged[l] += 1;
            if l == 0 {
                if let Some(r) = &v.rule {
                    *by_rule.entry(r.to_string()).or_default() += 1;
                }
            }
        }
        if v.action == Action::Block {
            blocked[l] += 1;
        }
    }
    let pct = |a: usize, b: usize| 100.0 * a as f64 / b.max(1) as f64;
    println!(
        "{name:8} patterns {:>6}  load {:>6.1} ms  safe flagged {:>5} ({:5.2}%) blocked {:>5} ({:5.2}%)  | offensive flagged {:5.2}% blocked {:5.2}%",
        m.stats().patterns,
        load.as_secs_f64() * 1e3,
        flagged[0],
        pct(flagged[0], total[0]),
        blocked[0],
        pct(blocked[0], total[0]),
        pct(flagged[1], total[1]),
        pct(blocked[1], total[1]),
    );
    let mut top: Vec<_> = by_rule.into_iter().collect();
    top.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let verbose = std::env::var_os("FP_VERBOSE").is_some();
    let show = if verbose { 60 } else { 10 };
    let words: Vec<String> = top
        .iter()
        .take(show)
        .map(|(rule, n)| format!("{}={n}", rule_word(dir, rule, data)))
        .collect();
    println!("  top rules on safe comments: {}", words.join(" "));
}

/// The word behind a rule id `deny/x.txt:N` (for the report only).
fn rule_word(dir: &Path, rule: &str, _data: &Path) -> String {
    let Some((file, line)) = rule.rsplit_once(':') else {
        return rule.to_string();
    };
    let Ok(n) = line.parse::<usize>() else {
        return rule.to_string();
    };
    std::fs::read_to_string(dir.join(file))
        .ok()
        .and_then(|t| {
            t.lines()
                .nth(n.saturating_sub(1))
                .map(|l| l.split('\t').next().unwrap_or(l).to_string())
        })
        .unwrap_or_else(|| rule.to_string())
}
