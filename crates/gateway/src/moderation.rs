//! The gateway's side of moderation: the current rule set (swapped atomically on hot reload),
//! the escalation ladder, and the penalties it hands out (mute for a while, suspend until an
//! admin lifts it).
//!
//! Penalties live in this node's memory: a restart forgets mutes, and in a cluster each node
//! counts the violations it sees (documented in docs/MODERATION.md).

use arc_swap::ArcSwap;
use dashmap::DashMap;
use moderation::{
    CheckContext, Escalator, GroupPolicy, GroupPolicySpec, LoadError, Moderator, Penalty, Verdict,
};
use protocol::{GroupId, UserId};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// A penalty in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restriction {
    /// May not post until this time (ms since the epoch).
    MutedUntil(u64),
    /// May not post until an admin lifts it.
    Suspended,
}

/// Rules, escalation and penalties.
pub struct Moderation {
    rules: ArcSwap<Moderator>,
    /// Bumped by every rule reload: group policies compiled against older rules are rebuilt.
    generation: AtomicU64,
    /// Compiled per-group policies (see [`Moderation::group_policy`]).
    groups: DashMap<GroupId, CompiledGroup>,
    escalator: Escalator,
    restrictions: DashMap<UserId, Restriction>,
    dir: Option<PathBuf>,
}

/// One group's policy as compiled, with what it was compiled from.
struct CompiledGroup {
    generation: u64,
    spec: Arc<GroupPolicySpec>,
    policy: Option<Arc<GroupPolicy>>,
}

/// Most compiled group policies kept; past it the cache starts over (they recompile on use).
const MAX_COMPILED_GROUPS: usize = 100_000;

impl Moderation {
    /// Loads the rules from `dir` (empty path: built-in detectors only). A directory that
    /// does not exist falls back to the built-in rules with a warning; a broken rule file is
    /// an error naming the file and line.
    pub fn load(dir: &Path) -> Result<Self, LoadError> {
        let (moderator, dir) = if dir.as_os_str().is_empty() {
            (Moderator::builtin(), None)
        } else if !dir.exists() {
            tracing::warn!(dir = %dir.display(), "moderation rules directory not found; using the built-in rules only");
            (Moderator::builtin(), None)
        } else {
            (Moderator::load_dir(dir)?, Some(dir.to_path_buf()))
        };
        let stats = moderator.stats().clone();
        tracing::info!(?stats, "moderation rules loaded");
        let escalator = Escalator::new(moderator.escalation_config().clone());
        Ok(Self {
            rules: ArcSwap::from_pointee(moderator),
            generation: AtomicU64::new(0),
            groups: DashMap::new(),
            escalator,
            restrictions: DashMap::new(),
            dir,
        })
    }

    /// The verdict for a text.
    pub fn check(&self, text: &str, ctx: &CheckContext<'_>) -> Verdict {
        self.rules.load().check(text, ctx)
    }

    /// Compiles a group's rules against the rules in force: how an admin's new rules are
    /// checked before they are stored (unknown category or detector names are an error).
    pub fn compile_group(&self, spec: &GroupPolicySpec) -> Result<GroupPolicy, LoadError> {
        GroupPolicy::compile(spec, &self.rules.load())
    }

    /// The compiled policy of group `id` whose stored rules are `spec`, compiled once per
    /// change of the group's rules or of the rule set and cached. Rules that no longer compile
    /// against reloaded rules (a category was removed) are logged and not applied, so the
    /// group falls back to the company rules instead of refusing every message.
    pub fn group_policy(
        &self,
        id: &GroupId,
        spec: &Arc<GroupPolicySpec>,
    ) -> Option<Arc<GroupPolicy>> {
        let generation = self.generation.load(Ordering::Acquire);
        if let Some(c) = self.groups.get(id) {
            if c.generation == generation && Arc::ptr_eq(&c.spec, spec) {
                return c.policy.clone();
            }
        }
        let policy = match self.compile_group(spec) {
            Ok(p) => Some(Arc::new(p)),
            Err(e) => {
                tracing::error!(group = %id, error = %e, "the group's moderation rules do not compile against the rules in force; applying the company rules only");
                None
            }
        };
        if self.groups.len() >= MAX_COMPILED_GROUPS {
            self.groups.clear();
        }
        self.groups.insert(
            id.clone(),
            CompiledGroup {
                generation,
                spec: spec.clone(),
                policy: policy.clone(),
            },
        );
        policy
    }

    /// Reloads the rule files; on error the old rules stay in force.
    pub fn reload(&self) -> Result<moderation::LoadStats, LoadError> {
        let Some(dir) = &self.dir else {
            return Ok(self.rules.load().stats().clone());
        };
        let fresh = Moderator::load_dir(dir)?;
        let stats = fresh.stats().clone();
        self.rules.store(Arc::new(fresh));
        self.generation.fetch_add(1, Ordering::AcqRel);
        tracing::info!(?stats, "moderation rules reloaded");
        Ok(stats)
    }

    /// Polls the rule directory and reloads when it changes, until `stop`.
    pub fn spawn_watcher(self: &Arc<Self>, every: Duration, stop: CancellationToken) {
        let Some(dir) = self.dir.clone() else { return };
        if every.is_zero() {
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            let fp = |d: PathBuf| async move {
                tokio::task::spawn_blocking(move || moderation::dir_fingerprint(&d).ok())
                    .await
                    .ok()
                    .flatten()
            };
            let mut last = fp(dir.clone()).await;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = stop.cancelled() => return,
                }
                let now = fp(dir.clone()).await;
                if now == last {
                    continue;
                }
                last = now;
                let m = me.clone();
                match tokio::task::spawn_blocking(move || m.reload()).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => {
                        tracing::error!(error = %e, "moderation rules rejected; the previous rules stay in force")
                    }
                    Err(e) => tracing::error!(error = %e, "moderation reload task failed"),
                }
            }
        });
    }

    /// Counts a violation and returns the penalty it earns (already in force).
    pub fn record_violation(&self, user: &UserId, now_ms: u64) -> Penalty {
        let penalty = self.escalator.record(user.as_str(), Instant::now());
        match penalty {
            Penalty::Mute(d) => {
                let until = now_ms + d.as_millis() as u64;
                // A mute never shortens a suspension or a longer mute.
                self.restrictions
                    .entry(user.clone())
                    .and_modify(|r| {
                        if let Restriction::MutedUntil(t) = r {
                            *t = (*t).max(until);
                        }
                    })
                    .or_insert(Restriction::MutedUntil(until));
            }
            Penalty::Suspend => {
                self.restrictions
                    .insert(user.clone(), Restriction::Suspended);
            }
            Penalty::None | Penalty::Warn => {}
        }
        penalty
    }

    /// The restriction on a user now, if any (expired mutes are dropped).
    pub fn restriction(&self, user: &UserId, now_ms: u64) -> Option<Restriction> {
        let r = *self.restrictions.get(user)?;
        if let Restriction::MutedUntil(t) = r {
            if t <= now_ms {
                self.restrictions.remove(user);
                return None;
            }
        }
        Some(r)
    }

    /// Lifts any mute or suspension and resets the violation count.
    pub fn lift(&self, user: &UserId) {
        self.restrictions.remove(user);
        self.escalator.lift(user.as_str());
    }
}
