//! Memory budgets for replies that grow with stored data (`sync`, `history`,
//! `conversations`).
//!
//! Each such reply may hold at most `limits.reply_max_bytes` (its estimated encoded size), a
//! user's replies together at most `limits.replies_max_bytes_per_user`, and the node's at most
//! `limits.replies_max_bytes`. A request reserves the per-reply maximum from the user's and the
//! node's budget before it reads anything (waiting up to `limits.reply_wait_ms`, then
//! `unavailable` with retry), gives back what the finished reply does not use, and keeps the
//! rest until the writer task has written the reply to the socket: the [`ReplyBytes`] guard
//! travels inside the queued frame. So the memory a heavy reply holds is bounded while it is
//! built, while it waits in the session's queue, and while it is written.

use crate::config::LimitsConfig;
use crate::error::ApiError;
use dashmap::DashMap;
use protocol::{ErrorCode, UserId};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The node's reply budgets (one per node, kept in the hub).
pub struct ReplyBudgets {
    node: Arc<Semaphore>,
    users: DashMap<UserId, Arc<Semaphore>, foldhash::fast::RandomState>,
    per_reply: u32,
    per_user: u32,
    wait: Duration,
}

/// Bytes reserved for one reply; given back when dropped (after the reply was written).
pub struct ReplyBytes {
    budgets: Arc<ReplyBudgets>,
    user: UserId,
    held: u32,
    /// The session's one heavy-request slot, released with the bytes.
    _session: Option<OwnedSemaphorePermit>,
}

fn clamp_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX).max(1)
}

impl ReplyBudgets {
    /// Budgets from the `[limits]` section.
    pub fn new(limits: &LimitsConfig) -> Arc<Self> {
        let node = clamp_u32(limits.replies_max_bytes);
        let per_user = clamp_u32(limits.replies_max_bytes_per_user).min(node);
        let per_reply = clamp_u32(limits.reply_max_bytes).min(per_user);
        Arc::new(Self {
            node: Arc::new(Semaphore::new(node as usize)),
            users: DashMap::with_hasher(foldhash::fast::RandomState::default()),
            per_reply,
            per_user,
            wait: Duration::from_millis(limits.reply_wait_ms),
        })
    }

    /// Bytes the node has not reserved (for tests and metrics).
    pub fn available(&self) -> usize {
        self.node.available_permits()
    }

    /// Reserves the per-reply maximum for one reply of `user`, holding `session` (the
    /// session's heavy-request slot) with it. Waits up to `limits.reply_wait_ms`; then
    /// `unavailable` (retry).
    pub async fn reserve(
        self: &Arc<Self>,
        user: &UserId,
        session: Option<OwnedSemaphorePermit>,
    ) -> Result<ReplyBytes, ApiError> {
        let user_sem = self
            .users
            .entry(user.clone())
            .or_insert_with(|| Arc::new(Semaphore::new(self.per_user as usize)))
            .clone();
        let n = self.per_reply;
        let acquire = async {
            let u = user_sem.clone().acquire_many_owned(n).await.ok()?;
            let nd = self.node.clone().acquire_many_owned(n).await.ok()?;
            // Given back by `ReplyBytes` (by count, so the guard can shrink).
            u.forget();
            nd.forget();
            Some(())
        };
        let got = tokio::time::timeout(self.wait, acquire).await;
        drop(user_sem);
        match got {
            Ok(Some(())) => Ok(ReplyBytes {
                budgets: self.clone(),
                user: user.clone(),
                held: n,
                _session: session,
            }),
            _ => {
                crate::metrics::budget_refused("reply_bytes");
                self.forget_idle_user(user);
                Err(ApiError::new(
                    ErrorCode::Unavailable,
                    "the node is busy sending large replies; retry in a moment",
                ))
            }
        }
    }

    fn give_back(&self, user: &UserId, n: u32) {
        if n == 0 {
            return;
        }
        self.node.add_permits(n as usize);
        if let Some(s) = self.users.get(user) {
            s.add_permits(n as usize);
        }
    }

    /// Drops a user's entry once nobody holds or waits for its budget.
    fn forget_idle_user(&self, user: &UserId) {
        self.users.remove_if(user, |_, s| {
            Arc::strong_count(s) == 1 && s.available_permits() >= self.per_user as usize
        });
    }
}

impl ReplyBytes {
    /// The bytes this reply may use.
    pub fn limit(&self) -> usize {
        self.held as usize
    }

    /// Gives back everything above `used` bytes (the finished reply's estimated size).
    pub fn shrink_to(&mut self, used: usize) {
        let keep = clamp_u32(used).min(self.held);
        self.budgets.give_back(&self.user, self.held - keep);
        self.held = keep;
    }
}

impl Drop for ReplyBytes {
    fn drop(&mut self) {
        self.budgets.give_back(&self.user, self.held);
        self.held = 0;
        self.budgets.forget_idle_user(&self.user);
    }
}

/// The size of `value` encoded as JSON, without allocating it: an upper bound of its
/// MessagePack size too (same field names; strings are never longer in MessagePack).
pub fn encoded_len<T: serde::Serialize>(value: &T) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut c = Count(0);
    // A failure (never for our types) counts as what was written so far.
    let _ = serde_json::to_writer(&mut c, value);
    c.0
}

/// Uploads in progress per user on this node.
pub type UploadsByUser = dashmap::DashMap<UserId, usize>;

/// One user's upload slot, given back when dropped.
pub struct UserSlot<'a> {
    map: &'a UploadsByUser,
    user: UserId,
}

impl<'a> UserSlot<'a> {
    /// Takes one of `user`'s `max` slots, or `None` when they are all taken.
    pub fn take(map: &'a UploadsByUser, user: &UserId, max: usize) -> Option<Self> {
        let mut n = map.entry(user.clone()).or_insert(0);
        if *n >= max.max(1) {
            return None;
        }
        *n += 1;
        Some(Self {
            map,
            user: user.clone(),
        })
    }
}

impl Drop for UserSlot<'_> {
    fn drop(&mut self) {
        self.map.remove_if_mut(&self.user, |_, n| {
            *n = n.saturating_sub(1);
            *n == 0
        });
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn limits(reply: usize, user: usize, node: usize) -> LimitsConfig {
        LimitsConfig {
            reply_max_bytes: reply,
            replies_max_bytes_per_user: user,
            replies_max_bytes: node,
            reply_wait_ms: 50,
            ..LimitsConfig::default()
        }
    }

    #[tokio::test]
    async fn reservations_shrink_and_are_given_back() {
        let b = ReplyBudgets::new(&limits(100, 200, 1000));
        let u = UserId::new("u");
        let mut r = b.reserve(&u, None).await.unwrap();
        assert_eq!(b.available(), 900);
        r.shrink_to(30);
        assert_eq!(b.available(), 970);
        drop(r);
        assert_eq!(b.available(), 1000);
        assert!(b.users.is_empty(), "idle users are forgotten");
    }

    #[tokio::test]
    async fn a_user_over_budget_waits_then_gets_unavailable() {
        let b = ReplyBudgets::new(&limits(100, 200, 1000));
        let u = UserId::new("u");
        let _r1 = b.reserve(&u, None).await.unwrap();
        let _r2 = b.reserve(&u, None).await.unwrap();
        let e = b.reserve(&u, None).await.err().unwrap();
        assert_eq!(e.code, ErrorCode::Unavailable);
        // Another user still gets served.
        b.reserve(&UserId::new("v"), None).await.unwrap();
    }

    #[tokio::test]
    async fn the_node_budget_is_shared_by_every_user() {
        let b = ReplyBudgets::new(&limits(100, 200, 250));
        let r1 = b.reserve(&UserId::new("a"), None).await.unwrap();
        let mut r2 = b.reserve(&UserId::new("b"), None).await.unwrap();
        let e = b.reserve(&UserId::new("c"), None).await.err().unwrap();
        assert_eq!(e.code, ErrorCode::Unavailable);
        // Room comes back as replies shrink or are written; waiters get it.
        r2.shrink_to(40);
        let waiter = {
            let b = b.clone();
            tokio::spawn(async move { b.reserve(&UserId::new("c"), None).await.is_ok() })
        };
        tokio::time::sleep(Duration::from_millis(5)).await;
        drop(r1);
        assert!(waiter.await.unwrap());
    }

    #[test]
    fn encoded_len_is_the_json_length() {
        let v = serde_json::json!({"a": "x\u{1}y", "b": [1, 2, 3]});
        assert_eq!(encoded_len(&v), serde_json::to_vec(&v).unwrap().len());
    }
}
