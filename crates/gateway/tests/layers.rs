//! The gateway's layers, checked: every module has a layer in [`LAYERS`], and a module
//! imports (`crate::<module>` anywhere in its code, comments aside) only from its own layer or
//! below, with no import loop between modules. A new module without a row, an upward import or
//! a loop fails `layers_hold`, which prints the offending files.
//!
//! `LAYERS_SRC=<dir> cargo test -p gateway --test layers -- --nocapture report` prints the
//! counts for another source tree (how the before/after table in docs/ARCHITECTURE.md was
//! measured).

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Module -> layer, bottom (1) to top (4).
/// - 4 wiring: builds the node and the binary.
/// - 3 edge: HTTP handlers (`api/`), the WebSocket session and its frame dispatch (`ops`).
/// - 2 domain: the rules (conversation policy, messages, groups, posts, files, events).
/// - 1 plumbing: state, caches, stores' adapters, auth, budgets, listener, clock, config.
const LAYERS: &[(&str, u8)] = &[
    ("lib", 4),
    ("main", 4),
    ("cli", 4),
    ("server", 4),
    ("api", 3),
    ("session", 3),
    ("ops", 3),
    ("policy", 2),
    ("messages", 2),
    ("groups", 2),
    ("group_admin", 2),
    ("directory_admin", 2),
    ("posts", 2),
    ("files", 2),
    ("events", 2),
    ("send", 2),
    ("holdback", 2),
    ("retention", 2),
    ("holds", 2),
    ("state", 1),
    ("hub", 1),
    ("pump", 1),
    ("order", 1),
    ("membership", 1),
    ("moderation", 1),
    ("directory", 1),
    ("revocation", 1),
    ("penalties", 1),
    ("post_commit", 1),
    ("faults", 1),
    ("auth", 1),
    ("jwt_crypto", 1),
    ("signin", 1),
    ("hashing", 1),
    ("budget", 1),
    ("user_rates", 1),
    ("read_budget", 1),
    ("frame_meter", 1),
    ("ws_handshake", 1),
    ("disk", 1),
    ("backends", 1),
    ("listener", 1),
    ("tls", 1),
    ("config", 1),
    ("error", 1),
    ("clock", 1),
    ("metrics", 1),
    ("health", 1),
    ("backup", 2),
    ("compliance", 2),
    ("leavers", 2),
    ("meta_archive", 2),
    ("archive", 1),
];

#[derive(Debug, Default)]
struct Report {
    /// Module -> modules it imports (other than itself).
    edges: BTreeMap<String, BTreeSet<String>>,
    /// `file: module -> module` for every import from a lower layer to a higher one.
    upward: Vec<String>,
    /// Modules without a layer.
    unknown: BTreeSet<String>,
    /// Import loops (strongly connected sets of more than one module).
    loops: Vec<Vec<String>>,
    /// The longest file and its line count.
    longest: (String, usize),
}

fn rs_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rs_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The `crate::<name>` references of a source text, comments aside.
fn references(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or_default();
        let mut rest = code;
        while let Some(i) = rest.find("crate::") {
            let before = rest[..i].chars().last();
            rest = &rest[i + "crate::".len()..];
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$') {
                continue;
            }
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                out.insert(name);
            }
        }
    }
    out
}

fn analyze(src: &Path) -> Report {
    let layer: BTreeMap<&str, u8> = LAYERS.iter().copied().collect();
    let mut files = Vec::new();
    rs_files(src, &mut files);
    files.sort();
    let mut r = Report::default();
    for f in &files {
        let rel = f.strip_prefix(src).unwrap();
        let module = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_string();
        let text = std::fs::read_to_string(f).unwrap();
        let lines = text.lines().count();
        if lines > r.longest.1 {
            r.longest = (rel.display().to_string(), lines);
        }
        let Some(&from) = layer.get(module.as_str()) else {
            r.unknown.insert(module);
            continue;
        };
        for to in references(&text) {
            if to == module {
                continue;
            }
            match layer.get(to.as_str()) {
                None => {
                    r.unknown.insert(to.clone());
                }
                Some(&l) if l > from => r
                    .upward
                    .push(format!("{}: {module} -> {to}", rel.display())),
                Some(_) => {}
            }
            r.edges.entry(module.clone()).or_default().insert(to);
        }
    }
    r.loops = loops(&r.edges);
    r
}

/// Strongly connected sets of more than one module (Tarjan's algorithm).
fn loops(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct T<'a> {
        edges: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on: BTreeSet<&'a str>,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(t: &mut T<'a>, v: &'a str) {
        let i = t.index.len();
        t.index.insert(v, i);
        t.low.insert(v, i);
        t.stack.push(v);
        t.on.insert(v);
        if let Some(next) = t.edges.get(v) {
            for w in next {
                let w = w.as_str();
                if !t.index.contains_key(w) {
                    visit(t, w);
                    let lw = t.low[w];
                    let lv = t.low.get_mut(v).unwrap();
                    *lv = (*lv).min(lw);
                } else if t.on.contains(w) {
                    let iw = t.index[w];
                    let lv = t.low.get_mut(v).unwrap();
                    *lv = (*lv).min(iw);
                }
            }
        }
        if t.low[v] == t.index[v] {
            let mut scc = Vec::new();
            while let Some(w) = t.stack.pop() {
                t.on.remove(w);
                scc.push(w.to_string());
                if w == v {
                    break;
                }
            }
            if scc.len() > 1 {
                scc.sort();
                t.out.push(scc);
            }
        }
    }
    let mut t = T {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in edges.keys() {
        if !t.index.contains_key(v.as_str()) {
            visit(&mut t, v);
        }
    }
    t.out
}

fn own_src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

#[test]
fn layers_hold() {
    let r = analyze(&own_src());
    assert!(
        r.unknown.is_empty(),
        "modules without a layer (add a row to LAYERS in tests/layers.rs): {:?}",
        r.unknown
    );
    assert!(
        r.upward.is_empty(),
        "imports from a lower layer up to a higher one:\n{}",
        r.upward.join("\n")
    );
    assert!(r.loops.is_empty(), "import loops: {:?}", r.loops);
}

#[test]
fn the_checker_sees_upward_imports_and_loops() {
    let refs = references("use crate::api::Caller; // crate::server\nlet x = crate::state::now_ms(); let y = mycrate::hub;");
    assert_eq!(
        refs.into_iter().collect::<Vec<_>>(),
        ["api", "state"],
        "comments and other paths are not imports"
    );
    let mut edges = BTreeMap::new();
    edges.insert("a".to_string(), BTreeSet::from(["b".to_string()]));
    edges.insert("b".to_string(), BTreeSet::from(["c".to_string()]));
    edges.insert("c".to_string(), BTreeSet::from(["a".to_string()]));
    edges.insert("d".to_string(), BTreeSet::from(["a".to_string()]));
    assert_eq!(loops(&edges), vec![vec!["a", "b", "c"]]);
}

/// Prints the counts (for docs/ARCHITECTURE.md); `LAYERS_SRC` points at another tree.
#[test]
fn report() {
    let src = std::env::var_os("LAYERS_SRC").map_or_else(own_src, PathBuf::from);
    let r = analyze(&src);
    println!(
        "modules {}, import arrows {}, upward {}, loops {} {:?}, longest {} ({} lines)",
        r.edges.len(),
        r.edges.values().map(BTreeSet::len).sum::<usize>(),
        r.upward.len(),
        r.loops.len(),
        r.loops,
        r.longest.0,
        r.longest.1
    );
    for u in &r.upward {
        println!("upward: {u}");
    }
}
