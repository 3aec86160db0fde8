//! The conversation policy through a real node: "has an external member" looks at the members'
//! accounts (DMs included, and a project group whose member was marked external), a group's own
//! moderation rules (`/v1/groups/{id}/moderation`) apply in that group only, and an attachment's
//! name is checked with the conversation's rules.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use protocol::{ClientFrame, ErrorCode, GroupId, MessageKind, ServerFrame, Target};
use reqwest::Method;
use serde_json::{json, Value};
use testkit::*;

const PHONE: &str = "call me at 13812345678";

fn admins() -> NodeOpts {
    NodeOpts::default().env("CHATD_AUTH__ADMINS", r#"["boss"]"#)
}

async fn account(api: &Api, id: &str, external: bool) {
    api.create_account("boss", json!({"id": id, "name": id, "external": external}))
        .await;
}

fn note_action(f: &ServerFrame) -> Option<String> {
    match f {
        ServerFrame::Ack { moderation, .. } => moderation.as_ref().map(|n| n.action.clone()),
        other => panic!("expected an ack, got {other:?}"),
    }
}

async fn send_file(
    c: &mut Client,
    to: Target,
    cmid: &str,
    body: &str,
    attachment: &Value,
) -> ServerFrame {
    c.send(&ClientFrame::Send(protocol::SendFrame {
        rid: Some(cmid.into()),
        client_msg_id: cmid.into(),
        to,
        kind: MessageKind::File,
        body: body.into(),
        attachment: Some(serde_json::from_value(attachment.clone()).unwrap()),
        mentions: vec![],
        reply_to: None,
    }))
    .await;
    c.recv_until(|f| is_reply_to(f, cmid)).await
}

#[tokio::test]
async fn a_dm_with_an_external_account_gets_the_outsider_rules() {
    let node = Node::start_with(admins());
    let api = Api::new(&node);
    api.touch("boss").await;
    account(&api, "ann", false).await;
    account(&api, "pat", true).await;
    account(&api, "bob", false).await;
    let mut a = Client::connect(&node, "ann").await;
    let mut b = Client::connect(&node, "bob").await;
    let _p = Client::connect(&node, "pat").await;

    // To an outsider a phone number is blocked...
    let f = a.send_dm("pat", "p1", PHONE).await;
    assert_eq!(error_code(&f), ErrorCode::Blocked, "{f:?}");
    // ...inside the company it is masked, and the innocent DM is delivered at once.
    let started = std::time::Instant::now();
    let f = a.send_dm("bob", "b1", PHONE).await;
    assert_eq!(note_action(&f).as_deref(), Some("mask"));
    let m = b.next_message().await;
    assert_eq!(m.body, "call me at 138****5678");
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
}

#[tokio::test]
async fn a_project_group_with_a_member_marked_external_gets_the_outsider_rules() {
    let node = Node::start_with(admins());
    let api = Api::new(&node);
    api.touch("boss").await;
    account(&api, "ann", false).await;
    account(&api, "bob", false).await;
    let mut a = Client::connect(&node, "ann").await;
    let g = api.create_group("ann", "mixed", &["bob"]).await;
    let f = a.send_group(&g, "m1", PHONE).await;
    assert_eq!(
        note_action(&f).as_deref(),
        Some("mask"),
        "all internal: masked"
    );

    let (s, body) = api
        .call(
            Method::PATCH,
            "/v1/users/bob",
            Some("boss"),
            Some(json!({"external": true})),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    let f = a.send_group(&g, "m2", PHONE).await;
    assert_eq!(error_code(&f), ErrorCode::Blocked, "{f:?}");
    // The announcement follows the same rule.
    let (s, body) = api
        .call(
            Method::PUT,
            &format!("/v1/groups/{g}/announcement"),
            Some("ann"),
            Some(json!({"text": PHONE})),
        )
        .await;
    assert_eq!(s, 403, "{body}");
    assert_eq!(body["error"]["code"], "blocked");
    // Clean messages still go through.
    let f = a.send_group(&g, "m3", "周会改到三点").await;
    assert_eq!(note_action(&f), None);
}

#[tokio::test]
async fn a_group_rule_bans_a_word_in_that_group_only() {
    let node = Node::start_with(admins());
    let api = Api::new(&node);
    api.touch("boss").await;
    let mut a = Client::connect(&node, "ann").await;
    let mut b = Client::connect(&node, "bob").await;
    let g1 = api.create_group("ann", "sales", &["bob"]).await;
    let g2 = api.create_group("ann", "lunch", &["bob"]).await;
    let path = format!("/v1/groups/{g1}/moderation");

    let (s, body) = api.call(Method::GET, &path, Some("ann"), None).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["words"], json!([]), "no rules yet: {body}");
    // A member who is not an admin may neither read nor set the rules.
    let (s, _) = api.call(Method::GET, &path, Some("bob"), None).await;
    assert_eq!(s, 403);
    let rules = json!({"words": [" 竞品A "], "tighten": {"abuse": "block"}});
    let (s, _) = api
        .call(Method::PUT, &path, Some("bob"), Some(rules.clone()))
        .await;
    assert_eq!(s, 403);
    // Bad rules are refused with a clear error.
    let (s, body) = api
        .call(
            Method::PUT,
            &path,
            Some("ann"),
            Some(json!({"tighten": {"no-such-category": "block"}})),
        )
        .await;
    assert_eq!(s, 400, "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("no-such-category"));
    let (s, body) = api
        .call(
            Method::PUT,
            &path,
            Some("ann"),
            Some(json!({"colour": "red"})),
        )
        .await;
    assert_eq!(s, 400, "{body}");

    let (s, body) = api.call(Method::PUT, &path, Some("ann"), Some(rules)).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["words"], json!(["竞品A"]), "words are trimmed");
    let (s, body) = api.call(Method::GET, &path, Some("boss"), None).await;
    assert_eq!(s, 200);
    assert_eq!(body["words"], json!(["竞品A"]));
    // Members are told the rules changed (not what they are).
    let ev = b
        .recv_until(
            |f| matches!(f, ServerFrame::Event { detail: Some(d), .. } if d == "moderation_rules"),
        )
        .await;
    assert!(matches!(ev, ServerFrame::Event { .. }));

    let f = a.send_group(&g1, "w1", "竞品A 的报价更低").await;
    match &f {
        ServerFrame::Error {
            code: ErrorCode::Blocked,
            message,
            ..
        } => assert!(message.contains("group"), "{message}"),
        other => panic!("expected blocked, got {other:?}"),
    }
    let f = a.send_group(&g2, "w2", "竞品A 的报价更低").await;
    assert_eq!(note_action(&f), None, "other groups are not affected");
    let f = a.send_dm("bob", "w3", "竞品A 的报价更低").await;
    assert_eq!(note_action(&f), None, "nor are DMs");

    // The audit log records the change.
    let (s, body) = api
        .call(
            Method::GET,
            &format!("/v1/audit?group={g1}"),
            Some("boss"),
            None,
        )
        .await;
    assert_eq!(s, 200, "{body}");
    assert!(
        body.as_array()
            .unwrap()
            .iter()
            .any(|e| e["actor"] == "ann" && e["action"] == "group.moderation"),
        "{body}"
    );

    // `{}` removes the rules.
    let (s, _) = api
        .call(Method::PUT, &path, Some("ann"), Some(json!({})))
        .await;
    assert_eq!(s, 200);
    let f = a.send_group(&g1, "w4", "竞品A 的报价更低").await;
    assert_eq!(note_action(&f), None);
}

#[tokio::test]
async fn a_file_name_is_checked_with_the_conversations_rules() {
    let node = Node::start_with(admins());
    let api = Api::new(&node);
    api.touch("boss").await;
    account(&api, "ann", false).await;
    account(&api, "bob", false).await;
    account(&api, "pat", true).await;
    let mut a = Client::connect(&node, "ann").await;
    let mut boss = Client::connect(&node, "boss").await;
    let inside = api.create_group("ann", "inside", &["bob"]).await;
    let mixed = api.create_group("ann", "mixed", &["bob"]).await;
    let (s, body) = api
        .call(
            Method::POST,
            &format!("/v1/groups/{mixed}/members"),
            Some("ann"),
            Some(json!({"user": "pat"})),
        )
        .await;
    assert_eq!(
        s, 403,
        "external accounts may not join a project group: {body}"
    );
    // So an account becomes external after it joined.
    let (s, _) = api
        .call(
            Method::PATCH,
            "/v1/users/bob",
            Some("boss"),
            Some(json!({"external": true})),
        )
        .await;
    assert_eq!(s, 200);
    let (s, _) = api
        .call(
            Method::POST,
            &format!("/v1/groups/{inside}/members"),
            Some("ann"),
            Some(json!({"user": "boss"})),
        )
        .await;
    assert_eq!(s, 200);
    let (s, _) = api
        .call(
            Method::DELETE,
            &format!("/v1/groups/{inside}/members/bob"),
            Some("ann"),
            None,
        )
        .await;
    assert_eq!(s, 204);

    // An external uploader's file name gets the outsider rules at once.
    let (s, body) = api
        .upload(
            "pat",
            "contact 13812345678.txt",
            "text/plain",
            b"hi".to_vec(),
        )
        .await;
    assert_eq!(s, 403, "{body}");
    // An internal upload's name is masked as inside the company.
    let (s, mut att) = api
        .upload(
            "ann",
            "contact 13812345678.txt",
            "text/plain",
            b"hi".to_vec(),
        )
        .await;
    assert_eq!(s, 201, "{att}");
    assert_eq!(att["name"], "contact 138****5678.txt");
    // The name in a message (the client's) is checked with the conversation's rules.
    att["name"] = json!("contact 13812345678.txt");
    let f = send_file(&mut a, Target::Group(GroupId::new(&mixed)), "f1", "", &att).await;
    assert_eq!(error_code(&f), ErrorCode::Blocked, "{f:?}");
    let f = send_file(
        &mut a,
        Target::Group(GroupId::new(&inside)),
        "f2",
        "the contract",
        &att,
    )
    .await;
    assert_eq!(note_action(&f).as_deref(), Some("mask"));
    let m = boss.next_message().await;
    assert_eq!(m.body, "the contract", "the caption stays the caption");
    assert_eq!(
        m.attachment.unwrap().name,
        "contact 138****5678.txt",
        "the name is masked"
    );
}
