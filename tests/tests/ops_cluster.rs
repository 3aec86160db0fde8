//! Operations jobs when a cluster node dies (two nodes on the test Redis and CQL database):
//! a retention pass whose node is killed with SIGKILL mid-pass is finished by the other node
//! once the lease expires, keeping what a hold keeps and leaving the min seq right; a
//! compliance export job whose node is killed is resumed by the other node (the job's progress
//! is a shared record, its batches go to a shared `compliance.dir`), with every event exactly
//! once. Short leases and pauses between batches (test builds) keep each test to seconds.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use protocol::{ConvId, GroupId};
use reqwest::Method;
use serde_json::json;
use std::time::{Duration, Instant};
use testkit::compliance::*;
use testkit::*;

#[tokio::test]
async fn a_retention_pass_killed_mid_way_is_finished_by_the_other_node_after_the_lease() {
    let ks = unique_keyspace("opsret");
    let node_opts = |id: &str| {
        cluster_node(&ks, id)
            .env("CHATD_AUTH__ADMINS", r#"["boss"]"#)
            .env("CHATD_RETENTION__INTERVAL_SECS", 0)
            .env("CHATD_RETENTION__LEASE_SECS", 2)
            .env("CHATD_RETENTION__BATCH", 10)
    };
    // Node one pauses after each batch: a pass over 80 old messages takes a few seconds.
    let mut one =
        Node::start_with(node_opts("ret1").env("CHATD_TEST_RETENTION_BATCH_DELAY_MS", 400));
    // Node two serves /metrics on its main listener (to administrators).
    let two = Node::start_with(node_opts("ret2").env("CHATD_METRICS__LISTEN", ""));
    let api1 = Api::new(&one);
    let api2 = Api::new(&two);
    for u in ["ann", "hal", "bob"] {
        api1.touch(u).await;
    }
    let g = api1.create_group("ann", "old talk", &["hal", "bob"]).await;
    let conv = ConvId::group(&GroupId::new(g.clone()));
    let mut ann = Client::connect(&one, "ann").await;
    let mut hal = Client::connect(&one, "hal").await;
    // 80 old messages, every eighth from hal (whose messages a hold keeps), then a young one.
    let mut old_ts = 0;
    let mut hals = Vec::new();
    for i in 1..=80u64 {
        let (c, who) = if i % 8 == 3 {
            hals.push(i);
            (&mut hal, "h")
        } else {
            (&mut ann, "a")
        };
        old_ts = old_ts.max(ack_seq_ts(&c.send_group(&g, &format!("{who}{i}"), "old").await).1);
    }
    tokio::time::sleep(Duration::from_millis(30)).await;
    ack_seq_ts(&ann.send_group(&g, "young", "young").await);

    let (s, b) = api1
        .call(
            Method::POST,
            "/v1/admin/holds",
            Some("boss"),
            Some(json!({"scope": {"type": "user", "user": "hal"}, "reason": "case 7"})),
        )
        .await;
    assert_eq!(s, 201, "{b}");
    let (s, b) = api1
        .call(
            Method::PUT,
            "/v1/admin/retention",
            Some("boss"),
            Some(json!({"company": {"message_age_secs": 3600}})),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    let as_of = old_ts + 1 + 3_600_000;

    // Node one starts the pass; node two is refused while it runs.
    let run1 = tokio::spawn({
        let http = api1.http.clone();
        let url = format!("{}/v1/admin/retention/run", one.http());
        async move {
            http.post(url)
                .bearer_auth(token("boss"))
                .json(&json!({"as_of": as_of}))
                .send()
                .await
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, min) = ann.history_seqs(&conv).await;
        if min.is_some_and(|m| m > 20) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the pass on node one never got going"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (s, b) = api2
        .call(
            Method::POST,
            "/v1/admin/retention/run",
            Some("boss"),
            Some(json!({"as_of": as_of})),
        )
        .await;
    assert_eq!((s, code(&b)), (503, "unavailable"), "{b}");
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap()
            .contains("another node"),
        "{b}"
    );
    // The refusal is counted like the other budgets' refusals.
    let (s, m) = api2.call(Method::GET, "/metrics", Some("boss"), None).await;
    assert_eq!(s, 200);
    assert!(
        m.as_str()
            .unwrap()
            .contains("chatd_budget_refusals_total{budget=\"retention\"} 1"),
        "{m}"
    );
    one.kill9();
    assert!(run1.await.unwrap().is_err(), "node one died mid-pass");
    let killed_at = Instant::now();

    // Node two's next pass takes the expired lease and finishes.
    let deadline = Instant::now() + Duration::from_secs(30);
    let report = loop {
        let (s, b) = api2
            .call(
                Method::POST,
                "/v1/admin/retention/run",
                Some("boss"),
                Some(json!({"as_of": as_of})),
            )
            .await;
        if s == 200 {
            break b;
        }
        assert_eq!((s, code(&b)), (503, "unavailable"), "{b}");
        assert!(Instant::now() < deadline, "the lease never expired: {b}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let waited = killed_at.elapsed();
    eprintln!("node two took over {waited:?} after the kill: {report}");
    assert!(
        waited < Duration::from_secs(15),
        "a 2 s lease blocked for {waited:?}"
    );
    let entry = report["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["conv"] == conv.as_str())
        .unwrap_or_else(|| panic!("{report}"));
    assert!(entry["messages"].as_u64().unwrap() > 0, "{report}");
    assert_eq!(entry["min_seq"], 81, "{report}");

    // Everything old is gone but hal's messages; the young one stays; the min seq is 81.
    let mut ann2 = Client::connect(&two, "ann").await;
    let (seqs, min) = ann2.history_seqs(&conv).await;
    let mut want = vec![81];
    want.extend(hals.iter().rev());
    assert_eq!((seqs, min), (want, Some(81)));
    // And the next message continues the seqs.
    let ack = ann2.send_group(&g, "after", "after").await;
    assert_eq!(ack_seq(&ack), 82);
}

#[tokio::test]
async fn an_export_whose_node_is_killed_is_resumed_by_the_other_node() {
    let ks = unique_keyspace("opsexp");
    let shared = tempfile::tempdir().unwrap();
    let node_opts = |id: &str| {
        cluster_node(&ks, id)
            .env("CHATD_AUTH__ADMINS", r#"["boss"]"#)
            .env("CHATD_COMPLIANCE__OFFICERS", r#"["auditor"]"#)
            .env("CHATD_COMPLIANCE__DIR", shared.path().display())
            .env("CHATD_COMPLIANCE__BATCH_EVENTS", 10)
            .env("CHATD_TEST_EXPORT_BATCH_DELAY_MS", 400)
    };
    let mut one = Node::start_with(node_opts("exp1"));
    let two = Node::start_with(node_opts("exp2"));
    let api1 = Api::new(&one);
    let api2 = Api::new(&two);
    for u in ["ann", "bob"] {
        api1.touch(u).await;
    }
    let group = api1.create_group("ann", "resume", &["bob"]).await;
    let conv = ConvId::group(&GroupId::new(group.clone())).to_string();
    let mut ann = Client::connect(&one, "ann").await;
    burst(&mut ann, &group, "k", 80).await;
    drop(ann);
    let log = whole_log(&two.http(), 80, &conv).await;

    let (s, body) = api1
        .call(
            Method::POST,
            "/v1/admin/compliance/exports",
            Some("auditor"),
            None,
        )
        .await;
    assert_eq!(s, 200, "{body}");
    let dir = shared.path();
    let deadline = Instant::now() + Duration::from_secs(30);
    while batches(dir).len() < 2 {
        assert!(Instant::now() < deadline, "the export wrote no batches");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    one.kill9();
    let written_before = batches(dir).len();
    assert!(
        written_before < log.len().div_ceil(10),
        "killed too late to test a resume"
    );
    // The job is still recorded as running: node two's start request resumes it (same job
    // id) rather than starting another.
    let (s, before) = api2
        .call(
            Method::GET,
            "/v1/admin/compliance/exports",
            Some("auditor"),
            None,
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(before["job"]["state"], "running", "{before}");
    let (s, resumed) = api2
        .call(
            Method::POST,
            "/v1/admin/compliance/exports",
            Some("auditor"),
            None,
        )
        .await;
    assert_eq!(s, 200, "{resumed}");
    assert_eq!(resumed["job"]["id"], before["job"]["id"], "{resumed}");
    let status = export_done(&api2, Duration::from_secs(60)).await;
    assert_eq!(status["job"]["id"], before["job"]["id"], "{status}");
    let exported = all_batches(dir, None);
    assert_unique_cursors(&exported);
    // The log may have grown since it was read (membership events of the sign-ins): the
    // export holds it as read, in order, exactly once.
    assert_eq!(
        cursors(&exported[..log.len()]),
        cursors(&log),
        "every event exactly once, in order"
    );
    assert_eq!(status["events"].as_u64().unwrap(), exported.len() as u64);
}
