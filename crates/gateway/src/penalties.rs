//! Moderation penalties that hold on every node: violation counts, mutes and suspensions are
//! records in the shared [`MetaStore`] (fjall in embedded mode, CQL in cluster mode), so they
//! survive a restart and every node enforces the same ones.
//!
//! - **Counting.** A user's violations in the escalation window are one record
//!   ([`moderation::ViolationLog`], namespaces [`violations_ns`]) that the node seeing a
//!   violation reads, extends and writes back with [`MetaStore::compare_and_swap`], retrying
//!   on the value a refusal answers: two nodes counting at once never lose an increment, and
//!   the ladder's step is reached whichever node saw each violation. Violations are rare
//!   (each is a flagged message, already audited), so one compare-and-swap each is cheap.
//! - **Penalties.** A mute or suspension is a record in [`NS_PENALTY`], merged the same way
//!   (a mute never shortens a suspension or a longer mute). An administrator's lift deletes
//!   both records; a refresh deletes records of mutes that have ended, each with
//!   [`MetaStore::compare_and_delete`], so a penalty written meanwhile is never lost.
//! - **Enforcing.** The send path never reads the store: each node keeps the users under
//!   penalty in memory ([`Penalties::restriction`] is one map lookup). A change is broadcast as
//!   [`router::Control::PenaltyChanged`] and applied by every node at once; every node also
//!   re-reads the whole namespace at start and every `moderation.penalty_refresh_ms`, so a node
//!   that missed a broadcast (restart, router outage) converges within that interval.
//! - **Memory.** At most [`MAX_CACHED`] users under penalty are cached; past that (an unusual
//!   mass penalty) the send path reads the store for users it does not hold, so nobody
//!   escapes and memory stays bounded.
//!
//! When the store cannot be reached, a violation is counted on this node only (the in-memory
//! `Escalator`) and a penalty is enforced from memory (and broadcast) until the next refresh
//! that succeeds.

use crate::moderation::Moderation;
use dashmap::DashMap;
use moderation::{EscalationConfig, Penalty, ViolationLog};
use protocol::UserId;
use router::{Control, Router};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use store::{MetaOp, MetaStore, StoreError, Swap};
use tokio_util::sync::CancellationToken;

/// Namespace of penalties in force (mutes and suspensions), keyed by user id.
pub const NS_PENALTY: &str = "penalty";
/// Prefix of the namespaces of violation logs (times in the escalation window), keyed by
/// user id: see [`violations_ns`].
pub const NS_VIOLATIONS: &str = "violations";

/// Violation logs are spread over this many namespaces: the CQL store keeps a namespace in
/// one partition, and lightweight transactions on one partition wait for each other.
const VIOLATION_SHARDS: u8 = 16;

/// The namespace of `user`'s violation log, `violations.0` to `violations.f`, from a digest
/// of the user id (the same on every node and every build).
pub fn violations_ns(user: &UserId) -> String {
    let digest = Sha256::digest(user.as_str().as_bytes());
    format!("{NS_VIOLATIONS}.{:x}", digest[0] % VIOLATION_SHARDS)
}

/// Most users under penalty cached per node; past it the send path reads the store for the
/// others.
pub const MAX_CACHED: usize = 100_000;

/// Compare-and-swap attempts on one record before giving up (only many nodes writing one
/// user's record at the same instant can use them up).
const CAS_ATTEMPTS: usize = 16;

/// Records per page when reading the penalties namespace.
const PAGE: usize = 500;

/// A penalty in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restriction {
    /// May not post until this time (ms since the epoch).
    MutedUntil(u64),
    /// May not post until an admin lifts it.
    Suspended,
}

impl Restriction {
    /// Whether it still applies at `now_ms`.
    pub fn in_force(self, now_ms: u64) -> bool {
        match self {
            Restriction::MutedUntil(t) => t > now_ms,
            Restriction::Suspended => true,
        }
    }

    /// The stricter of two: a suspension beats any mute, a later mute end beats an earlier.
    pub fn stricter(self, other: Restriction) -> Restriction {
        match (self, other) {
            (Restriction::MutedUntil(a), Restriction::MutedUntil(b)) => {
                Restriction::MutedUntil(a.max(b))
            }
            _ => Restriction::Suspended,
        }
    }

    /// The fields of the [`Control::PenaltyChanged`] that announces it.
    fn control(self, user: &UserId) -> Control {
        match self {
            Restriction::MutedUntil(t) => Control::PenaltyChanged {
                user: user.clone(),
                until: Some(t),
                suspended: false,
            },
            Restriction::Suspended => Control::PenaltyChanged {
                user: user.clone(),
                until: None,
                suspended: true,
            },
        }
    }
}

/// A penalty as stored (JSON in [`NS_PENALTY`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Record {
    /// Muted until `until` (ms since the epoch); set at `since`.
    Muted { until: u64, since: u64 },
    /// Suspended since `since` until an administrator lifts it.
    Suspended { since: u64 },
}

impl Record {
    fn restriction(&self) -> Restriction {
        match self {
            Record::Muted { until, .. } => Restriction::MutedUntil(*until),
            Record::Suspended { .. } => Restriction::Suspended,
        }
    }
}

/// Decodes a stored penalty; a corrupt one is logged and read as none (the next penalty for
/// the user overwrites it).
fn decode_penalty(user: &str, bytes: &[u8]) -> Option<Record> {
    match serde_json::from_slice(bytes) {
        Ok(r) => Some(r),
        Err(e) => {
            tracing::warn!(%user, error = %e, "ignoring a corrupt penalty record");
            None
        }
    }
}

/// Decodes a violation log; a corrupt one is logged and read as empty.
fn decode_log(user: &str, bytes: &[u8]) -> ViolationLog {
    serde_json::from_slice(bytes).unwrap_or_else(|e| {
        tracing::warn!(%user, error = %e, "ignoring a corrupt violation log");
        ViolationLog::default()
    })
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|e| StoreError::backend_with("encoding a penalty", e))
}

/// What this node knows about one user: the restriction (`None`: lifted) and when it learned
/// it (a refresh that began earlier does not overwrite it).
#[derive(Debug, Clone, Copy)]
struct Cached {
    restriction: Option<Restriction>,
    at: Instant,
}

/// The node's view of the penalties: the store, and the cache the send path reads.
pub struct Penalties {
    meta: Arc<dyn MetaStore>,
    cache: DashMap<UserId, Cached>,
    /// More users are under penalty than the cache holds: read the store on a miss.
    overflow: AtomicBool,
}

impl Penalties {
    /// Penalties kept in `meta`; empty until [`Penalties::refresh`] (or [`Penalties::start`]).
    pub fn new(meta: Arc<dyn MetaStore>) -> Self {
        Self {
            meta,
            cache: DashMap::new(),
            overflow: AtomicBool::new(false),
        }
    }

    /// The restriction on `user` at `now_ms`, if any. A map lookup; the store is read only
    /// when more users are under penalty than the cache holds.
    pub async fn restriction(
        &self,
        user: &UserId,
        now_ms: u64,
    ) -> Result<Option<Restriction>, StoreError> {
        if let Some(c) = self.cache.get(user) {
            return Ok(c.restriction.filter(|r| r.in_force(now_ms)));
        }
        if !self.overflow.load(Ordering::Relaxed) {
            return Ok(None);
        }
        let stored = match self.meta.get(NS_PENALTY, user.as_str()).await? {
            Some(b) => decode_penalty(user.as_str(), &b),
            None => None,
        };
        Ok(stored
            .map(|r| r.restriction())
            .filter(|r| r.in_force(now_ms)))
    }

    /// Counts a violation by `user` at `now_ms` on the shared ladder, puts the penalty it
    /// earns in force on every node (stored, cached, broadcast) and returns it.
    pub async fn record_violation(
        &self,
        router: &dyn Router,
        moderation: &Moderation,
        user: &UserId,
        now_ms: u64,
    ) -> Penalty {
        let config = moderation.escalation_config();
        let penalty = match self.count_violation(user, now_ms, &config).await {
            Ok(n) => config.penalty_for(n),
            Err(e) => {
                tracing::warn!(%user, error = %e, "could not count a violation in the store; counting it on this node only");
                moderation.record_locally(user)
            }
        };
        let wanted = match penalty {
            Penalty::Mute(d) => {
                Restriction::MutedUntil(now_ms.saturating_add(d.as_millis() as u64))
            }
            Penalty::Suspend => Restriction::Suspended,
            Penalty::None | Penalty::Warn => return penalty,
        };
        let in_force = match self.impose(user, wanted, now_ms).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(%user, error = %e, "could not store a penalty; enforcing it from memory until the next refresh");
                wanted
            }
        };
        self.merge(user, in_force);
        crate::post_commit::broadcast(router, in_force.control(user)).await;
        penalty
    }

    /// Adds a violation to the user's shared log; returns the count in the window.
    async fn count_violation(
        &self,
        user: &UserId,
        now_ms: u64,
        config: &EscalationConfig,
    ) -> Result<usize, StoreError> {
        self.update(&violations_ns(user), user.as_str(), |current| {
            let mut log =
                current.map_or_else(ViolationLog::default, |b| decode_log(user.as_str(), b));
            let n = log.record(now_ms, config);
            Ok((Some(encode(&log)?), n))
        })
        .await
    }

    /// Stores `wanted` merged with what is stored; returns what is now in force.
    async fn impose(
        &self,
        user: &UserId,
        wanted: Restriction,
        now_ms: u64,
    ) -> Result<Restriction, StoreError> {
        self.update(NS_PENALTY, user.as_str(), |current| {
            let old = current
                .and_then(|b| decode_penalty(user.as_str(), b))
                .map(|r| r.restriction())
                .filter(|r| r.in_force(now_ms));
            let merged = old.map_or(wanted, |o| o.stricter(wanted));
            if Some(merged) == old {
                return Ok((None, merged));
            }
            let record = match merged {
                Restriction::MutedUntil(until) => Record::Muted {
                    until,
                    since: now_ms,
                },
                Restriction::Suspended => Record::Suspended { since: now_ms },
            };
            Ok((Some(encode(&record)?), merged))
        })
        .await
    }

    /// A read-modify-write of one record under compare-and-swap. `f` maps the stored value to
    /// the value to write (`None`: nothing to write) and the answer.
    async fn update<T>(
        &self,
        ns: &str,
        key: &str,
        mut f: impl FnMut(Option<&[u8]>) -> Result<(Option<Vec<u8>>, T), StoreError>,
    ) -> Result<T, StoreError> {
        let mut current = self.meta.get(ns, key).await?;
        for _ in 0..CAS_ATTEMPTS {
            let (new, answer) = f(current.as_deref())?;
            let Some(new) = new else {
                return Ok(answer);
            };
            match self
                .meta
                .compare_and_swap(ns, key, current.clone(), new)
                .await?
            {
                Swap::Done => return Ok(answer),
                Swap::Current(now) => current = now,
            }
        }
        Err(StoreError::unavailable(format!(
            "{ns}/{key}: still changing after {CAS_ATTEMPTS} attempts"
        )))
    }

    /// Lifts any mute or suspension of `user` and resets the violation count, on every node.
    pub async fn lift(&self, router: &dyn Router, user: &UserId) -> Result<(), StoreError> {
        self.meta
            .apply(vec![
                MetaOp::delete(NS_PENALTY, user.as_str()),
                MetaOp::delete(&violations_ns(user), user.as_str()),
            ])
            .await?;
        self.set(user, None);
        let control = Control::PenaltyChanged {
            user: user.clone(),
            until: None,
            suspended: false,
        };
        crate::post_commit::broadcast(router, control).await;
        Ok(())
    }

    /// Applies a [`Control::PenaltyChanged`] from any node: neither `until` nor `suspended`
    /// means lifted.
    pub fn apply(&self, user: &UserId, until: Option<u64>, suspended: bool) {
        match (suspended, until) {
            (true, _) => self.merge(user, Restriction::Suspended),
            (false, Some(t)) => self.merge(user, Restriction::MutedUntil(t)),
            (false, None) => self.set(user, None),
        }
    }

    /// Whether the cache may hold one more user; if not, the send path reads the store.
    fn room_for(&self, user: &UserId) -> bool {
        if self.cache.len() < MAX_CACHED || self.cache.contains_key(user) {
            return true;
        }
        self.overflow.store(true, Ordering::Relaxed);
        false
    }

    /// Caches `r` merged with what the cache holds.
    fn merge(&self, user: &UserId, r: Restriction) {
        if !self.room_for(user) {
            return;
        }
        let mut c = self.cache.entry(user.clone()).or_insert(Cached {
            restriction: None,
            at: Instant::now(),
        });
        c.restriction = Some(c.restriction.map_or(r, |old| old.stricter(r)));
        c.at = Instant::now();
    }

    /// Caches `r` as is (`None`: lifted, remembered until the next refresh).
    fn set(&self, user: &UserId, r: Option<Restriction>) {
        if r.is_some() && !self.room_for(user) {
            return;
        }
        self.cache.insert(
            user.clone(),
            Cached {
                restriction: r,
                at: Instant::now(),
            },
        );
    }

    /// Reads every penalty in force from the store and makes the cache match it (what this
    /// node learned after the read began is kept). Returns how many are in force.
    pub async fn refresh(&self) -> Result<usize, StoreError> {
        let started = Instant::now();
        let now = crate::clock::now_ms();
        let mut fresh: HashMap<UserId, Restriction> = HashMap::new();
        let mut overflow = false;
        let mut ended = Vec::new();
        let mut pages = store::Pages::new(&*self.meta, NS_PENALTY, "", PAGE);
        while let Some(page) = pages.next().await? {
            for (key, value) in page {
                let r = decode_penalty(&key, &value)
                    .map(|r| r.restriction())
                    .filter(|r| r.in_force(now));
                match r {
                    Some(r) if fresh.len() < MAX_CACHED => {
                        fresh.insert(UserId::new(key.clone()), r);
                    }
                    Some(_) => overflow = true,
                    None if ended.len() < PAGE => ended.push((key.clone(), value)),
                    None => {}
                }
            }
        }
        // Put in what the store holds first, then drop what it no longer holds, so a user
        // under penalty is never missing from the cache in between.
        for (user, r) in &fresh {
            let mut c = self.cache.entry(user.clone()).or_insert(Cached {
                restriction: Some(*r),
                at: started,
            });
            if c.at <= started {
                c.restriction = Some(*r);
                c.at = started;
            }
        }
        self.cache
            .retain(|user, c| c.at > started || fresh.contains_key(user));
        self.overflow.store(overflow, Ordering::Relaxed);
        self.prune(ended).await;
        Ok(fresh.len())
    }

    /// Deletes records of mutes that have ended (and unreadable ones), each only if it is
    /// still the value read: a penalty another node wrote meanwhile is kept.
    async fn prune(&self, ended: Vec<(String, Vec<u8>)>) {
        for (key, value) in ended {
            if let Err(e) = self.meta.compare_and_delete(NS_PENALTY, &key, value).await {
                tracing::warn!(error = %e, "could not prune an ended penalty; retrying at the next refresh");
                return;
            }
        }
    }

    /// Loads the penalties (an error if the store cannot be read), then refreshes them every
    /// `every` until `shutdown` (0: never again).
    pub async fn start(
        self: &Arc<Self>,
        every: Duration,
        shutdown: CancellationToken,
    ) -> Result<(), StoreError> {
        let n = self.refresh().await?;
        tracing::info!(users = n, "moderation penalties loaded");
        if every.is_zero() {
            return Ok(());
        }
        let this = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tick.tick() => {}
                }
                if let Err(e) = this.refresh().await {
                    tracing::warn!(error = %e, "could not refresh moderation penalties; keeping the cached ones");
                }
            }
        });
        Ok(())
    }

    /// Number of users the cache holds (under penalty, or lifted since the last refresh).
    pub fn cached(&self) -> usize {
        self.cache.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use store::embedded::{EmbeddedOptions, EmbeddedStore};

    fn store() -> (tempfile::TempDir, Arc<dyn MetaStore>) {
        let dir = tempfile::tempdir().unwrap();
        let s = EmbeddedStore::open(dir.path(), EmbeddedOptions::default()).unwrap();
        (dir, Arc::new(s))
    }

    #[test]
    fn violation_logs_spread_over_sixteen_stable_namespaces() {
        // A digest, not the process's hasher: every node and every build agrees.
        assert_eq!(
            violations_ns(&UserId::from("ann")),
            violations_ns(&UserId::from("ann"))
        );
        let shards: std::collections::BTreeSet<String> = (0..200)
            .map(|i| violations_ns(&UserId::new(format!("user{i}"))))
            .collect();
        assert_eq!(shards.len(), 16, "{shards:?}");
        assert!(shards.iter().all(|s| s.starts_with("violations.")));
    }

    #[test]
    fn the_stricter_restriction_wins() {
        use Restriction::*;
        assert_eq!(MutedUntil(5).stricter(MutedUntil(9)), MutedUntil(9));
        assert_eq!(MutedUntil(9).stricter(MutedUntil(5)), MutedUntil(9));
        assert_eq!(MutedUntil(9).stricter(Suspended), Suspended);
        assert_eq!(Suspended.stricter(MutedUntil(9)), Suspended);
        assert!(MutedUntil(10).in_force(9) && !MutedUntil(10).in_force(10));
    }

    /// Two nodes sharing one store, with no router between them (every broadcast is lost):
    /// violations split between them climb one ladder, and a refresh brings the penalty and
    /// its lift to the node that missed the broadcast.
    #[tokio::test]
    async fn two_nodes_share_the_ladder_and_converge_by_refresh() {
        let (_dir, meta) = store();
        let router = router::local::LocalRouter::new();
        let moderation = Moderation::load(std::path::Path::new("")).unwrap();
        let (a, b) = (Penalties::new(meta.clone()), Penalties::new(meta.clone()));
        let ann = UserId::from("ann");
        let now = crate::clock::now_ms();
        // The default ladder: warn at 1, mute 10 minutes at 3.
        let p1 = a.record_violation(&router, &moderation, &ann, now).await;
        let p2 = b
            .record_violation(&router, &moderation, &ann, now + 1)
            .await;
        assert_eq!((p1, p2), (Penalty::Warn, Penalty::Warn));
        let p3 = a
            .record_violation(&router, &moderation, &ann, now + 2)
            .await;
        assert_eq!(p3, Penalty::Mute(Duration::from_secs(600)));
        let muted = Some(Restriction::MutedUntil(now + 2 + 600_000));
        assert_eq!(a.restriction(&ann, now + 3).await.unwrap(), muted);
        assert_eq!(b.restriction(&ann, now + 3).await.unwrap(), None);
        assert_eq!(b.refresh().await.unwrap(), 1);
        assert_eq!(b.restriction(&ann, now + 3).await.unwrap(), muted);
        // A restart (a fresh instance) loads it.
        let c = Penalties::new(meta.clone());
        c.refresh().await.unwrap();
        assert_eq!(c.restriction(&ann, now + 3).await.unwrap(), muted);

        b.lift(&router, &ann).await.unwrap();
        assert_eq!(b.restriction(&ann, now + 3).await.unwrap(), None);
        a.refresh().await.unwrap();
        assert_eq!(a.restriction(&ann, now + 3).await.unwrap(), None);
        assert_eq!(
            a.cached(),
            0,
            "a lift leaves nothing cached after a refresh"
        );
        // The count starts over after a lift.
        let p = a
            .record_violation(&router, &moderation, &ann, now + 4)
            .await;
        assert_eq!(p, Penalty::Warn);
    }

    /// A store that is down for everything.
    struct Down;

    #[async_trait::async_trait]
    impl MetaStore for Down {
        async fn get(&self, _: &str, _: &str) -> store::Result<Option<Vec<u8>>> {
            Err(StoreError::unavailable("down"))
        }
        async fn scan(
            &self,
            _: &str,
            _: &str,
            _: &str,
            _: usize,
        ) -> store::Result<Vec<(String, Vec<u8>)>> {
            Err(StoreError::unavailable("down"))
        }
        async fn insert_new(&self, _: &str, _: &str, _: Vec<u8>) -> store::Result<bool> {
            Err(StoreError::unavailable("down"))
        }
        async fn apply(&self, _: Vec<MetaOp>) -> store::Result<()> {
            Err(StoreError::unavailable("down"))
        }
        async fn compare_and_swap(
            &self,
            _: &str,
            _: &str,
            _: Option<Vec<u8>>,
            _: Vec<u8>,
        ) -> store::Result<Swap> {
            Err(StoreError::unavailable("down"))
        }
        async fn compare_and_delete(&self, _: &str, _: &str, _: Vec<u8>) -> store::Result<Swap> {
            Err(StoreError::unavailable("down"))
        }
    }

    /// With the store down, violations are counted on this node and the penalty is enforced
    /// from memory; a failed refresh keeps it.
    #[tokio::test]
    async fn with_the_store_down_penalties_hold_on_this_node() {
        let p = Penalties::new(Arc::new(Down));
        let router = router::local::LocalRouter::new();
        let moderation = Moderation::load(std::path::Path::new("")).unwrap();
        let ann = UserId::from("ann");
        let now = crate::clock::now_ms();
        for _ in 0..2 {
            p.record_violation(&router, &moderation, &ann, now).await;
        }
        let third = p.record_violation(&router, &moderation, &ann, now).await;
        assert_eq!(third, Penalty::Mute(Duration::from_secs(600)));
        assert!(p.refresh().await.is_err());
        assert!(matches!(
            p.restriction(&ann, now).await.unwrap(),
            Some(Restriction::MutedUntil(_))
        ));
        assert!(
            p.lift(&router, &ann).await.is_err(),
            "a lift must be stored"
        );
    }

    /// A refresh deletes the records of mutes that have ended, and only those.
    #[tokio::test]
    async fn ended_mutes_are_pruned() {
        let (_dir, meta) = store();
        let p = Penalties::new(meta.clone());
        let now = crate::clock::now_ms();
        let ended = encode(&Record::Muted {
            until: now - 1,
            since: now - 1000,
        })
        .unwrap();
        let live = encode(&Record::Muted {
            until: now + 60_000,
            since: now,
        })
        .unwrap();
        meta.apply(vec![
            MetaOp::put(NS_PENALTY, "old", ended),
            MetaOp::put(NS_PENALTY, "new", live),
            MetaOp::put(NS_PENALTY, "bad", b"not json".to_vec()),
        ])
        .await
        .unwrap();
        assert_eq!(p.refresh().await.unwrap(), 1);
        let left: Vec<String> = meta
            .scan(NS_PENALTY, "", "", 10)
            .await
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(left, vec!["new".to_owned()]);
        assert_eq!(
            p.restriction(&UserId::from("new"), now).await.unwrap(),
            Some(Restriction::MutedUntil(now + 60_000))
        );
        assert_eq!(
            p.restriction(&UserId::from("old"), now).await.unwrap(),
            None
        );
    }

    /// Violations recorded at once on two nodes are all counted (compare-and-swap), and a
    /// suspension is never shortened by a later mute.
    #[tokio::test]
    async fn concurrent_violations_are_never_lost() {
        let (_dir, meta) = store();
        let router = Arc::new(router::local::LocalRouter::new());
        let moderation = Arc::new(Moderation::load(std::path::Path::new("")).unwrap());
        let nodes = [
            Arc::new(Penalties::new(meta.clone())),
            Arc::new(Penalties::new(meta.clone())),
        ];
        let now = crate::clock::now_ms();
        let mut tasks = Vec::new();
        for i in 0..8u64 {
            let (node, router, moderation) = (
                nodes[(i % 2) as usize].clone(),
                router.clone(),
                moderation.clone(),
            );
            tasks.push(tokio::spawn(async move {
                node.record_violation(&*router, &moderation, &UserId::from("bo"), now + i)
                    .await
            }));
        }
        let mut penalties = Vec::new();
        for t in tasks {
            penalties.push(t.await.unwrap());
        }
        // The eighth violation in the window suspends (default ladder), whichever node saw it.
        assert_eq!(
            penalties.iter().filter(|p| **p == Penalty::Suspend).count(),
            1,
            "{penalties:?}"
        );
        let bo = UserId::from("bo");
        let log = meta.get(&violations_ns(&bo), "bo").await.unwrap().unwrap();
        assert_eq!(decode_log("bo", &log).times.len(), 8);
        for node in &nodes {
            node.refresh().await.unwrap();
            assert_eq!(
                node.restriction(&UserId::from("bo"), now + 100)
                    .await
                    .unwrap(),
                Some(Restriction::Suspended)
            );
        }
        // A broadcast mute does not shorten the suspension either.
        nodes[0].apply(&UserId::from("bo"), Some(now + 5), false);
        assert_eq!(
            nodes[0]
                .restriction(&UserId::from("bo"), now)
                .await
                .unwrap(),
            Some(Restriction::Suspended)
        );
    }
}
