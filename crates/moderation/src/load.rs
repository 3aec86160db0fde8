//! Loading a rule directory, load errors, and the directory fingerprint for hot reload.
//!
//! Layout (all files optional; see `docs/MODERATION.md`):
//!
//! ```text
//! policy.toml          actions per category and detector, separators, escalation ladder
//! deny/<category>.txt  one word per line; `word<TAB>action` overrides the category's action
//! allow.txt            phrases inside which deny hits are ignored (三黄片, 路口交通)
//! secrets.txt          extra secret markers (category `confidential`)
//! code_names.txt       project code names (category `confidential`)
//! ```
//!
//! Blank lines and lines starting with `#` are ignored; other files (README, LICENSE) too.
//! Any error names the file and, where it applies, the line; the caller keeps the old rules.

use std::fs;
use std::io;
use std::path::Path;

use crate::moderator::{Moderator, ModeratorBuilder};
use crate::policy::PolicyFile;

pub use crate::error::LoadError;

/// Reads a UTF-8 text file; invalid UTF-8 is reported with its line.
pub(crate) fn read_text(path: &Path) -> Result<String, LoadError> {
    let bytes = fs::read(path).map_err(|source| LoadError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    match String::from_utf8(bytes) {
        Ok(s) => Ok(s.strip_prefix('\u{FEFF}').map(str::to_string).unwrap_or(s)),
        Err(e) => {
            let valid = e.utf8_error().valid_up_to();
            let line = e.as_bytes()[..valid]
                .iter()
                .filter(|&&b| b == b'\n')
                .count()
                + 1;
            Err(LoadError::Syntax {
                path: path.to_path_buf(),
                line,
                message: "invalid UTF-8".to_string(),
            })
        }
    }
}

impl Moderator {
    /// Loads every rule file under `dir` (layout in the [module docs](crate::load)).
    pub fn load_dir(dir: &Path) -> Result<Moderator, LoadError> {
        let io_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| LoadError::Io { path, source }
        };
        let meta = fs::metadata(dir).map_err(io_err(dir))?;
        if !meta.is_dir() {
            return Err(LoadError::Io {
                path: dir.to_path_buf(),
                source: io::Error::new(io::ErrorKind::NotADirectory, "not a directory"),
            });
        }
        let policy_path = dir.join("policy.toml");
        let policy = if policy_path.is_file() {
            let text = read_text(&policy_path)?;
            PolicyFile::from_toml(&text).map_err(|(line, message)| LoadError::Policy {
                path: policy_path.clone(),
                line,
                message,
            })?
        } else {
            PolicyFile::default()
        };
        let mut b = ModeratorBuilder::new(policy);

        let deny_dir = dir.join("deny");
        if deny_dir.is_dir() {
            let mut files = Vec::new();
            for e in fs::read_dir(&deny_dir).map_err(io_err(&deny_dir))? {
                let e = e.map_err(io_err(&deny_dir))?;
                let p = e.path();
                if p.extension().is_some_and(|x| x == "txt") && p.is_file() {
                    files.push(p);
                }
            }
            files.sort();
            for p in files {
                let Some(category) = p.file_stem().and_then(|s| s.to_str()) else {
                    continue;
                };
                let text = read_text(&p)?;
                b.add_words(category, &p, &rule_source(dir, &p), &text)?;
            }
        }
        let allow = dir.join("allow.txt");
        if allow.is_file() {
            let text = read_text(&allow)?;
            b.add_allow(&allow, &text)?;
        }
        for name in ["secrets.txt", "code_names.txt"] {
            let p = dir.join(name);
            if p.is_file() {
                let text = read_text(&p)?;
                b.add_secret_markers(&p, name, &text)?;
            }
        }
        b.build().map_err(|e| match e {
            LoadError::Build { message, .. } => LoadError::Build {
                path: dir.to_path_buf(),
                message,
            },
            other => other,
        })
    }
}

/// `deny/porn.txt`: the path relative to the rule directory, used in rule ids.
fn rule_source(dir: &Path, p: &Path) -> String {
    p.strip_prefix(dir)
        .unwrap_or(p)
        .to_string_lossy()
        .replace('\\', "/")
}

/// A cheap fingerprint of a rule directory: every file's relative path, size and modification
/// time, recursively. Poll it and call [`Moderator::load_dir`] again when it changes.
pub fn dir_fingerprint(dir: &Path) -> io::Result<u64> {
    let mut items = Vec::new();
    walk(dir, dir, &mut items, 0)?;
    items.sort();
    let mut h = Fnv::new();
    for (path, len, mtime) in items {
        h.write(path.as_bytes());
        h.write(&[0]);
        h.write(&len.to_le_bytes());
        h.write(&mtime.to_le_bytes());
    }
    Ok(h.0)
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, u64, u128)>, depth: u32) -> io::Result<()> {
    if depth > 8 {
        return Ok(());
    }
    for e in fs::read_dir(dir)? {
        let e = e?;
        let meta = e.metadata()?;
        let p = e.path();
        if meta.is_dir() {
            walk(root, &p, out, depth + 1)?;
        } else {
            let mtime = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_nanos());
            out.push((rule_source(root, &p), meta.len(), mtime));
        }
    }
    Ok(())
}

/// FNV-1a, 64 bit: stable across processes and Rust versions.
struct Fnv(u64);

impl Fnv {
    fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}
