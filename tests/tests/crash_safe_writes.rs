//! Writes that span several records are crash-safe without undo. A group exists only once
//! its name record names it (the last step), an account only once its record is inserted
//! (naming its own password record), and an interrupted approval is finished by the next one.
//! `CHATD_TEST_FAIL_ONCE` (feature `test-hooks`) makes the step just before each commit point
//! (or delivery) fail once, which leaves the same state as a crash there; the tests check that
//! nothing half-made is visible and that a retry succeeds.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use reqwest::Method;
use serde_json::{json, Value};
use testkit::*;

fn group_names(body: &Value, name: &str) -> usize {
    body.as_array()
        .unwrap()
        .iter()
        .filter(|g| g["name"] == name)
        .count()
}

#[tokio::test]
async fn a_group_creation_that_fails_before_its_name_is_claimed_leaves_nothing_visible() {
    let node = Node::start_with(NodeOpts::default().env("CHATD_TEST_FAIL_ONCE", "group.create"));
    let api = Api::new(&node);
    api.touch("bob").await;
    let body = json!({"name": "Crash Test", "members": ["bob"]});

    // The group and its members are written, then the step before the claim fails.
    let (status, err) = api
        .call(Method::POST, "/v1/groups", Some("ann"), Some(body.clone()))
        .await;
    assert_eq!(status, 503, "{err}");
    assert_eq!(err["error"]["code"], "unavailable", "{err}");
    for user in ["ann", "bob"] {
        let (status, mine) = api.call(Method::GET, "/v1/groups", Some(user), None).await;
        assert_eq!(status, 200, "{mine}");
        assert_eq!(group_names(&mine, "Crash Test"), 0, "{user} sees {mine}");
    }

    // The retry, with the same name (another case), succeeds and is the only such group.
    let retry = json!({"name": "crash test", "members": ["bob"]});
    let (status, created) = api
        .call(Method::POST, "/v1/groups", Some("ann"), Some(retry))
        .await;
    assert_eq!(status, 201, "{created}");
    let gid = created["id"].as_str().unwrap().to_owned();
    for user in ["ann", "bob"] {
        let (_, mine) = api.call(Method::GET, "/v1/groups", Some(user), None).await;
        assert_eq!(group_names(&mine, "crash test"), 1, "{user} sees {mine}");
        assert_eq!(group_names(&mine, "Crash Test"), 0, "{user} sees {mine}");
    }
    let (status, _) = api
        .call(Method::GET, &format!("/v1/groups/{gid}"), Some("bob"), None)
        .await;
    assert_eq!(status, 200);

    // The name is now taken for real.
    let (status, err) = api
        .call(Method::POST, "/v1/groups", Some("cat"), Some(body))
        .await;
    assert_eq!(status, 409, "{err}");

    // And the group works.
    let mut bob = Client::connect(&node, "bob").await;
    let ack = bob.send_group(&gid, "c1", "hello").await;
    assert_eq!(ack_seq(&ack), 1, "{ack:?}");
}

#[tokio::test]
async fn an_account_creation_that_fails_before_its_commit_leaves_no_account_and_no_password() {
    let node = Node::start_with(
        NodeOpts::default()
            .env("CHATD_AUTH__ADMINS", r#"["boss"]"#)
            .env("CHATD_TEST_FAIL_ONCE", "account.create,account.create"),
    );
    let api = Api::new(&node);
    let login = |user: &'static str, password: &'static str| {
        let api = &api;
        async move {
            api.call(
                Method::POST,
                "/v1/login",
                None,
                Some(json!({"user": user, "password": password})),
            )
            .await
            .0
        }
    };

    // Each first creation writes its password record, then fails before the account.
    for id in ["zed", "amy"] {
        let body = json!({"id": id, "name": id, "password": "first-pass-1"});
        let (status, err) = api
            .call(Method::POST, "/v1/users", Some("boss"), Some(body))
            .await;
        assert_eq!(status, 503, "{err}");
        let (status, _) = api
            .call(Method::GET, &format!("/v1/users/{id}"), Some("boss"), None)
            .await;
        assert_eq!(status, 404, "{id}: no account after a failed creation");
        let user = if id == "zed" { "zed" } else { "amy" };
        assert_eq!(login(user, "first-pass-1").await, 401);
    }

    // A retry without a password: the account exists, and the failed creation's password
    // does not open it (it belonged to another creation).
    api.create_account("boss", json!({"id": "zed", "name": "Zed"}))
        .await;
    let (status, zed) = api
        .call(Method::GET, "/v1/users/zed", Some("boss"), None)
        .await;
    assert_eq!(status, 200, "{zed}");
    assert_eq!(zed["name"], "Zed");
    assert!(
        zed.get("credential").is_none(),
        "no binding in answers: {zed}"
    );
    assert_eq!(login("zed", "first-pass-1").await, 401);

    // A retry with another password: that one signs in, the failed creation's does not.
    api.create_account(
        "boss",
        json!({"id": "amy", "name": "Amy", "password": "second-pass-2"}),
    )
    .await;
    assert_eq!(login("amy", "second-pass-2").await, 200);
    assert_eq!(login("amy", "first-pass-1").await, 401);

    // The binding survives an update, and a password change goes to the bound record.
    let (status, _) = api
        .call(
            Method::PATCH,
            "/v1/users/amy",
            Some("boss"),
            Some(json!({"title": "Engineer"})),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(login("amy", "second-pass-2").await, 200);
    let (status, _) = api
        .call(
            Method::PUT,
            "/v1/users/amy/password",
            Some("boss"),
            Some(json!({"password": "third-pass-3"})),
        )
        .await;
    assert_eq!(status, 204);
    assert_eq!(login("amy", "third-pass-3").await, 200);
    assert_eq!(login("amy", "second-pass-2").await, 401);

    // A taken id stays taken.
    let (status, _) = api
        .call(
            Method::POST,
            "/v1/users",
            Some("boss"),
            Some(json!({"id": "amy", "name": "Other", "password": "fourth-pass-4"})),
        )
        .await;
    assert_eq!(status, 409);
    assert_eq!(login("amy", "fourth-pass-4").await, 401);
    assert_eq!(login("amy", "third-pass-3").await, 200);
}

#[tokio::test]
async fn an_approval_interrupted_before_delivery_is_finished_by_the_next_approval() {
    let node = Node::start_with(
        NodeOpts::default()
            .env("CHATD_AUTH__REVIEWERS", r#"["rev"]"#)
            .env("CHATD_TEST_FAIL_ONCE", "post.approve"),
    );
    let api = Api::new(&node);
    api.touch("bob").await;
    let ch = api.create_group("ceo", "News", &["bob"]).await;
    let (status, _) = api
        .call(
            Method::PUT,
            &format!("/v1/groups/{ch}/approval"),
            Some("ceo"),
            Some(json!({"required": true})),
        )
        .await;
    assert_eq!(status, 200);
    let mut ceo = Client::connect(&node, "ceo").await;
    let mut bob = Client::connect(&node, "bob").await;
    let ack = ceo.send_group(&ch, "n1", "Quarterly results are out").await;
    let protocol::ServerFrame::Ack { id: post, .. } = ack else {
        panic!("{ack:?}")
    };
    let approve = format!("/v1/posts/{}/approve", post.as_str());

    // The decision is taken, then the step before delivery fails: nothing is delivered, the
    // post stays pending, and it cannot be rejected any more (it is being approved).
    let (status, err) = api.call(Method::POST, &approve, Some("rev"), None).await;
    assert_eq!(status, 503, "{err}");
    assert!(bob
        .try_recv(std::time::Duration::from_millis(300))
        .await
        .is_none());
    let (_, pending) = api
        .call(Method::GET, "/v1/posts?state=pending", Some("rev"), None)
        .await;
    assert!(pending
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["id"] == post.as_str()));
    let (status, _) = api
        .call(
            Method::POST,
            &format!("/v1/posts/{}/reject", post.as_str()),
            Some("rev"),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 409);

    // Approving again finishes the job: delivered once, approved, decided for good.
    let (status, done) = api.call(Method::POST, &approve, Some("rev"), None).await;
    assert_eq!(status, 200, "{done}");
    assert_eq!(done["state"], "approved");
    let m = bob.next_message().await;
    assert_eq!((m.body.as_str(), m.seq.0), ("Quarterly results are out", 1));
    let (status, _) = api.call(Method::POST, &approve, Some("rev"), None).await;
    assert_eq!(status, 409);
    assert!(
        bob.try_recv(std::time::Duration::from_millis(300))
            .await
            .is_none(),
        "delivered once"
    );
}

#[tokio::test]
async fn racing_creations_of_one_id_never_give_the_winner_the_losers_password() {
    let node = Node::start_with(NodeOpts::default().env("CHATD_AUTH__ADMINS", r#"["boss"]"#));
    let api = Api::new(&node);
    for round in 0..6 {
        let id = format!("race{round}");
        let with = json!({"id": id, "name": "With", "password": "racing-pass-1"});
        let without = json!({"id": id, "name": "Without"});
        let (a, b) = tokio::join!(
            api.call(Method::POST, "/v1/users", Some("boss"), Some(with)),
            api.call(Method::POST, "/v1/users", Some("boss"), Some(without)),
        );
        let mut statuses = [a.0, b.0];
        statuses.sort();
        assert_eq!(
            statuses,
            [201, 409],
            "exactly one creation wins: {a:?} {b:?}"
        );
        let (_, account) = api
            .call(Method::GET, &format!("/v1/users/{id}"), Some("boss"), None)
            .await;
        let (status, _) = api
            .call(
                Method::POST,
                "/v1/login",
                None,
                Some(json!({"user": id, "password": "racing-pass-1"})),
            )
            .await;
        match account["name"].as_str() {
            Some("With") => assert_eq!(status, 200, "the winner's own password works"),
            Some("Without") => assert_eq!(status, 401, "the loser's password never attaches"),
            other => panic!("no winner: {other:?}"),
        }
    }
}

#[tokio::test]
async fn racing_creations_of_one_group_name_give_one_group() {
    let node = Node::start();
    let api = Api::new(&node);
    for round in 0..6 {
        let name = format!("Race {round}");
        let (a, b) = tokio::join!(
            api.call(
                Method::POST,
                "/v1/groups",
                Some("ann"),
                Some(json!({"name": name}))
            ),
            api.call(
                Method::POST,
                "/v1/groups",
                Some("ann"),
                Some(json!({"name": name.to_lowercase()}))
            ),
        );
        let mut statuses = [a.0, b.0];
        statuses.sort();
        assert_eq!(
            statuses,
            [201, 409],
            "exactly one creation wins: {a:?} {b:?}"
        );
        let (_, mine) = api.call(Method::GET, "/v1/groups", Some("ann"), None).await;
        let same = mine
            .as_array()
            .unwrap()
            .iter()
            .filter(|g| g["name"].as_str().unwrap().eq_ignore_ascii_case(&name))
            .count();
        assert_eq!(same, 1, "{mine}");
    }
}
