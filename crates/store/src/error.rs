//! The store's error type.
//!
//! Every variant says *what* failed in words; the three that wrap a failure of the engine
//! underneath (fjall, the CQL driver, a codec, a joined task) also keep that error as their
//! [`std::error::Error::source`], so a caller or a log can walk the chain. The `Display` text
//! includes the source's message too, because most logs print only the top error.

/// A backend's own error, kept as the source of a [`StoreError`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What can go wrong in a store call.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The named thing does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// The named thing already exists.
    #[error("already exists: {0}")]
    Conflict(String),
    /// The backend cannot serve the call right now (closed, down, timed out); retrying later
    /// may work. Nothing was acknowledged.
    #[error("store unavailable: {what}{}", suffix(.source))]
    Unavailable {
        /// What was being done.
        what: String,
        /// The backend's error, when there is one.
        #[source]
        source: Option<BoxError>,
    },
    /// Data on disk could not be decoded.
    #[error("corrupt record: {what}{}", suffix(.source))]
    Corrupt {
        /// What could not be decoded.
        what: String,
        /// The decoder's error, when there is one.
        #[source]
        source: Option<BoxError>,
    },
    /// Any other backend failure.
    #[error("storage error: {what}{}", suffix(.source))]
    Backend {
        /// What was being done.
        what: String,
        /// The backend's error, when there is one.
        #[source]
        source: Option<BoxError>,
    },
}

/// `": <source>"`, or nothing without a source.
fn suffix(source: &Option<BoxError>) -> String {
    source
        .as_ref()
        .map(|e| format!(": {e}"))
        .unwrap_or_default()
}

impl StoreError {
    /// [`StoreError::Unavailable`] without an underlying error.
    pub fn unavailable(what: impl Into<String>) -> Self {
        Self::Unavailable {
            what: what.into(),
            source: None,
        }
    }

    /// [`StoreError::Unavailable`] caused by `source`.
    pub fn unavailable_with(what: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Self::Unavailable {
            what: what.into(),
            source: Some(source.into()),
        }
    }

    /// [`StoreError::Corrupt`] without an underlying error.
    pub fn corrupt(what: impl Into<String>) -> Self {
        Self::Corrupt {
            what: what.into(),
            source: None,
        }
    }

    /// [`StoreError::Corrupt`] caused by `source` (a decoder's error).
    pub fn corrupt_with(what: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Self::Corrupt {
            what: what.into(),
            source: Some(source.into()),
        }
    }

    /// [`StoreError::Backend`] without an underlying error.
    pub fn backend(what: impl Into<String>) -> Self {
        Self::Backend {
            what: what.into(),
            source: None,
        }
    }

    /// [`StoreError::Backend`] caused by `source`.
    pub fn backend_with(what: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Self::Backend {
            what: what.into(),
            source: Some(source.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    #[test]
    fn keeps_the_source_and_says_it() {
        let io = std::io::Error::other("disk on fire");
        let e = StoreError::backend_with("write batch", io);
        assert_eq!(e.to_string(), "storage error: write batch: disk on fire");
        assert_eq!(
            e.source().map(|s| s.to_string()).as_deref(),
            Some("disk on fire")
        );
        let e = StoreError::unavailable("store is closed");
        assert_eq!(e.to_string(), "store unavailable: store is closed");
        assert!(e.source().is_none());
    }
}
