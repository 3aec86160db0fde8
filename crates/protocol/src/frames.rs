//! The frames of protocol v1: what a client sends ([`ClientFrame`]) and what the server sends
//! ([`ServerFrame`]). Both are objects tagged by their `type` field; a request may carry a
//! `rid` (request id) that the server echoes in its reply.

use crate::{ConvId, ErrorCode, GroupId, MessageId, Seq, UserId};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A client-chosen request id, echoed in the reply so the client can match them.
pub type Rid = String;

/// Milliseconds since the Unix epoch, UTC.
pub type Millis = u64;

/// Where a `send` goes: one user (direct conversation) or one group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// The direct conversation with this user.
    User(UserId),
    /// This group's conversation.
    Group(GroupId),
}

/// What a message carries.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum MessageKind {
    /// Plain text in `body`.
    #[default]
    Text,
    /// An image: `attachment` references it, `body` is an optional caption.
    Image,
    /// A file: `attachment` references it, `body` is an optional caption.
    File,
    /// A recalled message: only its seq, sender and time remain (body, attachment and
    /// mentions are erased). Never sent by clients.
    Recalled,
    /// A seq that holds no message: the node that took it died before storing it. `from` and
    /// `body` are empty. Never sent by clients (docs/PROTOCOL.md, delivery guarantees).
    Skipped,
}

/// A reference to an uploaded file, with the metadata a client needs to render it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Attachment {
    /// The file's id, as returned by the upload API.
    pub file_id: String,
    /// The file name shown to people.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// The media type, e.g. `image/png`.
    pub mime: String,
    /// Pixel width, for images.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub width: Option<u32>,
    /// Pixel height, for images.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub height: Option<u32>,
}

/// A stored message as clients see it, in `message` and `history` frames.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Message {
    /// The conversation it belongs to.
    pub conv: ConvId,
    /// Its position in the conversation.
    pub seq: Seq,
    /// Its server id.
    pub id: MessageId,
    /// The sender.
    pub from: UserId,
    /// What it carries.
    pub kind: MessageKind,
    /// Text, or the caption of an image or file (after moderation: possibly masked).
    pub body: String,
    /// The referenced file, for images and files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attachment: Option<Attachment>,
    /// When the server accepted it.
    pub ts: Millis,
    /// Users mentioned (`all` mentions everyone in a group).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mentions: Vec<UserId>,
    /// The seq of the message this one answers, in the same conversation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<Seq>,
    /// Set on a delivered `message` frame when it mentions the recipient (by name or with
    /// `all`); never stored.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub mentioned: bool,
}

/// What moderation did to an accepted message, reported to its sender in `ack`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModerationNote {
    /// `warn`, `mask` or `review`.
    pub action: String,
    /// The rule category (never the matched words).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
}

/// One conversation's part of a `synced` reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncedConv {
    /// The conversation.
    pub conv: ConvId,
    /// The messages after the client's cursor, oldest first.
    pub messages: Vec<Message>,
    /// Whether more messages follow the last one returned (ask again from its seq).
    pub has_more: bool,
    /// The conversation's minimum seq, when retention deleted older messages: every seq
    /// from it up is there; below it only messages a legal hold or an exemption kept.
    /// Absent: nothing was deleted (1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_seq: Option<Seq>,
}

/// One row of the conversation list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ConvSummary {
    /// The conversation.
    pub conv: ConvId,
    /// The highest seq in it (0 when empty).
    pub last_seq: Seq,
    /// When its last message was accepted (0 when empty).
    pub last_ts: Millis,
    /// The caller's read cursor in it.
    pub read_seq: Seq,
    /// `last_seq - read_seq`.
    pub unread: u64,
    /// The newest message, when there is one (in the `conversations` reply).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_message: Option<Message>,
    /// Whether an unread message mentions the caller.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub mentioned: bool,
}

/// What happened, in an `event` frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A user joined (or was added to) a group.
    MemberJoined,
    /// A user left or was removed from a group.
    MemberLeft,
    /// A group's name or settings changed.
    GroupChanged,
    /// A message was recalled; `seq` names it.
    Recalled,
    /// The caller (or `user`) was muted; `until` says until when.
    Muted,
    /// The caller (or `user`) may post again.
    Unmuted,
    /// The sender's message held for review was approved and delivered at `seq`.
    ReviewApproved,
    /// The sender's message held for review was rejected.
    ReviewRejected,
    /// The sender was warned by the moderation filter; `detail` names the category.
    Warned,
    /// A member's role changed; `user` is the member, `detail` the new role.
    RoleChanged,
    /// A message was pinned (`seq`); `detail` is `unpinned` when it was unpinned.
    Pinned,
    /// The group announcement changed; `detail` carries its text.
    Announcement,
    /// An announcement waiting for approval was approved (`seq`) or rejected
    /// (`detail: rejected`); sent to its author.
    AnnouncementReviewed,
    /// The group was archived (read-only from now on).
    Archived,
    /// The group was dissolved; its conversation is gone from the member's list.
    Dissolved,
}

/// The body of a `send` frame: a message to store and deliver. Retrying with the same
/// `client_msg_id` never creates a duplicate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendFrame {
    /// Request id, echoed in `ack` or `error`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rid: Option<Rid>,
    /// The client's idempotency key for this message (1..=64 bytes).
    pub client_msg_id: String,
    /// Recipient user or group.
    pub to: Target,
    /// Text, image or file.
    #[serde(default)]
    pub kind: MessageKind,
    /// Text or caption.
    #[serde(default)]
    pub body: String,
    /// Required for images and files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attachment: Option<Attachment>,
    /// Mentioned users.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mentions: Vec<UserId>,
    /// The seq this message answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<Seq>,
}

/// Client to server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientFrame {
    /// Send a message. Retrying with the same `client_msg_id` never creates a duplicate.
    Send(SendFrame),
    /// Page backwards through a conversation.
    History {
        /// Request id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rid: Option<Rid>,
        /// The conversation.
        conv: ConvId,
        /// Return messages with seq below this one (default: from the newest).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        before_seq: Option<Seq>,
        /// How many (default 50, clamped to the server's maximum).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<u32>,
    },
    /// Catch up after a disconnect: for each conversation, the messages after the cursor.
    Sync {
        /// Request id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rid: Option<Rid>,
        /// The last seq the client has seen, per conversation.
        cursors: BTreeMap<ConvId, Seq>,
        /// At most this many messages per conversation (clamped to the server's maximum).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<u32>,
    },
    /// Ask for the caller's conversation list.
    Conversations {
        /// Request id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rid: Option<Rid>,
    },
    /// Move the caller's read cursor forward.
    Read {
        /// Request id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rid: Option<Rid>,
        /// The conversation.
        conv: ConvId,
        /// Everything up to and including this seq has been read.
        seq: Seq,
    },
    /// Tell the other members the caller is typing (relayed, not stored).
    Typing {
        /// The conversation.
        conv: ConvId,
    },
    /// Recall a message: its sender within the recall window, or a group owner or admin at
    /// any time. Answered with `recalled`; members get an `event` of kind `recalled`.
    Recall {
        /// Request id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rid: Option<Rid>,
        /// The conversation.
        conv: ConvId,
        /// The message's seq.
        seq: Seq,
    },
    /// Application-level liveness check; answered with `pong`.
    Ping {
        /// Request id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rid: Option<Rid>,
    },
}

/// Server to client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    /// First frame of every session.
    Hello {
        /// This session's id (one per device connection).
        session_id: String,
        /// The authenticated user.
        user: UserId,
        /// Send something at least this often; any frame counts.
        heartbeat_ms: u64,
        /// Protocol version.
        protocol: u32,
        /// The largest frame the server accepts, in bytes.
        max_frame_bytes: usize,
    },
    /// A send was accepted and is durable.
    Ack {
        /// The send's request id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rid: Option<Rid>,
        /// The send's idempotency key.
        client_msg_id: String,
        /// The conversation it went to.
        conv: ConvId,
        /// Its seq; absent only when the message is held for review.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        seq: Option<Seq>,
        /// Its server id.
        id: MessageId,
        /// When it was accepted.
        ts: Millis,
        /// True when this acknowledges a retry of an already stored message.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        duplicate: bool,
        /// What moderation did, when it did something.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        moderation: Option<ModerationNote>,
    },
    /// A new message in one of the caller's conversations.
    Message(Message),
    /// A page of history, newest first.
    History {
        /// The request's id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rid: Option<Rid>,
        /// The conversation.
        conv: ConvId,
        /// Messages in descending seq order.
        messages: Vec<Message>,
        /// Whether older messages exist.
        has_more: bool,
        /// The conversation's minimum seq, when retention deleted older messages (see
        /// [`SyncedConv::min_seq`]); absent: nothing was deleted.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        min_seq: Option<Seq>,
    },
    /// The reply to `sync`.
    Synced {
        /// The request's id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rid: Option<Rid>,
        /// One entry per requested conversation.
        conversations: Vec<SyncedConv>,
    },
    /// The reply to `conversations`.
    Conversations {
        /// The request's id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rid: Option<Rid>,
        /// The caller's conversations, most recent first.
        conversations: Vec<ConvSummary>,
    },
    /// A member's read cursor moved.
    Read {
        /// The conversation.
        conv: ConvId,
        /// Who read.
        user: UserId,
        /// Up to which seq.
        seq: Seq,
    },
    /// A member is typing.
    Typing {
        /// The conversation.
        conv: ConvId,
        /// Who types.
        user: UserId,
    },
    /// Something happened to a conversation or to the caller.
    Event {
        /// What happened.
        event: EventKind,
        /// The conversation it concerns.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        conv: Option<ConvId>,
        /// Who did it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        actor: Option<UserId>,
        /// Whom it concerns.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        user: Option<UserId>,
        /// The message it concerns.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        seq: Option<Seq>,
        /// Until when (mute), in ms since the epoch.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        until: Option<Millis>,
        /// A short free-form detail (e.g. a moderation category, a client_msg_id).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        detail: Option<String>,
    },
    /// A request failed; the connection stays usable.
    Error {
        /// The failed request's id, when it had one and it could be read.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rid: Option<Rid>,
        /// Stable machine-readable code.
        code: ErrorCode,
        /// Human-readable explanation.
        message: String,
        /// Whether sending the same request again can succeed.
        retry: bool,
    },
    /// The reply to `recall`: the message is now a tombstone everywhere.
    Recalled {
        /// The request's id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rid: Option<Rid>,
        /// The conversation.
        conv: ConvId,
        /// The recalled seq.
        seq: Seq,
    },
    /// The reply to `ping`.
    Pong {
        /// The ping's request id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rid: Option<Rid>,
    },
}

/// Builds an `event` frame: `ServerFrame::event(EventKind::Muted).conv(c).until(t).build()`.
/// Every field the builder is not given stays absent on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use = "call .build() to get the frame"]
pub struct EventBuilder {
    event: EventKind,
    conv: Option<ConvId>,
    actor: Option<UserId>,
    user: Option<UserId>,
    seq: Option<Seq>,
    until: Option<Millis>,
    detail: Option<String>,
}

impl EventBuilder {
    /// The conversation the event concerns.
    pub fn conv(mut self, conv: ConvId) -> Self {
        self.conv = Some(conv);
        self
    }
    /// Who did it.
    pub fn actor(mut self, actor: UserId) -> Self {
        self.actor = Some(actor);
        self
    }
    /// Whom it concerns.
    pub fn user(mut self, user: UserId) -> Self {
        self.user = Some(user);
        self
    }
    /// The message it concerns.
    pub fn seq(mut self, seq: Seq) -> Self {
        self.seq = Some(seq);
        self
    }
    /// Until when (mute), ms since the epoch.
    pub fn until(mut self, until: Millis) -> Self {
        self.until = Some(until);
        self
    }
    /// A short free-form detail.
    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }
    /// The `event` frame.
    pub fn build(self) -> ServerFrame {
        ServerFrame::Event {
            event: self.event,
            conv: self.conv,
            actor: self.actor,
            user: self.user,
            seq: self.seq,
            until: self.until,
            detail: self.detail,
        }
    }
}

impl From<EventBuilder> for ServerFrame {
    fn from(b: EventBuilder) -> Self {
        b.build()
    }
}

impl ServerFrame {
    /// Starts an `event` frame of this kind (see [`EventBuilder`]).
    pub fn event(event: EventKind) -> EventBuilder {
        EventBuilder {
            event,
            conv: None,
            actor: None,
            user: None,
            seq: None,
            until: None,
            detail: None,
        }
    }

    /// An `error` frame whose `retry` follows the code's default.
    pub fn error(rid: Option<Rid>, code: ErrorCode, message: impl Into<String>) -> Self {
        ServerFrame::Error {
            rid,
            code,
            message: message.into(),
            retry: code.retryable(),
        }
    }
}

impl ClientFrame {
    /// The `type` tag of every client frame, in declaration order. A unit test checks it
    /// against the tags serde accepts, so a new frame type cannot be left out; tests that
    /// must cover every frame type (the authorization matrix) iterate over it.
    pub const TYPES: &'static [&'static str] = &[
        "send",
        "history",
        "sync",
        "conversations",
        "read",
        "typing",
        "recall",
        "ping",
    ];

    /// This frame's `type` tag (one of [`ClientFrame::TYPES`]).
    pub fn type_name(&self) -> &'static str {
        match self {
            ClientFrame::Send(_) => "send",
            ClientFrame::History { .. } => "history",
            ClientFrame::Sync { .. } => "sync",
            ClientFrame::Conversations { .. } => "conversations",
            ClientFrame::Read { .. } => "read",
            ClientFrame::Typing { .. } => "typing",
            ClientFrame::Recall { .. } => "recall",
            ClientFrame::Ping { .. } => "ping",
        }
    }

    /// The request id, if the frame has one.
    pub fn rid(&self) -> Option<&Rid> {
        match self {
            ClientFrame::Send(SendFrame { rid, .. })
            | ClientFrame::History { rid, .. }
            | ClientFrame::Sync { rid, .. }
            | ClientFrame::Conversations { rid }
            | ClientFrame::Read { rid, .. }
            | ClientFrame::Recall { rid, .. }
            | ClientFrame::Ping { rid } => rid.as_ref(),
            ClientFrame::Typing { .. } => None,
        }
    }
}
