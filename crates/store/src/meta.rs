//! Administrative records: a small namespaced key-value store for what the gateway keeps
//! beside messages (accounts, departments, group settings, bans, files, pending
//! announcements, mention markers).
//!
//! These records are few and read-mostly, so one generic table serves them all: every backend
//! implements five operations once, and new features add a namespace rather than a schema
//! change in two backends. Values are opaque bytes (the gateway stores JSON).

use crate::Result;
use async_trait::async_trait;

/// One write of an atomic [`MetaStore::apply`] batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetaOp {
    /// Sets `ns/key` to `value`.
    Put {
        /// Namespace.
        ns: String,
        /// Key within the namespace.
        key: String,
        /// The new value.
        value: Vec<u8>,
    },
    /// Removes `ns/key` (no error when absent).
    Delete {
        /// Namespace.
        ns: String,
        /// Key within the namespace.
        key: String,
    },
}

impl MetaOp {
    /// A put.
    pub fn put(ns: &str, key: &str, value: Vec<u8>) -> Self {
        MetaOp::Put {
            ns: ns.to_owned(),
            key: key.to_owned(),
            value,
        }
    }

    /// A delete.
    pub fn delete(ns: &str, key: &str) -> Self {
        MetaOp::Delete {
            ns: ns.to_owned(),
            key: key.to_owned(),
        }
    }
}

/// The outcome of a [`MetaStore::compare_and_swap`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Swap {
    /// The new value was written.
    Done,
    /// The stored value was not the expected one; this is what is stored (`None`: nothing),
    /// read in the same atomic step, so a retry needs no second read (which could be stale).
    Current(Option<Vec<u8>>),
}

/// A namespaced key-value store. Namespaces and keys are non-empty strings without NUL bytes.
#[async_trait]
pub trait MetaStore: Send + Sync + 'static {
    /// The value at `ns/key`.
    async fn get(&self, ns: &str, key: &str) -> Result<Option<Vec<u8>>>;

    /// Up to `limit` entries of `ns` whose key starts with `prefix` and sorts after `after`
    /// (exclusive; `""` for the start), in key order. Page by passing the last key back.
    async fn scan(
        &self,
        ns: &str,
        prefix: &str,
        after: &str,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>>;

    /// Writes `value` at `ns/key` only if nothing is there; returns whether it was written.
    /// Atomic: of two racing calls for one key, exactly one returns `true`.
    async fn insert_new(&self, ns: &str, key: &str, value: Vec<u8>) -> Result<bool>;

    /// Applies every write of `ops` or none of them, durably before returning.
    async fn apply(&self, ops: Vec<MetaOp>) -> Result<()>;

    /// Writes `new` at `ns/key` only if the stored value is still `expected` (`None`: only
    /// if nothing is there). Atomic across processes, so a read-modify-write that retries
    /// with [`Swap::Current`] never loses a concurrent update (the version check for records
    /// several nodes change, such as group settings).
    async fn compare_and_swap(
        &self,
        ns: &str,
        key: &str,
        expected: Option<Vec<u8>>,
        new: Vec<u8>,
    ) -> Result<Swap>;

    /// Deletes `ns/key` only if the stored value is still `expected`: [`Swap::Done`] when it
    /// was deleted, else what is stored (`None`: nothing). Atomic like
    /// [`MetaStore::compare_and_swap`], so pruning a record that has ended never deletes a
    /// newer value another node wrote meanwhile.
    async fn compare_and_delete(&self, ns: &str, key: &str, expected: Vec<u8>) -> Result<Swap>;
}

/// A walk over the records of one namespace under a key prefix, page by page in key order:
/// the paging loop (remember the last key, stop after a short page) written once for every
/// caller of [`MetaStore::scan`] that reads more than one page.
pub struct Pages<'a> {
    meta: &'a dyn MetaStore,
    ns: &'a str,
    prefix: &'a str,
    after: String,
    size: usize,
    done: bool,
}

impl<'a> Pages<'a> {
    /// Pages of at most `size` records (at least 1) of `ns` whose keys start with `prefix`.
    pub fn new(meta: &'a dyn MetaStore, ns: &'a str, prefix: &'a str, size: usize) -> Self {
        Self {
            meta,
            ns,
            prefix,
            after: String::new(),
            size: size.max(1),
            done: false,
        }
    }

    /// The next page, or `None` after the last one. Never returns an empty page.
    pub async fn next(&mut self) -> Result<Option<Vec<(String, Vec<u8>)>>> {
        if self.done {
            return Ok(None);
        }
        let page = self
            .meta
            .scan(self.ns, self.prefix, &self.after, self.size)
            .await?;
        self.done = page.len() < self.size;
        match page.last() {
            Some((key, _)) => {
                self.after.clone_from(key);
                Ok(Some(page))
            }
            None => {
                self.done = true;
                Ok(None)
            }
        }
    }
}

/// The upper bound of a key prefix for range scans: the prefix followed by the largest
/// character, so every key starting with the prefix sorts below it.
pub fn prefix_end(prefix: &str) -> String {
    let mut end = prefix.to_owned();
    end.push(char::MAX);
    end
}
