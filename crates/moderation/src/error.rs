//! [`LoadError`]: why a rule directory or a group policy could not be loaded. Its own module
//! so that the moderator and the group overrides report load errors without importing the
//! loader (which builds moderators).

use std::io;
use std::path::PathBuf;

/// Why a rule directory (or a group policy) could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A file or directory could not be read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// A word-list line is malformed (bad action, invalid UTF-8...).
    #[error("{}:{line}: {message}", path.display())]
    Syntax {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// `policy.toml` is malformed or inconsistent.
    #[error("{}:{line}: {message}", path.display())]
    Policy {
        /// The file.
        path: PathBuf,
        /// 1-based line number (0 when unknown).
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// The automaton could not be built (too many or too long patterns).
    #[error("{}: cannot build the automaton: {message}", path.display())]
    Build {
        /// The rule directory (or `<group>` for a group policy).
        path: PathBuf,
        /// The builder's message.
        message: String,
    },
    /// A group policy names an unknown category or detector, or is otherwise invalid.
    #[error("group policy: {message}")]
    Group {
        /// What is wrong.
        message: String,
    },
}
