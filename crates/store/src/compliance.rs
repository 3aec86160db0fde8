//! The compliance event log (会话存档): every stored message, recall, membership change and
//! audit entry, in commit order, for `GET /v1/admin/compliance/events` and the batch export.
//!
//! The backends write an event **in the same atomic step as the change it describes** (the
//! message's write batch, the recall's, the member's, the audit entry's), so a change is never
//! stored without its event nor the other way round. Events are ordered by [`EventId`]
//! `(ts, source, n)`: `ts` is the writing process's commit clock (ms, never going back),
//! `source` names the process (empty in embedded mode), `n` counts that process's events.
//!
//! Paging must be exact even though events commit out of order (two writer threads, several
//! nodes, a slow database write): an event allocated at `ts = 10` may become durable after one
//! at `ts = 11`. A reader therefore never reads past the **horizon**: the lowest `ts` any
//! process may still commit an event at. Each process keeps its events in flight in a
//! [`Sequencer`] and its floor is the oldest of them (or its clock when none is); the embedded
//! store reads its own floor, the CQL store the floors every node publishes (see
//! docs/ARCHITECTURE.md, *Compliance event log*). Below the horizon the log never changes, so
//! a cursor `(ts, source, n)` pages it with no duplicates and nothing missed.

use crate::AuditEntry;
use protocol::{ConvId, GroupId, MessageId, Seq, UserId};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The position of an event in the log; events sort by `(ts, source, n)`. The default value
/// is before every event.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct EventId {
    /// Commit time of the writing process, ms since the epoch.
    pub ts: u64,
    /// The writing process (empty in embedded mode).
    pub source: String,
    /// The process's event counter.
    pub n: u64,
}

impl EventId {
    /// A position after every event with a time up to `ts` (sources are hex ids, which sort
    /// below `~`).
    pub fn end_of(ts: u64) -> Self {
        Self {
            ts,
            source: "~".into(),
            n: u64::MAX >> 1,
        }
    }
}

/// How a membership changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MemberChange {
    /// Joined, or their role changed (the event carries the role).
    Put,
    /// Left or was removed.
    Removed,
}

/// What an event records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EventBody {
    /// A message was stored (its content is read from the store when the event is read).
    Message {
        /// Its conversation.
        conv: ConvId,
        /// Its seq.
        seq: Seq,
        /// Its server id.
        id: MessageId,
        /// The sender.
        from: UserId,
        /// The sender's idempotency key (what moderation audit entries name).
        client_msg_id: String,
        /// The moderation outcome it was stored with (`allow`, `warn`, `mask`, `review`
        /// for an approved held message, `approval` for an approved post).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        moderation: Option<String>,
    },
    /// A message was recalled (its content erased).
    Recall {
        /// Its conversation.
        conv: ConvId,
        /// Its seq.
        seq: Seq,
        /// Its server id.
        id: MessageId,
        /// Its sender.
        from: UserId,
    },
    /// A group's membership changed.
    Member {
        /// The group.
        group: GroupId,
        /// The member.
        user: UserId,
        /// Joined or changed role, or removed.
        change: MemberChange,
        /// The role after a `put`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        role: Option<crate::Role>,
    },
    /// An audit entry: a moderation verdict or decision, a penalty, an admin action.
    Audit {
        /// The entry.
        entry: AuditEntry,
    },
}

impl EventBody {
    /// The event kind's name (`message`, `recall`, `member`, `audit`).
    pub fn kind(&self) -> &'static str {
        match self {
            EventBody::Message { .. } => "message",
            EventBody::Recall { .. } => "recall",
            EventBody::Member { .. } => "member",
            EventBody::Audit { .. } => "audit",
        }
    }
}

/// One event of the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    /// Its position.
    pub id: EventId,
    /// What happened.
    pub body: EventBody,
}

/// A page of the log.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EventPage {
    /// The events after the cursor, oldest first.
    pub events: Vec<StoredEvent>,
    /// The cursor for the next page (the last event's id, or further on when the reader
    /// skipped empty time; the same cursor when nothing new is final yet).
    pub next: EventId,
    /// Whether more final events follow (the page stopped at its limit).
    pub has_more: bool,
    /// The horizon the page was read up to (ms): every event before it is final.
    pub horizon: u64,
}

/// Most events one page may ask for.
pub const MAX_PAGE: usize = 10_000;

/// How long an event whose write failed is still treated as in flight (the database may
/// apply a timed-out write later).
pub const FAILED_HOLD: Duration = Duration::from_secs(60);

/// Allocates a process's event ids and tracks those not yet committed, so that readers stop
/// below the oldest one (the floor).
#[derive(Debug)]
pub struct Sequencer {
    source: String,
    state: Mutex<SeqState>,
}

#[derive(Debug, Default)]
struct SeqState {
    /// The clock never goes back: every id handed out or floor answered is at least this.
    last_ts: u64,
    next_n: u64,
    /// n -> (ts, until when a failed write is still waited for).
    in_flight: BTreeMap<u64, (u64, Option<Instant>)>,
}

fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Sequencer {
    /// A sequencer for `source` whose ids continue after `(last_ts, last_n)`.
    pub fn new(source: impl Into<String>, last_ts: u64, last_n: u64) -> Self {
        Self {
            source: source.into(),
            state: Mutex::new(SeqState {
                last_ts,
                next_n: last_n + 1,
                in_flight: BTreeMap::new(),
            }),
        }
    }

    /// The process's name in event ids.
    pub fn source(&self) -> &str {
        &self.source
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SeqState> {
        // The state is a few integers updated in one step each: usable after a panic.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The next id, in flight until [`Self::done`] or [`Self::failed`].
    pub fn begin(&self) -> EventId {
        self.begin_range(1)
    }

    /// A run of `count` consecutive ids with one time, `(ts, n) .. (ts, n + count - 1)`;
    /// returns the first. The run is in flight, as one entry, until [`Self::done`] with the
    /// first `n` (a writer batch reserves the ids of all its message events at once).
    pub fn begin_range(&self, count: u64) -> EventId {
        let mut s = self.lock();
        let ts = s.last_ts.max(wall_ms());
        s.last_ts = ts;
        let n = s.next_n;
        s.next_n += count.max(1);
        s.in_flight.insert(n, (ts, None));
        EventId {
            ts,
            source: self.source.clone(),
            n,
        }
    }

    /// The events `ns` are committed (or will never be): no longer in flight.
    pub fn done(&self, ns: &[u64]) {
        if ns.is_empty() {
            return;
        }
        let mut s = self.lock();
        for n in ns {
            s.in_flight.remove(n);
        }
    }

    /// The write of event `n` failed but may still be applied: keep it in flight for `hold`.
    pub fn failed(&self, n: u64, hold: Duration) {
        let mut s = self.lock();
        if let Some(e) = s.in_flight.get_mut(&n) {
            e.1 = Some(Instant::now() + hold);
        }
    }

    /// Moves the clock to at least `ts` (another node's floor, so this one never writes
    /// below a horizon a reader may already have passed).
    pub fn advance_clock(&self, ts: u64) {
        let mut s = self.lock();
        s.last_ts = s.last_ts.max(ts);
    }

    /// The lowest `ts` this process may still commit an event at: the oldest event in
    /// flight, or the clock when none is (later ids get at least that).
    pub fn floor(&self) -> u64 {
        let mut s = self.lock();
        let now = Instant::now();
        s.in_flight
            .retain(|_, (_, until)| until.is_none_or(|u| u > now));
        let clock = s.last_ts.max(wall_ms());
        s.last_ts = clock;
        s.in_flight
            .values()
            .map(|(ts, _)| *ts)
            .min()
            .unwrap_or(clock)
            .min(clock)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn floor_stays_below_events_in_flight() {
        let s = Sequencer::new("", 0, 0);
        let a = s.begin();
        let b = s.begin();
        assert!(a < b);
        assert!(s.floor() <= a.ts);
        s.done(&[b.n]);
        assert!(s.floor() <= a.ts);
        s.done(&[a.n]);
        let f = s.floor();
        assert!(f >= b.ts);
        // Every later id is at or above a floor answered before it.
        assert!(s.begin().ts >= f);
    }

    #[test]
    fn a_range_is_one_entry_in_flight_and_ids_continue_after_it() {
        let s = Sequencer::new("", 0, 0);
        let a = s.begin_range(5);
        let b = s.begin();
        assert_eq!(b.n, a.n + 5);
        assert!(s.floor() <= a.ts);
        s.done(&[a.n, b.n]);
        assert!(s.floor() >= b.ts);
    }

    #[test]
    fn a_failed_write_holds_the_floor_for_a_while() {
        let s = Sequencer::new("x", 0, 0);
        let a = s.begin();
        s.failed(a.n, Duration::from_millis(30));
        assert!(s.floor() <= a.ts);
        std::thread::sleep(Duration::from_millis(40));
        assert!(s.floor() >= a.ts);
    }

    #[test]
    fn ids_sort_by_time_source_then_counter() {
        let id = |ts, s: &str, n| EventId {
            ts,
            source: s.into(),
            n,
        };
        assert!(id(1, "b", 9) < id(2, "a", 1));
        assert!(id(2, "a", 9) < id(2, "b", 1));
        assert!(id(2, "b", 1) < EventId::end_of(2));
        assert!(EventId::end_of(2) < id(3, "", 0));
        assert!(EventId::default() < id(0, "", 1));
    }
}
