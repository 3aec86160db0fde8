//! A session's pipelined sends: the client sends many frames without waiting, and the node
//! stores them in send order, acknowledges them in send order, and delivers them in seq order.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use protocol::{ClientFrame, ConvId, MessageKind, ServerFrame, Target};
use std::collections::HashMap;
use testkit::*;

fn send(rid: &str, cmid: &str, to: Target, body: &str) -> ClientFrame {
    ClientFrame::Send(protocol::SendFrame {
        rid: Some(rid.to_owned()),
        client_msg_id: cmid.to_owned(),
        to,
        kind: MessageKind::Text,
        body: body.to_owned(),
        attachment: None,
        mentions: vec![],
        reply_to: None,
    })
}

#[tokio::test]
async fn pipelined_sends_are_stored_acked_and_delivered_in_send_order() {
    let node = Node::start_with(NodeOpts::default().unthrottled_sends());
    let api = Api::new(&node);
    let mut alice = Client::connect(&node, "alice").await;
    let mut bob = Client::connect(&node, "bob").await;
    let g = api.create_group("alice", "pipe", &["bob"]).await;
    let group = Target::Group(protocol::GroupId::new(g.clone()));
    let dm = Target::User(protocol::UserId::new("bob"));

    // 200 frames without waiting: group and direct sends interleaved, a retry of an earlier
    // client_msg_id, an invalid send, and a ping at the end.
    let n = 200;
    let mut rids = Vec::new();
    for i in 0..n {
        let rid = format!("r{i}");
        let frame = match i {
            50 => send(&rid, "c10", group.clone(), "retry of c10"),
            60 => send(&rid, "", group.clone(), "no client_msg_id"),
            _ if i % 3 == 0 => send(&rid, &format!("c{i}"), dm.clone(), &format!("d{i}")),
            _ => send(&rid, &format!("c{i}"), group.clone(), &format!("g{i}")),
        };
        alice.send(&frame).await;
        rids.push(rid);
    }
    alice
        .send(&ClientFrame::Ping {
            rid: Some("last".into()),
        })
        .await;

    // Replies come back in request order; seqs grow in send order per conversation.
    let mut last_seq: HashMap<ConvId, u64> = HashMap::new();
    for (i, rid) in rids.iter().enumerate() {
        let reply = alice
            .recv_until(|f| matches!(f, ServerFrame::Ack { .. } | ServerFrame::Error { .. }))
            .await;
        assert!(
            is_reply_to(&reply, rid),
            "reply {i} out of order: {reply:?}"
        );
        match (i, &reply) {
            (50, ServerFrame::Ack { duplicate, .. }) => assert!(duplicate),
            (60, ServerFrame::Error { .. }) => {}
            (_, ServerFrame::Ack { conv, seq, .. }) => {
                let seq = seq.expect("stored").0;
                let last = last_seq.entry(conv.clone()).or_insert(0);
                assert_eq!(seq, *last + 1, "send {i} stored out of send order");
                *last = seq;
            }
            _ => panic!("unexpected reply {i}: {reply:?}"),
        }
    }
    let pong = alice.recv().await;
    assert!(matches!(pong, ServerFrame::Pong { .. }), "{pong:?}");

    // The other member gets every stored message of each conversation in seq order.
    let expected: u64 = last_seq.values().sum();
    let mut seen: HashMap<ConvId, u64> = HashMap::new();
    for _ in 0..expected {
        let m = bob.next_message().await;
        let last = seen.entry(m.conv.clone()).or_insert(0);
        assert_eq!(m.seq.0, *last + 1, "delivered out of seq order");
        *last = m.seq.0;
    }
    assert_eq!(seen, last_seq);
}
