//! Token revocation: a token stops working when its id is revoked (a signed-out device) or
//! when it was issued before its user's cut-off (a password change or reset, an
//! administrator's `disconnect?revoke=true`).
//!
//! A token's id is its `sid` claim (every token this server mints has one); a token without
//! one (an identity provider's) is identified by a digest of the token itself. Records live
//! in the [`MetaStore`] (both backends), so they survive a restart and, in cluster mode, every
//! node reads the same ones; each is kept until every token it can refuse has expired, then
//! pruned. A revocation is also broadcast to every node as [`router::Control::TokensRevoked`]:
//! each node adds it to its cache and closes the sessions it refuses. A node that missed the
//! broadcast still refuses, because it reads the store again once its cached answer for a
//! user is older than [`FRESH_FOR`].

use dashmap::DashMap;
use protocol::UserId;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use store::{MetaOp, MetaStore, StoreError};

/// Namespace of revoked token ids, keyed `user/token_id`.
pub const NS_REVOKED_TOKEN: &str = "revoked_token";
/// Namespace of per-user cut-offs, keyed by user id.
pub const NS_REVOKED_USER: &str = "revoked_user";

/// How long a node trusts its cached view of a user's revocations before reading the store
/// again (what a node that missed a broadcast waits at most).
pub const FRESH_FOR: Duration = Duration::from_secs(2);

/// Most users whose revocations are cached; beyond it the cache starts over.
const MAX_CACHED: usize = 200_000;

/// A revoked token, as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct TokenRecord {
    /// When the token expires (seconds): the record is pruned after it.
    until: u64,
}

/// A user's cut-off, as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct UserRecord {
    /// Tokens issued (`iat`) before this time, seconds, are refused.
    before: u64,
    /// When every such token has expired (seconds): the record is pruned after it.
    until: u64,
}

/// The id a revocation names a token by: its `sid` claim, else `t` and a digest of the token.
pub fn token_id(sid: Option<&str>, token: &str) -> String {
    match sid {
        Some(s) if !s.is_empty() && s.len() <= 128 => s.to_owned(),
        _ => format!("t{}", hex::encode(&Sha256::digest(token.as_bytes())[..16])),
    }
}

/// What one node knows about one user's revocations.
#[derive(Debug, Default, Clone)]
struct Known {
    /// When it was last read from the store (`None`: only broadcasts so far).
    read_at: Option<Instant>,
    /// The user's cut-off (0: none).
    before: u64,
    /// Revoked token ids and until when they matter.
    tokens: HashMap<Box<str>, u64>,
}

impl Known {
    fn merge(&mut self, other: &Known) {
        self.before = self.before.max(other.before);
        for (id, until) in &other.tokens {
            let e = self.tokens.entry(id.clone()).or_insert(0);
            *e = (*e).max(*until);
        }
    }

    fn refuses(&self, token_id: &str, iat: u64, now: u64) -> bool {
        iat < self.before || self.tokens.get(token_id).is_some_and(|u| *u >= now)
    }
}

/// The node's revocation records: the store, and a short-lived cache in front of it.
pub struct Revocations {
    meta: Arc<dyn MetaStore>,
    cache: DashMap<UserId, Known>,
}

/// Decodes a revocation record; a bad one is a corrupt store record, not a client error.
fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::corrupt_with("revocation record", e))
}

/// Encodes a revocation record.
fn encode<T: Serialize>(record: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(record).map_err(|e| StoreError::backend_with("encoding a revocation", e))
}

impl Revocations {
    /// Revocations kept in `meta`.
    pub fn new(meta: Arc<dyn MetaStore>) -> Self {
        Self {
            meta,
            cache: DashMap::new(),
        }
    }

    async fn read(&self, user: &UserId) -> Result<Known, StoreError> {
        let mut known = Known {
            read_at: Some(Instant::now()),
            ..Known::default()
        };
        if let Some(b) = self.meta.get(NS_REVOKED_USER, user.as_str()).await? {
            let r: UserRecord = decode(&b)?;
            known.before = r.before;
        }
        let prefix = format!("{user}/");
        let mut pages = store::Pages::new(&*self.meta, NS_REVOKED_TOKEN, &prefix, 500);
        while let Some(page) = pages.next().await? {
            for (key, value) in page {
                if let Some(id) = key.strip_prefix(&prefix) {
                    let r: TokenRecord = decode(&value)?;
                    known.tokens.insert(id.into(), r.until);
                }
            }
        }
        Ok(known)
    }

    /// What this node knows about the user, read from the store when the cache is stale.
    async fn known(&self, user: &UserId) -> Result<Known, StoreError> {
        if let Some(k) = self.cache.get(user) {
            if k.read_at.is_some_and(|t| t.elapsed() < FRESH_FOR) {
                return Ok(k.clone());
            }
        }
        let read = self.read(user).await?;
        if self.cache.len() >= MAX_CACHED {
            self.cache.clear();
        }
        let mut entry = self.cache.entry(user.clone()).or_default();
        // Merge: a broadcast that arrived meanwhile (or one the store of this node never
        // saw) is kept.
        entry.merge(&read);
        entry.read_at = read.read_at;
        Ok(entry.clone())
    }

    /// Whether the token (`token_id`, issued at `iat`) of `user` is revoked.
    pub async fn is_revoked(
        &self,
        user: &UserId,
        token_id: &str,
        iat: u64,
    ) -> Result<bool, StoreError> {
        let now = crate::clock::now_secs();
        Ok(self.known(user).await?.refuses(token_id, iat, now))
    }

    /// The user's cut-off: a token minted now must have an `iat` of at least this.
    pub async fn not_before(&self, user: &UserId) -> Result<u64, StoreError> {
        Ok(self.known(user).await?.before)
    }

    /// Records, durably, that the token `token_id` of `user` (expiring at `until`) is revoked.
    pub async fn revoke_token(
        &self,
        user: &UserId,
        token_id: &str,
        until: u64,
    ) -> Result<(), StoreError> {
        let value = encode(&TokenRecord { until })?;
        self.meta
            .apply(vec![MetaOp::put(
                NS_REVOKED_TOKEN,
                &format!("{user}/{token_id}"),
                value,
            )])
            .await?;
        self.apply(user, Some(token_id), None, until);
        Ok(())
    }

    /// Records, durably, that every token of `user` issued before `before` is revoked; the
    /// record is kept until `until` (when the last such token has expired).
    pub async fn revoke_user(
        &self,
        user: &UserId,
        before: u64,
        until: u64,
    ) -> Result<(), StoreError> {
        let old: Option<UserRecord> = match self.meta.get(NS_REVOKED_USER, user.as_str()).await? {
            Some(b) => Some(decode(&b)?),
            None => None,
        };
        let record = UserRecord {
            before: before.max(old.as_ref().map_or(0, |r| r.before)),
            until: until.max(old.as_ref().map_or(0, |r| r.until)),
        };
        let value = encode(&record)?;
        self.meta
            .apply(vec![MetaOp::put(NS_REVOKED_USER, user.as_str(), value)])
            .await?;
        self.apply(user, None, Some(record.before), until);
        Ok(())
    }

    /// Adds a revocation to the cache (from this node's API or another node's broadcast).
    pub fn apply(&self, user: &UserId, token_id: Option<&str>, before: Option<u64>, until: u64) {
        let mut k = Known::default();
        if let Some(id) = token_id {
            k.tokens.insert(id.into(), until);
        }
        k.before = before.unwrap_or(0);
        if self.cache.len() >= MAX_CACHED {
            self.cache.clear();
        }
        self.cache.entry(user.clone()).or_default().merge(&k);
    }

    /// Deletes the records whose tokens have all expired; returns how many.
    pub async fn prune(&self) -> Result<usize, StoreError> {
        let now = crate::clock::now_secs();
        let mut removed = 0;
        for ns in [NS_REVOKED_TOKEN, NS_REVOKED_USER] {
            let mut pages = store::Pages::new(&*self.meta, ns, "", 500);
            while let Some(page) = pages.next().await? {
                let mut expired = Vec::new();
                for (key, value) in page {
                    let until = serde_json::from_slice::<serde_json::Value>(&value)
                        .ok()
                        .and_then(|v| v.get("until").and_then(serde_json::Value::as_u64))
                        .unwrap_or(0);
                    if until < now {
                        expired.push(MetaOp::delete(ns, &key));
                    }
                }
                removed += expired.len();
                if !expired.is_empty() {
                    self.meta.apply(expired).await?;
                }
            }
        }
        // Expired entries leave the cache too.
        self.cache.retain(|_, k| {
            k.tokens.retain(|_, until| *until >= now);
            true
        });
        Ok(removed)
    }

    /// Prunes every `every` until `shutdown`.
    pub fn spawn_pruner(
        self: &Arc<Self>,
        every: Duration,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        let this = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tick.tick() => {}
                }
                match this.prune().await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(records = n, "pruned expired token revocations"),
                    Err(e) => tracing::warn!(error = %e, "could not prune token revocations"),
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_ids_are_the_sid_or_a_digest() {
        assert_eq!(token_id(Some("abc"), "x.y.z"), "abc");
        let a = token_id(None, "x.y.z");
        assert_eq!(a.len(), 33);
        assert_ne!(a, token_id(None, "x.y.w"));
        assert_eq!(a, token_id(Some(""), "x.y.z"));
    }

    #[tokio::test]
    async fn revocations_are_stored_read_back_after_a_restart_and_pruned() {
        use store::embedded::{EmbeddedOptions, EmbeddedStore};
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path(), EmbeddedOptions::default()).unwrap();
        let meta: Arc<dyn MetaStore> = Arc::new(store);
        let now = crate::clock::now_secs();
        let (ann, bo) = (UserId::from("ann"), UserId::from("bo"));
        let first = Revocations::new(meta.clone());
        first.revoke_token(&ann, "s1", now + 600).await.unwrap();
        first.revoke_user(&bo, now + 1, now + 600).await.unwrap();
        // An older cut-off never lowers a newer one.
        first.revoke_user(&bo, now - 100, now + 10).await.unwrap();
        first.revoke_token(&ann, "gone", now - 5).await.unwrap();
        assert!(first.is_revoked(&ann, "s1", now).await.unwrap());

        // A fresh instance (a restart, or another node sharing the store) reads them.
        let second = Revocations::new(meta.clone());
        assert!(second.is_revoked(&ann, "s1", now).await.unwrap());
        assert!(!second.is_revoked(&ann, "s2", now).await.unwrap());
        assert!(second.is_revoked(&bo, "any", now).await.unwrap());
        assert!(!second.is_revoked(&bo, "any", now + 1).await.unwrap());
        assert_eq!(second.not_before(&bo).await.unwrap(), now + 1);

        // Pruning removes only what can no longer refuse anything.
        assert_eq!(second.prune().await.unwrap(), 1);
        let third = Revocations::new(meta.clone());
        assert!(third.is_revoked(&ann, "s1", now).await.unwrap());
        assert_eq!(
            meta.scan(NS_REVOKED_TOKEN, "", "", 10).await.unwrap().len(),
            1
        );

        // A broadcast this node only has in its cache counts too.
        third.apply(&ann, Some("s9"), None, now + 600);
        assert!(third.is_revoked(&ann, "s9", now).await.unwrap());
    }

    #[test]
    fn cut_offs_and_token_ids_refuse() {
        let mut k = Known::default();
        k.merge(&Known {
            before: 100,
            ..Known::default()
        });
        k.tokens.insert("s1".into(), 500);
        assert!(k.refuses("other", 99, 200));
        assert!(!k.refuses("other", 100, 200));
        assert!(k.refuses("s1", 150, 200));
        assert!(
            !k.refuses("s1", 150, 501),
            "expired records no longer matter"
        );
    }
}
