//! Persistence for the chat server, behind the [`Store`] trait.
//!
//! The gateway talks only to `dyn Store`; which engine sits behind it is a configuration
//! choice. [`embedded::EmbeddedStore`] keeps everything in a fjall (LSM) database under the data
//! directory (the default: nothing to install). [`scylla::ScyllaStore`] (feature `scylla`, on
//! by default) keeps it in ScyllaDB or Apache Cassandra for cluster mode and implements the
//! same traits. `conformance` (feature `conformance`, for tests only: backends enable it as a
//! dev-dependency feature) holds the one test suite every backend must pass, covering
//! [`Store`], [`MetaStore`] and [`ReviewStore`].
//!
//! The contract that matters most: [`Store::append`] returns only once the message is durable,
//! assigns the conversation's next `seq` with no gaps, and is idempotent per
//! (conversation, sender, `client_msg_id`) forever, not just for a cache window.

pub mod admin_export;
pub mod compliance;
#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
pub mod embedded;
mod error;
pub mod meta;
mod model;
pub mod review;
#[cfg(feature = "scylla")]
pub mod scylla;

pub use admin_export::{AdminExport, AdminRecord};
pub use compliance::{EventBody, EventId, EventPage, MemberChange, StoredEvent};
pub use error::{BoxError, StoreError};
pub use meta::{MetaOp, MetaStore, Pages, Swap};
pub use model::*;
pub use review::{AuditEntry, AuditQuery, HeldMessage, ReviewStore};

use async_trait::async_trait;
use protocol::{ConvId, ConvSummary, GroupId, Seq, UserId};
use std::collections::HashMap;

/// Work to run once an append is durable (see [`Store::append_then`]).
pub type AfterAppend = Box<dyn FnOnce(&Appended) + Send>;

/// Result alias for store operations.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Everything the gateway persists. Every method is safe to call concurrently.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Stores a message with the conversation's next seq, durably, before returning. A message
    /// whose (conv, from, client_msg_id) was stored before is not stored again: the first copy
    /// comes back with `duplicate: true`.
    async fn append(&self, msg: NewMessage) -> Result<Appended>;

    /// Like [`Store::append`], and runs `then` once the message is durable, before
    /// returning. A backend that commits in seq order (the embedded one) runs `then` in seq
    /// order per conversation, from its writer, so deliveries handed off there keep that
    /// order however many senders race; `then` must not block for long. The default runs it
    /// after `append` returns, with no ordering promise between concurrent appends.
    async fn append_then(&self, msg: NewMessage, then: AfterAppend) -> Result<Appended> {
        let appended = self.append(msg).await?;
        then(&appended);
        Ok(appended)
    }

    /// Up to `limit` messages with seq below `before` (or the newest), newest first, and
    /// whether older ones exist.
    async fn history(&self, conv: &ConvId, before: Option<Seq>, limit: usize) -> Result<Page>;

    /// Up to `limit` messages with seq above `after`, oldest first, and whether more follow.
    async fn after(&self, conv: &ConvId, after: Seq, limit: usize) -> Result<Page>;

    /// The highest seq in a conversation (0 when empty).
    async fn last_seq(&self, conv: &ConvId) -> Result<Seq>;

    /// The user's conversations (direct ones they took part in and their groups), with last
    /// seq and read cursor, most recently active first.
    async fn conversations(&self, user: &UserId) -> Result<Vec<ConvSummary>>;

    /// Moves a read cursor forward (never back); returns the cursor after the call.
    async fn set_read(&self, user: &UserId, conv: &ConvId, seq: Seq) -> Result<Seq>;

    /// Records that a user exists (first authenticated contact), keeping an existing record.
    async fn touch_user(&self, user: &UserId, now: u64) -> Result<()>;

    /// Whether a user is known.
    async fn user_exists(&self, user: &UserId) -> Result<bool>;

    /// Creates a group with its first members; `Conflict` if the id is taken.
    async fn create_group(&self, group: Group, members: Vec<Member>) -> Result<()>;

    /// One group, if it exists.
    async fn group(&self, id: &GroupId) -> Result<Option<Group>>;

    /// A group's members.
    async fn members(&self, id: &GroupId) -> Result<Vec<Member>>;

    /// Adds a member or changes their role; `NotFound` if the group does not exist.
    async fn put_member(&self, id: &GroupId, member: Member) -> Result<()>;

    /// Adds or changes several members of one group in one atomic write (all of them or
    /// none), such as a change of owner (the new owner promoted and the old one demoted
    /// together, so a group never has two owners or none); `NotFound` if the group does not
    /// exist.
    async fn put_members(&self, id: &GroupId, members: Vec<Member>) -> Result<()>;

    /// Removes a member; returns whether they were one.
    async fn remove_member(&self, id: &GroupId, user: &UserId) -> Result<bool>;

    /// The groups a user belongs to.
    async fn user_groups(&self, user: &UserId) -> Result<Vec<GroupId>>;

    /// Replaces the message at `seq` by its tombstone (see [`Tombstone`]), durably, and
    /// returns the message as it was; `None` when no such message is stored. Recalling a
    /// tombstone again returns the tombstone.
    async fn recall(&self, conv: &ConvId, seq: Seq) -> Result<Option<protocol::Message>>;

    /// Records that `seq` of `conv` holds no message (the node that took the seq died before
    /// storing it), so readers see a `skipped` placeholder instead of a hole, and returns what
    /// `seq` now holds: the placeholder, or the real message when it was stored after all (a
    /// late write always wins over the placeholder). The default, for a backend that takes
    /// seqs and stores in one step and so never leaves a hole, only reads `seq` back.
    async fn mark_skipped(&self, conv: &ConvId, seq: Seq) -> Result<Option<protocol::Message>> {
        let page = self.after(conv, Seq(seq.0.saturating_sub(1)), 1).await?;
        Ok(page.messages.into_iter().find(|m| m.seq == seq))
    }

    /// Makes everything written so far durable and stops background work; later calls fail
    /// with `Unavailable`.
    async fn close(&self) -> Result<()>;

    /// Whether appends to one conversation keep the order in which they were handed over:
    /// when a caller starts [`Store::append_then`] *n* only after the hand-off of append
    /// *n − 1* to the same conversation (its first poll), *n* gets the later seq and its
    /// continuation runs later. (Appends to different conversations may finish in any
    /// order.) True for a backend with one FIFO writer per conversation (embedded: each
    /// conversation belongs to one writer thread), which lets a session pipeline its sends; false (the default)
    /// where concurrent appends finish in any order, so the caller must send one at a time.
    fn keeps_append_order(&self) -> bool {
        false
    }

    // --- Retention (the gateway's `retention` job; docs/OPERATIONS.md, "Retention") ---

    /// Up to `limit` conversations that hold messages, after `after` (`None`: from the start)
    /// in the backend's own stable order; page by passing the last one back. For background
    /// jobs that visit every conversation.
    async fn conversation_ids(&self, after: Option<&ConvId>, limit: usize) -> Result<Vec<ConvId>>;

    /// The conversation's minimum seq: every seq from it up to the last one is stored (no
    /// gaps); older seqs were deleted by retention, except messages it had to keep (a legal
    /// hold, an exemption). 1 when nothing was ever deleted.
    async fn min_seq(&self, conv: &ConvId) -> Result<Seq>;

    /// Deletes the messages at `seqs` (every one below `min_seq`; absent ones are skipped) and
    /// raises the conversation's minimum seq to `min_seq` (never lowers it, never past the
    /// last seq + 1), the raise first, so seqs at and above the minimum always stay gap-free.
    /// The last seq never goes back: later appends continue after it. Returns how many
    /// messages were deleted.
    async fn expire(&self, conv: &ConvId, seqs: &[Seq], min_seq: Seq) -> Result<u64>;
}

/// Where a backend that cannot allocate seqs atomically itself gets them (cluster mode: Redis).
#[async_trait]
pub trait SeqSource: Send + Sync + 'static {
    /// The next seq of `conv`, or `None` when the source has no counter for it (new
    /// conversation, or the counter was lost, e.g. Redis restarted empty).
    async fn next(&self, conv: &ConvId) -> Result<Option<Seq>>;
    /// Sets the counter to `last` unless it exists, then returns the next seq (atomically).
    async fn restore(&self, conv: &ConvId, last: Seq) -> Result<Seq>;
}

/// An in-process [`SeqSource`] (a mutex-protected map), for tests and single-node use.
///
/// It starts empty, so a store using it goes through its recovery path (read the highest
/// stored seq, then [`SeqSource::restore`]) for the first message of every conversation.
#[derive(Debug, Default)]
pub struct LocalSeqSource {
    counters: std::sync::Mutex<HashMap<String, u64>>,
}

impl LocalSeqSource {
    /// An empty source.
    pub fn new() -> Self {
        Self::default()
    }

    fn counters(&self) -> Result<std::sync::MutexGuard<'_, HashMap<String, u64>>> {
        self.counters
            .lock()
            .map_err(|_| StoreError::backend("seq source lock poisoned"))
    }
}

#[async_trait]
impl SeqSource for LocalSeqSource {
    async fn next(&self, conv: &ConvId) -> Result<Option<Seq>> {
        let mut counters = self.counters()?;
        Ok(counters.get_mut(conv.as_str()).map(|last| {
            *last += 1;
            Seq(*last)
        }))
    }

    async fn restore(&self, conv: &ConvId, last: Seq) -> Result<Seq> {
        let mut counters = self.counters()?;
        let counter = counters.entry(conv.as_str().to_owned()).or_insert(last.0);
        *counter += 1;
        Ok(Seq(*counter))
    }
}
