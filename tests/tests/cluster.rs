//! Cluster mode end to end: several chatd processes sharing a real Redis (routing, presence,
//! seqs) and a real CQL database (Apache Cassandra standing in for ScyllaDB).
//!
//! These tests share the services and some of them restart Redis or stop the database, so
//! they run one at a time (a process-wide lock).

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use protocol::{ClientFrame, ConvId, ErrorCode, GroupId, Seq, ServerFrame};
use std::time::Duration;
use testkit::*;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

struct Cluster {
    nodes: Vec<Node>,
    keyspace: String,
}

impl Cluster {
    /// Starts `n` nodes one after the other (the first creates the schema).
    fn start(n: usize) -> Cluster {
        let keyspace = unique_keyspace("e2e");
        let nodes = (0..n)
            .map(|i| Node::start_with(cluster_node(&keyspace, &format!("{keyspace}-n{i}"))))
            .collect();
        Cluster { nodes, keyspace }
    }

    fn add_node(&mut self) -> usize {
        let i = self.nodes.len();
        let id = format!("{}-n{i}", self.keyspace);
        self.nodes
            .push(Node::start_with(cluster_node(&self.keyspace, &id)));
        i
    }
}

#[tokio::test]
async fn users_on_different_nodes_chat_as_if_on_one() {
    let _g = SERIAL.lock().await;
    let cluster = Cluster::start(2);
    let (a, b) = (&cluster.nodes[0], &cluster.nodes[1]);
    let mut alice = Client::connect(a, "alice").await;
    let mut bob = Client::connect(b, "bob").await;
    let mut dave_a = Client::connect(a, "dave").await;
    let mut dave_b = Client::connect(b, "dave").await;

    // A direct message from node A to node B and back.
    assert_eq!(ack_seq(&alice.send_dm("bob", "d1", "hi from A").await), 1);
    assert_eq!(bob.next_message().await.body, "hi from A");
    assert_eq!(ack_seq(&bob.send_dm("alice", "d2", "hi from B").await), 2);
    assert_eq!(alice.next_message().await.body, "hi from B");

    // A group with members on both nodes; dave has a session on each and sees everything once.
    let g = Api::new(a)
        .create_group("alice", "cross", &["bob", "dave"])
        .await;
    for i in 1..=5u64 {
        let ack = if i % 2 == 0 {
            bob.send_group(&g, &format!("g{i}"), &format!("m{i}")).await
        } else {
            alice
                .send_group(&g, &format!("g{i}"), &format!("m{i}"))
                .await
        };
        assert_eq!(ack_seq(&ack), i);
    }
    for dave in [&mut dave_a, &mut dave_b] {
        for i in 1..=5u64 {
            let m = dave.next_message().await;
            assert_eq!((m.seq.0, m.body.clone()), (i, format!("m{i}")));
        }
        assert!(
            dave.try_recv(Duration::from_millis(300))
                .await
                .is_none_or(|f| !matches!(f, ServerFrame::Message(_))),
            "no duplicates"
        );
    }
    // History is shared.
    let conv = ConvId::group(&GroupId::new(g));
    assert_eq!(bob.sync_all(&conv, 0, 500).await.len(), 5);
}

#[tokio::test]
async fn a_killed_node_loses_nothing_that_was_acked() {
    let _g = SERIAL.lock().await;
    let mut cluster = Cluster::start(2);
    let mut alice = Client::connect(&cluster.nodes[0], "alice").await;
    let mut bob = Client::connect(&cluster.nodes[1], "bob").await;
    let g = Api::new(&cluster.nodes[0])
        .create_group("alice", "crash", &["bob"])
        .await;
    let conv = ConvId::group(&GroupId::new(g.clone()));
    let n = 200u64;
    for i in 0..n {
        alice
            .send(&ClientFrame::Send(protocol::SendFrame {
                rid: Some(format!("k{i}")),
                client_msg_id: format!("k{i}"),
                to: protocol::Target::Group(GroupId::new(g.clone())),
                kind: protocol::MessageKind::Text,
                body: format!("m{i}"),
                attachment: None,
                mentions: vec![],
                reply_to: None,
            }))
            .await;
    }
    // Collect acks for a while, then kill node A in the middle of the flow.
    let mut acked = Vec::new();
    while acked.len() < 60 {
        if let f @ ServerFrame::Ack { .. } = alice.recv().await {
            acked.push(ack_seq(&f));
        }
    }
    cluster.nodes[0].kill9();
    // A write the dead node had in flight may still land (or time out) in the database:
    // let it settle (the CQL request timeout in these tests is 2 s).
    tokio::time::sleep(Duration::from_millis(2500)).await;
    // Drain whatever acks made it out before the kill.
    while let Some(f) = futures_util::FutureExt::now_or_never(alice.ws_next()).flatten() {
        if let ServerFrame::Ack { seq: Some(s), .. } = f {
            acked.push(s.0);
        }
    }
    // Alice reconnects to the surviving node and syncs: every acked message is there, once, in order.
    let mut alice = Client::connect(&cluster.nodes[1], "alice").await;
    let all = alice.sync_all(&conv, 0, 500).await;
    let seqs: Vec<u64> = all.iter().map(|m| m.seq.0).collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as u64).collect::<Vec<_>>(),
        "gap-free, ordered, no duplicates"
    );
    for s in &acked {
        assert!(seqs.contains(s), "acked seq {s} missing after the crash");
    }
    // Bob (on the surviving node) saw only complete, ordered deliveries; a resync fills the rest.
    let seen = bob.sync_all(&conv, 0, 500).await;
    assert_eq!(seen.len(), all.len());
    // Sending continues on the survivor after the last seq, never reusing one. (The dead node
    // may have taken one more seq from Redis for a message it never wrote; that gap is the
    // documented edge case of docs/SCYLLA.md.)
    let next = ack_seq(&alice.send_group(&g, "after", "after the crash").await);
    let last = all.len() as u64;
    assert!(
        next == last + 1 || next == last + 2,
        "next seq {next} after {last}"
    );
    cluster.add_node();
}

#[tokio::test]
async fn redis_restart_and_flushall_keep_seq_gap_free() {
    let _g = SERIAL.lock().await;
    let cluster = Cluster::start(2);
    let mut alice = Client::connect(&cluster.nodes[0], "alice").await;
    let mut bob = Client::connect(&cluster.nodes[1], "bob").await;
    for i in 1..=3u64 {
        assert_eq!(
            ack_seq(&alice.send_dm("bob", &format!("a{i}"), "x").await),
            i
        );
        bob.next_message().await;
    }
    // FLUSHALL: counters and presence vanish; seqs continue from the store, delivery resumes.
    let port = service_env("CHATD_TEST_REDIS_PORT");
    let status = std::process::Command::new("redis-cli")
        .args(["-p", &port, "FLUSHALL"])
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(ack_seq(&alice.send_dm("bob", "a4", "after flush").await), 4);
    let mut got = None;
    for _ in 0..50 {
        if let Some(ServerFrame::Message(m)) = bob.try_recv(Duration::from_millis(100)).await {
            got = Some(m);
            break;
        }
    }
    if got.is_none() {
        // Presence was flushed before the nodes re-announced: the message is in history.
        let conv = ConvId::parse("dm:alice:bob").unwrap();
        got = bob.sync_all(&conv, 3, 500).await.into_iter().next();
    }
    assert_eq!(got.unwrap().seq, Seq(4));

    // Restart Redis: nodes resubscribe and ask their sessions to resync (4000).
    service_script("redis.sh", &["restart"]);
    assert_eq!(alice.expect_close().await, protocol::close::SLOW_CONSUMER);
    assert_eq!(bob.expect_close().await, protocol::close::SLOW_CONSUMER);
    let mut alice = Client::connect(&cluster.nodes[0], "alice").await;
    let mut bob = Client::connect(&cluster.nodes[1], "bob").await;
    // The first send may find the connections still being re-established: `unavailable` with
    // retry, which a client retries with the same client_msg_id.
    let mut ack = alice.send_dm("bob", "a5", "after restart").await;
    for _ in 0..20 {
        if !matches!(
            ack,
            ServerFrame::Error {
                code: ErrorCode::Unavailable,
                retry: true,
                ..
            }
        ) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        ack = alice.send_dm("bob", "a5", "after restart").await;
    }
    assert_eq!(ack_seq(&ack), 5);
    assert_eq!(bob.next_message().await.seq, Seq(5));
    let conv = ConvId::parse("dm:alice:bob").unwrap();
    let seqs: Vec<u64> = bob
        .sync_all(&conv, 0, 500)
        .await
        .iter()
        .map(|m| m.seq.0)
        .collect();
    assert_eq!(seqs, vec![1, 2, 3, 4, 5]);
}

#[tokio::test]
async fn database_outage_refuses_sends_and_loses_nothing() {
    let _g = SERIAL.lock().await;
    let cluster = Cluster::start(1);
    let mut alice = Client::connect(&cluster.nodes[0], "alice").await;
    let _bob = Client::connect(&cluster.nodes[0], "bob").await;
    assert_eq!(ack_seq(&alice.send_dm("bob", "b1", "before").await), 1);
    service_script("cassandra.sh", &["pause"]);
    let outcome = alice.send_dm("bob", "b2", "during").await;
    // Make sure the database comes back whatever the assertion says.
    service_script("cassandra.sh", &["resume"]);
    assert_eq!(error_code(&outcome), ErrorCode::Unavailable, "{outcome:?}");
    // Once it is back, sending works again (the driver reconnects within a few seconds).
    let mut acked = None;
    for i in 0..60 {
        let f = alice.send_dm("bob", "b3", "after").await;
        if let ServerFrame::Ack { seq: Some(s), .. } = f {
            acked = Some(s.0);
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let _ = i;
    }
    let acked = acked.expect("sending never recovered after the database came back");
    let conv = ConvId::parse("dm:alice:bob").unwrap();
    let all = alice.sync_all(&conv, 0, 500).await;
    let bodies: Vec<&str> = all.iter().map(|m| m.body.as_str()).collect();
    assert!(
        bodies.contains(&"before") && bodies.contains(&"after"),
        "{bodies:?}"
    );
    assert_eq!(all.last().unwrap().seq.0, acked);
    let seqs: Vec<u64> = all.iter().map(|m| m.seq.0).collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as u64).collect::<Vec<_>>(),
        "no gap, no repeat"
    );
}

#[tokio::test]
async fn a_user_signed_out_through_one_node_loses_sessions_everywhere() {
    let _g = SERIAL.lock().await;
    let keyspace = unique_keyspace("e2e");
    let admin = |id: &str| cluster_node(&keyspace, id).env("CHATD_AUTH__ADMINS", r#"["boss"]"#);
    let a = Node::start_with(admin(&format!("{keyspace}-a")));
    let b = Node::start_with(admin(&format!("{keyspace}-b")));
    let mut on_a = Client::connect(&a, "eve").await;
    let mut on_b = Client::connect(&b, "eve").await;
    let api = Api::new(&a);
    api.touch("boss").await;
    let (s, _) = api
        .call(
            reqwest::Method::POST,
            "/v1/admin/users/eve/disconnect",
            Some("boss"),
            None,
        )
        .await;
    assert_eq!(s, 204);
    assert_eq!(on_a.expect_close().await, protocol::close::SIGNED_OUT);
    assert_eq!(on_b.expect_close().await, protocol::close::SIGNED_OUT);
}

#[tokio::test]
async fn a_deactivated_account_is_switched_off_on_every_node() {
    let _g = SERIAL.lock().await;
    let keyspace = unique_keyspace("e2e");
    let admin = |id: &str| cluster_node(&keyspace, id).env("CHATD_AUTH__ADMINS", r#"["boss"]"#);
    let a = Node::start_with(admin(&format!("{keyspace}-a")));
    let b = Node::start_with(admin(&format!("{keyspace}-b")));
    let on_a = Api::new(&a);
    let on_b = Api::new(&b);
    on_a.create_account(
        "boss",
        serde_json::json!({"id": "fay", "name": "Fay", "password": "welcome42"}),
    )
    .await;
    // Node B caches Fay as active, then node A deactivates her.
    let (s, _) = on_b
        .call(reqwest::Method::GET, "/v1/me", Some("fay"), None)
        .await;
    assert_eq!(s, 200);
    let mut session_b = Client::connect(&b, "fay").await;
    let started = std::time::Instant::now();
    let (s, _) = on_a
        .call(
            reqwest::Method::POST,
            "/v1/users/fay/deactivate",
            Some("boss"),
            None,
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(session_b.expect_close().await, protocol::close::SIGNED_OUT);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    let (s, body) = on_b
        .call(reqwest::Method::GET, "/v1/me", Some("fay"), None)
        .await;
    assert_eq!(s, 401, "node B forgot its cached account: {body}");
    // Sign-in through either node is refused; the record is shared through the CQL store.
    let (s, _) = on_b
        .call(
            reqwest::Method::POST,
            "/v1/login",
            None,
            Some(serde_json::json!({"user": "fay", "password": "welcome42"})),
        )
        .await;
    assert_eq!(s, 401);
}

#[tokio::test]
async fn a_user_lists_and_signs_out_sessions_on_every_node() {
    let _g = SERIAL.lock().await;
    let cluster = Cluster::start(2);
    let (a, b) = (&cluster.nodes[0], &cluster.nodes[1]);
    let phone = Client::connect_device(a, "gus", "phone").await;
    let mut laptop = Client::connect_device(b, "gus", "laptop").await;
    let list = |node: &Node| {
        let api = Api::new(node);
        async move {
            let (s, v) = api
                .call(reqwest::Method::GET, "/v1/me/sessions", Some("gus"), None)
                .await;
            assert_eq!(s, 200, "{v}");
            let mut found: Vec<(String, String)> = v
                .as_array()
                .unwrap()
                .iter()
                .map(|d| {
                    (
                        d["id"].as_str().unwrap().to_owned(),
                        d["device"].as_str().unwrap().to_owned(),
                    )
                })
                .collect();
            found.sort_by(|x, y| x.1.cmp(&y.1));
            found
        }
    };
    let both = vec![
        (laptop.session_id.clone(), "laptop".to_owned()),
        (phone.session_id.clone(), "phone".to_owned()),
    ];
    // Either node answers with both devices.
    assert_eq!(list(a).await, both);
    assert_eq!(list(b).await, both);

    // Signing the laptop out through the phone's node closes it on the other node.
    let (s, _) = Api::new(a)
        .call(
            reqwest::Method::DELETE,
            &format!("/v1/me/sessions/{}", laptop.session_id),
            Some("gus"),
            None,
        )
        .await;
    assert_eq!(s, 204);
    assert_eq!(laptop.expect_close().await, protocol::close::SIGNED_OUT);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let now = list(a).await;
        if now == vec![(phone.session_id.clone(), "phone".to_owned())] {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still listed: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(phone);
}

#[tokio::test]
async fn a_node_that_missed_the_revocation_broadcast_still_refuses_the_token() {
    // Fault: node B is not running while node A revokes, so it never receives the broadcast;
    // the revocation lives in the shared CQL store, and B refuses the token when it starts.
    let _g = SERIAL.lock().await;
    let keyspace = unique_keyspace("e2e");
    let admin = |id: &str| cluster_node(&keyspace, id).env("CHATD_AUTH__ADMINS", r#"["boss"]"#);
    let a = Node::start_with(admin(&format!("{keyspace}-a")));
    let hal_token = token("hal");
    let api = Api::new(&a);
    api.touch("boss").await;
    assert_eq!(
        api.call_token(reqwest::Method::GET, "/v1/groups", Some(&hal_token), None)
            .await
            .0,
        200
    );
    let (s, _) = api
        .call(
            reqwest::Method::POST,
            "/v1/admin/users/hal/disconnect?revoke=true",
            Some("boss"),
            None,
        )
        .await;
    assert_eq!(s, 204);
    let b = Node::start_with(admin(&format!("{keyspace}-b")));
    let url = format!("ws://{}/ws", b.addr);
    let refused = Client::try_connect_raw(&url, Some(&hal_token))
        .await
        .expect_err("a revoked token must not open a session on the node that missed it");
    assert_eq!(refused.status, 401, "{}", refused.body);
    let (s, _) = Api::new(&b)
        .call_token(reqwest::Method::GET, "/v1/groups", Some(&hal_token), None)
        .await;
    assert_eq!(s, 401);
}
