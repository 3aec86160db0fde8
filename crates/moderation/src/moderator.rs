//! The compiled rule set ([`Moderator`]), how it is built ([`ModeratorBuilder`]) and the check
//! pipeline: fold -> scan the automaton (and the group's) -> Latin word boundaries -> allow-list
//! -> leftmost-longest selection -> detectors with context -> policy -> verdict and masking.
//!
//! Scratch buffers live in a thread-local, so a clean message allocates nothing.

use std::cell::RefCell;
use std::path::Path;
use std::sync::Arc;

use crate::classifier::{char_hash, Model};
use crate::detectors::{
    self, DetHit, DetScratch, DetectorSet, MaskKind, Scanner, DETECTORS, NOT_PERSONAL_BIT,
};
use crate::error::LoadError;
use crate::escalation::EscalationConfig;
use crate::group::{GroupPolicy, MAX_GROUP_WORDS};
use crate::matcher::{Entry, Matcher, MatcherBuilder, RawMatch};
use crate::normalize::{
    cjk_digit, fold_into, is_clause_break, is_one_char_repeated, normalize_pattern, normalize_with,
    FChar, FoldBuf, Normalized, Separators, CLASS_DIGIT, CLASS_SEP,
};
use crate::policy::{
    Action, CategoryPolicy, Detector, GroupPolicySpec, PolicyFile, CONFIDENTIAL, OFFENSIVE,
};
use crate::{CheckContext, Hit, Verdict};

/// Built-in secret markers (category `confidential`).
pub const BUILTIN_SECRET_MARKERS: &[&str] = &[
    "机密",
    "绝密",
    "秘密",
    "内部资料",
    "商业秘密",
    "内部文件",
    "严禁外传",
    "confidential",
    "top secret",
];

/// A deny rule: one line of a word list (or one built-in marker).
#[derive(Clone, Debug)]
pub(crate) struct Rule {
    /// Shared with every hit of the rule (a verdict clones it without allocating).
    pub id: Arc<str>,
    pub category: u16,
    pub action: Option<Action>,
}

/// Numbers about a loaded rule set.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoadStats {
    /// Rule lines read (deny words, markers, code names).
    pub rules: usize,
    /// Allow-list phrases read.
    pub allow: usize,
    /// Distinct normalized patterns in the automaton (including context words).
    pub patterns: usize,
    /// Lines skipped because they normalize to nothing.
    pub skipped_empty: usize,
    /// Lines skipped because they are shorter than `min_pattern_chars`, or one character
    /// repeated (`大大`: it would match every `大` once repeats collapse).
    pub skipped_short: usize,
    /// Heap bytes of the automaton and its tables.
    pub heap_bytes: usize,
    /// Pinyin spellings and initials added for entries that opt in (`word<TAB>pinyin`).
    pub romanized: usize,
}

/// How an entry also matches: its pinyin and its pinyin initials (`word<TAB>pinyin initials`
/// in a list; `words_pinyin`/`words_initials` in a group's rules).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Romanize {
    pinyin: bool,
    initials: bool,
}

/// Adds the pinyin forms of the normalized entry `p` (rule `idx`) that `r` asks for; returns
/// how many patterns were added.
fn add_romanized(
    mb: &mut MatcherBuilder,
    seps: &Separators,
    p: &str,
    idx: u32,
    severity: Action,
    r: Romanize,
    min_initials: usize,
) -> usize {
    if !(r.pinyin || r.initials) {
        return 0;
    }
    let Some((full, initials)) = crate::romanize::forms(p) else {
        return 0;
    };
    let mut added = 0;
    if r.pinyin {
        for f in &full {
            let q = normalize_pattern(f, seps);
            // At least three letters: a one-character entry's pinyin (`e`, `du`) is a word.
            if q.chars().count() >= 3 && q != p {
                mb.deny_spaced(&q, idx, severity);
                added += 1;
            }
        }
    }
    if r.initials {
        for i in &initials {
            let q = normalize_pattern(i, seps);
            if q.chars().count() >= min_initials.max(2) && q != p {
                mb.deny(&q, idx, severity);
                added += 1;
            }
        }
    }
    added
}

/// Compiled, immutable rule set; cheap to share in an `Arc`, `Send + Sync`.
pub struct Moderator {
    seps: Separators,
    matcher: Matcher,
    rules: Vec<Rule>,
    categories: Vec<(Arc<str>, CategoryPolicy)>,
    policy: PolicyFile,
    stats: LoadStats,
    /// The detector scanners to run (each once, for its enabled detectors), from the policy.
    scanners: Vec<(&'static Scanner, DetectorSet)>,
    /// Category and rule id strings of the hits that are not deny rules.
    labels: Labels,
}

/// The category and rule id strings of detector and classifier hits, made once, so that a
/// verdict's hits share them instead of allocating one string per hit.
struct Labels {
    /// Per detector (by [`Detector`] index): its category and its rule id.
    detectors: Vec<(Arc<str>, Arc<str>)>,
    offensive: Arc<str>,
    classifier_rule: Arc<str>,
    empty: Arc<str>,
}

impl Labels {
    fn new() -> Labels {
        Labels {
            detectors: DETECTORS
                .iter()
                .map(|d| (Arc::from(d.name), Arc::from(d.rule_id)))
                .collect(),
            offensive: Arc::from(OFFENSIVE),
            classifier_rule: Arc::from("classifier:offense"),
            empty: Arc::from(""),
        }
    }

    /// The category and rule id of a detector's hits.
    fn detector(&self, d: Detector) -> (Arc<str>, Arc<str>) {
        self.detectors
            .get(d.index())
            .cloned()
            .unwrap_or_else(|| (Arc::from(d.as_str()), Arc::from(d.rule_id())))
    }
}

impl std::fmt::Debug for Moderator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Moderator")
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// Builds a [`Moderator`] from a policy and word lists given as text (what
/// [`Moderator::load_dir`] does with files; useful for benchmarks and tests).
pub struct ModeratorBuilder {
    seps: Separators,
    mb: MatcherBuilder,
    rules: Vec<Rule>,
    categories: Vec<(Arc<str>, CategoryPolicy)>,
    policy: PolicyFile,
    stats: LoadStats,
}

/// Splits a list file into `(line number, word, optional options text)`, skipping blanks and
/// `#` comments.
fn lines(text: &str) -> impl Iterator<Item = (usize, &str, Option<&str>)> {
    text.lines().enumerate().filter_map(|(i, l)| {
        let l = l.trim_end_matches('\r');
        if l.trim().is_empty() || l.trim_start().starts_with('#') {
            return None;
        }
        match l.split_once('\t') {
            Some((w, a)) => Some((i + 1, w.trim(), Some(a.trim()))),
            None => Some((i + 1, l.trim(), None)),
        }
    })
}

impl ModeratorBuilder {
    /// A builder with the built-in secret markers (unless the policy turns them off) and the
    /// detectors' context words.
    pub fn new(policy: PolicyFile) -> ModeratorBuilder {
        let seps = Separators::new(&policy.normalize.separators);
        let mut categories: Vec<(Arc<str>, CategoryPolicy)> = policy
            .categories
            .iter()
            .map(|(k, v)| (Arc::from(k.as_str()), v.clone()))
            .collect();
        if !categories.iter().any(|(k, _)| &**k == CONFIDENTIAL) {
            categories.push((
                Arc::from(CONFIDENTIAL),
                CategoryPolicy {
                    action: Action::Warn,
                    external: Some(Action::Block),
                    escalate: false,
                },
            ));
        }
        let mut b = ModeratorBuilder {
            seps,
            mb: MatcherBuilder::default(),
            rules: Vec::new(),
            categories,
            policy,
            stats: LoadStats::default(),
        };
        if b.policy.secrets.builtin_markers {
            let cat = b.category(CONFIDENTIAL);
            for (i, m) in BUILTIN_SECRET_MARKERS.iter().enumerate() {
                b.push_rule(format!("builtin:secret:{}", i + 1), cat, m, None, 1);
            }
        }
        for spec in DETECTORS {
            for w in spec.context_words {
                let p = normalize_pattern(w, &b.seps);
                b.mb.context(&p, spec.detector.bit());
            }
        }
        for w in detectors::NOT_PERSONAL_WORDS {
            let p = normalize_pattern(w, &b.seps);
            b.mb.context(&p, NOT_PERSONAL_BIT);
        }
        b
    }

    /// The index of a category, adding it (action `block`) when the policy does not name it.
    fn category(&mut self, name: &str) -> u16 {
        if let Some(i) = self.categories.iter().position(|(k, _)| &**k == name) {
            return i as u16;
        }
        self.categories
            .push((Arc::from(name), CategoryPolicy::new(Action::Block)));
        (self.categories.len() - 1) as u16
    }

    fn push_rule(&mut self, id: String, cat: u16, word: &str, action: Option<Action>, min: usize) {
        self.push_rule_with(id, cat, word, action, min, Romanize::default());
    }

    fn push_rule_with(
        &mut self,
        id: String,
        cat: u16,
        word: &str,
        action: Option<Action>,
        min: usize,
        romanize: Romanize,
    ) {
        self.stats.rules += 1;
        let p = normalize_pattern(word, &self.seps);
        if p.is_empty() {
            self.stats.skipped_empty += 1;
            return;
        }
        if p.chars().count() < min || is_one_char_repeated(word, &self.seps) {
            self.stats.skipped_short += 1;
            return;
        }
        let severity = action.unwrap_or_else(|| {
            self.categories
                .get(cat as usize)
                .map_or(Action::Block, |(_, c)| c.action)
        });
        let idx = self.rules.len() as u32;
        self.rules.push(Rule {
            id: Arc::from(id),
            category: cat,
            action,
        });
        self.mb.deny(&p, idx, severity);
        let min_initials = self.policy.normalize.min_initials;
        self.stats.romanized += add_romanized(
            &mut self.mb,
            &self.seps,
            &p,
            idx,
            severity,
            romanize,
            min_initials,
        );
    }

    /// Adds one deny word of `category` with rule id `rule_id`.
    pub fn add_word(&mut self, category: &str, rule_id: &str, word: &str, action: Option<Action>) {
        let cat = self.category(category);
        let min = self.policy.normalize.min_pattern_chars;
        self.push_rule(rule_id.to_string(), cat, word, action, min);
    }

    /// Adds a deny word list (one word per line; after a TAB, options separated by spaces: an
    /// action overriding the category's, `pinyin` and `initials` to also match the word's
    /// pinyin and its initials). `path` is used in errors, `source` in rule ids
    /// (`<source>:<line>`).
    pub fn add_words(
        &mut self,
        category: &str,
        path: &Path,
        source: &str,
        text: &str,
    ) -> Result<(), LoadError> {
        let cat = self.category(category);
        let min = self.policy.normalize.min_pattern_chars;
        for (line, word, options) in lines(text) {
            let mut action = None;
            let mut romanize = Romanize::default();
            for o in options.unwrap_or("").split_whitespace() {
                match o {
                    "pinyin" => romanize.pinyin = true,
                    "initials" => romanize.initials = true,
                    a => {
                        let parsed = Action::parse(a).filter(|_| action.is_none());
                        action = Some(parsed.ok_or_else(|| LoadError::Syntax {
                            path: path.to_path_buf(),
                            line,
                            message: format!(
                                "unknown option {a:?} (expected one action: allow, warn, mask, \
                                 review or block; pinyin; initials)"
                            ),
                        })?);
                    }
                }
            }
            self.push_rule_with(format!("{source}:{line}"), cat, word, action, min, romanize);
        }
        Ok(())
    }

    /// Adds allow-list phrases, one per line.
    pub fn add_allow(&mut self, path: &Path, text: &str) -> Result<(), LoadError> {
        for (line, word, extra) in lines(text) {
            if extra.is_some() {
                return Err(LoadError::Syntax {
                    path: path.to_path_buf(),
                    line,
                    message: "allow-list lines take no action".to_string(),
                });
            }
            self.stats.allow += 1;
            let p = normalize_pattern(word, &self.seps);
            if !p.is_empty() {
                self.mb.allow(&p);
            }
        }
        Ok(())
    }

    /// Adds secret markers or project code names (category `confidential`), one per line.
    pub fn add_secret_markers(
        &mut self,
        path: &Path,
        source: &str,
        text: &str,
    ) -> Result<(), LoadError> {
        self.add_words(CONFIDENTIAL, path, source, text)
    }

    /// Compiles the automaton.
    pub fn build(self) -> Result<Moderator, LoadError> {
        let matcher = self.mb.build().map_err(|message| LoadError::Build {
            path: Path::new("<rules>").to_path_buf(),
            message,
        })?;
        let mut stats = self.stats;
        stats.patterns = matcher.len();
        stats.heap_bytes = matcher.heap_bytes()
            + self
                .rules
                .iter()
                .map(|r| r.id.len() + 16 + std::mem::size_of::<Rule>())
                .sum::<usize>();
        let scanners = detectors::plan(|d| self.policy.detectors.get(d).enabled);
        Ok(Moderator {
            seps: self.seps,
            matcher,
            rules: self.rules,
            categories: self.categories,
            policy: self.policy,
            stats,
            scanners,
            labels: Labels::new(),
        })
    }
}

/// A candidate hit over folded characters `start..end`.
#[derive(Clone, Copy, Debug)]
struct Cand {
    start: u32,
    end: u32,
    action: Action,
    src: Src,
}

#[derive(Clone, Copy, Debug)]
enum Src {
    Rule(u32),
    Group(u32),
    Det(DetHit),
    Classifier,
}

#[derive(Default)]
struct Scratch {
    /// The folded text, its matcher indices and characters.
    fold: FoldBuf,
    /// [`char_hash`] of the folded text's matcher characters, then two zeros: only for a
    /// group's own words (the rule set's scan hashes as it goes).
    hashes: Vec<u64>,
    rtl: Vec<(u32, u32)>,
    reversed: Vec<u32>,
    reversed_chars: Vec<char>,
    reversed_hashes: Vec<u64>,
    raw: Vec<RawMatch>,
    allow: Vec<(u32, u32)>,
    allow_max: Vec<u32>,
    ctx: Vec<(u32, u32, u8)>,
    cands: Vec<Cand>,
    picked: Vec<Cand>,
    det: Vec<DetHit>,
    det_scratch: DetScratch,
    units: Vec<(u32, u32)>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// Fills `chars` with the characters the matcher and the classifier read, and `hashes` with
/// their [`char_hash`] followed by two zeros (the look-ahead of the scan's last positions).
fn chars_and_hashes(
    from: impl Iterator<Item = char>,
    chars: &mut Vec<char>,
    hashes: &mut Vec<u64>,
) {
    chars.clear();
    chars.extend(from);
    hashes.clear();
    hashes.extend(chars.iter().map(|&c| char_hash(c)));
    hashes.extend([0, 0]);
}

/// Latin word boundaries: a pattern that starts (ends) with a Latin letter or digit must not
/// be preceded (followed) by one, and a Latin pattern spread over several space-separated
/// multi-letter words (`pen is`) is not a hit, while `f u c k` and `f.u.c.k` are.
fn boundary_ok(f: &[FChar], e: &Entry, start: usize, end: usize) -> bool {
    if e.latin_start && start > 0 && f.get(start - 1).is_some_and(FChar::is_word) {
        return false;
    }
    if e.latin_end && f.get(end).is_some_and(FChar::is_word) {
        return false;
    }
    if e.latin_start && e.latin_end && !e.spaced {
        let mut seg = 0;
        let mut max_seg = 0;
        let mut ws_gap = false;
        for fc in f.get(start..end).unwrap_or(&[]) {
            if fc.class == CLASS_SEP {
                ws_gap |= fc.c.is_whitespace();
                seg = 0;
            } else {
                seg += 1;
                max_seg = max_seg.max(seg);
            }
        }
        if ws_gap && max_seg > 1 {
            return false;
        }
    }
    true
}

/// Natural word boundaries for matches of non-Latin words (see `docs/MODERATION.md`,
/// "Precision at word boundaries"). A match whose characters are split by natural prose
/// punctuation (a comma, an enumeration comma, a full stop, a colon, brackets or quotes: see
/// [`is_clause_break`]) is an evasion only when a separator sits in *every* gap between its
/// characters and it is not glued to word characters on both sides: `口、交` alone is caught,
/// while `进口、交货` (a comma between two words, `口` ending one and `交` starting the next)
/// is not. Separators that are not prose (spaces, `*`, `.`, symbols, emoji) keep the old
/// rule: skipped.
fn natural_boundary_ok(f: &[FChar], e: &Entry, start: usize, end: usize) -> bool {
    if e.latin_start && e.latin_end {
        return true;
    }
    let Some(span) = f.get(start..end) else {
        return true;
    };
    let mut breaks = false;
    let mut gaps = 0usize;
    let mut gaps_with_sep = 0usize;
    let mut in_gap = false;
    let mut prev: Option<char> = None;
    for fc in span {
        if fc.class == CLASS_SEP {
            breaks |= is_clause_break(fc.c);
            in_gap = true;
        } else {
            // A repeat (`傻傻`) is one character to the matcher: no gap inside it.
            if prev.is_some_and(|p| p != fc.c) {
                gaps += 1;
                gaps_with_sep += usize::from(in_gap);
            }
            if prev != Some(fc.c) || in_gap {
                in_gap = false;
            }
            prev = Some(fc.c);
        }
    }
    if !breaks {
        return true;
    }
    let glued = |i: Option<usize>| {
        i.and_then(|i| f.get(i))
            .is_some_and(|fc| fc.class != CLASS_SEP && !fc.c.is_whitespace())
    };
    gaps_with_sep == gaps && !(glued(start.checked_sub(1)) && glued(Some(end)))
}

/// Whether an allowed phrase crosses the start or the end of the match `start..end`: the
/// allow-list doubles as a list of natural words, and a deny word made of the tail of one and
/// the head of another (`打赌|博物馆` reads `赌博`) is no hit. `allow` is sorted by start.
fn crosses_allowed_word(allow: &[(u32, u32)], start: u32, end: u32) -> bool {
    allow
        .iter()
        .take_while(|&&(a, _)| a < end)
        .any(|&(a, b)| (a < start && b > start && b < end) || (a > start && a < end && b > end))
}

impl Moderator {
    /// A moderator with no word lists but the built-in secret markers, the detectors and the
    /// default policy (used when no rule directory is configured, and in tests).
    pub fn builtin() -> Moderator {
        ModeratorBuilder::new(PolicyFile::default())
            .build()
            .unwrap_or_else(|_| Moderator {
                seps: Separators::default(),
                matcher: Matcher::empty(),
                rules: Vec::new(),
                categories: Vec::new(),
                policy: PolicyFile::default(),
                stats: LoadStats::default(),
                scanners: Vec::new(),
                labels: Labels::new(),
            })
    }

    /// A builder starting from `policy`.
    pub fn builder(policy: PolicyFile) -> ModeratorBuilder {
        ModeratorBuilder::new(policy)
    }

    /// Numbers about the loaded rules (patterns, memory).
    pub fn stats(&self) -> &LoadStats {
        &self.stats
    }

    /// The policy in force.
    pub fn policy(&self) -> &PolicyFile {
        &self.policy
    }

    /// The escalation ladder configured in `policy.toml`.
    pub fn escalation_config(&self) -> &EscalationConfig {
        &self.policy.escalation
    }

    /// Names of all categories (configured, from deny files, and `confidential`).
    pub fn categories(&self) -> impl Iterator<Item = &str> {
        self.categories.iter().map(|(k, _)| &**k)
    }

    /// The offensive-language score of `text` (`0.0..=1.0`, see [`crate::classifier`]), as
    /// the check computes it; the policy's bands map it to an action.
    pub fn offense_score(&self, text: &str) -> f32 {
        let n = normalize_with(text, &self.seps);
        let chars: Vec<char> = n.text.chars().collect();
        Model::shipped().score(&chars)
    }

    /// The text as the dictionary matcher sees it, with offsets back to `text`.
    pub fn normalize(&self, text: &str) -> Normalized {
        normalize_with(text, &self.seps)
    }

    pub(crate) fn separators(&self) -> &Separators {
        &self.seps
    }

    /// The verdict for one message text. Pure; about a microsecond for chat-sized text, and
    /// linear in the length of any text.
    pub fn check(&self, text: &str, ctx: &CheckContext<'_>) -> Verdict {
        SCRATCH.with(|s| match s.try_borrow_mut() {
            Ok(mut s) => self.check_with(text, ctx, &mut s),
            Err(_) => self.check_with(text, ctx, &mut Scratch::default()),
        })
    }

    /// The category, rule id and escalation flag of a hit (shared strings: no allocation but
    /// for a group's own words).
    fn label_of(&self, src: &Src, group: Option<&GroupPolicy>) -> (Arc<str>, Arc<str>, bool) {
        match src {
            Src::Rule(r) => {
                let rule = self.rules.get(*r as usize);
                let cat = rule.map_or(0, |r| r.category);
                let id = rule.map_or_else(|| self.labels.empty.clone(), |r| r.id.clone());
                match self.categories.get(cat as usize) {
                    Some((k, c)) => (k.clone(), id, c.escalate),
                    None => (self.labels.empty.clone(), id, true),
                }
            }
            Src::Group(i) => (
                Arc::from(group.map_or("group", |g| g.category())),
                Arc::from(format!("group:{}", i + 1)),
                true,
            ),
            Src::Det(d) => {
                let (cat, rule) = self.labels.detector(d.det);
                (cat, rule, false)
            }
            Src::Classifier => (
                self.labels.offensive.clone(),
                self.labels.classifier_rule.clone(),
                false,
            ),
        }
    }

    fn check_with(&self, text: &str, ctx: &CheckContext<'_>, s: &mut Scratch) -> Verdict {
        let has_ext = ctx.has_external_member;
        let flags = fold_into(text, &self.seps, &mut s.fold, &mut s.rtl);
        let f = s.fold.fchars();
        let (compact, chars) = (s.fold.compact(), s.fold.chars());
        let char_at = |&i: &u32| f.get(i as usize).map_or(crawdad::END_MARKER, |x| x.c);
        s.raw.clear();
        s.cands.clear();
        s.allow.clear();
        s.ctx.clear();
        // Runs under a right-to-left override are displayed reversed: read them both ways.
        if !s.rtl.is_empty() {
            s.reversed.clear();
            s.reversed.extend_from_slice(compact);
            for &(a, b) in &s.rtl {
                let from = s.reversed.partition_point(|&i| i < a);
                let to = s.reversed.partition_point(|&i| i < b);
                if let Some(run) = s.reversed.get_mut(from..to) {
                    run.reverse();
                }
            }
            chars_and_hashes(
                s.reversed.iter().map(char_at),
                &mut s.reversed_chars,
                &mut s.reversed_hashes,
            );
        }
        // The text as read: scanned in one pass with the classifier's n-gram sum.
        let cc = &self.policy.classifier;
        let model = Model::shipped();
        let scored = cc.enabled && compact.len() >= cc.min_chars;
        let weights = model.table().filter(|_| scored);
        let sum = self
            .matcher
            .scan_scored(chars, compact, weights, &mut s.raw);
        if !s.rtl.is_empty() {
            self.matcher.scan(
                &s.reversed_chars,
                &s.reversed_hashes,
                &s.reversed,
                &mut s.raw,
            );
        }
        let read_symbols = flags.has_alpha && self.policy.normalize.read_symbols;
        if read_symbols {
            self.matcher.scan_latin(f, &mut s.raw);
        }
        let group_words = s.raw.len();
        if let Some(g) = ctx.group {
            // A group's own words: its matcher probes with the hashes.
            s.hashes.clear();
            s.hashes.extend(chars.iter().map(|&c| char_hash(c)));
            s.hashes.extend([0, 0]);
            let views: &[(&[char], &[u64], &[u32])] = if s.rtl.is_empty() {
                &[(chars, &s.hashes, compact)]
            } else {
                &[
                    (chars, &s.hashes, compact),
                    (&s.reversed_chars, &s.reversed_hashes, &s.reversed),
                ]
            };
            for (chars, hashes, view) in views {
                g.matcher().scan(chars, hashes, view, &mut s.raw);
            }
            if read_symbols {
                g.matcher().scan_latin(f, &mut s.raw);
            }
        }

        // Allow spans and context words.
        for (i, m) in s.raw.iter().enumerate() {
            let entry = if i < group_words {
                self.matcher.entry(m.entry)
            } else {
                None
            };
            let Some(e) = entry else { continue };
            if (e.allow || e.context != 0) && boundary_ok(f, e, m.start as usize, m.end as usize) {
                if e.allow {
                    s.allow.push((m.start, m.end));
                }
                if e.context != 0 {
                    s.ctx.push((m.start, m.end, e.context));
                }
            }
        }
        s.allow.sort_unstable();
        s.allow_max.clear();
        let mut mx = 0;
        for &(_, e) in &s.allow {
            mx = mx.max(e);
            s.allow_max.push(mx);
        }
        let allowed = |start: u32, end: u32| -> bool {
            let n = s.allow.partition_point(|&(a, _)| a <= start);
            n > 0 && s.allow_max.get(n - 1).is_some_and(|&m| m >= end)
        };

        // Deny candidates.
        for (i, m) in s.raw.iter().enumerate() {
            let (e, src) = if i < group_words {
                match self.matcher.entry(m.entry) {
                    Some(e) => match e.deny {
                        Some(r) => (e, Src::Rule(r)),
                        None => continue,
                    },
                    None => continue,
                }
            } else {
                match ctx.group.and_then(|g| g.matcher().entry(m.entry)) {
                    Some(e) => match e.deny {
                        Some(r) => (e, Src::Group(r)),
                        None => continue,
                    },
                    None => continue,
                }
            };
            if !boundary_ok(f, e, m.start as usize, m.end as usize)
                || allowed(m.start, m.end)
                || !natural_boundary_ok(f, e, m.start as usize, m.end as usize)
                || crosses_allowed_word(&s.allow, m.start, m.end)
            {
                continue;
            }
            let action = self.rule_action(&src, ctx);
            s.cands.push(Cand {
                start: m.start,
                end: m.end,
                action,
                src,
            });
        }

        // Leftmost-longest, but never hide a more severe overlapping hit.
        s.cands
            .sort_unstable_by(|a, b| a.start.cmp(&b.start).then(b.end.cmp(&a.end)));
        s.picked.clear();
        let mut last_end = 0;
        let mut last_action = Action::Allow;
        for c in &s.cands {
            if c.action == Action::Allow {
                continue;
            }
            if c.start >= last_end || c.action > last_action {
                if c.start >= last_end {
                    last_action = c.action;
                } else {
                    last_action = last_action.max(c.action);
                }
                last_end = last_end.max(c.end);
                s.picked.push(*c);
            }
        }

        // Detectors.
        s.det.clear();
        let d = &self.policy.detectors;
        for (scanner, on) in &self.scanners {
            if (scanner.prefilter)(&flags) {
                (scanner.scan)(f, *on, &mut s.det_scratch, &mut s.det);
            }
        }
        let window = self.policy.secrets.context_window as u32;
        for h in &s.det {
            let near = s.ctx.iter().any(|&(cs, ce, bits)| {
                bits & h.det.bit() != 0
                    && ce.saturating_add(window) >= h.start
                    && cs <= h.end.saturating_add(window)
            });
            if h.needs_context && !near {
                continue;
            }
            // An order id, tracking or SKU number near its label is not personal data, unless
            // a word of the detector's own is near too.
            if !near && h.det != Detector::IdCard {
                let not_personal = s.ctx.iter().any(|&(cs, ce, bits)| {
                    bits & NOT_PERSONAL_BIT != 0
                        && ce.saturating_add(window) >= h.start
                        && cs <= h.end.saturating_add(window)
                });
                if not_personal {
                    continue;
                }
            }
            let mut action = d.get(h.det).effective(has_ext, h.high || near);
            if let Some(g) = ctx.group {
                action = action.max(g.tightened(h.det.as_str()));
            }
            if action > Action::Allow {
                s.picked.push(Cand {
                    start: h.start,
                    end: h.end,
                    action,
                    src: Src::Det(*h),
                });
            }
        }

        // The offensive-language score, by band.
        if scored {
            // The n-gram sum came with the scan (0 for a model of another size, whose
            // weights do not apply: its bias alone, as `Model::score_hashed` gives).
            let score = model.score_of_sum(sum, chars.len());
            let mut action = cc.action(score, has_ext);
            if action > Action::Allow {
                if let Some(g) = ctx.group {
                    action = action.max(g.tightened(OFFENSIVE));
                }
                s.picked.push(Cand {
                    start: compact.first().copied().unwrap_or(0),
                    end: compact.last().map_or(0, |&i| i + 1),
                    action,
                    src: Src::Classifier,
                });
            }
        }

        if s.picked.is_empty() {
            return Verdict::allow();
        }
        s.picked.sort_by_key(|c| c.start);
        self.decide(text, ctx, s)
    }

    fn rule_action(&self, src: &Src, ctx: &CheckContext<'_>) -> Action {
        let has_ext = ctx.has_external_member;
        match src {
            Src::Rule(r) => {
                let Some(rule) = self.rules.get(*r as usize) else {
                    return Action::Allow;
                };
                let Some((name, cp)) = self.categories.get(rule.category as usize) else {
                    return Action::Allow;
                };
                let base = cp.effective(has_ext);
                let mut a = match rule.action {
                    Some(over) if has_ext => over.max(base),
                    Some(over) => over,
                    None => base,
                };
                if let Some(g) = ctx.group {
                    a = a.max(g.tightened(name));
                    if g.forbids_secret_markers() && &**name == CONFIDENTIAL {
                        a = Action::Block;
                    }
                }
                a
            }
            Src::Group(_) => ctx.group.map_or(Action::Block, |g| {
                g.words_action().max(g.tightened(g.category()))
            }),
            Src::Det(_) | Src::Classifier => Action::Allow,
        }
    }

    fn decide(&self, text: &str, ctx: &CheckContext<'_>, s: &mut Scratch) -> Verdict {
        let f = s.fold.fchars();
        let span = |c: &Cand| -> (usize, usize) {
            let a = f.get(c.start as usize).map_or(0, |x| x.start as usize);
            let b = f
                .get((c.end as usize).saturating_sub(1))
                .map_or(a, |x| x.end as usize);
            (a, b.max(a))
        };
        let action = s.picked.iter().map(|c| c.action).max().unwrap_or_default();
        let mut v = Verdict::allow();
        v.action = action;
        v.hits.reserve(s.picked.len());
        for c in &s.picked {
            let (category, rule, esc) = self.label_of(&c.src, ctx.group);
            let (start, end) = span(c);
            if v.category.is_none() && c.action == action {
                v.category = Some(category.clone());
                v.rule = Some(rule.clone());
            }
            v.escalate |= esc && c.action >= Action::Warn;
            v.hits.push(Hit {
                rule,
                category,
                action: c.action,
                start,
                end,
            });
        }
        let any_mask = s.picked.iter().any(|c| c.action == Action::Mask);
        if any_mask && matches!(action, Action::Mask | Action::Review) {
            v.masked_text = Some(self.mask(text, s));
        }
        v
    }

    /// The text with every `mask` candidate's characters replaced by `*`.
    fn mask(&self, text: &str, s: &mut Scratch) -> String {
        let f = s.fold.fchars();
        s.units.clear();
        for c in s.picked.iter().filter(|c| c.action == Action::Mask) {
            match &c.src {
                Src::Det(d) => {
                    let maskable = |fc: &FChar| match d.mask {
                        MaskKind::Digits => {
                            fc.class == CLASS_DIGIT || fc.c == 'x' || cjk_digit(fc.c).is_some()
                        }
                        MaskKind::All => true,
                    };
                    let region = f.get(d.start as usize..d.mask_end as usize).unwrap_or(&[]);
                    let total = region.iter().filter(|x| maskable(x)).count();
                    let (head, tail) = (d.keep_head as usize, d.keep_tail as usize);
                    for (k, fc) in region.iter().filter(|x| maskable(x)).enumerate() {
                        if k >= head && k + tail < total {
                            s.units.push((fc.start, fc.end));
                        }
                    }
                }
                _ => {
                    for fc in f.get(c.start as usize..c.end as usize).unwrap_or(&[]) {
                        s.units.push((fc.start, fc.end));
                    }
                }
            }
        }
        s.units.sort_unstable();
        s.units.dedup();
        let mut out = String::with_capacity(text.len());
        let mut cursor = 0usize;
        for &(a, b) in &s.units {
            let (a, b) = (a as usize, b as usize);
            if a < cursor {
                continue;
            }
            out.push_str(text.get(cursor..a).unwrap_or(""));
            // One `*` per original character (a unit is exactly one character).
            out.push('*');
            cursor = b;
        }
        out.push_str(text.get(cursor..).unwrap_or(""));
        out
    }
}

impl GroupPolicy {
    /// Compiles `spec` against the rule set it will be used with (its separators and category
    /// names). Unknown category or detector names in `tighten` are an error.
    pub fn compile(
        spec: &GroupPolicySpec,
        moderator: &Moderator,
    ) -> Result<GroupPolicy, LoadError> {
        let category = spec
            .words_category
            .clone()
            .unwrap_or_else(|| "group".to_string());
        if spec.words.len() > MAX_GROUP_WORDS {
            return Err(LoadError::Group {
                message: format!("{} words (at most {MAX_GROUP_WORDS})", spec.words.len()),
            });
        }
        let known = |name: &str| {
            name == category
                || name == CONFIDENTIAL
                || name == OFFENSIVE
                || moderator.categories().any(|c| c == name)
                || Detector::from_name(name).is_some()
        };
        let mut tighten = Vec::new();
        for (name, action) in &spec.tighten {
            if !known(name) {
                return Err(LoadError::Group {
                    message: format!("unknown category or detector {name:?} in tighten"),
                });
            }
            tighten.push((name.clone(), *action));
        }
        let words_action = spec.words_action.unwrap_or(Action::Block);
        let mut mb = MatcherBuilder::default();
        let romanize = Romanize {
            pinyin: spec.words_pinyin,
            initials: spec.words_initials,
        };
        let seps = moderator.separators();
        let min_initials = moderator.policy.normalize.min_initials;
        for (i, w) in spec.words.iter().enumerate() {
            let p = normalize_pattern(w, seps);
            if !p.is_empty() {
                mb.deny(&p, i as u32, words_action);
                add_romanized(
                    &mut mb,
                    seps,
                    &p,
                    i as u32,
                    words_action,
                    romanize,
                    min_initials,
                );
            }
        }
        let matcher = mb.build().map_err(|message| LoadError::Group {
            message: format!("cannot build the automaton: {message}"),
        })?;
        Ok(GroupPolicy::from_parts(
            matcher,
            words_action,
            category,
            tighten,
            spec.forbid_secret_markers,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moderator_is_send_sync() {
        fn assert<T: Send + Sync>() {}
        assert::<Moderator>();
        assert::<GroupPolicy>();
        assert::<crate::Escalator>();
    }
}
