//! The store's error type.

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
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// Data on disk could not be decoded.
    #[error("corrupt record: {0}")]
    Corrupt(String),
    /// Any other backend failure.
    #[error("storage error: {0}")]
    Backend(String),
}
