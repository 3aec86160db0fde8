//! The node's session registry: which sessions of which users are connected here, and the
//! [`router::Sink`] that pushes routed envelopes into their queues.
//!
//! Lag policy: every session has a bounded outbound queue. Delivery never waits: when a
//! session's queue is full, the session is closed with 4000 (slow consumer) and its client
//! reconnects and `sync`s; nothing is lost because everything delivered is in history.

use crate::budget::ReplyBytes;
use crate::membership::Membership;
use bytes::Bytes;
use dashmap::DashMap;
use protocol::{Codec, ServerFrame, UserId};
use router::{Audience, Control, Envelope, Payload, Router, Sink};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// A server frame encoded lazily, at most once per codec, however many sessions it goes to.
pub struct SharedFrame {
    frame: ServerFrame,
    json: OnceLock<Bytes>,
    msgpack: OnceLock<Bytes>,
    /// The reply budget this frame holds until it is written and dropped.
    _budget: Option<Box<ReplyBytes>>,
}

impl SharedFrame {
    /// Wraps a frame.
    pub fn new(frame: ServerFrame) -> Arc<Self> {
        Arc::new(Self {
            frame,
            json: OnceLock::new(),
            msgpack: OnceLock::new(),
            _budget: None,
        })
    }

    /// Wraps a reply that holds `budget` until the writer has written it.
    pub fn with_budget(frame: ServerFrame, budget: ReplyBytes) -> Arc<Self> {
        Arc::new(Self {
            frame,
            json: OnceLock::new(),
            msgpack: OnceLock::new(),
            _budget: Some(Box::new(budget)),
        })
    }

    /// The frame's bytes in `codec`.
    pub fn encoded(&self, codec: Codec) -> Bytes {
        let cell = match codec {
            Codec::Json => &self.json,
            Codec::MsgPack => &self.msgpack,
        };
        cell.get_or_init(|| codec.encode(&self.frame)).clone()
    }
}

/// The hub's view of one connected session.
pub struct SessionHandle {
    /// Session id, as sent in `hello`.
    pub id: String,
    /// The authenticated user.
    pub user: UserId,
    /// The session's codec.
    pub codec: Codec,
    /// The device name the client gave (`?device=`), else its `User-Agent`; may be empty.
    pub device: Box<str>,
    /// When the session opened, ms since the epoch.
    pub connected_at: u64,
    /// The token the session was opened with, so that revoking it closes the session.
    pub token: TokenRef,
    /// Hash of `id`, so a fan-out compares each recipient with the skipped session by
    /// integer (the id string is only read on a hash match).
    id_hash: u64,
    queue: mpsc::Sender<Arc<SharedFrame>>,
    cancel: CancellationToken,
    close: OnceLock<(u16, String)>,
}

impl SessionHandle {
    /// A handle and the receiving end of its outbound queue.
    pub fn new(
        id: String,
        user: UserId,
        codec: Codec,
        device: Box<str>,
        token: TokenRef,
        capacity: usize,
    ) -> (Arc<Self>, mpsc::Receiver<Arc<SharedFrame>>) {
        let (queue, rx) = mpsc::channel(capacity.max(1));
        let handle = Arc::new(Self {
            id_hash: id_hash(&id),
            id,
            user,
            codec,
            device,
            token,
            connected_at: crate::clock::now_ms(),
            queue,
            cancel: CancellationToken::new(),
            close: OnceLock::new(),
        });
        (handle, rx)
    }

    /// How the session is listed to its user.
    pub fn describe(&self) -> SessionDescription {
        SessionDescription {
            id: self.id.clone(),
            codec: if self.codec.is_text() {
                "json"
            } else {
                "msgpack"
            }
            .into(),
            device: self.device.to_string(),
            connected_at: self.connected_at,
            token_id: self.token.id.to_string(),
        }
    }

    /// [`Self::describe`] as the JSON the router publishes for other nodes.
    pub fn encoded_description(&self) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec(&self.describe())
    }

    /// Queues a frame without waiting; a full queue closes the session as a slow consumer.
    pub fn push(&self, frame: Arc<SharedFrame>) {
        match self.queue.try_send(frame) {
            Ok(()) => crate::metrics::fanout_delivery(),
            Err(mpsc::error::TrySendError::Full(_)) => {
                crate::metrics::slow_consumer(crate::metrics::SlowReason::QueueFull);
                tracing::warn!(session = %self.id, user = %self.user, "outbound queue full; closing slow consumer");
                self.close(
                    protocol::close::SLOW_CONSUMER,
                    "slow consumer: reconnect and sync",
                );
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    /// Queues a frame, waiting for room (for replies to the session's own requests, so a
    /// client that pipelines requests is slowed down rather than disconnected).
    pub async fn reply(&self, frame: ServerFrame) {
        self.reply_shared(SharedFrame::new(frame)).await;
    }

    /// [`Self::reply`] for a frame already wrapped (e.g. one holding a reply budget).
    pub async fn reply_shared(&self, frame: Arc<SharedFrame>) {
        // Nearly always there is room: then no send future and no cancellation future (whose
        // registration takes the token's lock) is made.
        let frame = match self.queue.try_send(frame) {
            Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => return,
            Err(mpsc::error::TrySendError::Full(frame)) => frame,
        };
        tokio::select! {
            _ = self.queue.send(frame) => {}
            _ = self.cancel.cancelled() => {}
        }
    }

    /// Asks the session to close with this code; the first reason wins.
    pub fn close(&self, code: u16, reason: &str) {
        let _ = self.close.set((code, reason.to_owned()));
        self.cancel.cancel();
    }

    /// The close code and reason, once closing.
    pub fn close_reason(&self) -> Option<&(u16, String)> {
        self.close.get()
    }

    /// Resolves when the session is asked to close.
    pub fn closed(&self) -> tokio_util::sync::WaitForCancellationFuture<'_> {
        self.cancel.cancelled()
    }
}

/// Which token a session was opened with: its id (see [`crate::revocation::token_id`]), issue
/// and expiry time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenRef {
    /// The token's id.
    pub id: Box<str>,
    /// The token's `iat`, seconds since the epoch.
    pub iat: u64,
    /// The token's `exp`, seconds since the epoch.
    pub exp: u64,
}

/// Hashes session ids for [`SessionHandle::id_hash`] (fixed seed: values are compared
/// within this process only).
fn id_hash(id: &str) -> u64 {
    foldhash::fast::FixedState::with_seed(0x5e55_10e1).hash_one(id)
}

/// All sessions on this node. Keyed with foldhash rather than SipHash: a fan-out looks up
/// every member, and user ids come from signed tokens, not from arbitrary clients.
pub struct Hub {
    sessions: DashMap<UserId, Vec<Arc<SessionHandle>>, foldhash::fast::RandomState>,
    count: AtomicUsize,
    membership: Arc<Membership>,
}

/// Why a session could not be registered.
#[derive(Debug, PartialEq, Eq)]
pub enum RegisterError {
    /// The user has too many sessions.
    TooManySessions,
}

impl Hub {
    /// An empty hub that invalidates `membership` on group-change control messages.
    pub fn new(membership: Arc<Membership>) -> Arc<Self> {
        Arc::new(Self {
            sessions: DashMap::with_hasher(foldhash::fast::RandomState::default()),
            count: AtomicUsize::new(0),
            membership,
        })
    }

    /// Adds a session; returns whether it is the user's first on this node.
    pub fn register(
        &self,
        handle: Arc<SessionHandle>,
        max_per_user: usize,
    ) -> Result<bool, RegisterError> {
        let mut entry = self.sessions.entry(handle.user.clone()).or_default();
        if entry.len() >= max_per_user {
            return Err(RegisterError::TooManySessions);
        }
        entry.push(handle);
        self.count.fetch_add(1, Ordering::Relaxed);
        Ok(entry.len() == 1)
    }

    /// Removes a session; returns whether the user has no session left on this node.
    pub fn unregister(&self, handle: &SessionHandle) -> bool {
        let mut last = false;
        let removed = self
            .sessions
            .remove_if_mut(&handle.user, |_, list| {
                let before = list.len();
                list.retain(|s| s.id != handle.id);
                if list.len() < before {
                    self.count.fetch_sub(1, Ordering::Relaxed);
                }
                list.is_empty()
            })
            .is_some();
        if removed {
            last = true;
        }
        last
    }

    /// Number of sessions on this node.
    pub fn len(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    /// Whether no session is connected.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The sessions of a user on this node.
    pub fn sessions_of(&self, user: &UserId) -> Vec<Arc<SessionHandle>> {
        self.sessions
            .get(user)
            .map(|l| l.value().clone())
            .unwrap_or_default()
    }

    /// Every session on this node (a snapshot), e.g. to close them one by one while draining.
    pub fn all_sessions(&self) -> Vec<Arc<SessionHandle>> {
        self.sessions
            .iter()
            .flat_map(|e| e.value().clone())
            .collect()
    }

    /// Closes every session (shutdown).
    pub fn close_all(&self, code: u16, reason: &str) {
        for entry in self.sessions.iter() {
            for s in entry.value() {
                s.close(code, reason);
            }
        }
    }

    fn each_session(&self, users: &[UserId], mut f: impl FnMut(&Arc<SessionHandle>)) {
        for user in users {
            if let Some(list) = self.sessions.get(user) {
                for s in list.value() {
                    f(s);
                }
            }
        }
    }

    /// Hands a frame addressed to users to their sessions here (but the one it skips).
    fn push_frame(&self, envelope: Arc<Envelope>) {
        // The router's envelope is usually ours alone: its frame moves into the shared frame
        // instead of being cloned (a message's strings are a handful of allocations).
        let Envelope {
            audience: Audience::Users(users),
            skip_session,
            payload: Payload::Frame(frame),
        } = Arc::try_unwrap(envelope).unwrap_or_else(|shared| (*shared).clone())
        else {
            return;
        };
        let shared = SharedFrame::new(frame);
        let skip = skip_session.as_deref().map(|id| (id_hash(id), id));
        self.each_session(&users, |s| match skip {
            Some((hash, id)) if hash == s.id_hash && id == s.id => {}
            _ => s.push(shared.clone()),
        });
    }
}

impl Sink for Hub {
    fn session_descriptions(&self) -> Vec<(UserId, String, Vec<u8>)> {
        let mut out = Vec::new();
        for entry in self.sessions.iter() {
            for s in entry.value() {
                if let Ok(d) = s.encoded_description() {
                    out.push((s.user.clone(), s.id.clone(), d));
                }
            }
        }
        out
    }

    fn deliver(&self, envelope: Arc<Envelope>) {
        crate::metrics::router_received(matches!(envelope.payload, Payload::Frame(_)));
        if let Payload::Frame(ServerFrame::Message(m)) = &envelope.payload {
            crate::metrics::router_lag(m.ts);
        }
        match (&envelope.audience, &envelope.payload) {
            (Audience::Users(_), Payload::Frame(_)) => self.push_frame(envelope),
            (Audience::AllNodes, Payload::Frame(_)) => {
                tracing::warn!("ignoring a frame addressed to all nodes");
            }
            (audience, Payload::Control(control)) => match control {
                Control::Disconnect {
                    code,
                    reason,
                    session,
                } => {
                    let close = |s: &Arc<SessionHandle>| {
                        if session.as_deref().is_none_or(|id| id == s.id) {
                            s.close(*code, reason);
                        }
                    };
                    match audience {
                        Audience::Users(users) => self.each_session(users, close),
                        Audience::AllNodes => self.close_all(*code, reason),
                    }
                }
                Control::GroupChanged { group } => self.membership.invalidate(group),
                Control::UserChanged { user } => self.membership.invalidate_user(user),
                Control::PenaltyChanged {
                    user,
                    until,
                    suspended,
                } => self.membership.penalties.apply(user, *until, *suspended),
                Control::TokensRevoked {
                    user,
                    token,
                    before,
                    until,
                } => {
                    let (token, before) = (token.as_deref(), *before);
                    self.membership
                        .revocations
                        .apply(user, token, before, *until);
                    self.each_session(std::slice::from_ref(user), |s| {
                        if token.is_some_and(|t| *t == *s.token.id)
                            || before.is_some_and(|b| s.token.iat < b)
                        {
                            s.close(protocol::close::SIGNED_OUT, "token revoked: sign in again");
                        }
                    });
                }
            },
        }
    }
}

/// How a session is listed to its user (`GET /v1/me/sessions`), whichever node holds it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct SessionDescription {
    /// Session id (as in `hello`).
    pub id: String,
    /// `json` or `msgpack`.
    pub codec: String,
    /// The device name the client gave, else its `User-Agent`; may be empty.
    pub device: String,
    /// When the session opened, ms since the epoch.
    pub connected_at: u64,
    /// The id of the token the session was opened with (what signing the session out
    /// revokes).
    #[serde(default)]
    pub token_id: String,
}

/// Hub registration that undoes itself when dropped, even when the session task panics.
pub struct Registration {
    hub: Arc<Hub>,
    router: Arc<dyn Router>,
    handle: Arc<SessionHandle>,
}

impl Registration {
    /// Registers `handle` and announces presence when it is the user's first session here.
    pub async fn new(
        hub: Arc<Hub>,
        router: Arc<dyn Router>,
        handle: Arc<SessionHandle>,
        max_per_user: usize,
    ) -> Result<Self, RegisterError> {
        let first = hub.register(handle.clone(), max_per_user)?;
        crate::metrics::session_opened(handle.codec);
        if first {
            if let Err(e) = router.session_opened(&handle.user).await {
                tracing::warn!(error = %e, "presence update failed");
            }
        }
        match handle.encoded_description() {
            Ok(description) => {
                if let Err(e) = router
                    .session_described(&handle.user, &handle.id, description)
                    .await
                {
                    tracing::warn!(error = %e, "session description not published");
                }
            }
            Err(e) => tracing::warn!(error = %e, "session description not encoded"),
        }
        Ok(Self {
            hub,
            router,
            handle,
        })
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        crate::metrics::session_closed(self.handle.codec, self.handle.close_reason().map(|c| c.0));
        self.handle
            .close(protocol::close::GOING_AWAY, "session ended");
        let last = self.hub.unregister(&self.handle);
        let router = self.router.clone();
        let user = self.handle.user.clone();
        let session = self.handle.id.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if let Err(e) = router.session_forgotten(&user, &session).await {
                    tracing::warn!(error = %e, "session description not withdrawn");
                }
                if last {
                    if let Err(e) = router.session_closed(&user).await {
                        tracing::warn!(error = %e, "presence update failed");
                    }
                }
            });
        }
    }
}
