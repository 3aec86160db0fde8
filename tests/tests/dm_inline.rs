//! Direct messages delivered without the pump (embedded mode, `Router::publish_inline`):
//! pipelined DMs, some mentioning the peer (a second envelope per message), reach the peer
//! and the sender's other device complete and in seq order with the right mention flags,
//! and the sending device gets acks only.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use protocol::{ClientFrame, MessageKind, SendFrame, ServerFrame, Target, UserId};
use std::time::Duration;
use testkit::*;

const N: usize = 60;

fn dm(i: usize) -> ClientFrame {
    ClientFrame::Send(SendFrame {
        rid: Some(format!("r{i}")),
        client_msg_id: format!("m{i}"),
        to: Target::User(UserId::new("bob")),
        kind: MessageKind::Text,
        body: format!("message {i}"),
        attachment: None,
        // Every third message mentions bob: its delivery is a separate envelope.
        mentions: if i.is_multiple_of(3) {
            vec![UserId::new("bob")]
        } else {
            vec![]
        },
        reply_to: None,
    })
}

/// Reads `n` messages, within a generous deadline, as (seq, body, mentioned).
async fn messages(client: &mut Client, n: usize) -> Vec<(u64, String, bool)> {
    let mut out = Vec::new();
    let read = async {
        while out.len() < n {
            let m = client.next_message().await;
            out.push((m.seq.0, m.body, m.mentioned));
        }
    };
    tokio::time::timeout(Duration::from_secs(30), read)
        .await
        .expect("all messages within 30 s");
    out
}

#[tokio::test]
async fn pipelined_dms_with_mentions_arrive_complete_in_order_and_flagged() {
    let node = Node::start_with(NodeOpts::default().unthrottled_sends());
    let mut sender = Client::connect_device(&node, "alice", "phone").await;
    let mut other_device = Client::connect_device(&node, "alice", "laptop").await;
    let mut bob = Client::connect(&node, "bob").await;

    // All sends go out before any ack is read: they are in flight together.
    for i in 1..=N {
        sender.send(&dm(i)).await;
    }
    let mut acks = Vec::new();
    let read_acks = async {
        while acks.len() < N {
            match sender.recv().await {
                ServerFrame::Ack { seq, .. } => acks.push(seq.expect("a stored message").0),
                ServerFrame::Message(m) => panic!("the sending device got its own message {m:?}"),
                _ => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), read_acks)
        .await
        .expect("all acks within 30 s");
    let want_seqs: Vec<u64> = (1..=N as u64).collect();
    assert_eq!(acks, want_seqs, "acks in send order with consecutive seqs");

    let want: Vec<(u64, String, bool)> = (1..=N)
        .map(|i| (i as u64, format!("message {i}"), i.is_multiple_of(3)))
        .collect();
    assert_eq!(messages(&mut bob, N).await, want, "the peer");
    let unflagged: Vec<(u64, String, bool)> = want
        .iter()
        .map(|(s, b, _)| (*s, b.clone(), false))
        .collect();
    assert_eq!(
        messages(&mut other_device, N).await,
        unflagged,
        "the sender's other device (not mentioned)"
    );

    // Nothing more for the sending device: no echo of its own messages.
    assert!(
        sender
            .try_recv(Duration::from_millis(300))
            .await
            .is_none_or(|f| !matches!(f, ServerFrame::Message(_))),
        "no message frame for the sending device"
    );
}
