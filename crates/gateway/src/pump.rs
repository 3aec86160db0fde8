//! The delivery pump: one task that hands envelopes to the router in the order they were
//! queued. The store queues a conversation's messages in seq order (from its writer, see
//! `Store::append_then`), so two members sending at once are still delivered in seq order.
//!
//! Where the router is in-process (`Router::publish_inline`), a direct conversation's
//! messages skip the queue: [`DeliveryPump::push_inline`] hands them to the hub on the
//! store writer's thread, in the same seq order, one task wake-up fewer per message.

use router::{Envelope, Router};
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Queue in front of the router.
pub struct DeliveryPump {
    tx: mpsc::Sender<Envelope>,
    router: Arc<dyn Router>,
    /// Test hook: never publish the messages of this conversation (a node that dies right
    /// after its acks; see tests/tests/cluster_delivery.rs).
    #[cfg(feature = "test-hooks")]
    drop_in: Option<Arc<str>>,
}

impl DeliveryPump {
    /// Starts the pump task; it drains the queue until `stop`.
    pub fn start(router: Arc<dyn Router>, capacity: usize, stop: CancellationToken) -> Arc<Self> {
        let (tx, mut rx) = mpsc::channel::<Envelope>(capacity.max(1));
        #[cfg(feature = "test-hooks")]
        let drop_in: Option<Arc<str>> = std::env::var("CHATD_TEST_DROP_PUBLISH_IN")
            .ok()
            .map(Into::into);
        #[cfg(feature = "test-hooks")]
        let task_drop_in = drop_in.clone();
        let task_router = router.clone();
        tokio::spawn(async move {
            loop {
                let envelope = tokio::select! {
                    e = rx.recv() => e,
                    _ = stop.cancelled() => None,
                };
                let Some(envelope) = envelope else { return };
                #[cfg(feature = "test-hooks")]
                if dropped(task_drop_in.as_deref(), &envelope) {
                    continue;
                }
                // A failed delivery is repaired by `sync`: the message is already durable.
                let started = std::time::Instant::now();
                let published = task_router.publish(envelope).await;
                crate::metrics::router_published(published.is_ok(), started);
                if let Err(e) = published {
                    tracing::warn!(error = %e, "delivery failed; recipients will sync");
                }
            }
        });
        Arc::new(Self {
            tx,
            router,
            #[cfg(feature = "test-hooks")]
            drop_in,
        })
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

    /// Delivers an envelope on this thread when the router is in-process, else queues it
    /// like [`Self::push`]. Only for envelopes whose conversation always takes this path
    /// (order within a conversation then needs no queue: the caller delivers in seq order);
    /// used for direct conversations, whose audience is two users, so the caller (the store
    /// writer) spends no more than a hub lookup and two queue pushes on it.
    pub fn push_inline(&self, envelope: Envelope) {
        #[cfg(feature = "test-hooks")]
        if dropped(self.drop_in.as_deref(), &envelope) {
            return;
        }
        let started = std::time::Instant::now();
        match self.router.publish_inline(envelope) {
            Ok(()) => crate::metrics::router_published(true, started),
            Err(envelope) => self.push(envelope),
        }
    }
}

/// Whether the test hook drops this envelope (a message of the conversation it names).
#[cfg(feature = "test-hooks")]
fn dropped(drop_in: Option<&str>, envelope: &Envelope) -> bool {
    match (drop_in, &envelope.payload) {
        (Some(conv), router::Payload::Frame(protocol::ServerFrame::Message(m))) => {
            m.conv.as_str() == conv
        }
        _ => false,
    }
}
