//! Compliance export (会话存档): the event log read as records, the compliance role, and the
//! batch export job.
//!
//! The store keeps the log (`store::compliance`): one event per stored message, recall,
//! membership change and audit entry, written in the same atomic step as the change, in
//! commit order, readable only below a horizon where nothing can still appear. Here an event
//! becomes a [`Record`]: its opaque cursor, its commit time, the event, and for a message the
//! message as stored now. `GET /v1/admin/compliance/events` pages records as JSONL; the export
//! job writes them in batches of zip files (JSONL, CSV, a manifest with counts and SHA-256),
//! optionally encrypted to the company's age X25519 key. The job's progress (the cursor after
//! the last batch, the batch count) is one record written by compare-and-swap after each
//! batch, so a restart resumes where the last completed batch ended: a batch that was written
//! but not recorded is written again under the same name, with the same events.

use crate::config::{ComplianceConfig, Config};
use crate::error::ApiError;
use crate::state::AppState;
use futures_util::StreamExt;
use protocol::{ErrorCode, Message, Seq, UserId};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use store::{EventBody, EventId, MetaStore, ReviewStore, Store, Swap};
use tokio::sync::Semaphore;

/// Version of the batch layout (see docs/OPERATIONS.md, *Compliance export*).
pub const FORMAT: u32 = 1;

/// Most events per export batch and per page (the store's page limit).
pub const MAX_EVENTS: usize = store::compliance::MAX_PAGE;

/// Messages read at once while a page is resolved.
const MESSAGE_READS: usize = 16;

/// The meta record of the export's progress.
const NS: &str = "compliance_export";
const KEY: &str = "state";

/// File name prefix of export batches.
const PREFIX: &str = "chatd-compliance-";

/// The opaque form of a cursor: hex of `ts.n.source`.
pub fn encode_cursor(id: &EventId) -> String {
    hex::encode(format!("{}.{}.{}", id.ts, id.n, id.source))
}

/// Parses a cursor made by [`encode_cursor`]; `""` is the start of the log.
pub fn decode_cursor(s: &str) -> Result<EventId, ApiError> {
    if s.is_empty() {
        return Ok(EventId::default());
    }
    let bad = || ApiError::bad_request("after: not a cursor of this API");
    let text = hex::decode(s)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(bad)?;
    let mut parts = text.splitn(3, '.');
    let ts = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
    let n = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
    let source = parts.next().ok_or_else(bad)?.to_owned();
    if n > u64::MAX >> 1 || ts > u64::MAX >> 1 {
        return Err(bad());
    }
    Ok(EventId { ts, source, n })
}

/// Whether the user holds the compliance role: a company administrator or one of
/// `compliance.officers`.
pub fn is_officer(config: &Config, user: &UserId) -> bool {
    config.auth.admins.iter().any(|a| a == user.as_str())
        || config
            .compliance
            .officers
            .iter()
            .any(|o| o == user.as_str())
}

/// `forbidden` unless the user holds the compliance role.
pub fn require_officer(state: &AppState, user: &UserId) -> Result<(), ApiError> {
    if is_officer(&state.config, user) {
        Ok(())
    } else {
        Err(ApiError::forbidden(
            "only company administrators and compliance officers may do this",
        ))
    }
}

/// One event as exported: one JSONL line, one CSV row.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Record {
    /// The cursor after this event (pass it as `after` to continue from here).
    pub cursor: String,
    /// Commit time, ms since the epoch (the message's own `ts` is when it was accepted).
    pub commit_ts: u64,
    /// The event (`kind`: `message`, `recall`, `member`, `audit`, and its fields).
    #[serde(flatten)]
    pub event: EventBody,
    /// For a message: the message as stored when it was exported (a recalled one is a
    /// tombstone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<Message>,
    /// For a message: true when it is no longer stored (expired or deleted).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub message_gone: bool,
    /// For a message recalled while a legal hold covered it: `message` is the copy the hold
    /// kept (its content as sent), not the tombstone.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub held_copy: bool,
}

/// A page of records.
#[derive(Debug, Clone)]
pub struct RecordPage {
    /// The records, oldest first.
    pub records: Vec<Record>,
    /// Where the next page starts.
    pub next: EventId,
    /// Whether more final events follow.
    pub has_more: bool,
    /// Every event committed before this time (ms) is final and was in reach of this page.
    pub horizon: u64,
}

/// The stores a page is read from (the node's, or those the CLI opened).
#[derive(Clone, Copy)]
pub struct Sources<'a> {
    /// Messages.
    pub store: &'a dyn Store,
    /// The event log.
    pub review: &'a dyn ReviewStore,
    /// Records: the copies a legal hold kept of recalled messages (`crate::holds`).
    pub meta: &'a dyn MetaStore,
}

impl<'a> Sources<'a> {
    /// The node's stores.
    pub fn of(state: &'a AppState) -> Self {
        Self {
            store: &*state.store,
            review: &*state.review,
            meta: &*state.meta,
        }
    }
}

/// The permits of concurrent page reads on this node (`compliance.max_concurrent_reads`).
fn read_permits(cfg: &ComplianceConfig) -> &'static Semaphore {
    static PERMITS: OnceLock<Semaphore> = OnceLock::new();
    PERMITS.get_or_init(|| Semaphore::new(cfg.max_concurrent_reads.max(1)))
}

/// The copy a legal hold kept of message `seq` of `conv` when it was recalled, if any.
async fn held_copy(
    meta: &dyn MetaStore,
    conv: &protocol::ConvId,
    seq: Seq,
) -> Result<Option<Message>, ApiError> {
    let key = crate::holds::held_content_key(conv, seq);
    match meta.get(crate::holds::NS_HELD_CONTENT, &key).await? {
        Some(bytes) => Ok(Some(crate::directory::from_json(&bytes)?)),
        None => Ok(None),
    }
}

/// Reads up to `limit` records after `after`, refusing with 503 when
/// `compliance.max_concurrent_reads` pages are already being read.
///
/// The read slot comes back with the page: the caller holds it until the page has been sent,
/// so the slots bound the memory of pages in flight to slow readers too.
pub async fn page_now(
    state: &AppState,
    after: &EventId,
    limit: usize,
) -> Result<(RecordPage, ReadSlot), ApiError> {
    let max = state.config.compliance.max_page.clamp(1, MAX_EVENTS);
    if limit == 0 || limit > max {
        return Err(ApiError::bad_request(format!(
            "limit: between 1 and {max} (compliance.max_page)"
        )));
    }
    let Ok(permit) = read_permits(&state.config.compliance).try_acquire() else {
        crate::metrics::budget_refused("compliance_read");
        return Err(ApiError::new(
            ErrorCode::Unavailable,
            "compliance reads are busy on this node; retry shortly",
        ));
    };
    let page = read_page(Sources::of(state), after, limit).await?;
    Ok((page, ReadSlot { _permit: permit }))
}

/// One of the node's `compliance.max_concurrent_reads` page-read slots, free again when
/// dropped.
pub struct ReadSlot {
    _permit: tokio::sync::SemaphorePermit<'static>,
}

/// Reads up to `limit` records after `after`: the store's final events, each message
/// event with its message as stored now.
pub async fn read_page(
    src: Sources<'_>,
    after: &EventId,
    limit: usize,
) -> Result<RecordPage, ApiError> {
    let page = src.review.compliance_events(after, limit).await?;
    let records: Vec<Result<Record, ApiError>> = futures_util::stream::iter(page.events)
        .map(move |e| async move {
            let (message, message_gone, held_copy) = match &e.body {
                EventBody::Message { conv, seq, .. } => {
                    let found = src
                        .store
                        .after(conv, Seq(seq.0.saturating_sub(1)), 1)
                        .await?
                        .messages
                        .into_iter()
                        .find(|m| m.seq == *seq);
                    let gone = found.is_none();
                    // Recalled under a legal hold: the hold kept the content for exactly
                    // this reader.
                    let recalled = found
                        .as_ref()
                        .is_none_or(|m| m.kind == protocol::MessageKind::Recalled);
                    let kept = if recalled {
                        held_copy(src.meta, conv, *seq).await?
                    } else {
                        None
                    };
                    match kept {
                        Some(copy) => (Some(copy), gone, true),
                        None => (found, gone, false),
                    }
                }
                _ => (None, false, false),
            };
            Ok(Record {
                cursor: encode_cursor(&e.id),
                commit_ts: e.id.ts,
                event: e.body,
                message,
                message_gone,
                held_copy,
            })
        })
        .buffered(MESSAGE_READS)
        .collect()
        .await;
    Ok(RecordPage {
        records: records.into_iter().collect::<Result<_, _>>()?,
        next: page.next,
        has_more: page.has_more,
        horizon: page.horizon,
    })
}

/// The records as JSONL (one JSON object per line, each line ending with `\n`).
pub fn jsonl(records: &[Record]) -> Result<Vec<u8>, ApiError> {
    let mut out = Vec::new();
    for r in records {
        serde_json::to_writer(&mut out, r)
            .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?;
        out.push(b'\n');
    }
    Ok(out)
}

/// The CSV columns, in order (docs/OPERATIONS.md explains each).
pub const CSV_COLUMNS: &[&str] = &[
    "cursor",
    "commit_ts",
    "kind",
    "conv",
    "seq",
    "message_id",
    "from",
    "client_msg_id",
    "moderation",
    "message_kind",
    "message_ts",
    "body",
    "attachment_name",
    "attachment_file_id",
    "message_gone",
    "group",
    "user",
    "change",
    "role",
    "actor",
    "action",
    "target",
    "audit_message",
    "rule",
    "category",
    "detail",
    "held_copy",
];

/// A cell as written to CSV: text a spreadsheet would run as a formula (starting with `=`,
/// `+`, `-`, `@`, tab or carriage return) gets a leading `'`; the JSONL keeps the exact text.
fn cell(s: &str) -> String {
    match s.chars().next() {
        Some('=' | '+' | '-' | '@' | '\t' | '\r') => format!("'{s}"),
        _ => s.to_owned(),
    }
}

fn enum_name<T: Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        _ => String::new(),
    }
}

/// One CSV row per record, under a header of [`CSV_COLUMNS`].
pub fn csv(records: &[Record]) -> Result<Vec<u8>, ApiError> {
    let err = |e: csv::Error| ApiError::new(ErrorCode::Internal, e.to_string());
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(CSV_COLUMNS).map_err(err)?;
    for r in records {
        let mut row: BTreeMap<&str, String> = BTreeMap::new();
        row.insert("cursor", r.cursor.clone());
        row.insert("commit_ts", r.commit_ts.to_string());
        row.insert("kind", r.event.kind().to_owned());
        match &r.event {
            EventBody::Message {
                conv,
                seq,
                id,
                from,
                client_msg_id,
                moderation,
            } => {
                row.insert("conv", conv.to_string());
                row.insert("seq", seq.0.to_string());
                row.insert("message_id", id.to_string());
                row.insert("from", from.to_string());
                row.insert("client_msg_id", client_msg_id.clone());
                row.insert("moderation", moderation.clone().unwrap_or_default());
                row.insert("message_gone", r.message_gone.to_string());
                row.insert("held_copy", r.held_copy.to_string());
                if let Some(m) = &r.message {
                    row.insert("message_kind", enum_name(&m.kind));
                    row.insert("message_ts", m.ts.to_string());
                    row.insert("body", m.body.clone());
                    if let Some(a) = &m.attachment {
                        row.insert("attachment_name", a.name.clone());
                        row.insert("attachment_file_id", a.file_id.clone());
                    }
                }
            }
            EventBody::Recall {
                conv,
                seq,
                id,
                from,
            } => {
                row.insert("conv", conv.to_string());
                row.insert("seq", seq.0.to_string());
                row.insert("message_id", id.to_string());
                row.insert("from", from.to_string());
            }
            EventBody::Member {
                group,
                user,
                change,
                role,
            } => {
                row.insert("group", group.to_string());
                row.insert("user", user.to_string());
                row.insert("change", enum_name(change));
                row.insert("role", role.as_ref().map(enum_name).unwrap_or_default());
            }
            EventBody::Audit { entry } => {
                row.insert(
                    "conv",
                    entry
                        .conv
                        .as_ref()
                        .map(|c| c.to_string())
                        .unwrap_or_default(),
                );
                row.insert("actor", entry.actor.to_string());
                row.insert("action", entry.action.clone());
                row.insert(
                    "target",
                    entry
                        .target
                        .as_ref()
                        .map(|t| t.to_string())
                        .unwrap_or_default(),
                );
                row.insert("audit_message", entry.message.clone().unwrap_or_default());
                row.insert("rule", entry.rule.clone().unwrap_or_default());
                row.insert("category", entry.category.clone().unwrap_or_default());
                row.insert("detail", entry.detail.clone().unwrap_or_default());
            }
        }
        let cells: Vec<String> = CSV_COLUMNS
            .iter()
            .map(|c| row.get(c).map(|v| cell(v)).unwrap_or_default())
            .collect();
        w.write_record(&cells).map_err(err)?;
    }
    w.into_inner()
        .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))
}

// ---- Batch export ----

/// A file inside a batch, with its size and checksum.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct ManifestFile {
    /// Name inside the zip.
    pub path: String,
    /// Size in bytes.
    pub bytes: u64,
    /// SHA-256, hex.
    pub sha256: String,
}

/// `manifest.json` of a batch.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct Manifest {
    /// [`FORMAT`].
    pub format: u32,
    /// The chatd version that wrote it.
    pub chatd_version: String,
    /// The job that wrote it.
    pub job: String,
    /// The batch's number (1, 2, ... across every job of this deployment).
    pub batch: u64,
    /// When it was written, ms since the epoch.
    pub created_at_ms: u64,
    /// The cursor the batch starts after (`""`: the start of the log).
    pub after: String,
    /// The cursor of its last event.
    pub last: String,
    /// Events in the batch.
    pub events: u64,
    /// Events per kind.
    pub counts: BTreeMap<String, u64>,
    /// `events.jsonl` and `events.csv`.
    pub files: Vec<ManifestFile>,
}

/// The state of an export job.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Writing batches (or interrupted, and resumed when a node starts).
    Running,
    /// Caught up with the log as it was final while it ran.
    Done,
    /// Stopped by an error (`error`); the next start continues from the last batch.
    Failed,
}

/// One export job.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct Job {
    /// Its id.
    pub id: String,
    /// Who started it.
    pub started_by: String,
    /// When, ms since the epoch.
    pub started_at: u64,
    /// When it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<u64>,
    /// Running, done or failed.
    pub state: JobState,
    /// Batches it wrote.
    pub batches: u64,
    /// Events it exported.
    pub events: u64,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The export's durable progress (`GET /v1/admin/compliance/exports`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct ExportStatus {
    /// The cursor after the last exported event (`""`: nothing exported yet). The next job
    /// starts there.
    pub cursor: String,
    /// Batch files written so far; the next one is numbered one more.
    pub batches: u64,
    /// Events exported so far.
    pub events: u64,
    /// The current or last job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<Job>,
    /// Whether batches are encrypted (`compliance.public_key` is set).
    #[serde(default)]
    pub encrypted: bool,
}

/// What went wrong with an export.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// Reading the log or the stores.
    #[error("{0}")]
    Api(#[from] ApiError),
    /// The store.
    #[error("store: {0}")]
    Store(#[from] store::StoreError),
    /// Writing a batch file.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        source: std::io::Error,
    },
    /// Building the zip.
    #[error("zip: {0}")]
    Zip(#[from] zip::result::ZipError),
    /// Encrypting.
    #[error("encryption: {0}")]
    Encrypt(String),
    /// Another process moved the export on: this one stops.
    #[error("another process advanced the export; this one stopped")]
    Superseded,
    /// The stored progress record is unreadable.
    #[error("export state: {0}")]
    State(serde_json::Error),
}

fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> ExportError {
    let context = context.into();
    move |source| ExportError::Io { context, source }
}

/// Where batches are written (`compliance.dir`, or `compliance/` in the data directory).
pub fn export_dir(config: &Config) -> PathBuf {
    if config.compliance.dir.as_os_str().is_empty() {
        config.server.data_dir.join("compliance")
    } else {
        config.compliance.dir.clone()
    }
}

/// The configured age recipient, if any; an invalid key is an error (the node refuses to
/// start with one, see [`check_config`]).
pub fn recipient(cfg: &ComplianceConfig) -> Result<Option<age::x25519::Recipient>, String> {
    let key = cfg.public_key.trim();
    if key.is_empty() {
        return Ok(None);
    }
    key.parse::<age::x25519::Recipient>()
        .map(Some)
        .map_err(|e| format!("compliance.public_key is not an age X25519 recipient: {e}"))
}

/// Refuses a configuration the export cannot run with (checked at start-up).
pub fn check_config(config: &Config) -> Result<(), String> {
    recipient(&config.compliance)?;
    let b = config.compliance.batch_events;
    if b == 0 || b > MAX_EVENTS {
        return Err(format!(
            "compliance.batch_events must be between 1 and {MAX_EVENTS}, not {b}"
        ));
    }
    Ok(())
}

/// The file name of batch `number`.
pub fn batch_name(number: u64, encrypted: bool) -> String {
    format!(
        "{PREFIX}{number:08}.zip{}",
        if encrypted { ".age" } else { "" }
    )
}

fn sha256_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// Builds a batch's zip (`events.jsonl`, `events.csv`, `manifest.json`) in memory.
pub fn build_zip(
    job: &str,
    number: u64,
    after: &str,
    records: &[Record],
) -> Result<(Vec<u8>, Manifest), ExportError> {
    let jsonl = jsonl(records)?;
    let csv = csv(records)?;
    let mut counts = BTreeMap::new();
    for r in records {
        *counts.entry(r.event.kind().to_owned()).or_insert(0u64) += 1;
    }
    let manifest = Manifest {
        format: FORMAT,
        chatd_version: env!("CARGO_PKG_VERSION").to_owned(),
        job: job.to_owned(),
        batch: number,
        created_at_ms: crate::clock::now_ms(),
        after: after.to_owned(),
        last: records.last().map(|r| r.cursor.clone()).unwrap_or_default(),
        events: records.len() as u64,
        counts,
        files: vec![
            ManifestFile {
                path: "events.jsonl".into(),
                bytes: jsonl.len() as u64,
                sha256: sha256_hex(&jsonl),
            },
            ManifestFile {
                path: "events.csv".into(),
                bytes: csv.len() as u64,
                sha256: sha256_hex(&csv),
            },
        ],
    };
    let manifest_json = serde_json::to_vec_pretty(&manifest).map_err(ExportError::State)?;
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    for (name, bytes) in [
        ("events.jsonl", &jsonl),
        ("events.csv", &csv),
        ("manifest.json", &manifest_json),
    ] {
        zip.start_file(name, opts)?;
        zip.write_all(bytes).map_err(io_err(name))?;
    }
    Ok((zip.finish()?.into_inner(), manifest))
}

/// Encrypts `plain` to `to` (the age format, binary).
pub fn encrypt(plain: &[u8], to: &age::x25519::Recipient) -> Result<Vec<u8>, ExportError> {
    let e = |e: &dyn std::fmt::Display| ExportError::Encrypt(e.to_string());
    let encryptor = age::Encryptor::with_recipients(std::iter::once(to as &dyn age::Recipient))
        .map_err(|x| e(&x))?;
    let mut out = Vec::with_capacity(plain.len() + 256);
    let mut w = encryptor.wrap_output(&mut out).map_err(|x| e(&x))?;
    w.write_all(plain).map_err(|x| e(&x))?;
    w.finish().map_err(|x| e(&x))?;
    Ok(out)
}

/// Writes `bytes` to `dir/name` through a `.partial` file, synced and renamed, so the name
/// holds a whole batch or nothing (an earlier copy of the same batch is replaced).
fn write_file(dir: &Path, name: &str, bytes: &[u8]) -> Result<PathBuf, ExportError> {
    std::fs::create_dir_all(dir).map_err(io_err(format!("creating {}", dir.display())))?;
    let path = dir.join(name);
    let partial = dir.join(format!("{name}.partial"));
    {
        let mut f = std::fs::File::create(&partial)
            .map_err(io_err(format!("creating {}", partial.display())))?;
        f.write_all(bytes)
            .map_err(io_err(format!("writing {}", partial.display())))?;
        f.sync_all()
            .map_err(io_err(format!("syncing {}", partial.display())))?;
    }
    std::fs::rename(&partial, &path).map_err(io_err(format!("renaming {}", path.display())))?;
    if let Ok(d) = std::fs::File::open(dir) {
        // The rename is durable once the directory is synced.
        let _ = d.sync_all();
    }
    Ok(path)
}

/// The stores and settings an export runs with (the node's, or the CLI's).
#[derive(Clone, Copy)]
pub struct Exporter<'a> {
    /// Where events and messages are read.
    pub sources: Sources<'a>,
    /// Where the progress record lives.
    pub meta: &'a dyn MetaStore,
    /// The configuration.
    pub config: &'a Config,
}

impl Exporter<'_> {
    /// The progress record and its stored bytes (for the compare-and-swap).
    pub async fn status(&self) -> Result<(ExportStatus, Option<Vec<u8>>), ExportError> {
        let raw = self.meta.get(NS, KEY).await?;
        let mut status: ExportStatus = match &raw {
            Some(b) => serde_json::from_slice(b).map_err(ExportError::State)?,
            None => ExportStatus::default(),
        };
        status.encrypted = !self.config.compliance.public_key.trim().is_empty();
        Ok((status, raw))
    }

    /// Writes `new` in place of `expected`; `Superseded` when another process changed it.
    async fn save(
        &self,
        expected: Option<Vec<u8>>,
        new: &ExportStatus,
    ) -> Result<Vec<u8>, ExportError> {
        let bytes = serde_json::to_vec(new).map_err(ExportError::State)?;
        match self
            .meta
            .compare_and_swap(NS, KEY, expected, bytes.clone())
            .await?
        {
            Swap::Done => Ok(bytes),
            Swap::Current(_) => Err(ExportError::Superseded),
        }
    }

    /// Records a new running job unless one is running; returns the status either way and
    /// whether this call started it.
    pub async fn begin(&self, by: &str) -> Result<(ExportStatus, bool), ExportError> {
        let (mut status, raw) = self.status().await?;
        if status
            .job
            .as_ref()
            .is_some_and(|j| j.state == JobState::Running)
        {
            return Ok((status, false));
        }
        status.job = Some(Job {
            id: format!("x{}", uuid::Uuid::now_v7().simple()),
            started_by: by.to_owned(),
            started_at: crate::clock::now_ms(),
            finished_at: None,
            state: JobState::Running,
            batches: 0,
            events: 0,
            error: None,
        });
        self.save(raw, &status).await?;
        Ok((status, true))
    }

    /// Runs the recorded job until it is caught up (or fails, or `stop` says so), one batch
    /// at a time; each batch is on disk before the progress that counts it is recorded.
    pub async fn run(&self, stop: &tokio_util::sync::CancellationToken) -> Result<(), ExportError> {
        let dir = export_dir(self.config);
        let to = recipient(&self.config.compliance).map_err(ExportError::Encrypt)?;
        let batch_events = self.config.compliance.batch_events.clamp(1, MAX_EVENTS);
        loop {
            if stop.is_cancelled() {
                return Ok(());
            }
            let (mut status, raw) = self.status().await?;
            let Some(mut job) = status.job.clone().filter(|j| j.state == JobState::Running) else {
                return Ok(());
            };
            let after = decode_cursor(&status.cursor)?;
            // The job's pages count towards `compliance.max_concurrent_reads` with the API's
            // (the job waits its turn; the semaphore is never closed).
            let permit = read_permits(&self.config.compliance).acquire().await.ok();
            let page = read_page(self.sources, &after, batch_events).await?;
            drop(permit);
            let finished = !page.has_more;
            if !page.records.is_empty() {
                let number = status.batches + 1;
                let (zip, manifest) = build_zip(&job.id, number, &status.cursor, &page.records)?;
                let bytes = match &to {
                    Some(r) => encrypt(&zip, r)?,
                    None => zip,
                };
                let name = batch_name(number, to.is_some());
                let d = dir.clone();
                tokio::task::spawn_blocking(move || write_file(&d, &name, &bytes))
                    .await
                    .map_err(|e| ExportError::Encrypt(format!("writer task: {e}")))??;
                status.batches = number;
                status.events += manifest.events;
                job.batches += 1;
                job.events += manifest.events;
                tracing::info!(job = %job.id, batch = number, events = manifest.events,
                    "compliance export: batch written");
            }
            status.cursor = encode_cursor(&page.next.clone().max(after.clone()));
            if finished || (page.records.is_empty() && page.next == after) {
                job.state = JobState::Done;
                job.finished_at = Some(crate::clock::now_ms());
            }
            let done = job.state == JobState::Done;
            status.job = Some(job);
            self.save(raw, &status).await?;
            if done {
                crate::metrics::compliance_export_succeeded();
                return Ok(());
            }
            test_batch_delay().await;
        }
    }

    /// Marks the running job failed with `error` (best effort).
    async fn fail(&self, error: &ExportError) {
        let Ok((mut status, raw)) = self.status().await else {
            return;
        };
        if let Some(job) = status.job.as_mut().filter(|j| j.state == JobState::Running) {
            job.state = JobState::Failed;
            job.finished_at = Some(crate::clock::now_ms());
            job.error = Some(error.to_string());
            if let Err(e) = self.save(raw, &status).await {
                tracing::warn!(error = %e, "compliance export: could not record the failure");
            }
        }
    }
}

/// Test builds (`--features test-hooks`): a pause between batches
/// (`CHATD_TEST_EXPORT_BATCH_DELAY_MS`), so a test can stop the node mid-export.
#[cfg(feature = "test-hooks")]
async fn test_batch_delay() {
    if let Some(ms) = std::env::var("CHATD_TEST_EXPORT_BATCH_DELAY_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
    }
}

#[cfg(not(feature = "test-hooks"))]
async fn test_batch_delay() {}

/// Whether this process runs an export job now (one at a time).
static RUNNING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Runs the recorded job on this node in the background, unless this process already runs
/// one. Returns whether it was started here.
pub fn spawn_job(state: &AppState) -> bool {
    let Ok(guard) = RUNNING.try_lock() else {
        return false;
    };
    run_job(state.clone(), guard);
    true
}

/// Runs the recorded job in the background, holding this process's job slot until it ends.
fn run_job(state: AppState, guard: tokio::sync::MutexGuard<'static, ()>) {
    tokio::spawn(async move {
        let _guard = guard;
        let ex = Exporter {
            sources: Sources::of(&state),
            meta: &*state.meta,
            config: &state.config,
        };
        match ex.run(&state.shutdown).await {
            Ok(()) => {}
            Err(ExportError::Superseded) => {
                tracing::info!("compliance export: another node continues the job");
            }
            Err(e) => {
                tracing::error!(error = %e, "compliance export failed");
                ex.fail(&e).await;
            }
        }
    });
}

/// Starts an export job (or finds the running one) and runs it here if no job runs in this
/// process. `conflict` when a job is already running in this process.
pub async fn start(state: &AppState, by: &UserId) -> Result<ExportStatus, ApiError> {
    let ex = Exporter {
        sources: Sources::of(state),
        meta: &*state.meta,
        config: &state.config,
    };
    // The slot first: a job recorded as running must have a process that runs it (a job
    // recorded while this process's previous one was ending would otherwise wait for a
    // restart).
    let Ok(guard) = RUNNING.try_lock() else {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            "an export is already running on this node; see GET /v1/admin/compliance/exports",
        ));
    };
    let (status, _) = ex.begin(by.as_str()).await.map_err(export_api_error)?;
    run_job(state.clone(), guard);
    Ok(status)
}

/// The export's progress.
pub async fn status(state: &AppState) -> Result<ExportStatus, ApiError> {
    let ex = Exporter {
        sources: Sources::of(state),
        meta: &*state.meta,
        config: &state.config,
    };
    Ok(ex.status().await.map_err(export_api_error)?.0)
}

fn export_api_error(e: ExportError) -> ApiError {
    match e {
        ExportError::Api(a) => a,
        ExportError::Store(s) => s.into(),
        ExportError::Superseded => {
            ApiError::new(ErrorCode::Conflict, "the export changed meanwhile; retry")
        }
        other => ApiError::new(ErrorCode::Internal, other.to_string()),
    }
}

/// At start-up: resumes a job a stopped process left running.
pub async fn resume_at_start(state: &AppState) {
    let ex = Exporter {
        sources: Sources::of(state),
        meta: &*state.meta,
        config: &state.config,
    };
    match ex.status().await {
        Ok((s, _)) if s.job.as_ref().is_some_and(|j| j.state == JobState::Running) => {
            tracing::info!("compliance export: resuming the interrupted job");
            spawn_job(state);
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "compliance export: could not read its state"),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn cursors_round_trip_and_bad_ones_are_refused() {
        let id = EventId {
            ts: 1_700_000_000_123,
            source: "ab12".into(),
            n: 42,
        };
        assert_eq!(decode_cursor(&encode_cursor(&id)).unwrap(), id);
        let end = EventId::end_of(7);
        assert_eq!(decode_cursor(&encode_cursor(&end)).unwrap(), end);
        assert_eq!(decode_cursor("").unwrap(), EventId::default());
        for bad in ["zz", "00", &hex::encode("1.x.a"), &hex::encode("12")] {
            assert_eq!(decode_cursor(bad).unwrap_err().code, ErrorCode::BadRequest);
        }
    }

    #[test]
    fn csv_cells_never_start_a_formula() {
        assert_eq!(cell("=1+1"), "'=1+1");
        assert_eq!(cell("-2"), "'-2");
        assert_eq!(cell("hello"), "hello");
    }
}
