//! Stored messages beyond validation: appending with ordered delivery and mention flags,
//! recall, and the conversation list with last message, unread count and mention flag.

use crate::error::ApiError;
use crate::policy::Access;
use crate::state::{now_ms, AppState};
use protocol::{ConvId, ConvSummary, ErrorCode, EventKind, Message, Seq, ServerFrame, UserId};
use router::Envelope;
use std::collections::HashSet;
use store::{MetaOp, NewMessage, Role};

/// Namespace of per-user mention markers, keyed `user/conv`, value the newest seq (JSON).
pub const NS_MENTION: &str = "mention";
/// Namespace of `@all` markers, keyed by conversation, value the newest seq (JSON).
pub const NS_MENTION_ALL: &str = "mention_all";
/// The mention that addresses every member of a group (owner and admins only).
pub const MENTION_ALL: &str = "all";

/// Stores a message and, once it is durable, hands its delivery to the ordered pump:
/// recipients it mentions get the frame with `mentioned: true`. `skip` is the sender's own
/// session (which gets an `ack` instead); `order` is the send's place in its session's order,
/// if it is pipelined. Returns the append's outcome.
pub async fn append_and_deliver(
    state: &AppState,
    msg: NewMessage,
    audience: Vec<UserId>,
    skip: Option<String>,
    order: Option<&crate::order::Ticket>,
) -> Result<store::Appended, ApiError> {
    let everyone = msg.mentions.iter().any(|m| m.as_str() == MENTION_ALL);
    let named: HashSet<UserId> = msg.mentions.iter().cloned().collect();
    let pump = state.pump.clone();
    // A direct conversation's messages are delivered from the writer's thread without the
    // pump's task hop where the router is in-process; every one of them takes that path, so
    // their seq order holds (pump.rs).
    let direct = msg.conv.group_id().is_none();
    let push = move |e: Envelope| {
        if direct {
            pump.push_inline(e);
        } else {
            pump.push(e);
        }
    };
    let deliver: store::AfterAppend = Box::new(move |a: &store::Appended| {
        if a.duplicate {
            return;
        }
        let (flagged, plain): (Vec<UserId>, Vec<UserId>) = if everyone {
            (audience, Vec::new())
        } else if named.is_empty() {
            (Vec::new(), audience)
        } else {
            audience.into_iter().partition(|u| named.contains(u))
        };
        // Each recipient is in exactly one envelope, and envelopes leave in push order, so
        // per-recipient order holds.
        if !plain.is_empty() {
            let mut e = Envelope::frame(plain, ServerFrame::Message(a.message.clone()));
            e.skip_session.clone_from(&skip);
            push(e);
        }
        if !flagged.is_empty() {
            let mut m = a.message.clone();
            m.mentioned = true;
            let mut e = Envelope::frame(flagged, ServerFrame::Message(m));
            e.skip_session = skip;
            push(e);
        }
    });
    // A session's pipelined sends enter the store in send order (see order.rs).
    let appended = crate::order::in_order(order, state.store.append_then(msg, deliver)).await?;
    if !appended.duplicate && !appended.message.mentions.is_empty() {
        record_mentions(state, &appended.message).await;
    }
    Ok(appended)
}

/// Remembers who was mentioned where, for the conversation list's mention flag. Best
/// effort: the message itself is already stored and delivered with its flags.
async fn record_mentions(state: &AppState, m: &Message) {
    let seq = m.seq.0.to_string().into_bytes();
    let ops: Vec<MetaOp> = if m.mentions.iter().any(|u| u.as_str() == MENTION_ALL) {
        vec![MetaOp::put(NS_MENTION_ALL, m.conv.as_str(), seq)]
    } else {
        m.mentions
            .iter()
            .map(|u| MetaOp::put(NS_MENTION, &format!("{u}/{}", m.conv), seq.clone()))
            .collect()
    };
    if let Err(e) = state.meta.apply(ops).await {
        tracing::warn!(error = %e, "could not record mentions");
    }
}

/// Checks a send's mentions against the conversation: every mentioned user must be in it,
/// and `all` is for a group's owner and admins.
pub fn check_mentions(access: &Access, me: &UserId, mentions: &[UserId]) -> Result<(), ApiError> {
    for m in mentions {
        match access {
            Access::Group(g) if m.as_str() == MENTION_ALL => {
                if !g.is_admin(me) {
                    return Err(ApiError::forbidden(
                        "mentions: only the owner and admins may mention all",
                    ));
                }
            }
            Access::Group(g) => {
                if g.role_of(m).is_none() {
                    return Err(ApiError::bad_request(format!(
                        "mentions: {m} is not a member of the group"
                    )));
                }
            }
            Access::Direct(pair) => {
                if !pair.contains(m) {
                    return Err(ApiError::bad_request(format!(
                        "mentions: {m} is not in this conversation"
                    )));
                }
            }
        }
    }
    Ok(())
}

/// Recalls the message at `seq` on behalf of `actor`: its sender within
/// `groups.recall_window_secs`, a group's owner or admins at any time, or a company
/// administrator. Members get a `recalled` event.
pub async fn recall(
    state: &AppState,
    actor: &UserId,
    conv: &ConvId,
    seq: Seq,
) -> Result<(), ApiError> {
    let admin = state.is_company_admin(actor);
    let access = match crate::policy::access(state, actor, conv).await {
        Ok(a) => a,
        Err(e) if admin && e.code == ErrorCode::Forbidden => {
            company_admin_access(state, conv).await?
        }
        Err(e) => return Err(e),
    };
    let page = state
        .store
        .history(conv, Some(Seq(seq.0.saturating_add(1))), 1)
        .await?;
    let Some(original) = page.messages.into_iter().find(|m| m.seq == seq) else {
        return Err(ApiError::not_found(format!("no message {seq} in {conv}")));
    };
    if original.kind == protocol::MessageKind::Recalled {
        return Ok(());
    }
    let moderator = admin
        || matches!(&access, Access::Group(g) if g.role_of(actor).is_some_and(|r| r >= Role::Admin));
    if !moderator {
        if &original.from != actor {
            return Err(ApiError::forbidden(
                "only the sender, or the group's owner and admins, may recall a message",
            ));
        }
        let window = state.config.groups.recall_window_secs * 1000;
        if now_ms().saturating_sub(original.ts) > window {
            return Err(ApiError::forbidden(format!(
                "the recall window of {} seconds has passed",
                state.config.groups.recall_window_secs
            )));
        }
    }
    // A legal hold keeps the content the recall erases (holds.rs).
    let held = crate::holds::preserve_if_held(state, &original).await?;
    if state.store.recall(conv, seq).await?.is_none() {
        return Err(ApiError::not_found(format!("no message {seq} in {conv}")));
    }
    if !held {
        // Its attachment is no longer referenced from here: the next retention pass deletes
        // the file if nothing else references it.
        crate::retention::forget_recalled(state, &original).await;
    }
    // Stored: from here on nothing fails the request.
    let entry = crate::post_commit::Audit::new(now_ms(), actor, "message.recall")
        .conv(conv.clone())
        .target(original.from.clone())
        .message(original.id.to_string())
        .build();
    state.audit(entry).await;
    let frame = ServerFrame::Event {
        event: EventKind::Recalled,
        conv: Some(conv.clone()),
        actor: Some(actor.clone()),
        user: Some(original.from),
        seq: Some(seq),
        until: None,
        detail: None,
    };
    crate::post_commit::event(&*state.router, access.audience(), frame).await;
    Ok(())
}

/// A company administrator's view of a conversation they are not in.
async fn company_admin_access(state: &AppState, conv: &ConvId) -> Result<Access, ApiError> {
    match conv.kind() {
        protocol::ConvKind::Direct(a, b) => Ok(Access::Direct([UserId::new(a), UserId::new(b)])),
        protocol::ConvKind::Group(g) => Ok(Access::Group(
            state.group(&protocol::GroupId::new(g)).await?,
        )),
    }
}

/// The user's conversations, most recently active first, with the last message and the
/// mention flag (an unread message mentions them), within `limits.reply_max_bytes`.
pub async fn conversation_list(
    state: &AppState,
    user: &UserId,
) -> Result<Vec<ConvSummary>, ApiError> {
    let max = state.config.limits.reply_max_bytes;
    Ok(conversation_list_within(state, user, max).await?.0)
}

/// [`conversation_list`] whose estimated encoded size stays within `max_bytes`: once the
/// next entry's last message would not fit, entries come without `last_message` (the list
/// itself is bounded by the user's memberships). Returns the list and its estimated size.
pub async fn conversation_list_within(
    state: &AppState,
    user: &UserId,
    max_bytes: usize,
) -> Result<(Vec<ConvSummary>, usize), ApiError> {
    let mut list = state.store.conversations(user).await?;
    let mut used = 64;
    let mut room = true;
    for c in &mut list {
        used += crate::budget::encoded_len(&*c) + 1;
        if c.last_seq.0 > 0 && room {
            let page = state.store.history(&c.conv, None, 1).await?;
            if let Some(m) = page.messages.into_iter().next() {
                let size = crate::budget::encoded_len(&m) + 16;
                if used + size <= max_bytes {
                    used += size;
                    c.last_message = Some(m);
                } else {
                    room = false;
                }
            }
        }
        if c.unread > 0 {
            let mine = marker(state, NS_MENTION, &format!("{user}/{}", c.conv)).await?;
            let all = if c.conv.group_id().is_some() {
                marker(state, NS_MENTION_ALL, c.conv.as_str()).await?
            } else {
                0
            };
            c.mentioned = mine.max(all) > c.read_seq.0;
        }
    }
    // Dissolved groups are gone from the list.
    let mut kept = Vec::with_capacity(list.len());
    for c in list {
        match c.conv.group_id() {
            Some(g) if state.group(&g).await.is_err() => {}
            _ => kept.push(c),
        }
    }
    Ok((kept, used))
}

async fn marker(state: &AppState, ns: &str, key: &str) -> Result<u64, ApiError> {
    Ok(state
        .meta
        .get(ns, key)
        .await?
        .and_then(|v| std::str::from_utf8(&v).ok()?.parse().ok())
        .unwrap_or(0))
}
