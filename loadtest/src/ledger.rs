//! Delivery completeness: which `(conversation, seq)` each session has seen, how it saw it
//! (live `message`, `synced` replay, or its own `ack`), and what the server acknowledged.
//!
//! Every session tracks each of its conversations in a [`ConvTrack`]: the highest seq up to
//! which it has seen everything, plus the few seen above that. After the run the
//! [`Ledger`] (mergeable across load-generator processes) is checked: in a conversation
//! whose highest acknowledged seq is N, every member session must have seen 1..=N, because
//! seqs are gap-free. Missing ones are *lost*; a seq delivered live twice is a *duplicate*;
//! a live seq below one already delivered live is *out of order*.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// How a seq reached a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// A live `message` frame.
    Live,
    /// A `synced` reply after a reconnect.
    Sync,
    /// The session's own `ack`.
    Ack,
}

/// What recording one seq found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// First time.
    Fresh,
    /// First time, but below a seq already delivered live.
    OutOfOrder,
    /// Seen before.
    Duplicate,
}

/// One session's view of one conversation.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConvTrack {
    /// Everything in 1..=contiguous was seen.
    pub contiguous: u64,
    /// Seqs seen above `contiguous`.
    pub above: BTreeSet<u64>,
    /// Highest seq delivered live on the current connection.
    #[serde(skip)]
    pub max_live: u64,
    /// Fresh live deliveries.
    pub live: u64,
    /// Fresh deliveries from `synced`.
    pub via_sync: u64,
    /// The session's own sends, seen through their acks.
    pub own: u64,
    /// Live deliveries of a seq already seen.
    pub duplicates: u64,
    /// Live deliveries below a seq already delivered live.
    pub out_of_order: u64,
}

impl ConvTrack {
    /// Whether `seq` was seen.
    pub fn has(&self, seq: u64) -> bool {
        seq <= self.contiguous || self.above.contains(&seq)
    }

    /// Records `seq` arriving by `via`.
    pub fn record(&mut self, seq: u64, via: Via) -> Seen {
        if seq == 0 {
            return Seen::Duplicate;
        }
        if self.has(seq) {
            if via == Via::Live {
                self.duplicates += 1;
            }
            return Seen::Duplicate;
        }
        if seq == self.contiguous + 1 {
            self.contiguous = seq;
            while self.above.remove(&(self.contiguous + 1)) {
                self.contiguous += 1;
            }
        } else {
            self.above.insert(seq);
        }
        let mut seen = Seen::Fresh;
        match via {
            Via::Live => {
                self.live += 1;
                if seq < self.max_live {
                    self.out_of_order += 1;
                    seen = Seen::OutOfOrder;
                }
                self.max_live = self.max_live.max(seq);
            }
            Via::Sync => self.via_sync += 1,
            Via::Ack => self.own += 1,
        }
        seen
    }

    /// A new connection: order is checked afresh.
    pub fn reconnected(&mut self) {
        self.max_live = 0;
    }

    /// Seqs seen in 1..=n.
    pub fn seen_up_to(&self, n: u64) -> u64 {
        self.contiguous.min(n)
            + self
                .above
                .range(..=n)
                .filter(|&&s| s > self.contiguous)
                .count() as u64
    }
}

/// Everything needed to check completeness, from one or several load generators.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Ledger {
    /// Acknowledged seqs per conversation index.
    pub acks: BTreeMap<u32, BTreeSet<u64>>,
    /// Per session index: its tracks per conversation index, and whether it ever connected.
    pub sessions: BTreeMap<u32, SessionLedger>,
}

/// One session's part of the ledger.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SessionLedger {
    /// Whether it ever got `hello`.
    pub connected: bool,
    /// Its conversations.
    pub tracks: BTreeMap<u32, ConvTrack>,
}

/// The verdict.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Completeness {
    /// Messages acknowledged (distinct seqs).
    pub acked_messages: u64,
    /// Deliveries that should have happened (every member session but the sender's).
    pub expected: u64,
    /// Delivered live.
    pub delivered_live: u64,
    /// Recovered by `sync` after a reconnect (counted as delivered).
    pub recovered_by_sync: u64,
    /// Never seen.
    pub lost: u64,
    /// Delivered live more than once.
    pub duplicates: u64,
    /// Delivered live below an already delivered seq.
    pub out_of_order: u64,
    /// Acknowledged seqs missing below the highest one in a conversation (sends stored
    /// without their ack reaching the client).
    pub ack_gaps: u64,
    /// Sessions that never connected.
    pub never_connected: u64,
    /// Up to 20 examples of lost deliveries: `session conv seq`.
    pub lost_examples: Vec<String>,
}

impl Completeness {
    /// Whether nothing was lost.
    pub fn complete(&self) -> bool {
        self.lost == 0
    }
}

impl Ledger {
    /// Adds another generator's ledger.
    pub fn merge(&mut self, other: Ledger) {
        for (c, seqs) in other.acks {
            self.acks.entry(c).or_default().extend(seqs);
        }
        for (s, l) in other.sessions {
            let e = self.sessions.entry(s).or_default();
            e.connected |= l.connected;
            e.tracks.extend(l.tracks);
        }
    }

    /// Records an ack.
    pub fn ack(&mut self, conv: u32, seq: u64) {
        self.acks.entry(conv).or_default().insert(seq);
    }

    /// Checks every session against the acknowledged seqs. `convs_of(session)` lists the
    /// conversations a session must receive; `ids` names conversations for the examples.
    pub fn check<'a>(
        &self,
        sessions: impl Iterator<Item = (u32, &'a [u32])>,
        ids: impl Fn(u32) -> String,
    ) -> Completeness {
        let mut c = Completeness::default();
        let last: BTreeMap<u32, u64> = self
            .acks
            .iter()
            .map(|(conv, seqs)| (*conv, seqs.iter().next_back().copied().unwrap_or(0)))
            .collect();
        for (conv, seqs) in &self.acks {
            c.acked_messages += seqs.len() as u64;
            c.ack_gaps += last[conv] - seqs.len() as u64;
        }
        let empty = SessionLedger::default();
        for (s, convs) in sessions {
            let l = self.sessions.get(&s).unwrap_or(&empty);
            if !l.connected {
                c.never_connected += 1;
            }
            for &conv in convs {
                let n = last.get(&conv).copied().unwrap_or(0);
                let default = ConvTrack::default();
                let t = l.tracks.get(&conv).unwrap_or(&default);
                let seen = t.seen_up_to(n);
                c.delivered_live += t.live;
                c.recovered_by_sync += t.via_sync;
                c.duplicates += t.duplicates;
                c.out_of_order += t.out_of_order;
                let missing = n - seen;
                c.lost += missing;
                if missing > 0 && c.lost_examples.len() < 20 {
                    let first = (1..=n).find(|&q| !t.has(q)).unwrap_or(0);
                    c.lost_examples.push(format!(
                        "session {s} {} seq {first} ({missing} missing)",
                        ids(conv)
                    ));
                }
                // The session's own sends reach it as acks, not as deliveries.
                c.expected += n - t.own.min(n);
            }
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A recorded run: two sessions in conversation 0, session 0 sends 1..=5, session 1
    /// receives them live.
    fn recorded(deliveries: &[u64]) -> Ledger {
        let mut l = Ledger::default();
        let mut sender = SessionLedger {
            connected: true,
            ..Default::default()
        };
        let mut receiver = sender.clone();
        for seq in 1..=5 {
            l.ack(0, seq);
            sender.tracks.entry(0).or_default().record(seq, Via::Ack);
        }
        for &seq in deliveries {
            receiver.tracks.entry(0).or_default().record(seq, Via::Live);
        }
        l.sessions.insert(0, sender);
        l.sessions.insert(1, receiver);
        l
    }

    fn check(l: &Ledger) -> Completeness {
        let convs = [0u32];
        l.check([(0u32, &convs[..]), (1, &convs[..])].into_iter(), |c| {
            format!("c{c}")
        })
    }

    #[test]
    fn a_complete_run_passes() {
        let c = check(&recorded(&[1, 2, 3, 4, 5]));
        assert!(c.complete(), "{c:?}");
        assert_eq!(c.expected, 5);
        assert_eq!(c.delivered_live, 5);
        assert_eq!((c.duplicates, c.out_of_order, c.ack_gaps), (0, 0, 0));
    }

    #[test]
    fn a_dropped_delivery_is_lost() {
        let c = check(&recorded(&[1, 2, 4, 5]));
        assert!(!c.complete());
        assert_eq!(c.lost, 1);
        assert_eq!(c.expected, 5);
        assert!(
            c.lost_examples[0].contains("seq 3"),
            "{:?}",
            c.lost_examples
        );
        // The last one missing too (nothing above it shows the gap).
        let c = check(&recorded(&[1, 2, 3, 4]));
        assert_eq!(c.lost, 1);
    }

    #[test]
    fn duplicates_and_reordering_are_counted() {
        let c = check(&recorded(&[1, 2, 2, 3, 4, 5]));
        assert!(c.complete());
        assert_eq!(c.duplicates, 1);
        let c = check(&recorded(&[1, 3, 2, 4, 5]));
        assert!(c.complete());
        assert_eq!(c.out_of_order, 1);
    }

    #[test]
    fn sync_recovery_counts_as_delivered_but_separately() {
        let mut l = recorded(&[1, 2]);
        let r = l.sessions.get_mut(&1).unwrap().tracks.get_mut(&0).unwrap();
        r.reconnected();
        assert_eq!(r.record(5, Via::Live), Seen::Fresh);
        assert_eq!(r.record(3, Via::Sync), Seen::Fresh);
        assert_eq!(r.record(4, Via::Sync), Seen::Fresh);
        assert_eq!(r.record(5, Via::Sync), Seen::Duplicate);
        let c = check(&l);
        assert!(c.complete(), "{c:?}");
        assert_eq!(c.recovered_by_sync, 2);
        assert_eq!(c.delivered_live, 3);
        assert_eq!(c.duplicates, 0);
    }

    #[test]
    fn ledgers_merge_across_generators_and_count_unconnected_sessions() {
        let full = recorded(&[1, 2, 3, 4, 5]);
        let mut a = Ledger::default();
        let mut b = Ledger::default();
        a.acks = full.acks.clone();
        a.sessions.insert(0, full.sessions[&0].clone());
        b.sessions.insert(1, full.sessions[&1].clone());
        a.merge(b);
        assert_eq!(a, full);
        let convs = [0u32];
        let c = a.check(
            [(0u32, &convs[..]), (1, &convs[..]), (2, &convs[..])].into_iter(),
            |c| c.to_string(),
        );
        assert_eq!(c.never_connected, 1);
        assert_eq!(c.lost, 5);
    }

    #[test]
    fn ack_gaps_are_reported() {
        let mut l = recorded(&[1, 2, 3, 4, 5]);
        l.acks.get_mut(&0).unwrap().remove(&3);
        assert_eq!(check(&l).ack_gaps, 1);
    }
}
