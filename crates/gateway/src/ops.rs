//! What the server does with each client frame: one function per frame type, called from the
//! session's reader in frame order. Each returns the reply frame (if any); failures become an
//! `error` frame with the request's `rid`.

use crate::budget::{self, ReplyBytes};
use crate::error::ApiError;
use crate::hub::{SessionHandle, SharedFrame};
use crate::moderation::Restriction;
use crate::state::{now_ms, Access, AppState};
use governor::clock::Clock;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use moderation::{Action, Penalty};
use protocol::{
    ClientFrame, ConvId, ErrorCode, EventKind, Message, MessageId, MessageKind, ModerationNote,
    Rid, SendFrame, Seq, ServerFrame, SyncedConv, Target, UserId,
};
use router::Envelope;
use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use store::NewMessage;
use tokio::sync::Semaphore;

/// Per-session state the handlers use.
pub struct SessionCtx {
    /// The session.
    pub handle: Arc<SessionHandle>,
    limiter: DefaultDirectRateLimiter,
    /// The session's one slot for a heavy reply (`sync`, `history`, `conversations`): held
    /// until the reply has been written, so a client that pipelines them and reads slowly
    /// has at most one in memory.
    heavy: Arc<Semaphore>,
    /// Rate and coalescing state of `read` and `typing`, made at the first one.
    ephemeral: Mutex<Option<Box<Ephemeral>>>,
}

/// Pending `read` cursors and recent `typing` notices of one session.
struct Ephemeral {
    /// `limits.ephemeral_per_sec`: notices this session makes others receive.
    limiter: DefaultDirectRateLimiter,
    /// The newest cursor per conversation not yet stored and published.
    reads: HashMap<ConvId, Seq>,
    /// When pending cursors may go out next (the limiter said no before then).
    due: Option<tokio::time::Instant>,
    /// When this session last published `typing` per conversation.
    typing: HashMap<ConvId, tokio::time::Instant>,
}

/// Most conversations with a pending `read` cursor per session; a cursor for yet another
/// conversation is dropped (clients resend cursors, and 256 is far beyond a person's pace).
const MAX_PENDING_READS: usize = 256;
/// Most conversations whose last `typing` time a session remembers.
const MAX_TYPING: usize = 64;

impl SessionCtx {
    /// Context for a session, with its send-rate limiter.
    pub fn new(handle: Arc<SessionHandle>, per_sec: u32, burst: u32) -> Self {
        Self {
            handle,
            limiter: limiter(per_sec, burst),
            heavy: Arc::new(Semaphore::new(1)),
            ephemeral: Mutex::new(None),
        }
    }

    fn user(&self) -> &UserId {
        &self.handle.user
    }

    fn check_rate(&self) -> Result<(), ApiError> {
        self.limiter.check().map_err(|_| {
            ApiError::new(
                ErrorCode::RateLimited,
                "too many messages; slow down and retry",
            )
        })
    }

    /// Runs `f` on the session's ephemeral state (never across an `.await`).
    fn ephemeral<T>(&self, state: &AppState, f: impl FnOnce(&mut Ephemeral) -> T) -> T {
        let mut guard = self.ephemeral.lock().unwrap_or_else(|e| e.into_inner());
        let e = guard.get_or_insert_with(|| {
            let l = &state.config.limits;
            Box::new(Ephemeral {
                limiter: limiter(l.ephemeral_per_sec, l.ephemeral_burst),
                reads: HashMap::new(),
                due: None,
                typing: HashMap::new(),
            })
        });
        f(e)
    }

    /// When pending `read` cursors should be flushed with [`flush_reads`], if any wait.
    pub fn reads_due(&self) -> Option<tokio::time::Instant> {
        let guard = self.ephemeral.lock().unwrap_or_else(|e| e.into_inner());
        guard.as_ref().and_then(|e| e.due)
    }
}

fn limiter(per_sec: u32, burst: u32) -> DefaultDirectRateLimiter {
    let per_sec = NonZeroU32::new(per_sec.max(1)).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(burst.max(1)).unwrap_or(NonZeroU32::MIN);
    RateLimiter::direct_with_clock(
        Quota::per_second(per_sec).allow_burst(burst),
        shared_clock(),
    )
}

/// One clock for every session's rate limiter: building a clock reads the CPU's timestamp
/// counter calibration (a `CPUID`, a VM exit on virtual machines) that cost ~5 µs per
/// connect (docs/LOADTEST.md).
fn shared_clock() -> governor::clock::DefaultClock {
    static CLOCK: std::sync::OnceLock<governor::clock::DefaultClock> = std::sync::OnceLock::new();
    CLOCK
        .get_or_init(governor::clock::DefaultClock::default)
        .clone()
}

/// Handles one decoded client frame and returns the reply, if the frame has one, wrapped for
/// the session's queue: a heavy reply (`synced`, `history`, `conversations`) carries its
/// memory budget until it is written.
pub async fn handle(
    state: &AppState,
    ctx: &SessionCtx,
    frame: ClientFrame,
) -> Option<Arc<SharedFrame>> {
    let rid = frame.rid().cloned();
    let _timer = crate::metrics::command(&frame);
    let result: Result<Option<Arc<SharedFrame>>, ApiError> = match frame {
        ClientFrame::Send(req) => crate::metrics::timed_send(send(state, ctx, req))
            .await
            .map(|r| r.map(SharedFrame::new)),
        ClientFrame::History {
            rid,
            conv,
            before_seq,
            limit,
        } => history(state, ctx, rid, conv, before_seq, limit).await,
        ClientFrame::Sync {
            rid,
            cursors,
            limit,
        } => sync(state, ctx, rid, cursors, limit).await,
        ClientFrame::Conversations { rid } => conversations(state, ctx, rid).await,
        ClientFrame::Read { rid: _, conv, seq } => read(state, ctx, conv, seq).await,
        ClientFrame::Typing { conv } => typing(state, ctx, conv).await,
        ClientFrame::Recall { rid, conv, seq } => {
            crate::messages::recall(state, ctx.user(), &conv, seq)
                .await
                .map(|()| Some(SharedFrame::new(ServerFrame::Recalled { rid, conv, seq })))
        }
        ClientFrame::Ping { rid } => Ok(Some(SharedFrame::new(ServerFrame::Pong { rid }))),
    };
    match result {
        Ok(reply) => reply,
        Err(e) => Some(SharedFrame::new(e.frame(rid))),
    }
}

fn validate_send(state: &AppState, req: &SendFrame) -> Result<(), ApiError> {
    let limits = &state.config.limits;
    if req.client_msg_id.is_empty() || req.client_msg_id.len() > 64 {
        return Err(ApiError::bad_request("client_msg_id must be 1 to 64 bytes"));
    }
    let chars = req.body.chars().count();
    if chars > limits.max_body_chars {
        return Err(ApiError::bad_request(format!(
            "body is {chars} characters; the limit is {}",
            limits.max_body_chars
        )));
    }
    match req.kind {
        MessageKind::Text => {
            if req.body.trim().is_empty() {
                return Err(ApiError::bad_request(
                    "a text message needs a non-empty body",
                ));
            }
            if req.attachment.is_some() {
                return Err(ApiError::bad_request("a text message has no attachment"));
            }
        }
        MessageKind::Recalled => {
            return Err(ApiError::bad_request(
                "kind: recalled is not sent; use the recall frame",
            ));
        }
        MessageKind::Image | MessageKind::File => {
            let Some(a) = &req.attachment else {
                return Err(ApiError::bad_request("images and files need an attachment"));
            };
            if a.file_id.is_empty() || a.file_id.len() > 128 || a.name.chars().count() > 255 {
                return Err(ApiError::bad_request(
                    "attachment.file_id must be 1 to 128 bytes and attachment.name at most 255 characters",
                ));
            }
        }
    }
    if req.mentions.len() > limits.max_mentions {
        return Err(ApiError::bad_request(format!(
            "at most {} mentions",
            limits.max_mentions
        )));
    }
    if req.mentions.iter().any(|m| !m.is_valid()) {
        return Err(ApiError::bad_request("mentions must be user ids"));
    }
    if req.reply_to == Some(Seq(0)) {
        return Err(ApiError::bad_request("reply_to must be a seq of 1 or more"));
    }
    Ok(())
}

async fn send(
    state: &AppState,
    ctx: &SessionCtx,
    req: SendFrame,
) -> Result<Option<ServerFrame>, ApiError> {
    validate_send(state, &req)?;
    ctx.check_rate()?;
    let me = ctx.user();
    let (conv, access) = match &req.to {
        Target::User(other) => {
            if !other.is_valid() {
                return Err(ApiError::bad_request("to.user is not a valid user id"));
            }
            if !state.user_exists(other).await? {
                return Err(ApiError::not_found(format!("no user {other}")));
            }
            let conv = ConvId::direct(me, other);
            let access = Access::Direct([me.clone(), other.clone()]);
            (conv, access)
        }
        Target::Group(g) => {
            if !g.is_valid() {
                return Err(ApiError::bad_request("to.group is not a valid group id"));
            }
            let conv = ConvId::group(g);
            let access = state.access(me, &conv).await?;
            if let Access::Group(view) = &access {
                check_group_posting(view, me)?;
            }
            (conv, access)
        }
    };
    check_restriction(state, me)?;
    crate::messages::check_mentions(&access, me, &req.mentions)?;
    let mut req = req;
    if let Some(a) = &req.attachment {
        // The server's record of the file replaces the client's size and type.
        let a = crate::files::check_attachment(state, me, a).await?;
        if req.kind == MessageKind::Image && !a.mime.starts_with("image/") {
            return Err(ApiError::bad_request(
                "attachment: an image message needs a file of an image/* type",
            ));
        }
        req.attachment = Some(a);
    }
    let external =
        matches!(&access, Access::Group(g) if g.group.kind == store::GroupKind::External);
    let ctx_m = moderation::CheckContext {
        group: None,
        has_external_member: external,
    };
    let mut verdict = state.moderation.check(&req.body, &ctx_m);
    if let Some(a) = &req.attachment {
        // File names pass the filter too; the stricter verdict wins.
        let name_verdict = state.moderation.check(&a.name, &ctx_m);
        if name_verdict.action > verdict.action {
            verdict = name_verdict;
        }
    }
    crate::metrics::moderation_verdict(action_name(verdict.action), verdict.category.as_deref());
    let note = moderate(state, ctx, &conv, &req, &verdict).await?;
    let body = verdict.text_to_deliver(&req.body).to_owned();
    if verdict.action == Action::Review {
        let held = store::HeldMessage {
            id: format!("r{}", uuid::Uuid::now_v7().simple()),
            conv: conv.clone(),
            from: me.clone(),
            client_msg_id: req.client_msg_id.clone(),
            kind: req.kind,
            body,
            attachment: req.attachment,
            mentions: req.mentions,
            reply_to: req.reply_to,
            ts: now_ms(),
            category: verdict.category.clone(),
            rule: verdict.rule.clone(),
        };
        let (id, ts) = (held.id.clone(), held.ts);
        if let Some(a) = &held.attachment {
            crate::files::record_held(state, &a.file_id, &held.conv).await?;
        }
        state.review.hold(held).await?;
        return Ok(Some(ServerFrame::Ack {
            rid: req.rid,
            client_msg_id: req.client_msg_id,
            conv,
            seq: None,
            id: MessageId::new(id),
            ts,
            duplicate: false,
            moderation: note,
        }));
    }
    if let Access::Group(view) = &access {
        if view.settings.approval_required {
            return submit_for_approval(state, ctx, &conv, view, req, body, note).await;
        }
    }
    if let Some(a) = &req.attachment {
        crate::files::record_share(state, &a.file_id, &conv).await?;
    }
    let participants = match &access {
        Access::Direct(_) => access.audience(),
        Access::Group(_) => Vec::new(),
    };
    // Delivery is queued from the store's writer, in seq order, once the message is durable.
    let appended = crate::messages::append_and_deliver(
        state,
        NewMessage {
            conv: conv.clone(),
            from: me.clone(),
            client_msg_id: req.client_msg_id.clone(),
            id: MessageId::new(uuid::Uuid::now_v7().to_string()),
            kind: req.kind,
            body,
            attachment: req.attachment,
            mentions: req.mentions,
            reply_to: req.reply_to,
            ts: now_ms(),
            participants,
        },
        access.audience(),
        Some(ctx.handle.id.clone()),
    )
    .await?;
    let message: Message = appended.message;
    let ack = ServerFrame::Ack {
        rid: req.rid,
        client_msg_id: req.client_msg_id,
        conv,
        seq: Some(message.seq),
        id: message.id.clone(),
        ts: message.ts,
        duplicate: appended.duplicate,
        moderation: note,
    };
    Ok(Some(ack))
}

/// Refuses posts to archived groups and from members muted in the group (or in a group
/// muted as a whole, where only the owner and admins post).
fn check_group_posting(view: &crate::membership::GroupView, me: &UserId) -> Result<(), ApiError> {
    use crate::membership::Lifecycle;
    if view.settings.lifecycle == Lifecycle::Archived {
        return Err(ApiError::forbidden("the group is archived (read-only)"));
    }
    if let Some(until) = view.settings.muted_until(me, now_ms()) {
        return Err(ApiError::new(
            ErrorCode::Muted,
            format!("you are muted in this group until {until} (ms since the epoch)"),
        ));
    }
    if view.settings.muted_all && !view.is_admin(me) {
        return Err(ApiError::new(
            ErrorCode::Muted,
            "the group is muted: only the owner and admins post",
        ));
    }
    Ok(())
}

/// Holds a post to an approval-only group until a reviewer approves it; the `ack` has no
/// seq and its `id` is the post id (see `/v1/posts`).
async fn submit_for_approval(
    state: &AppState,
    ctx: &SessionCtx,
    conv: &ConvId,
    view: &crate::membership::GroupView,
    req: SendFrame,
    body: String,
    note: Option<ModerationNote>,
) -> Result<Option<ServerFrame>, ApiError> {
    if req.kind != MessageKind::Text {
        return Err(ApiError::bad_request(
            "kind: posts to an approval-only group are text",
        ));
    }
    let post = crate::posts::submit(
        state,
        ctx.user(),
        &view.group.id,
        crate::posts::PostKind::Message,
        body,
        Some(req.client_msg_id.clone()),
    )
    .await?;
    Ok(Some(ServerFrame::Ack {
        rid: req.rid,
        client_msg_id: req.client_msg_id,
        conv: conv.clone(),
        seq: None,
        id: MessageId::new(post.id),
        ts: post.created_at,
        duplicate: false,
        moderation: note.or(Some(ModerationNote {
            action: "approval".into(),
            category: None,
        })),
    }))
}

/// Refuses senders who are muted or suspended.
fn check_restriction(state: &AppState, user: &UserId) -> Result<(), ApiError> {
    match state.moderation.restriction(user, now_ms()) {
        None => Ok(()),
        Some(Restriction::MutedUntil(until)) => Err(ApiError::new(
            ErrorCode::Muted,
            format!("you are muted until {until} (ms since the epoch)"),
        )),
        Some(Restriction::Suspended) => Err(ApiError::new(
            ErrorCode::Muted,
            "you are suspended from posting until an administrator lifts it",
        )),
    }
}

/// Applies a verdict's side effects: audit, escalation, and the `blocked` error. Returns the
/// note for the sender's `ack`.
async fn moderate(
    state: &AppState,
    ctx: &SessionCtx,
    conv: &ConvId,
    req: &SendFrame,
    verdict: &moderation::Verdict,
) -> Result<Option<ModerationNote>, ApiError> {
    if verdict.action == Action::Allow {
        return Ok(None);
    }
    let me = ctx.user();
    let now = now_ms();
    state
        .audit(store::AuditEntry {
            ts: now,
            actor: me.clone(),
            action: format!("moderation.{}", action_name(verdict.action)),
            conv: Some(conv.clone()),
            target: None,
            message: Some(req.client_msg_id.clone()),
            rule: verdict.rule.clone(),
            category: verdict.category.clone(),
            detail: None,
        })
        .await;
    if verdict.escalate {
        let penalty = state.moderation.record_violation(me, now);
        escalate(state, me, penalty, now).await;
    }
    let category = verdict.category.clone();
    if verdict.action == Action::Block {
        return Err(ApiError::new(
            ErrorCode::Blocked,
            format!(
                "message blocked by the moderation filter (category: {})",
                category.as_deref().unwrap_or("policy")
            ),
        ));
    }
    Ok(Some(ModerationNote {
        action: action_name(verdict.action).to_owned(),
        category,
    }))
}

/// Tells the user about a penalty and records it.
async fn escalate(state: &AppState, user: &UserId, penalty: Penalty, now: u64) {
    let (event, until, name) = match penalty {
        Penalty::None => return,
        Penalty::Warn => (EventKind::Warned, None, "escalation.warn"),
        Penalty::Mute(d) => (
            EventKind::Muted,
            Some(now + d.as_millis() as u64),
            "escalation.mute",
        ),
        Penalty::Suspend => (EventKind::Muted, None, "escalation.suspend"),
    };
    state
        .audit(store::AuditEntry {
            ts: now,
            actor: user.clone(),
            action: name.to_owned(),
            conv: None,
            target: Some(user.clone()),
            message: None,
            rule: None,
            category: None,
            detail: None,
        })
        .await;
    let frame = ServerFrame::Event {
        event,
        conv: None,
        actor: None,
        user: Some(user.clone()),
        seq: None,
        until,
        detail: Some(name.to_owned()),
    };
    if let Err(e) = state
        .router
        .publish(Envelope::frame(vec![user.clone()], frame))
        .await
    {
        tracing::warn!(error = %e, "could not tell a user about a penalty");
    }
}

fn action_name(a: Action) -> &'static str {
    match a {
        Action::Allow => "allow",
        Action::Warn => "warn",
        Action::Mask => "mask",
        Action::Review => "review",
        Action::Block => "block",
    }
}

/// Reserves the memory of one heavy reply: the session's one slot (waiting until its
/// previous heavy reply was written), then the per-reply budget from the user's and the
/// node's budgets (see [`crate::budget`]).
async fn reserve_reply(state: &AppState, ctx: &SessionCtx) -> Result<ReplyBytes, ApiError> {
    let slot = tokio::select! {
        p = ctx.heavy.clone().acquire_owned() => p.ok(),
        _ = ctx.handle.closed() => None,
    };
    let Some(slot) = slot else {
        return Err(ApiError::new(
            ErrorCode::Unavailable,
            "the session is closing",
        ));
    };
    state.replies.reserve(ctx.user(), Some(slot)).await
}

/// Where a budgeted page starts and which way it reads.
#[derive(Clone, Copy)]
enum Start {
    /// Messages after this seq, oldest first (`sync`).
    After(Seq),
    /// Messages before this seq (or the newest), newest first (`history`).
    Before(Option<Seq>),
}

/// The byte budget left for a reply being built.
struct Budget {
    left: usize,
    /// Nothing is in the reply yet: its first message comes even when larger than the budget,
    /// so a client always makes progress.
    empty: bool,
}

impl Budget {
    /// Takes `n` bytes; `false` (taking nothing) when they do not fit.
    fn take(&mut self, n: usize) -> bool {
        if n > self.left && !self.empty {
            return false;
        }
        self.left = self.left.saturating_sub(n);
        self.empty = false;
        true
    }
}

/// Up to `limit` messages of `conv` from `from`, read from the store in small chunks and
/// stopping before the reply would outgrow `budget`: memory stays bounded while the page
/// is built, not only in the final frame. `has_more` is true when messages beyond the page
/// exist (also when it stopped for the budget).
async fn budgeted_page(
    state: &AppState,
    conv: &ConvId,
    mut from: Start,
    limit: usize,
    budget: &mut Budget,
) -> Result<store::Page, ApiError> {
    // A chunk holds at most about one reply's worth of the largest messages allowed.
    let largest = state.config.limits.max_body_chars.saturating_mul(4) + 1024;
    let mut messages = Vec::new();
    loop {
        let want = limit - messages.len();
        let chunk = want.min((budget.left / largest).clamp(1, 64));
        let page = match from {
            Start::After(after) => state.store.after(conv, after, chunk).await?,
            Start::Before(before) => state.store.history(conv, before, chunk).await?,
        };
        for m in page.messages {
            if !budget.take(budget::encoded_len(&m) + 1) {
                return Ok(store::Page {
                    messages,
                    has_more: true,
                });
            }
            from = match from {
                Start::After(_) => Start::After(m.seq),
                Start::Before(_) => Start::Before(Some(m.seq)),
            };
            messages.push(m);
        }
        if !page.has_more || messages.len() >= limit {
            return Ok(store::Page {
                messages,
                has_more: page.has_more,
            });
        }
    }
}

async fn history(
    state: &AppState,
    ctx: &SessionCtx,
    rid: Option<Rid>,
    conv: ConvId,
    before: Option<Seq>,
    limit: Option<u32>,
) -> Result<Option<Arc<SharedFrame>>, ApiError> {
    state.access(ctx.user(), &conv).await?;
    let max = state.config.limits.history_max.max(1);
    let limit = limit.unwrap_or(50).clamp(1, max) as usize;
    let mut reserved = reserve_reply(state, ctx).await?;
    let mut budget = Budget {
        left: reserved.limit().saturating_sub(64 + conv.as_str().len()),
        empty: true,
    };
    let page = budgeted_page(state, &conv, Start::Before(before), limit, &mut budget).await?;
    reserved.shrink_to(reserved.limit() - budget.left);
    let frame = ServerFrame::History {
        rid,
        conv,
        messages: page.messages,
        has_more: page.has_more,
    };
    Ok(Some(SharedFrame::with_budget(frame, reserved)))
}

async fn sync(
    state: &AppState,
    ctx: &SessionCtx,
    rid: Option<Rid>,
    cursors: BTreeMap<ConvId, Seq>,
    limit: Option<u32>,
) -> Result<Option<Arc<SharedFrame>>, ApiError> {
    let limits = &state.config.limits;
    if cursors.len() > limits.sync_max_conversations {
        return Err(ApiError::bad_request(format!(
            "at most {} conversations per sync",
            limits.sync_max_conversations
        )));
    }
    let max = limits.sync_max.max(1);
    let limit = limit.unwrap_or(max).clamp(1, max) as usize;
    for conv in cursors.keys() {
        state.access(ctx.user(), conv).await?;
    }
    let mut reserved = reserve_reply(state, ctx).await?;
    let mut budget = Budget {
        left: reserved.limit().saturating_sub(64),
        empty: true,
    };
    let mut conversations = Vec::with_capacity(cursors.len());
    for (conv, after) in cursors {
        // The entry itself (`{"conv":..,"messages":[],"has_more":..}`) counts too.
        budget.left = budget.left.saturating_sub(48 + conv.as_str().len());
        let page = budgeted_page(state, &conv, Start::After(after), limit, &mut budget).await?;
        conversations.push(SyncedConv {
            conv,
            messages: page.messages,
            has_more: page.has_more,
        });
    }
    reserved.shrink_to(reserved.limit() - budget.left);
    let frame = ServerFrame::Synced { rid, conversations };
    Ok(Some(SharedFrame::with_budget(frame, reserved)))
}

async fn conversations(
    state: &AppState,
    ctx: &SessionCtx,
    rid: Option<Rid>,
) -> Result<Option<Arc<SharedFrame>>, ApiError> {
    let mut reserved = reserve_reply(state, ctx).await?;
    let (conversations, used) =
        crate::messages::conversation_list_within(state, ctx.user(), reserved.limit()).await?;
    reserved.shrink_to(used);
    let frame = ServerFrame::Conversations { rid, conversations };
    Ok(Some(SharedFrame::with_budget(frame, reserved)))
}

/// `read`: checks access, then keeps the cursor as the session's pending one for the
/// conversation (the newest wins) and publishes what `limits.ephemeral_per_sec` allows now;
/// the rest goes out from the session's reader when [`SessionCtx::reads_due`] says.
async fn read(
    state: &AppState,
    ctx: &SessionCtx,
    conv: ConvId,
    seq: Seq,
) -> Result<Option<Arc<SharedFrame>>, ApiError> {
    state.access(ctx.user(), &conv).await?;
    ctx.ephemeral(state, |e| {
        let full = e.reads.len() >= MAX_PENDING_READS;
        match e.reads.get_mut(&conv) {
            Some(pending) => *pending = (*pending).max(seq),
            None if full => {}
            None => {
                e.reads.insert(conv, seq);
            }
        }
    });
    flush_reads(state, ctx, false).await;
    Ok(None)
}

/// Stores and publishes the session's pending `read` cursors, as many as the session's
/// ephemeral rate allows (all of them with `force`, when the session ends).
pub async fn flush_reads(state: &AppState, ctx: &SessionCtx, force: bool) {
    loop {
        let next = ctx.ephemeral(state, |e| {
            let conv = e.reads.keys().next()?.clone();
            if !force {
                if let Err(not_until) = e.limiter.check() {
                    let wait = not_until.wait_time_from(shared_clock().now());
                    e.due = Some(tokio::time::Instant::now() + wait);
                    return None;
                }
            }
            let seq = e.reads.remove(&conv)?;
            if e.reads.is_empty() {
                e.due = None;
            }
            Some((conv, seq))
        });
        let Some((conv, seq)) = next else { return };
        if let Err(e) = publish_read(state, ctx, conv, seq).await {
            tracing::debug!(error = %e, "read cursor not stored");
        }
    }
}

/// Stores one read cursor and tells the other members and the caller's other devices.
async fn publish_read(
    state: &AppState,
    ctx: &SessionCtx,
    conv: ConvId,
    seq: Seq,
) -> Result<(), ApiError> {
    let access = state.access(ctx.user(), &conv).await?;
    let last = state.store.last_seq(&conv).await?;
    let seq = Seq(seq.0.min(last.0));
    let now = state.store.set_read(ctx.user(), &conv, seq).await?;
    let frame = ServerFrame::Read {
        conv,
        user: ctx.user().clone(),
        seq: now,
    };
    let mut envelope = Envelope::frame(access.audience(), frame);
    envelope.skip_session = Some(ctx.handle.id.clone());
    state.router.publish(envelope).await?;
    Ok(())
}

/// `typing`: published at most once per conversation per `limits.typing_interval_ms` and
/// within the session's ephemeral rate; anything more is dropped silently.
async fn typing(
    state: &AppState,
    ctx: &SessionCtx,
    conv: ConvId,
) -> Result<Option<Arc<SharedFrame>>, ApiError> {
    let access = state.access(ctx.user(), &conv).await?;
    let interval = Duration::from_millis(state.config.limits.typing_interval_ms);
    let allowed = ctx.ephemeral(state, |e| {
        let now = tokio::time::Instant::now();
        if e.typing.get(&conv).is_some_and(|t| now < *t + interval) {
            return false;
        }
        if e.typing.len() >= MAX_TYPING && !e.typing.contains_key(&conv) {
            e.typing.retain(|_, t| now < *t + interval);
            if e.typing.len() >= MAX_TYPING {
                return false;
            }
        }
        if e.limiter.check().is_err() {
            return false;
        }
        e.typing.insert(conv.clone(), now);
        true
    });
    if !allowed {
        return Ok(None);
    }
    let others: Vec<UserId> = access
        .audience()
        .into_iter()
        .filter(|u| u != ctx.user())
        .collect();
    if others.is_empty() {
        return Ok(None);
    }
    let frame = ServerFrame::Typing {
        conv,
        user: ctx.user().clone(),
    };
    state.router.publish(Envelope::frame(others, frame)).await?;
    Ok(None)
}
