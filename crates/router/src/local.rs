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
        self.publish_inline(envelope)
            .map_err(|_| RouterError::NoSink)
    }

    fn publish_inline(&self, envelope: Envelope) -> Result<(), Envelope> {
        match self.sink.get() {
            Some(sink) => {
                sink.deliver(Arc::new(envelope));
                Ok(())
            }
            None => Err(envelope),
        }
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
    use crate::{Envelope, Router, Sink};
    use protocol::{ServerFrame, UserId};
    use std::sync::{Arc, Mutex};

    #[derive(Default)]
    struct Recorder(Mutex<Vec<Arc<Envelope>>>);

    impl Sink for Recorder {
        fn deliver(&self, envelope: Arc<Envelope>) {
            self.0
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(envelope);
        }
    }

    #[test]
    fn publish_inline_delivers_on_the_callers_thread_once_attached() {
        let router = super::LocalRouter::new();
        let envelope = Envelope::frame(vec![UserId::new("u1")], ServerFrame::Pong { rid: None });
        // No sink yet: the envelope comes back for the queued path.
        let back = router.publish_inline(envelope.clone());
        assert_eq!(back, Err(envelope.clone()));
        let sink = Arc::new(Recorder::default());
        router.attach(sink.clone());
        assert_eq!(router.publish_inline(envelope.clone()), Ok(()));
        let got = sink.0.lock().unwrap_or_else(|e| e.into_inner());
        assert_eq!(got.len(), 1);
        assert_eq!(*got[0], envelope);
    }

    #[tokio::test]
    async fn conformance() {
        crate::conformance::run_all(
            || async { std::sync::Arc::new(super::LocalRouter::new()) },
            false,
        )
        .await;
    }
}
