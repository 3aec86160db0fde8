//! Bad input gets a clear, stable error and never a crash or a hang.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use protocol::{close, ClientFrame, Codec, ConvId, ErrorCode, Seq, ServerFrame};
use testkit::*;

fn is_error(f: &ServerFrame) -> bool {
    matches!(f, ServerFrame::Error { .. })
}

async fn still_usable(c: &mut Client) {
    c.send(&ClientFrame::Ping {
        rid: Some("alive".into()),
    })
    .await;
    let f = c
        .recv_until(|f| matches!(f, ServerFrame::Pong { .. }))
        .await;
    assert_eq!(
        f,
        ServerFrame::Pong {
            rid: Some("alive".into())
        }
    );
}

#[tokio::test]
async fn malformed_frames_get_bad_request_and_the_connection_stays_usable() {
    let node = Node::start();
    let mut c = Client::connect(&node, "ann").await;
    for raw in [
        "{not json",
        "[]",
        r#"{"type":"fly","rid":"r1"}"#,
        r#"{"rid":"r2"}"#,
        r#"{"type":"send","rid":"r3"}"#,
        r#"{"type":"send","rid":"r4","client_msg_id":"x","to":{"planet":"mars"},"body":"hi"}"#,
        r#"{"type":"history","rid":"r5","conv":"dm:zed:amy"}"#,
        r#"{"type":"read","conv":"group:g1","seq":-1}"#,
    ] {
        c.send_text(raw).await;
        let f = c.recv_until(is_error).await;
        assert_eq!(error_code(&f), ErrorCode::BadRequest, "{raw}");
        if let ServerFrame::Error { retry, .. } = f {
            assert!(!retry);
        }
    }
    // The rid is echoed whenever it could be read.
    c.send_text(r#"{"type":"fly","rid":"echo-me"}"#).await;
    let f = c.recv_until(is_error).await;
    assert!(
        matches!(f, ServerFrame::Error { rid: Some(ref r), .. } if r == "echo-me"),
        "{f:?}"
    );
    still_usable(&mut c).await;
}

#[tokio::test]
async fn malformed_msgpack_gets_bad_request() {
    let node = Node::start();
    let mut c = Client::connect_with(node.addr, "ann", Codec::MsgPack).await;
    c.send_raw(vec![0xc1, 0xff, 0x00]).await;
    assert_eq!(
        error_code(&c.recv_until(is_error).await),
        ErrorCode::BadRequest
    );
    // A map without `type`.
    let bytes = rmp_serde_like_map();
    c.send_raw(bytes).await;
    assert_eq!(
        error_code(&c.recv_until(is_error).await),
        ErrorCode::BadRequest
    );
    still_usable(&mut c).await;
}

/// `{"rid": "m"}` in MessagePack, written by hand.
fn rmp_serde_like_map() -> Vec<u8> {
    vec![0x81, 0xa3, b'r', b'i', b'd', 0xa1, b'm']
}

#[tokio::test]
async fn oversized_frame_closes_with_1009() {
    let node = Node::start_with(NodeOpts::default().env("CHATD_LIMITS__MAX_FRAME_BYTES", 1024));
    let mut c = Client::connect(&node, "ann").await;
    let big = format!(
        r#"{{"type":"send","client_msg_id":"b","to":{{"user":"ann"}},"body":"{}"}}"#,
        "x".repeat(4096)
    );
    c.send_text(&big).await;
    assert_eq!(c.expect_close().await, close::TOO_LARGE);
    // The node is fine.
    let mut d = Client::connect(&node, "ann").await;
    still_usable(&mut d).await;
}

#[tokio::test]
async fn missing_or_bad_token_is_401_before_the_upgrade() {
    let node = Node::start();
    let url = format!("ws://{}/ws", node.addr);
    let r = Client::try_connect_raw(&url, None).await.unwrap_err();
    assert_eq!(r.status, 401);
    let body: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(body["error"]["code"], "unauthorized");
    let r = Client::try_connect_raw(&url, Some("not.a.jwt"))
        .await
        .unwrap_err();
    assert_eq!(r.status, 401);
    let expired = token_with_exp("ann", 1_000_000);
    let r = Client::try_connect_raw(&url, Some(&expired))
        .await
        .unwrap_err();
    assert_eq!(r.status, 401);
    assert!(r.body.contains("expired"), "{}", r.body);
    let r = Client::try_connect_raw(&format!("{url}?token=garbage"), None)
        .await
        .unwrap_err();
    assert_eq!(r.status, 401);
    let r = Client::try_connect_raw(&format!("{url}?codec=xml&token={}", token("ann")), None)
        .await
        .unwrap_err();
    assert_eq!(r.status, 400);
    Client::try_connect_raw(&format!("{url}?token={}", token("ann")), None)
        .await
        .expect("a token in the query works too");
}

#[tokio::test]
async fn membership_and_existence_are_enforced() {
    let node = Node::start();
    let api = Api::new(&node);
    let mut a = Client::connect(&node, "ann").await;
    let mut outsider = Client::connect(&node, "otto").await;
    let g = api.create_group("ann", "private", &[]).await;

    let f = outsider.send_group(&g, "o1", "let me in").await;
    assert_eq!(error_code(&f), ErrorCode::Forbidden);
    outsider
        .send(&ClientFrame::History {
            rid: Some("h".into()),
            conv: ConvId::group(&protocol::GroupId::new(g.clone())),
            before_seq: None,
            limit: None,
        })
        .await;
    assert_eq!(
        error_code(&outsider.recv_until(is_error).await),
        ErrorCode::Forbidden
    );
    outsider
        .send(&ClientFrame::History {
            rid: Some("h2".into()),
            conv: ConvId::parse("dm:ann:bob").unwrap(),
            before_seq: None,
            limit: None,
        })
        .await;
    assert_eq!(
        error_code(&outsider.recv_until(is_error).await),
        ErrorCode::Forbidden
    );

    let f = a.send_group("no-such-group", "n1", "hello?").await;
    assert_eq!(error_code(&f), ErrorCode::NotFound);
    let f = a.send_dm("nobody-ever", "n2", "hello?").await;
    assert_eq!(error_code(&f), ErrorCode::NotFound);
}

#[tokio::test]
async fn history_limit_is_clamped_not_refused() {
    let node = Node::start_with(NodeOpts::default().env("CHATD_LIMITS__HISTORY_MAX", 5));
    let mut a = Client::connect(&node, "ann").await;
    let _b = Client::connect(&node, "bob").await;
    for i in 0..8 {
        a.send_dm("bob", &format!("c{i}"), "x").await;
    }
    a.send(&ClientFrame::History {
        rid: Some("big".into()),
        conv: ConvId::parse("dm:ann:bob").unwrap(),
        before_seq: None,
        limit: Some(100_000),
    })
    .await;
    let f = a
        .recv_until(|f| matches!(f, ServerFrame::History { .. } | ServerFrame::Error { .. }))
        .await;
    let ServerFrame::History {
        messages, has_more, ..
    } = f
    else {
        panic!("{f:?}")
    };
    assert_eq!(messages.len(), 5);
    assert!(has_more);
    assert_eq!(messages[0].seq, Seq(8));
}

#[tokio::test]
async fn empty_and_over_long_bodies_are_bad_requests() {
    let node = Node::start_with(NodeOpts::default().env("CHATD_LIMITS__MAX_BODY_CHARS", 10));
    let mut a = Client::connect(&node, "ann").await;
    let _b = Client::connect(&node, "bob").await;
    for (id, body) in [("e1", ""), ("e2", "   "), ("e3", "12345678901")] {
        let f = a.send_dm("bob", id, body).await;
        assert_eq!(error_code(&f), ErrorCode::BadRequest, "{body:?}");
    }
    // Ten characters of multi-byte text are within a ten-character limit.
    ack_seq(&a.send_dm("bob", "ok", "机密文件不可以外传吗").await);
    still_usable(&mut a).await;
}

#[tokio::test]
async fn sending_too_fast_is_rate_limited_with_retry() {
    let node = Node::start_with(
        NodeOpts::default()
            .env("CHATD_LIMITS__SEND_PER_SEC", 1)
            .env("CHATD_LIMITS__SEND_BURST", 3),
    );
    let mut a = Client::connect(&node, "ann").await;
    let _b = Client::connect(&node, "bob").await;
    let mut limited = 0;
    for i in 0..6 {
        let f = a.send_dm("bob", &format!("r{i}"), "fast").await;
        if let ServerFrame::Error {
            code: ErrorCode::RateLimited,
            retry,
            ..
        } = f
        {
            assert!(retry);
            limited += 1;
        }
    }
    assert!(
        limited >= 2,
        "expected rate limiting, got {limited} limited sends"
    );
}
