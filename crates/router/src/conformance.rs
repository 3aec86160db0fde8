//! The conformance suite every [`Router`] backend must pass.
//!
//! `run_all` gets a factory that builds a fresh router joined to the same backend (for
//! Redis: another node on the same server), so cross-node delivery is tested too.
//!
//! Test code only: compiled for this crate's unit tests and with the `conformance` feature
//! (for a backend tested outside this crate); production builds do not carry it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::{Audience, Control, Envelope, Payload, Router, Sink};
use protocol::{ServerFrame, UserId};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A sink that records what it receives.
#[derive(Default)]
pub struct RecordingSink {
    /// Everything delivered so far.
    pub got: Mutex<Vec<Arc<Envelope>>>,
}

impl Sink for RecordingSink {
    fn deliver(&self, envelope: Arc<Envelope>) {
        if let Ok(mut g) = self.got.lock() {
            g.push(envelope);
        }
    }
}

impl RecordingSink {
    /// Waits up to two seconds until `pred` holds over the received envelopes.
    pub async fn wait_for(&self, pred: impl Fn(&[Arc<Envelope>]) -> bool) -> bool {
        for _ in 0..200 {
            if pred(&self.got.lock().unwrap()) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }
}

fn pong(n: u32) -> ServerFrame {
    ServerFrame::Pong {
        rid: Some(n.to_string()),
    }
}

fn rid_of(e: &Envelope) -> Option<String> {
    match &e.payload {
        Payload::Frame(ServerFrame::Pong { rid }) => rid.clone(),
        _ => None,
    }
}

/// Runs every check; `make` builds a router (a "node") on the backend under test.
/// `multi_node` says whether routers from `make` share a backend (Redis) or are islands
/// (local), in which case the cross-node checks do not apply.
pub async fn run_all<F, Fut, R>(make: F, multi_node: bool)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<R>>,
    R: Router,
{
    frames_reach_local_sessions_in_order(&make).await;
    if multi_node {
        cross_node_delivery(&make).await;
    }
}

/// Envelopes for a user with a session on this node arrive, in publish order.
pub async fn frames_reach_local_sessions_in_order<F, Fut, R>(make: &F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<R>>,
    R: Router,
{
    let node = make().await;
    let sink = Arc::new(RecordingSink::default());
    node.attach(sink.clone());
    let alice = UserId::new(format!("alice{}", std::process::id()));
    node.session_opened(&alice).await.unwrap();
    for i in 0..100 {
        node.publish(Envelope::frame(vec![alice.clone()], pong(i)))
            .await
            .unwrap();
    }
    assert!(sink.wait_for(|g| g.len() >= 100).await, "not all delivered");
    let got: Vec<String> = sink
        .got
        .lock()
        .unwrap()
        .iter()
        .filter_map(|e| rid_of(e))
        .collect();
    let want: Vec<String> = (0..100).map(|i: u32| i.to_string()).collect();
    assert_eq!(got, want);
    node.session_closed(&alice).await.unwrap();
}

/// An envelope published on one node reaches the node that holds the recipient; control
/// messages for all nodes reach every node.
pub async fn cross_node_delivery<F, Fut, R>(make: &F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<R>>,
    R: Router,
{
    let a = make().await;
    let b = make().await;
    let sink_a = Arc::new(RecordingSink::default());
    let sink_b = Arc::new(RecordingSink::default());
    a.attach(sink_a.clone());
    b.attach(sink_b.clone());
    let bob = UserId::new(format!("bob{}", std::process::id()));
    b.session_opened(&bob).await.unwrap();
    // Presence reaches the other node through the backend; give it a moment.
    tokio::time::sleep(Duration::from_millis(100)).await;
    a.publish(Envelope::frame(vec![bob.clone()], pong(7)))
        .await
        .unwrap();
    assert!(
        sink_b
            .wait_for(|g| g.iter().any(|e| rid_of(e).as_deref() == Some("7")
                && e.audience == Audience::Users(vec![bob.clone()])))
            .await,
        "cross-node frame not delivered"
    );
    let ctl = Control::Disconnect {
        code: 4001,
        reason: "test".into(),
        session: None,
    };
    a.publish(Envelope::broadcast(ctl.clone())).await.unwrap();
    for sink in [&sink_a, &sink_b] {
        assert!(
            sink.wait_for(|g| g.iter().any(|e| e.payload == Payload::Control(ctl.clone())))
                .await,
            "broadcast not delivered to every node"
        );
    }
}
