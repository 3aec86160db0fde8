//! Retention and legal hold end to end, on real nodes: a pass deletes exactly what the
//! policy says and nothing a hold or an exemption keeps, the dry run says the same before,
//! `history` and `sync` report the min seq, a file nothing references any more is deleted
//! (content included) while a referenced one stays, every pass is audited, the schedule runs
//! without being asked, and the store path works in cluster mode.
//!
//! Ages are measured from `as_of` (the run route takes it in test builds), placed between two
//! batches of messages sent a moment apart, so no test waits for an age to pass.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use protocol::{ClientFrame, ConvId, GroupId, MessageKind, Target};
use reqwest::Method;
use serde_json::{json, Value};
use std::time::Duration;
use testkit::*;

fn node_opts() -> NodeOpts {
    NodeOpts::default()
        .env("CHATD_AUTH__ADMINS", r#"["boss"]"#)
        .env("CHATD_RETENTION__INTERVAL_SECS", 0)
}

async fn call(api: &Api, m: Method, path: &str, body: Option<Value>) -> Value {
    let (s, v) = api.call(m, path, Some("boss"), body).await;
    assert!((200..300).contains(&s), "{path}: {s} {v}");
    v
}

/// The report's entry for `conv`.
fn entry<'a>(report: &'a Value, conv: &ConvId) -> &'a Value {
    report["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["conv"] == conv.as_str())
        .unwrap_or_else(|| panic!("{conv} not in the report {report}"))
}

/// The parts of a report that a dry run and the real run must agree on.
fn essence(report: &Value) -> Value {
    let mut r = report.clone();
    r.as_object_mut().unwrap().remove("dry_run");
    r
}

#[tokio::test]
async fn a_pass_deletes_exactly_what_the_policy_says_and_nothing_under_a_hold() {
    let node = Node::start_with(node_opts());
    let api = Api::new(&node);
    for u in ["ann", "bob", "carol", "boss"] {
        api.touch(u).await;
    }
    let g = api.create_group("ann", "retained", &["bob", "carol"]).await;
    let conv = ConvId::group(&GroupId::new(&g));
    let dm = ConvId::parse("dm:ann:bob").unwrap();
    let mut ann = Client::connect(&node, "ann").await;
    let mut bob = Client::connect(&node, "bob").await;
    let mut carol = Client::connect(&node, "carol").await;
    // Old: seqs 1..=8 (carol: 2 and 6; seq 5 will be pinned), and three direct messages.
    let senders = ["ann", "carol", "bob", "ann", "ann", "carol", "bob", "ann"];
    let mut old_ts = 0;
    for (i, who) in senders.iter().enumerate() {
        let c = match *who {
            "ann" => &mut ann,
            "bob" => &mut bob,
            _ => &mut carol,
        };
        let (seq, ts) = ack_seq_ts(&c.send_group(&g, &format!("old{i}"), "old news").await);
        assert_eq!(seq, i as u64 + 1);
        old_ts = old_ts.max(ts);
    }
    for i in 0..3 {
        ack_seq_ts(&ann.send_dm("bob", &format!("dm{i}"), "between us").await);
    }
    tokio::time::sleep(Duration::from_millis(30)).await;
    // New: seqs 9 and 10, after the cut.
    let (_, new_ts) = ack_seq_ts(&ann.send_group(&g, "new0", "fresh").await);
    ack_seq_ts(&bob.send_group(&g, "new1", "fresh").await);
    assert!(new_ts > old_ts);
    let as_of = old_ts + 1 + 3_600_000;

    let (s, v) = api
        .call(
            Method::PUT,
            &format!("/v1/groups/{g}/pins/5"),
            Some("ann"),
            None,
        )
        .await;
    assert!(s < 300, "pin: {s} {v}");
    let hold = call(
        &api,
        Method::POST,
        "/v1/admin/holds",
        Some(json!({"scope": {"type": "user", "user": "carol"}, "reason": "case 42"})),
    )
    .await;
    let policies = json!({
        "company": {"message_age_secs": 3600},
        "kinds": {"direct": {"message_age_secs": 0}},
    });
    // The dry run, before anything is saved.
    let dry = call(
        &api,
        Method::POST,
        "/v1/admin/retention/dry-run",
        Some(json!({"policies": policies, "as_of": as_of})),
    )
    .await;
    assert_eq!(dry["dry_run"], true);
    let e = entry(&dry, &conv);
    assert_eq!(e["messages"], 5, "{e}");
    assert_eq!(e["kept"], 3, "{e}");
    assert_eq!(
        (e["first_seq"].clone(), e["last_seq"].clone()),
        (json!(1), json!(8))
    );
    assert_eq!(e["min_seq"], 9);
    assert!(dry["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .all(|c| c["conv"] != dm.as_str()));
    // Nothing was deleted by the dry run.
    assert_eq!(ann.history_seqs(&conv).await.0.len(), 10);

    call(&api, Method::PUT, "/v1/admin/retention", Some(policies)).await;
    let saved = call(&api, Method::GET, "/v1/admin/retention", None).await;
    assert_eq!(saved["company"]["message_age_secs"], 3600);
    assert_eq!(saved["updated_by"], "boss");
    let run = call(
        &api,
        Method::POST,
        "/v1/admin/retention/run",
        Some(json!({"as_of": as_of})),
    )
    .await;
    assert_eq!(run["dry_run"], false);
    assert_eq!(
        essence(&run),
        essence(&dry),
        "the dry run and the run differ"
    );

    // Deleted: 1, 3, 4, 7, 8. Kept below the min seq: carol's (held) 2 and 6, pinned 5.
    assert_eq!(
        bob.history_seqs(&conv).await,
        (vec![10, 9, 6, 5, 2], Some(9))
    );
    assert_eq!(bob.sync_seqs(&conv).await, (vec![2, 5, 6, 9, 10], Some(9)));
    // Direct conversations keep forever: untouched, no min seq.
    assert_eq!(ann.history_seqs(&dm).await, (vec![3, 2, 1], None));
    // Seqs go on, gap-free.
    assert_eq!(
        ack_seq_ts(&carol.send_group(&g, "after", "still here").await).0,
        11
    );

    // Audited: the pass and the conversation.
    let (s, audit) = api
        .call(Method::GET, "/v1/audit?limit=100", Some("boss"), None)
        .await;
    assert_eq!(s, 200);
    let actions: Vec<(&str, &str)> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap_or(""),
                e["conv"].as_str().unwrap_or(""),
            )
        })
        .collect();
    for want in [
        ("retention.run", ""),
        ("retention.delete", conv.as_str()),
        ("retention.policy", ""),
        ("hold.create", ""),
    ] {
        assert!(actions.contains(&want), "{want:?} not in {actions:?}");
    }

    // Released: carol's old messages follow the policy at the next pass; the pin still keeps 5.
    let id = hold["id"].as_str().unwrap();
    let released = call(
        &api,
        Method::POST,
        &format!("/v1/admin/holds/{id}/release"),
        None,
    )
    .await;
    assert_eq!(released["released_by"], "boss");
    let run = call(
        &api,
        Method::POST,
        "/v1/admin/retention/run",
        Some(json!({"as_of": as_of})),
    )
    .await;
    assert_eq!(entry(&run, &conv)["messages"], 2, "{run}");
    assert_eq!(bob.history_seqs(&conv).await, (vec![11, 10, 9, 5], Some(9)));
    let holds = call(&api, Method::GET, "/v1/admin/holds", None).await;
    assert_eq!(holds[0]["released_by"], "boss");
}

/// A file referenced only by an old message goes with it (record and content); one a kept
/// message also references stays; one whose only message was recalled goes at the next pass.
#[tokio::test]
async fn a_file_nothing_references_is_deleted_and_a_referenced_one_kept() {
    let node = Node::start_with(node_opts());
    let api = Api::new(&node);
    for u in ["ann", "bob", "boss"] {
        api.touch(u).await;
    }
    let expiring = api.create_group("ann", "expiring", &["bob"]).await;
    let kept = api.create_group("ann", "kept", &["bob"]).await;
    let mut ann = Client::connect(&node, "ann").await;
    let only_old = b"only in an old message".repeat(10);
    let shared = b"also in a kept conversation".repeat(10);
    let (s, a) = api
        .upload("ann", "a.txt", "text/plain", only_old.clone())
        .await;
    assert_eq!(s, 201, "{a}");
    let (s, b) = api
        .upload("ann", "b.txt", "text/plain", shared.clone())
        .await;
    assert_eq!(s, 201, "{b}");
    let recalled = b"sent, then recalled".repeat(10);
    let (s, c) = api
        .upload("ann", "c.txt", "text/plain", recalled.clone())
        .await;
    assert_eq!(s, 201, "{c}");
    let mut old_ts = 0;
    let mut last_seq = 0;
    for (i, (group, att)) in [(&expiring, &a), (&expiring, &b), (&kept, &b), (&kept, &c)]
        .into_iter()
        .enumerate()
    {
        let cmid = format!("f{i}");
        ann.send(&ClientFrame::Send(protocol::SendFrame {
            rid: Some(cmid.clone()),
            client_msg_id: cmid.clone(),
            to: Target::Group(GroupId::new(group.as_str())),
            kind: MessageKind::File,
            body: String::new(),
            attachment: Some(serde_json::from_value(att.clone()).unwrap()),
            mentions: vec![],
            reply_to: None,
        }))
        .await;
        let (seq, ts) = ack_seq_ts(&ann.recv_until(|f| is_reply_to(f, &cmid)).await);
        old_ts = old_ts.max(ts);
        last_seq = seq;
    }
    // The sender recalls the last one (seq 2 of the kept group): its file loses its reference.
    let (s, v) = api
        .call(
            Method::DELETE,
            &format!("/v1/conversations/group:{kept}/messages/{last_seq}"),
            Some("ann"),
            None,
        )
        .await;
    assert_eq!(s, 204, "recall: {v}");
    let as_of = old_ts + 1 + 3_600_000;
    let a_id = a["file_id"].as_str().unwrap();
    let b_id = b["file_id"].as_str().unwrap();
    let sha_of = |id: &str| {
        let api = &api;
        let path = format!("/v1/files/{id}/meta");
        async move {
            let (s, v) = api.call(Method::GET, &path, Some("ann"), None).await;
            assert_eq!(s, 200, "{v}");
            v["sha256"].as_str().unwrap().to_owned()
        }
    };
    let c_id = c["file_id"].as_str().unwrap();
    let (a_sha, b_sha, c_sha) = (sha_of(a_id).await, sha_of(b_id).await, sha_of(c_id).await);
    let policies = json!({
        "company": {"message_age_secs": 3600},
        "conversations": {format!("group:{kept}"): {"message_age_secs": 0}},
    });
    call(&api, Method::PUT, "/v1/admin/retention", Some(policies)).await;
    let dry = call(
        &api,
        Method::POST,
        "/v1/admin/retention/dry-run",
        Some(json!({"as_of": as_of})),
    )
    .await;
    assert_eq!(dry["totals"]["files"], 2, "{dry}");
    assert_eq!(
        dry["totals"]["file_bytes"],
        only_old.len() + recalled.len(),
        "{dry}"
    );
    assert_eq!(dry["totals"]["attachments"], 2, "{dry}");
    let run = call(
        &api,
        Method::POST,
        "/v1/admin/retention/run",
        Some(json!({"as_of": as_of})),
    )
    .await;
    assert_eq!(essence(&run), essence(&dry));

    let content = |sha: &str| {
        node.data_dir
            .join("files")
            .join(&sha[0..2])
            .join(&sha[2..4])
            .join(sha)
    };
    let (s, _) = api
        .call(
            Method::GET,
            &format!("/v1/files/{a_id}/meta"),
            Some("ann"),
            None,
        )
        .await;
    assert_eq!(s, 404, "the unreferenced file's record is gone");
    assert!(!content(&a_sha).exists(), "its content is gone");
    assert!(
        !content(&c_sha).exists(),
        "the recalled message's file is gone"
    );
    let (s, _) = api
        .call(
            Method::GET,
            &format!("/v1/files/{c_id}/meta"),
            Some("ann"),
            None,
        )
        .await;
    assert_eq!(s, 404);
    let (s, v) = api
        .call(
            Method::GET,
            &format!("/v1/files/{b_id}/meta"),
            Some("bob"),
            None,
        )
        .await;
    assert_eq!(s, 200, "the file a kept message references stays: {v}");
    assert!(content(&b_sha).exists());
}

/// A recall under a hold keeps the recalled content (and its file) for the lawyers; once the
/// hold is released, the next pass deletes both.
#[tokio::test]
async fn a_recall_under_a_hold_keeps_the_content_until_the_release() {
    let node = Node::start_with(node_opts());
    let api = Api::new(&node);
    for u in ["ann", "bob", "boss"] {
        api.touch(u).await;
    }
    let g = api.create_group("ann", "matter", &["bob"]).await;
    let conv = ConvId::group(&GroupId::new(&g));
    let (s, f) = api
        .upload("ann", "evidence.txt", "text/plain", b"keep me".repeat(20))
        .await;
    assert_eq!(s, 201, "{f}");
    let hold = call(
        &api,
        Method::POST,
        "/v1/admin/holds",
        Some(json!({"scope": {"type": "conversation", "conv": conv.as_str()}, "reason": "case 7"})),
    )
    .await;
    let mut ann = Client::connect(&node, "ann").await;
    ann.send(&ClientFrame::Send(protocol::SendFrame {
        rid: Some("f".into()),
        client_msg_id: "f".into(),
        to: Target::Group(GroupId::new(g.as_str())),
        kind: MessageKind::File,
        body: "the contract".into(),
        attachment: Some(serde_json::from_value(f.clone()).unwrap()),
        mentions: vec![],
        reply_to: None,
    }))
    .await;
    let (seq, _) = ack_seq_ts(&ann.recv_until(|fr| is_reply_to(fr, "f")).await);
    let (s, v) = api
        .call(
            Method::DELETE,
            &format!("/v1/conversations/{conv}/messages/{seq}"),
            Some("ann"),
            None,
        )
        .await;
    assert_eq!(s, 204, "recall: {v}");
    let file = format!("/v1/files/{}/meta", f["file_id"].as_str().unwrap());
    // Held: a pass keeps the file the recalled message referenced.
    let run = call(
        &api,
        Method::POST,
        "/v1/admin/retention/run",
        Some(json!({})),
    )
    .await;
    assert_eq!(run["totals"]["files"], 0, "{run}");
    assert_eq!(run["totals"]["preserved"], 0, "{run}");
    assert_eq!(api.call(Method::GET, &file, Some("ann"), None).await.0, 200);
    // Released: the kept content and the file go at the next pass.
    let id = hold["id"].as_str().unwrap();
    call(
        &api,
        Method::POST,
        &format!("/v1/admin/holds/{id}/release"),
        None,
    )
    .await;
    let run = call(
        &api,
        Method::POST,
        "/v1/admin/retention/run",
        Some(json!({})),
    )
    .await;
    assert_eq!(run["totals"]["preserved"], 1, "{run}");
    assert_eq!(run["totals"]["files"], 1, "{run}");
    assert_eq!(api.call(Method::GET, &file, Some("ann"), None).await.0, 404);
}

#[tokio::test]
async fn the_schedule_runs_a_pass_without_being_asked() {
    let node = Node::start_with(
        NodeOpts::default()
            .env("CHATD_AUTH__ADMINS", r#"["boss"]"#)
            .env("CHATD_RETENTION__INTERVAL_SECS", 1),
    );
    let api = Api::new(&node);
    for u in ["ann", "bob", "boss"] {
        api.touch(u).await;
    }
    call(
        &api,
        Method::PUT,
        "/v1/admin/retention",
        Some(json!({"company": {"message_age_secs": 1}})),
    )
    .await;
    let mut ann = Client::connect(&node, "ann").await;
    for i in 0..3 {
        ack_seq_ts(&ann.send_dm("bob", &format!("m{i}"), "soon gone").await);
    }
    let dm = ConvId::parse("dm:ann:bob").unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (seqs, min) = ann.history_seqs(&dm).await;
        if seqs.is_empty() && min == Some(4) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no scheduled pass deleted the messages: {seqs:?} {min:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // The innocent side: sending still works, with the next seq.
    assert_eq!(ack_seq_ts(&ann.send_dm("bob", "later", "hello").await).0, 4);
    let (_, audit) = api
        .call(Method::GET, "/v1/audit?limit=50", Some("boss"), None)
        .await;
    assert!(audit
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["action"] == "retention.run" && e["actor"] == "chatd:retention"));
}

#[tokio::test]
async fn bad_policies_and_holds_are_refused_with_json_errors() {
    let node = Node::start_with(node_opts());
    let api = Api::new(&node);
    api.touch("boss").await;
    for (path, body) in [
        ("/v1/admin/retention", json!({"kinds": {"galaxy": {}}})),
        (
            "/v1/admin/retention",
            json!({"conversations": {"nope": {}}}),
        ),
        (
            "/v1/admin/retention",
            json!({"company": {"message_age_secs": -1}}),
        ),
    ] {
        let (s, v) = api.call(Method::PUT, path, Some("boss"), Some(body)).await;
        assert_eq!(s, 400, "{v}");
        assert_eq!(v["error"]["code"], "bad_request");
    }
    let (s, v) = api
        .call(
            Method::POST,
            "/v1/admin/holds",
            Some("boss"),
            Some(json!({"scope": {"type": "company"}, "reason": " "})),
        )
        .await;
    assert_eq!(s, 400, "{v}");
    let (s, v) = api
        .call(
            Method::POST,
            "/v1/admin/holds/hnosuch/release",
            Some("boss"),
            None,
        )
        .await;
    assert_eq!(s, 404, "{v}");
}

#[tokio::test]
async fn cluster_mode_deletes_through_the_cql_store() {
    let ks = unique_keyspace("retention");
    let node = Node::start_with(
        cluster_node(&ks, "r1")
            .env("CHATD_AUTH__ADMINS", r#"["boss"]"#)
            .env("CHATD_RETENTION__INTERVAL_SECS", 0),
    );
    let api = Api::new(&node);
    for u in ["ann", "bob", "boss"] {
        api.touch(u).await;
    }
    let mut ann = Client::connect(&node, "ann").await;
    let mut old_ts = 0;
    for i in 0..4 {
        old_ts = old_ts.max(ack_seq_ts(&ann.send_dm("bob", &format!("o{i}"), "old").await).1);
    }
    tokio::time::sleep(Duration::from_millis(30)).await;
    ack_seq_ts(&ann.send_dm("bob", "n0", "new").await);
    call(
        &api,
        Method::PUT,
        "/v1/admin/retention",
        Some(json!({"kinds": {"direct": {"message_age_secs": 3600}}})),
    )
    .await;
    let run = call(
        &api,
        Method::POST,
        "/v1/admin/retention/run",
        Some(json!({"as_of": old_ts + 1 + 3_600_000})),
    )
    .await;
    assert_eq!(run["totals"]["messages"], 4, "{run}");
    let dm = ConvId::parse("dm:ann:bob").unwrap();
    assert_eq!(ann.history_seqs(&dm).await, (vec![5], Some(5)));
    assert_eq!(ann.sync_seqs(&dm).await, (vec![5], Some(5)));
    assert_eq!(ack_seq_ts(&ann.send_dm("bob", "n1", "next").await).0, 6);
}

/// Measurement (ignored by default; `cargo test -p tests --test retention -- --ignored
/// --nocapture`): a dry run and a pass over one group of 5,000 old messages, with the default
/// `retention.batch` (500).
#[tokio::test]
#[ignore = "a measurement, not a check: run with --ignored --nocapture (the test command runs it too)"]
async fn measure_a_pass_over_five_thousand_messages() {
    let node = Node::start_with(node_opts().unthrottled_sends());
    let api = Api::new(&node);
    for u in ["ann", "boss"] {
        api.touch(u).await;
    }
    let g = api.create_group("ann", "big", &[]).await;
    let mut ann = Client::connect(&node, "ann").await;
    let mut old_ts = 0;
    for i in 0..5000 {
        old_ts = old_ts.max(ack_seq_ts(&ann.send_group(&g, &format!("m{i}"), "old").await).1);
    }
    call(
        &api,
        Method::PUT,
        "/v1/admin/retention",
        Some(json!({"company": {"message_age_secs": 3600}})),
    )
    .await;
    let as_of = old_ts + 1 + 3_600_000;
    let t = std::time::Instant::now();
    let dry = call(
        &api,
        Method::POST,
        "/v1/admin/retention/dry-run",
        Some(json!({"as_of": as_of})),
    )
    .await;
    let dry_ms = t.elapsed().as_millis();
    let t = std::time::Instant::now();
    let run = call(
        &api,
        Method::POST,
        "/v1/admin/retention/run",
        Some(json!({"as_of": as_of})),
    )
    .await;
    let run_ms = t.elapsed().as_millis();
    assert_eq!(run["totals"]["messages"], 5000);
    assert_eq!(dry["totals"]["messages"], 5000);
    let t = std::time::Instant::now();
    let (seqs, min) = ann.history_seqs(&ConvId::group(&GroupId::new(&g))).await;
    let history_ms = t.elapsed().as_millis();
    assert!(seqs.is_empty());
    assert_eq!(min, Some(5001));
    println!("5000 messages: dry run {dry_ms} ms, pass {run_ms} ms, history after {history_ms} ms");
}
