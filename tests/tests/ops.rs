//! Operations: Prometheus metrics, probes (`/livez`, `/readyz`) and the SIGTERM drain.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use protocol::close;
use reqwest::Method;
use serde_json::json;
use std::process::Command;
use std::time::{Duration, Instant};
use testkit::*;

async fn scrape(url: &str) -> String {
    let resp = reqwest::get(url).await.unwrap();
    assert_eq!(resp.status(), 200);
    let ct = resp.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(ct.starts_with("text/plain"), "{ct}");
    resp.text().await.unwrap()
}

#[tokio::test]
async fn metrics_count_sessions_frames_sends_and_logins() {
    let node = Node::start();
    let addr = node.metrics_addr();
    let url = format!("http://{addr}/metrics");
    let before = scrape(&url).await;
    assert!(before.contains("# TYPE chatd_sessions gauge"), "{before}");

    let mut a = Client::connect(&node, "ann").await;
    let mut b = Client::connect(&node, "bob").await;
    for i in 0..5 {
        ack_seq(&a.send_dm("bob", &format!("m{i}"), "hello").await);
        b.next_message().await;
    }
    // A retry of m0: a duplicate.
    let dup = a.send_dm("bob", "m0", "hello").await;
    assert!(
        matches!(
            dup,
            protocol::ServerFrame::Ack {
                duplicate: true,
                ..
            }
        ),
        "{dup:?}"
    );
    let api = Api::new(&node);
    let (s, _) = api
        .call(
            Method::POST,
            "/v1/login",
            None,
            Some(json!({"user": "nobody", "password": "wrong password"})),
        )
        .await;
    assert_eq!(s, 401);

    let text = scrape(&url).await;
    assert_eq!(
        metric_value(&text, "chatd_sessions{codec=\"json\"}"),
        2.0,
        "{text}"
    );
    assert!(metric_value(&text, "chatd_sessions_opened_total{codec=\"json\"}") >= 2.0);
    assert!(metric_value(&text, "chatd_frames_in_total{type=\"send\"}") >= 6.0);
    assert!(metric_value(&text, "chatd_send_outcomes_total{outcome=\"acked\"}") >= 5.0);
    assert!(metric_value(&text, "chatd_send_outcomes_total{outcome=\"duplicate\"}") >= 1.0);
    assert!(
        metric_value(&text, "chatd_send_ack_seconds_count") >= 6.0,
        "{text}"
    );
    assert!(text.contains("chatd_send_ack_seconds_bucket{le=\"0.001\"}"));
    assert!(metric_value(&text, "chatd_command_duration_seconds_count{type=\"send\"}") >= 6.0);
    // Each DM reaches bob (ann's own session is skipped) at least once.
    assert!(metric_value(&text, "chatd_fanout_deliveries_total") >= 5.0);
    assert!(metric_value(&text, "chatd_frames_out_total{codec=\"json\"}") >= 12.0);
    assert!(metric_value(&text, "chatd_router_published_total{result=\"ok\"}") >= 5.0);
    assert!(metric_value(&text, "chatd_router_received_total{payload=\"frame\"}") >= 5.0);
    // Every DM went through the router to this node's hub: each has a lag sample.
    assert!(metric_value(&text, "chatd_router_lag_seconds_count") >= 5.0);
    assert!(metric_value(&text, "chatd_store_append_batch_size_count") >= 1.0);
    assert!(metric_value(&text, "chatd_store_commit_seconds_count") >= 1.0);
    assert!(
        metric_value(
            &text,
            "chatd_moderation_verdicts_total{action=\"allow\",category=\"none\"}"
        ) >= 5.0
    );
    assert!(metric_value(&text, "chatd_logins_total{result=\"refused\"}") >= 1.0);

    // A session that ends leaves the gauge.
    drop(b);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = scrape(&url).await;
        if metric_value(&text, "chatd_sessions{codec=\"json\"}") == 1.0 {
            break;
        }
        assert!(Instant::now() < deadline, "{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Chat clients cannot read the metrics on the main listener.
    let (s, _) = api.call(Method::GET, "/metrics", Some("ann"), None).await;
    assert_eq!(s, 404);
}

#[tokio::test]
async fn metrics_on_the_main_listener_are_for_company_admins_only() {
    let node = Node::start_with(
        NodeOpts::default()
            .env("CHATD_METRICS__LISTEN", "")
            .env("CHATD_AUTH__ADMINS", r#"["boss"]"#),
    );
    let api = Api::new(&node);
    let (s, b) = api.call(Method::GET, "/metrics", None, None).await;
    assert_eq!(s, 401, "{b}");
    assert_eq!(b["error"]["code"], "unauthorized");
    let (s, b) = api.call(Method::GET, "/metrics", Some("ann"), None).await;
    assert_eq!(s, 403, "{b}");
    let (s, b) = api.call(Method::GET, "/metrics", Some("boss"), None).await;
    assert_eq!(s, 200);
    assert!(
        b.as_str().unwrap().contains("chatd_sessions_opened_total"),
        "{b}"
    );
}

#[tokio::test]
async fn probes_answer_while_serving() {
    let node = Node::start();
    let api = Api::new(&node);
    let (s, b) = api.call(Method::GET, "/livez", None, None).await;
    assert_eq!((s, b["status"].as_str()), (200, Some("ok")));
    let (s, b) = api.call(Method::GET, "/readyz", None, None).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["ready"], true);
    assert_eq!(b["store"], true);
    assert_eq!(b["router"], true);
    assert_eq!(b["draining"], false);
    let (s, _) = api.call(Method::GET, "/healthz", None, None).await;
    assert_eq!(s, 200);
}

#[tokio::test]
async fn sigterm_drains_then_closes_sessions_spread_over_the_window() {
    let mut node = Node::start_with(
        NodeOpts::default()
            .env("CHATD_SERVER__DRAIN_DELAY_SECS", 2)
            .env("CHATD_SERVER__DRAIN_WINDOW_SECS", 2),
    );
    let api = Api::new(&node);
    let n = 6;
    let mut clients = Vec::new();
    for i in 0..n {
        clients.push(Client::connect(&node, &format!("u{i}")).await);
    }
    let (s, _) = api.call(Method::GET, "/readyz", None, None).await;
    assert_eq!(s, 200);

    let term = Instant::now();
    Command::new("kill")
        .arg("-TERM")
        .arg(node.child.id().to_string())
        .status()
        .unwrap();
    // Readiness drops at once (well within the 2 s delay); liveness stays.
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let (s, b) = api.call(Method::GET, "/readyz", None, None).await;
        if s == 503 {
            assert_eq!(b["draining"], true, "{b}");
            assert_eq!(b["ready"], false, "{b}");
            break;
        }
        assert!(Instant::now() < deadline, "/readyz still {s} {b}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (s, _) = api.call(Method::GET, "/livez", None, None).await;
    assert_eq!(s, 200);
    // Still serving during the delay.
    ack_seq(&clients[0].send_dm("u1", "during-drain", "still here").await);
    clients[1].next_message().await;

    // Then every session is closed with 1001, spread over the window, and new sessions are
    // refused with 503 meanwhile.
    let closes = futures_util::future::join_all(clients.iter_mut().map(|c| async move {
        let code = c.expect_close().await;
        (code, term.elapsed())
    }));
    let url = format!("ws://{}/ws", node.addr);
    let refused = async {
        let deadline = Instant::now() + Duration::from_secs(8);
        loop {
            if let Err(r) = Client::try_connect_raw(&url, Some(&token("late"))).await {
                assert_eq!(r.status, 503, "{}", r.body);
                assert!(r.body.contains("draining"), "{}", r.body);
                return;
            }
            assert!(Instant::now() < deadline, "upgrades were never refused");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let (closes, ()) = tokio::join!(closes, refused);
    let mut at: Vec<Duration> = closes
        .iter()
        .map(|(code, t)| {
            assert_eq!(*code, close::GOING_AWAY);
            *t
        })
        .collect();
    at.sort();
    let (first, last) = (at[0], at[n - 1]);
    assert!(
        first >= Duration::from_millis(1500),
        "first close {first:?} after SIGTERM: before the drain delay"
    );
    // Evenly over 2 s: the last of 6 closes about 1.67 s after the first.
    assert!(
        last - first >= Duration::from_millis(800),
        "closes not spread: {at:?}"
    );

    // And the process exits cleanly within delay + window + grace.
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = node.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "chatd did not exit");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status:?}");
}
