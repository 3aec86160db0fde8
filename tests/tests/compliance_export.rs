//! Compliance export (会话存档): the event log's pull API pages exactly (equal commit times,
//! sends committed while a reader pages), only administrators and compliance officers read
//! it, export batches are zip files whose manifest checksums hold, encrypted to the
//! company's age key when one is set, and an export killed mid-way resumes with every event
//! exactly once. One test runs the CQL backend (test CQL database + Redis).

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use protocol::{ClientFrame, ConvId, GroupId, ServerFrame};
use serde_json::Value;
use std::time::{Duration, Instant};
use testkit::compliance::*;
use testkit::*;

fn opts() -> NodeOpts {
    NodeOpts::default()
        .env("CHATD_AUTH__ADMINS", r#"["boss"]"#)
        .env("CHATD_COMPLIANCE__OFFICERS", r#"["auditor"]"#)
        .unthrottled_sends()
}

#[tokio::test]
async fn pages_are_exact_with_equal_commit_times_and_sends_committed_while_paging() {
    let node = Node::start_with(opts());
    let api = Api::new(&node);
    for u in ["ann", "bob", "cat"] {
        api.touch(u).await;
    }
    let group = api.create_group("ann", "audit me", &["bob", "cat"]).await;
    let conv = ConvId::group(&GroupId::new(group.clone())).to_string();
    let base = node.http();

    // Pipelined bursts: the store commits them in batches, so many share a millisecond.
    let mut ann = Client::connect(&node, "ann").await;
    burst(&mut ann, &group, "a", 60).await;
    // A recall, then three senders keep sending while an officer pages in small pages.
    ann.send(&ClientFrame::Recall {
        rid: Some("r".into()),
        conv: ConvId::parse(&conv).unwrap(),
        seq: protocol::Seq(1),
    })
    .await;
    ann.recv_until(|f| matches!(f, ServerFrame::Recalled { .. }))
        .await;
    let senders: Vec<_> = ["ann", "bob", "cat"]
        .into_iter()
        .map(|u| {
            let (node_addr, group) = (node.addr, group.clone());
            tokio::spawn(async move {
                let mut c = Client::connect_with(node_addr, u, protocol::Codec::Json).await;
                for round in 0..4 {
                    burst(&mut c, &group, &format!("{u}{round}-"), 15).await;
                }
            })
        })
        .collect();
    let total = 60 + 3 * 4 * 15;
    let (records, cursor) = read_until(&base, "auditor", "", 7, Duration::from_secs(30), |r| {
        message_keys(r, &conv).len() >= total
    })
    .await;
    for s in senders {
        s.await.unwrap();
    }
    // Exactly once, in seq order: nothing was skipped by a page that ran ahead of a commit.
    assert_unique_cursors(&records);
    assert_eq!(
        message_keys(&records, &conv),
        (1..=total as u64).collect::<Vec<_>>()
    );
    let again = events(&base, "auditor", &cursor, 100).await;
    assert!(
        again.records.iter().all(|r| r["kind"] != "message"),
        "a message appeared behind the cursor: {}",
        again.body
    );
    // Equal commit times did happen, and the cursor told them apart.
    let times: Vec<u64> = records
        .iter()
        .map(|r| r["commit_ts"].as_u64().unwrap())
        .collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "commit order");
    let ties = times.windows(2).filter(|w| w[0] == w[1]).count();
    assert!(ties > 0, "no two events shared a millisecond: {times:?}");
    // Every kind is there: the group's members, the messages (with their outcome and
    // content), the recall.
    let members: Vec<&Value> = records.iter().filter(|r| r["kind"] == "member").collect();
    assert_eq!(members.len(), 3, "{members:?}");
    let first = records
        .iter()
        .find(|r| r["kind"] == "message" && r["seq"] == 2)
        .unwrap();
    assert_eq!(first["moderation"], "allow");
    assert_eq!(first["from"], "ann");
    assert_eq!(first["message"]["body"], "a message 1");
    let recall = records.iter().find(|r| r["kind"] == "recall").unwrap();
    assert_eq!(recall["seq"], 1);
    let recalled = records
        .iter()
        .find(|r| r["kind"] == "message" && r["seq"] == 1)
        .unwrap();
    assert_eq!(recalled["message"]["kind"], "recalled");
    assert_eq!(recalled["message"]["body"], "");
}

/// A message recalled while a legal hold covers it: the log shows the copy the hold kept (the
/// content as sent), marked `held_copy`; a recall without a hold shows the tombstone.
#[tokio::test]
async fn a_message_recalled_under_a_legal_hold_is_exported_with_its_content() {
    let node = Node::start_with(opts());
    let api = Api::new(&node);
    for u in ["ann", "bob", "boss"] {
        api.touch(u).await;
    }
    let (s, hold) = api
        .call(
            reqwest::Method::POST,
            "/v1/admin/holds",
            Some("boss"),
            Some(serde_json::json!({"scope": {"type": "user", "user": "ann"}, "reason": "case 9"})),
        )
        .await;
    assert!(s < 300, "{hold}");
    let mut ann = Client::connect(&node, "ann").await;
    let mut bob = Client::connect(&node, "bob").await;
    let seq = protocol::Seq(ack_seq(&ann.send_dm("bob", "h1", "the held words").await));
    ack_seq(&bob.send_dm("ann", "b1", "not held").await);
    let conv = ConvId::parse("dm:ann:bob").unwrap();
    for (c, at) in [(&mut ann, seq), (&mut bob, protocol::Seq(seq.0 + 1))] {
        c.send(&ClientFrame::Recall {
            rid: Some("r".into()),
            conv: conv.clone(),
            seq: at,
        })
        .await;
        c.recv_until(|f| matches!(f, ServerFrame::Recalled { .. }))
            .await;
    }
    let dm = conv.to_string();
    let (records, _) = read_until(
        &node.http(),
        "auditor",
        "",
        50,
        Duration::from_secs(30),
        |r| message_keys(r, &dm).len() >= 2,
    )
    .await;
    let message = |n: u64| {
        records
            .iter()
            .find(|r| r["kind"] == "message" && r["conv"] == dm.as_str() && r["seq"] == n)
            .unwrap()
    };
    let held = message(seq.0);
    assert_eq!(held["held_copy"], true, "{held}");
    assert_eq!(held["message"]["body"], "the held words", "{held}");
    let plain = message(seq.0 + 1);
    assert!(plain.get("held_copy").is_none(), "{plain}");
    assert_eq!(plain["message"]["kind"], "recalled", "{plain}");
    assert_eq!(plain["message"]["body"], "", "{plain}");
}

#[tokio::test]
async fn only_administrators_and_officers_read_the_log_and_bad_input_is_refused() {
    let node = Node::start_with(opts());
    let api = Api::new(&node);
    for u in ["ann", "bob"] {
        api.touch(u).await;
    }
    api.create_group("ann", "g", &["bob"]).await;
    let base = node.http();
    assert_eq!(events(&base, "ann", "", 10).await.status, 403);
    assert_eq!(events(&base, "bob", "", 10).await.status, 403);
    let boss = events(&base, "boss", "", 10).await;
    assert_eq!(boss.status, 200, "{}", boss.body);
    assert_eq!(events(&base, "auditor", "", 10).await.status, 200);
    let anon = reqwest::get(format!("{base}/v1/admin/compliance/events"))
        .await
        .unwrap();
    assert_eq!(anon.status().as_u16(), 401);
    // The compliance role is no administrator.
    let (s, _) = api
        .call(reqwest::Method::GET, "/v1/audit", Some("auditor"), None)
        .await;
    assert_eq!(s, 403);
    for (after, limit) in [("", 0), ("", 1001), ("not-hex", 10), ("3132", 10)] {
        let p = events(&base, "boss", after, limit).await;
        assert_eq!(p.status, 400, "after={after} limit={limit}: {}", p.body);
        let v: Value = serde_json::from_str(&p.body).unwrap();
        assert_eq!(v["error"]["code"], "bad_request");
    }
    let (s, _) = api
        .call(
            reqwest::Method::POST,
            "/v1/admin/compliance/exports",
            Some("bob"),
            None,
        )
        .await;
    assert_eq!(s, 403);
}

#[tokio::test]
async fn export_batches_are_checksummed_zips_encrypted_to_the_company_key() {
    let identity = age::x25519::Identity::generate();
    let recipient = identity.to_public().to_string();
    let node = Node::start_with(
        opts()
            .env("CHATD_COMPLIANCE__PUBLIC_KEY", &recipient)
            .env("CHATD_COMPLIANCE__BATCH_EVENTS", 20),
    );
    let api = Api::new(&node);
    for u in ["ann", "bob"] {
        api.touch(u).await;
    }
    let group = api.create_group("ann", "export", &["bob"]).await;
    let conv = ConvId::group(&GroupId::new(group.clone())).to_string();
    let mut ann = Client::connect(&node, "ann").await;
    burst(&mut ann, &group, "e", 45).await;
    // Commas, quotes, new lines and a would-be formula survive CSV and JSONL.
    let tricky = "=SUM(A1), \"quoted\"\nnext line";
    ack_seq(&ann.send_group(&group, "tricky", tricky).await);
    let log = whole_log(&node.http(), 46, &conv).await;

    let (s, started) = api
        .call(
            reqwest::Method::POST,
            "/v1/admin/compliance/exports",
            Some("auditor"),
            None,
        )
        .await;
    assert_eq!(s, 200, "{started}");
    assert_eq!(started["encrypted"], true);
    let status = export_done(&api, Duration::from_secs(30)).await;
    let dir = node.data_dir.join("compliance");
    let exported = all_batches(&dir, Some(&identity));
    assert!(batches(&dir).len() >= 3);
    assert_eq!(
        status["batches"].as_u64().unwrap(),
        batches(&dir).len() as u64
    );
    // The export holds the log as the API pages it (it may hold events committed later).
    assert_eq!(cursors(&exported)[..log.len()], cursors(&log)[..]);
    assert_eq!(status["events"].as_u64().unwrap(), exported.len() as u64);
    let t = exported
        .iter()
        .find(|r| r["client_msg_id"] == "tricky")
        .unwrap();
    assert_eq!(t["message"]["body"], tricky);
    // Without the key the batch is not a zip.
    let first = batches(&dir).into_values().next().unwrap();
    assert!(zip::ZipArchive::new(std::fs::File::open(&first).unwrap()).is_err());

    // A second export continues after the first: only what is new.
    ack_seq(&ann.send_group(&group, "later", "after the export").await);
    let (s, _) = api
        .call(
            reqwest::Method::POST,
            "/v1/admin/compliance/exports",
            Some("boss"),
            None,
        )
        .await;
    assert_eq!(s, 200);
    let before = status["batches"].as_u64().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = export_done(&api, Duration::from_secs(30)).await;
        if status["batches"].as_u64().unwrap() > before {
            break;
        }
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let all = all_batches(&dir, Some(&identity));
    assert_unique_cursors(&all);
    assert_eq!(all.last().unwrap()["client_msg_id"], "later");
}

#[tokio::test]
async fn an_export_killed_mid_way_resumes_with_every_event_exactly_once() {
    let opts = opts()
        .env("CHATD_COMPLIANCE__BATCH_EVENTS", 10)
        .env("CHATD_TEST_EXPORT_BATCH_DELAY_MS", 400);
    let data = tempfile::tempdir().unwrap();
    let mut node = Node::spawn(data.path(), opts.clone());
    let api = Api::new(&node);
    for u in ["ann", "bob"] {
        api.touch(u).await;
    }
    let group = api.create_group("ann", "resume", &["bob"]).await;
    let conv = ConvId::group(&GroupId::new(group.clone())).to_string();
    let mut ann = Client::connect(&node, "ann").await;
    burst(&mut ann, &group, "k", 100).await;
    let log = whole_log(&node.http(), 100, &conv).await;
    drop(ann);

    let (s, body) = api
        .call(
            reqwest::Method::POST,
            "/v1/admin/compliance/exports",
            Some("boss"),
            None,
        )
        .await;
    assert_eq!(s, 200, "{body}");
    let dir = data.path().join("compliance");
    let deadline = Instant::now() + Duration::from_secs(30);
    while batches(&dir).len() < 3 {
        assert!(Instant::now() < deadline, "the export wrote no batches");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    node.kill9();
    let written_before = batches(&dir).len();
    assert!(
        written_before < log.len().div_ceil(10),
        "killed too late to test a resume"
    );

    // The restarted node resumes the job by itself.
    let node = Node::spawn(data.path(), opts);
    let api = Api::new(&node);
    let status = export_done(&api, Duration::from_secs(60)).await;
    let exported = all_batches(&dir, None);
    assert_unique_cursors(&exported);
    assert_eq!(
        cursors(&exported),
        cursors(&log),
        "every event exactly once, in order"
    );
    assert_eq!(status["events"].as_u64().unwrap(), log.len() as u64);
    assert_eq!(status["cursor"], exported.last().unwrap()["cursor"]);
}

#[tokio::test]
async fn cql_backend_pages_exactly_across_two_nodes() {
    let ks = unique_keyspace("compliance");
    let cfg = |id: &str| cluster_node(&ks, id).env("CHATD_AUTH__ADMINS", r#"["boss"]"#);
    let a = Node::start_with(cfg("ca"));
    let b = Node::start_with(cfg("cb"));
    let api = Api::new(&a);
    for u in ["ann", "bob"] {
        api.touch(u).await;
    }
    let group = api.create_group("ann", "cluster", &["bob"]).await;
    let conv = ConvId::group(&GroupId::new(group.clone())).to_string();
    let senders: Vec<_> = [("ann", a.addr), ("bob", b.addr)]
        .into_iter()
        .map(|(u, addr)| {
            let group = group.clone();
            tokio::spawn(async move {
                let mut c = Client::connect_with(addr, u, protocol::Codec::Json).await;
                for i in 0..30 {
                    ack_seq(&c.send_group(&group, &format!("{u}{i}"), "hello").await);
                }
            })
        })
        .collect();
    let (records, cursor) = read_until(&a.http(), "boss", "", 5, Duration::from_secs(60), |r| {
        message_keys(r, &conv).len() >= 60
    })
    .await;
    for s in senders {
        s.await.unwrap();
    }
    assert_unique_cursors(&records);
    // Two nodes commit concurrently: the log is in commit order, each seq exactly once.
    let mut seqs = message_keys(&records, &conv);
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=60).collect::<Vec<_>>());
    let again = events(&a.http(), "boss", &cursor, 100).await;
    assert!(
        again.records.iter().all(|r| r["kind"] != "message"),
        "{}",
        again.body
    );
    // The other node answers the same log.
    let (from_b, _) = read_until(&b.http(), "boss", "", 1000, Duration::from_secs(30), |r| {
        message_keys(r, &conv).len() >= 60
    })
    .await;
    assert_eq!(cursors(&from_b)[..records.len()], cursors(&records)[..]);
}
