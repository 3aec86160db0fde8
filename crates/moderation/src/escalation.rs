//! Escalation: repeat offenders climb a ladder of penalties.
//!
//! The [`Escalator`] counts each user's violations in a sliding window and maps the count to a
//! [`Penalty`] through a configurable ladder (warn, mute for N minutes, suspend until an admin
//! lifts it). It is pure: the caller passes the current [`Instant`], so tests control time. It
//! is internally synchronized (one short mutex hold per call) and its memory is bounded: users
//! whose violations have all left the window are evicted, and past `max_users` the least
//! recently seen users go first.
//!
//! [`ViolationLog`] is the same sliding window in a form a shared store can hold: a user's
//! recent violation times in wall-clock milliseconds, which any node of a cluster reads,
//! extends and writes back with a compare-and-swap, so the ladder counts every violation
//! whichever node saw it.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// What the caller should do to a user after a violation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Penalty {
    /// Nothing beyond the verdict itself.
    None,
    /// Tell the user they are breaking the rules.
    Warn,
    /// Mute the user for this long.
    Mute(Duration),
    /// Suspend the user until an admin lifts it ([`Escalator::lift`]).
    Suspend,
}

/// Penalty kind of a ladder step, as written in `policy.toml`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepPenalty {
    /// Warn.
    Warn,
    /// Mute for `minutes`.
    Mute,
    /// Suspend.
    Suspend,
}

/// One step of the ladder: from `at` violations in the window on, apply `penalty`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LadderStep {
    /// Number of violations in the window that reaches this step (1 = the first violation).
    pub at: u32,
    /// What to do.
    pub penalty: StepPenalty,
    /// Mute length in minutes (only for `mute`).
    #[serde(default)]
    pub minutes: u64,
}

/// Escalation settings (`[escalation]` in `policy.toml`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EscalationConfig {
    /// Length of the sliding window, in seconds.
    pub window_secs: u64,
    /// At most this many users are tracked; idle ones are evicted first.
    pub max_users: usize,
    /// Steps, by increasing `at`.
    pub ladder: Vec<LadderStep>,
}

impl Default for EscalationConfig {
    fn default() -> Self {
        let step = |at, penalty, minutes| LadderStep {
            at,
            penalty,
            minutes,
        };
        EscalationConfig {
            window_secs: 24 * 3600,
            max_users: 100_000,
            ladder: vec![
                step(1, StepPenalty::Warn, 0),
                step(3, StepPenalty::Mute, 10),
                step(5, StepPenalty::Mute, 60),
                step(8, StepPenalty::Suspend, 0),
            ],
        }
    }
}

impl EscalationConfig {
    /// Checks that the ladder is increasing and mutes have a length.
    pub fn validate(&self) -> Result<(), String> {
        let mut last = 0;
        for s in &self.ladder {
            if s.at <= last {
                return Err(format!(
                    "escalation ladder: `at` must be increasing and at least 1 (found {} after {})",
                    s.at, last
                ));
            }
            if s.penalty == StepPenalty::Mute && s.minutes == 0 {
                return Err(format!(
                    "escalation ladder: mute at {} needs `minutes`",
                    s.at
                ));
            }
            last = s.at;
        }
        if self.window_secs == 0 {
            return Err("escalation: window_secs must be at least 1".to_string());
        }
        Ok(())
    }

    /// The penalty for `count` violations in the window.
    pub fn penalty_for(&self, count: usize) -> Penalty {
        let mut p = Penalty::None;
        for s in &self.ladder {
            if count >= s.at as usize {
                p = match s.penalty {
                    StepPenalty::Warn => Penalty::Warn,
                    StepPenalty::Mute => Penalty::Mute(Duration::from_secs(s.minutes * 60)),
                    StepPenalty::Suspend => Penalty::Suspend,
                };
            }
        }
        p
    }

    /// How many violation times need keeping: the count of the ladder's last step (more
    /// violations than that cannot climb any higher).
    pub fn max_needed(&self) -> usize {
        self.ladder.last().map_or(1, |s| s.at as usize).max(1)
    }

    /// The window in milliseconds (at least 1 s, as [`Escalator`] uses it).
    pub fn window_ms(&self) -> u64 {
        self.window_secs.max(1).saturating_mul(1000)
    }
}

/// One user's violations in the window, as kept in a shared store: times in milliseconds
/// since the epoch, ascending, at most [`EscalationConfig::max_needed`] of them. The same
/// sliding-window semantics as [`Escalator`], with wall-clock times so that several nodes
/// can extend one log (a read-modify-write under a compare-and-swap).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ViolationLog {
    /// Violation times, ms since the epoch, oldest first.
    #[serde(rename = "t", default)]
    pub times: Vec<u64>,
}

impl ViolationLog {
    /// Adds a violation at `now_ms`, drops what left the window (or is beyond what the
    /// ladder needs) and returns the number of violations in the window.
    pub fn record(&mut self, now_ms: u64, config: &EscalationConfig) -> usize {
        self.prune(now_ms, config);
        // Nodes' clocks differ a little: keep the times sorted whatever order they come in.
        let at = self.times.partition_point(|t| *t <= now_ms);
        self.times.insert(at, now_ms);
        let keep = config.max_needed();
        if self.times.len() > keep {
            let extra = self.times.len() - keep;
            self.times.drain(..extra);
        }
        self.times.len()
    }

    /// Number of violations in the window ending at `now_ms`.
    pub fn count(&self, now_ms: u64, config: &EscalationConfig) -> usize {
        let window = config.window_ms();
        self.times
            .iter()
            .filter(|t| now_ms.saturating_sub(**t) < window)
            .count()
    }

    /// Drops the times that left the window ending at `now_ms`.
    pub fn prune(&mut self, now_ms: u64, config: &EscalationConfig) {
        let window = config.window_ms();
        self.times.retain(|t| now_ms.saturating_sub(*t) < window);
    }
}

struct UserState {
    times: VecDeque<Instant>,
    last: Instant,
}

/// Counts violations per user in a sliding window and returns the penalty they reach.
pub struct Escalator {
    config: EscalationConfig,
    window: Duration,
    users: Mutex<HashMap<String, UserState>>,
}

impl std::fmt::Debug for Escalator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Escalator")
            .field("config", &self.config)
            .field("tracked_users", &self.tracked_users())
            .finish()
    }
}

impl Escalator {
    /// An escalator with the given ladder (an invalid ladder still works: steps apply in order).
    pub fn new(config: EscalationConfig) -> Escalator {
        Escalator {
            window: Duration::from_secs(config.window_secs.max(1)),
            config,
            users: Mutex::new(HashMap::new()),
        }
    }

    /// The ladder in use.
    pub fn config(&self) -> &EscalationConfig {
        &self.config
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, UserState>> {
        self.users.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records one violation by `user` at `now` and returns the penalty it reaches.
    pub fn record(&self, user: &str, now: Instant) -> Penalty {
        let keep = self.config.max_needed();
        let mut users = self.lock();
        if !users.contains_key(user) && users.len() >= self.config.max_users.max(1) {
            self.evict(&mut users, now);
        }
        let st = users.entry(user.to_string()).or_insert_with(|| UserState {
            times: VecDeque::new(),
            last: now,
        });
        st.last = st.last.max(now);
        prune(&mut st.times, now, self.window);
        st.times.push_back(now);
        while st.times.len() > keep {
            st.times.pop_front();
        }
        let n = st.times.len();
        drop(users);
        self.config.penalty_for(n)
    }

    /// Number of violations by `user` in the window ending at `now`.
    pub fn violations(&self, user: &str, now: Instant) -> usize {
        let mut users = self.lock();
        match users.get_mut(user) {
            Some(st) => {
                prune(&mut st.times, now, self.window);
                st.times.len()
            }
            None => 0,
        }
    }

    /// Forgets `user`'s violations (an admin lifted the penalty).
    pub fn lift(&self, user: &str) {
        self.lock().remove(user);
    }

    /// Number of users currently tracked.
    pub fn tracked_users(&self) -> usize {
        self.lock().len()
    }

    /// Drops users with no violation in the window (call now and then, e.g. every minute).
    pub fn evict_idle(&self, now: Instant) {
        let window = self.window;
        self.lock().retain(|_, st| {
            prune(&mut st.times, now, window);
            !st.times.is_empty()
        });
    }

    fn evict(&self, users: &mut HashMap<String, UserState>, now: Instant) {
        let window = self.window;
        users.retain(|_, st| {
            prune(&mut st.times, now, window);
            !st.times.is_empty()
        });
        let max = self.config.max_users.max(1);
        if users.len() >= max {
            // Still full: drop the least recently seen tenth (at least one).
            let mut lasts: Vec<Instant> = users.values().map(|s| s.last).collect();
            let k = (max / 10).max(1).min(lasts.len() - 1);
            lasts.select_nth_unstable(k);
            let cut = lasts[k];
            users.retain(|_, st| st.last > cut);
        }
    }
}

fn prune(times: &mut VecDeque<Instant>, now: Instant, window: Duration) {
    while let Some(&t) = times.front() {
        if now.saturating_duration_since(t) >= window {
            times.pop_front();
        } else {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn climbs_the_ladder_and_window_slides() {
        let e = Escalator::new(EscalationConfig::default());
        let t0 = Instant::now();
        let m = Duration::from_secs(60);
        assert_eq!(e.record("u", t0), Penalty::Warn);
        assert_eq!(e.record("u", t0 + m), Penalty::Warn);
        assert_eq!(e.record("u", t0 + 2 * m), Penalty::Mute(10 * m));
        assert_eq!(e.record("u", t0 + 3 * m), Penalty::Mute(10 * m));
        assert_eq!(e.record("u", t0 + 4 * m), Penalty::Mute(60 * m));
        for i in 5..7 {
            assert_eq!(e.record("u", t0 + i * m), Penalty::Mute(60 * m));
        }
        assert_eq!(e.record("u", t0 + 7 * m), Penalty::Suspend);
        assert_eq!(e.record("u", t0 + 8 * m), Penalty::Suspend);
        // Another user is independent.
        assert_eq!(e.record("v", t0), Penalty::Warn);
        // A day later the window is empty again.
        let later = t0 + Duration::from_secs(24 * 3600) + 9 * m;
        assert_eq!(e.violations("u", later), 0);
        assert_eq!(e.record("u", later), Penalty::Warn);
        e.lift("u");
        assert_eq!(e.violations("u", later), 0);
    }

    #[test]
    fn memory_is_bounded() {
        let cfg = EscalationConfig {
            max_users: 100,
            ..EscalationConfig::default()
        };
        let e = Escalator::new(cfg);
        let t0 = Instant::now();
        for i in 0..10_000u64 {
            e.record(&format!("user{i}"), t0 + Duration::from_millis(i));
        }
        assert!(e.tracked_users() <= 100, "{}", e.tracked_users());
        // The most recent user is still tracked.
        assert_eq!(e.violations("user9999", t0 + Duration::from_secs(10)), 1);
        e.evict_idle(t0 + Duration::from_secs(3 * 24 * 3600));
        assert_eq!(e.tracked_users(), 0);
    }

    #[test]
    fn a_violation_log_climbs_like_the_escalator() {
        let cfg = EscalationConfig::default();
        let e = Escalator::new(cfg.clone());
        let mut log = ViolationLog::default();
        let t0 = Instant::now();
        let ms0 = 1_700_000_000_000u64;
        let minute = 60_000u64;
        for i in 0..12u64 {
            let n = log.record(ms0 + i * minute, &cfg);
            let expected = e.record("u", t0 + Duration::from_millis(i * minute));
            assert_eq!(cfg.penalty_for(n), expected, "violation {i}");
        }
        assert_eq!(log.times.len(), cfg.max_needed(), "bounded by the ladder");
        // The window slides: a day after the last one, none count, and the next is the first.
        let later = ms0 + 11 * minute + 24 * 3600 * 1000;
        assert_eq!(log.count(later, &cfg), 0);
        assert_eq!(log.record(later, &cfg), 1);
        assert_eq!(log.times, vec![later]);
    }

    #[test]
    fn a_violation_log_keeps_times_sorted_across_skewed_clocks() {
        let cfg = EscalationConfig::default();
        let mut log = ViolationLog::default();
        assert_eq!(log.record(5_000, &cfg), 1);
        // Another node's clock is a little behind.
        assert_eq!(log.record(4_000, &cfg), 2);
        assert_eq!(log.record(6_000, &cfg), 3);
        assert_eq!(log.times, vec![4_000, 5_000, 6_000]);
        let json = serde_json::to_string(&log).unwrap();
        assert_eq!(json, r#"{"t":[4000,5000,6000]}"#);
        let back: ViolationLog = serde_json::from_str(&json).unwrap();
        assert_eq!(back, log);
    }

    #[test]
    fn validates_ladder() {
        let mut c = EscalationConfig::default();
        assert!(c.validate().is_ok());
        c.ladder.swap(0, 1);
        assert!(c.validate().is_err());
        let c = EscalationConfig {
            ladder: vec![LadderStep {
                at: 1,
                penalty: StepPenalty::Mute,
                minutes: 0,
            }],
            ..EscalationConfig::default()
        };
        assert!(c.validate().is_err());
    }
}
