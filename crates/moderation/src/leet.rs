//! Letter-replacing leetspeak and masking wildcards in Latin words (`fvck`, `sh!t`, `$hit`,
//! `@ss`, `a$$`, `b!tch`, `f*ck`, `f**k`).
//!
//! The folder already reads a digit glued to letters as a letter (`sh1t`), and skips symbols
//! as separators (`f.u.c.k`). What it cannot do is read a *symbol* as a letter, or a masking
//! wildcard as "some letter", because that is only right where the result is a banned word:
//! `C#`, `a*b`, `$5`, `i++` or `sh!ft` must stay what they are. So this pass is a second,
//! small matcher over the Latin deny patterns only (a trie with sorted edge lists; the shipped
//! rules have 20 of them, the whole lexicon a few thousand, most of them URLs), run on each *Latin token* of the folded
//! text that has something to read: a maximal run of ASCII letters, digits, look-alike symbols
//! and wildcards, without spaces. It walks the trie with every reading of every character
//! (`1` is `i` or `l`, `|` is `l` or `i`, `*` any letter or nothing) and reports a pattern
//! only when
//!
//! - the reading covers every letter and digit of the token (symbols before and after may be
//!   punctuation: `"sh!t!"` reads `shit`), so a banned word never comes out of part of a
//!   longer word;
//! - the pattern has at least three letters, the token at least one real letter (two when a
//!   digit was read: `v0.4` is a version, not `voa`), and at least one character was read
//!   differently (otherwise the ordinary scan has it);
//! - a wildcard stands for a letter only in patterns of four or more letters with at least two
//!   real letters, no more wildcards than real letters and than half of the pattern (`f**k`
//!   yes, `f***` no), never in a dotted abbreviation (`a.k.a`); `.` and `_`, which are mostly
//!   real dots and underscores (`www.w3.org`, `my_var`), only next to a single character
//!   (`sh.t`, `f_ck`).
//!
//! Matches are ranges of folded characters like the ordinary scan's, so the rest of the
//! pipeline (word boundaries, the allow-list, leftmost-longest, masking with exact original
//! offsets) treats them the same way. The walk is bounded per token (`BUDGET` steps), and
//! runs only on texts with a Latin letter.

use crate::matcher::RawMatch;
use crate::normalize::{FChar, CLASS_ALPHA, CLASS_DIGIT, CLASS_SEP};

/// Longest token (folded characters) considered a word; longer runs are not words.
const MAX_TOKEN: usize = 48;
/// Trie steps allowed per token (bounds the work on adversarial input such as `*****...`).
const BUDGET: u32 = 4096;
/// Shortest pattern this pass reports.
const MIN_LEN: u32 = 3;
/// Shortest pattern a wildcard may stand in (`a*b` never reads as a three-letter word).
const MIN_WILD_LEN: u32 = 4;
const NO: u32 = u32::MAX;

/// Masking wildcards: one letter each, between letters (or nothing).
fn is_wildcard(c: char) -> bool {
    matches!(c, '*' | '#' | '_' | '.')
}

/// The letters a character can stand for: `(letters, literal)`; `literal` when the character
/// is the letter itself. Symbols and digits by their look (`$` s, `@` a, `!` i/l, `|` l/i,
/// `+` t, `€` e, `¢` c, `§` s, 0 o, 1 i/l, 2 z, 3 e, 4 a, 5 s, 7 t, 8 b, 9 g), and `v` also
/// as `u` (`fvck`).
fn readings(c: char) -> (&'static [u8], bool) {
    match c {
        'v' => (b"vu", true),
        'a'..='z' => {
            let i = c as usize - 'a' as usize;
            (LETTERS.get(i..=i).unwrap_or(b""), true)
        }
        '$' | '5' | '§' => (b"s", false),
        '@' | '4' => (b"a", false),
        '!' | '1' => (b"il", false),
        '|' => (b"li", false),
        '+' | '7' => (b"t", false),
        '€' | '3' => (b"e", false),
        '¢' => (b"c", false),
        '0' => (b"o", false),
        '2' => (b"z", false),
        '8' => (b"b", false),
        '9' => (b"g", false),
        _ => (b"", false),
    }
}

const LETTERS: &[u8; 26] = b"abcdefghijklmnopqrstuvwxyz";

/// The ASCII symbols that can be part of a Latin token: look-alikes and wildcards.
const TOKEN_SYMBOLS: u128 = {
    let mut m = 0u128;
    let s = b"$@!|+*#_.";
    let mut i = 0;
    while i < s.len() {
        m |= 1u128 << s[i];
        i += 1;
    }
    m
};

/// Whether a folded character can be part of a Latin token.
#[inline(always)]
fn in_token(fc: &FChar) -> bool {
    if fc.class & (CLASS_ALPHA | CLASS_DIGIT) != 0 {
        return true;
    }
    fc.class == CLASS_SEP
        && if fc.c.is_ascii() {
            TOKEN_SYMBOLS & (1u128 << (fc.c as u32)) != 0
        } else {
            matches!(fc.c, '€' | '¢' | '§')
        }
}

/// One trie node: its children are `edges[first..first + count]`, sorted by letter.
#[derive(Clone, Copy)]
struct Node {
    first: u32,
    count: u8,
    entry: u32,
}

/// A trie over the Latin deny patterns (`a`-`z` only, at least [`MIN_LEN`] letters), with
/// sorted edge lists (about 13 bytes a node: the lexicon's URLs make tens of thousands).
#[derive(Clone, Default)]
pub(crate) struct LatinTrie {
    nodes: Vec<Node>,
    /// `(letter, child)` edges of all nodes, grouped by parent.
    edges: Vec<(u8, u32)>,
}

impl LatinTrie {
    /// Builds the trie from `(pattern, entry)`; patterns that are not all `a`-`z` or shorter
    /// than [`MIN_LEN`] are left out.
    pub fn new<'a>(patterns: impl Iterator<Item = (&'a str, u32)>) -> LatinTrie {
        let mut sorted: Vec<(&str, u32)> = patterns
            .filter(|(p, _)| {
                p.len() >= MIN_LEN as usize && p.bytes().all(|b| b.is_ascii_lowercase())
            })
            .collect();
        if sorted.is_empty() {
            return LatinTrie::default();
        }
        sorted.sort_unstable();
        // Build with per-node child lists, then lay the edges out node by node.
        let mut children: Vec<Vec<(u8, u32)>> = vec![Vec::new()];
        let mut entries: Vec<u32> = vec![NO];
        for (p, entry) in sorted {
            let mut n = 0usize;
            for b in p.bytes() {
                let found = children
                    .get(n)
                    .and_then(|c| c.iter().find(|(l, _)| *l == b).map(|&(_, x)| x));
                n = match found {
                    Some(x) => x as usize,
                    None => {
                        let id = children.len();
                        children.push(Vec::new());
                        entries.push(NO);
                        if let Some(c) = children.get_mut(n) {
                            c.push((b, id as u32));
                        }
                        id
                    }
                };
            }
            if let Some(e) = entries.get_mut(n) {
                *e = entry;
            }
        }
        let mut t = LatinTrie {
            nodes: Vec::with_capacity(children.len()),
            edges: Vec::new(),
        };
        for (mut c, entry) in children.into_iter().zip(entries) {
            c.sort_unstable();
            t.nodes.push(Node {
                first: t.edges.len() as u32,
                count: c.len() as u8,
                entry,
            });
            t.edges.extend(c);
        }
        t
    }

    /// Whether there is no pattern.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Heap bytes.
    pub fn heap_bytes(&self) -> usize {
        self.nodes.capacity() * std::mem::size_of::<Node>()
            + self.edges.capacity() * std::mem::size_of::<(u8, u32)>()
    }

    /// The `(letter, child)` edges of a node.
    #[inline]
    fn children(&self, node: u32) -> &[(u8, u32)] {
        self.nodes
            .get(node as usize)
            .and_then(|n| {
                let a = n.first as usize;
                self.edges.get(a..a + usize::from(n.count))
            })
            .unwrap_or(&[])
    }

    #[inline]
    fn child(&self, node: u32, letter: u8) -> u32 {
        self.children(node)
            .iter()
            .find(|(l, _)| *l == letter)
            .map_or(NO, |&(_, x)| x)
    }

    /// Appends a match (folded-character range) for every pattern a Latin token of `f` spells when its
    /// symbols, digits and wildcards are read as letters (see the module docs).
    // Kept out of line: inlined, it made the check's hot loops spill registers.
    #[inline(never)]
    pub fn scan(&self, f: &[FChar], out: &mut Vec<RawMatch>) {
        if self.is_empty() {
            return;
        }
        let mut i = 0;
        // Every token has an ASCII letter: find the next one, then the token around it.
        while let Some(at) = f
            .get(i..)
            .and_then(|rest| rest.iter().position(|x| x.class & CLASS_ALPHA != 0))
            .map(|k| i + k)
        {
            let mut start = at;
            while start > i && f.get(start - 1).is_some_and(in_token) {
                start -= 1;
            }
            let mut end = at + 1;
            while f.get(end).is_some_and(in_token) {
                end += 1;
            }
            if let Some(token) = f.get(start..end) {
                if token.len() <= MAX_TOKEN {
                    self.scan_token(token, start as u32, out);
                }
            }
            i = end;
        }
    }

    fn scan_token(&self, token: &[FChar], offset: u32, out: &mut Vec<RawMatch>) {
        // Something to read differently, and a real letter.
        let mut real = false;
        let mut other = false;
        for fc in token {
            let c = fc.shown();
            real |= c.is_ascii_lowercase();
            other |= !c.is_ascii_lowercase() || c == 'v';
        }
        if !real || !other {
            return;
        }
        let alnum = |fc: &FChar| fc.class & (CLASS_ALPHA | CLASS_DIGIT) != 0;
        let (Some(first), Some(last)) =
            (token.iter().position(alnum), token.iter().rposition(alnum))
        else {
            return;
        };
        // A dotted abbreviation (`a.k.a`, `x.y.z`, `e.g.`, `a_b_c`): one character between two
        // dots or underscores. Its dots are separators, never letters.
        let dot = |c: char| matches!(c, '.' | '_');
        let dotted = token.windows(3).any(|w| match w {
            [a, b, c] => dot(a.c) && !is_wildcard(b.c) && dot(c.c),
            _ => false,
        });
        let mut walk = Walk {
            trie: self,
            token,
            dotted,
            last_alnum: last,
            last_read: token
                .iter()
                .rposition(|x| !is_wildcard(x.c))
                .unwrap_or(last),
            budget: BUDGET,
            offset,
            from: out.len(),
            out,
        };
        for s in 0..=first {
            if token.get(s).is_some_and(|fc| is_wildcard(fc.c)) {
                continue;
            }
            walk.step(s, s, 0, State::default());
        }
    }
}

#[derive(Clone, Copy, Default)]
struct State {
    depth: u32,
    literal: u32,
    read: u32,
    wild: u32,
    /// Digits read as letters.
    digits: u32,
}

struct Walk<'a, 'o> {
    trie: &'a LatinTrie,
    token: &'a [FChar],
    dotted: bool,
    last_alnum: usize,
    /// Last position that is not a wildcard.
    last_read: usize,
    budget: u32,
    offset: u32,
    from: usize,
    out: &'o mut Vec<RawMatch>,
}

impl Walk<'_, '_> {
    fn step(&mut self, start: usize, pos: usize, node: u32, st: State) {
        if self.budget == 0 {
            return;
        }
        self.budget -= 1;
        if pos > self.last_alnum {
            self.accept(start, pos, node, st);
        }
        let Some(fc) = self.token.get(pos) else {
            return;
        };
        let c = fc.shown();
        if is_wildcard(c) {
            if pos > self.last_read {
                // Trailing punctuation (`you @ss.`): never part of the match.
                return;
            }
            // Nothing (a separator, as the ordinary scan reads it) ...
            self.step(start, pos + 1, node, st);
            // ... or one letter, between letters.
            if st.depth > 0 && pos < self.last_read && self.wildcard_may_read(pos) {
                let trie = self.trie;
                for &(_, child) in trie.children(node) {
                    let st = State {
                        depth: st.depth + 1,
                        wild: st.wild + 1,
                        ..st
                    };
                    self.step(start, pos + 1, child, st);
                }
            }
            return;
        }
        // A repeated letter is one letter (`fuuuck`), as the ordinary scan reads it.
        if pos > start
            && c.is_ascii_lowercase()
            && self.token.get(pos - 1).is_some_and(|p| p.shown() == c)
        {
            self.step(start, pos + 1, node, st);
        }
        let (letters, literal) = readings(c);
        // A digit reads as a letter only glued to the word (`a55`, `sh17`), not after a dot
        // (`now.0`, `v1.4`).
        if c.is_ascii_digit() && !self.glued(pos) {
            return;
        }
        for &l in letters {
            let child = self.trie.child(node, l);
            if child == NO {
                continue;
            }
            let exact = literal && char::from(l) == c;
            let st = State {
                depth: st.depth + 1,
                literal: st.literal + u32::from(exact),
                read: st.read + u32::from(!exact),
                wild: st.wild,
                digits: st.digits + u32::from(c.is_ascii_digit()),
            };
            self.step(start, pos + 1, child, st);
        }
    }

    /// Whether the wildcard at `pos` may stand for a letter. `*` and `#` are masking
    /// characters; `.` and `_` are far more often real dots and underscores (`node.js`,
    /// `www.w3.org`, `my_var`), so they read as a letter only with a single character on one
    /// side (`sh.t`, `f_ck`). Never in a dotted abbreviation.
    fn wildcard_may_read(&self, pos: usize) -> bool {
        if self.dotted {
            return false;
        }
        let Some(fc) = self.token.get(pos) else {
            return false;
        };
        if matches!(fc.c, '*' | '#') {
            return true;
        }
        let word = |x: &&FChar| !is_wildcard(x.c);
        let before = self.token.get(..pos).map_or(0, |t| {
            t.iter()
                .rev()
                .skip_while(|x| is_wildcard(x.c))
                .take_while(word)
                .count()
        });
        let after = self.token.get(pos..).map_or(0, |t| {
            t.iter()
                .skip_while(|x| is_wildcard(x.c))
                .take_while(word)
                .count()
        });
        before == 1 || after == 1
    }

    /// Whether the character at `pos` has a neighbour in the token that is not a dot or an
    /// underscore.
    fn glued(&self, pos: usize) -> bool {
        let ok = |i: Option<usize>| {
            i.and_then(|i| self.token.get(i))
                .is_some_and(|x| !matches!(x.c, '.' | '_'))
        };
        ok(pos.checked_sub(1)) || ok(Some(pos + 1))
    }

    fn accept(&mut self, start: usize, end: usize, node: u32, st: State) {
        let Some(entry) = self
            .trie
            .nodes
            .get(node as usize)
            .map(|n| n.entry)
            .filter(|&e| e != NO)
        else {
            return;
        };
        let wild_ok = st.wild == 0
            || (st.depth >= MIN_WILD_LEN
                && st.literal >= 2
                && st.wild <= st.literal
                && st.wild * 2 <= st.depth);
        if st.depth < MIN_LEN
            || st.literal == 0
            || st.read + st.wild == 0
            || (st.digits > 0 && st.literal < 2)
            || !wild_ok
        {
            return;
        }
        let m = RawMatch {
            entry,
            start: self.offset + start as u32,
            end: self.offset + end as u32,
        };
        let seen = self.out.get(self.from..).is_some_and(|o| {
            o.iter()
                .any(|x| x.entry == m.entry && x.start == m.start && x.end == m.end)
        });
        if !seen {
            self.out.push(m);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::normalize::{fold, Separators};

    fn hits(patterns: &[&str], text: &str) -> Vec<String> {
        let t = LatinTrie::new(patterns.iter().enumerate().map(|(i, p)| (*p, i as u32)));
        let buf = fold(text, &Separators::default());
        let f = buf.fchars();
        let mut out = Vec::new();
        t.scan(f, &mut out);
        out.iter()
            .map(|m| {
                let a = f[m.start as usize].start as usize;
                let b = f[m.end as usize - 1].end as usize;
                format!("{}={}", patterns[m.entry as usize], &text[a..b])
            })
            .collect()
    }

    #[test]
    fn reads_symbols_and_wildcards_only_into_patterns() {
        let p = &["fuck", "shit", "ass", "bitch", "cunt"];
        assert_eq!(hits(p, "what the f*ck?"), ["fuck=f*ck"]);
        assert_eq!(hits(p, "f**k"), ["fuck=f**k"]);
        assert_eq!(hits(p, "fvck"), ["fuck=fvck"]);
        assert_eq!(hits(p, "\"sh!t!\""), ["shit=sh!t"]);
        assert_eq!(hits(p, "$hit"), ["shit=$hit"]);
        assert_eq!(hits(p, "@ss a$$"), ["ass=@ss", "ass=a$$"]);
        assert_eq!(hits(p, "you @ss."), ["ass=@ss"]);
        assert_eq!(hits(p, "b!tch"), ["bitch=b!tch"]);
        assert_eq!(hits(p, "c|_|nt"), Vec::<String>::new()); // `|_|` is no letter
        assert_eq!(hits(p, "ＳＨ！Ｔ"), ["shit=ＳＨ！Ｔ"]);
        // Natural text.
        for t in [
            "f***",
            "a*b",
            "C#",
            "$5",
            "i++",
            "sh!ft",
            "shit",
            "fuck",
            "$$$",
            "@!$",
            "sh.txt",
            "assess",
            "a$$ess",
            "fvcking",
            "class",
            "pass",
            "mass",
            "$100",
            "user@host",
        ] {
            assert_eq!(hits(p, t), Vec::<String>::new(), "{t}");
        }
    }

    #[test]
    fn lexicon_collisions_found_on_natural_text_stay_clean() {
        // Entries of the public lexicon that READMEs and doc comments spelled with symbols.
        let p = &[
            "voa",
            "les",
            "tui",
            "bil",
            "akka",
            "aska",
            "wwwweborg",
            "nowo",
        ];
        for t in [
            "v0.4",
            "l.5",
            "t_i",
            "b.1",
            "a.k.a",
            "www.w3.org",
            "a.s.k.a",
            "now.0",
        ] {
            assert_eq!(hits(p, t), Vec::<String>::new(), "{t}");
        }
    }

    #[test]
    fn adversarial_tokens_are_bounded() {
        let p = &["fuck", "shit"];
        let t = "*".repeat(40) + "f" + &"*".repeat(40);
        assert!(hits(p, &t).is_empty());
        let t = "f".to_string() + &"1|!".repeat(100);
        assert!(hits(p, &t).is_empty());
    }
}
