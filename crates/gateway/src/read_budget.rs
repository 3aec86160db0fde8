//! How fast one session's socket is read: every inbound WebSocket frame on the wire, whatever
//! its type (text, binary, continuation, ping, pong, close) and whether or not its message
//! decodes, costs from one budget (`limits.frames_per_sec`, burst `limits.frames_burst`), one
//! unit per frame plus one per full [`UNIT_BYTES`] in it. [`crate::frame_meter`] charges it,
//! under the WebSocket layer, so a message cut into many fragments pays for each.
//!
//! The per-request limits (`send_per_sec`, `requests_per_sec`, `ephemeral_per_sec`) answer
//! frames the session already made the server read, decode and reply to; a client that sends
//! WebSocket pings, or frames that do not decode, passes none of them and could keep a core
//! busy from one session (measured: ~200,000 pings/s or ~440,000 undecodable frames/s from
//! one socket took 93–95 % of a core; docs/SECURITY.md, "Frames that no request limit
//! sees"). Past the budget the socket is simply not read until the budget has
//! refilled: TCP flow control then slows the client down, nothing is refused or dropped, and
//! a well-behaved client, which stays far below it, never notices.
//!
//! The budget is a GCRA (the rule `governor` implements for the other limits) kept in the
//! session's socket wrapper (`frame_meter::Metered`): no lock, no shared clock, 8 bytes per session.

use crate::config::LimitsConfig;
use std::sync::OnceLock;
use tokio::time::{Duration, Instant};

/// Bytes of a frame that cost one more unit (a 64 KiB frame costs 9).
pub const UNIT_BYTES: usize = 8 * 1024;

/// One session's read budget: the GCRA's theoretical arrival time of the next unit, in
/// nanoseconds since a process-wide epoch, and nothing else (the rate is the node's
/// [`ReadRate`]): every session carries it, so it is kept to 8 bytes.
#[derive(Debug, Default)]
pub struct ReadBudget {
    tat_ns: u64,
}

/// The read rate of a node's configuration, worked out once at start.
#[derive(Debug, Clone, Copy)]
pub struct ReadRate {
    /// Nanoseconds one unit is worth.
    interval_ns: u64,
    /// How far ahead of now the theoretical arrival time may run before reads pause (the
    /// burst), nanoseconds.
    slack_ns: u64,
}

impl ReadRate {
    /// The rate of `limits`, never below what the per-request limits together let a session
    /// send, so raising those, as a benchmark does, never leaves reads capped here.
    pub fn of(limits: &LimitsConfig) -> Self {
        let per_sec = limits
            .frames_per_sec
            .max(
                limits
                    .send_per_sec
                    .saturating_add(limits.requests_per_sec)
                    .saturating_add(limits.ephemeral_per_sec),
            )
            .max(1);
        let burst = limits.frames_burst.max(
            limits
                .send_burst
                .saturating_add(limits.requests_burst)
                .saturating_add(limits.ephemeral_burst),
        );
        let interval_ns = 1_000_000_000 / u64::from(per_sec);
        Self {
            interval_ns,
            slack_ns: interval_ns.saturating_mul(u64::from(burst)),
        }
    }
}

/// The instant budgets count from (the first use in this process).
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn to_ns(t: Instant) -> u64 {
    u64::try_from(t.saturating_duration_since(epoch()).as_nanos()).unwrap_or(u64::MAX)
}

impl ReadBudget {
    /// Charges a frame of `len` bytes read at `now`; `true` when reading must now pause
    /// (see [`Self::resume_at`]).
    pub fn charge(&mut self, rate: ReadRate, len: usize, now: Instant) -> bool {
        let units = u64::try_from(1 + len / UNIT_BYTES).unwrap_or(u64::MAX);
        self.tat_ns = self
            .tat_ns
            .max(to_ns(now))
            .saturating_add(rate.interval_ns.saturating_mul(units));
        self.resume_at(rate, now).is_some()
    }

    /// When the next frame may be read, if that is later than `since` (the last charge's
    /// `now`): `None` while the budget has room, without reading the clock.
    pub fn resume_at(&self, rate: ReadRate, since: Instant) -> Option<Instant> {
        let resume = self.tat_ns.checked_sub(rate.slack_ns)?;
        (resume > to_ns(since)).then(|| epoch() + Duration::from_nanos(resume))
    }
}

/// Limits with the given frame budget and every request limit at 1/s, so the frame budget
/// is what counts (for tests here and in `frame_meter`).
#[cfg(test)]
pub(crate) fn test_limits(per_sec: u32, burst: u32) -> LimitsConfig {
    LimitsConfig {
        frames_per_sec: per_sec,
        frames_burst: burst,
        send_per_sec: 1,
        send_burst: 1,
        requests_per_sec: 1,
        requests_burst: 1,
        ephemeral_per_sec: 1,
        ephemeral_burst: 1,
        ..LimitsConfig::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Charges a frame at `now` and says when the next may be read.
    fn read(b: &mut ReadBudget, l: &LimitsConfig, len: usize, now: Instant) -> Option<Instant> {
        let rate = ReadRate::of(l);
        let paused = b.charge(rate, len, now);
        let resume = b.resume_at(rate, now);
        assert_eq!(paused, resume.is_some());
        resume
    }

    #[test]
    fn a_burst_is_read_at_once_then_reads_follow_the_rate() {
        let start = Instant::now() + Duration::from_secs(1);
        let (l, mut b) = (test_limits(100, 10), ReadBudget::default());
        // The burst (10 units) passes without a pause...
        for _ in 0..10 {
            assert_eq!(read(&mut b, &l, 10, start), None);
        }
        // ...and from then on each frame pauses reads for one interval (10 ms at 100/s).
        let resume = read(&mut b, &l, 10, start).expect("the budget is spent");
        assert_eq!(resume - start, Duration::from_millis(10));
        let resume2 = read(&mut b, &l, 10, resume).expect("still spent");
        assert_eq!(resume2 - resume, Duration::from_millis(10));
        // After a quiet second the whole burst is back.
        let later = resume2 + Duration::from_secs(1);
        for _ in 0..10 {
            assert_eq!(read(&mut b, &l, 10, later), None);
        }
    }

    #[test]
    fn large_frames_cost_more() {
        let start = Instant::now() + Duration::from_secs(1);
        let (l, mut b) = (test_limits(100, 10), ReadBudget::default());
        // 64 KiB: 9 units; a second one overdraws the 10-unit burst by 8 units.
        assert_eq!(read(&mut b, &l, 64 * 1024, start), None);
        let resume = read(&mut b, &l, 64 * 1024, start).expect("overdrawn");
        assert_eq!(resume - start, Duration::from_millis(80));
    }

    #[test]
    fn never_below_what_the_request_limits_allow() {
        let l = LimitsConfig {
            frames_per_sec: 10,
            frames_burst: 10,
            send_per_sec: 1_000_000,
            send_burst: 1_000_000,
            ..LimitsConfig::default()
        };
        let start = Instant::now();
        let mut b = ReadBudget::default();
        for _ in 0..100_000 {
            assert_eq!(read(&mut b, &l, 100, start), None);
        }
    }
}
