//! The in-process router: one node, so publishing is handing the envelope to the sink.

use crate::{Envelope, Router, RouterError, Sink};
use async_trait::async_trait;
use protocol::UserId;
use std::sync::{Arc, OnceLock};

/// Routes within this process only (embedded mode).
#[derive(Default)]
pub struct LocalRouter {
    sink: OnceLock<Arc<dyn Sink>>,
}

impl LocalRouter {
    /// A router with no sink yet.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl Router for LocalRouter {
    fn attach(&self, sink: Arc<dyn Sink>) {
        if self.sink.set(sink).is_err() {
            tracing::warn!("LocalRouter::attach called twice; keeping the first sink");
        }
    }

    async fn publish(&self, envelope: Envelope) -> Result<(), RouterError> {
        let sink = self.sink.get().ok_or(RouterError::NoSink)?;
        sink.deliver(Arc::new(envelope));
        Ok(())
    }

    async fn session_opened(&self, _user: &UserId) -> Result<(), RouterError> {
        Ok(())
    }

    async fn session_closed(&self, _user: &UserId) -> Result<(), RouterError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn conformance() {
        crate::conformance::run_all(
            || async { std::sync::Arc::new(super::LocalRouter::new()) },
            false,
        )
        .await;
    }
}
