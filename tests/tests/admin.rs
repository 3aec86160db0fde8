//! Group administration and the company directory as clients see them: sign-in,
//! deactivation, mutes, recall, mentions, announcements with approval, archive and dissolve,
//! department groups, sessions, and the audit trail.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use protocol::{
    ClientFrame, ConvId, ErrorCode, EventKind, GroupId, MessageKind, Seq, ServerFrame, Target,
    UserId,
};
use reqwest::Method;
use serde_json::json;
use std::time::{Duration, Instant};
use testkit::*;

/// A node with `boss` as company administrator and `rev` as reviewer.
fn node_with(extra: &[(&str, &str)]) -> Node {
    Node::start_with(
        admin_opts()
            .env("CHATD_AUTH__REVIEWERS", r#"["rev"]"#)
            .envs(extra),
    )
}

async fn accounts(api: &Api, ids: &[&str]) {
    for id in ids {
        api.create_account("boss", json!({"id": id, "name": id.to_uppercase()}))
            .await;
    }
}

#[tokio::test]
async fn directory_sign_in_and_deactivation() {
    let node = node_with(&[]);
    let api = Api::new(&node);
    let (s, _) = call(
        &api,
        Method::POST,
        "/v1/departments",
        "boss",
        Some(json!({"id": "eng", "name": "Engineering"})),
    )
    .await;
    assert_eq!(s, 201);
    let (s, b) = call(
        &api,
        Method::POST,
        "/v1/departments",
        "boss",
        Some(json!({"id": "eng", "name": "Again"})),
    )
    .await;
    assert_eq!((s, code(&b)), (409, "conflict"));
    let (s, b) = call(
        &api,
        Method::POST,
        "/v1/departments",
        "boss",
        Some(json!({"id": "web", "name": "Web", "parent": "nope"})),
    )
    .await;
    assert_eq!((s, code(&b)), (404, "not_found"));
    let (s, _) = call(
        &api,
        Method::POST,
        "/v1/departments",
        "boss",
        Some(json!({"id": "web", "name": "Web", "parent": "eng"})),
    )
    .await;
    assert_eq!(s, 201);
    // A cycle is refused.
    let (s, b) = call(
        &api,
        Method::PATCH,
        "/v1/departments/eng",
        "boss",
        Some(json!({"parent": "web"})),
    )
    .await;
    assert_eq!(s, 400, "{b}");

    // Weak passwords are refused with the policy named; nothing is created.
    let (s, b) = call(
        &api,
        Method::POST,
        "/v1/users",
        "boss",
        Some(json!({"id": "lin", "name": "Lin", "password": "short1"})),
    )
    .await;
    assert_eq!((s, code(&b)), (400, "bad_request"));
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap()
            .contains("at least 8 characters"),
        "{b}"
    );
    let (s, _) = call(&api, Method::GET, "/v1/users/lin", "boss", None).await;
    assert_eq!(s, 404, "a failed creation leaves nothing behind");
    let (s, b) = call(
        &api,
        Method::POST,
        "/v1/users",
        "boss",
        Some(json!({"id": "bad id!", "name": "X"})),
    )
    .await;
    assert_eq!(s, 400);
    assert!(
        b["error"]["message"].as_str().unwrap().starts_with("id:"),
        "{b}"
    );
    let (s, b) = call(&api, Method::POST, "/v1/users", "boss", Some(json!({"id": "lin", "name": "Lin", "department": "web", "title": "Dev", "password": "letmein42"}))).await;
    assert_eq!(s, 201, "{b}");
    assert_eq!(b["status"], "active");
    let (s, b) = call(
        &api,
        Method::POST,
        "/v1/users",
        "boss",
        Some(json!({"id": "lin", "name": "Lin 2"})),
    )
    .await;
    assert_eq!((s, code(&b)), (409, "conflict"));
    accounts(&api, &["zhang"]).await;

    // Search by name and by department.
    let (s, b) = call(&api, Method::GET, "/v1/users?q=LI", "zhang", None).await;
    assert_eq!(s, 200);
    assert_eq!(b.as_array().unwrap().len(), 1, "{b}");
    let (_, b) = call(&api, Method::GET, "/v1/users?department=web", "zhang", None).await;
    assert_eq!(b[0]["id"], "lin");

    // Built-in sign-in.
    let (s, b) = api
        .call(
            Method::POST,
            "/v1/login",
            None,
            Some(json!({"user": "lin", "password": "wrong pass 1"})),
        )
        .await;
    assert_eq!((s, code(&b)), (401, "unauthorized"));
    let (s, b) = api
        .call(
            Method::POST,
            "/v1/login",
            None,
            Some(json!({"user": "lin", "password": "letmein42"})),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    let lin_token = b["token"].as_str().unwrap().to_owned();
    let (s, me) = api
        .call_token(Method::GET, "/v1/me", Some(&lin_token), None)
        .await;
    assert_eq!(s, 200);
    assert_eq!(me["account"]["department"], "web");

    // Two devices; one signs the other out.
    let mut phone = Client::connect_token(&node, "lin", &lin_token).await;
    let mut laptop = Client::connect_device(&node, "lin", "laptop").await;
    let (_, sessions) = api
        .call_token(Method::GET, "/v1/me/sessions", Some(&lin_token), None)
        .await;
    let sessions = sessions.as_array().unwrap().clone();
    assert_eq!(sessions.len(), 2, "{sessions:?}");
    // Oldest first: the phone, which gave no device name, then the named laptop.
    assert_eq!(sessions[0]["id"], phone.session_id.as_str());
    assert_eq!(sessions[1]["id"], laptop.session_id.as_str());
    assert_eq!(sessions[1]["device"], "laptop");
    assert_eq!(sessions[1]["codec"], "json");
    assert!(sessions[1]["connected_at"].as_u64().unwrap() > 0);
    let (s, _) = api
        .call_token(
            Method::DELETE,
            &format!("/v1/me/sessions/{}", laptop.session_id),
            Some(&lin_token),
            None,
        )
        .await;
    assert_eq!(s, 204);
    assert_eq!(laptop.expect_close().await, protocol::close::SIGNED_OUT);

    // Deactivation closes every session within a second and revokes every token.
    let started = Instant::now();
    let (s, b) = call(&api, Method::POST, "/v1/users/lin/deactivate", "boss", None).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(phone.expect_close().await, protocol::close::SIGNED_OUT);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "took {:?}",
        started.elapsed()
    );
    let (s, b) = api
        .call_token(Method::GET, "/v1/groups", Some(&lin_token), None)
        .await;
    assert_eq!((s, code(&b)), (401, "unauthorized"));
    let url = format!("ws://{}/ws", node.addr);
    let refusal = Client::try_connect_raw(&url, Some(&token("lin")))
        .await
        .unwrap_err();
    assert_eq!(refusal.status, 401);
    let (s, _) = api
        .call(
            Method::POST,
            "/v1/login",
            None,
            Some(json!({"user": "lin", "password": "letmein42"})),
        )
        .await;
    assert_eq!(s, 401, "a deactivated account cannot sign in");
    // Re-activated, the old token stays revoked; a new sign-in works.
    let (s, _) = call(&api, Method::POST, "/v1/users/lin/activate", "boss", None).await;
    assert_eq!(s, 200);
    let (s, _) = api
        .call_token(Method::GET, "/v1/groups", Some(&lin_token), None)
        .await;
    assert_eq!(s, 401);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (s, b) = api
        .call(
            Method::POST,
            "/v1/login",
            None,
            Some(json!({"user": "lin", "password": "letmein42"})),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    let (s, _) = api
        .call_token(
            Method::GET,
            "/v1/groups",
            Some(b["token"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(s, 200);

    // Every admin action is in the audit log.
    let (_, log) = call(&api, Method::GET, "/v1/audit?user=lin", "boss", None).await;
    let actions: Vec<&str> = log
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for a in ["user.create", "user.deactivate", "user.activate"] {
        assert!(actions.contains(&a), "{a} missing from {actions:?}");
    }
}

#[tokio::test]
async fn group_types_follow_the_directory() {
    let node = node_with(&[]);
    let api = Api::new(&node);
    call(
        &api,
        Method::POST,
        "/v1/departments",
        "boss",
        Some(json!({"id": "ops", "name": "Ops"})),
    )
    .await;
    call(
        &api,
        Method::POST,
        "/v1/departments",
        "boss",
        Some(json!({"id": "hr", "name": "HR"})),
    )
    .await;
    api.create_account(
        "boss",
        json!({"id": "ann", "name": "Ann", "department": "ops"}),
    )
    .await;
    api.create_account(
        "boss",
        json!({"id": "ext", "name": "Partner", "external": true}),
    )
    .await;

    let (s, b) = call(
        &api,
        Method::POST,
        "/v1/groups",
        "ann",
        Some(json!({"name": "All hands", "kind": "company"})),
    )
    .await;
    assert_eq!(
        (s, code(&b)),
        (403, "forbidden"),
        "only company administrators create company groups"
    );
    let (s, company) = call(
        &api,
        Method::POST,
        "/v1/groups",
        "boss",
        Some(json!({"name": "All hands", "kind": "company"})),
    )
    .await;
    assert_eq!(s, 201, "{company}");
    assert_eq!(company["settings"]["muted_all"], true);
    let members: Vec<&str> = company["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["user"].as_str().unwrap())
        .collect();
    assert!(
        members.contains(&"ann") && !members.contains(&"ext"),
        "{members:?}"
    );
    let (s, dept) = call(
        &api,
        Method::POST,
        "/v1/groups",
        "boss",
        Some(json!({"name": "Ops team", "kind": "department", "department": "ops"})),
    )
    .await;
    assert_eq!(s, 201, "{dept}");
    let dept_id = dept["id"].as_str().unwrap().to_owned();
    let company_id = company["id"].as_str().unwrap().to_owned();
    let (s, b) = call(
        &api,
        Method::POST,
        "/v1/groups",
        "boss",
        Some(json!({"name": "ops team", "kind": "project"})),
    )
    .await;
    assert_eq!(
        (s, code(&b)),
        (409, "conflict"),
        "group names are unique regardless of case"
    );

    // A new employee of ops joins the company group and the ops group.
    let mut ann = Client::connect(&node, "ann").await;
    api.create_account(
        "boss",
        json!({"id": "bo", "name": "Bo", "department": "ops"}),
    )
    .await;
    let ev = ann.recv_until(|f| matches!(f, ServerFrame::Event { event: EventKind::MemberJoined, user: Some(u), conv: Some(c), .. } if u.as_str() == "bo" && c.as_str() == format!("group:{dept_id}"))).await;
    assert!(matches!(ev, ServerFrame::Event { .. }));
    let (_, g) = call(
        &api,
        Method::GET,
        &format!("/v1/groups/{company_id}"),
        "bo",
        None,
    )
    .await;
    assert!(g["members"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["user"] == "bo"));
    // Moving to HR takes Bo out of the ops group.
    let (s, _) = call(
        &api,
        Method::PATCH,
        "/v1/users/bo",
        "boss",
        Some(json!({"department": "hr"})),
    )
    .await;
    assert_eq!(s, 200);
    let (s, _) = call(
        &api,
        Method::GET,
        &format!("/v1/groups/{dept_id}"),
        "bo",
        None,
    )
    .await;
    assert_eq!(s, 403, "no longer a member");

    // Company groups are for announcements: members do not post, the owner does.
    let r = ann.send_group(&company_id, "c1", "hello all").await;
    assert_eq!(error_code(&r), ErrorCode::Muted);
    // External users only join external groups.
    let (s, b) = call(
        &api,
        Method::POST,
        "/v1/groups",
        "ann",
        Some(json!({"name": "Proj", "members": ["ext"]})),
    )
    .await;
    assert_eq!((s, code(&b)), (403, "forbidden"), "{b}");
    let (s, b) = call(
        &api,
        Method::POST,
        "/v1/groups",
        "ann",
        Some(json!({"name": "Partners", "kind": "external", "members": ["ext"]})),
    )
    .await;
    assert_eq!(s, 201, "{b}");
    let (s, _) = call(&api, Method::GET, "/v1/users", "ext", None).await;
    assert_eq!(s, 403, "external users do not browse the directory");
}

#[tokio::test]
async fn admins_moderate_their_group() {
    let node = node_with(&[("CHATD_GROUPS__RECALL_WINDOW_SECS", "2")]);
    let api = Api::new(&node);
    accounts(&api, &["olga", "adam", "mia", "otto"]).await;
    let g = api
        .create_group("olga", "Launch", &["adam", "mia", "otto"])
        .await;
    let path = |p: &str| format!("/v1/groups/{g}{p}");
    let (s, _) = call(
        &api,
        Method::PUT,
        &path("/members/adam/role"),
        "mia",
        Some(json!({"role": "admin"})),
    )
    .await;
    assert_eq!(s, 403);
    let (s, _) = call(
        &api,
        Method::PUT,
        &path("/members/adam/role"),
        "olga",
        Some(json!({"role": "admin"})),
    )
    .await;
    assert_eq!(s, 200);
    let mut mia = Client::connect(&node, "mia").await;
    let mut otto = Client::connect(&node, "otto").await;
    let mut adam = Client::connect(&node, "adam").await;

    // Mute one member for a while: the send path refuses them, the others see the event.
    let (s, b) = call(
        &api,
        Method::POST,
        &path("/mutes"),
        "adam",
        Some(json!({"user": "mia", "duration_secs": 0})),
    )
    .await;
    assert_eq!(s, 400, "{b}");
    assert!(b["error"]["message"]
        .as_str()
        .unwrap()
        .starts_with("duration_secs"));
    let (s, _) = call(
        &api,
        Method::POST,
        &path("/mutes"),
        "adam",
        Some(json!({"user": "mia", "duration_secs": 60})),
    )
    .await;
    assert_eq!(s, 200);
    otto.recv_until(|f| matches!(f, ServerFrame::Event { event: EventKind::Muted, user: Some(u), until: Some(_), .. } if u.as_str() == "mia")).await;
    assert_eq!(
        error_code(&mia.send_group(&g, "m1", "can I talk?").await),
        ErrorCode::Muted
    );
    ack_seq(&otto.send_group(&g, "o1", "I can").await);
    let (s, _) = call(&api, Method::DELETE, &path("/mutes/mia"), "adam", None).await;
    assert_eq!(s, 204);
    ack_seq(&mia.send_group(&g, "m2", "back").await);

    // Mute the whole group: members wait, admins still post.
    call(
        &api,
        Method::PUT,
        &path("/muted_all"),
        "olga",
        Some(json!({"muted": true})),
    )
    .await;
    assert_eq!(
        error_code(&otto.send_group(&g, "o2", "hm").await),
        ErrorCode::Muted
    );
    ack_seq(&adam.send_group(&g, "a1", "admins still post").await);
    call(
        &api,
        Method::PUT,
        &path("/muted_all"),
        "olga",
        Some(json!({"muted": false})),
    )
    .await;

    // Recall: a sender within the window, admins any time, nobody else.
    let seq = ack_seq(&otto.send_group(&g, "o3", "oops, a secret").await);
    mia.send(&ClientFrame::Recall {
        rid: Some("r1".into()),
        conv: ConvId::group(&GroupId::new(&g)),
        seq: Seq(seq),
    })
    .await;
    let r = mia
        .recv_until(|f| matches!(f, ServerFrame::Error { rid: Some(r), .. } if r == "r1"))
        .await;
    assert_eq!(error_code(&r), ErrorCode::Forbidden);
    otto.send(&ClientFrame::Recall {
        rid: Some("r2".into()),
        conv: ConvId::group(&GroupId::new(&g)),
        seq: Seq(seq),
    })
    .await;
    otto.recv_until(|f| matches!(f, ServerFrame::Recalled { rid: Some(r), .. } if r == "r2"))
        .await;
    let ev = mia
        .recv_until(|f| {
            matches!(
                f,
                ServerFrame::Event {
                    event: EventKind::Recalled,
                    ..
                }
            )
        })
        .await;
    assert!(matches!(ev, ServerFrame::Event { seq: Some(s), .. } if s.0 == seq));
    mia.send(&ClientFrame::History {
        rid: Some("h".into()),
        conv: ConvId::group(&GroupId::new(&g)),
        before_seq: None,
        limit: Some(10),
    })
    .await;
    let h = mia
        .recv_until(|f| matches!(f, ServerFrame::History { .. }))
        .await;
    let ServerFrame::History { messages, .. } = h else {
        unreachable!()
    };
    let recalled = messages.iter().find(|m| m.seq.0 == seq).unwrap();
    assert_eq!(recalled.kind, MessageKind::Recalled);
    assert!(recalled.body.is_empty(), "the content is gone for everyone");
    assert!(!messages.iter().any(|m| m.body.contains("secret")));
    // After the window only admins recall.
    let late = ack_seq(&mia.send_group(&g, "m3", "late").await);
    tokio::time::sleep(Duration::from_millis(2200)).await;
    mia.send(&ClientFrame::Recall {
        rid: Some("r3".into()),
        conv: ConvId::group(&GroupId::new(&g)),
        seq: Seq(late),
    })
    .await;
    let r = mia
        .recv_until(|f| matches!(f, ServerFrame::Error { rid: Some(r), .. } if r == "r3"))
        .await;
    assert_eq!(error_code(&r), ErrorCode::Forbidden);
    adam.send(&ClientFrame::Recall {
        rid: Some("r4".into()),
        conv: ConvId::group(&GroupId::new(&g)),
        seq: Seq(late),
    })
    .await;
    adam.recv_until(|f| matches!(f, ServerFrame::Recalled { rid: Some(r), .. } if r == "r4"))
        .await;

    // Kick, ban, and only admins bring a banned user back.
    let (s, _) = call(
        &api,
        Method::POST,
        &path("/bans"),
        "adam",
        Some(json!({"user": "otto"})),
    )
    .await;
    assert_eq!(s, 204);
    otto.recv_until(|f| matches!(f, ServerFrame::Event { event: EventKind::MemberLeft, detail: Some(d), .. } if d == "banned")).await;
    assert_eq!(
        error_code(&otto.send_group(&g, "o4", "still here?").await),
        ErrorCode::Forbidden
    );
    let (s, _) = call(
        &api,
        Method::POST,
        &path("/members"),
        "mia",
        Some(json!({"user": "otto"})),
    )
    .await;
    assert_eq!(s, 403, "ordinary members cannot re-add a banned user");
    let (_, detail) = call(&api, Method::GET, &path(""), "olga", None).await;
    assert_eq!(detail["settings"]["banned"], json!(["otto"]));

    // Pins and the announcement reach the members.
    let (s, _) = call(
        &api,
        Method::PUT,
        &path(&format!("/pins/{late}")),
        "adam",
        None,
    )
    .await;
    assert_eq!(s, 200);
    mia.recv_until(|f| matches!(f, ServerFrame::Event { event: EventKind::Pinned, seq: Some(s), .. } if s.0 == late)).await;
    let (s, b) = call(&api, Method::PUT, &path("/pins/9999"), "adam", None).await;
    assert_eq!((s, code(&b)), (404, "not_found"));
    let (s, b) = call(
        &api,
        Method::PUT,
        &path("/announcement"),
        "adam",
        Some(json!({"text": "Launch on Friday"})),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["status"], "published");
    mia.recv_until(|f| matches!(f, ServerFrame::Event { event: EventKind::Announcement, detail: Some(d), .. } if d == "Launch on Friday")).await;

    // Transfer ownership, then archive (read-only) and dissolve.
    let (s, _) = call(
        &api,
        Method::POST,
        &path("/transfer"),
        "olga",
        Some(json!({"user": "adam"})),
    )
    .await;
    assert_eq!(s, 204);
    let (s, _) = call(&api, Method::POST, &path("/archive"), "olga", None).await;
    assert_eq!(s, 403, "olga is an admin now, not the owner");
    let (s, b) = call(&api, Method::POST, &path("/dissolve"), "adam", None).await;
    assert_eq!((s, code(&b)), (409, "conflict"), "archive first");
    let (s, _) = call(&api, Method::POST, &path("/archive"), "adam", None).await;
    assert_eq!(s, 200);
    assert_eq!(
        error_code(&mia.send_group(&g, "m4", "anyone?").await),
        ErrorCode::Forbidden
    );
    mia.send(&ClientFrame::History {
        rid: Some("h2".into()),
        conv: ConvId::group(&GroupId::new(&g)),
        before_seq: None,
        limit: Some(5),
    })
    .await;
    mia.recv_until(|f| matches!(f, ServerFrame::History { rid: Some(r), .. } if r == "h2"))
        .await;
    let (s, _) = call(&api, Method::POST, &path("/dissolve"), "adam", None).await;
    assert_eq!(s, 204);
    mia.recv_until(|f| {
        matches!(
            f,
            ServerFrame::Event {
                event: EventKind::Dissolved,
                ..
            }
        )
    })
    .await;
    let (s, _) = call(&api, Method::GET, &path(""), "adam", None).await;
    assert_eq!(s, 404);
    let (_, convs) = call(&api, Method::GET, "/v1/conversations", "mia", None).await;
    assert!(!convs
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["conv"] == format!("group:{g}")));

    let (_, log) = call(
        &api,
        Method::GET,
        &format!("/v1/audit?group={g}"),
        "boss",
        None,
    )
    .await;
    let actions: Vec<&str> = log
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for a in [
        "group.create",
        "group.set_role",
        "group.mute",
        "group.unmute",
        "group.mute_all",
        "message.recall",
        "group.ban",
        "group.pin",
        "group.announcement",
        "group.transfer",
        "group.archive",
        "group.dissolve",
    ] {
        assert!(actions.contains(&a), "{a} missing from {actions:?}");
    }
}

#[tokio::test]
async fn mentions_are_checked_flagged_and_listed() {
    let node = node_with(&[]);
    let api = Api::new(&node);
    accounts(&api, &["olga", "adam", "mia", "zed"]).await;
    let g = api.create_group("olga", "Mentions", &["adam", "mia"]).await;
    let mut adam = Client::connect(&node, "adam").await;
    let mut mia = Client::connect(&node, "mia").await;
    let send = |cmid: &str, mentions: &[&str]| {
        ClientFrame::Send(protocol::SendFrame {
            rid: Some(cmid.to_owned()),
            client_msg_id: cmid.to_owned(),
            to: Target::Group(GroupId::new(&g)),
            kind: MessageKind::Text,
            body: "look".into(),
            attachment: None,
            mentions: mentions.iter().map(|m| UserId::new(*m)).collect(),
            reply_to: None,
        })
    };
    adam.send(&send("x1", &["zed"])).await;
    let r = adam.recv_until(|f| is_reply_to(f, "x1")).await;
    assert_eq!(error_code(&r), ErrorCode::BadRequest, "zed is not a member");
    adam.send(&send("x2", &["all"])).await;
    let r = adam.recv_until(|f| is_reply_to(f, "x2")).await;
    assert_eq!(error_code(&r), ErrorCode::Forbidden, "@all is for admins");

    adam.send(&send("x3", &["mia"])).await;
    let seq = ack_seq(&adam.recv_until(|f| is_reply_to(f, "x3")).await);
    let m = mia.next_message().await;
    assert!(m.mentioned, "mia is mentioned");
    let mut olga = Client::connect(&node, "olga").await;
    // Olga was offline; in her list nothing mentions her, in Mia's the flag is up.
    let (_, list) = call(&api, Method::GET, "/v1/conversations", "mia", None).await;
    let row = list
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["conv"] == format!("group:{g}"))
        .unwrap()
        .clone();
    assert_eq!(row["mentioned"], true, "{row}");
    assert_eq!(row["unread"], 1);
    assert_eq!(row["last_message"]["seq"], seq);
    let (_, list) = call(&api, Method::GET, "/v1/conversations", "olga", None).await;
    let row = list
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["conv"] == format!("group:{g}"))
        .unwrap()
        .clone();
    assert!(
        row.get("mentioned").is_none() || row["mentioned"] == false,
        "{row}"
    );
    // Reading clears it.
    mia.send(&ClientFrame::Read {
        rid: None,
        conv: ConvId::group(&GroupId::new(&g)),
        seq: Seq(seq),
    })
    .await;
    mia.send(&ClientFrame::Conversations {
        rid: Some("c".into()),
    })
    .await;
    let f = mia
        .recv_until(|f| matches!(f, ServerFrame::Conversations { .. }))
        .await;
    let ServerFrame::Conversations { conversations, .. } = f else {
        unreachable!()
    };
    let c = conversations
        .iter()
        .find(|c| c.conv.as_str() == format!("group:{g}"))
        .unwrap();
    assert!(!c.mentioned && c.unread == 0, "{c:?}");

    // The owner mentions everyone.
    olga.send(&send("x4", &["all"])).await;
    ack_seq(&olga.recv_until(|f| is_reply_to(f, "x4")).await);
    assert!(mia.next_message().await.mentioned);
    assert!(adam.next_message().await.mentioned);
}

#[tokio::test]
async fn announcements_go_out_only_after_approval() {
    let node = node_with(&[]);
    let api = Api::new(&node);
    accounts(&api, &["ceo", "rev", "amy", "bob"]).await;
    let (s, company) = call(
        &api,
        Method::POST,
        "/v1/groups",
        "boss",
        Some(json!({"name": "Company", "kind": "company"})),
    )
    .await;
    assert_eq!(s, 201);
    let cg = company["id"].as_str().unwrap().to_owned();
    // The company administrator makes the CEO an admin of the company group.
    let (s, _) = call(
        &api,
        Method::PUT,
        &format!("/v1/groups/{cg}/members/ceo/role"),
        "boss",
        Some(json!({"role": "admin"})),
    )
    .await;
    assert_eq!(s, 200);
    let mut amy = Client::connect(&node, "amy").await;
    let (s, b) = call(
        &api,
        Method::PUT,
        &format!("/v1/groups/{cg}/announcement"),
        "ceo",
        Some(json!({"text": "Holiday on Monday"})),
    )
    .await;
    assert_eq!(s, 202, "{b}");
    assert_eq!(b["status"], "pending");
    let post = b["post"]["id"].as_str().unwrap().to_owned();
    assert!(
        amy.try_recv(Duration::from_millis(300)).await.is_none(),
        "nothing before approval"
    );
    let (_, pending) = call(&api, Method::GET, "/v1/posts?state=pending", "rev", None).await;
    assert!(pending.as_array().unwrap().iter().any(|p| p["id"] == post));
    let (s, _) = call(
        &api,
        Method::POST,
        &format!("/v1/posts/{post}/approve"),
        "amy",
        None,
    )
    .await;
    assert_eq!(s, 403, "only reviewers approve");
    let mut ceo = Client::connect(&node, "ceo").await;
    let (s, b) = call(
        &api,
        Method::POST,
        &format!("/v1/posts/{post}/approve"),
        "rev",
        None,
    )
    .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(
        (b["state"].as_str(), b["reviewer"].as_str()),
        (Some("approved"), Some("rev"))
    );
    amy.recv_until(|f| matches!(f, ServerFrame::Event { event: EventKind::Announcement, detail: Some(d), .. } if d == "Holiday on Monday")).await;
    ceo.recv_until(|f| {
        matches!(
            f,
            ServerFrame::Event {
                event: EventKind::AnnouncementReviewed,
                ..
            }
        )
    })
    .await;
    let (s, b) = call(
        &api,
        Method::POST,
        &format!("/v1/posts/{post}/reject"),
        "rev",
        Some(json!({})),
    )
    .await;
    assert_eq!((s, code(&b)), (409, "conflict"), "decided once");

    // An announcement channel: every post waits for a reviewer.
    let ch = api.create_group("ceo", "News", &["amy", "bob"]).await;
    call(
        &api,
        Method::PUT,
        &format!("/v1/groups/{ch}/approval"),
        "ceo",
        Some(json!({"required": true})),
    )
    .await;
    let mut bob = Client::connect(&node, "bob").await;
    let ack = ceo.send_group(&ch, "n1", "Quarterly results are out").await;
    let ServerFrame::Ack {
        seq: None,
        id,
        moderation: Some(note),
        ..
    } = ack
    else {
        panic!("{ack:?}")
    };
    assert_eq!(note.action, "approval");
    let ack2 = ceo.send_group(&ch, "n2", "A second post").await;
    let ServerFrame::Ack { id: id2, .. } = ack2 else {
        panic!()
    };
    assert!(bob.try_recv(Duration::from_millis(300)).await.is_none());
    let (s, _) = call(
        &api,
        Method::POST,
        &format!("/v1/posts/{}/approve", id.as_str()),
        "rev",
        None,
    )
    .await;
    assert_eq!(s, 200);
    let m = bob.next_message().await;
    assert_eq!(
        (m.body.as_str(), m.from.as_str(), m.seq.0),
        ("Quarterly results are out", "ceo", 1)
    );
    let (s, _) = call(
        &api,
        Method::POST,
        &format!("/v1/posts/{}/reject", id2.as_str()),
        "rev",
        Some(json!({"reason": "duplicate"})),
    )
    .await;
    assert_eq!(s, 200);
    ceo.recv_until(|f| matches!(f, ServerFrame::Event { event: EventKind::AnnouncementReviewed, detail: Some(d), .. } if d.starts_with("rejected"))).await;
    assert!(
        bob.try_recv(Duration::from_millis(300)).await.is_none(),
        "rejected posts are never delivered"
    );

    let (_, log) = call(&api, Method::GET, "/v1/audit?user=rev", "boss", None).await;
    let actions: Vec<&str> = log
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert!(
        actions.contains(&"post.approve") && actions.contains(&"post.reject"),
        "{actions:?}"
    );
}

/// A token signed by the company's identity provider (Ed25519 test key in
/// crates/gateway/testdata).
fn idp_token(key: &str, sub: &str, iss: &str) -> String {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../crates/gateway/testdata");
    let pem = std::fs::read(format!("{dir}/{key}")).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA),
        &json!({"sub": sub, "iat": now, "exp": now + 600, "iss": iss}),
        &jsonwebtoken::EncodingKey::from_ed_pem(&pem).unwrap(),
    )
    .unwrap()
}

#[tokio::test]
async fn identity_provider_tokens_work_until_the_account_is_deactivated() {
    let public = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../crates/gateway/testdata/idp-ed25519.pub"
    );
    let node = node_with(&[
        ("CHATD_AUTH__JWT_PUBLIC_KEY_FILE", public),
        ("CHATD_AUTH__JWT_ISSUER", "https://idp.example"),
    ]);
    let api = Api::new(&node);
    api.touch("boss").await;
    api.create_account("boss", json!({"id": "ida", "name": "Ida"}))
        .await;
    let token = idp_token("idp-ed25519.key", "ida", "https://idp.example");
    let (s, me) = api
        .call_token(Method::GET, "/v1/me", Some(&token), None)
        .await;
    assert_eq!(s, 200, "{me}");
    assert_eq!(me["user"], "ida");
    let mut ws = Client::connect_token(&node, "ida", &token).await;

    // A stranger's key or another issuer: 401, before and after the upgrade.
    for bad in [
        idp_token("other-ed25519.key", "ida", "https://idp.example"),
        idp_token("idp-ed25519.key", "ida", "https://evil.example"),
    ] {
        let (s, b) = api
            .call_token(Method::GET, "/v1/me", Some(&bad), None)
            .await;
        assert_eq!((s, code(&b)), (401, "unauthorized"), "{b}");
        let url = format!("ws://{}/ws", node.addr);
        let refusal = Client::try_connect_raw(&url, Some(&bad)).await.unwrap_err();
        assert_eq!(refusal.status, 401);
    }

    // Deactivation closes the session and refuses the provider's token from then on.
    let (s, b) = call(&api, Method::POST, "/v1/users/ida/deactivate", "boss", None).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(ws.expect_close().await, protocol::close::SIGNED_OUT);
    let (s, _) = api
        .call_token(Method::GET, "/v1/me", Some(&token), None)
        .await;
    assert_eq!(s, 401);
}
