//! Moderation through a real node: block, mask, review, audit, escalation, external members,
//! hot reload.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use protocol::{ClientFrame, ConvId, ErrorCode, EventKind, GroupId, ServerFrame};
use reqwest::Method;
use serde_json::json;
use std::path::Path;
use std::time::Duration;
use testkit::*;

fn admins() -> NodeOpts {
    NodeOpts::default().env("CHATD_AUTH__ADMINS", r#"["boss"]"#)
}

async fn history(c: &mut Client, conv: &ConvId) -> Vec<protocol::Message> {
    c.send(&ClientFrame::History {
        rid: Some("h".into()),
        conv: conv.clone(),
        before_seq: None,
        limit: None,
    })
    .await;
    match c
        .recv_until(|f| matches!(f, ServerFrame::History { .. }))
        .await
    {
        ServerFrame::History { messages, .. } => messages,
        _ => unreachable!(),
    }
}

#[tokio::test]
async fn blocked_messages_are_never_stored_or_delivered_and_are_audited() {
    let node = Node::start_with(admins());
    let api = Api::new(&node);
    let mut a = Client::connect(&node, "ann").await;
    let mut b = Client::connect(&node, "bob").await;
    api.touch("boss").await;
    let g = api.create_group("ann", "team", &["bob"]).await;
    let f = a.send_group(&g, "bad1", "周末一起去网络赌博吧").await;
    match &f {
        ServerFrame::Error {
            code: ErrorCode::Blocked,
            message,
            retry: false,
            ..
        } => {
            assert!(message.contains("gambling"), "{message}");
            assert!(
                !message.contains("赌博"),
                "the matched words are never echoed: {message}"
            );
        }
        other => panic!("expected blocked, got {other:?}"),
    }
    // Evasion with separators and traditional characters is caught too.
    let f = a.send_group(&g, "bad2", "网*絡*賭*博").await;
    assert_eq!(error_code(&f), ErrorCode::Blocked);
    ack_seq(&a.send_group(&g, "ok", "路口交通很好").await);
    let m = b.next_message().await;
    assert_eq!(m.body, "路口交通很好", "only the clean message arrives");
    let conv = ConvId::group(&GroupId::new(g.clone()));
    let h = history(&mut b, &conv).await;
    assert_eq!(h.len(), 1);

    let (s, body) = api
        .call(
            Method::GET,
            "/v1/audit?category=gambling",
            Some("boss"),
            None,
        )
        .await;
    assert_eq!(s, 200, "{body}");
    let entries = body.as_array().unwrap();
    assert_eq!(entries.len(), 2, "{body}");
    assert_eq!(entries[0]["actor"], "ann");
    assert_eq!(entries[0]["action"], "moderation.block");
    assert_eq!(entries[0]["conv"], conv.as_str());
    // Only company administrators read the audit log.
    let (s, _) = api.call(Method::GET, "/v1/audit", Some("ann"), None).await;
    assert_eq!(s, 403);
}

#[tokio::test]
async fn personal_data_is_masked_on_every_device_and_in_history() {
    let node = Node::start();
    let mut a = Client::connect(&node, "ann").await;
    let mut phone = Client::connect(&node, "bob").await;
    let mut desktop = Client::connect(&node, "bob").await;
    let ack = a.send_dm("bob", "pii", "我的电话是 13812345678").await;
    match &ack {
        ServerFrame::Ack {
            moderation: Some(note),
            seq: Some(_),
            ..
        } => assert_eq!(note.action, "mask"),
        other => panic!("expected a masked ack, got {other:?}"),
    }
    for c in [&mut phone, &mut desktop] {
        let m = c.next_message().await;
        assert!(m.body.contains("138****5678"), "{}", m.body);
        assert!(!m.body.contains("13812345678"));
    }
    let h = history(&mut a, &ConvId::parse("dm:ann:bob").unwrap()).await;
    assert!(h[0].body.contains("138****5678"));
}

#[tokio::test]
async fn held_messages_appear_only_after_approval() {
    let node = Node::start();
    let api = Api::new(&node);
    let mut owner = Client::connect(&node, "olga").await;
    let mut member = Client::connect(&node, "max").await;
    let g = api.create_group("olga", "market", &["max"]).await;
    let conv = ConvId::group(&GroupId::new(g.clone()));
    let ack = member.send_group(&g, "ad1", "便宜好货 加微信 abc123").await;
    let review_id = match &ack {
        ServerFrame::Ack {
            seq: None,
            id,
            moderation: Some(note),
            ..
        } => {
            assert_eq!(note.action, "review");
            id.as_str().to_owned()
        }
        other => panic!("expected a held ack, got {other:?}"),
    };
    ack_seq(&member.send_group(&g, "clean", "hello").await);
    let m = owner.next_message().await;
    assert_eq!(m.body, "hello");
    assert_eq!(m.seq.0, 1, "the held message took no seq");

    // A plain member cannot review.
    let (s, _) = api
        .call(
            Method::GET,
            &format!("/v1/review?conv={conv}"),
            Some("max"),
            None,
        )
        .await;
    assert_eq!(s, 403);
    let (s, list) = api
        .call(
            Method::GET,
            &format!("/v1/review?conv={conv}"),
            Some("olga"),
            None,
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(list[0]["id"], review_id.as_str());
    let (s, body) = api
        .call(
            Method::POST,
            "/v1/review/approve",
            Some("olga"),
            Some(json!({"conv": conv.as_str(), "id": review_id})),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["seq"], 2);
    let m = owner.next_message().await;
    assert_eq!((m.seq.0, m.from.as_str()), (2, "max"));
    let ev = member
        .recv_until(|f| {
            matches!(
                f,
                ServerFrame::Event {
                    event: EventKind::ReviewApproved,
                    ..
                }
            )
        })
        .await;
    assert!(matches!(ev, ServerFrame::Event { seq: Some(s), .. } if s.0 == 2));
    // Decided once only.
    let (s, _) = api
        .call(
            Method::POST,
            "/v1/review/approve",
            Some("olga"),
            Some(json!({"conv": conv.as_str(), "id": review_id})),
        )
        .await;
    assert_eq!(s, 404);

    // Rejection tells the sender.
    let ack = member.send_group(&g, "ad2", "加我微信 领红包").await;
    let ServerFrame::Ack { id, seq: None, .. } = ack else {
        panic!("{ack:?}")
    };
    let (s, _) = api
        .call(
            Method::POST,
            "/v1/review/reject",
            Some("olga"),
            Some(json!({"conv": conv.as_str(), "id": id.as_str()})),
        )
        .await;
    assert_eq!(s, 204);
    member
        .recv_until(|f| {
            matches!(
                f,
                ServerFrame::Event {
                    event: EventKind::ReviewRejected,
                    ..
                }
            )
        })
        .await;
    assert_eq!(history(&mut owner, &conv).await.len(), 2);
}

#[tokio::test]
async fn repeat_offenders_are_muted_until_lifted() {
    let node = Node::start_with(admins());
    let api = Api::new(&node);
    api.touch("boss").await;
    let mut a = Client::connect(&node, "ann").await;
    let _b = Client::connect(&node, "bob").await;
    // The default ladder: warn at 1, mute for 10 minutes at 3 violations.
    let mut muted_until = None;
    let mut warned = false;
    for i in 0..3 {
        let rid = format!("v{i}");
        a.send(&ClientFrame::Send(protocol::SendFrame {
            rid: Some(rid.clone()),
            client_msg_id: rid.clone(),
            to: protocol::Target::User(protocol::UserId::new("bob")),
            kind: protocol::MessageKind::Text,
            body: "买冰毒吗".into(),
            attachment: None,
            mentions: vec![],
            reply_to: None,
        }))
        .await;
        loop {
            match a.recv().await {
                ServerFrame::Event {
                    event: EventKind::Muted,
                    until,
                    ..
                } => muted_until = until,
                ServerFrame::Event {
                    event: EventKind::Warned,
                    ..
                } => warned = true,
                f if is_reply_to(&f, &rid) => {
                    assert_eq!(error_code(&f), ErrorCode::Blocked);
                    break;
                }
                _ => {}
            }
        }
    }
    assert!(warned, "the first violation warns");
    assert!(muted_until.is_some(), "the third violation mutes");
    let f = a.send_dm("bob", "after", "a perfectly clean message").await;
    assert_eq!(error_code(&f), ErrorCode::Muted);
    let (s, _) = api
        .call(Method::POST, "/v1/admin/users/ann/lift", Some("ann"), None)
        .await;
    assert_eq!(s, 403, "only company administrators lift penalties");
    let (s, _) = api
        .call(Method::POST, "/v1/admin/users/ann/lift", Some("boss"), None)
        .await;
    assert_eq!(s, 204);
    ack_seq(
        &a.send_dm("bob", "after2", "a perfectly clean message")
            .await,
    );
}

#[tokio::test]
async fn secrets_never_reach_external_groups() {
    let node = Node::start();
    let api = Api::new(&node);
    let mut a = Client::connect(&node, "ann").await;
    let _x = Client::connect(&node, "partner").await;
    let (s, body) = api
        .call(
            Method::POST,
            "/v1/groups",
            Some("ann"),
            Some(json!({"name": "vendor", "kind": "external", "members": ["partner"]})),
        )
        .await;
    assert_eq!(s, 201, "{body}");
    let g = body["id"].as_str().unwrap().to_owned();
    let f = a.send_group(&g, "s1", "这是内部资料，请勿外传").await;
    assert_eq!(error_code(&f), ErrorCode::Blocked);
    let f = a.send_group(&g, "s2", "call 13812345678").await;
    assert_eq!(error_code(&f), ErrorCode::Blocked);
    // Inside the company the same marker only warns.
    let g2 = api.create_group("ann", "internal", &["partner"]).await;
    let ack = a.send_group(&g2, "s3", "这是内部资料，请勿外传").await;
    assert!(
        matches!(ack, ServerFrame::Ack { moderation: Some(ref n), .. } if n.action == "warn"),
        "{ack:?}"
    );
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).unwrap();
        }
    }
}

#[tokio::test]
async fn rules_reload_on_change_and_broken_files_are_rejected() {
    let rules = tempfile::tempdir().unwrap();
    copy_dir(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/moderation"),
        rules.path(),
    );
    let node = Node::start_with(
        admins()
            .env("CHATD_MODERATION__RULES_DIR", rules.path().display())
            .env("CHATD_MODERATION__RELOAD_POLL_MS", 200),
    );
    let api = Api::new(&node);
    api.touch("boss").await;
    let mut a = Client::connect(&node, "ann").await;
    let _b = Client::connect(&node, "bob").await;
    ack_seq(&a.send_dm("bob", "p1", "project bluefin is on track").await);
    // Add a word: it is enforced without a restart and without dropping the connection.
    let deny = rules.path().join("deny/illegal.txt");
    let mut text = std::fs::read_to_string(&deny).unwrap();
    text.push_str("\nbluefin\n");
    std::fs::write(&deny, text).unwrap();
    let mut blocked = false;
    for i in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let f = a
            .send_dm("bob", &format!("p-{i}"), "project bluefin is on track")
            .await;
        if matches!(
            f,
            ServerFrame::Error {
                code: ErrorCode::Blocked,
                ..
            }
        ) {
            blocked = true;
            break;
        }
    }
    assert!(blocked, "the new word was never enforced");
    // A broken policy file is rejected with its name and line; the old rules stay.
    std::fs::write(
        rules.path().join("policy.toml"),
        "[categories]\nporn = \"obliterate\"\n",
    )
    .unwrap();
    let (s, body) = api
        .call(
            Method::POST,
            "/v1/admin/moderation/reload",
            Some("boss"),
            None,
        )
        .await;
    assert_eq!(s, 400, "{body}");
    let msg = body["error"]["message"].as_str().unwrap();
    assert!(msg.contains("policy.toml"), "{msg}");
    assert!(msg.contains(":2") || msg.contains("line 2"), "{msg}");
    let f = a.send_dm("bob", "p-after", "project bluefin again").await;
    assert_eq!(
        error_code(&f),
        ErrorCode::Blocked,
        "old rules still in force"
    );
}
