//! Retention (定期清理): how long messages and attachments live, and the job that deletes
//! what is older.
//!
//! **Policies** are one record (namespace [`NS_POLICY`]) that company administrators set
//! through the admin API: a rule for the company, one per group kind (and `direct` for direct
//! conversations), one per conversation; the most specific rule that sets a field decides
//! it. A rule has a message age and an attachment age in seconds (0: keep forever; absent:
//! ask the level above; nothing at any level: keep forever, the default). Pinned messages and
//! the messages of announcement channels (groups whose posts need approval) may be exempt.
//!
//! **A pass** ([`run`]) visits every conversation ([`store::Store::conversation_ids`]):
//! 1. messages below the conversation's min seq that an earlier pass kept (a hold, an
//!    exemption) and that nothing keeps any more are deleted;
//! 2. from the min seq up, while messages are older than the message age, they are deleted in
//!    batches of `retention.batch` ([`store::Store::expire`]), the min seq rising with each
//!    batch, so the seqs at and above it stay gap-free; messages a hold or an exemption keeps
//!    stay below it;
//! 3. with an attachment age shorter than the message age, messages older than it lose their
//!    attachment's reference (the message stays; its file becomes unreadable once nothing
//!    references it);
//! 4. files whose last reference went are deleted (record, shares, and their content unless
//!    another upload has the same bytes); recalled content a hold kept is deleted once no
//!    hold covers it.
//!
//! Legal holds (`holds.rs`) are read once per pass. A **dry run** runs the same code without
//! writing. Every real pass writes audit entries (`retention.delete` per conversation,
//! `retention.run` with the totals) and the metrics. In a cluster one node at a time runs a
//! pass: a lease record ([`NS_LEASE`]) taken and renewed by compare-and-swap, which expires
//! if its node dies. References from messages to files are recorded when a message with an
//! attachment is sent ([`record_share`], namespace [`NS_FILE_REF`]).

use crate::directory::{from_json, get_json, scan_all, to_json};
use crate::error::ApiError;
use crate::files::{FileRecord, NS_FILE, NS_FILE_HELD, NS_FILE_SHARE};
use crate::holds::{ActiveHolds, NS_HELD_CONTENT};
use crate::membership::{GroupSettings, NS_GROUP_SETTINGS};
use crate::post_commit::Audit;
use crate::state::{now_ms, AppState};
use protocol::{ConvId, ConvKind, ErrorCode, GroupId, Message, MessageId, Seq, UserId};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;
use store::{MetaOp, Swap};

/// Namespace of the policy record (one key, `policies`).
pub const NS_POLICY: &str = "retention_policy";
const POLICY_KEY: &str = "policies";
/// Namespace of references from messages to files, keyed `file_id/conv/message_id`: a file
/// whose references are all gone is deleted by the next pass.
pub const NS_FILE_REF: &str = "file_ref";
/// Namespace of per-conversation attachment progress, keyed by conversation: the seq up to
/// which attachments older than the attachment age were dropped (JSON number).
const NS_CURSOR: &str = "retention_cursor";
/// Namespace of files that lost a reference outside a pass (a recall), keyed by file id:
/// the next pass deletes them if nothing references them any more.
const NS_CANDIDATE: &str = "retention_candidate";
/// Namespace of the pass lease (one key, `pass`): which node runs a pass, until when.
pub const NS_LEASE: &str = "retention_lease";

/// How long a lease lasts without renewal (`retention.lease_secs`); the pass renews it
/// after a fifth of that.
fn lease_ms(state: &AppState) -> u64 {
    state
        .config
        .retention
        .lease_secs
        .max(1)
        .saturating_mul(1000)
}
/// Most conversations with their own rule.
const MAX_CONV_RULES: usize = 10_000;
/// Longest age accepted (100 years), in seconds: ages are turned into milliseconds.
const MAX_AGE_SECS: u64 = 100 * 365 * 86_400;
/// The group kinds a rule may name, and `direct` for direct conversations.
pub const KINDS: &[&str] = &[
    "company",
    "department",
    "project",
    "study",
    "external",
    "direct",
];
/// Who the audit log names for a scheduled pass.
const SYSTEM_ACTOR: &str = "chatd:retention";

/// How long one kind of data lives. `None`: the level above decides; `Some(0)`: forever.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Seconds a message is kept after it was sent (0: forever; absent: the level above).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_age_secs: Option<u64>,
    /// Seconds an attachment stays readable after its message was sent (0: forever; absent:
    /// the level above). Never longer than the message: a deleted message takes its
    /// attachment's reference with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attachment_age_secs: Option<u64>,
}

fn yes() -> bool {
    true
}

/// Every retention rule of the company (one record).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Policies {
    /// The company default.
    #[serde(default)]
    pub company: Rule,
    /// Per group kind (`company`, `department`, `project`, `study`, `external`) and `direct`
    /// for direct conversations.
    #[serde(default)]
    pub kinds: BTreeMap<String, Rule>,
    /// Per conversation id (`group:<id>`, `dm:<a>:<b>`), at most 10,000.
    #[serde(default)]
    pub conversations: BTreeMap<String, Rule>,
    /// Pinned messages are never deleted while pinned (default true).
    #[serde(default = "yes")]
    pub exempt_pinned: bool,
    /// Messages of announcement channels (groups whose posts need approval) are never
    /// deleted (default true).
    #[serde(default = "yes")]
    pub exempt_announcements: bool,
    /// Who saved these policies (set by the server).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_by: Option<UserId>,
    /// When, ms since the epoch (set by the server).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<u64>,
}

impl Default for Policies {
    fn default() -> Self {
        Self {
            company: Rule::default(),
            kinds: BTreeMap::new(),
            conversations: BTreeMap::new(),
            exempt_pinned: true,
            exempt_announcements: true,
            updated_by: None,
            updated_at: None,
        }
    }
}

/// The ages that apply to one conversation, in seconds (`None`: forever).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Effective {
    /// Message age, seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_age_secs: Option<u64>,
    /// Attachment age, seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attachment_age_secs: Option<u64>,
}

impl Policies {
    /// Refuses unknown kinds, bad conversation ids, too many rules and absurd ages.
    pub fn validate(&self) -> Result<(), ApiError> {
        for kind in self.kinds.keys() {
            if !KINDS.contains(&kind.as_str()) {
                return Err(ApiError::bad_request(format!(
                    "kinds: unknown kind {kind:?}; use one of {}",
                    KINDS.join(", ")
                )));
            }
        }
        if self.conversations.len() > MAX_CONV_RULES {
            return Err(ApiError::bad_request(format!(
                "conversations: at most {MAX_CONV_RULES} rules"
            )));
        }
        for conv in self.conversations.keys() {
            ConvId::parse(conv).map_err(|_| {
                ApiError::bad_request(format!("conversations: {conv:?} is not a conversation id"))
            })?;
        }
        let rules = std::iter::once(&self.company)
            .chain(self.kinds.values())
            .chain(self.conversations.values());
        for r in rules {
            for age in [r.message_age_secs, r.attachment_age_secs]
                .into_iter()
                .flatten()
            {
                if age > MAX_AGE_SECS {
                    return Err(ApiError::bad_request(format!(
                        "ages are at most {MAX_AGE_SECS} seconds (100 years); 0 keeps forever"
                    )));
                }
            }
        }
        Ok(())
    }

    /// Whether any rule sets an age (without one, a pass has nothing to delete).
    pub fn deletes_anything(&self) -> bool {
        std::iter::once(&self.company)
            .chain(self.kinds.values())
            .chain(self.conversations.values())
            .any(|r| {
                r.message_age_secs.is_some_and(|a| a > 0)
                    || r.attachment_age_secs.is_some_and(|a| a > 0)
            })
    }

    /// The ages for `conv`, whose kind is `kind` (see [`KINDS`]): per field, the
    /// conversation's rule, else the kind's, else the company's; 0 or nothing: forever.
    pub fn effective(&self, conv: &ConvId, kind: &str) -> Effective {
        let levels = [
            self.conversations.get(conv.as_str()),
            self.kinds.get(kind),
            Some(&self.company),
        ];
        let pick = |f: fn(&Rule) -> Option<u64>| {
            levels
                .iter()
                .flatten()
                .find_map(|r| f(r))
                .filter(|age| *age > 0)
        };
        let message = pick(|r| r.message_age_secs);
        let attachment = pick(|r| r.attachment_age_secs);
        Effective {
            message_age_secs: message,
            // An attachment never outlives its message.
            attachment_age_secs: match (attachment, message) {
                (Some(a), Some(m)) => Some(a.min(m)),
                (a, _) => a,
            },
        }
    }
}

/// The stored policies (the defaults, which keep everything, when none were saved).
pub async fn policies(state: &AppState) -> Result<Policies, ApiError> {
    Ok(get_json(&state.meta, NS_POLICY, POLICY_KEY)
        .await?
        .unwrap_or_default())
}

/// Validates and saves the policies (audited `retention.policy`); returns what was stored.
pub async fn save_policies(
    state: &AppState,
    me: &UserId,
    mut p: Policies,
) -> Result<Policies, ApiError> {
    p.validate()?;
    p.updated_by = Some(me.clone());
    p.updated_at = Some(now_ms());
    let bytes = to_json(&p)?;
    state
        .meta
        .apply(vec![MetaOp::put(NS_POLICY, POLICY_KEY, bytes.clone())])
        .await?;
    let detail = String::from_utf8_lossy(&bytes)
        .chars()
        .take(4000)
        .collect::<String>();
    state
        .audit(
            Audit::new(now_ms(), me, "retention.policy")
                .detail(detail)
                .build(),
        )
        .await;
    Ok(p)
}

/// Key of a message's reference to a file in [`NS_FILE_REF`].
fn ref_key(file_id: &str, conv: &ConvId, message: &MessageId) -> String {
    format!("{file_id}/{conv}/{message}")
}

/// Records, in one write, that `file_id` was shared in `conv` (its members may read it) by
/// the message that will have server id `message` (retention's reference to the file).
pub async fn record_share(
    state: &AppState,
    file_id: &str,
    conv: &ConvId,
    message: &MessageId,
) -> Result<(), ApiError> {
    state
        .meta
        .apply(vec![
            MetaOp::put(NS_FILE_SHARE, &format!("{file_id}/{conv}"), Vec::new()),
            MetaOp::put(NS_FILE_REF, &ref_key(file_id, conv, message), Vec::new()),
        ])
        .await?;
    Ok(())
}

/// Drops the reference [`record_share`] wrote for a message that was not stored under that
/// id (a retry of an earlier send, or a failed append). Best effort: a reference left
/// behind only keeps the file longer.
pub async fn forget_share(state: &AppState, file_id: &str, conv: &ConvId, message: &MessageId) {
    let op = MetaOp::delete(NS_FILE_REF, &ref_key(file_id, conv, message));
    if let Err(e) = state.meta.apply(vec![op]).await {
        tracing::warn!(error = %e, "could not drop an unused file reference");
    }
}

/// Drops the file reference of a recalled message (its attachment is erased) and marks the
/// file for the next pass, which deletes it if nothing else references it. Best effort: a
/// failure only keeps the file.
pub async fn forget_recalled(state: &AppState, original: &Message) {
    let Some(a) = &original.attachment else {
        return;
    };
    let ops = vec![
        MetaOp::delete(
            NS_FILE_REF,
            &ref_key(&a.file_id, &original.conv, &original.id),
        ),
        MetaOp::put(NS_CANDIDATE, &a.file_id, Vec::new()),
    ];
    if let Err(e) = state.meta.apply(ops).await {
        tracing::warn!(error = %e, "could not drop a recalled message's file reference");
    }
}

/// What a pass did (or, in a dry run, would do) in one conversation.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ConvReport {
    /// The conversation.
    pub conv: ConvId,
    /// The ages that applied.
    pub rule: Effective,
    /// A legal hold keeps the whole conversation: nothing was looked at.
    pub held: bool,
    /// Messages deleted.
    pub messages: u64,
    /// The lowest and highest seq deleted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_seq: Option<Seq>,
    /// See `first_seq`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_seq: Option<Seq>,
    /// Messages old enough but kept (a hold on their sender, pinned, an announcement).
    pub kept: u64,
    /// The conversation's min seq after the pass.
    pub min_seq: Seq,
    /// Attachment references dropped (with their messages, or by the attachment age).
    pub attachments: u64,
    /// The size of those attachments, bytes.
    pub attachment_bytes: u64,
}

/// The whole pass.
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct Totals {
    /// Conversations where something was deleted.
    pub conversations: u64,
    /// Conversations a legal hold kept whole.
    pub held_conversations: u64,
    /// Messages deleted.
    pub messages: u64,
    /// Messages old enough but kept.
    pub kept: u64,
    /// Attachment references dropped.
    pub attachments: u64,
    /// Their size, bytes.
    pub attachment_bytes: u64,
    /// Files deleted (no reference left).
    pub files: u64,
    /// File content deleted from disk, bytes (content another upload shares stays).
    pub file_bytes: u64,
    /// Recalled messages' content kept by a hold, deleted now that no hold covers it.
    pub preserved: u64,
}

/// A pass's report: what it deleted, or what it would delete (dry run).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Report {
    /// The time the ages were measured from, ms since the epoch.
    pub as_of: u64,
    /// Whether nothing was written.
    pub dry_run: bool,
    /// Conversations where something was (or would be) deleted or kept, or a hold applies;
    /// at most `retention.report_conversations`.
    pub conversations: Vec<ConvReport>,
    /// Some conversations were left out of `conversations` (the totals count them).
    pub truncated: bool,
    /// Totals over every conversation.
    pub totals: Totals,
}

/// What to run.
#[derive(Debug, Clone)]
pub struct PassOptions {
    /// Measure ages from this time (ms since the epoch).
    pub as_of: u64,
    /// Write nothing; report what would be deleted.
    pub dry_run: bool,
    /// The policies to apply (a dry run may try unsaved ones).
    pub policies: Policies,
    /// Only these conversations (`None`: every conversation).
    pub only: Option<Vec<ConvId>>,
    /// Who asked (`None`: the schedule).
    pub actor: Option<UserId>,
}

/// One pass at a time per process (scheduled, on demand, dry runs alike): a dry run costs
/// the reads of a pass, so it is under the same budget.
static RUNNING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Runs a pass (or a dry run) now. `unavailable` (503, retry) when one is running on this
/// node, or (real passes) when another node holds the lease.
pub async fn run(state: &AppState, opts: PassOptions) -> Result<Report, ApiError> {
    let Ok(_running) = RUNNING.try_lock() else {
        crate::metrics::budget_refused("retention");
        return Err(ApiError::new(
            ErrorCode::Unavailable,
            "a retention pass or dry run is running on this node; retry when it is done",
        ));
    };
    let mut lease = if opts.dry_run {
        None
    } else {
        match Lease::acquire(state).await? {
            Some(l) => Some(l),
            None => {
                crate::metrics::budget_refused("retention");
                return Err(ApiError::new(
                    ErrorCode::Unavailable,
                    "another node is running a retention pass; retry later",
                ));
            }
        }
    };
    let started = std::time::Instant::now();
    let mut report = Report {
        as_of: opts.as_of,
        dry_run: opts.dry_run,
        conversations: Vec::new(),
        truncated: false,
        totals: Totals::default(),
    };
    let result = pass(state, &opts, lease.as_mut(), &mut report).await;
    if let Some(l) = lease {
        l.release(state).await;
    }
    if !opts.dry_run {
        // A pass that failed part way is audited with what it deleted until then.
        record(state, &opts, &report, result.as_ref().err()).await;
    }
    result?;
    if !opts.dry_run {
        tracing::info!(
            messages = report.totals.messages,
            conversations = report.totals.conversations,
            files = report.totals.files,
            ms = started.elapsed().as_millis() as u64,
            "retention pass done"
        );
    }
    Ok(report)
}

/// Audit entries and metrics of a real pass (`failed`: the error that stopped it part way).
/// A pass without any policy and with nothing to delete is a no-op: counted in the metrics,
/// not written to the audit log.
async fn record(state: &AppState, opts: &PassOptions, report: &Report, failed: Option<&ApiError>) {
    let t = &report.totals;
    crate::metrics::retention_deleted(t.messages, t.attachments, t.files);
    if failed.is_none() {
        crate::metrics::retention_succeeded();
    }
    if !opts.policies.deletes_anything() && t.files == 0 && t.preserved == 0 && failed.is_none() {
        return;
    }
    let actor = opts
        .actor
        .clone()
        .unwrap_or_else(|| UserId::new(SYSTEM_ACTOR));
    for c in &report.conversations {
        if c.messages == 0 && c.attachments == 0 {
            continue;
        }
        let range = match (c.first_seq, c.last_seq) {
            (Some(a), Some(b)) => format!(" (seqs {a}-{b})"),
            _ => String::new(),
        };
        let detail = format!(
            "messages {}{range}, kept {}, attachments {} ({} bytes), min_seq {}",
            c.messages, c.kept, c.attachments, c.attachment_bytes, c.min_seq
        );
        let entry = Audit::new(now_ms(), &actor, "retention.delete")
            .conv(c.conv.clone())
            .detail(detail)
            .build();
        state.audit(entry).await;
    }
    let mut detail = serde_json::to_string(t).unwrap_or_default();
    if report.truncated {
        detail.push_str(&format!(
            " (per-conversation entries: the first {} only)",
            report.conversations.len()
        ));
    }
    if let Some(e) = failed {
        detail.push_str(&format!(" FAILED part way: {}", e.message));
    }
    let entry = Audit::new(now_ms(), &actor, "retention.run")
        .detail(detail)
        .build();
    state.audit(entry).await;
}

/// Files whose references a pass dropped: file id -> how many.
type Candidates = HashMap<String, u64>;

async fn pass(
    state: &AppState,
    opts: &PassOptions,
    mut lease: Option<&mut Lease>,
    report: &mut Report,
) -> Result<(), ApiError> {
    let holds = crate::holds::active(state, opts.as_of).await?;
    let cap = state.config.retention.report_conversations;
    let mut candidates = Candidates::new();
    let nothing_to_do = !opts.policies.deletes_anything();
    let visit = |c: ConvReport, report: &mut Report| {
        let t = &mut report.totals;
        if c.messages > 0 || c.attachments > 0 {
            t.conversations += 1;
        }
        if c.held {
            t.held_conversations += 1;
        }
        t.messages += c.messages;
        t.kept += c.kept;
        t.attachments += c.attachments;
        t.attachment_bytes += c.attachment_bytes;
        if c.messages > 0 || c.attachments > 0 || c.kept > 0 || c.held {
            if report.conversations.len() < cap {
                report.conversations.push(c);
            } else {
                report.truncated = true;
            }
        }
    };
    if !nothing_to_do {
        match &opts.only {
            Some(list) => {
                for conv in list {
                    let c = conversation(state, opts, &holds, conv, &mut candidates, None).await?;
                    visit(c, report);
                }
            }
            None => {
                let mut after: Option<ConvId> = None;
                loop {
                    let page = state.store.conversation_ids(after.as_ref(), 200).await?;
                    for conv in &page {
                        if let Some(l) = lease.as_deref_mut() {
                            l.renew(state).await?;
                        }
                        let c = conversation(
                            state,
                            opts,
                            &holds,
                            conv,
                            &mut candidates,
                            lease.as_deref_mut(),
                        )
                        .await?;
                        visit(c, report);
                    }
                    match page.last() {
                        Some(last) if page.len() == 200 => after = Some(last.clone()),
                        _ => break,
                    }
                }
            }
        }
    }
    report.totals.preserved = preserved(state, opts, &holds, &mut candidates).await?;
    // Files that lost a reference to a recall since the last pass.
    let marked = scan_keys(state, NS_CANDIDATE, "").await?;
    for id in &marked {
        candidates.entry(id.clone()).or_default();
    }
    files(state, opts, &candidates, &mut report.totals).await?;
    if !opts.dry_run && !marked.is_empty() {
        let ops: Vec<MetaOp> = marked
            .iter()
            .map(|k| MetaOp::delete(NS_CANDIDATE, k))
            .collect();
        for chunk in ops.chunks(500) {
            state.meta.apply(chunk.to_vec()).await?;
        }
    }
    Ok(())
}

/// The kind name of a conversation for [`Policies::effective`] (see [`KINDS`]). Read from
/// the store, not the membership cache: a pass must not fill the cache with every group.
async fn kind_of(state: &AppState, conv: &ConvId) -> Result<String, ApiError> {
    let ConvKind::Group(g) = conv.kind() else {
        return Ok("direct".into());
    };
    let kind = state
        .store
        .group(&GroupId::new(g))
        .await?
        .map(|g| g.kind)
        .unwrap_or_default();
    Ok(serde_json::to_value(kind)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| "project".into()))
}

/// A group conversation's exemptions: its pinned seqs, and whether it is an announcement
/// channel (posts need approval).
async fn exemptions(state: &AppState, conv: &ConvId) -> Result<(HashSet<Seq>, bool), ApiError> {
    let ConvKind::Group(g) = conv.kind() else {
        return Ok((HashSet::new(), false));
    };
    let settings: Option<GroupSettings> = get_json(&state.meta, NS_GROUP_SETTINGS, g).await?;
    Ok(settings
        .map(|s| (s.pinned.into_iter().collect(), s.approval_required))
        .unwrap_or_default())
}

/// One conversation's part of a pass.
async fn conversation(
    state: &AppState,
    opts: &PassOptions,
    holds: &ActiveHolds,
    conv: &ConvId,
    candidates: &mut Candidates,
    lease: Option<&mut Lease>,
) -> Result<ConvReport, ApiError> {
    let kind = kind_of(state, conv).await?;
    let rule = opts.policies.effective(conv, &kind);
    let floor = state.store.min_seq(conv).await?;
    let mut c = ConvReport {
        conv: conv.clone(),
        rule,
        held: false,
        messages: 0,
        first_seq: None,
        last_seq: None,
        kept: 0,
        min_seq: floor,
        attachments: 0,
        attachment_bytes: 0,
    };
    if rule.message_age_secs.is_none() && rule.attachment_age_secs.is_none() {
        return Ok(c);
    }
    if holds.covers_conversation(conv) {
        c.held = true;
        return Ok(c);
    }
    let (pinned, announcements) = exemptions(state, conv).await?;
    let p = &opts.policies;
    let keeps = |m: &Message| {
        holds.covers_user(&m.from)
            || (p.exempt_pinned && pinned.contains(&m.seq))
            || (p.exempt_announcements && announcements)
    };
    let batch = state.config.retention.batch.max(1);
    let mut pass = ConvPass {
        state,
        opts,
        conv,
        candidates,
        c: &mut c,
        lease,
    };
    if let Some(age) = rule.message_age_secs {
        let cut = opts.as_of.saturating_sub(age.saturating_mul(1000));
        // 1. Messages kept below the min seq by an earlier pass, if nothing keeps them now.
        if floor.0 > 1 {
            let mut cursor = Seq(0);
            loop {
                let page = state.store.after(conv, cursor, batch).await?;
                let mut gone = Vec::new();
                let mut above = false;
                for m in page.messages {
                    if m.seq >= floor {
                        above = true;
                        break;
                    }
                    cursor = m.seq;
                    if m.ts < cut && !keeps(&m) {
                        gone.push(m);
                    } else if m.ts < cut {
                        pass.c.kept += 1;
                    }
                }
                pass.delete(gone, floor).await?;
                if above || !page.has_more {
                    break;
                }
            }
        }
        // 2. From the min seq up, while old enough: deleted batch by batch, the min seq
        //    rising past each batch.
        let mut cursor = Seq(floor.0.saturating_sub(1));
        let mut min = floor;
        loop {
            let page = state.store.after(conv, cursor, batch).await?;
            let mut gone = Vec::new();
            let mut young = false;
            for m in page.messages {
                if m.ts >= cut {
                    young = true;
                    break;
                }
                cursor = m.seq;
                min = Seq(m.seq.0 + 1);
                if keeps(&m) {
                    pass.c.kept += 1;
                } else {
                    gone.push(m);
                }
            }
            pass.delete(gone, min).await?;
            if young || !page.has_more {
                break;
            }
        }
        pass.c.min_seq = min;
    }
    // 3. Attachments older than their (shorter) age lose their reference.
    if let Some(age) = rule.attachment_age_secs {
        if rule.message_age_secs.is_none_or(|m| age < m) {
            let cut = opts.as_of.saturating_sub(age.saturating_mul(1000));
            let saved: Option<u64> = get_json(&state.meta, NS_CURSOR, conv.as_str()).await?;
            let mut cursor = Seq(saved.unwrap_or(0).max(pass.c.min_seq.0.saturating_sub(1)));
            let mut first_kept: Option<Seq> = None;
            loop {
                let page = state.store.after(conv, cursor, batch).await?;
                let mut young = false;
                let mut refs = Vec::new();
                for m in page.messages {
                    if m.ts >= cut {
                        young = true;
                        break;
                    }
                    cursor = m.seq;
                    if m.attachment.is_none() {
                        continue;
                    }
                    if keeps(&m) {
                        first_kept.get_or_insert(m.seq);
                    } else {
                        refs.push(m);
                    }
                }
                pass.drop_refs(&refs).await?;
                if young || !page.has_more {
                    break;
                }
            }
            let done_to = first_kept.map(|s| Seq(s.0 - 1)).unwrap_or(cursor);
            if !opts.dry_run && Some(done_to.0) != saved {
                state
                    .meta
                    .apply(vec![MetaOp::put(
                        NS_CURSOR,
                        conv.as_str(),
                        to_json(&done_to.0)?,
                    )])
                    .await?;
            }
        }
    }
    Ok(c)
}

/// The writes of one conversation's pass (none in a dry run) and their counts.
struct ConvPass<'a> {
    state: &'a AppState,
    opts: &'a PassOptions,
    conv: &'a ConvId,
    candidates: &'a mut Candidates,
    c: &'a mut ConvReport,
    /// The cluster lease of a real pass over every conversation, renewed between batches.
    lease: Option<&'a mut Lease>,
}

impl ConvPass<'_> {
    /// Deletes `gone` (all below `min`) and raises the min seq to `min`.
    async fn delete(&mut self, gone: Vec<Message>, min: Seq) -> Result<(), ApiError> {
        if gone.is_empty() && min <= self.c.min_seq {
            return Ok(());
        }
        if !self.opts.dry_run {
            if let Some(l) = self.lease.as_deref_mut() {
                l.renew(self.state).await?;
            }
            let seqs: Vec<Seq> = gone.iter().map(|m| m.seq).collect();
            self.state.store.expire(self.conv, &seqs, min).await?;
            test_batch_delay().await;
        }
        self.c.min_seq = self.c.min_seq.max(min);
        for m in &gone {
            self.c.messages += 1;
            self.c.first_seq = Some(self.c.first_seq.map_or(m.seq, |s| s.min(m.seq)));
            self.c.last_seq = Some(self.c.last_seq.map_or(m.seq, |s| s.max(m.seq)));
        }
        // The messages are gone: now their references (a reference left behind by a failure
        // here only keeps a file).
        self.drop_refs(&gone).await
    }

    /// Drops the file references of `messages` that exist, counting them.
    async fn drop_refs(&mut self, messages: &[Message]) -> Result<(), ApiError> {
        let mut ops = Vec::new();
        for m in messages {
            let Some(a) = &m.attachment else {
                continue;
            };
            let key = ref_key(&a.file_id, self.conv, &m.id);
            if self.state.meta.get(NS_FILE_REF, &key).await?.is_none() {
                continue;
            }
            self.c.attachments += 1;
            self.c.attachment_bytes += a.size;
            *self.candidates.entry(a.file_id.clone()).or_default() += 1;
            ops.push(MetaOp::delete(NS_FILE_REF, &key));
        }
        if !self.opts.dry_run && !ops.is_empty() {
            self.state.meta.apply(ops).await?;
        }
        Ok(())
    }
}

/// Step 4: the files whose last reference went.
async fn files(
    state: &AppState,
    opts: &PassOptions,
    candidates: &Candidates,
    totals: &mut Totals,
) -> Result<(), ApiError> {
    if candidates.is_empty() {
        return Ok(());
    }
    // Uploads of the same bytes share content: count the records per content once.
    let records: Vec<(String, FileRecord)> = scan_all(&state.meta, NS_FILE, "").await?;
    let mut per_content: HashMap<String, u64> = HashMap::new();
    for (_, r) in &records {
        *per_content.entry(r.sha256.clone()).or_default() += 1;
    }
    let mut ids: Vec<&String> = candidates.keys().collect();
    ids.sort();
    for id in ids {
        let dropped = candidates.get(id).copied().unwrap_or(0);
        let prefix = format!("{id}/");
        // In a dry run the dropped references are still there: the file would go if they
        // are all it has.
        let left = state
            .meta
            .scan(
                NS_FILE_REF,
                &prefix,
                "",
                (dropped as usize).saturating_add(1),
            )
            .await?
            .len() as u64;
        let left = if opts.dry_run {
            left.saturating_sub(dropped)
        } else {
            left
        };
        let held = !state
            .meta
            .scan(NS_FILE_HELD, &prefix, "", 1)
            .await?
            .is_empty();
        if left > 0 || held {
            continue;
        }
        let Some(record) = get_json::<FileRecord>(&state.meta, NS_FILE, id).await? else {
            continue;
        };
        totals.files += 1;
        let shared = per_content.get(&record.sha256).copied().unwrap_or(0) > 1;
        if let Some(n) = per_content.get_mut(&record.sha256) {
            *n = n.saturating_sub(1);
        }
        if !shared {
            totals.file_bytes += record.size;
        }
        if opts.dry_run {
            continue;
        }
        let mut ops = vec![MetaOp::delete(NS_FILE, id)];
        let shares = scan_keys(state, NS_FILE_SHARE, &prefix).await?;
        ops.extend(shares.iter().map(|k| MetaOp::delete(NS_FILE_SHARE, k)));
        state.meta.apply(ops).await?;
        if !shared {
            let path = crate::files::content_path(state, &record.sha256);
            match tokio::fs::remove_file(&path).await {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => tracing::warn!(file = %id, error = %e, "could not delete file content"),
            }
        }
    }
    Ok(())
}

/// Every key of `ns` under `prefix` (values ignored: shares are empty).
async fn scan_keys(state: &AppState, ns: &str, prefix: &str) -> Result<Vec<String>, ApiError> {
    let mut out = Vec::new();
    let mut pages = store::Pages::new(&*state.meta, ns, prefix, 500);
    while let Some(page) = pages.next().await? {
        out.extend(page.into_iter().map(|(k, _)| k));
    }
    Ok(out)
}

/// Recalled content kept by a hold that no hold covers any more: deleted with its file
/// reference (counted in a dry run). Returns how many.
async fn preserved(
    state: &AppState,
    opts: &PassOptions,
    holds: &ActiveHolds,
    candidates: &mut Candidates,
) -> Result<u64, ApiError> {
    let kept: Vec<(String, Message)> = scan_all(&state.meta, NS_HELD_CONTENT, "").await?;
    let mut gone = Vec::new();
    let mut n = 0u64;
    for (k, m) in kept
        .iter()
        .filter(|(_, m)| !holds.covers_message(&m.conv, &m.from))
    {
        n += 1;
        gone.push(MetaOp::delete(NS_HELD_CONTENT, k));
        if let Some(a) = &m.attachment {
            let key = ref_key(&a.file_id, &m.conv, &m.id);
            if state.meta.get(NS_FILE_REF, &key).await?.is_some() {
                *candidates.entry(a.file_id.clone()).or_default() += 1;
                gone.push(MetaOp::delete(NS_FILE_REF, &key));
            }
        }
    }
    if !opts.dry_run && !gone.is_empty() {
        for chunk in gone.chunks(500) {
            state.meta.apply(chunk.to_vec()).await?;
        }
    }
    Ok(n)
}

/// This process's name in the lease record.
fn node_name() -> &'static str {
    static NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NAME.get_or_init(|| format!("n{}", uuid::Uuid::new_v4().simple()))
}

/// The lease record: who runs a pass, until when.
#[derive(Debug, Serialize, Deserialize)]
struct LeaseRecord {
    node: String,
    until: u64,
}

/// A held lease: the bytes last written (the expected value of the next swap).
struct Lease {
    bytes: Vec<u8>,
    taken: u64,
}

impl Lease {
    /// Takes the lease if it is free or expired; `None` when another node holds it.
    async fn acquire(state: &AppState) -> Result<Option<Lease>, ApiError> {
        let current = state.meta.get(NS_LEASE, "pass").await?;
        let now = now_ms();
        if let Some(b) = &current {
            let held: LeaseRecord = from_json(b)?;
            if held.until > now && held.node != node_name() {
                return Ok(None);
            }
        }
        let bytes = to_json(&LeaseRecord {
            node: node_name().to_owned(),
            until: now + lease_ms(state),
        })?;
        match state
            .meta
            .compare_and_swap(NS_LEASE, "pass", current, bytes.clone())
            .await?
        {
            Swap::Done => Ok(Some(Lease { bytes, taken: now })),
            Swap::Current(_) => Ok(None),
        }
    }

    /// Extends the lease when it is getting old; fails the pass if another node took it.
    async fn renew(&mut self, state: &AppState) -> Result<(), ApiError> {
        let now = now_ms();
        if now.saturating_sub(self.taken) < lease_ms(state) / 5 {
            return Ok(());
        }
        let bytes = to_json(&LeaseRecord {
            node: node_name().to_owned(),
            until: now + lease_ms(state),
        })?;
        match state
            .meta
            .compare_and_swap(NS_LEASE, "pass", Some(self.bytes.clone()), bytes.clone())
            .await?
        {
            Swap::Done => {
                self.bytes = bytes;
                self.taken = now;
                Ok(())
            }
            Swap::Current(_) => Err(ApiError::new(
                ErrorCode::Unavailable,
                "the retention lease was lost to another node; the pass stopped",
            )),
        }
    }

    /// Gives the lease back (best effort: it expires anyway).
    async fn release(self, state: &AppState) {
        let free = LeaseRecord {
            node: node_name().to_owned(),
            until: 0,
        };
        let Ok(bytes) = to_json(&free) else {
            return;
        };
        if let Err(e) = state
            .meta
            .compare_and_swap(NS_LEASE, "pass", Some(self.bytes), bytes)
            .await
        {
            tracing::warn!(error = %e, "could not release the retention lease");
        }
    }
}

/// Test builds (`--features test-hooks`): a pause after each deleting batch
/// (`CHATD_TEST_RETENTION_BATCH_DELAY_MS`), so a test can kill a node mid-pass.
#[cfg(feature = "test-hooks")]
async fn test_batch_delay() {
    if let Some(ms) = std::env::var("CHATD_TEST_RETENTION_BATCH_DELAY_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
}

#[cfg(not(feature = "test-hooks"))]
async fn test_batch_delay() {}

/// Starts the scheduled pass (`retention.interval_secs` > 0): one every interval, the first
/// one an interval after start, whatever the chat activity. Without a policy a pass reads
/// the policy record and the holds, and stops.
pub fn spawn_scheduler(state: AppState) {
    let every = state.config.retention.interval_secs;
    if every == 0 {
        return;
    }
    tokio::spawn(async move {
        let period = Duration::from_secs(every);
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => scheduled(&state).await,
                _ = state.shutdown.cancelled() => return,
            }
        }
    });
}

async fn scheduled(state: &AppState) {
    let policies = match policies(state).await {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(error = %e.message, "retention: could not read the policies");
            return;
        }
    };
    let opts = PassOptions {
        as_of: now_ms(),
        dry_run: false,
        policies,
        only: None,
        actor: None,
    };
    match run(state, opts).await {
        Ok(_) => {}
        Err(e) if e.code == ErrorCode::Unavailable => {
            tracing::debug!(reason = %e.message, "retention pass skipped");
        }
        Err(e) => tracing::warn!(error = %e.message, "retention pass failed"),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn rule(m: Option<u64>, a: Option<u64>) -> Rule {
        Rule {
            message_age_secs: m,
            attachment_age_secs: a,
        }
    }

    #[test]
    fn the_most_specific_level_decides_each_field() {
        let conv = ConvId::parse("group:g1").unwrap();
        let mut p = Policies::default();
        assert_eq!(p.effective(&conv, "project"), Effective::default());
        p.company = rule(Some(100), Some(50));
        p.kinds.insert("project".into(), rule(Some(200), None));
        assert_eq!(
            p.effective(&conv, "project"),
            Effective {
                message_age_secs: Some(200),
                attachment_age_secs: Some(50)
            }
        );
        assert_eq!(p.effective(&conv, "study").message_age_secs, Some(100));
        // 0 keeps forever, whatever the levels above say.
        p.conversations
            .insert("group:g1".into(), rule(Some(0), None));
        assert_eq!(
            p.effective(&conv, "project"),
            Effective {
                message_age_secs: None,
                attachment_age_secs: Some(50)
            }
        );
    }

    #[test]
    fn an_attachment_never_outlives_its_message() {
        let conv = ConvId::parse("dm:a:b").unwrap();
        let mut p = Policies::default();
        p.kinds.insert("direct".into(), rule(Some(10), Some(99)));
        assert_eq!(p.effective(&conv, "direct").attachment_age_secs, Some(10));
    }

    #[test]
    fn bad_policies_are_refused() {
        let mut p = Policies::default();
        p.kinds.insert("galaxy".into(), Rule::default());
        assert!(p.validate().is_err());
        let mut p = Policies::default();
        p.conversations.insert("nope".into(), Rule::default());
        assert!(p.validate().is_err());
        let p = Policies {
            company: rule(Some(MAX_AGE_SECS + 1), None),
            ..Policies::default()
        };
        assert!(p.validate().is_err());
        let p: Policies = serde_json::from_str("{}").unwrap();
        assert!(p.exempt_pinned && p.exempt_announcements);
        assert!(p.validate().is_ok());
    }
}
