//! Delivery guarantees across nodes (docs/PROTOCOL.md, "Delivery guarantees"): seq order on
//! every session with many concurrent senders on several nodes, acked messages reaching
//! online recipients after their publisher was killed (without a `sync`), a seq taken by a
//! node that died before storing it becoming a visible skip, and `hello` first in reconnect
//! storms (both modes).
//!
//! Needs the shared Redis and CQL database (see tests/tests/cluster.rs); the tests run one at
//! a time.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use protocol::{ClientFrame, ConvId, GroupId, MessageKind, SendFrame, Seq, ServerFrame, Target};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use testkit::*;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn nodes(keyspace: &str, n: usize, extra: &[(&str, &str)]) -> Vec<Node> {
    (0..n)
        .map(|i| {
            let mut opts = cluster_node(keyspace, &format!("{keyspace}-n{i}"));
            for (k, v) in extra {
                opts = opts.env(k, v);
            }
            Node::start_with(opts)
        })
        .collect()
}

fn send_frame(target: Target, cmid: &str, body: &str) -> ClientFrame {
    ClientFrame::Send(SendFrame {
        rid: Some(cmid.to_owned()),
        client_msg_id: cmid.to_owned(),
        to: target,
        kind: MessageKind::Text,
        body: body.to_owned(),
        attachment: None,
        mentions: vec![],
        reply_to: None,
    })
}

/// Reads `message` frames of `conv` until `stop` says so or `wait` passes without one;
/// asserts that every one has a higher seq than the one before (order, no duplicate).
async fn read_in_order(
    c: &mut Client,
    conv: &ConvId,
    wait: Duration,
    mut stop: impl FnMut(&[protocol::Message]) -> bool,
) -> Vec<protocol::Message> {
    let mut got: Vec<protocol::Message> = Vec::new();
    while !stop(&got) {
        let Some(f) = c.try_recv(wait).await else {
            break;
        };
        if let ServerFrame::Message(m) = f {
            if &m.conv != conv {
                continue;
            }
            if let Some(prev) = got.last() {
                assert!(
                    m.seq > prev.seq,
                    "{}: seq {} delivered after {} (out of order or duplicate)",
                    c.user,
                    m.seq.0,
                    prev.seq.0
                );
            }
            got.push(m);
        }
    }
    got
}

#[tokio::test]
async fn five_concurrent_senders_on_three_nodes_are_delivered_complete_and_in_order() {
    let _g = SERIAL.lock().await;
    let keyspace = unique_keyspace("dlv");
    let nodes = nodes(&keyspace, 3, &[]);
    let senders = ["s0", "s1", "s2", "s3", "s4"];
    let readers = ["r0", "r1", "r2"];
    let mut members: Vec<&str> = senders.to_vec();
    members.extend(readers);
    let api = Api::new(&nodes[0]);
    for m in &members {
        api.touch(m).await;
    }
    let g = api.create_group("s0", "busy", &members[1..]).await;
    let conv = ConvId::group(&GroupId::new(g.clone()));
    // A reader on every node, plus a second reader session on node 0.
    let mut reader_clients = Vec::new();
    for (i, r) in readers.iter().enumerate() {
        reader_clients.push(Client::connect(&nodes[i], r).await);
    }
    reader_clients.push(Client::connect(&nodes[0], "r1").await);

    let per_sender = 40usize;
    let total = per_sender * senders.len();
    let mut tasks = Vec::new();
    for (i, s) in senders.iter().enumerate() {
        let mut c = Client::connect(&nodes[i % nodes.len()], s).await;
        let g = g.clone();
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for k in 0..per_sender {
                let cmid = format!("{}-{k}", c.user);
                let ack = c.send_group(&g, &cmid, &cmid).await;
                acked.push(ack_seq(&ack));
            }
            acked
        }));
    }
    let started = Instant::now();
    let readers_done =
        futures_util::future::join_all(reader_clients.iter_mut().map(|c| {
            let conv = conv.clone();
            async move {
                read_in_order(c, &conv, Duration::from_secs(15), |got| got.len() >= total).await
            }
        }))
        .await;
    let mut acked = Vec::new();
    for t in tasks {
        acked.extend(t.await.unwrap());
    }
    acked.sort_unstable();
    assert_eq!(acked, (1..=total as u64).collect::<Vec<_>>(), "acks");
    for got in readers_done {
        let seqs: Vec<u64> = got.iter().map(|m| m.seq.0).collect();
        assert_eq!(
            seqs,
            (1..=total as u64).collect::<Vec<_>>(),
            "0 lost, 0 out of order"
        );
    }
    eprintln!(
        "{total} messages from 5 senders on 3 nodes to 4 reader sessions in {:?}",
        started.elapsed()
    );
    // How many arrived out of order and were held (the nodes log their hold-back counters).
    tokio::time::sleep(Duration::from_millis(700)).await;
    for (i, n) in nodes.iter().enumerate() {
        let last = n
            .log_lines()
            .into_iter()
            .rfind(|l| l.contains("hold-back") && l.contains("sequenced"));
        eprintln!("node {i}: {}", last.unwrap_or_default());
    }
}

#[tokio::test]
async fn acked_messages_reach_online_recipients_after_their_publisher_is_killed() {
    let _g = SERIAL.lock().await;
    let keyspace = unique_keyspace("dlv");
    let skip_after = 3000u64;
    let skip_env = skip_after.to_string();
    let mut nodes = nodes(
        &keyspace,
        2,
        &[("CHATD_ROUTER__SKIP_AFTER_MS", skip_env.as_str())],
    );
    let senders = ["k0", "k1", "k2", "k3", "k4"];
    let mut members: Vec<&str> = senders.to_vec();
    members.push("bob");
    let api = Api::new(&nodes[1]);
    for m in &members {
        api.touch(m).await;
    }
    let g = api.create_group("bob", "crash", &members[..5]).await;
    let conv = ConvId::group(&GroupId::new(g.clone()));
    let mut bob = Client::connect(&nodes[1], "bob").await;

    // Five senders on node 0, each sending back to back; the acks go to one channel.
    let (tx, mut acks) = tokio::sync::mpsc::unbounded_channel::<u64>();
    let mut clients = Vec::new();
    for s in senders {
        clients.push(Client::connect(&nodes[0], s).await);
    }
    let mut tasks = Vec::new();
    for mut c in clients {
        let (g, tx) = (g.clone(), tx.clone());
        tasks.push(tokio::spawn(async move {
            for k in 0.. {
                let cmid = format!("{}-{k}", c.user);
                c.send(&send_frame(
                    Target::Group(GroupId::new(g.clone())),
                    &cmid,
                    &cmid,
                ))
                .await;
                // Until the node dies: then the socket ends (the test kit panics, ending the task).
                loop {
                    match c.try_recv(Duration::from_secs(5)).await {
                        Some(ServerFrame::Ack { seq: Some(s), .. }) => {
                            let _ = tx.send(s.0);
                            break;
                        }
                        Some(_) => continue,
                        None => return,
                    }
                }
            }
        }));
    }
    drop(tx);
    let mut acked = Vec::new();
    while acked.len() < 150 {
        acked.push(acks.recv().await.unwrap());
    }
    nodes[0].kill9();
    let killed = Instant::now();
    for t in tasks {
        let _ = t.await;
    }
    while let Ok(s) = acks.try_recv() {
        acked.push(s);
    }
    acked.sort_unstable();
    let last_acked = *acked.last().unwrap();

    // Bob, online on the surviving node, gets every acked message without a `sync`, in order.
    let got = read_in_order(&mut bob, &conv, Duration::from_secs(15), |got| {
        got.iter().any(|m| m.seq.0 >= last_acked)
    })
    .await;
    let all_acked_in = killed.elapsed();
    let seqs: Vec<u64> = got.iter().map(|m| m.seq.0).collect();
    for s in &acked {
        assert!(
            seqs.contains(s),
            "acked seq {s} never reached bob (got {} messages up to {:?})",
            seqs.len(),
            seqs.last()
        );
    }
    assert_eq!(
        seqs,
        (1..=seqs.len() as u64).collect::<Vec<_>>(),
        "gap-free and in order"
    );
    // Seqs the dead node took but never stored (at most one per sender) become visible
    // skips within skip_after (+ a tail check and a hold), still without a `sync`.
    let rest = read_in_order(
        &mut bob,
        &conv,
        Duration::from_millis(skip_after + 3000),
        |_| false,
    )
    .await;
    let skipped = rest
        .iter()
        .filter(|m| m.kind == MessageKind::Skipped)
        .count();
    assert!(rest.len() <= senders.len(), "{rest:?}");
    if let (Some(first), Some(prev)) = (rest.first(), got.last()) {
        assert_eq!(first.seq.0, prev.seq.0 + 1, "in order after the acked ones");
    }
    eprintln!(
        "{} acked before the kill; all reached bob {:?} after the kill; {} more delivered \
         afterwards ({} skipped)",
        acked.len(),
        all_acked_in,
        rest.len(),
        skipped
    );
    assert!(
        all_acked_in < Duration::from_secs(5),
        "bound: {all_acked_in:?}"
    );
    // History agrees: dense seqs, every acked one a real message.
    let mut cursors = BTreeMap::new();
    cursors.insert(conv.clone(), Seq(0));
    bob.send(&ClientFrame::Sync {
        rid: Some("s".into()),
        cursors,
        limit: Some(500),
    })
    .await;
    let ServerFrame::Synced { conversations, .. } = bob
        .recv_until(|f| matches!(f, ServerFrame::Synced { .. }))
        .await
    else {
        unreachable!()
    };
    let history = &conversations[0].messages;
    let hseqs: Vec<u64> = history.iter().map(|m| m.seq.0).collect();
    assert_eq!(hseqs, (1..=hseqs.len() as u64).collect::<Vec<_>>());
    for m in history {
        if acked.contains(&m.seq.0) {
            assert_eq!(m.kind, MessageKind::Text);
        }
    }
}

#[tokio::test]
async fn the_tail_a_silent_publisher_left_is_found_and_delivered_without_sync() {
    // Node 0 stores and acks the messages of dm:erin:finn but never publishes them (as if it
    // died right after each ack); nothing after them reveals the gap, so node 1 must find
    // them through the Redis counter (tail check) and read them from the store.
    let _g = SERIAL.lock().await;
    let keyspace = unique_keyspace("dlv");
    let conv = ConvId::parse("dm:erin:finn").unwrap();
    let silent = Node::start_with(
        cluster_node(&keyspace, &format!("{keyspace}-silent"))
            .env("CHATD_TEST_DROP_PUBLISH_IN", conv.as_str()),
    );
    let other = Node::start_with(cluster_node(&keyspace, &format!("{keyspace}-ok")));
    let mut finn = Client::connect(&other, "finn").await;
    let mut erin_ok = Client::connect(&other, "erin").await;
    // One message through the healthy node: node 1 now watches the conversation.
    assert_eq!(ack_seq(&erin_ok.send_dm("finn", "e1", "one").await), 1);
    assert_eq!(finn.next_message().await.seq, Seq(1));
    let mut erin = Client::connect(&silent, "erin").await;
    let sent = Instant::now();
    for i in 2..=4u64 {
        let cmid = format!("e{i}");
        assert_eq!(ack_seq(&erin.send_dm("finn", &cmid, &cmid).await), i);
    }
    let got = read_in_order(&mut finn, &conv, Duration::from_secs(10), |g| g.len() >= 3).await;
    let elapsed = sent.elapsed();
    let seqs: Vec<u64> = got.iter().map(|m| m.seq.0).collect();
    assert_eq!(seqs, vec![2, 3, 4]);
    assert_eq!(got[2].body, "e4");
    eprintln!("the silent tail reached the recipient {elapsed:?} after the first send");
    // Bound: tail_check (500 ms) + holdback (250 ms) + a store read, with slack for a loaded
    // machine.
    assert!(elapsed < Duration::from_secs(4), "{elapsed:?}");
    // Erin's other session (on node 1) got them too.
    let mine = read_in_order(&mut erin_ok, &conv, Duration::from_secs(5), |g| {
        g.len() >= 3
    })
    .await;
    assert_eq!(mine.len(), 3);
}

#[tokio::test]
async fn a_fresh_conversations_first_messages_reach_the_survivor_when_their_silent_publisher_dies()
{
    // Node A stores and acks the *first* messages of a new group but never publishes them, then
    // is killed. Node B delivered nothing of that conversation, so it has no tail to check:
    // it must learn from A's allocation record (read when A's alive key expires) that A took
    // seqs there, and deliver them from the store, in order, without a `sync`.
    let _g = SERIAL.lock().await;
    let keyspace = unique_keyspace("dlv");
    let survivor = Node::start_with(cluster_node(&keyspace, &format!("{keyspace}-ok")));
    let api = Api::new(&survivor);
    for m in ["gina", "hal", "ivy"] {
        api.touch(m).await;
    }
    let g = api.create_group("gina", "fresh", &["hal", "ivy"]).await;
    let conv = ConvId::group(&GroupId::new(g.clone()));
    let mut silent = Node::start_with(
        cluster_node(&keyspace, &format!("{keyspace}-silent"))
            .env("CHATD_TEST_DROP_PUBLISH_IN", conv.as_str()),
    );
    let mut hal = Client::connect(&survivor, "hal").await;
    let mut ivy = Client::connect(&survivor, "ivy").await;
    let mut gina = Client::connect(&silent, "gina").await;
    for i in 1..=3u64 {
        let cmid = format!("g{i}");
        assert_eq!(ack_seq(&gina.send_group(&g, &cmid, &cmid).await), i);
    }
    // While the publisher lives, nothing reveals them to the survivor (it watches no tail of
    // a conversation it never delivered).
    let early = read_in_order(&mut hal, &conv, Duration::from_millis(1500), |_| false).await;
    assert!(early.is_empty(), "{early:?}");
    silent.kill9();
    let killed = Instant::now();
    let got = read_in_order(&mut hal, &conv, Duration::from_secs(10), |g| g.len() >= 3).await;
    let elapsed = killed.elapsed();
    let seqs: Vec<(u64, String)> = got.iter().map(|m| (m.seq.0, m.body.clone())).collect();
    assert_eq!(
        seqs,
        vec![(1, "g1".into()), (2, "g2".into()), (3, "g3".into())]
    );
    eprintln!("the dead publisher's first messages reached the survivor's member {elapsed:?} after the kill");
    // Bound: the alive key's TTL (3 x 200 ms) + a heartbeat + holdback (250 ms) + two store
    // reads; generous for a loaded machine.
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
    // Later messages continue in order on every session.
    assert_eq!(ack_seq(&hal.send_group(&g, "h4", "h4").await), 4);
    let ivys = read_in_order(&mut ivy, &conv, Duration::from_secs(10), |g| g.len() >= 4).await;
    let seqs: Vec<u64> = ivys.iter().map(|m| m.seq.0).collect();
    assert_eq!(seqs, vec![1, 2, 3, 4]);
}

#[tokio::test]
async fn a_seq_whose_node_died_before_storing_it_becomes_a_visible_skip() {
    let _g = SERIAL.lock().await;
    let keyspace = unique_keyspace("dlv");
    let conv = ConvId::parse("dm:carol:dan").unwrap();
    // Node 0 dies right after taking a seq in dm:carol:dan, before storing the message.
    let mut doomed = cluster_node(&keyspace, &format!("{keyspace}-doomed"))
        .env("CHATD_ROUTER__SKIP_AFTER_MS", 1500);
    doomed = doomed.env("CHATD_TEST_DIE_AFTER_SEQ_IN", conv.as_str());
    let survivor = Node::start_with(
        cluster_node(&keyspace, &format!("{keyspace}-ok")).env("CHATD_ROUTER__SKIP_AFTER_MS", 1500),
    );
    let mut a = Node::start_with(doomed);
    let mut dan = Client::connect(&survivor, "dan").await;
    let mut carol = Client::connect(&survivor, "carol").await;
    assert_eq!(ack_seq(&carol.send_dm("dan", "c1", "one").await), 1);
    let mut carol_on_a = Client::connect(&a, "carol").await;
    carol_on_a
        .send(&send_frame(Target::User("dan".into()), "c2", "two"))
        .await;
    // The node dies: no ack, the socket ends.
    let deadline = Instant::now() + Duration::from_secs(10);
    while a.is_running() {
        assert!(Instant::now() < deadline, "the test hook did not fire");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(ack_seq(&carol.send_dm("dan", "c3", "three").await), 3);
    let started = Instant::now();
    let got = read_in_order(&mut dan, &conv, Duration::from_secs(10), |g| g.len() >= 3).await;
    let kinds: Vec<(u64, MessageKind)> = got.iter().map(|m| (m.seq.0, m.kind)).collect();
    assert_eq!(
        kinds,
        vec![
            (1, MessageKind::Text),
            (2, MessageKind::Skipped),
            (3, MessageKind::Text)
        ]
    );
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );
    // History shows the skip in its place; the seq is never reused.
    let mut cursors = BTreeMap::new();
    cursors.insert(conv.clone(), Seq(0));
    carol
        .send(&ClientFrame::Sync {
            rid: Some("s".into()),
            cursors,
            limit: Some(10),
        })
        .await;
    let ServerFrame::Synced { conversations, .. } = carol
        .recv_until(|f| matches!(f, ServerFrame::Synced { .. }))
        .await
    else {
        unreachable!()
    };
    let h: Vec<(u64, MessageKind)> = conversations[0]
        .messages
        .iter()
        .map(|m| (m.seq.0, m.kind))
        .collect();
    assert_eq!(h, kinds);
    assert_eq!(ack_seq(&carol.send_dm("dan", "c4", "four").await), 4);
    assert_eq!(dan.next_message().await.seq, Seq(4));
}

/// Reconnects `user` `rounds` times while messages for them flow; `Client::connect` fails
/// unless `hello` is the first frame.
async fn reconnect_storm(receiver_node: &Node, sender_node: &Node, rounds: usize) {
    let mut sender = Client::connect(sender_node, "pat").await;
    let flow = tokio::spawn(async move {
        for k in 0..400 {
            sender
                .send(&send_frame(
                    Target::User("quinn".into()),
                    &format!("p{k}"),
                    "hi",
                ))
                .await;
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        sender
    });
    let started = Instant::now();
    let mut sessions = Vec::new();
    for _ in 0..rounds {
        let mut c = Client::connect(receiver_node, "quinn").await;
        // Read a little so messages are really flowing into live sessions.
        let _ = c.try_recv(Duration::from_millis(5)).await;
        sessions.push(c);
        if sessions.len() > 4 {
            sessions.remove(0);
        }
    }
    let _ = flow.await.unwrap();
    eprintln!(
        "{rounds} reconnects, hello first every time, in {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn hello_comes_first_in_a_reconnect_storm_on_one_node() {
    let node = Node::start();
    reconnect_storm(&node, &node, 60).await;
}

#[tokio::test]
async fn hello_comes_first_in_a_reconnect_storm_across_nodes() {
    let _g = SERIAL.lock().await;
    let keyspace = unique_keyspace("dlv");
    let nodes = nodes(&keyspace, 2, &[]);
    reconnect_storm(&nodes[1], &nodes[0], 60).await;
    // And the recipient's session on the sender's node too.
    reconnect_storm(&nodes[0], &nodes[0], 30).await;
}
