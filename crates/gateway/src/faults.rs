//! Fault injection for end-to-end tests (feature `test-hooks` only, never in a release
//! build): with `CHATD_TEST_FAIL_EVENTS=1` in the environment, the router refuses to publish
//! `event` frames (messages and control messages still pass), so a test can check that a
//! request whose change is stored still succeeds when its follow-up is lost. With
//! `CHATD_TEST_FAIL_PENALTY_BROADCASTS=1` it refuses `PenaltyChanged` control messages, so a
//! test can check that other nodes still learn a penalty (from the store) within the bound.
//! `CHATD_TEST_FAIL_ONCE=<point>,<point>,...` makes each named step of a multi-record write
//! fail once per time it is listed ([`fail_once`]), as a crash there would stop it, so a test
//! can check that the half-written state is invisible and that a retry succeeds.

use async_trait::async_trait;
use protocol::{ServerFrame, UserId};
use router::{Control, Envelope, Payload, Router, RouterError, Sink};
use std::sync::{Arc, Mutex, OnceLock};

/// The fault points still to fire (from `CHATD_TEST_FAIL_ONCE`), one entry per failure.
fn pending() -> &'static Mutex<Vec<String>> {
    static PENDING: OnceLock<Mutex<Vec<String>>> = OnceLock::new();
    PENDING.get_or_init(|| {
        let list = std::env::var("CHATD_TEST_FAIL_ONCE").unwrap_or_default();
        Mutex::new(
            list.split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(str::to_owned)
                .collect(),
        )
    })
}

/// Whether the step named `point` must fail now: true once per time `CHATD_TEST_FAIL_ONCE`
/// lists it. The points: `group.create` (after a new group's records and its members are
/// written, before its name is claimed), `account.create` (after a new account's password
/// record is written, before the account record), `post.approve` (after a post's approval is
/// recorded, before it is delivered).
pub fn fail_once(point: &str) -> bool {
    let mut pending = match pending().lock() {
        Ok(p) => p,
        Err(poisoned) => poisoned.into_inner(),
    };
    match pending.iter().position(|p| p == point) {
        Some(i) => {
            pending.remove(i);
            tracing::warn!(point, "test hook: failing this step once");
            true
        }
        None => false,
    }
}

/// `router` as is, or wrapped so that it fails `event` frames (or penalty broadcasts) when
/// the environment asks.
pub fn wrap_router(router: Arc<dyn Router>) -> Arc<dyn Router> {
    let flag = |name: &str| std::env::var(name).is_ok_and(|v| v == "1");
    let (events, penalties) = (
        flag("CHATD_TEST_FAIL_EVENTS"),
        flag("CHATD_TEST_FAIL_PENALTY_BROADCASTS"),
    );
    if !events && !penalties {
        return router;
    }
    tracing::warn!(
        events,
        penalties,
        "test hook: the router refuses some publishes"
    );
    Arc::new(FailEvents {
        inner: router,
        events,
        penalties,
    })
}

/// A router that refuses `event` frames (`events`) or `PenaltyChanged` control messages
/// (`penalties`) and forwards everything else.
struct FailEvents {
    inner: Arc<dyn Router>,
    events: bool,
    penalties: bool,
}

#[async_trait]
impl Router for FailEvents {
    fn attach(&self, sink: Arc<dyn Sink>) {
        self.inner.attach(sink)
    }

    async fn publish(&self, envelope: Envelope) -> Result<(), RouterError> {
        if self.events && matches!(envelope.payload, Payload::Frame(ServerFrame::Event { .. })) {
            return Err(RouterError::Unavailable("test hook: events refused".into()));
        }
        if self.penalties
            && matches!(
                envelope.payload,
                Payload::Control(Control::PenaltyChanged { .. })
            )
        {
            return Err(RouterError::Unavailable(
                "test hook: penalty broadcasts refused".into(),
            ));
        }
        self.inner.publish(envelope).await
    }

    async fn session_opened(&self, user: &UserId) -> Result<(), RouterError> {
        self.inner.session_opened(user).await
    }

    async fn session_closed(&self, user: &UserId) -> Result<(), RouterError> {
        self.inner.session_closed(user).await
    }

    async fn session_described(
        &self,
        user: &UserId,
        session: &str,
        description: Vec<u8>,
    ) -> Result<(), RouterError> {
        self.inner
            .session_described(user, session, description)
            .await
    }

    async fn session_forgotten(&self, user: &UserId, session: &str) -> Result<(), RouterError> {
        self.inner.session_forgotten(user, session).await
    }

    async fn remote_sessions(&self, user: &UserId) -> Result<Vec<Vec<u8>>, RouterError> {
        self.inner.remote_sessions(user).await
    }
}
