//! Delivery of frames to the sessions of users, wherever they are connected.
//!
//! The gateway hands every outgoing event to a [`Router`] as an [`Envelope`] (who should get
//! it, and what). The router brings it to every node that holds a session of one of those
//! users and gives it to that node's [`Sink`], which pushes it into the sessions' queues. The
//! [`local::LocalRouter`] serves a single process: publishing calls the sink directly. The
//! Redis backend for cluster mode implements the same trait; `conformance` (feature
//! `conformance`, for tests only) is the test suite both pass.

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
pub mod local;
pub mod redis;

use async_trait::async_trait;
use protocol::{GroupId, ServerFrame, UserId};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Who an envelope is for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Audience {
    /// Every session of these users.
    Users(Vec<UserId>),
    /// Every node (for control messages such as cache invalidation).
    AllNodes,
}

/// Something a node must do besides pushing a frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Control {
    /// Close the audience's sessions (all of them, or only `session`) with this close code.
    Disconnect {
        /// WebSocket close code sent to the client.
        code: u16,
        /// Close reason text.
        reason: String,
        /// Only this session, when set.
        session: Option<String>,
    },
    /// A group's membership or settings changed: drop cached copies.
    GroupChanged {
        /// The group.
        group: GroupId,
    },
    /// A directory account changed (status, department, external flag): drop cached copies.
    UserChanged {
        /// The user.
        user: UserId,
    },
    /// Some of a user's tokens were revoked: remember it, and close the sessions that use
    /// them with 4001 (every node gets it).
    TokensRevoked {
        /// The user.
        user: UserId,
        /// The revoked token's id (its `sid` claim, or a digest of an identity provider's
        /// token), when one token was revoked.
        token: Option<String>,
        /// Tokens issued before this time (seconds since the epoch) are revoked, when set.
        before: Option<u64>,
        /// When the revoked tokens have all expired (seconds since the epoch).
        until: u64,
    },
    /// A user's moderation penalty changed (stored already): every node updates its cache of
    /// users under penalty. Neither `until` nor `suspended`: lifted.
    PenaltyChanged {
        /// The user.
        user: UserId,
        /// Muted until this time (ms since the epoch), when muted.
        until: Option<u64>,
        /// Suspended until an administrator lifts it.
        suspended: bool,
    },
}

/// What an envelope carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Payload {
    /// A frame to push to each session of the audience.
    Frame(ServerFrame),
    /// A control message for the nodes.
    Control(Control),
}

/// One routed event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// Who gets it.
    pub audience: Audience,
    /// A session that must not get it (the sender's own device, which gets an `ack`).
    pub skip_session: Option<String>,
    /// What it is.
    pub payload: Payload,
}

impl Envelope {
    /// A frame for these users.
    pub fn frame(users: Vec<UserId>, frame: ServerFrame) -> Self {
        Self {
            audience: Audience::Users(users),
            skip_session: None,
            payload: Payload::Frame(frame),
        }
    }

    /// A control message for these users' sessions.
    pub fn control(users: Vec<UserId>, control: Control) -> Self {
        Self {
            audience: Audience::Users(users),
            skip_session: None,
            payload: Payload::Control(control),
        }
    }

    /// A control message for every node.
    pub fn broadcast(control: Control) -> Self {
        Self {
            audience: Audience::AllNodes,
            skip_session: None,
            payload: Payload::Control(control),
        }
    }
}

/// The node-local receiver of routed envelopes (the gateway's session hub). `deliver` must
/// not block: it only enqueues into bounded session queues.
pub trait Sink: Send + Sync + 'static {
    /// Handles one envelope arriving at this node.
    fn deliver(&self, envelope: Arc<Envelope>);

    /// The descriptions of this node's sessions, `(user, session id, description)`, for a
    /// router that must publish them again (Redis lost them). The default has none.
    fn session_descriptions(&self) -> Vec<(UserId, String, Vec<u8>)> {
        Vec::new()
    }

    /// Another node stopped: its alive key expired, or it came back as a new process. It may
    /// have stored and acknowledged messages it never published; a sink that sequences
    /// deliveries checks the conversations it took seqs in (see
    /// `redis::RedisSeq::allocations`). Must not block. The default does nothing.
    fn node_died(&self, _node: &str) {}
}

/// Why routing failed.
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    /// The routing backend is unreachable; the caller should report `unavailable`.
    #[error("router unavailable: {0}")]
    Unavailable(String),
    /// The router was used before a sink was attached.
    #[error("router has no sink attached")]
    NoSink,
}

/// Delivery between nodes.
#[async_trait]
pub trait Router: Send + Sync + 'static {
    /// Attaches this node's sink; envelopes for local sessions go there. Call once at start.
    fn attach(&self, sink: Arc<dyn Sink>);

    /// Brings an envelope to every node concerned. Returns once it was handed to the
    /// transport (not once delivered: delivery is at-least-once with `sync` as the repair).
    async fn publish(&self, envelope: Envelope) -> Result<(), RouterError>;

    /// Delivers `envelope` to this node's sink on the caller's thread, without a task hop,
    /// when the router is in-process; otherwise hands it back for [`Router::publish`]. Lets
    /// the send path skip the delivery queue where nothing leaves the process. The default
    /// hands every envelope back.
    // The envelope comes back by value on purpose: boxing it would cost an allocation on
    // every publish of a router that hands everything back (cluster mode).
    #[allow(clippy::result_large_err)]
    fn publish_inline(&self, envelope: Envelope) -> Result<(), Envelope> {
        Err(envelope)
    }

    /// This node now holds a session of `user` (presence).
    async fn session_opened(&self, user: &UserId) -> Result<(), RouterError>;

    /// This node no longer holds any session of `user`.
    async fn session_closed(&self, user: &UserId) -> Result<(), RouterError>;

    /// Publishes one session's description (opaque bytes, the gateway's JSON) so that the
    /// user's device list on any node includes it. A single process needs nothing: the
    /// default does nothing.
    async fn session_described(
        &self,
        _user: &UserId,
        _session: &str,
        _description: Vec<u8>,
    ) -> Result<(), RouterError> {
        Ok(())
    }

    /// Withdraws what [`Router::session_described`] published, when the session ends.
    async fn session_forgotten(&self, _user: &UserId, _session: &str) -> Result<(), RouterError> {
        Ok(())
    }

    /// The descriptions of `user`'s sessions on the *other* live nodes (this node's own are
    /// the caller's to know).
    async fn remote_sessions(&self, _user: &UserId) -> Result<Vec<Vec<u8>>, RouterError> {
        Ok(Vec::new())
    }
}
