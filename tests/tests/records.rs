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
