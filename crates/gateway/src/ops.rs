//! What the server does with each client frame: one function per frame type, called from the
//! session's reader in frame order. Each returns the reply frame (if any); failures become an
//! `error` frame with the request's `rid`.

use crate::budget::{self, ReplyBytes};
use crate::error::ApiError;
use crate::hub::{SessionHandle, SharedFrame};
use crate::state::AppState;
use governor::clock::Clock;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use protocol::{
    ClientFrame, ConvId, ErrorCode, Rid, SendFrame, Seq, ServerFrame, SyncedConv, UserId,
};
use router::Envelope;
use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;
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
    /// `limits.requests_per_sec`: the session's other requests (`history`, `sync`,
    /// `conversations`, `recall`, `ping`), made at the first one.
    requests: std::sync::OnceLock<DefaultDirectRateLimiter>,
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
            requests: std::sync::OnceLock::new(),
        }
    }

    fn user(&self) -> &UserId {
        &self.handle.user
    }

    /// The session as the send path sees it.
    fn sender(&self) -> crate::send::Sender<'_> {
        crate::send::Sender {
            user: &self.handle.user,
            session: &self.handle.id,
            check_rate: self,
        }
    }

    fn check_rate(&self) -> Result<(), ApiError> {
        self.limiter.check().map_err(|_| {
            ApiError::new(
                ErrorCode::RateLimited,
                "too many messages; slow down and retry",
            )
        })
    }

    /// `rate_limited` when the session makes requests other than sends, reads and typing
    /// notices faster than `limits.requests_per_sec` (each costs a store read or a reply).
    fn check_requests(&self, state: &AppState) -> Result<(), ApiError> {
        let l = &state.config.limits;
        let limiter = self
            .requests
            .get_or_init(|| limiter(l.requests_per_sec, l.requests_burst));
        limiter.check().map_err(|_| {
            ApiError::new(
                ErrorCode::RateLimited,
                "too many requests on this session; slow down and retry",
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

/// Handles a pipelined `send` in its session's order (`ticket`): the `ack`, or the error.
pub async fn send_in_order(
    state: &AppState,
    ctx: &SessionCtx,
    req: SendFrame,
    ticket: &crate::order::Ticket,
) -> Option<Arc<SharedFrame>> {
    let rid = req.rid.clone();
    let _timer = crate::metrics::send_command();
    let sender = ctx.sender();
    let sent = crate::send::send(state, &sender, req, Some(ticket));
    match crate::metrics::timed_send(sent).await {
        Ok(reply) => reply.map(SharedFrame::new),
        Err(e) => Some(SharedFrame::new(e.frame(rid))),
    }
}

impl crate::send::RateCheck for SessionCtx {
    fn check_rate(&self) -> Result<(), ApiError> {
        SessionCtx::check_rate(self)
    }
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
    // Sends, reads and typing notices have their own budgets; every other request counts here.
    if !matches!(
        frame,
        ClientFrame::Send(_) | ClientFrame::Read { .. } | ClientFrame::Typing { .. }
    ) {
        if let Err(e) = ctx.check_requests(state) {
            return Some(SharedFrame::new(e.frame(rid)));
        }
    }
    let result: Result<Option<Arc<SharedFrame>>, ApiError> = match frame {
        ClientFrame::Send(req) => {
            crate::metrics::timed_send(crate::send::send(state, &ctx.sender(), req, None))
                .await
                .map(|r| r.map(SharedFrame::new))
        }
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
    crate::policy::access(state, ctx.user(), &conv).await?;
    let max = state.config.limits.history_max.max(1);
    let limit = limit.unwrap_or(50).clamp(1, max) as usize;
    let mut reserved = reserve_reply(state, ctx).await?;
    let mut budget = Budget {
        left: reserved.limit().saturating_sub(64 + conv.as_str().len()),
        empty: true,
    };
    let page = budgeted_page(state, &conv, Start::Before(before), limit, &mut budget).await?;
    reserved.shrink_to(reserved.limit() - budget.left);
    let min_seq = reported_min_seq(state, &conv).await?;
    let frame = ServerFrame::History {
        rid,
        conv,
        messages: page.messages,
        has_more: page.has_more,
        min_seq,
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
        crate::policy::access(state, ctx.user(), conv).await?;
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
        let min_seq = reported_min_seq(state, &conv).await?;
        conversations.push(SyncedConv {
            conv,
            messages: page.messages,
            has_more: page.has_more,
            min_seq,
        });
    }
    reserved.shrink_to(reserved.limit() - budget.left);
    let frame = ServerFrame::Synced { rid, conversations };
    Ok(Some(SharedFrame::with_budget(frame, reserved)))
}

/// A conversation's min seq for `history` and `sync` replies: `None` while retention never
/// deleted anything there (min seq 1).
async fn reported_min_seq(state: &AppState, conv: &ConvId) -> Result<Option<Seq>, ApiError> {
    let min = state.store.min_seq(conv).await?;
    Ok((min.0 > 1).then_some(min))
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
    crate::policy::access(state, ctx.user(), &conv).await?;
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
    let access = crate::policy::access(state, ctx.user(), &conv).await?;
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
    // The cursor is stored: telling the others is best effort.
    crate::post_commit::publish(&*state.router, envelope).await;
    Ok(())
}

/// `typing`: published at most once per conversation per `limits.typing_interval_ms` and
/// within the session's ephemeral rate; anything more is dropped silently.
async fn typing(
    state: &AppState,
    ctx: &SessionCtx,
    conv: ConvId,
) -> Result<Option<Arc<SharedFrame>>, ApiError> {
    let access = crate::policy::access(state, ctx.user(), &conv).await?;
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
