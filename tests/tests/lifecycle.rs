//! The node's life: crash safety, shutdown, timeouts, limits, and panic isolation.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use protocol::{close, ClientFrame, ConvId, ServerFrame};
use std::time::Duration;
use testkit::*;

#[tokio::test]
async fn acked_messages_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let opts = NodeOpts::default().unthrottled_sends();
    let mut node = Node::spawn(dir.path(), opts.clone());
    let mut a = Client::connect(&node, "ann").await;
    let _b = Client::connect(&node, "bob").await;
    // Pipeline many sends, then kill the process right after the last ack arrives.
    let n = 300u64;
    for i in 0..n {
        a.send(&ClientFrame::Send(protocol::SendFrame {
            rid: Some(format!("k{i}")),
            client_msg_id: format!("k{i}"),
            to: protocol::Target::User(protocol::UserId::new("bob")),
            kind: protocol::MessageKind::Text,
            body: format!("durable {i}"),
            attachment: None,
            mentions: vec![],
            reply_to: None,
        }))
        .await;
    }
    let mut acked = Vec::new();
    while (acked.len() as u64) < n {
        if let f @ ServerFrame::Ack { .. } = a.recv().await {
            acked.push(ack_seq(&f));
        }
    }
    node.kill9();
    assert!(!node.is_running());
    acked.sort_unstable();
    assert_eq!(acked, (1..=n).collect::<Vec<_>>());

    let node = Node::spawn(dir.path(), opts);
    let mut a = Client::connect(&node, "ann").await;
    let mut cursors = std::collections::BTreeMap::new();
    let conv = ConvId::parse("dm:ann:bob").unwrap();
    cursors.insert(conv.clone(), protocol::Seq(0));
    a.send(&ClientFrame::Sync {
        rid: None,
        cursors,
        limit: Some(500),
    })
    .await;
    let ServerFrame::Synced { conversations, .. } = a
        .recv_until(|f| matches!(f, ServerFrame::Synced { .. }))
        .await
    else {
        unreachable!()
    };
    let seqs: Vec<u64> = conversations[0].messages.iter().map(|m| m.seq.0).collect();
    assert_eq!(seqs, (1..=n).collect::<Vec<_>>());
    assert_eq!(conversations[0].messages[41].body, "durable 41");
    // Idempotency keys survived too: a retry after the crash is a duplicate.
    let f = a.send_dm("bob", "k7", "durable 7").await;
    assert!(
        matches!(f, ServerFrame::Ack { duplicate: true, seq: Some(s), .. } if s.0 == 8),
        "{f:?}"
    );
    // And new messages continue the sequence without a gap.
    assert_eq!(
        ack_seq(&a.send_dm("bob", "after", "after restart").await),
        n + 1
    );
}

#[tokio::test]
async fn sigterm_closes_sessions_with_going_away_and_exits_cleanly() {
    let mut node = Node::start();
    let mut a = Client::connect(&node, "ann").await;
    let mut b = Client::connect(&node, "bob").await;
    ack_seq(&a.send_dm("bob", "x", "before shutdown").await);
    b.next_message().await;
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(node.child.id().to_string())
        .status();
    assert_eq!(a.expect_close().await, close::GOING_AWAY);
    assert_eq!(b.expect_close().await, close::GOING_AWAY);
    assert!(
        node.terminate(Duration::from_secs(10)),
        "chatd did not exit cleanly"
    );
}

use std::process::Command;

#[tokio::test]
async fn idle_sessions_are_closed_with_4004() {
    let node = Node::start_with(NodeOpts::default().env("CHATD_SERVER__IDLE_TIMEOUT_MS", 400));
    let mut a = Client::connect(&node, "ann").await;
    assert_eq!(a.expect_close().await, close::IDLE_TIMEOUT);
}

#[tokio::test]
async fn heartbeats_keep_a_session_alive() {
    let node = Node::start_with(NodeOpts::default().env("CHATD_SERVER__IDLE_TIMEOUT_MS", 600));
    let mut a = Client::connect(&node, "ann").await;
    for i in 0..6 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        a.send(&ClientFrame::Ping {
            rid: Some(i.to_string()),
        })
        .await;
        a.recv_until(|f| matches!(f, ServerFrame::Pong { .. }))
            .await;
    }
}

#[tokio::test]
async fn expired_token_closes_the_session_with_4003() {
    let node = Node::start_with(NodeOpts::default().env("CHATD_AUTH__LEEWAY_SECS", 0));
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 2;
    let url = format!("ws://{}/ws?token={}", node.addr, token_with_exp("ann", exp));
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    use futures_util::StreamExt;
    let code = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(Ok(m)) = ws.next().await {
            if let tokio_tungstenite::tungstenite::Message::Close(Some(f)) = m {
                return u16::from(f.code);
            }
        }
        0
    })
    .await
    .unwrap();
    assert_eq!(code, close::TOKEN_EXPIRED);
}

#[tokio::test]
async fn a_panicking_session_does_not_take_the_node_down() {
    let node = Node::start();
    let mut a = Client::connect(&node, "ann").await;
    let mut b = Client::connect(&node, "bob").await;
    let mut victim = Client::connect(&node, "ann").await;
    // Only builds with the test-hooks feature have this hook.
    victim.send_text("__panic__").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    ack_seq(&a.send_dm("bob", "after-panic", "still here").await);
    assert_eq!(b.next_message().await.body, "still here");
    // The panicked session was unregistered: ann's other device still works, and a new one can join.
    let mut again = Client::connect(&node, "ann").await;
    ack_seq(&again.send_dm("bob", "new-session", "hello again").await);
    // The panicked session is unregistered when its task unwinds; poll, since the machine may
    // be busy and the unwinding runs on another worker thread.
    let mut body = serde_json::Value::Null;
    for _ in 0..100 {
        let health = reqwest::get(format!("{}/healthz", node.http()))
            .await
            .unwrap();
        assert_eq!(health.status(), 200);
        body = health.json().await.unwrap();
        if body["sessions"] == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(body["sessions"], 3, "{body}");
}

#[tokio::test]
async fn too_many_sessions_for_one_user_is_refused_with_4002() {
    let node = Node::start_with(NodeOpts::default().env("CHATD_SERVER__MAX_SESSIONS_PER_USER", 2));
    let _a1 = Client::connect(&node, "ann").await;
    let _a2 = Client::connect(&node, "ann").await;
    let url = format!("ws://{}/ws?token={}", node.addr, token("ann"));
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    use futures_util::StreamExt;
    let mut saw_error = false;
    let mut code = 0;
    while let Ok(Some(Ok(m))) = tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
        match m {
            tokio_tungstenite::tungstenite::Message::Text(t) => {
                saw_error |= t.contains("rate_limited");
            }
            tokio_tungstenite::tungstenite::Message::Close(Some(f)) => {
                code = u16::from(f.code);
                break;
            }
            _ => {}
        }
    }
    assert!(saw_error);
    assert_eq!(code, close::RATE_LIMITED);
}

#[tokio::test]
async fn connection_limit_answers_503() {
    let node = Node::start_with(NodeOpts::default().env("CHATD_SERVER__MAX_CONNECTIONS", 2));
    let _a = Client::connect(&node, "ann").await;
    let _b = Client::connect(&node, "bob").await;
    let url = format!("ws://{}/ws?token={}", node.addr, token("cat"));
    let r = Client::try_connect_raw(&url, None).await.unwrap_err();
    assert_eq!(r.status, 503);
    assert!(r.body.contains("unavailable"));
}

#[tokio::test]
async fn a_client_that_never_reads_is_closed_as_a_slow_consumer() {
    let node = Node::start_with(NodeOpts::default().env("CHATD_SERVER__OUTBOUND_QUEUE", 8));
    let mut sender = Client::connect(&node, "ann").await;
    // bob connects but never reads: deliveries pile up in the kernel buffers, then his queue.
    let mut bob = Client::connect(&node, "bob").await;
    let body = "y".repeat(7000);
    let mut closed = false;
    for i in 0..2000 {
        let f = sender.send_dm("bob", &format!("s{i}"), &body).await;
        if !matches!(f, ServerFrame::Ack { .. }) {
            // Rate limiting may kick in; wait it out.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if i % 100 == 99 {
            let health: serde_json::Value = reqwest::get(format!("{}/healthz", node.http()))
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if health["sessions"] == 1 {
                closed = true;
                break;
            }
        }
    }
    assert!(closed, "the slow consumer was never disconnected");
    // When bob finally reads, he finds the close code 4000 after the frames that fit.
    assert_eq!(bob.expect_close().await, close::SLOW_CONSUMER);
}
