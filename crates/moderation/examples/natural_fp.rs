//! False hits of the second-round evasion classes on natural text (`cargo run --release -p
//! moderation --example natural_fp -- [FILE...]`): every line of every FILE (any natural text:
//! READMEs, chat logs, code) and every COLD comment is checked twice per rule set, with the
//! classes on and off, and the texts that only the classes flag are counted and shown.
//!
//! - symbols and wildcards read as letters in Latin words (`normalize.read_symbols`);
//! - pinyin and initials of the shipped entries that opt in (`word<TAB>pinyin initials`);
//!
//! Rule sets: `shipped` (`config/moderation/`) and `lexicon` (the whole lexicon, default policy,
//! padded to 100k lines like the throughput benchmark, without any opt-in). Japanese kanji
//! forms have no switch: their effect on COLD is the change of the verdict digest.

#[path = "../benches/data.rs"]
mod data;

use std::path::{Path, PathBuf};

use moderation::{Action, CheckContext, Moderator};

fn main() {
    let data = data::data_dir();
    let mut corpora: Vec<(String, Vec<String>)> = Vec::new();
    for f in std::env::args().skip(1) {
        match std::fs::read_to_string(&f) {
            Ok(t) => {
                let lines: Vec<String> = t
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(String::from)
                    .collect();
                corpora.push((f, lines));
            }
            Err(e) => println!("cannot read {f}: {e}"),
        }
    }
    if let Some(d) = &data {
        let cold = data::cold_comments(d).into_iter().map(|(_, t)| t).collect();
        corpora.push(("COLD (all comments)".to_string(), cold));
    }
    let tmp = std::env::temp_dir().join(format!("moderation-nfp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let mut sets: Vec<(&str, PathBuf, PathBuf)> = Vec::new();
    let shipped = data::shipped_dir();
    let shipped_off = tmp.join("shipped-off");
    if let Err(e) = copy_without_classes(&shipped, &shipped_off) {
        println!("cannot copy the shipped rules: {e}");
        return;
    }
    sets.push(("shipped", shipped, shipped_off));
    if let Some(d) = &data {
        let on = tmp.join("lexicon-on");
        let off = tmp.join("lexicon-off");
        let policy = "[categories]\nother = \"block\"\npadding = \"block\"\n";
        let policy_off = format!("[normalize]\nread_symbols = false\n{policy}");
        let ok = data::write_rule_dir(d, &on, 100_000, Some(policy), None).is_ok()
            && data::write_rule_dir(d, &off, 100_000, Some(&policy_off), None).is_ok();
        if ok {
            sets.push(("lexicon", on, off));
        }
    }
    let ctx = CheckContext::default();
    for (name, on, off) in &sets {
        let (Ok(m_on), Ok(m_off)) = (Moderator::load_dir(on), Moderator::load_dir(off)) else {
            println!("{name}: cannot load");
            continue;
        };
        println!(
            "{name}: {} patterns ({} pinyin forms and initials)",
            m_on.stats().patterns,
            m_on.stats().romanized
        );
        for (corpus, lines) in &corpora {
            let (mut flagged_on, mut flagged_off, mut only_on) = (0usize, 0usize, Vec::new());
            for l in lines {
                let a = m_on.check(l, &ctx);
                let b = m_off.check(l, &ctx);
                let words = |v: &moderation::Verdict| {
                    v.hits
                        .iter()
                        .filter(|h| &*h.category != "offensive" && h.action > Action::Allow)
                        .map(|h| (h.start, h.end, h.rule.clone()))
                        .collect::<Vec<_>>()
                };
                let (wa, wb) = (words(&a), words(&b));
                flagged_on += usize::from(!wa.is_empty());
                flagged_off += usize::from(!wb.is_empty());
                let new: Vec<String> = wa
                    .iter()
                    .filter(|h| !wb.contains(h))
                    .map(|(s, e, r)| format!("{:?} ({r})", l.get(*s..*e).unwrap_or("")))
                    .collect();
                if !new.is_empty() {
                    only_on.push(format!("{} <- {}", new.join(", "), clip(l)));
                }
            }
            println!(
                "  {corpus}: {} texts; flagged by word rules: {flagged_off} without the classes, \
                 {flagged_on} with; {} texts with a hit only the classes find ({:.3} %)",
                lines.len(),
                only_on.len(),
                100.0 * only_on.len() as f64 / lines.len().max(1) as f64
            );
            for x in only_on.iter().take(25) {
                println!("    {x}");
            }
        }
    }
    let _ = std::fs::remove_dir_all(&tmp);
}

fn clip(s: &str) -> String {
    let t: String = s.chars().take(90).collect();
    if t.len() < s.len() {
        format!("{t}...")
    } else {
        t
    }
}

/// Copies a rule directory with the classes off: `read_symbols = false` and no `pinyin` or
/// `initials` options.
fn copy_without_classes(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to.join("deny"))?;
    for e in std::fs::read_dir(from)? {
        let p = e?.path();
        if p.is_file() {
            let mut t = std::fs::read_to_string(&p)?;
            if p.file_name().is_some_and(|n| n == "policy.toml") {
                t = t.replace("read_symbols = true", "read_symbols = false");
            }
            std::fs::write(to.join(p.file_name().unwrap_or_default()), t)?;
        }
    }
    for e in std::fs::read_dir(from.join("deny"))? {
        let p = e?.path();
        let t = std::fs::read_to_string(&p)?;
        let t: Vec<String> = t
            .lines()
            .map(|l| match l.split_once('\t') {
                Some((w, o)) => {
                    let rest: Vec<&str> = o
                        .split_whitespace()
                        .filter(|x| *x != "pinyin" && *x != "initials")
                        .collect();
                    if rest.is_empty() {
                        w.to_string()
                    } else {
                        format!("{w}\t{}", rest.join(" "))
                    }
                }
                None => l.to_string(),
            })
            .collect();
        std::fs::write(
            to.join("deny").join(p.file_name().unwrap_or_default()),
            t.join("\n"),
        )?;
    }
    Ok(())
}
