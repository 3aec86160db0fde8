//! The delivery pump: one task that hands envelopes to the router in the order they were
//! queued. The store queues a conversation's messages in seq order (from its writer, see
//! `Store::append_then`), so two members sending at once are still delivered in seq order.

use router::{Envelope, Router};
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Queue in front of the router.
pub struct DeliveryPump {
    tx: mpsc::Sender<Envelope>,
}

impl DeliveryPump {
    /// Starts the pump task; it drains the queue until `stop`.
    pub fn start(router: Arc<dyn Router>, capacity: usize, stop: CancellationToken) -> Arc<Self> {
        let (tx, mut rx) = mpsc::channel::<Envelope>(capacity.max(1));
        // Test hook: never publish the messages of this conversation (a node that dies right
        // after its acks; see tests/tests/cluster_delivery.rs).
        #[cfg(feature = "test-hooks")]
        let drop_in = std::env::var("CHATD_TEST_DROP_PUBLISH_IN").ok();
        tokio::spawn(async move {
            loop {
                let envelope = tokio::select! {
                    e = rx.recv() => e,
                    _ = stop.cancelled() => None,
                };
                let Some(envelope) = envelope else { return };
                #[cfg(feature = "test-hooks")]
                if let (Some(conv), router::Payload::Frame(protocol::ServerFrame::Message(m))) =
                    (&drop_in, &envelope.payload)
                {
                    if m.conv.as_str() == conv {
                        continue;
                    }
                }
                // A failed delivery is repaired by `sync`: the message is already durable.
                let started = std::time::Instant::now();
                let published = router.publish(envelope).await;
                crate::metrics::router_published(published.is_ok(), started);
                if let Err(e) = published {
                    tracing::warn!(error = %e, "delivery failed; recipients will sync");
                }
            }
        });
        Arc::new(Self { tx })
    }

    /// Queues an envelope without waiting when there is room. When the queue is full, the
    /// store's writer thread waits for room (backpressure, order kept); an async caller hands
    /// the envelope to a task instead of blocking its runtime thread.
    pub fn push(&self, envelope: Envelope) {
        match self.tx.try_send(envelope) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(envelope)) => {
                if tokio::runtime::Handle::try_current().is_ok() {
                    let tx = self.tx.clone();
                    tokio::spawn(async move {
                        let _ = tx.send(envelope).await;
                    });
                } else {
                    let _ = self.tx.blocking_send(envelope);
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }
}
