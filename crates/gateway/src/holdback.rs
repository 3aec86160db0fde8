//! Receive-side sequencing for cluster mode: every node delivers each conversation's messages
//! to its sessions in seq order, and finds the ones it was never sent.
//!
//! In cluster mode seqs come from a Redis counter and each node publishes the messages it
//! stored, so two messages of one conversation stored on two nodes can reach a third node in
//! either order, and a node that dies between its ack and its publish leaves a seq that no
//! node is ever sent. The [`Holdback`] sits between the router and the hub (it is the
//! router's [`Sink`]) and keeps, per conversation, the next seq to deliver:
//!
//! - a message whose seq is the next one is delivered at once, with any held successors;
//! - a later one is held (a gap): when the missing seq does not arrive within
//!   `router.holdback_ms` of being noticed, it is read from the store and delivered to the
//!   conversation's members on this node; a seq still missing from the store
//!   `router.skip_after_ms` after it was noticed gets a `skipped` placeholder
//!   ([`store::Store::mark_skipped`]), delivered like a message, so nobody waits for it;
//! - the tail (the last messages before a publisher died, with nothing after them to reveal
//!   the gap) is found by comparing, every `router.tail_check_ms`, the Redis counters of the
//!   conversations delivered here in the last `router.watch_secs` with what was delivered.
//!
//! - a conversation this node has no state for (it delivered none of its messages in the last
//!   `router.watch_secs`) has no tail to check, so when another node dies (its alive key
//!   expired, [`Sink::node_died`]) the node reads the dead node's allocation record (the
//!   conversations it took seqs in, written in the same round trip as each seq, see
//!   [`RedisSeq::recording`]) and takes up those with members online here: their messages of
//!   the last `router.watch_secs` are read from the store and delivered in seq order (through
//!   the same state, so later live messages stay in order); conversations it has state for
//!   just have their counter checked at once.
//!
//! A conversation seen for the first time (or again after its state was evicted) has no known
//! next seq: its first message waits up to `router.holdback_ms / 5` for earlier ones still in
//! flight, then delivery starts from the lowest seq held. A message below that starting point
//! arriving later is delivered as it comes (at-least-once wins over order for it).
//!
//! Memory is bounded: at most `router.holdback_convs` conversations are tracked (the idlest are
//! evicted first, and beyond twice that, new conversations pass through unsequenced), a
//! conversation holds at most [`MAX_HELD_PER_CONV`] messages and the node [`MAX_HELD_TOTAL`]:
//! past either bound the conversation's held messages are delivered in order with the gap
//! left open (clients fill it with `sync`, as after a slow-consumer close).

use crate::hub::Hub;
use crate::membership::Membership;
use dashmap::{DashMap, DashSet};
use protocol::{ConvId, ConvKind, GroupId, Message, ServerFrame, UserId};
use router::redis::RedisSeq;
use router::{Audience, Envelope, Payload, Sink};
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use store::Store;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// Messages one conversation may hold waiting for a missing seq.
pub const MAX_HELD_PER_CONV: usize = 1024;
/// Messages the node may hold across all conversations.
pub const MAX_HELD_TOTAL: usize = 65_536;
/// Gap repairs (store reads) running at once.
const REPAIR_CONCURRENCY: usize = 8;
/// Most messages read from the store by one repair step.
const REPAIR_PAGE: usize = 256;
/// Recently delivered seqs remembered per conversation (to let the second envelope of a
/// mention split through, see [`ConvState::recent`]).
const RECENT: usize = 8;
/// Marks (seq known at time t) kept per conversation; older ones are merged.
const MAX_MARKS: usize = 32;

/// How the hold-back behaves (from `[router]`).
#[derive(Debug, Clone)]
pub struct HoldbackOptions {
    /// How long a missing seq is waited for before it is read from the store.
    pub hold: Duration,
    /// How long after it was noticed a seq absent from the store becomes a skip.
    pub skip_after: Duration,
    /// How often the Redis counters of watched conversations are compared with deliveries.
    pub tail_check: Duration,
    /// How long a conversation stays watched (and its state kept) after its last delivery.
    pub watch: Duration,
    /// Most conversations tracked.
    pub max_convs: usize,
}

/// Counts of what the hold-back did, for logs and tests.
#[derive(Debug, Default)]
pub struct HoldbackStats {
    /// Message envelopes that went through the sequencer.
    pub sequenced: AtomicU64,
    /// Of those, the ones that arrived before an earlier seq and waited for it.
    pub held: AtomicU64,
    /// Messages delivered from the store because their publication never came in time.
    pub fetched: AtomicU64,
    /// Seqs recorded as skipped.
    pub skipped: AtomicU64,
    /// Messages that arrived below a conversation's starting point, delivered late.
    pub late: AtomicU64,
    /// Times a conversation gave up holding (a bound was reached).
    pub gave_up: AtomicU64,
    /// Conversations without state taken up because the node that took their seqs died.
    pub adopted: AtomicU64,
}

/// Flags of a recently delivered seq.
const PLAIN: u8 = 1;
const FLAGGED: u8 = 2;
const FROM_STORE: u8 = 4;

struct ConvState {
    /// The next seq to deliver; 0 while the starting point is unknown.
    next: u64,
    /// The first seq delivered in order; earlier ones arriving late are delivered as they come.
    base: u64,
    /// Messages waiting for an earlier seq, by seq (a mention split makes two envelopes).
    held: BTreeMap<u64, Vec<Arc<Envelope>>>,
    /// `(highest seq known to exist, when it became known)`, increasing in both.
    marks: VecDeque<(u64, Instant)>,
    /// When the state was created (for the unknown starting point).
    created: Instant,
    last_active: Instant,
    repairing: bool,
    /// Being taken up after a node died: the starting point is read from the store, so live
    /// messages wait (held) instead of starting delivery on their own.
    adopting: bool,
    /// Recently delivered seqs and which envelopes of theirs went out.
    recent: VecDeque<(u64, u8)>,
}

impl ConvState {
    fn new(now: Instant) -> Self {
        Self {
            next: 0,
            base: 0,
            held: BTreeMap::new(),
            marks: VecDeque::new(),
            created: now,
            last_active: now,
            repairing: false,
            adopting: false,
            recent: VecDeque::new(),
        }
    }

    fn top(&self) -> u64 {
        self.marks.back().map_or(0, |m| m.0)
    }

    /// Records that `seq` exists (it arrived, or a counter says it was taken).
    fn note(&mut self, seq: u64, now: Instant) {
        if seq <= self.top() {
            return;
        }
        match self.marks.back_mut() {
            Some(last) if now.duration_since(last.1) < Duration::from_millis(20) => last.0 = seq,
            _ => self.marks.push_back((seq, now)),
        }
        if self.marks.len() > MAX_MARKS {
            // Merge the two oldest, keeping the later time: a seq then waits a little longer.
            if let Some(first) = self.marks.pop_front() {
                if let Some(second) = self.marks.front_mut() {
                    second.0 = second.0.max(first.0);
                }
            }
        }
    }

    /// When `seq` became known to exist (`None`: it is not known to exist).
    fn noticed(&self, seq: u64) -> Option<Instant> {
        self.marks.iter().find(|m| m.0 >= seq).map(|m| m.1)
    }

    /// Whether something after `next` is known to exist (a gap to fill).
    fn has_gap(&self) -> bool {
        self.next == 0 || !self.held.is_empty() || self.top() >= self.next
    }

    fn remember(&mut self, seq: u64, flags: u8) {
        if let Some(r) = self.recent.iter_mut().rev().find(|r| r.0 == seq) {
            r.1 |= flags;
            return;
        }
        self.recent.push_back((seq, flags));
        if self.recent.len() > RECENT {
            self.recent.pop_front();
        }
    }

    fn prune_marks(&mut self) {
        while self.marks.len() > 1 && self.marks.front().is_some_and(|m| m.0 < self.next) {
            self.marks.pop_front();
        }
    }
}

fn envelope_flag(env: &Envelope) -> u8 {
    match &env.payload {
        Payload::Frame(ServerFrame::Message(m)) if m.mentioned => FLAGGED,
        _ => PLAIN,
    }
}

/// The receive-side sequencer (cluster mode): the router's sink in front of the hub.
pub struct Holdback {
    hub: Arc<Hub>,
    store: Arc<dyn Store>,
    membership: Arc<Membership>,
    counters: RedisSeq,
    opts: HoldbackOptions,
    convs: DashMap<ConvId, ConvState>,
    /// Conversations with a gap (or an unknown start), which the timer looks at.
    gapped: DashSet<ConvId>,
    held_total: AtomicUsize,
    repairs: Arc<Semaphore>,
    /// Nodes reported dead, waiting for the timer to check their allocation records.
    dead: std::sync::Mutex<Vec<String>>,
    /// What it did.
    pub stats: HoldbackStats,
}

impl Holdback {
    /// A hold-back in front of `hub`, with its timer task (stopped by `stop`).
    pub fn start(
        hub: Arc<Hub>,
        store: Arc<dyn Store>,
        membership: Arc<Membership>,
        counters: RedisSeq,
        opts: HoldbackOptions,
        stop: CancellationToken,
    ) -> Arc<Self> {
        let this = Arc::new(Self {
            hub,
            store,
            membership,
            counters,
            opts,
            convs: DashMap::new(),
            gapped: DashSet::new(),
            held_total: AtomicUsize::new(0),
            repairs: Arc::new(Semaphore::new(REPAIR_CONCURRENCY)),
            dead: std::sync::Mutex::new(Vec::new()),
            stats: HoldbackStats::default(),
        });
        tokio::spawn(timer(Arc::downgrade(&this), stop));
        this
    }

    /// Conversations tracked now.
    pub fn tracked(&self) -> usize {
        self.convs.len()
    }

    fn first_hold(&self) -> Duration {
        self.opts.hold / 5
    }

    /// Delivers what is next in order, and gives up holding past the bounds.
    fn release(&self, conv: &ConvId, st: &mut ConvState) {
        if st.next != 0 {
            while let Some(envs) = st.held.remove(&st.next) {
                self.held_total.fetch_sub(envs.len(), Ordering::Relaxed);
                for env in envs {
                    let flag = envelope_flag(&env);
                    self.hub.deliver(env);
                    st.remember(st.next, flag);
                }
                st.next += 1;
            }
            st.prune_marks();
        }
        let over = st.held.len() > MAX_HELD_PER_CONV
            || self.held_total.load(Ordering::Relaxed) > MAX_HELD_TOTAL;
        if over {
            self.stats.gave_up.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(conv = %conv, held = st.held.len(),
                "hold-back bound reached: delivering with the gap open (clients sync)");
            let held = std::mem::take(&mut st.held);
            for (seq, envs) in held {
                self.held_total.fetch_sub(envs.len(), Ordering::Relaxed);
                for env in envs {
                    let flag = envelope_flag(&env);
                    self.hub.deliver(env);
                    st.remember(seq, flag);
                }
                st.next = seq + 1;
                if st.base == 0 {
                    st.base = seq;
                }
            }
            st.next = st.next.max(st.top() + 1);
            st.prune_marks();
        }
        if st.has_gap() {
            self.gapped.insert(conv.clone());
        }
    }

    /// One envelope carrying a message.
    fn sequence(&self, env: Arc<Envelope>, conv: ConvId, seq: u64) {
        let now = Instant::now();
        if !self.convs.contains_key(&conv) && self.convs.len() >= self.opts.max_convs * 2 {
            // Far past the bound (eviction runs on the timer): do not grow, deliver as is.
            self.hub.deliver(env);
            return;
        }
        let mut st = self
            .convs
            .entry(conv.clone())
            .or_insert_with(|| ConvState::new(now));
        st.last_active = now;
        if st.next == 0 && seq == 1 {
            st.next = 1;
            st.base = 1;
        }
        if st.next != 0 && seq < st.next {
            let flag = envelope_flag(&env);
            let recent = st.recent.iter().rev().find(|r| r.0 == seq).map(|r| r.1);
            match recent {
                // The other half of a mention split whose first half went out: let it through.
                Some(f) if f & FROM_STORE == 0 && f & flag == 0 => {
                    self.hub.deliver(env);
                    st.remember(seq, flag);
                }
                Some(_) => {}
                None if seq < st.base => {
                    self.stats.late.fetch_add(1, Ordering::Relaxed);
                    self.hub.deliver(env);
                }
                // Delivered long ago (from the store, or skipped): a duplicate.
                None => {}
            }
            return;
        }
        st.note(seq, now);
        self.stats.sequenced.fetch_add(1, Ordering::Relaxed);
        if seq != st.next {
            self.stats.held.fetch_add(1, Ordering::Relaxed);
        }
        st.held.entry(seq).or_default().push(env);
        self.held_total.fetch_add(1, Ordering::Relaxed);
        self.release(&conv, &mut st);
    }

    /// Everyone who receives `conv`'s messages (the hub keeps those with a session here).
    async fn audience(&self, conv: &ConvId) -> Option<Vec<UserId>> {
        match conv.kind() {
            ConvKind::Direct(a, b) if a == b => Some(vec![UserId::new(a)]),
            ConvKind::Direct(a, b) => Some(vec![UserId::new(a), UserId::new(b)]),
            ConvKind::Group(g) => match self.membership.get(&GroupId::new(g)).await {
                Ok(Some(view)) => Some(view.members.as_ref().clone()),
                Ok(None) => Some(Vec::new()),
                Err(e) => {
                    tracing::warn!(conv = %conv, error = %e, "hold-back: members unavailable");
                    None
                }
            },
        }
    }

    /// Delivers a message read from the store to `audience`, with the mention flag per
    /// recipient (as the send path does).
    fn deliver_stored(&self, audience: &[UserId], m: &Message) {
        let everyone = m
            .mentions
            .iter()
            .any(|u| u.as_str() == crate::messages::MENTION_ALL);
        let (flagged, plain): (Vec<UserId>, Vec<UserId>) = audience
            .iter()
            .cloned()
            .partition(|u| everyone || m.mentions.contains(u));
        if !plain.is_empty() {
            self.hub.deliver(Arc::new(Envelope::frame(
                plain,
                ServerFrame::Message(m.clone()),
            )));
        }
        if !flagged.is_empty() {
            let mut f = m.clone();
            f.mentioned = true;
            self.hub
                .deliver(Arc::new(Envelope::frame(flagged, ServerFrame::Message(f))));
        }
    }

    /// Fills `conv`'s gap from the store (and with skips past their deadline).
    async fn repair(self: Arc<Self>, conv: ConvId) {
        for _ in 0..64 {
            let now = Instant::now();
            // What is missing, and is it due?
            let job = {
                let Some(mut st) = self.convs.get_mut(&conv) else {
                    return;
                };
                if st.next == 0 {
                    None
                } else {
                    let from = st.next;
                    let to = st
                        .held
                        .keys()
                        .next()
                        .map_or(st.top(), |first| first.saturating_sub(1))
                        .max(from.saturating_sub(1));
                    let due = st
                        .noticed(from)
                        .is_some_and(|t| now.duration_since(t) >= self.opts.hold);
                    let skip_due = st
                        .noticed(from)
                        .is_some_and(|t| now.duration_since(t) >= self.opts.skip_after);
                    if to < from || !due {
                        None
                    } else {
                        st.repairing = true;
                        Some((from, to, skip_due))
                    }
                }
            };
            let Some((from, to, skip_due)) = job else {
                break;
            };
            let Some(audience) = self.audience(&conv).await else {
                break;
            };
            let here: Vec<UserId> = audience
                .into_iter()
                .filter(|u| !self.hub.sessions_of(u).is_empty())
                .collect();
            if here.is_empty() {
                // Nobody here reads this conversation any more: stop waiting for it.
                if let Some(mut st) = self.convs.get_mut(&conv) {
                    st.next = st.next.max(to + 1);
                    self.release(&conv, &mut st);
                }
                continue;
            }
            let want = usize::try_from(to - from + 1).unwrap_or(REPAIR_PAGE);
            let page = match self
                .store
                .after(&conv, protocol::Seq(from - 1), want.min(REPAIR_PAGE))
                .await
            {
                Ok(p) => p.messages,
                Err(e) => {
                    tracing::warn!(conv = %conv, error = %e, "hold-back: store read failed");
                    break;
                }
            };
            let mut fetched: BTreeMap<u64, Message> =
                page.into_iter().map(|m| (m.seq.0, m)).collect();
            let mut stuck_at = None;
            if let Some(mut st) = self.convs.get_mut(&conv) {
                let before = st.next;
                while st.next != 0 && st.next <= to {
                    if st.held.contains_key(&st.next) {
                        self.release(&conv, &mut st);
                        continue;
                    }
                    let Some(m) = fetched.remove(&st.next) else {
                        break;
                    };
                    self.deliver_stored(&here, &m);
                    self.stats.fetched.fetch_add(1, Ordering::Relaxed);
                    let s = st.next;
                    st.remember(s, FROM_STORE | PLAIN | FLAGGED);
                    st.next += 1;
                    self.release(&conv, &mut st);
                }
                if st.next == before {
                    stuck_at = Some(st.next);
                }
            }
            let Some(missing) = stuck_at else { continue };
            if !skip_due {
                break;
            }
            // Not stored `skip_after` after it was known to exist: the node that took the seq
            // died before storing it. Record the skip (a late real write still wins).
            let stored = match self.store.mark_skipped(&conv, protocol::Seq(missing)).await {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(conv = %conv, seq = missing, error = %e,
                        "hold-back: could not record a skip");
                    break;
                }
            };
            if let Some(mut st) = self.convs.get_mut(&conv) {
                if st.next == missing {
                    if let Some(m) = stored {
                        if m.kind == protocol::MessageKind::Skipped {
                            self.stats.skipped.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(conv = %conv, seq = missing,
                                "seq taken but never stored: recorded as skipped");
                        } else {
                            self.stats.fetched.fetch_add(1, Ordering::Relaxed);
                        }
                        self.deliver_stored(&here, &m);
                    }
                    st.remember(missing, FROM_STORE | PLAIN | FLAGGED);
                    st.next += 1;
                    self.release(&conv, &mut st);
                }
            }
        }
        if let Some(mut st) = self.convs.get_mut(&conv) {
            st.repairing = false;
        }
    }

    /// One timer round: start delivering conversations whose starting point waited long
    /// enough, and start repairs that are due.
    fn tick(self: &Arc<Self>) {
        let now = Instant::now();
        let convs: Vec<ConvId> = self.gapped.iter().map(|c| c.key().clone()).collect();
        for conv in convs {
            let Some(mut st) = self.convs.get_mut(&conv) else {
                self.gapped.remove(&conv);
                continue;
            };
            if st.next == 0 {
                if !st.adopting && now.duration_since(st.created) >= self.first_hold() {
                    if let Some(first) = st.held.keys().next().copied() {
                        st.next = first;
                        st.base = first;
                    }
                    self.release(&conv, &mut st);
                }
                continue;
            }
            if !st.has_gap() {
                drop(st);
                self.gapped.remove(&conv);
                continue;
            }
            let due = st
                .noticed(st.next)
                .is_some_and(|t| now.duration_since(t) >= self.opts.hold);
            if due && !st.repairing {
                if let Ok(permit) = self.repairs.clone().try_acquire_owned() {
                    st.repairing = true;
                    drop(st);
                    let this = self.clone();
                    tokio::spawn(async move {
                        this.repair(conv).await;
                        drop(permit);
                    });
                }
            }
        }
    }

    /// Compares the Redis counters of watched conversations with what was delivered (the
    /// tail), and evicts idle state.
    async fn check_tails(&self) {
        let now = Instant::now();
        // Evict idle conversations, then the idlest beyond the bound.
        self.convs.retain(|_, st| {
            !st.held.is_empty()
                || st.repairing
                || st.adopting
                || now.duration_since(st.last_active) <= self.opts.watch
        });
        if self.convs.len() > self.opts.max_convs {
            let mut idle: Vec<(Instant, ConvId)> = self
                .convs
                .iter()
                .filter(|e| e.held.is_empty() && !e.repairing && !e.adopting)
                .map(|e| (e.last_active, e.key().clone()))
                .collect();
            idle.sort_by_key(|e| e.0);
            let excess = self.convs.len() - self.opts.max_convs;
            for (_, conv) in idle.into_iter().take(excess) {
                self.convs.remove(&conv);
                self.gapped.remove(&conv);
            }
        }
        let watched: Vec<ConvId> = self
            .convs
            .iter()
            .filter(|e| e.next != 0)
            .map(|e| e.key().clone())
            .collect();
        for chunk in watched.chunks(1000) {
            let counters = match self.counters.current(chunk).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "hold-back: seq counters unavailable");
                    return;
                }
            };
            let now = Instant::now();
            for (conv, counter) in chunk.iter().zip(counters) {
                let Some(counter) = counter else { continue };
                if let Some(mut st) = self.convs.get_mut(conv) {
                    if st.next != 0 && counter >= st.next {
                        st.note(counter, now);
                        self.gapped.insert(conv.clone());
                    }
                }
            }
        }
    }
}

impl Holdback {
    /// The nodes reported dead since the last call.
    fn take_dead(&self) -> Vec<String> {
        self.dead
            .lock()
            .map(|mut d| std::mem::take(&mut *d))
            .unwrap_or_default()
    }

    /// `node` died: check every conversation it took seqs in during the last `watch` (its
    /// allocation record). Those this node has state for get their counter compared now (the
    /// gap machinery reads what is missing); the others with members online here are taken
    /// up ([`Holdback::adopt`]).
    async fn after_node_died(self: Arc<Self>, node: String) {
        let convs = match self.counters.allocations(&node, self.opts.watch * 2).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(node = %node, error = %e,
                    "hold-back: the dead node's allocation record is unavailable");
                return;
            }
        };
        let counters = match self.counters.current(&convs).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(node = %node, error = %e, "hold-back: seq counters unavailable");
                return;
            }
        };
        let now = Instant::now();
        let mut stateless = Vec::new();
        for (conv, counter) in convs.into_iter().zip(counters) {
            let Some(counter) = counter else { continue };
            if let Some(mut st) = self.convs.get_mut(&conv) {
                if st.next != 0 || st.adopting {
                    if st.next != 0 && counter >= st.next {
                        st.note(counter, now);
                        self.gapped.insert(conv.clone());
                    }
                    continue;
                }
            }
            stateless.push((conv, counter));
        }
        tracing::info!(node = %node, stateless = stateless.len(),
            "hold-back: checking the conversations a dead node took seqs in");
        use futures_util::StreamExt;
        futures_util::stream::iter(stateless)
            .for_each_concurrent(REPAIR_CONCURRENCY, |(conv, counter)| {
                let this = self.clone();
                async move { this.adopt(conv, counter).await }
            })
            .await;
    }

    /// Takes up `conv` (no state here) after the node that took its seqs up to `counter`
    /// died: when members are online here, its messages of the last `watch` (read from the
    /// store) become the starting point and the normal repair delivers them in seq order.
    /// This node delivered nothing of `conv` in that time (else it would have state), so
    /// nothing it already delivered is sent again; a session that connected since and synced
    /// may get duplicates, which clients drop by (`conv`, `seq`).
    async fn adopt(&self, conv: ConvId, counter: u64) {
        let Some(audience) = self.audience(&conv).await else {
            return;
        };
        if !audience.iter().any(|u| !self.hub.sessions_of(u).is_empty()) {
            return;
        }
        // Live messages arriving meanwhile are held until the starting point is known.
        {
            let mut st = self
                .convs
                .entry(conv.clone())
                .or_insert_with(|| ConvState::new(Instant::now()));
            if st.next != 0 || st.adopting {
                if st.next != 0 && counter >= st.next {
                    st.note(counter, Instant::now());
                    self.gapped.insert(conv.clone());
                }
                return;
            }
            st.adopting = true;
        }
        let cutoff = crate::clock::now_ms()
            .saturating_sub(u64::try_from(self.opts.watch.as_millis()).unwrap_or(u64::MAX));
        let start = match self.store.history(&conv, None, REPAIR_PAGE).await {
            Ok(page) => page
                .messages
                .iter()
                .filter(|m| m.seq.0 <= counter && m.ts >= cutoff)
                .map(|m| m.seq.0)
                .min(),
            Err(e) => {
                tracing::warn!(conv = %conv, error = %e, "hold-back: store read failed");
                None
            }
        };
        let Some(mut st) = self.convs.get_mut(&conv) else {
            return;
        };
        st.adopting = false;
        let now = Instant::now();
        st.last_active = now;
        match start {
            Some(first) if st.next == 0 => {
                let first = st.held.keys().next().map_or(first, |h| first.min(*h));
                st.next = first;
                st.base = first;
                st.note(counter, now);
                self.stats.adopted.fetch_add(1, Ordering::Relaxed);
                self.release(&conv, &mut st);
            }
            _ => {
                if st.next != 0 && counter >= st.next {
                    st.note(counter, now);
                }
                if st.next == 0 && st.held.is_empty() {
                    drop(st);
                    self.convs
                        .remove_if(&conv, |_, s| s.next == 0 && s.held.is_empty());
                    return;
                }
            }
        }
        self.gapped.insert(conv);
    }
}

/// Drives the hold-back: repairs every few milliseconds, tail checks every
/// `tail_check`. Ends with `stop` or when the hold-back is dropped.
async fn timer(this: std::sync::Weak<Holdback>, stop: CancellationToken) {
    let step = {
        let Some(h) = this.upgrade() else { return };
        (h.first_hold() / 2).clamp(Duration::from_millis(5), Duration::from_millis(50))
    };
    let mut tick = tokio::time::interval(step);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_tail = Instant::now();
    let mut logged = [0u64; 7];
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        let Some(h) = this.upgrade() else { return };
        h.tick();
        for node in h.take_dead() {
            tokio::spawn(h.clone().after_node_died(node));
        }
        if last_tail.elapsed() >= h.opts.tail_check {
            last_tail = Instant::now();
            h.check_tails().await;
            let s = &h.stats;
            let now = [
                &s.sequenced,
                &s.held,
                &s.fetched,
                &s.skipped,
                &s.late,
                &s.gave_up,
                &s.adopted,
            ]
            .map(|c| c.load(Ordering::Relaxed));
            if now != logged {
                logged = now;
                tracing::info!(
                    sequenced = now[0],
                    held = now[1],
                    fetched = now[2],
                    skipped = now[3],
                    late = now[4],
                    gave_up = now[5],
                    adopted = now[6],
                    tracked = h.tracked(),
                    "hold-back"
                );
            }
        }
    }
}

impl Sink for Holdback {
    fn deliver(&self, envelope: Arc<Envelope>) {
        let message = match (&envelope.audience, &envelope.payload) {
            (Audience::Users(_), Payload::Frame(ServerFrame::Message(m))) => {
                Some((m.conv.clone(), m.seq.0))
            }
            _ => None,
        };
        match message {
            Some((conv, seq)) => self.sequence(envelope, conv, seq),
            None => self.hub.deliver(envelope),
        }
    }

    fn session_descriptions(&self) -> Vec<(UserId, String, Vec<u8>)> {
        self.hub.session_descriptions()
    }

    fn node_died(&self, node: &str) {
        if let Ok(mut dead) = self.dead.lock() {
            if dead.len() < 1024 && !dead.iter().any(|d| d == node) {
                dead.push(node.to_owned());
            }
        }
    }
}

/// The router's sink for this configuration: in cluster mode (Redis seqs) a [`Holdback`] in
/// front of the hub; otherwise the hub itself (one process delivers in seq order already:
/// the embedded store runs deliveries from its writer, in commit order).
pub async fn sink_for(
    config: &crate::config::Config,
    hub: &Arc<Hub>,
    store: &Arc<dyn Store>,
    membership: &Arc<Membership>,
    stop: &CancellationToken,
) -> anyhow::Result<Arc<dyn Sink>> {
    use crate::config::{RouterBackend, StoreBackend};
    if config.router.backend != RouterBackend::Redis || config.store.backend != StoreBackend::Scylla
    {
        return Ok(hub.clone());
    }
    let counters = crate::backends::seq_counters(config).await?;
    let r = &config.router;
    let opts = HoldbackOptions {
        hold: Duration::from_millis(r.holdback_ms.max(1)),
        skip_after: Duration::from_millis(r.skip_after_ms.max(r.holdback_ms).max(1)),
        tail_check: Duration::from_millis(r.tail_check_ms.max(10)),
        watch: Duration::from_secs(r.watch_secs.max(1)),
        max_convs: r.holdback_convs.max(1),
    };
    Ok(Holdback::start(
        hub.clone(),
        store.clone(),
        membership.clone(),
        counters,
        opts,
        stop.clone(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seq_is_noticed_when_the_first_higher_one_became_known() {
        let t0 = Instant::now();
        let mut st = ConvState::new(t0);
        st.next = 5;
        assert!(!st.has_gap());
        st.note(7, t0);
        let t1 = t0 + Duration::from_millis(100);
        st.note(9, t1);
        st.note(8, t1); // lower than the top: nothing new
        assert!(st.has_gap());
        assert_eq!(st.noticed(5), Some(t0));
        assert_eq!(st.noticed(7), Some(t0));
        assert_eq!(st.noticed(8), Some(t1));
        assert_eq!(st.noticed(10), None);
        st.next = 8;
        st.prune_marks();
        assert_eq!(st.noticed(8), Some(t1));
        st.next = 10;
        st.prune_marks();
        assert!(!st.has_gap());
    }

    #[test]
    fn marks_and_recent_seqs_stay_bounded() {
        let t0 = Instant::now();
        let mut st = ConvState::new(t0);
        st.next = 1;
        for i in 1..1000u64 {
            st.note(i, t0 + Duration::from_millis(i * 50));
            st.remember(i, PLAIN);
        }
        assert!(st.marks.len() <= MAX_MARKS);
        assert!(st.recent.len() <= RECENT);
        // Merging keeps the later time: a seq may wait longer, never shorter.
        assert!(st
            .noticed(1)
            .is_some_and(|t| t >= t0 + Duration::from_millis(50)));
    }
}
