//! Fault injection for end-to-end tests (feature `test-hooks` only, never in a release
//! build): with `CHATD_TEST_FAIL_EVENTS=1` in the environment, the router refuses to publish
//! `event` frames (messages and control messages still pass), so a test can check that a
//! request whose change is stored still succeeds when its follow-up is lost.

use async_trait::async_trait;
use protocol::{ServerFrame, UserId};
use router::{Envelope, Payload, Router, RouterError, Sink};
use std::sync::Arc;

/// `router` as is, or wrapped so that it fails `event` frames when the environment asks.
pub fn wrap_router(router: Arc<dyn Router>) -> Arc<dyn Router> {
    if std::env::var("CHATD_TEST_FAIL_EVENTS").is_ok_and(|v| v == "1") {
        tracing::warn!("test hook: the router refuses event frames");
        Arc::new(FailEvents(router))
    } else {
        router
    }
}

/// A router that refuses `event` frames and forwards everything else.
struct FailEvents(Arc<dyn Router>);

#[async_trait]
impl Router for FailEvents {
    fn attach(&self, sink: Arc<dyn Sink>) {
        self.0.attach(sink)
    }

    async fn publish(&self, envelope: Envelope) -> Result<(), RouterError> {
        if matches!(envelope.payload, Payload::Frame(ServerFrame::Event { .. })) {
            return Err(RouterError::Unavailable("test hook: events refused".into()));
        }
        self.0.publish(envelope).await
    }

    async fn session_opened(&self, user: &UserId) -> Result<(), RouterError> {
        self.0.session_opened(user).await
    }

    async fn session_closed(&self, user: &UserId) -> Result<(), RouterError> {
        self.0.session_closed(user).await
    }

    async fn session_described(
        &self,
        user: &UserId,
        session: &str,
        description: Vec<u8>,
    ) -> Result<(), RouterError> {
        self.0.session_described(user, session, description).await
    }

    async fn session_forgotten(&self, user: &UserId, session: &str) -> Result<(), RouterError> {
        self.0.session_forgotten(user, session).await
    }

    async fn remote_sessions(&self, user: &UserId) -> Result<Vec<Vec<u8>>, RouterError> {
        self.0.remote_sessions(user).await
    }
}
