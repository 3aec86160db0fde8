//! Pinyin and initials of rule entries that opt in (`赌博<TAB>pinyin initials`): `dubo`,
//! `du bo`, `du-bo` and `db` then match like the entry itself.
//!
//! Readings come from the `pinyin` crate (its table is compiled in: nothing is read at run
//! time), without tones. A character with several readings (多音字) contributes its three most
//! common ones, up to [`MAX_FORMS`] combinations per entry; `ü` is written both `u` and `v` (`nü`: `nu`,
//! `nv`), as people type it. An entry with a character that has no reading and is not an
//! ASCII letter or digit gets no pinyin form.
//!
//! Pinyin forms are Latin patterns, so they match on Latin word boundaries; unlike other Latin
//! patterns they may be split by spaces into syllables (`du bo`). Initials are short and
//! collide with everyday abbreviations (`db` is a database), which is why entries opt in one by
//! one and why initials shorter than `normalize.min_initials` letters are not used.

use pinyin::ToPinyinMulti;

/// Most pinyin spellings generated for one entry (heteronyms multiply).
pub(crate) const MAX_FORMS: usize = 16;
/// Readings used per character, most common first (`行`: xing, hang, heng).
const MAX_READINGS: usize = 3;

/// The pinyin spellings (`full`) and initials of a normalized entry, or `None` when some
/// character has no reading.
pub(crate) fn forms(word: &str) -> Option<(Vec<String>, Vec<String>)> {
    // Every syllable's readings: (spelling, initial).
    let mut syllables: Vec<Vec<(String, char)>> = Vec::new();
    for c in word.chars() {
        let mut readings: Vec<(String, char)> = Vec::new();
        match c.to_pinyin_multi() {
            Some(m) => {
                for p in m.into_iter().take(MAX_READINGS) {
                    let plain = p.plain();
                    let mut spellings = vec![plain.replace('ü', "u")];
                    if plain.contains('ü') {
                        spellings.push(plain.replace('ü', "v"));
                    }
                    for s in spellings {
                        let Some(first) = s.chars().next() else {
                            continue;
                        };
                        if !readings.iter().any(|(x, _)| *x == s) {
                            readings.push((s, first));
                        }
                    }
                }
            }
            None if c.is_ascii_alphanumeric() => readings.push((c.to_string(), c)),
            None => return None,
        }
        if readings.is_empty() {
            return None;
        }
        syllables.push(readings);
    }
    if syllables.is_empty() {
        return None;
    }
    let mut full: Vec<String> = vec![String::new()];
    let mut initials: Vec<String> = vec![String::new()];
    for readings in &syllables {
        let mut next = Vec::new();
        for f in &full {
            for (s, _) in readings {
                if next.len() < MAX_FORMS {
                    next.push(format!("{f}{s}"));
                }
            }
        }
        full = next;
        let mut next: Vec<String> = Vec::new();
        for f in &initials {
            for (_, i) in readings {
                let v = format!("{f}{i}");
                if next.len() < MAX_FORMS && !next.contains(&v) {
                    next.push(v);
                }
            }
        }
        initials = next;
    }
    full.dedup();
    Some((full, initials))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pinyin_and_initials() {
        let (full, ini) = forms("赌博").unwrap();
        assert_eq!(full, ["dubo"]);
        assert_eq!(ini, ["db"]);
        let (full, ini) = forms("法轮功").unwrap();
        assert!(full.contains(&"falungong".to_string()), "{full:?}");
        assert!(ini.contains(&"flg".to_string()), "{ini:?}");
        // ü both ways, heteronyms (女: nü, rǔ).
        let (full, _) = forms("女").unwrap();
        assert!(full.contains(&"nu".to_string()) && full.contains(&"nv".to_string()));
        // ASCII kept, other scripts refused.
        assert_eq!(forms("k粉").unwrap().0, ["kfen"]);
        assert!(forms("😀").is_none());
        // Bounded.
        assert!(forms("行行行行行行行行").unwrap().0.len() <= MAX_FORMS);
    }
}
