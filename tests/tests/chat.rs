//! Chat as clients see it: direct messages, groups, devices, history, sync, read, typing.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use protocol::{ClientFrame, Codec, ConvId, MessageKind, Seq, ServerFrame, Target, UserId};
use std::collections::BTreeMap;
use std::time::Duration;
use testkit::*;

async fn dm_both_ways(codec: Codec) {
    let node = Node::start();
    let mut alice = Client::connect_with(node.addr, "alice", codec).await;
    let mut bob = Client::connect_with(node.addr, "bob", codec).await;

    let ack = alice.send_dm("bob", "a1", "hello bob").await;
    assert_eq!(ack_seq(&ack), 1);
    let m = bob.next_message().await;
    assert_eq!(
        (m.from.as_str(), m.body.as_str(), m.seq),
        ("alice", "hello bob", Seq(1))
    );
    assert_eq!(m.conv, ConvId::parse("dm:alice:bob").unwrap());

    let ack = bob.send_dm("alice", "b1", "hi alice 👋").await;
    assert_eq!(ack_seq(&ack), 2);
    let m = alice.next_message().await;
    assert_eq!(
        (m.from.as_str(), m.body.as_str(), m.seq),
        ("bob", "hi alice 👋", Seq(2))
    );
}

#[tokio::test]
async fn direct_messages_both_ways_json() {
    dm_both_ways(Codec::Json).await;
}

#[tokio::test]
async fn direct_messages_both_ways_msgpack() {
    dm_both_ways(Codec::MsgPack).await;
}

#[tokio::test]
async fn json_and_msgpack_clients_talk_to_each_other() {
    let node = Node::start();
    let mut alice = Client::connect_with(node.addr, "alice", Codec::MsgPack).await;
    let mut bob = Client::connect_with(node.addr, "bob", Codec::Json).await;
    alice.send_dm("bob", "x1", "binary to text").await;
    assert_eq!(bob.next_message().await.body, "binary to text");
    bob.send_dm("alice", "x2", "text to binary").await;
    assert_eq!(alice.next_message().await.body, "text to binary");
}

#[tokio::test]
async fn group_of_three_fans_out_in_order() {
    let node = Node::start();
    let api = Api::new(&node);
    let mut a = Client::connect(&node, "ann").await;
    let mut b = Client::connect(&node, "ben").await;
    let mut c = Client::connect(&node, "cat").await;
    let g = api.create_group("ann", "Project X", &["ben", "cat"]).await;
    // Membership events reach the members.
    for client in [&mut b, &mut c] {
        client
            .recv_until(|f| {
                matches!(
                    f,
                    ServerFrame::Event {
                        event: protocol::EventKind::MemberJoined,
                        ..
                    }
                )
            })
            .await;
    }
    for i in 1..=5 {
        let ack = a
            .send_group(&g, &format!("m{i}"), &format!("msg {i}"))
            .await;
        assert_eq!(ack_seq(&ack), i);
    }
    for client in [&mut b, &mut c] {
        for i in 1..=5u64 {
            let m = client.next_message().await;
            assert_eq!(m.seq, Seq(i));
            assert_eq!(m.body, format!("msg {i}"));
        }
    }
    // The sender's own session gets acks, not its messages back.
    assert!(a
        .try_recv(Duration::from_millis(300))
        .await
        .is_none_or(|f| !matches!(f, ServerFrame::Message(_))));
}

#[tokio::test]
async fn own_sends_appear_on_other_devices() {
    let node = Node::start();
    let mut phone = Client::connect(&node, "dana").await;
    let mut desktop = Client::connect(&node, "dana").await;
    let mut eve = Client::connect(&node, "eve").await;
    phone.send_dm("eve", "p1", "from my phone").await;
    let on_desktop = desktop.next_message().await;
    assert_eq!(on_desktop.body, "from my phone");
    assert_eq!(on_desktop.from.as_str(), "dana");
    assert_eq!(eve.next_message().await.body, "from my phone");
    // Messages to dana reach both devices.
    eve.send_dm("dana", "e1", "to both").await;
    assert_eq!(phone.next_message().await.body, "to both");
    assert_eq!(desktop.next_message().await.body, "to both");
}

#[tokio::test]
async fn history_pages_backwards() {
    let node = Node::start();
    let mut a = Client::connect(&node, "ann").await;
    let _b = Client::connect(&node, "bob").await;
    for i in 1..=25 {
        a.send_dm("bob", &format!("h{i}"), &format!("n{i}")).await;
    }
    let conv = ConvId::parse("dm:ann:bob").unwrap();
    let mut before = None;
    let mut seen = Vec::new();
    loop {
        a.send(&ClientFrame::History {
            rid: Some("h".into()),
            conv: conv.clone(),
            before_seq: before,
            limit: Some(10),
        })
        .await;
        let ServerFrame::History {
            messages, has_more, ..
        } = a
            .recv_until(|f| matches!(f, ServerFrame::History { .. }))
            .await
        else {
            unreachable!()
        };
        assert!(
            messages.windows(2).all(|w| w[0].seq > w[1].seq),
            "newest first"
        );
        seen.extend(messages.iter().map(|m| m.seq.0));
        before = messages.last().map(|m| m.seq);
        if !has_more {
            break;
        }
    }
    assert_eq!(seen, (1..=25).rev().collect::<Vec<_>>());
}

#[tokio::test]
async fn reconnect_and_sync_gets_exactly_the_missed_messages() {
    let node = Node::start();
    let api = Api::new(&node);
    let mut a = Client::connect(&node, "ann").await;
    let mut b = Client::connect(&node, "bob").await;
    let g = api.create_group("ann", "team", &["bob"]).await;
    a.send_group(&g, "g1", "before").await;
    a.send_dm("bob", "d1", "dm before").await;
    let seen_group = b
        .recv_until(|f| matches!(f, ServerFrame::Message(m) if m.body == "before"))
        .await;
    let ServerFrame::Message(seen_group) = seen_group else {
        unreachable!()
    };
    b.recv_until(|f| matches!(f, ServerFrame::Message(m) if m.body == "dm before"))
        .await;
    b.ws.close(None).await.unwrap();
    drop(b);

    for i in 0..7 {
        a.send_group(&g, &format!("g-off{i}"), &format!("missed {i}"))
            .await;
    }
    a.send_dm("bob", "d-off", "missed dm").await;

    let mut b = Client::connect(&node, "bob").await;
    let gconv = ConvId::group(&protocol::GroupId::new(g.clone()));
    let dconv = ConvId::parse("dm:ann:bob").unwrap();
    let mut cursors = BTreeMap::new();
    cursors.insert(gconv.clone(), seen_group.seq);
    cursors.insert(dconv.clone(), Seq(1));
    b.send(&ClientFrame::Sync {
        rid: Some("s".into()),
        cursors,
        limit: None,
    })
    .await;
    let ServerFrame::Synced { conversations, .. } = b
        .recv_until(|f| matches!(f, ServerFrame::Synced { .. }))
        .await
    else {
        unreachable!()
    };
    let group_part = conversations.iter().find(|c| c.conv == gconv).unwrap();
    let bodies: Vec<&str> = group_part
        .messages
        .iter()
        .map(|m| m.body.as_str())
        .collect();
    assert_eq!(
        bodies,
        (0..7).map(|i| format!("missed {i}")).collect::<Vec<_>>()
    );
    assert_eq!(
        group_part
            .messages
            .iter()
            .map(|m| m.seq.0)
            .collect::<Vec<_>>(),
        (2..=8).collect::<Vec<_>>()
    );
    assert!(!group_part.has_more);
    let dm_part = conversations.iter().find(|c| c.conv == dconv).unwrap();
    assert_eq!(dm_part.messages.len(), 1);
    assert_eq!(dm_part.messages[0].body, "missed dm");

    // A bounded sync says has_more and continues from where it stopped.
    let mut cursors = BTreeMap::new();
    cursors.insert(gconv.clone(), Seq(0));
    b.send(&ClientFrame::Sync {
        rid: Some("s2".into()),
        cursors,
        limit: Some(3),
    })
    .await;
    let ServerFrame::Synced { conversations, .. } = b
        .recv_until(|f| matches!(f, ServerFrame::Synced { .. }))
        .await
    else {
        unreachable!()
    };
    assert_eq!(conversations[0].messages.len(), 3);
    assert!(conversations[0].has_more);
}

#[tokio::test]
async fn retried_send_is_stored_once() {
    let node = Node::start();
    let mut a = Client::connect(&node, "ann").await;
    let mut b = Client::connect(&node, "bob").await;
    let first = a.send_dm("bob", "same-id", "once").await;
    let again = a.send_dm("bob", "same-id", "once").await;
    match (&first, &again) {
        (
            ServerFrame::Ack {
                seq: s1,
                id: i1,
                duplicate: false,
                ..
            },
            ServerFrame::Ack {
                seq: s2,
                id: i2,
                duplicate: true,
                ..
            },
        ) => {
            assert_eq!(s1, s2);
            assert_eq!(i1, i2);
        }
        other => panic!("unexpected acks {other:?}"),
    }
    assert_eq!(b.next_message().await.body, "once");
    assert!(b
        .try_recv(Duration::from_millis(300))
        .await
        .is_none_or(|f| !matches!(f, ServerFrame::Message(_))));
    a.send(&ClientFrame::History {
        rid: None,
        conv: ConvId::parse("dm:ann:bob").unwrap(),
        before_seq: None,
        limit: None,
    })
    .await;
    let ServerFrame::History { messages, .. } = a
        .recv_until(|f| matches!(f, ServerFrame::History { .. }))
        .await
    else {
        unreachable!()
    };
    assert_eq!(messages.len(), 1);
}

#[tokio::test]
async fn read_cursors_typing_and_conversation_list() {
    let node = Node::start();
    let mut a = Client::connect(&node, "ann").await;
    let mut b = Client::connect(&node, "bob").await;
    for i in 0..3 {
        a.send_dm("bob", &format!("r{i}"), "x").await;
    }
    let conv = ConvId::parse("dm:ann:bob").unwrap();
    b.send(&ClientFrame::Typing { conv: conv.clone() }).await;
    let f = a
        .recv_until(|f| matches!(f, ServerFrame::Typing { .. }))
        .await;
    assert_eq!(
        f,
        ServerFrame::Typing {
            conv: conv.clone(),
            user: UserId::new("bob")
        }
    );

    b.send(&ClientFrame::Read {
        rid: None,
        conv: conv.clone(),
        seq: Seq(2),
    })
    .await;
    let f = a
        .recv_until(|f| matches!(f, ServerFrame::Read { .. }))
        .await;
    assert_eq!(
        f,
        ServerFrame::Read {
            conv: conv.clone(),
            user: UserId::new("bob"),
            seq: Seq(2)
        }
    );

    b.send(&ClientFrame::Conversations {
        rid: Some("c".into()),
    })
    .await;
    let ServerFrame::Conversations { conversations, .. } = b
        .recv_until(|f| matches!(f, ServerFrame::Conversations { .. }))
        .await
    else {
        unreachable!()
    };
    assert_eq!(conversations.len(), 1);
    assert_eq!(conversations[0].conv, conv);
    assert_eq!(conversations[0].last_seq, Seq(3));
    assert_eq!(conversations[0].read_seq, Seq(2));
    assert_eq!(conversations[0].unread, 1);
}

#[tokio::test]
async fn images_and_files_carry_attachments_mentions_and_replies() {
    let node = Node::start();
    let api = Api::new(&node);
    let mut a = Client::connect(&node, "ann").await;
    let mut b = Client::connect(&node, "bob").await;
    a.send_dm("bob", "t1", "look at this").await;
    b.next_message().await;
    let (status, uploaded) = api
        .upload(
            "ann",
            "chart.png",
            "image/png",
            vec![0x89, b'P', b'N', b'G', 1, 2, 3],
        )
        .await;
    assert_eq!(status, 201, "{uploaded}");
    let file_id = uploaded["file_id"].as_str().unwrap().to_owned();
    a.send(&ClientFrame::Send(protocol::SendFrame {
        rid: Some("i1".into()),
        client_msg_id: "i1".into(),
        to: Target::User(UserId::new("bob")),
        kind: MessageKind::Image,
        body: "the chart".into(),
        attachment: Some(protocol::Attachment {
            file_id: file_id.clone(),
            name: "chart.png".into(),
            // The client's size and type are replaced by what the server recorded.
            size: 2048,
            mime: "image/jpeg".into(),
            width: Some(640),
            height: Some(480),
        }),
        mentions: vec![UserId::new("bob")],
        reply_to: Some(Seq(1)),
    }))
    .await;
    ack_seq(&a.recv_until(|f| is_reply_to(f, "i1")).await);
    let m = b.next_message().await;
    assert_eq!(m.kind, MessageKind::Image);
    let att = m.attachment.as_ref().unwrap();
    assert_eq!(att.file_id, file_id);
    assert_eq!((att.size, att.mime.as_str()), (7, "image/png"));
    assert_eq!((att.width, att.height), (Some(640), Some(480)));
    assert_eq!(m.mentions, vec![UserId::new("bob")]);
    assert_eq!(m.reply_to, Some(Seq(1)));
}

#[tokio::test]
async fn racing_senders_are_delivered_in_seq_order() {
    let node = Node::start_with(NodeOpts::default().unthrottled_sends());
    let api = Api::new(&node);
    let names = ["s1", "s2", "s3", "s4", "s5"];
    let mut senders = Vec::new();
    for n in names {
        senders.push(Client::connect(&node, n).await);
    }
    let mut reader = Client::connect(&node, "reader").await;
    let g = api
        .create_group("s1", "race", &["s2", "s3", "s4", "s5", "reader"])
        .await;
    let per = 40;
    let mut tasks = Vec::new();
    for (k, mut c) in senders.into_iter().enumerate() {
        let g = g.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..per {
                c.send(&ClientFrame::Send(protocol::SendFrame {
                    rid: None,
                    client_msg_id: format!("{k}-{i}"),
                    to: Target::Group(protocol::GroupId::new(g.clone())),
                    kind: MessageKind::Text,
                    body: format!("{k}-{i}"),
                    attachment: None,
                    mentions: vec![],
                    reply_to: None,
                }))
                .await;
            }
            c
        }));
    }
    let mut keep = Vec::new();
    for t in tasks {
        keep.push(t.await.unwrap());
    }
    let mut last = 0;
    for _ in 0..(per * names.len()) {
        let m = reader.next_message().await;
        assert_eq!(m.seq.0, last + 1, "delivered out of seq order");
        last = m.seq.0;
    }
}
