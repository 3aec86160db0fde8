//! What follows a durable change, in one place: the audit entry, the `event` frames for the
//! people concerned and the control messages for the other nodes (cache invalidation,
//! disconnects, revocations).
//!
//! The rule: once a change is stored, the request succeeds. Everything here is best effort:
//! a failure is logged (`warn`, with what was lost) and counted ([`failures`], shown by
//! `GET /healthz`), never returned. Whatever these follow-ups speed up has a slower path
//! that does not depend on them (caches expire, revocations and accounts are re-read from
//! the store, clients catch up with `sync`), so a lost one delays, it does not undo.
//!
//! This module takes the stores and the router rather than the whole state so that
//! `AppState::audit` can use it too; the domain helpers that build frames are in `events.rs`.

use protocol::{ConvId, ServerFrame, UserId};
use router::{Control, Envelope, Payload, Router};
use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};
use store::{AuditEntry, ReviewStore};

static AUDIT_FAILURES: AtomicU64 = AtomicU64::new(0);
static EVENT_FAILURES: AtomicU64 = AtomicU64::new(0);
static CONTROL_FAILURES: AtomicU64 = AtomicU64::new(0);

/// How many follow-ups of stored changes this process lost, by kind (since it started).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Failures {
    /// Audit entries that could not be written.
    pub audit: u64,
    /// `event` frames that could not be published.
    pub events: u64,
    /// Control messages (cache invalidation, disconnects, revocations) that could not be
    /// published.
    pub controls: u64,
}

/// The failure counters of this process.
pub fn failures() -> Failures {
    Failures {
        audit: AUDIT_FAILURES.load(Ordering::Relaxed),
        events: EVENT_FAILURES.load(Ordering::Relaxed),
        controls: CONTROL_FAILURES.load(Ordering::Relaxed),
    }
}

/// Writes an audit entry (best effort).
pub async fn audit(review: &dyn ReviewStore, entry: AuditEntry) {
    let action = entry.action.clone();
    if let Err(e) = review.audit(entry).await {
        AUDIT_FAILURES.fetch_add(1, Ordering::Relaxed);
        crate::metrics::post_commit_failure("audit");
        tracing::warn!(error = %e, %action, "post-commit: could not write the audit entry");
    }
}

/// Publishes any envelope (best effort); a failure counts as a lost event or control
/// message by what the envelope carries.
pub async fn publish(router: &dyn Router, envelope: Envelope) {
    let control = matches!(envelope.payload, Payload::Control(_));
    if let Err(e) = router.publish(envelope).await {
        if control {
            CONTROL_FAILURES.fetch_add(1, Ordering::Relaxed);
            crate::metrics::post_commit_failure("control");
            tracing::warn!(error = %e, "post-commit: could not publish a control message");
        } else {
            EVENT_FAILURES.fetch_add(1, Ordering::Relaxed);
            crate::metrics::post_commit_failure("event");
            tracing::warn!(error = %e, "post-commit: could not publish an event");
        }
    }
}

/// Sends an `event` (or other) frame to `audience` (best effort; nothing for nobody).
pub async fn event(router: &dyn Router, audience: Vec<UserId>, frame: ServerFrame) {
    if audience.is_empty() {
        return;
    }
    publish(router, Envelope::frame(audience, frame)).await;
}

/// Sends a control message to the sessions of `users` on every node (best effort).
pub async fn control(router: &dyn Router, users: Vec<UserId>, control: Control) {
    publish(router, Envelope::control(users, control)).await;
}

/// Sends a control message to every node (best effort).
pub async fn broadcast(router: &dyn Router, control: Control) {
    publish(router, Envelope::broadcast(control)).await;
}

/// Everything that follows one stored change, as a value: the audit entries and the `event`
/// frames with their audiences. A domain operation builds it beside its write and hands it to
/// [`after_commit`] once the write is durable, so every operation ends the same way.
#[derive(Debug, Default)]
pub struct FollowUps {
    /// Audit entries, written in order.
    pub audit: Vec<AuditEntry>,
    /// `event` frames and who gets them, published in order after the audit entries.
    pub events: Vec<(Vec<UserId>, ServerFrame)>,
}

/// Runs the follow-ups of a stored change (best effort, like everything here): the audit
/// entries, then the events.
pub async fn after_commit(review: &dyn ReviewStore, router: &dyn Router, follow: FollowUps) {
    for entry in follow.audit {
        audit(review, entry).await;
    }
    for (audience, frame) in follow.events {
        event(router, audience, frame).await;
    }
}

/// Builds an audit entry: `Audit::new(ts, actor, action).conv(..).target(..).build()`.
#[derive(Debug, Clone)]
pub struct Audit(AuditEntry);

impl Audit {
    /// An entry of `action` by `actor` at `ts` (ms since the epoch).
    pub fn new(ts: u64, actor: &UserId, action: &str) -> Self {
        Audit(AuditEntry::action(ts, actor, action))
    }

    /// The conversation concerned.
    pub fn conv(mut self, conv: ConvId) -> Self {
        self.0.conv = Some(conv);
        self
    }

    /// The user concerned, when not the actor.
    pub fn target(mut self, user: UserId) -> Self {
        self.0.target = Some(user);
        self
    }

    /// The message concerned (server id or review id).
    pub fn message(mut self, message: impl Into<String>) -> Self {
        self.0.message = Some(message.into());
        self
    }

    /// The moderation rule id and category behind the action, when there is one.
    pub fn verdict(mut self, rule: Option<String>, category: Option<String>) -> Self {
        self.0.rule = rule;
        self.0.category = category;
        self
    }

    /// What changed (a mute's end, a new role, ...).
    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.0.detail = Some(detail.into());
        self
    }

    /// The entry.
    pub fn build(self) -> AuditEntry {
        self.0
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn the_builder_fills_what_it_is_given() {
        let e = Audit::new(7, &UserId::new("ann"), "message.recall")
            .conv(ConvId::group(&protocol::GroupId::new("g1")))
            .target(UserId::new("bob"))
            .message("m1")
            .build();
        assert_eq!(e.ts, 7);
        assert_eq!(e.action, "message.recall");
        assert_eq!(e.target, Some(UserId::new("bob")));
        assert_eq!(e.message.as_deref(), Some("m1"));
        assert_eq!(e.detail, None);
    }
}
