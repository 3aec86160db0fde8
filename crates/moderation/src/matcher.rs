//! Dictionary matching: one charwise double-array Aho-Corasick automaton (`daachorse`) over
//! every normalized pattern (deny words, allow phrases, secret markers, code names and the
//! context words of the detectors).
//!
//! The text is the sequence of folded characters that are not separators (no normalized
//! string is built). A large automaton is cache-unfriendly (one miss per step), so the scan is
//! *anchored and filtered*: at each position, small Bloom-style bit sets of the patterns'
//! first characters, exact two-character patterns and three-character prefixes tell whether
//! any pattern can start there; only then does a walk from the root consume characters while
//! the state still spells the text from that position, reporting patterns of exactly that
//! length. Exact (a filter false positive only costs a walk) and linear: a walk is bounded by
//! the longest pattern. Each match is reported as a range of folded-character (`FChar`) indices; the caller
//! applies Latin word boundaries, the allow-list and the leftmost-longest selection.

use std::collections::HashMap;

use daachorse::{CharwiseDoubleArrayAhoCorasick, CharwiseDoubleArrayAhoCorasickBuilder, MatchKind};

use crate::normalize::FChar;
use crate::policy::Action;

/// What one distinct normalized pattern means.
#[derive(Clone, Debug, Default)]
pub(crate) struct Entry {
    /// Length in characters.
    pub len: u32,
    /// The pattern starts with a Latin word character: the match must start at a word boundary.
    pub latin_start: bool,
    /// The pattern ends with a Latin word character: the match must end at a word boundary.
    pub latin_end: bool,
    /// Deny rule (index into the rule table), if the pattern is denied.
    pub deny: Option<u32>,
    /// Action of the deny rule, to keep the most severe one when a pattern is listed twice.
    pub deny_action: Action,
    /// The pattern is an allowed phrase.
    pub allow: bool,
    /// Detector bits for which the pattern is a context word.
    pub context: u8,
}

/// Collects patterns, merging duplicates.
#[derive(Default)]
pub(crate) struct MatcherBuilder {
    index: HashMap<String, u32>,
    entries: Vec<Entry>,
    patterns: Vec<String>,
}

impl MatcherBuilder {
    fn entry(&mut self, pattern: &str) -> &mut Entry {
        let idx = match self.index.get(pattern) {
            Some(&i) => i,
            None => {
                let i = self.entries.len() as u32;
                let first = pattern.chars().next();
                let last = pattern.chars().next_back();
                let latin = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
                self.entries.push(Entry {
                    len: pattern.chars().count() as u32,
                    latin_start: latin(first),
                    latin_end: latin(last),
                    ..Entry::default()
                });
                self.patterns.push(pattern.to_string());
                self.index.insert(pattern.to_string(), i);
                i
            }
        };
        &mut self.entries[idx as usize]
    }

    /// Adds a denied pattern (already normalized, non-empty) for rule `rule`.
    pub fn deny(&mut self, pattern: &str, rule: u32, action: Action) {
        let e = self.entry(pattern);
        if e.deny.is_none() || action > e.deny_action {
            e.deny = Some(rule);
            e.deny_action = action;
        }
    }

    /// Adds an allowed phrase (already normalized, non-empty).
    pub fn allow(&mut self, pattern: &str) {
        self.entry(pattern).allow = true;
    }

    /// Adds a context word for the detectors in `bits`.
    pub fn context(&mut self, pattern: &str, bits: u8) {
        self.entry(pattern).context |= bits;
    }

    /// Builds the automaton.
    pub fn build(self) -> Result<Matcher, String> {
        if self.entries.is_empty() {
            return Ok(Matcher::empty());
        }
        let filter = Filter::new(&self.patterns);
        let mut ac = CharwiseDoubleArrayAhoCorasickBuilder::new()
            .match_kind(MatchKind::Standard)
            // The scan uses its own filter; daachorse's prefilter only serves its iterators.
            .use_prefilter(false)
            .build_with_values(
                self.patterns
                    .iter()
                    .enumerate()
                    .map(|(i, p)| (p.as_str(), i as u32)),
            )
            .map_err(|e| e.to_string())?;
        ac.cache_depths().map_err(|e| e.to_string())?;
        Ok(Matcher {
            ac: Some(ac),
            entries: self.entries,
            filter,
        })
    }
}

/// A compiled pattern set.
pub(crate) struct Matcher {
    ac: Option<CharwiseDoubleArrayAhoCorasick<u32>>,
    entries: Vec<Entry>,
    filter: Filter,
}

/// One-probe Bloom bit set over character tuples.
struct Bits {
    bits: Vec<u64>,
    shift: u32,
    seed: u32,
}

impl Bits {
    /// About 16 bits per key, between 4 Kib and 2 Mib (256 KiB).
    fn new(keys: usize, seed: u32) -> Bits {
        let log = (keys.max(1) * 16)
            .next_power_of_two()
            .trailing_zeros()
            .clamp(12, 21);
        Bits {
            bits: vec![0; 1 << (log - 6)],
            shift: 32 - log,
            seed,
        }
    }

    #[inline(always)]
    fn slot(&self, a: char, b: char, c: char) -> usize {
        let h = (a as u32).wrapping_mul(0x9E37_79B1)
            ^ (b as u32).wrapping_mul(0x85EB_CA77).rotate_left(11)
            ^ (c as u32).wrapping_mul(0xC2B2_AE3D).rotate_left(22)
            ^ self.seed;
        (h.wrapping_mul(0x27D4_EB2F) >> self.shift) as usize
    }

    fn insert(&mut self, a: char, b: char, c: char) {
        let i = self.slot(a, b, c);
        if let Some(w) = self.bits.get_mut(i >> 6) {
            *w |= 1 << (i & 63);
        }
    }

    #[inline(always)]
    fn contains(&self, a: char, b: char, c: char) -> bool {
        let i = self.slot(a, b, c);
        self.bits
            .get(i >> 6)
            .is_some_and(|w| w & (1 << (i & 63)) != 0)
    }

    fn bytes(&self) -> usize {
        self.bits.len() * 8
    }
}

/// Which positions can start a pattern.
struct Filter {
    /// One-character patterns.
    one: Bits,
    any_one: bool,
    /// First two characters of every pattern of two or more characters.
    pair_prefix: Bits,
    /// Two-character patterns.
    two: Bits,
    /// First three characters of every pattern of three or more characters.
    three: Bits,
    /// Longest pattern, in characters.
    max_len: usize,
}

const NONE: char = '\0';

impl Filter {
    fn new(patterns: &[String]) -> Filter {
        let n = patterns.len();
        let mut f = Filter {
            one: Bits::new(n / 16, 1),
            any_one: false,
            pair_prefix: Bits::new(n, 2),
            two: Bits::new(n / 2, 3),
            three: Bits::new(n, 4),
            max_len: 0,
        };
        for p in patterns {
            let mut it = p.chars();
            let (a, b, c) = (it.next(), it.next(), it.next());
            f.max_len = f.max_len.max(p.chars().count());
            match (a, b, c) {
                (Some(a), None, _) => {
                    f.one.insert(a, NONE, NONE);
                    f.any_one = true;
                }
                (Some(a), Some(b), None) => {
                    f.pair_prefix.insert(a, b, NONE);
                    f.two.insert(a, b, NONE);
                }
                (Some(a), Some(b), Some(c)) => {
                    f.pair_prefix.insert(a, b, NONE);
                    f.three.insert(a, b, c);
                }
                _ => {}
            }
        }
        f
    }

    fn empty() -> Filter {
        Filter::new(&[])
    }

    /// Whether a pattern may start with `a`, followed by `b` and `c` (`NONE` past the end).
    #[inline(always)]
    fn may_start(&self, a: char, b: char, c: char) -> bool {
        (self.any_one && self.one.contains(a, NONE, NONE))
            || (b != NONE
                && self.pair_prefix.contains(a, b, NONE)
                && (self.two.contains(a, b, NONE) || (c != NONE && self.three.contains(a, b, c))))
    }

    fn bytes(&self) -> usize {
        self.one.bytes() + self.pair_prefix.bytes() + self.two.bytes() + self.three.bytes()
    }
}

/// One raw match: pattern `entry` covering folded characters `start..end`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RawMatch {
    pub entry: u32,
    pub start: u32,
    pub end: u32,
}

impl Matcher {
    /// A matcher with no patterns.
    pub fn empty() -> Matcher {
        Matcher {
            ac: None,
            entries: Vec::new(),
            filter: Filter::empty(),
        }
    }

    /// The entry of a match.
    pub fn entry(&self, i: u32) -> Option<&Entry> {
        self.entries.get(i as usize)
    }

    /// Number of distinct patterns.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Heap bytes of the automaton and the entry table.
    pub fn heap_bytes(&self) -> usize {
        self.ac.as_ref().map_or(0, |a| a.heap_bytes())
            + self.entries.capacity() * std::mem::size_of::<Entry>()
            + self.filter.bytes()
    }

    /// Appends every (overlapping) match to `out`. `text` is the folded text and `compact`
    /// the indices of its non-separator characters, which is what patterns match against.
    pub fn scan(&self, text: &[FChar], compact: &[u32], out: &mut Vec<RawMatch>) {
        let Some(ac) = &self.ac else { return };
        let n = compact.len();
        let ch = |k: usize| {
            compact
                .get(k)
                .and_then(|&i| text.get(i as usize))
                .map_or(NONE, |f| f.c)
        };
        let (mut b, mut c) = (ch(0), ch(1));
        for i in 0..n {
            let a = b;
            b = c;
            c = ch(i + 2);
            if !self.filter.may_start(a, b, c) {
                continue;
            }
            let mut stepper = ac.find_overlapping_stepper();
            let end = n.min(i + self.filter.max_len);
            for k in i..end {
                stepper.consume(ch(k));
                let depth = (k - i + 1) as u32;
                if stepper.depth() != Some(depth) {
                    break;
                }
                for m in stepper.matches() {
                    let entry = m.value();
                    if self
                        .entries
                        .get(entry as usize)
                        .is_some_and(|e| e.len == depth)
                    {
                        let (Some(&start), Some(&last)) = (compact.get(i), compact.get(k)) else {
                            continue;
                        };
                        // A reversed (right-to-left) view walks the text backwards.
                        out.push(RawMatch {
                            entry,
                            start: start.min(last),
                            end: start.max(last) + 1,
                        });
                    }
                }
            }
        }
    }
}
