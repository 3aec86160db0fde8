//! Records several nodes change: group settings updated concurrently on two cluster nodes
//! (shared Redis and CQL database) lose no update, thanks to the compare-and-swap under
//! `groups::update_settings`.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use reqwest::Method;
use serde_json::json;
use std::time::{Duration, Instant};
use testkit::*;

#[tokio::test]
async fn concurrent_settings_updates_on_two_nodes_lose_nothing() {
    let keyspace = unique_keyspace("records");
    let a = Node::start_with(cluster_node(&keyspace, &format!("{keyspace}-a")));
    let b = Node::start_with(cluster_node(&keyspace, &format!("{keyspace}-b")));
    let (api_a, api_b) = (Api::new(&a), Api::new(&b));

    let users: Vec<String> = (0..40).map(|i| format!("m{i}")).collect();
    for u in &users {
        api_a.touch(u).await;
    }
    let refs: Vec<&str> = users.iter().map(String::as_str).collect();
    let gid = api_a.create_group("owner", "records", &refs).await;

    // Every update touches a different field (or a different key of the mutes map), half of
    // them through each node, all at once.
    let mut calls = Vec::new();
    for (i, u) in users.iter().enumerate() {
        let api = if i % 2 == 0 { &api_a } else { &api_b };
        let body = json!({"user": u, "duration_secs": 3600});
        calls.push(call(
            api,
            Method::POST,
            format!("/v1/groups/{gid}/mutes"),
            body,
        ));
    }
    calls.push(call(
        &api_a,
        Method::PUT,
        format!("/v1/groups/{gid}/muted_all"),
        json!({"muted": true}),
    ));
    calls.push(call(
        &api_b,
        Method::PUT,
        format!("/v1/groups/{gid}/approval"),
        json!({"required": true}),
    ));
    for (api, outsider) in [(&api_a, "x1"), (&api_b, "x2")] {
        let body = json!({"user": outsider});
        calls.push(call(
            api,
            Method::POST,
            format!("/v1/groups/{gid}/bans"),
            body,
        ));
    }
    let started = Instant::now();
    for (status, body) in futures_util::future::join_all(calls).await {
        assert_eq!(status / 100, 2, "{body}");
    }
    let took = started.elapsed();
    assert!(took < Duration::from_secs(20), "updates took {took:?}");

    // Both nodes converge on the settings holding every update (caches are dropped by the
    // change notice, so allow a moment).
    for api in [&api_a, &api_b] {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (status, body) = api
                .call(
                    Method::GET,
                    &format!("/v1/groups/{gid}"),
                    Some("owner"),
                    None,
                )
                .await;
            assert_eq!(status, 200, "{body}");
            let s = &body["settings"];
            let mutes = s["mutes"].as_object().map(|m| m.len()).unwrap_or(0);
            let complete = mutes == users.len()
                && s["muted_all"] == json!(true)
                && s["approval_required"] == json!(true)
                && s["banned"] == json!(["x1", "x2"]);
            if complete {
                break;
            }
            assert!(Instant::now() < deadline, "an update was lost: {s}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

async fn call(
    api: &Api,
    method: Method,
    path: String,
    body: serde_json::Value,
) -> (u16, serde_json::Value) {
    api.call(method, &path, Some("owner"), Some(body)).await
}

/// With the test hook that makes the router refuse `event` frames, a recall (stored, then
/// announced with an event) still succeeds, the loss is counted in `/healthz`, and chat goes on.
#[tokio::test]
async fn a_recall_succeeds_when_its_event_is_lost() {
    use protocol::{ClientFrame, ConvId, MessageKind, ServerFrame};
    let node = Node::start_with(NodeOpts::default().env("CHATD_TEST_FAIL_EVENTS", "1"));
    let api = Api::new(&node);
    let mut ann = Client::connect(&node, "ann").await;
    let mut bob = Client::connect(&node, "bob").await;
    let seq = ack_seq(&ann.send_dm("bob", "c1", "oops").await);
    bob.next_message().await;
    let conv = ConvId::direct(&"ann".into(), &"bob".into());

    // The recall over WebSocket answers `recalled`, not an error.
    ann.send(&ClientFrame::Recall {
        rid: Some("r1".into()),
        conv: conv.clone(),
        seq: protocol::Seq(seq),
    })
    .await;
    let reply = ann
        .recv_until(|f| match f {
            ServerFrame::Recalled { rid: Some(r), .. } => r == "r1",
            other => is_reply_to(other, "r1"),
        })
        .await;
    assert!(matches!(reply, ServerFrame::Recalled { .. }), "{reply:?}");

    // It is stored: the history shows the tombstone.
    bob.send(&ClientFrame::History {
        rid: Some("h".into()),
        conv: conv.clone(),
        before_seq: None,
        limit: Some(10),
    })
    .await;
    let ServerFrame::History { messages, .. } = bob
        .recv_until(|f| matches!(f, ServerFrame::History { .. }))
        .await
    else {
        unreachable!()
    };
    let m = messages.iter().find(|m| m.seq.0 == seq).unwrap();
    assert_eq!(m.kind, MessageKind::Recalled);
    assert!(m.body.is_empty());

    // The lost event is counted.
    let (status, health) = api.call(Method::GET, "/healthz", None, None).await;
    assert_eq!(status, 200);
    assert!(
        health["post_commit_failures"]["events"].as_u64().unwrap() >= 1,
        "{health}"
    );

    // An innocent message still flows, promptly.
    let started = Instant::now();
    ann.send_dm("bob", "c2", "hello again").await;
    assert_eq!(bob.next_message().await.body, "hello again");
    assert!(started.elapsed() < Duration::from_secs(5));
}
