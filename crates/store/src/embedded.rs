//! The embedded backend: one redb file under the data directory.
//!
//! Why redb: a single-file, pure-Rust B-tree with ACID transactions, crash safety without a
//! write-ahead log to manage, MVCC reads that never block the writer, and a stable file
//! format (see docs/ARCHITECTURE.md for the comparison with fjall).
//!
//! All writes go through one writer thread. It takes every job that is waiting (up to
//! `max_batch`), runs them in one write transaction and commits once, with an fsync: that is
//! the group commit, so durability costs one fsync per batch, not per message. Each caller
//! gets its answer only after the commit returned. Reads run on tokio's blocking pool in
//! their own read transactions.

use crate::{
    Appended, Group, Member, NewMessage, Page, Result, Store, StoreError,
};
use async_trait::async_trait;
use protocol::{ConvId, ConvSummary, GroupId, Message, Seq, UserId};
use redb::{
    Database, ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction,
};
use serde::{de::DeserializeOwned, Serialize};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// Messages by (conv, seq): MessagePack of [`Message`].
const MESSAGES: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("messages");
/// Idempotency keys by (conv, sender, client_msg_id) -> seq. Kept as long as the message.
const IDEMPOTENCY: TableDefinition<(&str, &str, &str), u64> = TableDefinition::new("idempotency");
/// Per conversation: (last seq, last ts).
const CONV_META: TableDefinition<&str, (u64, u64)> = TableDefinition::new("conv_meta");
/// (user, conv) for the direct conversations a user takes part in.
const USER_CONVS: TableDefinition<(&str, &str), u8> = TableDefinition::new("user_convs");
/// Read cursors by (user, conv).
const READ: TableDefinition<(&str, &str), u64> = TableDefinition::new("read_cursors");
/// Known users: id -> first-seen time.
const USERS: TableDefinition<&str, u64> = TableDefinition::new("users");
/// Groups: id -> JSON of [`Group`].
const GROUPS: TableDefinition<&str, &[u8]> = TableDefinition::new("groups");
/// Members by (group, user): JSON of [`Member`].
const MEMBERS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("members");
/// Reverse index (user, group).
const USER_GROUPS: TableDefinition<(&str, &str), u8> = TableDefinition::new("user_groups");

/// A job run inside the batch's write transaction. It returns the function that delivers
/// its answer once the batch commits; an `Err` aborts the whole batch (every caller in it
/// then sees `Unavailable`, and nothing of the batch was written).
type Job = Box<dyn FnOnce(&WriteTransaction) -> Result<Finisher> + Send>;
type Finisher = Box<dyn FnOnce() + Send>;

/// Tuning of the embedded backend.
#[derive(Debug, Clone)]
pub struct EmbeddedOptions {
    /// Most jobs committed together in one transaction.
    pub max_batch: usize,
    /// Capacity of the queue in front of the writer thread (callers wait when it is full).
    pub queue: usize,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        Self {
            max_batch: 1024,
            queue: 8192,
        }
    }
}

/// The embedded store. Cheap to clone: clones share the database and the writer.
#[derive(Clone)]
pub struct EmbeddedStore {
    db: Arc<Database>,
    jobs: mpsc::Sender<Job>,
    writer: Arc<std::sync::Mutex<Option<std::thread::JoinHandle<()>>>>,
    stopping: Arc<AtomicBool>,
}

fn backend<E: std::fmt::Display>(e: E) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>> {
    rmp_serde::to_vec_named(v).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn decode<T: DeserializeOwned>(b: &[u8]) -> Result<T> {
    rmp_serde::from_slice(b).map_err(|e| StoreError::Corrupt(e.to_string()))
}

impl EmbeddedStore {
    /// Opens (or creates) `dir/chat.redb` and starts the writer thread.
    pub fn open(dir: &Path, opts: EmbeddedOptions) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(backend)?;
        let db = Database::create(dir.join("chat.redb")).map_err(backend)?;
        // Create every table up front so that read transactions never miss one.
        let txn = db.begin_write().map_err(backend)?;
        {
            txn.open_table(MESSAGES).map_err(backend)?;
            txn.open_table(IDEMPOTENCY).map_err(backend)?;
            txn.open_table(CONV_META).map_err(backend)?;
            txn.open_table(USER_CONVS).map_err(backend)?;
            txn.open_table(READ).map_err(backend)?;
            txn.open_table(USERS).map_err(backend)?;
            txn.open_table(GROUPS).map_err(backend)?;
            txn.open_table(MEMBERS).map_err(backend)?;
            txn.open_table(USER_GROUPS).map_err(backend)?;
        }
        txn.commit().map_err(backend)?;
        let db = Arc::new(db);
        let (tx, rx) = mpsc::channel::<Job>(opts.queue.max(1));
        let writer_db = db.clone();
        let max_batch = opts.max_batch.max(1);
        let stopping = Arc::new(AtomicBool::new(false));
        let stop = stopping.clone();
        let handle = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer_loop(&writer_db, rx, max_batch, &stop))
            .map_err(backend)?;
        Ok(Self {
            db,
            jobs: tx,
            writer: Arc::new(std::sync::Mutex::new(Some(handle))),
            stopping,
        })
    }

    /// Runs `f` in the writer's next batch and waits for the commit. `f` returns
    /// `Err` to abort the batch (storage failure) or `Ok(outcome)`, delivered after commit.
    async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&WriteTransaction) -> Result<Result<T>> + Send + 'static,
    ) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |txn| {
            let outcome = f(txn)?;
            Ok(Box::new(move || {
                let _ = tx.send(outcome);
            }))
        });
        self.jobs
            .send(job)
            .await
            .map_err(|_| StoreError::Unavailable("store is closed".into()))?;
        rx.await
            .map_err(|_| StoreError::Unavailable("write failed; nothing was stored".into()))?
    }

    /// Runs a read on the blocking pool.
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&ReadTransaction) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            let txn = db.begin_read().map_err(backend)?;
            f(&txn)
        })
        .await
        .map_err(|e| StoreError::Backend(format!("read task: {e}")))?
    }
}

fn writer_loop(db: &Database, mut rx: mpsc::Receiver<Job>, max_batch: usize, stop: &AtomicBool) {
    let mut batch: Vec<Job> = Vec::with_capacity(max_batch);
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < max_batch {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let count = batch.len();
        match run_batch(db, batch.drain(..)) {
            Ok(finishers) => finishers.into_iter().for_each(|f| f()),
            // Dropping the finishers tells every caller the write did not happen.
            Err(e) => tracing::error!(error = %e, jobs = count, "store batch failed"),
        }
        if stop.load(Ordering::SeqCst) {
            rx.close();
            // Fail whatever was queued after the stop request instead of leaving it waiting.
            while rx.try_recv().is_ok() {}
            break;
        }
    }
}

fn run_batch(db: &Database, jobs: impl Iterator<Item = Job>) -> Result<Vec<Finisher>> {
    let txn = db.begin_write().map_err(backend)?;
    let mut finishers = Vec::new();
    for job in jobs {
        finishers.push(job(&txn)?);
    }
    txn.commit().map_err(backend)?;
    Ok(finishers)
}

fn append_in(txn: &WriteTransaction, msg: NewMessage) -> Result<Result<Appended>> {
    let mut idem = txn.open_table(IDEMPOTENCY).map_err(backend)?;
    let mut messages = txn.open_table(MESSAGES).map_err(backend)?;
    let key = (msg.conv.as_str(), msg.from.as_str(), msg.client_msg_id.as_str());
    if let Some(seq) = idem.get(key).map_err(backend)? {
        let seq = seq.value();
        let stored = messages
            .get((msg.conv.as_str(), seq))
            .map_err(backend)?
            .ok_or_else(|| StoreError::Corrupt(format!("{} seq {seq} missing", msg.conv)))?;
        let message: Message = decode(stored.value())?;
        return Ok(Ok(Appended {
            message,
            duplicate: true,
        }));
    }
    let mut meta = txn.open_table(CONV_META).map_err(backend)?;
    let last = meta
        .get(msg.conv.as_str())
        .map_err(backend)?
        .map(|v| v.value().0)
        .unwrap_or(0);
    let seq = last + 1;
    idem.insert(key, seq).map_err(backend)?;
    meta.insert(msg.conv.as_str(), (seq, msg.ts)).map_err(backend)?;
    if !msg.participants.is_empty() {
        let mut uc = txn.open_table(USER_CONVS).map_err(backend)?;
        for p in &msg.participants {
            uc.insert((p.as_str(), msg.conv.as_str()), 0).map_err(backend)?;
        }
    }
    let conv = msg.conv.clone();
    let message = msg.into_message(Seq(seq));
    messages
        .insert((conv.as_str(), seq), encode(&message)?.as_slice())
        .map_err(backend)?;
    Ok(Ok(Appended {
        message,
        duplicate: false,
    }))
}

fn page_desc(txn: &ReadTransaction, conv: &str, before: Option<Seq>, limit: usize) -> Result<Page> {
    let table = txn.open_table(MESSAGES).map_err(backend)?;
    let upper = before.map(|s| s.0).unwrap_or(u64::MAX);
    let mut messages = Vec::with_capacity(limit.min(256));
    let mut has_more = false;
    for row in table.range((conv, 0)..(conv, upper)).map_err(backend)?.rev() {
        let (_, v) = row.map_err(backend)?;
        if messages.len() == limit {
            has_more = true;
            break;
        }
        messages.push(decode(v.value())?);
    }
    Ok(Page { messages, has_more })
}

fn page_asc(txn: &ReadTransaction, conv: &str, after: Seq, limit: usize) -> Result<Page> {
    let table = txn.open_table(MESSAGES).map_err(backend)?;
    let mut messages = Vec::with_capacity(limit.min(256));
    let mut has_more = false;
    let Some(start) = after.0.checked_add(1) else {
        return Ok(Page::default());
    };
    for row in table.range((conv, start)..=(conv, u64::MAX)).map_err(backend)? {
        let (_, v) = row.map_err(backend)?;
        if messages.len() == limit {
            has_more = true;
            break;
        }
        messages.push(decode(v.value())?);
    }
    Ok(Page { messages, has_more })
}

fn json<T: Serialize>(v: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(v).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn unjson<T: DeserializeOwned>(b: &[u8]) -> Result<T> {
    serde_json::from_slice(b).map_err(|e| StoreError::Corrupt(e.to_string()))
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn append(&self, msg: NewMessage) -> Result<Appended> {
        self.write(move |txn| append_in(txn, msg)).await
    }

    async fn history(&self, conv: &ConvId, before: Option<Seq>, limit: usize) -> Result<Page> {
        let conv = conv.clone();
        self.read(move |txn| page_desc(txn, conv.as_str(), before, limit))
            .await
    }

    async fn after(&self, conv: &ConvId, after: Seq, limit: usize) -> Result<Page> {
        let conv = conv.clone();
        self.read(move |txn| page_asc(txn, conv.as_str(), after, limit))
            .await
    }

    async fn last_seq(&self, conv: &ConvId) -> Result<Seq> {
        let conv = conv.clone();
        self.read(move |txn| {
            let meta = txn.open_table(CONV_META).map_err(backend)?;
            Ok(Seq(meta
                .get(conv.as_str())
                .map_err(backend)?
                .map(|v| v.value().0)
                .unwrap_or(0)))
        })
        .await
    }

    async fn conversations(&self, user: &UserId) -> Result<Vec<ConvSummary>> {
        let user = user.clone();
        self.read(move |txn| {
            let uc = txn.open_table(USER_CONVS).map_err(backend)?;
            let ug = txn.open_table(USER_GROUPS).map_err(backend)?;
            let meta = txn.open_table(CONV_META).map_err(backend)?;
            let read = txn.open_table(READ).map_err(backend)?;
            let u = user.as_str();
            let mut convs: Vec<ConvId> = Vec::new();
            for row in uc.range((u, "")..).map_err(backend)? {
                let (k, _) = row.map_err(backend)?;
                let (owner, conv) = k.value();
                if owner != u {
                    break;
                }
                if let Ok(c) = ConvId::parse(conv) {
                    convs.push(c);
                }
            }
            for row in ug.range((u, "")..).map_err(backend)? {
                let (k, _) = row.map_err(backend)?;
                let (owner, group) = k.value();
                if owner != u {
                    break;
                }
                convs.push(ConvId::group(&GroupId::new(group)));
            }
            let mut out = Vec::with_capacity(convs.len());
            for conv in convs {
                let (last_seq, last_ts) = meta
                    .get(conv.as_str())
                    .map_err(backend)?
                    .map(|v| v.value())
                    .unwrap_or((0, 0));
                let read_seq = read
                    .get((u, conv.as_str()))
                    .map_err(backend)?
                    .map(|v| v.value())
                    .unwrap_or(0)
                    .min(last_seq);
                out.push(ConvSummary {
                    conv,
                    last_seq: Seq(last_seq),
                    last_ts,
                    read_seq: Seq(read_seq),
                    unread: last_seq - read_seq,
                });
            }
            out.sort_by(|a, b| b.last_ts.cmp(&a.last_ts).then(a.conv.cmp(&b.conv)));
            Ok(out)
        })
        .await
    }

    async fn set_read(&self, user: &UserId, conv: &ConvId, seq: Seq) -> Result<Seq> {
        let (user, conv) = (user.clone(), conv.clone());
        self.write(move |txn| {
            let mut read = txn.open_table(READ).map_err(backend)?;
            let key = (user.as_str(), conv.as_str());
            let current = read.get(key).map_err(backend)?.map(|v| v.value()).unwrap_or(0);
            if seq.0 > current {
                read.insert(key, seq.0).map_err(backend)?;
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
        self.write(move |txn| {
            let mut users = txn.open_table(USERS).map_err(backend)?;
            if users.get(user.as_str()).map_err(backend)?.is_none() {
                users.insert(user.as_str(), now).map_err(backend)?;
            }
            Ok(Ok(()))
        })
        .await
    }

    async fn user_exists(&self, user: &UserId) -> Result<bool> {
        let user = user.clone();
        self.read(move |txn| {
            let users = txn.open_table(USERS).map_err(backend)?;
            Ok(users.get(user.as_str()).map_err(backend)?.is_some())
        })
        .await
    }

    async fn create_group(&self, group: Group, members: Vec<Member>) -> Result<()> {
        self.write(move |txn| {
            let mut groups = txn.open_table(GROUPS).map_err(backend)?;
            if groups.get(group.id.as_str()).map_err(backend)?.is_some() {
                return Ok(Err(StoreError::Conflict(format!("group {}", group.id))));
            }
            groups
                .insert(group.id.as_str(), json(&group)?.as_slice())
                .map_err(backend)?;
            let mut m = txn.open_table(MEMBERS).map_err(backend)?;
            let mut ug = txn.open_table(USER_GROUPS).map_err(backend)?;
            for member in &members {
                m.insert((group.id.as_str(), member.user.as_str()), json(member)?.as_slice())
                    .map_err(backend)?;
                ug.insert((member.user.as_str(), group.id.as_str()), 0)
                    .map_err(backend)?;
            }
            Ok(Ok(()))
        })
        .await
    }

    async fn group(&self, id: &GroupId) -> Result<Option<Group>> {
        let id = id.clone();
        self.read(move |txn| {
            let groups = txn.open_table(GROUPS).map_err(backend)?;
            match groups.get(id.as_str()).map_err(backend)? {
                Some(v) => Ok(Some(unjson(v.value())?)),
                None => Ok(None),
            }
        })
        .await
    }

    async fn members(&self, id: &GroupId) -> Result<Vec<Member>> {
        let id = id.clone();
        self.read(move |txn| {
            let m = txn.open_table(MEMBERS).map_err(backend)?;
            let g = id.as_str();
            let mut out = Vec::new();
            for row in m.range((g, "")..).map_err(backend)? {
                let (k, v) = row.map_err(backend)?;
                if k.value().0 != g {
                    break;
                }
                out.push(unjson(v.value())?);
            }
            Ok(out)
        })
        .await
    }

    async fn put_member(&self, id: &GroupId, member: Member) -> Result<()> {
        let id = id.clone();
        self.write(move |txn| {
            let groups = txn.open_table(GROUPS).map_err(backend)?;
            if groups.get(id.as_str()).map_err(backend)?.is_none() {
                return Ok(Err(StoreError::NotFound(format!("group {id}"))));
            }
            let mut m = txn.open_table(MEMBERS).map_err(backend)?;
            let mut ug = txn.open_table(USER_GROUPS).map_err(backend)?;
            m.insert((id.as_str(), member.user.as_str()), json(&member)?.as_slice())
                .map_err(backend)?;
            ug.insert((member.user.as_str(), id.as_str()), 0)
                .map_err(backend)?;
            Ok(Ok(()))
        })
        .await
    }

    async fn remove_member(&self, id: &GroupId, user: &UserId) -> Result<bool> {
        let (id, user) = (id.clone(), user.clone());
        self.write(move |txn| {
            let mut m = txn.open_table(MEMBERS).map_err(backend)?;
            let mut ug = txn.open_table(USER_GROUPS).map_err(backend)?;
            let existed = m
                .remove((id.as_str(), user.as_str()))
                .map_err(backend)?
                .is_some();
            ug.remove((user.as_str(), id.as_str())).map_err(backend)?;
            Ok(Ok(existed))
        })
        .await
    }

    async fn user_groups(&self, user: &UserId) -> Result<Vec<GroupId>> {
        let user = user.clone();
        self.read(move |txn| {
            let ug = txn.open_table(USER_GROUPS).map_err(backend)?;
            let u = user.as_str();
            let mut out = Vec::new();
            for row in ug.range((u, "")..).map_err(backend)? {
                let (k, _) = row.map_err(backend)?;
                let (owner, group) = k.value();
                if owner != u {
                    break;
                }
                out.push(GroupId::new(group));
            }
            Ok(out)
        })
        .await
    }

    async fn close(&self) -> Result<()> {
        // A last job, queued behind everything already sent, tells the writer to stop after
        // its batch commits; then we wait for the thread to end.
        self.stopping.store(true, Ordering::SeqCst);
        let _ = self.write(|_| Ok(Ok(()))).await;
        let handle = self.writer.lock().ok().and_then(|mut h| h.take());
        if let Some(handle) = handle {
            tokio::task::spawn_blocking(move || handle.join())
                .await
                .map_err(|e| StoreError::Backend(format!("join writer: {e}")))?
                .map_err(|_| StoreError::Backend("store writer panicked".into()))?;
        }
        Ok(())
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
    }
}
