//! The embedded backend: an LSM tree (fjall) under the data directory.
//!
//! Why fjall and not a B-tree: appends dominate a chat store, and a B-tree rewrites a whole
//! page for every leaf a batch touches (the idempotency index is keyed by random client ids,
//! so that is nearly one page per message). Measured here with redb, that held durable
//! appends to about 9,000 messages/s; an LSM tree appends each message to its journal
//! instead (see docs/ARCHITECTURE.md and docs/BENCHMARKS.md for the numbers).
//!
//! Writes go through writer threads ("shards"). A conversation's appends and recalls always go
//! to the same shard (by a hash of its id), so its seqs are allocated by one thread, in the
//! order the jobs were queued; every other write (users, groups, read cursors, records) goes
//! to shard 0, so check-then-write jobs there stay atomic. A shard takes every job that is
//! waiting (up to `max_batch`), writes all the appends among them as one atomic write batch
//! across keyspaces, then makes the shared journal durable with `fdatasync`: that is the group
//! commit, so durability costs one journal write and one sync per batch, not per message.
//! Each caller gets its answer only after that sync. Shards prepare their batches (the
//! idempotency lookups, seq allocation, encoding) in parallel; fjall serializes the journal
//! writes and memtable inserts of their commits.
//!
//! Readers never see a message before it is durable: the writer keeps a per-conversation
//! durable watermark that it raises only after the sync, and reads stop at it. Reads run on
//! tokio's blocking pool.

use crate::{
    Appended, AuditEntry, AuditQuery, Group, HeldMessage, Member, MetaOp, MetaStore, NewMessage,
    Page, Result, ReviewStore, Store, StoreError, Swap, Tombstone,
};
use async_trait::async_trait;
use dashmap::DashMap;
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use protocol::{ConvId, ConvSummary, GroupId, Message, Seq, UserId};
use serde::{de::DeserializeOwned, Serialize};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// Memtable size per keyspace. Larger memtables mean fewer, larger flushes and less
/// compaction: measured with 1M appends, 32 MiB took ~15 % less process CPU per append than
/// 8 MiB (docs/BENCHMARKS.md). Only the keyspaces appends fill (messages, idempotency,
/// compliance) grow that large: ~100 MiB plus the sealed ones being flushed.
const MEMTABLE_BYTES: u64 = 32 * 1024 * 1024;

/// fjall's background threads (memtable flushes and compaction): half the cores, at least one
/// and at most four. fjall's own default (all cores up to four) lets a flush and a compaction
/// take both cores of a small machine at once for a few hundred milliseconds, which every
/// message waiting for a core then sees in its latency; the work itself is the same either way.
fn background_workers() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    (cores / 2).clamp(1, 4)
}

pub mod dump;
mod events;
mod idem_filter;
mod idem_key;
mod reaper;

/// Separates the parts of a composite key; ids never contain a NUL byte.
const SEP: u8 = 0;

/// The keyspaces (one LSM tree each) and the database that writes across them atomically.
struct Keyspaces {
    db: Database,
    /// `conv \0 seq(be)` -> MessagePack of [`Message`].
    messages: Keyspace,
    /// The hashed key of (conv, sender, client_msg_id) -> seq(be) (see [`idem_key`]; older
    /// data directories also hold the written-out `conv \0 sender \0 client_msg_id`). Kept
    /// as long as the message.
    idempotency: Keyspace,
    /// Whether the idempotency keyspace holds legacy (written-out) keys, which a lookup then
    /// tries too. Set at open; only appends of this version's form follow.
    legacy_idem: bool,
    /// `user \0 conv` for the direct conversations a user takes part in.
    user_convs: Keyspace,
    /// `user \0 conv` -> read cursor seq(be).
    read: Keyspace,
    /// `user` -> first-seen ts(be).
    users: Keyspace,
    /// `group` -> JSON of [`Group`].
    groups: Keyspace,
    /// `group \0 user` -> JSON of [`Member`].
    members: Keyspace,
    /// `user \0 group`.
    user_groups: Keyspace,
    /// `ts(be) counter(be)` -> JSON of [`AuditEntry`].
    audit: Keyspace,
    /// `conv \0 review id` -> JSON of [`HeldMessage`].
    held: Keyspace,
    /// `ns \0 key` -> value, for [`MetaStore`].
    meta: Keyspace,
    /// `conv` -> min seq(be) ++ ts(be) of the newest message retention deleted ++ 1 when
    /// messages remain below the min seq (kept by a hold or an exemption): see
    /// [`Store::min_seq`]. Written by the conversation's writer with the deletions.
    min_seqs: Keyspace,
    /// Every `min_seqs` entry, in memory (loaded at open; only the writers change it), so
    /// that `history` and `sync` learn a conversation's min seq without a read.
    floors: DashMap<String, Floor>,
    /// `ts(be) n(be)` -> JSON of one [`crate::EventBody`], or the record of a writer batch's
    /// message events (see [`events`]): the compliance event log, each event written in the
    /// same atomic batch as its change.
    compliance: Keyspace,
    /// Compliance event ids and the ones not yet durable (readers stop below them).
    events: crate::compliance::Sequencer,
    /// Set by [`Store::close`]: the idempotency scan stops early.
    closing: std::sync::atomic::AtomicBool,
    /// Writers that have absorbed the idempotency scan's filter (for tests and logs).
    filters_complete: std::sync::atomic::AtomicUsize,
    /// Makes audit keys unique within a millisecond.
    audit_counter: std::sync::atomic::AtomicU64,
    /// Highest durable seq per conversation written since start; reads stop there. A
    /// conversation absent from the map has nothing newer than what was on disk at start.
    durable: DashMap<String, u64, FastHash>,
}

/// A conversation's retention state (see [`Keyspaces::floor`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Floor {
    /// The min seq.
    min: u64,
    /// Time of the newest message retention deleted.
    ts: u64,
    /// Whether messages remain below `min`. When none do, reads start at `min` and never
    /// walk the deleted keys (an LSM tree keeps them as tombstones until compaction).
    kept: bool,
}

/// A job run by the writer thread. It returns the function that delivers its answer once
/// the batch is durable; an `Err` means a storage failure (every caller in the batch then
/// sees `Unavailable`).
type Job = Box<dyn FnOnce(&Keyspaces, &mut WriterState) -> Result<Finisher> + Send>;

/// What only the writer thread touches.
#[derive(Default)]
struct WriterState {
    /// (conversation, seq) appended in the current batch, made visible after its sync.
    touched: Vec<(Arc<str>, u64)>,
    /// Last seq per conversation, so an append needs no read for it. The writer is the only
    /// one that changes it; the map is cleared when it grows past [`LAST_SEQ_CACHE`]. Its
    /// keys are shared with `touched` (no copy of the conversation id per append).
    last_seq: std::collections::HashMap<Arc<str>, u64, FastHash>,
    /// The appends of the current batch, written by one atomic write batch at its end
    /// (one journal write for the whole group instead of one per message).
    appends: Option<fjall::OwnedWriteBatch>,
    /// Messages appended in the current batch (their encoding, shared with the write batch)
    /// by idempotency key, so that a retry within the same batch (not yet in the keyspaces)
    /// is still recognized.
    pending: std::collections::HashMap<fjall::Slice, fjall::Slice, FastHash>,
    /// Reused buffer for building a key or encoding a message, copied once into its slice.
    scratch: Vec<u8>,
    /// Set by the last job of [`Store::close`]: the writer ends after this batch.
    stop: bool,
    /// Items in the previous write batch: the next one starts with that capacity instead of
    /// growing (and copying) its item list a dozen times.
    batch_items: usize,
    /// Compliance events written in the current batch, final once it is durable.
    events: Vec<u64>,
    /// The message events of the current batch, written as one record with its appends.
    message_events: events::MessageEvents,
    /// Every idempotency key of this writer's conversations (on disk at open, or written
    /// since): an append whose key it has certainly not seen needs no LSM lookup.
    filter: idem_filter::IdemFilter,
}

/// The writer's maps hash with foldhash: their keys are ours (a conversation is always on the
/// same writer), and SipHash showed in the append profile.
type FastHash = foldhash::fast::RandomState;

/// Most conversations whose last seq the writer keeps in memory.
const LAST_SEQ_CACHE: usize = 1 << 20;
type Finisher = Box<dyn FnOnce() + Send>;

/// Tuning of the embedded backend.
#[derive(Debug, Clone)]
pub struct EmbeddedOptions {
    /// Most jobs made durable together by one sync.
    pub max_batch: usize,
    /// Capacity of the queues in front of the writer threads, split evenly between them
    /// (callers wait when their shard's queue is full).
    pub queue: usize,
    /// Writer threads; conversations are spread over them by a hash of their id. One
    /// per core is the useful maximum.
    pub writers: usize,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        Self {
            max_batch: 1024,
            queue: 8192,
            writers: 2,
        }
    }
}

/// The embedded store. Cheap to clone: clones share the database and the writers.
#[derive(Clone)]
pub struct EmbeddedStore {
    ks: Arc<Keyspaces>,
    /// One queue per writer thread (shard); index 0 also takes every write that is not
    /// about one conversation.
    jobs: Arc<[mpsc::Sender<Job>]>,
    writers: Arc<std::sync::Mutex<Vec<std::thread::JoinHandle<()>>>>,
}

fn backend<E: Into<crate::error::BoxError>>(e: E) -> StoreError {
    StoreError::backend_with("fjall", e)
}

fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>> {
    rmp_serde::to_vec_named(v).map_err(|e| StoreError::corrupt_with("encode", e))
}

fn decode<T: DeserializeOwned>(b: &[u8]) -> Result<T> {
    rmp_serde::from_slice(b).map_err(|e| StoreError::corrupt_with("decode", e))
}

fn json<T: Serialize>(v: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(v).map_err(|e| StoreError::corrupt_with("encode json", e))
}

fn unjson<T: DeserializeOwned>(b: &[u8]) -> Result<T> {
    serde_json::from_slice(b).map_err(|e| StoreError::corrupt_with("decode json", e))
}

/// `a \0 b \0 c ...`
fn key(parts: &[&[u8]]) -> Vec<u8> {
    let mut k = Vec::with_capacity(parts.iter().map(|p| p.len() + 1).sum());
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            k.push(SEP);
        }
        k.extend_from_slice(p);
    }
    k
}

fn event_key(ts: u64, n: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(16);
    k.extend_from_slice(&ts.to_be_bytes());
    k.extend_from_slice(&n.to_be_bytes());
    k
}

fn msg_key(conv: &str, seq: u64) -> Vec<u8> {
    key(&[conv.as_bytes(), &seq.to_be_bytes()])
}

fn u64_at(b: &[u8], at: usize) -> Result<u64> {
    b.get(at..at + 8)
        .and_then(|s| <[u8; 8]>::try_from(s).ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| StoreError::corrupt("short integer"))
}

/// The part of a composite key after `prefix \0`.
fn suffix(k: &[u8], prefix_len: usize) -> &[u8] {
    k.get(prefix_len + 1..).unwrap_or_default()
}

impl Keyspaces {
    fn open(dir: &Path) -> Result<Self> {
        let mut ks = Self::open_keyspaces(dir)?;
        // Hashed keys (first byte 0x01) sort before every legacy key (a conversation id), so
        // the last key tells whether any legacy key is left.
        if let Some(g) = ks.idempotency.last_key_value() {
            ks.legacy_idem = idem_key::is_legacy(&g.key().map_err(backend)?);
        }
        // Event ids continue after the newest one on disk (the last of a record's run).
        if let Some(g) = ks.compliance.last_key_value() {
            let (k, v) = g.into_inner().map_err(backend)?;
            let last_n = u64_at(&k, 8)? + events::count(&v)?.saturating_sub(1);
            ks.events = crate::compliance::Sequencer::new("", u64_at(&k, 0)?, last_n);
        }
        Ok(ks)
    }

    fn open_keyspaces(dir: &Path) -> Result<Self> {
        let db = Database::builder(dir.join("chat"))
            .worker_threads(background_workers())
            .open()
            .map_err(backend)?;
        let ks = |name: &str| {
            db.keyspace(name, || {
                KeyspaceCreateOptions::default().max_memtable_size(MEMTABLE_BYTES)
            })
            .map_err(backend)
        };
        Ok(Self {
            messages: ks("messages")?,
            idempotency: ks("idempotency")?,
            legacy_idem: false,
            user_convs: ks("user_convs")?,
            read: ks("read_cursors")?,
            users: ks("users")?,
            groups: ks("groups")?,
            members: ks("members")?,
            user_groups: ks("user_groups")?,
            audit: ks("audit")?,
            held: ks("held")?,
            meta: ks("meta")?,
            min_seqs: ks("min_seq")?,
            floors: DashMap::new(),
            compliance: ks("compliance")?,
            events: crate::compliance::Sequencer::new("", 0, 0),
            audit_counter: std::sync::atomic::AtomicU64::new(0),
            closing: std::sync::atomic::AtomicBool::new(false),
            filters_complete: std::sync::atomic::AtomicUsize::new(0),
            durable: DashMap::with_hasher(FastHash::default()),
            db,
        })
    }

    /// The idempotency filter of each of `shards` writers, holding every idempotency key on
    /// disk of the writer's conversations: one scan of the keyspace (a snapshot taken now).
    /// `None` when the store is closing.
    /// Every keyspace (for the reaper, which watches all their memtables).
    fn all(&self) -> [&Keyspace; 13] {
        [
            &self.messages,
            &self.idempotency,
            &self.user_convs,
            &self.read,
            &self.users,
            &self.groups,
            &self.members,
            &self.user_groups,
            &self.audit,
            &self.held,
            &self.meta,
            &self.min_seqs,
            &self.compliance,
        ]
    }

    fn scan_idempotency(&self, shards: usize) -> Result<Option<Vec<idem_filter::IdemFilter>>> {
        let started = std::time::Instant::now();
        let expected = self.idempotency.approximate_len() / shards.max(1);
        let max_bytes = idem_filter::MAX_BYTES / shards.max(1);
        let mut filters: Vec<_> = (0..shards)
            .map(|_| idem_filter::IdemFilter::new(expected, max_bytes))
            .collect();
        let mut keys = 0u64;
        for g in self.idempotency.iter() {
            let k = g.key().map_err(backend)?;
            // A legacy key goes in as the hashed key it stands for: appends look that up.
            let Some((tag, hashed)) = idem_key::normalize(&k) else {
                return Err(StoreError::corrupt("idempotency key of no known form"));
            };
            if let Some(f) = filters.get_mut(shard_of_tag(tag, shards)) {
                f.insert(idem_filter::hash(&hashed));
            }
            keys += 1;
            if keys.is_multiple_of(4096) && self.closing.load(Ordering::Relaxed) {
                return Ok(None);
            }
        }
        tracing::info!(
            keys,
            bytes = filters.iter().map(|f| f.bytes()).sum::<usize>(),
            ms = started.elapsed().as_millis() as u64,
            "idempotency filter rebuilt"
        );
        Ok(Some(filters))
    }

    /// Fills the in-memory copy of the `min_seq` keyspace.
    fn load_floors(&self) -> Result<()> {
        for g in self.min_seqs.iter() {
            let (k, v) = g.into_inner().map_err(backend)?;
            let conv = String::from_utf8_lossy(&k).into_owned();
            let floor = Floor {
                min: u64_at(&v, 0)?,
                ts: u64_at(&v, 8)?,
                kept: v.get(16).is_none_or(|b| *b != 0),
            };
            self.floors.insert(conv, floor);
        }
        Ok(())
    }

    /// A conversation's retention state; min seq 1 when retention never deleted anything.
    fn floor(&self, conv: &str) -> Floor {
        self.floors.get(conv).map(|f| *f).unwrap_or(Floor {
            min: 1,
            ts: 0,
            kept: false,
        })
    }

    /// The lowest seq a read of `conv` needs to look at: 1 while messages remain below the
    /// min seq, else the min seq.
    fn read_from(&self, conv: &str) -> u64 {
        let f = self.floor(conv);
        if f.kept {
            1
        } else {
            f.min.max(1)
        }
    }

    /// The highest seq a reader may see in `conv`.
    fn visible(&self, conv: &str) -> u64 {
        self.durable.get(conv).map(|v| *v).unwrap_or(u64::MAX)
    }

    /// (last seq, last ts) of a conversation, read from its newest message: no separate
    /// counter needs writing per message. When retention deleted the newest messages, the
    /// min seq record remembers where the seqs were (they never restart).
    fn conv_meta(&self, conv: &str) -> Result<(u64, u64)> {
        // Only from the min seq up: anything below it is older than the min seq - 1.
        let floor = self.floor(conv);
        let range = msg_key(conv, floor.min.max(1))..=msg_key(conv, u64::MAX);
        let newest = match self.messages.range(range).next_back() {
            Some(g) => {
                let (k, v) = g.into_inner().map_err(backend)?;
                let seq = u64_at(&k, conv.len() + 1)?;
                let m: protocol::Message = decode(&v)?;
                (seq, m.ts)
            }
            None => (0, 0),
        };
        Ok(if floor.min.saturating_sub(1) > newest.0 {
            (floor.min.saturating_sub(1), floor.ts)
        } else {
            newest
        })
    }

    /// The retention job's deletions in `conv` (see [`Store::expire`]); run by the
    /// conversation's writer, so appends and recalls of the conversation never interleave.
    fn expire(
        &self,
        conv: &str,
        seqs: &[Seq],
        min_seq: Seq,
        state: &mut WriterState,
    ) -> Result<u64> {
        let last = match state.last_seq.get(conv) {
            Some(last) => *last,
            None => self.conv_meta(conv)?.0,
        };
        let before = self.floor(conv);
        let current = before.min;
        let mut newest_ts = before.ts;
        let raised = min_seq.0.min(last.saturating_add(1)).max(current);
        let mut batch = self.db.batch();
        let mut deleting = std::collections::HashSet::new();
        for seq in seqs {
            if seq.0 == 0 || seq.0 >= raised || deleting.contains(&seq.0) {
                continue;
            }
            let k = msg_key(conv, seq.0);
            if let Some(v) = self.messages.get(&k).map_err(backend)? {
                let m: Message = decode(&v)?;
                newest_ts = newest_ts.max(m.ts);
                batch.remove(&self.messages, k);
                deleting.insert(seq.0);
            }
        }
        // Does anything stay below the new min seq? Below the old one only if something
        // stayed there before; between the two, the keys this call passed over.
        let remains = |lo: u64, hi: u64| -> Result<bool> {
            if lo >= hi {
                return Ok(false);
            }
            for g in self.messages.range(msg_key(conv, lo)..msg_key(conv, hi)) {
                let k = g.key().map_err(backend)?;
                if !deleting.contains(&u64_at(&k, conv.len() + 1)?) {
                    return Ok(true);
                }
            }
            Ok(false)
        };
        let kept = (before.kept && remains(1, current)?) || remains(current, raised)?;
        let mut value = raised.to_be_bytes().to_vec();
        value.extend_from_slice(&newest_ts.to_be_bytes());
        value.push(u8::from(kept));
        batch.insert(&self.min_seqs, conv.as_bytes(), value);
        batch.commit().map_err(backend)?;
        let floor = Floor {
            min: raised,
            ts: newest_ts,
            kept,
        };
        self.floors.insert(conv.to_owned(), floor);
        Ok(deleting.len() as u64)
    }

    /// Up to `limit` conversation ids with messages, after `after`, in key order: one seek
    /// per conversation (past all of its keys).
    fn conversation_ids(&self, after: Option<&str>, limit: usize) -> Result<Vec<ConvId>> {
        let next_after = |conv: &[u8]| {
            let mut k = conv.to_vec();
            k.push(SEP + 1);
            k
        };
        let mut from = after.map(|a| next_after(a.as_bytes())).unwrap_or_default();
        let mut out = Vec::new();
        while out.len() < limit {
            let Some(g) = self.messages.range(from.clone()..).next() else {
                break;
            };
            let k = g.key().map_err(backend)?;
            let conv = k.split(|b| *b == SEP).next().unwrap_or_default();
            let id = std::str::from_utf8(conv)
                .ok()
                .and_then(|c| ConvId::parse(c).ok())
                .ok_or_else(|| StoreError::corrupt("a message key without a conversation id"))?;
            out.push(id);
            from = next_after(conv);
        }
        Ok(out)
    }

    fn append(&self, msg: NewMessage, state: &mut WriterState) -> Result<Appended> {
        let conv = msg.conv.as_str();
        let (from, client_id) = (msg.from.as_str().as_bytes(), msg.client_msg_id.as_bytes());
        // Twenty bytes, kept inline by fjall: no allocation for the key.
        let dedup_key = fjall::Slice::from(&idem_key::hashed(conv.as_bytes(), from, client_id)[..]);
        // The filter holds every key written, in this batch or before: when it has certainly
        // not seen this one (nearly always), neither the batch nor the keyspace has it.
        let hash = idem_filter::hash(&dedup_key);
        let seen = state.filter.may_contain(hash);
        if seen {
            if let Some(encoded) = state.pending.get(&dedup_key) {
                return Ok(Appended {
                    message: decode(encoded)?,
                    duplicate: true,
                });
            }
        }
        let stored = match seen {
            true => match self.idempotency.get(&dedup_key).map_err(backend)? {
                None if self.legacy_idem => {
                    idem_key::legacy_into(&mut state.scratch, conv.as_bytes(), from, client_id);
                    self.idempotency.get(&state.scratch[..]).map_err(backend)?
                }
                found => found,
            },
            false => None,
        };
        if let Some(seq) = stored {
            let seq = u64_at(&seq, 0)?;
            let message = match self.messages.get(msg_key(conv, seq)).map_err(backend)? {
                Some(stored) => {
                    let message: Message = decode(&stored)?;
                    // A key is 128 bits of SHA-256: two triples sharing one is not expected
                    // in the life of the universe, but it would show here first.
                    if message.from != msg.from {
                        return Err(StoreError::corrupt(format!(
                            "{conv} seq {seq}: idempotency key of another sender"
                        )));
                    }
                    message
                }
                // Stored once and deleted by retention since: still a duplicate (its key
                // stays, see `Store::expire`), answered with its place only.
                None if seq < self.floor(conv).min => {
                    crate::expired_placeholder(&msg.conv, Seq(seq), &msg.from)
                }
                None => return Err(StoreError::corrupt(format!("{conv} seq {seq} missing"))),
            };
            return Ok(Appended {
                message,
                duplicate: true,
            });
        }
        let (conv_key, last) = match state.last_seq.get_key_value(conv) {
            Some((k, last)) => (k.clone(), *last),
            None => {
                let last = self.conv_meta(conv)?.0;
                // Everything up to `last` is durable (synced by an earlier batch, or on disk
                // at start), so readers may see it; the new seq becomes visible after this
                // batch's sync. (A conversation in the last-seq cache has its entry already.)
                if !self.durable.contains_key(conv) {
                    self.durable.entry(conv.to_owned()).or_insert(last);
                }
                (Arc::<str>::from(conv), last)
            }
        };
        let seq = last + 1;
        // Its compliance event goes in the same atomic batch, in the batch's one record.
        state.message_events.push(&msg, seq);
        let capacity = state.batch_items;
        // No durability of its own: the writer makes the journal durable after the commit.
        let batch = state.appends.get_or_insert_with(|| {
            fjall::OwnedWriteBatch::with_capacity(self.db.clone(), capacity)
        });
        batch.insert(&self.idempotency, dedup_key.clone(), seq.to_be_bytes());
        state.filter.insert(hash);
        // The participants' conversation-list entries go in with the conversation's first
        // message (same atomic batch); writing them again with every message only piled up
        // versions of the same keys in the memtable (measured: the writer's hottest work).
        if last == 0 {
            for p in &msg.participants {
                batch.insert(
                    &self.user_convs,
                    key(&[p.as_str().as_bytes(), conv.as_bytes()]),
                    [],
                );
            }
        }
        let message_key = msg_key(conv, seq);
        let message = msg.into_message(Seq(seq));
        // Encoded once, into the scratch buffer: the write batch and the in-batch retry
        // check share the bytes.
        state.scratch.clear();
        rmp_serde::encode::write_named(&mut state.scratch, &message)
            .map_err(|e| StoreError::corrupt_with("encode", e))?;
        let encoded = fjall::Slice::from(state.scratch.as_slice());
        batch.insert(&self.messages, message_key, encoded.clone());
        state.pending.insert(dedup_key, encoded);
        state.last_seq.insert(conv_key.clone(), seq);
        state.touched.push((conv_key, seq));
        Ok(Appended {
            message,
            duplicate: false,
        })
    }

    fn page(&self, conv: &str, lo: u64, hi: u64, limit: usize, newest_first: bool) -> Result<Page> {
        let hi = hi.min(self.visible(conv));
        if lo > hi {
            return Ok(Page::default());
        }
        let range = self.messages.range(msg_key(conv, lo)..=msg_key(conv, hi));
        let mut messages = Vec::with_capacity(limit.min(256));
        let mut has_more = false;
        let mut take = |guard: fjall::Guard| -> Result<bool> {
            if messages.len() == limit {
                has_more = true;
                return Ok(false);
            }
            let (_, v) = guard.into_inner().map_err(backend)?;
            messages.push(decode(&v)?);
            Ok(true)
        };
        if newest_first {
            for g in range.rev() {
                if !take(g)? {
                    break;
                }
            }
        } else {
            for g in range {
                if !take(g)? {
                    break;
                }
            }
        }
        Ok(Page { messages, has_more })
    }

    /// A new compliance event's key and value, in flight until the writer's batch is durable.
    fn event(
        &self,
        state: &mut WriterState,
        body: &crate::EventBody,
    ) -> Result<(Vec<u8>, Vec<u8>)> {
        let value = json(body)?;
        let id = self.events.begin();
        state.events.push(id.n);
        Ok((event_key(id.ts, id.n), value))
    }

    /// Every `(prefix \0 suffix)` key's suffix, for a `prefix`.
    fn suffixes(&self, ks: &Keyspace, prefix: &str) -> Result<Vec<Vec<u8>>> {
        let mut p = prefix.as_bytes().to_vec();
        p.push(SEP);
        let mut out = Vec::new();
        for g in ks.prefix(&p) {
            let k = g.key().map_err(backend)?;
            out.push(suffix(&k, prefix.len()).to_vec());
        }
        Ok(out)
    }
}

impl EmbeddedStore {
    /// Opens (or creates) the database under `dir/chat` and starts the writer threads.
    pub fn open(dir: &Path, opts: EmbeddedOptions) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(backend)?;
        let ks = Arc::new(Keyspaces::open(dir)?);
        ks.load_floors()?;
        let shards = opts.writers.clamp(1, 64);
        let queue = (opts.queue / shards).max(1);
        let max_batch = opts.max_batch.max(1);
        let mut jobs = Vec::with_capacity(shards);
        let mut writers = Vec::with_capacity(shards);
        // With keys on disk, each writer starts with a filter of the keys it writes and gets
        // the scan's filter of the rest when the scan is done (see `idem_filter`).
        let scan = !ks.idempotency.is_empty().map_err(backend)?;
        let mut scanned = Vec::with_capacity(shards);
        for shard in 0..shards {
            let (tx, rx) = mpsc::channel::<Job>(queue);
            let (filter, from_scan) = if scan {
                let (stx, srx) = std::sync::mpsc::sync_channel(1);
                scanned.push(stx);
                let max_bytes = idem_filter::MAX_BYTES / shards;
                (idem_filter::IdemFilter::awaiting_scan(max_bytes), Some(srx))
            } else {
                (
                    idem_filter::IdemFilter::new(0, idem_filter::MAX_BYTES / shards),
                    None,
                )
            };
            let writer_ks = ks.clone();
            let handle = std::thread::Builder::new()
                .name(format!("store-writer-{shard}"))
                .spawn(move || writer_loop(&writer_ks, rx, max_batch, filter, from_scan))
                .map_err(backend)?;
            jobs.push(tx);
            writers.push(handle);
        }
        if scan {
            let scan_ks = ks.clone();
            let handle = std::thread::Builder::new()
                .name("store-idem-scan".into())
                .spawn(move || match scan_ks.scan_idempotency(shards) {
                    Ok(Some(filters)) => {
                        for (tx, f) in scanned.iter().zip(filters) {
                            // A writer that has ended no longer needs it.
                            let _ = tx.send(f);
                        }
                    }
                    Ok(None) => {}
                    // The writers keep doing the LSM lookup: slower, still exact.
                    Err(e) => tracing::error!(error = %e, "idempotency filter scan failed"),
                })
                .map_err(backend)?;
            writers.push(handle);
        }
        writers.push(reaper::spawn(Arc::downgrade(&ks)).map_err(backend)?);
        Ok(Self {
            ks,
            jobs: jobs.into(),
            writers: Arc::new(std::sync::Mutex::new(writers)),
        })
    }

    /// The queue of the writer that owns `conv` (its appends and recalls).
    fn shard(&self, conv: &str) -> &mpsc::Sender<Job> {
        &self.jobs[shard_of(conv.as_bytes(), self.jobs.len())]
    }

    /// Runs `f` on writer 0 in its next batch and waits until that batch is durable.
    /// `f` returns `Err` for a storage failure, or `Ok(outcome)` (which may itself be a
    /// logical error such as `NotFound`).
    async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Keyspaces, &mut WriterState) -> Result<Result<T>> + Send + 'static,
    ) -> Result<T> {
        self.write_on(&self.jobs[0], f).await
    }

    /// [`Self::write`] on the writer whose queue is `queue`.
    async fn write_on<T: Send + 'static>(
        &self,
        queue: &mpsc::Sender<Job>,
        f: impl FnOnce(&Keyspaces, &mut WriterState) -> Result<Result<T>> + Send + 'static,
    ) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |ks, state| {
            let outcome = f(ks, state)?;
            Ok(Box::new(move || {
                let _ = tx.send(outcome);
            }))
        });
        queue
            .send(job)
            .await
            .map_err(|_| StoreError::unavailable("store is closed"))?;
        rx.await
            .map_err(|_| StoreError::unavailable("write failed; nothing was acknowledged"))?
    }

    /// Runs a read on the blocking pool.
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Keyspaces) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let ks = self.ks.clone();
        tokio::task::spawn_blocking(move || f(&ks))
            .await
            .map_err(|e| StoreError::backend_with("read task", e))?
    }
}

/// The writer (of `shards`) that owns the conversation `conv`.
fn shard_of(conv: &[u8], shards: usize) -> usize {
    shard_of_tag(idem_key::conv_tag(conv), shards)
}

/// The writer of the conversations with this tag (the tag is in their idempotency keys, so
/// the startup scan can file each key with its writer).
fn shard_of_tag(tag: u32, shards: usize) -> usize {
    tag as usize % shards.max(1)
}

fn writer_loop(
    ks: &Keyspaces,
    mut rx: mpsc::Receiver<Job>,
    max_batch: usize,
    filter: idem_filter::IdemFilter,
    mut from_scan: Option<std::sync::mpsc::Receiver<idem_filter::IdemFilter>>,
) {
    let mut batch: Vec<Job> = Vec::with_capacity(max_batch);
    let mut state = WriterState {
        filter,
        ..WriterState::default()
    };
    while let Some(first) = rx.blocking_recv() {
        if let Some(scan) = &from_scan {
            match scan.try_recv() {
                Ok(scanned) => {
                    state.filter.absorb(scanned);
                    ks.filters_complete.fetch_add(1, Ordering::Relaxed);
                    from_scan = None;
                }
                Err(std::sync::mpsc::TryRecvError::Disconnected) => from_scan = None,
                Err(std::sync::mpsc::TryRecvError::Empty) => {}
            }
        }
        batch.push(first);
        while batch.len() < max_batch {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let count = batch.len();
        let started = std::time::Instant::now();
        let result = run_batch(ks, batch.drain(..), &mut state);
        record_batch(count, started);
        match result {
            Ok(finishers) => finishers.into_iter().for_each(|f| f()),
            // Dropping the finishers tells every caller the write was not acknowledged.
            Err(e) => {
                tracing::error!(error = %e, jobs = count, "store batch failed");
                // Seqs handed out in the failed batch may not be on disk: forget them.
                state.last_seq.clear();
                state.pending.clear();
                state.appends = None;
                state.message_events.clear();
                // Not acknowledged: whatever of it is on disk is final from here on.
                ks.events.done(&state.events);
                state.events.clear();
            }
        }
        state.touched.clear();
        // Bounded memory; only between batches, when every seq is in the keyspaces.
        if state.last_seq.len() >= LAST_SEQ_CACHE {
            state.last_seq.clear();
        }
        if state.stop {
            rx.close();
            while rx.try_recv().is_ok() {}
            break;
        }
    }
}

/// Batch size and write+sync time of one writer batch (names documented in
/// docs/OPERATIONS.md; the gateway installs the Prometheus recorder).
fn record_batch(jobs: usize, started: std::time::Instant) {
    metrics::histogram!("chatd_store_append_batch_size").record(jobs as f64);
    metrics::histogram!("chatd_store_commit_seconds").record(started.elapsed().as_secs_f64());
}

fn run_batch(
    ks: &Keyspaces,
    jobs: impl Iterator<Item = Job>,
    state: &mut WriterState,
) -> Result<Vec<Finisher>> {
    let mut finishers = Vec::with_capacity(jobs.size_hint().0);
    for job in jobs {
        finishers.push(job(ks, state)?);
    }
    state.pending.clear();
    if let Some(mut appends) = state.appends.take() {
        // The batch's message events: one id run, one record, in the same atomic commit.
        if !state.message_events.is_empty() {
            let id = ks.events.begin_range(state.message_events.len());
            state.events.push(id.n);
            appends.insert(
                &ks.compliance,
                event_key(id.ts, id.n),
                state.message_events.take(),
            );
        }
        state.batch_items = appends.len();
        appends.commit().map_err(backend)?;
    }
    ks.db.persist(PersistMode::SyncData).map_err(backend)?;
    ks.events.done(&state.events);
    state.events.clear();
    for (conv, seq) in state.touched.iter() {
        if let Some(mut v) = ks.durable.get_mut(&**conv) {
            *v = (*v).max(*seq);
        }
    }
    Ok(finishers)
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn append(&self, msg: NewMessage) -> Result<Appended> {
        let queue = self.shard(msg.conv.as_str());
        self.write_on(queue, move |ks, state| Ok(Ok(ks.append(msg, state)?)))
            .await
    }

    async fn append_then(&self, msg: NewMessage, then: crate::AfterAppend) -> Result<Appended> {
        let (tx, rx) = oneshot::channel();
        let queue = self.shard(msg.conv.as_str());
        // The finisher runs on the conversation's writer thread, in batch order, after the
        // sync: `then` sees this conversation's messages in seq order.
        let job: Job = Box::new(move |ks, state| {
            let appended = ks.append(msg, state)?;
            Ok(Box::new(move || {
                then(&appended);
                let _ = tx.send(Ok(appended));
            }))
        });
        queue
            .send(job)
            .await
            .map_err(|_| StoreError::unavailable("store is closed"))?;
        rx.await
            .map_err(|_| StoreError::unavailable("write failed; nothing was acknowledged"))?
    }

    async fn history(&self, conv: &ConvId, before: Option<Seq>, limit: usize) -> Result<Page> {
        let conv = conv.clone();
        let hi = before.map(|s| s.0.saturating_sub(1)).unwrap_or(u64::MAX);
        self.read(move |ks| {
            let lo = ks.read_from(conv.as_str());
            ks.page(conv.as_str(), lo, hi, limit, true)
        })
        .await
    }

    async fn after(&self, conv: &ConvId, after: Seq, limit: usize) -> Result<Page> {
        let conv = conv.clone();
        let Some(lo) = after.0.checked_add(1) else {
            return Ok(Page::default());
        };
        self.read(move |ks| {
            let lo = lo.max(ks.read_from(conv.as_str()));
            ks.page(conv.as_str(), lo, u64::MAX, limit, false)
        })
        .await
    }

    async fn last_seq(&self, conv: &ConvId) -> Result<Seq> {
        let conv = conv.clone();
        self.read(move |ks| {
            let (last, _) = ks.conv_meta(conv.as_str())?;
            Ok(Seq(last.min(ks.visible(conv.as_str()))))
        })
        .await
    }

    async fn conversations(&self, user: &UserId) -> Result<Vec<ConvSummary>> {
        let user = user.clone();
        self.read(move |ks| {
            let u = user.as_str();
            let mut convs: Vec<ConvId> = Vec::new();
            for s in ks.suffixes(&ks.user_convs, u)? {
                if let Some(c) = std::str::from_utf8(&s)
                    .ok()
                    .and_then(|c| ConvId::parse(c).ok())
                {
                    convs.push(c);
                }
            }
            for s in ks.suffixes(&ks.user_groups, u)? {
                if let Ok(g) = std::str::from_utf8(&s) {
                    convs.push(ConvId::group(&GroupId::new(g)));
                }
            }
            let mut out = Vec::with_capacity(convs.len());
            for conv in convs {
                let (last, last_ts) = ks.conv_meta(conv.as_str())?;
                let last_seq = last.min(ks.visible(conv.as_str()));
                let read_seq = match ks
                    .read
                    .get(key(&[u.as_bytes(), conv.as_str().as_bytes()]))
                    .map_err(backend)?
                {
                    Some(v) => u64_at(&v, 0)?,
                    None => 0,
                }
                .min(last_seq);
                out.push(ConvSummary {
                    conv,
                    last_seq: Seq(last_seq),
                    last_ts,
                    read_seq: Seq(read_seq),
                    unread: last_seq - read_seq,
                    last_message: None,
                    mentioned: false,
                });
            }
            out.sort_by(|a, b| b.last_ts.cmp(&a.last_ts).then(a.conv.cmp(&b.conv)));
            Ok(out)
        })
        .await
    }

    async fn set_read(&self, user: &UserId, conv: &ConvId, seq: Seq) -> Result<Seq> {
        let k = key(&[user.as_str().as_bytes(), conv.as_str().as_bytes()]);
        self.write(move |ks, _| {
            let current = match ks.read.get(&k).map_err(backend)? {
                Some(v) => u64_at(&v, 0)?,
                None => 0,
            };
            if seq.0 > current {
                ks.read.insert(k, seq.0.to_be_bytes()).map_err(backend)?;
                Ok(Ok(seq))
            } else {
                Ok(Ok(Seq(current)))
            }
        })
        .await
    }

    async fn touch_user(&self, user: &UserId, now: u64) -> Result<()> {
        // Fast path: most calls find the user already known and need no write.
        if self.user_exists(user).await? {
            return Ok(());
        }
        let user = user.clone();
        self.write(move |ks, _| {
            if !ks.users.contains_key(user.as_str()).map_err(backend)? {
                ks.users
                    .insert(user.as_str(), now.to_be_bytes())
                    .map_err(backend)?;
            }
            Ok(Ok(()))
        })
        .await
    }

    async fn user_exists(&self, user: &UserId) -> Result<bool> {
        let user = user.clone();
        self.read(move |ks| ks.users.contains_key(user.as_str()).map_err(backend))
            .await
    }

    async fn create_group(&self, group: Group, members: Vec<Member>) -> Result<()> {
        self.write(move |ks, state| {
            if ks.groups.contains_key(group.id.as_str()).map_err(backend)? {
                return Ok(Err(StoreError::Conflict(format!("group {}", group.id))));
            }
            let g = group.id.as_str().as_bytes();
            let mut batch = ks.db.batch();
            batch.insert(&ks.groups, g, json(&group)?);
            for m in &members {
                let u = m.user.as_str().as_bytes();
                batch.insert(&ks.members, key(&[g, u]), json(m)?);
                batch.insert(&ks.user_groups, key(&[u, g]), []);
                let (k, v) = ks.event(state, &member_put(&group.id, m))?;
                batch.insert(&ks.compliance, k, v);
            }
            batch.commit().map_err(backend)?;
            Ok(Ok(()))
        })
        .await
    }

    async fn group(&self, id: &GroupId) -> Result<Option<Group>> {
        let id = id.clone();
        self.read(
            move |ks| match ks.groups.get(id.as_str()).map_err(backend)? {
                Some(v) => Ok(Some(unjson(&v)?)),
                None => Ok(None),
            },
        )
        .await
    }

    async fn members(&self, id: &GroupId) -> Result<Vec<Member>> {
        let id = id.clone();
        self.read(move |ks| {
            let mut p = id.as_str().as_bytes().to_vec();
            p.push(SEP);
            let mut out = Vec::new();
            for g in ks.members.prefix(&p) {
                let (_, v) = g.into_inner().map_err(backend)?;
                out.push(unjson(&v)?);
            }
            Ok(out)
        })
        .await
    }

    async fn put_member(&self, id: &GroupId, member: Member) -> Result<()> {
        let id = id.clone();
        self.write(move |ks, state| {
            if !ks.groups.contains_key(id.as_str()).map_err(backend)? {
                return Ok(Err(StoreError::NotFound(format!("group {id}"))));
            }
            let (g, u) = (id.as_str().as_bytes(), member.user.as_str().as_bytes());
            let mut batch = ks.db.batch();
            batch.insert(&ks.members, key(&[g, u]), json(&member)?);
            batch.insert(&ks.user_groups, key(&[u, g]), []);
            let (k, v) = ks.event(state, &member_put(&id, &member))?;
            batch.insert(&ks.compliance, k, v);
            batch.commit().map_err(backend)?;
            Ok(Ok(()))
        })
        .await
    }

    async fn put_members(&self, id: &GroupId, members: Vec<Member>) -> Result<()> {
        let id = id.clone();
        self.write(move |ks, state| {
            if !ks.groups.contains_key(id.as_str()).map_err(backend)? {
                return Ok(Err(StoreError::NotFound(format!("group {id}"))));
            }
            let g = id.as_str().as_bytes();
            let mut batch = ks.db.batch();
            for member in &members {
                let u = member.user.as_str().as_bytes();
                batch.insert(&ks.members, key(&[g, u]), json(member)?);
                batch.insert(&ks.user_groups, key(&[u, g]), []);
                let (k, v) = ks.event(state, &member_put(&id, member))?;
                batch.insert(&ks.compliance, k, v);
            }
            batch.commit().map_err(backend)?;
            Ok(Ok(()))
        })
        .await
    }

    async fn remove_member(&self, id: &GroupId, user: &UserId) -> Result<bool> {
        let (id, user) = (id.clone(), user.clone());
        self.write(move |ks, state| {
            let (g, u) = (id.as_str().as_bytes(), user.as_str().as_bytes());
            let mk = key(&[g, u]);
            let existed = ks.members.contains_key(&mk).map_err(backend)?;
            let mut batch = ks.db.batch();
            batch.remove(&ks.members, mk);
            batch.remove(&ks.user_groups, key(&[u, g]));
            if existed {
                let (k, v) = ks.event(state, &member_removed(&id, &user))?;
                batch.insert(&ks.compliance, k, v);
            }
            batch.commit().map_err(backend)?;
            Ok(Ok(existed))
        })
        .await
    }

    async fn user_groups(&self, user: &UserId) -> Result<Vec<GroupId>> {
        let user = user.clone();
        self.read(move |ks| {
            Ok(ks
                .suffixes(&ks.user_groups, user.as_str())?
                .into_iter()
                .filter_map(|s| String::from_utf8(s).ok())
                .map(GroupId::new)
                .collect())
        })
        .await
    }

    async fn recall(&self, conv: &ConvId, seq: Seq) -> Result<Option<Message>> {
        let conv = conv.clone();
        let queue = self.shard(conv.as_str());
        self.write_on(queue, move |ks, state| {
            if seq.0 == 0 || seq.0 > ks.visible(conv.as_str()) {
                return Ok(Ok(None));
            }
            let k = msg_key(conv.as_str(), seq.0);
            let Some(v) = ks.messages.get(&k).map_err(backend)? else {
                return Ok(Ok(None));
            };
            let original: Message = decode(&v)?;
            let mut batch = ks.db.batch();
            batch.insert(&ks.messages, k, encode(&original.tombstone())?);
            let event = crate::EventBody::Recall {
                conv: original.conv.clone(),
                seq: original.seq,
                id: original.id.clone(),
                from: original.from.clone(),
            };
            let (ek, ev) = ks.event(state, &event)?;
            batch.insert(&ks.compliance, ek, ev);
            batch.commit().map_err(backend)?;
            Ok(Ok(Some(original)))
        })
        .await
    }

    async fn conversation_ids(&self, after: Option<&ConvId>, limit: usize) -> Result<Vec<ConvId>> {
        let after = after.map(|c| c.as_str().to_owned());
        self.read(move |ks| ks.conversation_ids(after.as_deref(), limit))
            .await
    }

    async fn min_seq(&self, conv: &ConvId) -> Result<Seq> {
        Ok(Seq(self.ks.floor(conv.as_str()).min))
    }

    async fn expire(&self, conv: &ConvId, seqs: &[Seq], min_seq: Seq) -> Result<u64> {
        let (conv, seqs) = (conv.clone(), seqs.to_vec());
        let queue = self.shard(conv.as_str());
        self.write_on(queue, move |ks, state| {
            Ok(Ok(ks.expire(conv.as_str(), &seqs, min_seq, state)?))
        })
        .await
    }

    async fn close(&self) -> Result<()> {
        // A last job per writer, queued behind everything already sent, tells it to stop
        // after its batch is durable; then we wait for the threads to end.
        self.ks.closing.store(true, Ordering::Relaxed);
        for queue in self.jobs.iter() {
            let _ = self
                .write_on(queue, |_, state| {
                    state.stop = true;
                    Ok(Ok(()))
                })
                .await;
        }
        let handles = self
            .writers
            .lock()
            .map(|mut h| std::mem::take(&mut *h))
            .unwrap_or_default();
        for handle in handles {
            tokio::task::spawn_blocking(move || handle.join())
                .await
                .map_err(|e| StoreError::backend_with("join writer", e))?
                .map_err(|_| StoreError::backend("store writer panicked"))?;
        }
        Ok(())
    }

    /// A conversation's appends go to one writer thread through a FIFO queue, which commits
    /// them in that order.
    fn keeps_append_order(&self) -> bool {
        true
    }
}

fn meta_key(ns: &str, key: &str) -> Vec<u8> {
    self::key(&[ns.as_bytes(), key.as_bytes()])
}

#[async_trait]
impl MetaStore for EmbeddedStore {
    async fn get(&self, ns: &str, key: &str) -> Result<Option<Vec<u8>>> {
        let k = meta_key(ns, key);
        self.read(move |ks| Ok(ks.meta.get(&k).map_err(backend)?.map(|v| v.to_vec())))
            .await
    }

    async fn scan(
        &self,
        ns: &str,
        prefix: &str,
        after: &str,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>> {
        let (ns, prefix, after) = (ns.to_owned(), prefix.to_owned(), after.to_owned());
        self.read(move |ks| {
            let p = meta_key(&ns, &prefix);
            let mut out = Vec::new();
            for g in ks.meta.prefix(&p) {
                let (k, v) = g.into_inner().map_err(backend)?;
                let key = String::from_utf8_lossy(suffix(&k, ns.len())).into_owned();
                if key.as_str() <= after.as_str() {
                    continue;
                }
                out.push((key, v.to_vec()));
                if out.len() >= limit {
                    break;
                }
            }
            Ok(out)
        })
        .await
    }

    async fn insert_new(&self, ns: &str, key: &str, value: Vec<u8>) -> Result<bool> {
        let k = meta_key(ns, key);
        // The writer thread runs jobs one at a time, so check-then-insert is atomic.
        self.write(move |ks, _| {
            if ks.meta.contains_key(&k).map_err(backend)? {
                return Ok(Ok(false));
            }
            ks.meta.insert(k, value).map_err(backend)?;
            Ok(Ok(true))
        })
        .await
    }

    async fn apply(&self, ops: Vec<MetaOp>) -> Result<()> {
        self.write(move |ks, _| {
            let mut batch = ks.db.batch();
            for op in ops {
                match op {
                    MetaOp::Put { ns, key, value } => {
                        batch.insert(&ks.meta, meta_key(&ns, &key), value)
                    }
                    MetaOp::Delete { ns, key } => batch.remove(&ks.meta, meta_key(&ns, &key)),
                }
            }
            batch.commit().map_err(backend)?;
            Ok(Ok(()))
        })
        .await
    }

    async fn compare_and_swap(
        &self,
        ns: &str,
        key: &str,
        expected: Option<Vec<u8>>,
        new: Vec<u8>,
    ) -> Result<Swap> {
        let k = meta_key(ns, key);
        // The writer thread runs jobs one at a time, so compare-then-write is atomic.
        self.write(move |ks, _| {
            let current = ks.meta.get(&k).map_err(backend)?;
            if current.as_deref() != expected.as_deref() {
                return Ok(Ok(Swap::Current(current.map(|v| v.to_vec()))));
            }
            ks.meta.insert(k, new).map_err(backend)?;
            Ok(Ok(Swap::Done))
        })
        .await
    }

    async fn compare_and_delete(&self, ns: &str, key: &str, expected: Vec<u8>) -> Result<Swap> {
        let k = meta_key(ns, key);
        // One writer job: compare-then-delete is atomic, as in `compare_and_swap`.
        self.write(move |ks, _| {
            let current = ks.meta.get(&k).map_err(backend)?;
            if current.as_deref() != Some(expected.as_slice()) {
                return Ok(Ok(Swap::Current(current.map(|v| v.to_vec()))));
            }
            ks.meta.remove(k).map_err(backend)?;
            Ok(Ok(Swap::Done))
        })
        .await
    }
}

#[async_trait]
impl ReviewStore for EmbeddedStore {
    async fn audit(&self, entry: AuditEntry) -> Result<()> {
        self.write(move |ks, state| {
            let n = ks.audit_counter.fetch_add(1, Ordering::Relaxed);
            let k = key(&[&entry.ts.to_be_bytes(), &n.to_be_bytes()]);
            let mut batch = ks.db.batch();
            batch.insert(&ks.audit, k, json(&entry)?);
            let (ek, ev) = ks.event(state, &crate::EventBody::Audit { entry })?;
            batch.insert(&ks.compliance, ek, ev);
            batch.commit().map_err(backend)?;
            Ok(Ok(()))
        })
        .await
    }

    async fn audit_query(&self, query: &AuditQuery) -> Result<Vec<AuditEntry>> {
        let query = query.clone();
        self.read(move |ks| {
            let lo = query.since.unwrap_or(0).to_be_bytes().to_vec();
            let hi = query.until.unwrap_or(u64::MAX).to_be_bytes().to_vec();
            let limit = query.limit.unwrap_or(100).clamp(1, 1000);
            let mut out = Vec::new();
            for g in ks.audit.range(lo..hi).rev() {
                let (_, v) = g.into_inner().map_err(backend)?;
                let e: AuditEntry = unjson(&v)?;
                if query.matches(&e) {
                    out.push(e);
                    if out.len() == limit {
                        break;
                    }
                }
            }
            Ok(out)
        })
        .await
    }

    async fn hold(&self, held: HeldMessage) -> Result<()> {
        self.write(move |ks, _| {
            let k = key(&[held.conv.as_str().as_bytes(), held.id.as_bytes()]);
            ks.held.insert(k, json(&held)?).map_err(backend)?;
            Ok(Ok(()))
        })
        .await
    }

    async fn held(&self, conv: &ConvId) -> Result<Vec<HeldMessage>> {
        let conv = conv.clone();
        self.read(move |ks| {
            let mut p = conv.as_str().as_bytes().to_vec();
            p.push(SEP);
            let mut out: Vec<HeldMessage> = Vec::new();
            for g in ks.held.prefix(&p) {
                let (_, v) = g.into_inner().map_err(backend)?;
                out.push(unjson(&v)?);
            }
            out.sort_by_key(|h| h.ts);
            Ok(out)
        })
        .await
    }

    async fn take_held(&self, conv: &ConvId, id: &str) -> Result<Option<HeldMessage>> {
        let k = key(&[conv.as_str().as_bytes(), id.as_bytes()]);
        self.write(move |ks, _| {
            let Some(v) = ks.held.get(&k).map_err(backend)? else {
                return Ok(Ok(None));
            };
            let held: HeldMessage = unjson(&v)?;
            ks.held.remove(k).map_err(backend)?;
            Ok(Ok(Some(held)))
        })
        .await
    }

    async fn compliance_events(
        &self,
        after: &crate::EventId,
        limit: usize,
    ) -> Result<crate::EventPage> {
        let after = after.clone();
        let limit = limit.clamp(1, crate::compliance::MAX_PAGE);
        self.read(move |ks| {
            // Below the floor nothing is in flight: every event there is durable and final.
            let horizon = ks.events.floor();
            let start = event_key(after.ts, after.n);
            let mut page = crate::EventPage {
                next: after.clone(),
                horizon,
                ..Default::default()
            };
            // Adds the events of one key after the cursor; false once the page is complete.
            let mut take = |k: &[u8], v: &[u8]| -> Result<bool> {
                let (ts, first) = (u64_at(k, 0)?, u64_at(k, 8)?);
                if ts >= horizon {
                    return Ok(false);
                }
                for (i, body) in events::decode(v)?.into_iter().enumerate() {
                    let n = first + i as u64;
                    if (ts, n) <= (after.ts, after.n) {
                        continue;
                    }
                    if page.events.len() == limit {
                        page.has_more = true;
                        return Ok(false);
                    }
                    let id = crate::EventId {
                        ts,
                        source: String::new(),
                        n,
                    };
                    page.next = id.clone();
                    page.events.push(crate::StoredEvent { id, body });
                }
                Ok(true)
            };
            // The cursor may point into a batch's record: its later events come first.
            let mut more = true;
            if let Some(g) = ks.compliance.range(..=start.clone()).next_back() {
                let (k, v) = g.into_inner().map_err(backend)?;
                if events::is_record(&v) {
                    more = take(&k, &v)?;
                }
            }
            let range = ks.compliance.range::<Vec<u8>, _>((
                std::ops::Bound::Excluded(start),
                std::ops::Bound::Unbounded,
            ));
            if more {
                for g in range {
                    let (k, v) = g.into_inner().map_err(backend)?;
                    if !take(&k, &v)? {
                        break;
                    }
                }
            }
            Ok(page)
        })
        .await
    }
}

fn member_put(group: &GroupId, m: &Member) -> crate::EventBody {
    crate::EventBody::Member {
        group: group.clone(),
        user: m.user.clone(),
        change: crate::MemberChange::Put,
        role: Some(m.role),
    }
}

fn member_removed(group: &GroupId, user: &UserId) -> crate::EventBody {
    crate::EventBody::Member {
        group: group.clone(),
        user: user.clone(),
        change: crate::MemberChange::Removed,
        role: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn conformance() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path(), EmbeddedOptions::default()).unwrap();
        crate::conformance::run_all(&store).await;
    }

    #[tokio::test]
    async fn survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let conv = ConvId::parse("dm:a:b").unwrap();
        {
            let store = EmbeddedStore::open(dir.path(), EmbeddedOptions::default()).unwrap();
            for i in 0..10 {
                store
                    .append(crate::conformance::new_msg(&conv, "a", &format!("c{i}")))
                    .await
                    .unwrap();
            }
            store.close().await.unwrap();
        }
        let store = EmbeddedStore::open(dir.path(), EmbeddedOptions::default()).unwrap();
        assert_eq!(store.last_seq(&conv).await.unwrap(), Seq(10));
        let again = store
            .append(crate::conformance::new_msg(&conv, "a", "c3"))
            .await
            .unwrap();
        assert!(again.duplicate);
        assert_eq!(again.message.seq, Seq(4));
        assert_eq!(
            store
                .history(&conv, None, 100)
                .await
                .unwrap()
                .messages
                .len(),
            10
        );
    }

    /// After a reopen, retries are duplicates both before the idempotency scan is done (the
    /// writers do the LSM lookup) and after (the scan's filter has every key on disk).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn retries_after_reopen_are_duplicates_before_and_after_the_scan() {
        let dir = tempfile::tempdir().unwrap();
        let convs: Vec<ConvId> = (0..5)
            .map(|i| ConvId::group(&GroupId::new(format!("f{i}"))))
            .collect();
        let msg = |i: usize| {
            crate::conformance::new_msg(&convs[i % 5], &format!("u{}", i % 3), &format!("k{i}"))
        };
        {
            let store = EmbeddedStore::open(dir.path(), EmbeddedOptions::default()).unwrap();
            for i in 0..300 {
                assert!(!store.append(msg(i)).await.unwrap().duplicate);
            }
            store.close().await.unwrap();
        }
        let store = EmbeddedStore::open(dir.path(), EmbeddedOptions::default()).unwrap();
        // Maybe before the scan is done.
        assert!(store.append(msg(7)).await.unwrap().duplicate);
        retries_are_duplicates_after_the_scan(&store, &convs, msg, "").await;
        store.close().await.unwrap();
    }

    /// Appends fresh messages to `convs` until every writer has its scanned filter, then
    /// checks that the 300 messages `msg` made (60 per conversation) are duplicates with
    /// their old seqs and that a new message follows everything appended.
    async fn retries_are_duplicates_after_the_scan(
        store: &EmbeddedStore,
        convs: &[ConvId],
        msg: impl Fn(usize) -> NewMessage,
        what: &str,
    ) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let mut fresh = 0;
        // A writer takes the scan's filter at its next batch: keep appending until all have.
        while store.ks.filters_complete.load(Ordering::Relaxed) < store.jobs.len() {
            assert!(
                std::time::Instant::now() < deadline,
                "the scan never completed"
            );
            for c in convs {
                let m = crate::conformance::new_msg(c, "late", &format!("fresh{fresh}"));
                assert!(!store.append(m).await.unwrap().duplicate);
                fresh += 1;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        for i in 0..300 {
            let again = store.append(msg(i)).await.unwrap();
            assert!(again.duplicate, "retry {i} {what}after the scan");
            assert_eq!(again.message.seq, Seq(i as u64 / 5 + 1));
        }
        let next = store
            .append(crate::conformance::new_msg(&convs[0], "u0", "new"))
            .await
            .unwrap();
        assert!(!next.duplicate);
        assert_eq!(next.message.seq.0, 60 + fresh / 5 + 1);
    }

    /// A data directory written before idempotency keys were hashed keeps its written-out
    /// keys: retries of its messages are still duplicates (before and after the startup
    /// scan, with two writers so the scan must file each legacy key with its writer), and
    /// new messages get new seqs and hashed keys.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn legacy_idempotency_keys_still_catch_retries() {
        let dir = tempfile::tempdir().unwrap();
        let convs: Vec<ConvId> = (0..5)
            .map(|i| ConvId::group(&GroupId::new(format!("l{i}"))))
            .collect();
        let msg = |i: usize| {
            crate::conformance::new_msg(&convs[i % 5], &format!("u{}", i % 3), &format!("k{i}"))
        };
        let two = EmbeddedOptions {
            writers: 2,
            ..EmbeddedOptions::default()
        };
        {
            let store = EmbeddedStore::open(dir.path(), two.clone()).unwrap();
            for i in 0..300 {
                assert!(!store.append(msg(i)).await.unwrap().duplicate);
            }
            store.close().await.unwrap();
        }
        {
            // Rewrite every key in the form an older chatd wrote.
            let ks = Keyspaces::open(dir.path()).unwrap();
            assert!(!ks.legacy_idem);
            let mut batch = ks.db.batch();
            let mut legacy = Vec::new();
            for i in 0..300 {
                let m = msg(i);
                let (conv, from) = (m.conv.as_str().as_bytes(), m.from.as_str().as_bytes());
                let hashed = idem_key::hashed(conv, from, m.client_msg_id.as_bytes());
                let seq = ks
                    .idempotency
                    .get(hashed)
                    .unwrap()
                    .expect("hashed key written");
                idem_key::legacy_into(&mut legacy, conv, from, m.client_msg_id.as_bytes());
                batch.remove(&ks.idempotency, hashed.to_vec());
                batch.insert(&ks.idempotency, legacy.clone(), seq);
            }
            batch.commit().unwrap();
            ks.db.persist(PersistMode::SyncAll).unwrap();
        }
        let store = EmbeddedStore::open(dir.path(), two).unwrap();
        assert!(store.ks.legacy_idem);
        assert!(store.append(msg(7)).await.unwrap().duplicate);
        retries_are_duplicates_after_the_scan(&store, &convs, msg, "of a legacy key ").await;
        let k = idem_key::hashed(convs[0].as_str().as_bytes(), b"u0", b"new");
        assert!(
            store.ks.idempotency.get(k).unwrap().is_some(),
            "new keys are hashed"
        );
        store.close().await.unwrap();
    }

    /// The min seq and the last seq survive a restart, also when retention deleted every
    /// message: the seqs continue where they were.
    #[tokio::test]
    async fn retention_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let conv = ConvId::parse("group:r").unwrap();
        {
            let store = EmbeddedStore::open(dir.path(), EmbeddedOptions::default()).unwrap();
            for i in 0..5 {
                store
                    .append(crate::conformance::new_msg(&conv, "a", &format!("c{i}")))
                    .await
                    .unwrap();
            }
            let all: Vec<Seq> = (1..=5).map(Seq).collect();
            assert_eq!(store.expire(&conv, &all, Seq(6)).await.unwrap(), 5);
            store.close().await.unwrap();
        }
        let store = EmbeddedStore::open(dir.path(), EmbeddedOptions::default()).unwrap();
        assert_eq!(store.min_seq(&conv).await.unwrap(), Seq(6));
        assert_eq!(store.last_seq(&conv).await.unwrap(), Seq(5));
        let next = store
            .append(crate::conformance::new_msg(&conv, "a", "fresh"))
            .await
            .unwrap();
        assert_eq!(next.message.seq, Seq(6));
        let again = store
            .append(crate::conformance::new_msg(&conv, "a", "c1"))
            .await
            .unwrap();
        assert!(again.duplicate);
        assert_eq!(again.message.seq, Seq(2));
    }

    #[test]
    fn composite_keys_sort_by_conversation_then_seq() {
        let a = msg_key("group:a", 2);
        let b = msg_key("group:a", 10);
        let c = msg_key("group:a-b", 1);
        assert!(a < b && b < c);
    }
}

#[cfg(test)]
mod ordering_tests {
    use super::*;

    /// Racing senders: the continuations of one conversation run in seq order.
    #[tokio::test]
    async fn append_then_runs_in_seq_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path(), EmbeddedOptions::default()).unwrap();
        let conv = ConvId::parse("group:race").unwrap();
        let order = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for i in 0..300 {
            let (s, c, o) = (store.clone(), conv.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let m = crate::conformance::new_msg(&c, &format!("u{}", i % 7), &format!("k{i}"));
                s.append_then(
                    m,
                    Box::new(move |a| o.lock().unwrap().push(a.message.seq.0)),
                )
                .await
                .unwrap();
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let got = order.lock().unwrap().clone();
        assert_eq!(got, (1..=300).collect::<Vec<_>>());
    }

    /// Appends batched together share one compliance record; pages of 7 cut through such
    /// records and still return every event exactly once, and ids continue after the last
    /// record's run when the store is reopened.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn batched_message_events_page_exactly_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path(), EmbeddedOptions::default()).unwrap();
        let mut tasks = Vec::new();
        for i in 0..200 {
            let s = store.clone();
            tasks.push(tokio::spawn(async move {
                let c = ConvId::group(&GroupId::new(format!("b{}", i % 9)));
                let mut m = crate::conformance::new_msg(&c, &format!("u{i}"), &format!("k{i}"));
                m.moderation = Some("allow".into());
                s.append(m).await.unwrap();
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let records = store
            .ks
            .compliance
            .iter()
            .map(|g| g.value().unwrap())
            .filter(|v| events::is_record(v) && events::count(v).unwrap() > 1)
            .count();
        assert!(records > 0, "some appends shared a batch");
        let read_all = |store: EmbeddedStore| async move {
            let mut cursor = crate::EventId::default();
            let mut got = Vec::new();
            loop {
                let p = store.compliance_events(&cursor, 7).await.unwrap();
                for e in &p.events {
                    assert!(e.id > cursor);
                    cursor = e.id.clone();
                }
                assert_eq!(p.next, cursor);
                got.extend(p.events);
                if !p.has_more {
                    return got;
                }
            }
        };
        let got = read_all(store.clone()).await;
        assert_eq!(got.len(), 200);
        let mut keys: Vec<(String, u64)> = got
            .iter()
            .map(|e| match &e.body {
                crate::EventBody::Message {
                    conv,
                    seq,
                    moderation,
                    ..
                } => {
                    assert_eq!(moderation.as_deref(), Some("allow"));
                    (conv.as_str().to_owned(), seq.0)
                }
                other => panic!("{other:?}"),
            })
            .collect();
        // Each conversation's events in seq order, none twice.
        for c in 0..9 {
            let conv = format!("group:b{c}");
            let seqs: Vec<u64> = keys.iter().filter(|k| k.0 == conv).map(|k| k.1).collect();
            assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
        }
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), 200);
        let last = got.last().unwrap().id.clone();
        store.close().await.unwrap();
        drop(store);

        let store = EmbeddedStore::open(dir.path(), EmbeddedOptions::default()).unwrap();
        let c = ConvId::group(&GroupId::new("b0"));
        store
            .append(crate::conformance::new_msg(&c, "late", "late"))
            .await
            .unwrap();
        let got = read_all(store.clone()).await;
        assert_eq!(got.len(), 201);
        assert!(got[200].id.n > last.n, "ids continue after the last run");
        store.close().await.unwrap();
    }

    /// Several writer threads: each conversation's seqs are dense and its continuations run
    /// in seq order; the writer count may change between runs (nothing depends on it on disk).
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn sharded_writers_keep_each_conversation_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let opts = |writers| EmbeddedOptions {
            writers,
            ..EmbeddedOptions::default()
        };
        let store = EmbeddedStore::open(dir.path(), opts(4)).unwrap();
        let convs: Vec<ConvId> = (0..8)
            .map(|i| ConvId::group(&GroupId::new(format!("c{i}"))))
            .collect();
        let order = Arc::new(std::sync::Mutex::new(std::collections::HashMap::<
            String,
            Vec<u64>,
        >::new()));
        let mut tasks = Vec::new();
        for i in 0..400 {
            let (s, o) = (store.clone(), order.clone());
            let c = convs[i % convs.len()].clone();
            tasks.push(tokio::spawn(async move {
                let m = crate::conformance::new_msg(&c, &format!("u{}", i % 5), &format!("k{i}"));
                s.append_then(
                    m,
                    Box::new(move |a| {
                        o.lock()
                            .unwrap()
                            .entry(a.message.conv.as_str().to_owned())
                            .or_default()
                            .push(a.message.seq.0)
                    }),
                )
                .await
                .unwrap();
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let got = order.lock().unwrap().clone();
        assert_eq!(got.len(), convs.len());
        for seqs in got.values() {
            assert_eq!(seqs, &(1..=50).collect::<Vec<_>>());
        }
        store.close().await.unwrap();
        drop(store);

        let store = EmbeddedStore::open(dir.path(), opts(3)).unwrap();
        for c in &convs {
            assert_eq!(store.last_seq(c).await.unwrap(), Seq(50));
        }
        // A retry of the first append to c0 (task 0: sender u0, key k0) is still a duplicate.
        let again = store
            .append(crate::conformance::new_msg(&convs[0], "u0", "k0"))
            .await
            .unwrap();
        assert!(again.duplicate);
        let next = store
            .append(crate::conformance::new_msg(&convs[0], "u0", "fresh"))
            .await
            .unwrap();
        assert_eq!(next.message.seq, Seq(51));
        store.close().await.unwrap();
    }
}
