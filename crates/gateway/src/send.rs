//! The send pipeline: what happens to one `send` frame, in order. [`send`] reads top to
//! bottom: validate -> authorize (access, posting rights, penalties, mentions, attachment) ->
//! policy and moderation (in the conversation's [`ModerationScope`]) -> append (in the
//! session's order, [`Ticket`]) -> deliver (queued by the store once the message is durable)
//! -> ack. Held messages and approval-only groups leave the pipeline after moderation.

use crate::error::ApiError;
use crate::order::Ticket;
use crate::policy::{Access, ModerationScope};
use crate::state::{now_ms, AppState};
use moderation::{Action, Penalty};
use protocol::{
    ConvId, ErrorCode, EventKind, Message, MessageId, MessageKind, ModerationNote, SendFrame, Seq,
    ServerFrame, Target, UserId,
};
use router::Envelope;
use store::NewMessage;

/// Who sends: the user, their session, and the session's send-rate limit.
pub struct Sender<'a> {
    /// The sending user.
    pub user: &'a UserId,
    /// The sending session's id (it gets the `ack`, not the message).
    pub session: &'a str,
    /// The session's send-rate limit.
    pub check_rate: &'a (dyn RateCheck + Sync),
}

/// A session's send-rate limit, as the send path checks it.
pub trait RateCheck {
    /// `rate_limited` when the session sends too fast.
    fn check_rate(&self) -> Result<(), ApiError>;
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
        MessageKind::Skipped => {
            return Err(ApiError::bad_request("kind: skipped is not sent"));
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

/// Runs one `send` through the pipeline and returns the `ack`. `order` is the send's place in
/// its session's order when sends are pipelined (`Store::keeps_append_order()`).
pub async fn send(
    state: &AppState,
    from: &Sender<'_>,
    req: SendFrame,
    order: Option<&Ticket>,
) -> Result<Option<ServerFrame>, ApiError> {
    // 1. Validate: the frame's fields, then the session's send rate.
    validate_send(state, &req)?;
    from.check_rate.check_rate()?;
    let me = from.user;
    // 2. Authorize: access to the conversation, posting rights, penalties, mentions, and the
    //    attachment (the server's record of the file).
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
            let access = crate::policy::access(state, me, &conv).await?;
            if let Access::Group(view) = &access {
                crate::policy::check_posting(view, me)?;
            }
            (conv, access)
        }
    };
    crate::policy::check_not_restricted(state, me).await?;
    // The account's budget across its sessions: messages, and recipients per second.
    let recipients = match &access {
        Access::Direct(_) => 2,
        Access::Group(view) => view.members.len(),
    };
    state.user_rates.check_send(me, recipients)?;
    state.user_rates.check_message_bytes(me, req.body.len())?;
    state.disk.check()?;
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
    // 3. Policy and moderation in the conversation's scope (external members, group rules);
    //    a held message or an approval-only group leaves the pipeline here.
    let scope = ModerationScope::of(state, &access).await?;
    let checked = crate::policy::check_message(
        state,
        &scope,
        &req.body,
        req.attachment.as_ref().map(|a| a.name.as_str()),
    );
    let verdict = checked.verdict;
    crate::metrics::moderation_verdict(action_name(verdict.action), verdict.category.as_deref());
    let note = moderate(state, me, &conv, &req, &verdict).await?;
    let body = checked.body;
    if let (Some(a), Some(name)) = (&mut req.attachment, checked.attachment_name) {
        a.name = name;
    }
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
            category: verdict.category.as_deref().map(str::to_owned),
            rule: verdict.rule.as_deref().map(str::to_owned),
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
            return submit_for_approval(state, me, &conv, view, req, body, note).await;
        }
    }
    // 4. Append, in the session's order; 5. delivery is queued from the store's writer, in
    //    seq order, once the message is durable.
    let id = MessageId::new(uuid::Uuid::now_v7().to_string());
    let file = req.attachment.as_ref().map(|a| a.file_id.clone());
    if let Some(f) = &file {
        // The share and retention's reference to the file, in one write.
        crate::retention::record_share(state, f, &conv, &id).await?;
    }
    let audience = access.audience();
    let participants = match &access {
        Access::Direct(_) => audience.clone(),
        Access::Group(_) => Vec::new(),
    };
    let appended = crate::messages::append_and_deliver(
        state,
        NewMessage {
            conv: conv.clone(),
            from: me.clone(),
            client_msg_id: req.client_msg_id.clone(),
            id: id.clone(),
            kind: req.kind,
            body,
            attachment: req.attachment,
            mentions: req.mentions,
            reply_to: req.reply_to,
            ts: now_ms(),
            participants,
            moderation: Some(note.as_ref().map_or("allow".into(), |n| n.action.clone())),
        },
        audience,
        Some(from.session.to_owned()),
        order,
    )
    .await;
    if let Some(f) = &file {
        if !appended.as_ref().is_ok_and(|a| !a.duplicate) {
            crate::retention::forget_share(state, f, &conv, &id).await;
        }
    }
    let appended = appended?;
    // 6. Ack.
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

/// Holds a post to an approval-only group until a reviewer approves it; the `ack` has no
/// seq and its `id` is the post id (see `/v1/posts`).
async fn submit_for_approval(
    state: &AppState,
    me: &UserId,
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
        me,
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

/// Applies a verdict's side effects: audit, escalation, and the `blocked` error. Returns the
/// note for the sender's `ack`.
async fn moderate(
    state: &AppState,
    me: &UserId,
    conv: &ConvId,
    req: &SendFrame,
    verdict: &moderation::Verdict,
) -> Result<Option<ModerationNote>, ApiError> {
    if verdict.action == Action::Allow {
        return Ok(None);
    }
    let now = now_ms();
    state
        .audit(store::AuditEntry {
            ts: now,
            actor: me.clone(),
            action: format!("moderation.{}", action_name(verdict.action)),
            conv: Some(conv.clone()),
            target: None,
            message: Some(req.client_msg_id.clone()),
            rule: verdict.rule.as_deref().map(str::to_owned),
            category: verdict.category.as_deref().map(str::to_owned),
            detail: None,
        })
        .await;
    if verdict.escalate {
        let penalty = state
            .membership
            .penalties
            .record_violation(&*state.router, &state.moderation, me, now)
            .await;
        escalate(state, me, penalty, now).await;
    }
    let category = verdict.category.as_deref().map(str::to_owned);
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
