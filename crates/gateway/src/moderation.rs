//! The gateway's side of moderation: the current rule set (swapped atomically on hot reload),
//! compiled group rules, and the escalation ladder in force.
//!
//! The penalties the ladder hands out (mute for a while, suspend until an admin lifts it) and
//! the violation counts behind them are shared by every node through the store: see
//! [`crate::penalties`]. This module keeps only a per-node [`Escalator`], the fallback that
//! counts violations while the store cannot be reached.

use arc_swap::ArcSwap;
use dashmap::DashMap;
use moderation::{
    CheckContext, EscalationConfig, Escalator, GroupPolicy, GroupPolicySpec, LoadError, Moderator,
    Penalty, Verdict,
};
use protocol::{GroupId, UserId};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Rules and the escalation ladder.
pub struct Moderation {
    rules: ArcSwap<Moderator>,
    /// Bumped by every rule reload: group policies compiled against older rules are rebuilt.
    generation: AtomicU64,
    /// Compiled per-group policies (see [`Moderation::group_policy`]).
    groups: DashMap<GroupId, CompiledGroup>,
    /// Counts violations on this node only, while the store cannot be reached.
    escalator: Escalator,
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

    /// The escalation ladder of the rules in force (`[escalation]` of `policy.toml`).
    pub fn escalation_config(&self) -> EscalationConfig {
        self.rules.load().escalation_config().clone()
    }

    /// Counts a violation on this node only and returns the penalty it reaches: the fallback
    /// of [`crate::penalties::Penalties::record_violation`] when the store is unreachable.
    pub fn record_locally(&self, user: &UserId) -> Penalty {
        self.escalator.record(user.as_str(), Instant::now())
    }

    /// Forgets the violations counted on this node (an administrator lifted the penalty).
    pub fn lift(&self, user: &UserId) {
        self.escalator.lift(user.as_str());
    }
}
