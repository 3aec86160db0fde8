//! Per-user budgets across sessions (`crates/gateway/src/user_rates.rs`): one account with many
//! sessions, a flood of posts to a large group, a flood of HTTP changes. Each attack is refused
//! with `rate_limited` and an innocent user keeps chatting in normal time.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use protocol::{ErrorCode, ServerFrame};
use reqwest::Method;
use serde_json::json;
use std::time::{Duration, Instant};
use testkit::{admin_opts, code, Api, Client, Node, NodeOpts};

fn is_rate_limited(f: &ServerFrame) -> bool {
    matches!(
        f,
        ServerFrame::Error {
            code: ErrorCode::RateLimited,
            retry: true,
            ..
        }
    )
}

fn is_ack(f: &ServerFrame) -> bool {
    matches!(f, ServerFrame::Ack { .. })
}

/// An innocent DM: acked and delivered within two seconds.
async fn innocent_dm(from: &mut Client, to: &mut Client, to_user: &str, cmid: &str) {
    let start = Instant::now();
    let ack = from.send_dm(to_user, cmid, "hello, innocent").await;
    assert!(is_ack(&ack), "innocent send refused: {ack:?}");
    // Skip what the attacker got delivered before it.
    tokio::time::timeout(Duration::from_secs(5), async {
        while to.next_message().await.body != "hello, innocent" {}
    })
    .await
    .expect("innocent delivery");
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "innocent DM took {:?}",
        start.elapsed()
    );
}

/// The innocent pair: `ann`, who took no part in the attack, DMs `bob` on fresh sessions.
async fn ann_dms_bob(node: &Node) {
    let mut ann = Client::connect(node, "ann").await;
    let mut bob = Client::connect(node, "bob").await;
    innocent_dm(&mut ann, &mut bob, "bob", "ann-1").await;
}

#[tokio::test]
async fn many_sessions_of_one_account_share_one_message_budget() {
    let node = Node::start_with(
        NodeOpts::default()
            // Each of the 4 sessions alone could send 10 at once; together they get 10.
            .env("CHATD_LIMITS__SEND_PER_SEC", 5)
            .env("CHATD_LIMITS__SEND_BURST", 10)
            .env("CHATD_LIMITS__USER_SEND_PER_SEC", 5)
            .env("CHATD_LIMITS__USER_SEND_BURST", 10),
    );
    let mut sessions = Vec::new();
    for i in 0..4 {
        sessions.push(Client::connect_device(&node, "mal", &format!("d{i}")).await);
    }
    let mut bob = Client::connect(&node, "bob").await;
    let mut ann = Client::connect(&node, "ann").await;
    let start = Instant::now();
    let (mut acked, mut limited) = (0, 0);
    for round in 0..10 {
        for (i, s) in sessions.iter_mut().enumerate() {
            let f = s.send_dm("bob", &format!("m{round}-{i}"), "spam").await;
            if is_ack(&f) {
                acked += 1;
            } else if is_rate_limited(&f) {
                limited += 1;
            } else {
                panic!("unexpected reply {f:?}");
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    eprintln!("{acked} acked, {limited} limited in {secs:.2}s");
    // 10 of burst plus 5 per second, whatever the number of sessions (40 tried).
    let allowed = 10.0 + 5.0 * secs + 2.0;
    assert!(
        (acked as f64) <= allowed,
        "{acked} acked in {secs:.1}s, at most {allowed:.0} allowed"
    );
    assert!(limited >= 40 - allowed as i32, "{limited} limited");
    // The innocent user is not affected.
    innocent_dm(&mut ann, &mut bob, "bob", "ann-1").await;
}

#[tokio::test]
async fn posting_to_a_large_group_is_held_to_the_delivery_budget() {
    let node = Node::start_with(
        NodeOpts::default()
            .env("CHATD_LIMITS__SEND_PER_SEC", 1000)
            .env("CHATD_LIMITS__SEND_BURST", 1000)
            .env("CHATD_LIMITS__USER_DELIVERIES_PER_SEC", 40)
            .env("CHATD_LIMITS__USER_DELIVERIES_BURST", 100),
    );
    let api = Api::new(&node);
    let members: Vec<String> = (0..39).map(|i| format!("m{i:02}")).collect();
    for m in &members {
        api.touch(m).await;
    }
    api.touch("ann").await;
    let refs: Vec<&str> = members.iter().map(String::as_str).collect();
    let group = api.create_group("mal", "big", &refs).await; // 40 members with mal
    let mut mal = Client::connect(&node, "mal").await;
    let (mut acked, mut limited) = (0, 0);
    let start = Instant::now();
    for i in 0..10 {
        let f = mal
            .send_group(&group, &format!("g{i}"), "to everyone")
            .await;
        if is_ack(&f) {
            acked += 1;
        } else if is_rate_limited(&f) {
            limited += 1;
        } else {
            panic!("unexpected reply {f:?}");
        }
    }
    let secs = start.elapsed().as_secs_f64();
    eprintln!("{acked} posts acked, {limited} limited in {secs:.2}s");
    // Each post costs 40 of a 100 burst refilled at 40/s.
    let allowed = (100.0 + 40.0 * secs) / 40.0 + 1.0;
    assert!(
        (acked as f64) <= allowed,
        "{acked} posts acked in {secs:.1}s, at most {allowed:.1} allowed"
    );
    assert!(acked >= 2, "the burst allows two posts, got {acked}");
    assert!(limited >= 5, "{limited} limited");
    // Other users are not affected: ann DMs a member, who also still reads the group.
    let mut ann = Client::connect(&node, "ann").await;
    let mut m0 = Client::connect(&node, "m00").await;
    innocent_dm(&mut ann, &mut m0, "m00", "ann-1").await;
}

#[tokio::test]
async fn a_flood_of_http_changes_gets_429_and_others_keep_working() {
    let node = Node::start_with(
        NodeOpts::default()
            .env("CHATD_LIMITS__HTTP_WRITES_PER_SEC", 2)
            .env("CHATD_LIMITS__HTTP_WRITES_BURST", 5),
    );
    let api = Api::new(&node);
    let (mut created, mut limited) = (0, 0);
    let start = Instant::now();
    for i in 0..30 {
        let (status, body) = api
            .call(
                reqwest::Method::POST,
                "/v1/groups",
                Some("mal"),
                Some(serde_json::json!({"name": format!("flood {i}"), "members": []})),
            )
            .await;
        match status {
            201 => created += 1,
            429 => {
                assert_eq!(body["error"]["code"], "rate_limited", "{body}");
                assert_eq!(body["error"]["retry"], true, "{body}");
                limited += 1;
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    let secs = start.elapsed().as_secs_f64();
    eprintln!("{created} created, {limited} limited in {secs:.2}s");
    let allowed = 5.0 + 2.0 * secs + 1.0;
    assert!(
        (created as f64) <= allowed,
        "{created} created in {secs:.1}s, at most {allowed:.0} allowed"
    );
    assert!(limited >= 30 - allowed as i32, "{limited} limited");
    // Refused changes changed nothing: mal owns exactly the groups that were created.
    let (status, groups) = api
        .call(reqwest::Method::GET, "/v1/groups", Some("mal"), None)
        .await;
    assert_eq!(status, 200, "reads are not limited: {groups}");
    assert_eq!(groups.as_array().unwrap().len(), created);
    // Another user's change and chat still work.
    let id = api.create_group("ann", "ann's group", &[]).await;
    assert!(!id.is_empty());
    ann_dms_bob(&node).await;
}

#[tokio::test]
async fn uploads_are_held_to_a_daily_byte_budget_per_account() {
    let node =
        Node::start_with(NodeOpts::default().env("CHATD_FILES__UPLOAD_BYTES_PER_DAY", 100 * 1024));
    let api = Api::new(&node);
    let file = vec![b'x'; 60 * 1024];
    let (s, body) = api.upload("mal", "a.txt", "text/plain", file.clone()).await;
    assert_eq!(s, 201, "{body}");
    let mut other = file.clone();
    other[0] = b'y';
    let (s, body) = api
        .upload("mal", "b.txt", "text/plain", other.clone())
        .await;
    assert_eq!(s, 429, "{body}");
    assert_eq!(body["error"]["code"], "rate_limited", "{body}");
    assert_eq!(body["error"]["retry"], true, "{body}");
    // Another account has its own budget.
    let (s, body) = api.upload("ann", "b.txt", "text/plain", other).await;
    assert_eq!(s, 201, "{body}");
}

#[tokio::test]
async fn uploads_never_take_the_disk_below_the_reserve() {
    // A reserve larger than any disk: every upload that needs new space is refused.
    let node = Node::start_with(
        NodeOpts::default().env("CHATD_FILES__MIN_FREE_BYTES", 1_000_000_000_000_000_000u64),
    );
    let api = Api::new(&node);
    let (s, body) = api
        .upload("mal", "a.txt", "text/plain", vec![b'x'; 4096])
        .await;
    assert_eq!(s, 503, "{body}");
    assert_eq!(body["error"]["code"], "unavailable", "{body}");
    assert_eq!(body["error"]["retry"], true, "{body}");
    // The node keeps serving chat.
    ann_dms_bob(&node).await;
}

#[tokio::test]
async fn message_bytes_are_held_to_a_daily_budget_per_account() {
    // 20 KB a day: two messages of 8,000 characters fit, the third does not.
    let node = Node::start_with(
        NodeOpts::default().env("CHATD_LIMITS__USER_MESSAGE_BYTES_PER_DAY", 20_000),
    );
    let api = Api::new(&node);
    api.touch("bob").await;
    let mut mal = Client::connect(&node, "mal").await;
    let big = "x".repeat(8000);
    for i in 0..2 {
        testkit::ack_seq(&mal.send_dm("bob", &format!("big{i}"), &big).await);
    }
    match mal.send_dm("bob", "big2", &big).await {
        ServerFrame::Error { code, retry, .. } => {
            assert_eq!(code, ErrorCode::RateLimited);
            assert!(retry);
        }
        other => panic!("expected rate_limited, got {other:?}"),
    }
    let conv = protocol::ConvId::direct(&"bob".into(), &"mal".into());
    assert_eq!(
        mal.history_seqs(&conv).await.0.len(),
        2,
        "the third was not stored"
    );
    // Other accounts keep their own budget.
    ann_dms_bob(&node).await;
}

#[tokio::test]
async fn a_nearly_full_data_volume_refuses_writes_and_keeps_reads_and_admins_working() {
    // A reserve larger than any disk: the data volume counts as nearly full from the start.
    let node = Node::start_with(
        admin_opts().env("CHATD_STORE__MIN_FREE_BYTES", 1_000_000_000_000_000_000u64),
    );
    let api = Api::new(&node);
    api.touch("bob").await;
    let mut ann = Client::connect(&node, "ann").await;
    // A message: refused, retryable, and nothing stored.
    match ann.send_dm("bob", "full-1", "hello?").await {
        ServerFrame::Error { code, retry, .. } => {
            assert_eq!(code, ErrorCode::Unavailable);
            assert!(retry);
        }
        other => panic!("expected unavailable, got {other:?}"),
    }
    let conv = protocol::ConvId::direct(&"ann".into(), &"bob".into());
    assert_eq!(ann.history_seqs(&conv).await.0, Vec::<u64>::new());
    // An ordinary user's HTTP change: 503.
    let (s, b) = api
        .call(
            Method::POST,
            "/v1/groups",
            Some("ann"),
            Some(json!({"name": "more data", "members": ["bob"]})),
        )
        .await;
    assert_eq!((s, code(&b)), (503, "unavailable"), "{b}");
    assert_eq!(b["error"]["retry"], true, "{b}");
    // Reads go on, and a company administrator (who frees space) still changes things.
    let (s, b) = api.call(Method::GET, "/v1/me", Some("ann"), None).await;
    assert_eq!(s, 200, "{b}");
    let (s, b) = api
        .call(
            Method::PUT,
            "/v1/admin/retention",
            Some("boss"),
            Some(json!({"company": {"message_age_secs": 86_400}})),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    // The session is still open: a ping answers.
    ann.send(&protocol::ClientFrame::Ping {
        rid: Some("p".into()),
    })
    .await;
    assert!(matches!(
        ann.recv_until(|f| matches!(f, ServerFrame::Pong { .. }))
            .await,
        ServerFrame::Pong { .. }
    ));
}

#[tokio::test]
async fn a_flood_of_requests_on_one_session_is_rate_limited_and_the_session_stays() {
    let node = Node::start_with(
        NodeOpts::default()
            .env("CHATD_LIMITS__REQUESTS_PER_SEC", 10)
            .env("CHATD_LIMITS__REQUESTS_BURST", 20),
    );
    let mut mal = Client::connect(&node, "mal").await;
    let start = Instant::now();
    // 300 pipelined requests: pings, and history of a conversation (an empty one still reads).
    for i in 0..300 {
        let rid: Option<protocol::Rid> = Some(format!("r{i}").as_str().into());
        let frame = if i % 2 == 0 {
            protocol::ClientFrame::Ping { rid }
        } else {
            protocol::ClientFrame::History {
                rid,
                conv: protocol::ConvId::direct(&"bob".into(), &"mal".into()),
                before_seq: None,
                limit: Some(50),
            }
        };
        mal.send(&frame).await;
    }
    let (mut answered, mut limited) = (0, 0);
    while answered + limited < 300 {
        let f = tokio::time::timeout(Duration::from_secs(10), mal.recv())
            .await
            .expect("every request gets an answer");
        if is_rate_limited(&f) {
            limited += 1;
        } else {
            answered += 1;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    eprintln!("{answered} answered, {limited} limited in {secs:.2}s");
    let allowed = 20.0 + 10.0 * secs + 2.0;
    assert!(
        (answered as f64) <= allowed,
        "{answered} answered in {secs:.1}s, at most {allowed:.0} allowed"
    );
    // The session stays open and works once the flood stops.
    tokio::time::sleep(Duration::from_millis(300)).await;
    mal.send(&protocol::ClientFrame::Ping {
        rid: Some("after".into()),
    })
    .await;
    let f = mal
        .recv_until(|f| matches!(f, ServerFrame::Pong { .. }))
        .await;
    assert!(matches!(f, ServerFrame::Pong { .. }));
    ann_dms_bob(&node).await;
}

#[tokio::test]
async fn a_flood_of_http_reads_gets_429_and_others_keep_reading() {
    let node = Node::start_with(
        NodeOpts::default()
            .env("CHATD_LIMITS__HTTP_READS_PER_SEC", 5)
            .env("CHATD_LIMITS__HTTP_READS_BURST", 10),
    );
    let api = Api::new(&node);
    let (mut ok, mut limited) = (0, 0);
    let start = Instant::now();
    for _ in 0..40 {
        let (status, body) = api
            .call(
                reqwest::Method::GET,
                "/v1/users?q=a&limit=500",
                Some("mal"),
                None,
            )
            .await;
        match status {
            200 => ok += 1,
            429 => {
                assert_eq!(body["error"]["code"], "rate_limited", "{body}");
                limited += 1;
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    let secs = start.elapsed().as_secs_f64();
    eprintln!("{ok} reads answered, {limited} limited in {secs:.2}s");
    assert!((ok as f64) <= 10.0 + 5.0 * secs + 1.0, "{ok} in {secs:.1}s");
    assert!(limited >= 20, "{limited} limited");
    let (status, body) = api
        .call(reqwest::Method::GET, "/v1/groups", Some("ann"), None)
        .await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn groups_that_members_are_added_to_are_capped() {
    let node = Node::start_with(NodeOpts::default().env("CHATD_GROUPS__MAX_MEMBERS", 3));
    let api = Api::new(&node);
    for u in ["u1", "u2", "u3", "u4"] {
        api.touch(u).await;
    }
    // Owner plus 3 initial members would be 4.
    let (status, body) = api
        .call(
            reqwest::Method::POST,
            "/v1/groups",
            Some("mal"),
            Some(serde_json::json!({"name": "too big", "members": ["u1", "u2", "u3"]})),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    let group = api.create_group("mal", "small", &["u1"]).await;
    let add = |user: &'static str| {
        let api = &api;
        let path = format!("/v1/groups/{group}/members");
        async move {
            api.call(
                reqwest::Method::POST,
                &path,
                Some("mal"),
                Some(serde_json::json!({ "user": user })),
            )
            .await
        }
    };
    let (status, body) = add("u2").await;
    assert!((200..300).contains(&status), "{status} {body}");
    let (status, body) = add("u3").await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "conflict", "{body}");
    // The group still works for its members.
    let mut mal = Client::connect(&node, "mal").await;
    let ack = mal.send_group(&group, "c1", "still here").await;
    assert!(is_ack(&ack), "{ack:?}");
}
