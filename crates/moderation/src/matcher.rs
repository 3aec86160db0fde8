//! Dictionary matching: one character-wise double-array trie (`crawdad`) over every normalized
//! pattern (deny words, allow phrases, secret markers, code names and the context words of the
//! detectors).
//!
//! The text is the sequence of folded characters that are not separators (no normalized
//! string is built). The scan is *anchored and filtered*: at each position, an exact set of
//! the one-character patterns and small Bloom-style bit sets of the patterns' first two
//! characters, the two-character patterns and the three-character prefixes tell whether any
//! pattern can start there (their keys combine the characters' hashes, computed once per
//! check and shared with the classifier: see [`crate::classifier::char_hash`]); only then does a
//! common-prefix search walk the trie from its root, reporting every pattern that the text
//! spells from that position. Exact (a filter false positive only costs a walk) and linear: a
//! walk is bounded by the longest pattern. The trie is used instead of an Aho-Corasick
//! automaton because the scan is anchored anyway: a trie node is 8 bytes (the automaton's
//! failure links, output lists and depth table are not needed), so 100,000 patterns take a
//! few MiB and a walk touches one node per character. Each match is reported as a range of
//! folded-character (`FChar`) indices; the caller applies Latin word boundaries, the
//! allow-list and the leftmost-longest selection.

use std::collections::HashMap;

use crawdad::Trie;

// The per-character hash that the filter's probes combine: one multiply per character of
// text, shared by the one-, two- and three-character probes of the positions around it and
// by the classifier's n-gram buckets.
use crate::classifier::{bucket, char_hash as mix, pair_key, triple_key, BITS};

use crate::leet::LatinTrie;
use crate::normalize::FChar;
use crate::policy::Action;

/// What one distinct normalized pattern means.
#[derive(Clone, Debug, Default)]
pub(crate) struct Entry {
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
    /// The pattern is the pinyin of an entry: it may be split into syllables by spaces
    /// (`du bo`), which other Latin patterns may not (`the pen is`).
    pub spaced: bool,
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

    /// Adds a denied pinyin pattern (see [`Entry::spaced`]).
    pub fn deny_spaced(&mut self, pattern: &str, rule: u32, action: Action) {
        self.deny(pattern, rule, action);
        self.entry(pattern).spaced = true;
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
        // The trie's terminator may not occur in a key; a pattern containing it (a noncharacter
        // no text needs) is left out, and the scan stops reading at that character.
        let trie = Trie::from_records(
            self.patterns
                .iter()
                .enumerate()
                .filter(|(_, p)| !p.contains(crawdad::END_MARKER))
                .map(|(i, p)| (p.as_str(), i as u32)),
        )
        .map_err(|e| e.to_string())?;
        let latin = LatinTrie::new(
            self.patterns
                .iter()
                .zip(&self.entries)
                .enumerate()
                .filter(|(_, (_, e))| e.deny.is_some())
                .map(|(i, (p, _))| (p.as_str(), i as u32)),
        );
        Ok(Matcher {
            trie: Some(trie),
            entries: self.entries,
            filter,
            latin,
        })
    }
}

/// A compiled pattern set.
pub(crate) struct Matcher {
    trie: Option<Trie>,
    entries: Vec<Entry>,
    filter: Filter,
    /// The Latin deny patterns again, for symbols and wildcards read as letters.
    latin: LatinTrie,
}

/// Remixes a probe key for a set over the same tuples as another (`two` next to
/// `pair_prefix`), so that a false positive of one is not always one of the other.
#[inline(always)]
fn remix(key: u64) -> u64 {
    (key ^ (key >> 29)).wrapping_mul(0xD6E8_FEB8_6659_FD93)
}

/// One-probe Bloom bit set over hashed character tuples (the top bits of the key).
struct Bits {
    bits: Vec<u64>,
    shift: u32,
}

impl Bits {
    /// About 16 bits per key, between 4 Kib and 2 Mib (256 KiB).
    fn new(keys: usize) -> Bits {
        let log = (keys.max(1) * 16)
            .next_power_of_two()
            .trailing_zeros()
            .clamp(12, 21);
        Bits {
            bits: vec![0; 1 << (log - 6)],
            shift: 64 - log,
        }
    }

    #[inline(always)]
    fn slot(&self, key: u64) -> usize {
        (key >> self.shift) as usize
    }

    fn insert(&mut self, key: u64) {
        let i = self.slot(key);
        if let Some(w) = self.bits.get_mut(i >> 6) {
            *w |= 1 << (i & 63);
        }
    }

    #[inline(always)]
    fn contains(&self, key: u64) -> bool {
        let i = self.slot(key);
        self.bits
            .get(i >> 6)
            .is_some_and(|w| w & (1 << (i & 63)) != 0)
    }

    fn bytes(&self) -> usize {
        self.bits.len() * 8
    }
}

/// One bit per Basic Multilingual Plane character (8 KiB, stays in L1), and one flag for all
/// the characters outside it.
struct CharSet {
    bmp: Box<[u64]>,
    other: bool,
}

impl CharSet {
    fn new() -> CharSet {
        CharSet {
            bmp: vec![0u64; 0x1_0000 / 64].into_boxed_slice(),
            other: false,
        }
    }

    fn insert(&mut self, c: char) {
        match self.bmp.get_mut(c as usize >> 6) {
            Some(w) => *w |= 1 << (c as u32 & 63),
            None => self.other = true,
        }
    }

    /// Exact for the BMP; outside it, whether any character was inserted there.
    #[inline(always)]
    fn contains(&self, c: char) -> bool {
        match self.bmp.get(c as usize >> 6) {
            Some(w) => w & (1 << (c as u32 & 63)) != 0,
            None => self.other,
        }
    }
}

/// A rule set whose patterns start with at most this many distinct characters checks the first
/// character exactly before any Bloom probe (the shipped rules: about 100). With a large
/// lexicon nearly every character of real text starts some pattern, so that check would only
/// add work.
const FIRST_SET_MAX: usize = 1024;

/// Which positions can start a pattern. Most positions of real text are rejected by one probe
/// of `pair_prefix` (a hash of the position's first two characters, from the per-character
/// [`mix`] values the scan carries along); the one-character patterns are an exact set.
struct Filter {
    /// First characters of all patterns, exactly, for small rule sets (see [`FIRST_SET_MAX`]).
    first: Option<CharSet>,
    /// One-character patterns, exactly (in the BMP).
    one: CharSet,
    any_one: bool,
    /// First two characters of every pattern of two or more characters.
    pair_prefix: Bits,
    /// Two-character patterns.
    two: Bits,
    /// First three characters of every pattern of three or more characters.
    three: Bits,
}

impl Filter {
    fn new(patterns: &[String]) -> Filter {
        let n = patterns.len();
        let firsts: std::collections::HashSet<char> =
            patterns.iter().filter_map(|p| p.chars().next()).collect();
        let first = (firsts.len() <= FIRST_SET_MAX).then(|| {
            let mut set = CharSet::new();
            firsts.iter().for_each(|&c| set.insert(c));
            set
        });
        let mut f = Filter {
            first,
            one: CharSet::new(),
            any_one: false,
            pair_prefix: Bits::new(n),
            two: Bits::new(n / 2),
            three: Bits::new(n),
        };
        for p in patterns {
            let mut it = p.chars();
            match (it.next(), it.next(), it.next()) {
                (Some(a), None, _) => {
                    f.one.insert(a);
                    f.any_one = true;
                }
                (Some(a), Some(b), None) => {
                    f.pair_prefix.insert(pair_key(mix(a), mix(b)));
                    f.two.insert(remix(pair_key(mix(a), mix(b))));
                }
                (Some(a), Some(b), Some(c)) => {
                    f.pair_prefix.insert(pair_key(mix(a), mix(b)));
                    f.three.insert(triple_key(mix(a), mix(b), mix(c)));
                }
                _ => {}
            }
        }
        f
    }

    fn empty() -> Filter {
        Filter::new(&[])
    }

    /// Whether a pattern may start with `a` (whose [`mix`] is `ha`), followed by the
    /// characters hashed `hb` and `hc` (0 past the end of the text: a false positive there
    /// only costs a trie walk). `FIRST` and `ONE` say whether [`Filter::first`] and
    /// [`Filter::one`] are in use (the scan loop is compiled once for each case).
    #[inline(always)]
    fn may_start<const FIRST: bool, const ONE: bool>(
        &self,
        a: char,
        ha: u64,
        hb: u64,
        hc: u64,
    ) -> bool {
        self.may_start_keys::<FIRST, ONE>(a, pair_key(ha, hb), triple_key(ha, hb, hc))
    }

    /// [`Filter::may_start`] from the keys of the position's pair and triple (`pair_key(ha,
    /// hb)`, `triple_key(ha, hb, hc)`), which the fused pass shares with the classifier.
    #[inline(always)]
    fn may_start_keys<const FIRST: bool, const ONE: bool>(
        &self,
        a: char,
        pair: u64,
        triple: u64,
    ) -> bool {
        if FIRST && self.first.as_ref().is_some_and(|set| !set.contains(a)) {
            return false;
        }
        if ONE && self.one.contains(a) {
            return true;
        }
        self.pair_prefix.contains(pair)
            && (self.two.contains(remix(pair)) || self.three.contains(triple))
    }

    fn bytes(&self) -> usize {
        self.first.as_ref().map_or(0, |set| set.bmp.len() * 8)
            + self.one.bmp.len() * 8
            + self.pair_prefix.bytes()
            + self.two.bytes()
            + self.three.bytes()
    }
}

/// The weight table of the scan without the classifier (never read).
static ZERO: [i8; 1 << BITS] = [0; 1 << BITS];

/// The classifier's n-gram sum of `chars` alone (a matcher without patterns).
fn score_sum(chars: &[char], w: &[i8; 1 << BITS]) -> i64 {
    let mut sum = 0i64;
    crate::classifier::for_each_feature(chars, |b| sum += i64::from(w[b & ((1 << BITS) - 1)]));
    sum
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
            trie: None,
            entries: Vec::new(),
            filter: Filter::empty(),
            latin: LatinTrie::default(),
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
        self.trie.as_ref().map_or(0, Trie::heap_bytes)
            + self.entries.capacity() * std::mem::size_of::<Entry>()
            + self.filter.bytes()
            + self.latin.heap_bytes()
    }

    /// Appends the deny patterns that Latin words spell when their look-alike symbols, digits
    /// and masking wildcards are read as letters (`sh!t`, `f*ck`, `$hit`: see [`crate::leet`]).
    pub fn scan_latin(&self, text: &[FChar], out: &mut Vec<RawMatch>) {
        self.latin.scan(text, out);
    }

    /// Appends every (overlapping) match to `out`. `chars` is what patterns match against:
    /// the folded text's non-separator characters, whose indices in the folded text are
    /// `compact` (same length); `hashes` is [`mix`] of each of `chars` followed by two zeros.
    pub fn scan(&self, chars: &[char], hashes: &[u64], compact: &[u32], out: &mut Vec<RawMatch>) {
        match (self.filter.first.is_some(), self.filter.any_one) {
            (false, false) => self.scan_with::<false, false>(chars, hashes, compact, out),
            (false, true) => self.scan_with::<false, true>(chars, hashes, compact, out),
            (true, false) => self.scan_with::<true, false>(chars, hashes, compact, out),
            (true, true) => self.scan_with::<true, true>(chars, hashes, compact, out),
        }
    }

    /// [`Matcher::scan`] of `chars` (no hashes needed: they are computed on the way) fused
    /// with the classifier's n-gram sum: one pass computes each character's hash and the keys
    /// of the pair and the triple that end there, probes the start filter with them and, when
    /// `weights` is given, adds the weights of the three n-grams (the same keys: see
    /// [`crate::classifier::char_hash`]). Returns the sum (0 without `weights`); the matches
    /// are those of [`Matcher::scan`], in the same order.
    pub fn scan_scored(
        &self,
        chars: &[char],
        compact: &[u32],
        weights: Option<&[i8; 1 << BITS]>,
        out: &mut Vec<RawMatch>,
    ) -> i64 {
        let Some(trie) = &self.trie else {
            return weights.map_or(0, |w| score_sum(chars, w));
        };
        let f = &self.filter;
        match (f.first.is_some(), f.any_one, weights) {
            (false, false, None) => {
                self.fused::<false, false, false>(trie, chars, compact, &ZERO, out)
            }
            (false, true, None) => {
                self.fused::<false, true, false>(trie, chars, compact, &ZERO, out)
            }
            (true, false, None) => {
                self.fused::<true, false, false>(trie, chars, compact, &ZERO, out)
            }
            (true, true, None) => self.fused::<true, true, false>(trie, chars, compact, &ZERO, out),
            (false, false, Some(w)) => {
                self.fused::<false, false, true>(trie, chars, compact, w, out)
            }
            (false, true, Some(w)) => self.fused::<false, true, true>(trie, chars, compact, w, out),
            (true, false, Some(w)) => self.fused::<true, false, true>(trie, chars, compact, w, out),
            (true, true, Some(w)) => self.fused::<true, true, true>(trie, chars, compact, w, out),
        }
    }

    /// The loop of [`Matcher::scan_scored`], compiled once per filter shape and with or
    /// without the classifier. At character `j` it has the hashes of `j - 2`, `j - 1` and `j`:
    /// the classifier's n-grams ending at `j` and the filter's position `j - 2`. The last two
    /// positions are probed after the loop with zero hashes past the end, as
    /// [`Matcher::scan`] does.
    #[inline(always)]
    fn fused<const FIRST: bool, const ONE: bool, const SCORE: bool>(
        &self,
        trie: &Trie,
        chars: &[char],
        compact: &[u32],
        w: &[i8; 1 << BITS],
        out: &mut Vec<RawMatch>,
    ) -> i64 {
        let weight = |key: u64| i64::from(w[bucket(key)]);
        let f = &self.filter;
        let (c0, c1) = match chars {
            [] => return 0,
            [c0] => {
                let h0 = mix(*c0);
                let pair = pair_key(h0, 0);
                if f.may_start_keys::<FIRST, ONE>(*c0, pair, pair_key(pair, 0)) {
                    self.walk(trie, chars, compact, 0, out);
                }
                return if SCORE { weight(h0) } else { 0 };
            }
            [c0, c1, ..] => (*c0, *c1),
        };
        let (mut a, mut b) = (c0, c1);
        let mut hb = mix(c1);
        // The pair `a b`, the filter's pair key of position `i` and the classifier's bigram
        // ending at `b`.
        let mut ab = pair_key(mix(c0), hb);
        let mut sum = 0i64;
        if SCORE {
            sum = weight(mix(c0)) + weight(hb) + weight(ab);
        }
        let rest = chars.get(2..).unwrap_or(&[]);
        for (i, &c) in rest.iter().enumerate() {
            let h = mix(c);
            let bc = pair_key(hb, h);
            let abc = pair_key(ab, h);
            if SCORE {
                sum += weight(h) + weight(bc) + weight(abc);
            }
            if f.may_start_keys::<FIRST, ONE>(a, ab, abc) {
                self.walk(trie, chars, compact, i, out);
            }
            (a, b, hb, ab) = (b, c, h, bc);
        }
        let n = chars.len();
        if f.may_start_keys::<FIRST, ONE>(a, ab, pair_key(ab, 0)) {
            self.walk(trie, chars, compact, n - 2, out);
        }
        let b0 = pair_key(hb, 0);
        if f.may_start_keys::<FIRST, ONE>(b, b0, pair_key(b0, 0)) {
            self.walk(trie, chars, compact, n - 1, out);
        }
        sum
    }

    #[inline(always)]
    fn scan_with<const FIRST: bool, const ONE: bool>(
        &self,
        chars: &[char],
        hashes: &[u64],
        compact: &[u32],
        out: &mut Vec<RawMatch>,
    ) {
        let Some(trie) = &self.trie else { return };
        for (i, (&a, h)) in chars.iter().zip(hashes.windows(3)).enumerate() {
            let [ha, hb, hc] = [h[0], h[1], h[2]];
            if !self.filter.may_start::<FIRST, ONE>(a, ha, hb, hc) {
                continue;
            }
            self.walk(trie, chars, compact, i, out);
        }
    }

    /// Reports the patterns that `chars` spells from position `i`.
    #[inline(never)]
    fn walk(
        &self,
        trie: &Trie,
        chars: &[char],
        compact: &[u32],
        i: usize,
        out: &mut Vec<RawMatch>,
    ) {
        let Some(rest) = chars.get(i..) else { return };
        let hay = rest
            .iter()
            .copied()
            .take_while(|&c| c != crawdad::END_MARKER);
        for (entry, len) in trie.common_prefix_search(hay) {
            let (Some(&start), Some(&last)) =
                (compact.get(i), compact.get((i + len).saturating_sub(1)))
            else {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classifier::{for_each_feature, Model};
    use crate::normalize::{fold, Separators};

    /// Every pattern that the compact text spells from every position, by brute force.
    fn naive(patterns: &[String], f: &[FChar], compact: &[u32]) -> Vec<(u32, u32, u32)> {
        let chars: Vec<char> = compact.iter().map(|&i| f[i as usize].c).collect();
        let mut out = Vec::new();
        for i in 0..chars.len() {
            for (e, p) in patterns.iter().enumerate() {
                let p: Vec<char> = p.chars().collect();
                if chars[i..].starts_with(&p) {
                    let (a, b) = (compact[i], compact[i + p.len() - 1]);
                    out.push((e as u32, a.min(b), a.max(b) + 1));
                }
            }
        }
        out.sort_unstable();
        out
    }

    #[test]
    fn scan_finds_exactly_the_patterns_a_brute_force_search_finds() {
        let seps = Separators::default();
        let alphabet: Vec<char> = "赌博法轮功口交ab xyz，".chars().collect();
        let mut rand = crate::test_rng(0x9E37_79B9_7F4A_7C15);
        for round in 0..200 {
            let mut mb = MatcherBuilder::default();
            let mut patterns: Vec<String> = Vec::new();
            for k in 0..(1 + round % 30) {
                let len = 1 + rand(4);
                let p: String = (0..len)
                    .map(|_| alphabet[rand(alphabet.len())])
                    .filter(|c| !c.is_whitespace() && *c != '，')
                    .collect();
                if p.is_empty() || patterns.contains(&p) {
                    continue;
                }
                mb.deny(&p, k, Action::Block);
                patterns.push(p);
            }
            let m = mb.build().unwrap();
            for _ in 0..20 {
                let len = rand(24);
                let text: String = (0..len).map(|_| alphabet[rand(alphabet.len())]).collect();
                let buf = fold(&text, &seps);
                let (f, compact) = (buf.fchars(), buf.compact());
                let mut got = Vec::new();
                let chars: Vec<char> = compact.iter().map(|&i| f[i as usize].c).collect();
                let mut hashes: Vec<u64> = chars.iter().map(|&c| mix(c)).collect();
                hashes.extend([0, 0]);
                m.scan(&chars, &hashes, compact, &mut got);
                let mut got: Vec<(u32, u32, u32)> =
                    got.iter().map(|r| (r.entry, r.start, r.end)).collect();
                // The fused pass finds the same matches in the same order, and the
                // classifier's n-gram sum.
                let w = Model::shipped().table().unwrap();
                for weights in [None, Some(w)] {
                    let mut fused = Vec::new();
                    let sum = m.scan_scored(&chars, compact, weights, &mut fused);
                    let fused: Vec<(u32, u32, u32)> =
                        fused.iter().map(|r| (r.entry, r.start, r.end)).collect();
                    assert_eq!(fused, got, "{patterns:?} in {text:?}");
                    let mut want = 0i64;
                    if weights.is_some() {
                        for_each_feature(&chars, |b| want += i64::from(w[b]));
                    }
                    assert_eq!(sum, want, "{text:?}");
                }
                got.sort_unstable();
                // Patterns are stored in insertion order: entry i is patterns[i].
                assert_eq!(
                    got,
                    naive(&patterns, f, compact),
                    "{patterns:?} in {text:?}"
                );
            }
        }
    }
}
