//! The `/v1` groups API: create, list, read, add and remove members, with authorization.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use protocol::{ErrorCode, EventKind, ServerFrame};
use reqwest::Method;
use serde_json::json;
use testkit::*;

#[tokio::test]
async fn group_lifecycle_through_the_api() {
    let node = Node::start();
    let api = Api::new(&node);
    for u in ["olga", "adam", "mia", "otto"] {
        api.touch(u).await;
    }
    let mut mia = Client::connect(&node, "mia").await;
    let g = api.create_group("olga", "Launch", &["adam"]).await;

    let (s, body) = api
        .call(Method::GET, &format!("/v1/groups/{g}"), Some("adam"), None)
        .await;
    assert_eq!(s, 200);
    assert_eq!(body["name"], "Launch");
    assert_eq!(body["kind"], "project");
    assert_eq!(body["members"].as_array().unwrap().len(), 2);

    // Only the owner appoints admins.
    let (s, _) = api
        .call(
            Method::POST,
            &format!("/v1/groups/{g}/members"),
            Some("olga"),
            Some(json!({"user": "adam", "role": "admin"})),
        )
        .await;
    assert_eq!(s, 200);
    // An admin adds a member; the new member gets an event.
    let (s, body) = api
        .call(
            Method::POST,
            &format!("/v1/groups/{g}/members"),
            Some("adam"),
            Some(json!({"user": "mia"})),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    let ev = mia
        .recv_until(|f| matches!(f, ServerFrame::Event { .. }))
        .await;
    assert!(matches!(
        ev,
        ServerFrame::Event {
            event: EventKind::MemberJoined,
            ..
        }
    ));
    ack_seq(&mia.send_group(&g, "hi", "hello team").await);

    // A plain member can neither add nor remove others.
    let (s, body) = api
        .call(
            Method::POST,
            &format!("/v1/groups/{g}/members"),
            Some("mia"),
            Some(json!({"user": "otto"})),
        )
        .await;
    assert_eq!(
        (s, body["error"]["code"].as_str()),
        (403, Some("forbidden"))
    );
    let (s, _) = api
        .call(
            Method::DELETE,
            &format!("/v1/groups/{g}/members/adam"),
            Some("mia"),
            None,
        )
        .await;
    assert_eq!(s, 403);
    // Outsiders cannot read the group.
    let (s, _) = api
        .call(Method::GET, &format!("/v1/groups/{g}"), Some("otto"), None)
        .await;
    assert_eq!(s, 403);

    // My groups.
    let (s, body) = api.call(Method::GET, "/v1/groups", Some("mia"), None).await;
    assert_eq!(s, 200);
    assert_eq!(body[0]["id"], g.as_str());
    assert_eq!(body[0]["role"], "member");

    // Removing a member stops their sends at once.
    let (s, _) = api
        .call(
            Method::DELETE,
            &format!("/v1/groups/{g}/members/mia"),
            Some("adam"),
            None,
        )
        .await;
    assert_eq!(s, 204);
    let f = mia.send_group(&g, "late", "am I still here?").await;
    assert_eq!(error_code(&f), ErrorCode::Forbidden);
    // The owner cannot be removed.
    let (s, body) = api
        .call(
            Method::DELETE,
            &format!("/v1/groups/{g}/members/olga"),
            Some("adam"),
            None,
        )
        .await;
    assert_eq!((s, body["error"]["code"].as_str()), (409, Some("conflict")));
    // A member may leave.
    let (s, _) = api
        .call(
            Method::DELETE,
            &format!("/v1/groups/{g}/members/adam"),
            Some("adam"),
            None,
        )
        .await;
    assert_eq!(s, 204);
}

#[tokio::test]
async fn api_errors_are_json_with_stable_codes() {
    let node = Node::start();
    let api = Api::new(&node);
    api.touch("olga").await;
    let (s, body) = api.call(Method::GET, "/v1/groups", None, None).await;
    assert_eq!(
        (s, body["error"]["code"].as_str()),
        (401, Some("unauthorized"))
    );
    let (s, body) = api
        .call(Method::GET, "/v1/groups/nope", Some("olga"), None)
        .await;
    assert_eq!(
        (s, body["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
    let (s, body) = api
        .call(
            Method::POST,
            "/v1/groups",
            Some("olga"),
            Some(json!({"name": ""})),
        )
        .await;
    assert_eq!(
        (s, body["error"]["code"].as_str()),
        (400, Some("bad_request"))
    );
    assert!(body["error"]["message"].as_str().unwrap().contains("name"));
    let (s, body) = api
        .call(
            Method::POST,
            "/v1/groups",
            Some("olga"),
            Some(json!({"name": "x", "members": ["ghost"]})),
        )
        .await;
    assert_eq!(
        (s, body["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
    let (s, body) = api
        .call(
            Method::POST,
            "/v1/groups",
            Some("olga"),
            Some(json!({"name": "x", "colour": "red"})),
        )
        .await;
    assert_eq!(
        (s, body["error"]["code"].as_str()),
        (400, Some("bad_request")),
        "{body}"
    );
    // Malformed JSON is a JSON error too.
    let resp = api
        .http
        .post(format!("{}/v1/groups", api.base))
        .bearer_auth(token("olga"))
        .header("content-type", "application/json")
        .body("{oops")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "bad_request");
    let (s, body) = api
        .call(Method::GET, "/v1/nothing-here", Some("olga"), None)
        .await;
    assert_eq!(
        (s, body["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
    let (s, body) = api.call(Method::GET, "/healthz", None, None).await;
    assert_eq!((s, body["status"].as_str()), (200, Some("ok")));
}

#[tokio::test]
async fn an_administrator_signs_a_user_out_of_every_session() {
    let node = Node::start_with(NodeOpts::default().env("CHATD_AUTH__ADMINS", r#"["boss"]"#));
    let api = Api::new(&node);
    api.touch("boss").await;
    let mut phone = Client::connect(&node, "eve").await;
    let mut desktop = Client::connect(&node, "eve").await;
    let (s, _) = api
        .call(
            Method::POST,
            "/v1/admin/users/eve/disconnect",
            Some("eve"),
            None,
        )
        .await;
    assert_eq!(s, 403);
    let (s, _) = api
        .call(
            Method::POST,
            "/v1/admin/users/eve/disconnect",
            Some("boss"),
            None,
        )
        .await;
    assert_eq!(s, 204);
    assert_eq!(phone.expect_close().await, protocol::close::SIGNED_OUT);
    assert_eq!(desktop.expect_close().await, protocol::close::SIGNED_OUT);
}
