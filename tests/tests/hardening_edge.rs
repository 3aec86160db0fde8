//! The edge of a node under attack: half-open connections and floods beyond the open-files
//! limit, upgrades beyond the session budget, TLS with certificate reload, the Origin
//! allow-list, tokens kept out of logs, and the JSON error body on every route.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use futures_util::{SinkExt, StreamExt};
use protocol::ServerFrame;
use std::sync::Arc;
use std::time::{Duration, Instant};
use testkit::{token, Api, Client, Node, NodeOpts};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::rustls;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// A node whose open-files limit is `nofile` (soft and hard).
fn low_fd_node(nofile: u32, opts: NodeOpts) -> Node {
    let mut opts = opts;
    opts.wrapper = vec!["prlimit".into(), format!("--nofile={nofile}:{nofile}")];
    Node::start_with(opts)
}

/// Opens a connection that sends half a request and never finishes it.
async fn half_open(node: &Node) -> Option<TcpStream> {
    let mut s = TcpStream::connect(node.addr).await.ok()?;
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .ok()?;
    Some(s)
}

/// `GET /healthz`: status and how long it took.
async fn healthz(http: &reqwest::Client, node: &Node) -> (u16, Duration) {
    let t = Instant::now();
    let resp = http
        .get(format!("{}/healthz", node.http()))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .expect("healthz answered");
    (resp.status().as_u16(), t.elapsed())
}

/// Connects two users and times one DM from send to delivery.
async fn dm_latency(node: &Node, a: &str, b: &str) -> Duration {
    let mut alice = Client::connect(node, a).await;
    let mut bob = Client::connect(node, b).await;
    let t = Instant::now();
    alice.send_dm(b, &format!("edge-{a}"), "still here").await;
    let m = bob.next_message().await;
    assert_eq!(m.body, "still here");
    t.elapsed()
}

/// The start-up log line `connection budgets` (waits for it).
fn budgets_line(node: &Node) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(l) = node
            .log_lines()
            .into_iter()
            .find(|l| l.contains("connection budgets"))
        {
            return l;
        }
        assert!(Instant::now() < deadline, "no `connection budgets` line");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One `key=value` number of a log line.
fn logged(line: &str, key: &str) -> Option<u64> {
    let rest = line.split(&format!("{key}=")).nth(1)?;
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

fn assert_json_error(status: u16, body: &serde_json::Value, what: &str) {
    assert!(status >= 400, "{what}: status {status}");
    let e = &body["error"];
    assert!(
        e["code"].is_string() && e["message"].is_string() && e["retry"].is_boolean(),
        "{what}: {status} without the JSON error body: {body}"
    );
    assert!(
        !e["message"].as_str().unwrap().is_empty(),
        "{what}: empty message"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_flood_beyond_the_fd_limit_locks_nobody_out() {
    let node = low_fd_node(
        512,
        NodeOpts::default().env("CHATD_SERVER__HEADER_READ_TIMEOUT_MS", 1500),
    );
    let line = budgets_line(&node);
    // 512 - 128 reserved = 384 sockets, 96 pending, 384 - 96 - 24 = 264 sessions.
    assert_eq!(logged(&line, "open_files"), Some(512), "{line}");
    assert_eq!(logged(&line, "sockets"), Some(384), "{line}");
    assert_eq!(logged(&line, "pending"), Some(96), "{line}");
    assert_eq!(logged(&line, "sessions"), Some(264), "{line}");

    // 600 connections that never finish their headers: more than the node has files.
    let mut flood = Vec::new();
    for _ in 0..600 {
        if let Some(s) = half_open(&node).await {
            flood.push(s);
        }
    }
    assert!(flood.len() >= 500, "only {} connected", flood.len());

    let http = reqwest::Client::new();
    let (status, took) = healthz(&http, &node).await;
    assert_eq!(status, 200);
    assert!(took < Duration::from_secs(3), "healthz took {took:?}");
    let took = dm_latency(&node, "alice", "bob").await;
    assert!(took < Duration::from_secs(3), "DM took {took:?}");

    // Most of the flood was evicted to make room (the pending budget is 96).
    let mut open = 0;
    for s in &mut flood {
        let mut buf = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_millis(5), s.read(&mut buf)).await;
        if read.is_err() {
            open += 1;
        }
    }
    assert!(open <= 96 + 4, "{open} half-open connections still open");
    drop(flood);

    // A lone half-open connection is closed at the header deadline (1.5 s), not kept.
    let mut lone = half_open(&node).await.unwrap();
    let t = Instant::now();
    let mut buf = [0u8; 64];
    let r = tokio::time::timeout(Duration::from_secs(15), lone.read(&mut buf))
        .await
        .expect("the half-open connection was not closed");
    assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(1000) && took < Duration::from_secs(10),
        "closed after {took:?}"
    );
    // And the node still serves.
    let (status, _) = healthz(&http, &node).await;
    assert_eq!(status, 200);
    assert!(dm_latency(&node, "carol", "dave").await < Duration::from_secs(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrades_beyond_the_session_budget_get_503_json_and_http_keeps_working() {
    // 512 - 480 reserved = 32 sockets, 8 pending, 32 - 8 - 2 = 22 sessions.
    let node = low_fd_node(
        512,
        NodeOpts::default()
            .env("CHATD_SERVER__FD_RESERVE", 480)
            .env("CHATD_AUTH__ADMINS", "[\"root\"]"),
    );
    let line = budgets_line(&node);
    assert_eq!(logged(&line, "sessions"), Some(22), "{line}");
    let mut sessions = Vec::new();
    for i in 0..22 {
        sessions.push(Client::connect(&node, &format!("u{i}")).await);
    }
    let url = format!("ws://{}/ws", node.addr);
    let refusal = Client::try_connect_raw(&url, Some(&token("late")))
        .await
        .expect_err("upgrade beyond the budget");
    assert_eq!(refusal.status, 503, "{refusal:?}");
    let body: serde_json::Value = serde_json::from_str(&refusal.body).unwrap();
    assert_eq!(body["error"]["code"], "unavailable");
    assert_eq!(body["error"]["retry"], true);

    // /healthz, the admin API and connected sessions still work at the cap.
    let http = reqwest::Client::new();
    let (status, took) = healthz(&http, &node).await;
    assert_eq!(status, 200);
    assert!(took < Duration::from_secs(3));
    let api = Api::new(&node);
    let (status, body) = api
        .call(reqwest::Method::GET, "/v1/audit", Some("root"), None)
        .await;
    assert_eq!(status, 200, "{body}");
    let (a, rest) = sessions.split_at_mut(1);
    let t = Instant::now();
    a[0].send_dm("u1", "cap-1", "at the cap").await;
    assert_eq!(rest[0].next_message().await.body, "at the cap");
    assert!(t.elapsed() < Duration::from_secs(3));

    // A session leaving frees its place.
    drop(sessions.pop());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match Client::try_connect_raw(&url, Some(&token("late"))).await {
            Ok(()) => break,
            Err(r) if r.status == 503 && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(r) => panic!("{r:?}"),
        }
    }
}

/// A self-signed certificate for 127.0.0.1 and localhost: (cert PEM, key PEM, cert DER).
fn certificate() -> (String, String, Vec<u8>) {
    let c =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    (
        c.cert.pem(),
        c.signing_key.serialize_pem(),
        c.cert.der().to_vec(),
    )
}

/// A TLS connection to the node that trusts only `cert_der`.
async fn tls_connect(
    node: &Node,
    cert_der: &[u8],
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from(cert_der.to_vec()))
        .unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(node.addr).await?;
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    connector.connect(name, tcp).await
}

/// `GET /healthz` over TLS with a raw HTTP/1.1 request; returns the status line.
async fn https_healthz(node: &Node, cert_der: &[u8]) -> std::io::Result<String> {
    let mut s = tls_connect(node, cert_der).await?;
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).await?;
    let text = String::from_utf8_lossy(&out).into_owned();
    Ok(text.lines().next().unwrap_or_default().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_https_and_wss_and_reloads_the_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let (pem, key, der1) = certificate();
    std::fs::write(&cert_path, pem).unwrap();
    std::fs::write(&key_path, key).unwrap();
    let node = Node::start_with(
        NodeOpts::default()
            .env("CHATD_SERVER__TLS_CERT_FILE", cert_path.display())
            .env("CHATD_SERVER__TLS_KEY_FILE", key_path.display())
            .env("CHATD_SERVER__TLS_RELOAD_MS", 100)
            .env("CHATD_SERVER__TLS_HANDSHAKE_TIMEOUT_MS", 1000),
    );
    assert_eq!(
        https_healthz(&node, &der1).await.unwrap(),
        "HTTP/1.1 200 OK"
    );

    // A connection that never starts its handshake is closed at the handshake deadline.
    let mut silent = TcpStream::connect(node.addr).await.unwrap();
    let t = Instant::now();
    let mut buf = [0u8; 16];
    let r = tokio::time::timeout(Duration::from_secs(15), silent.read(&mut buf))
        .await
        .expect("a silent TLS connection was kept");
    assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
    assert!(
        t.elapsed() >= Duration::from_millis(500),
        "{:?}",
        t.elapsed()
    );

    // wss:// session: hello, then a DM to itself arrives.
    let tls = tls_connect(&node, &der1).await.unwrap();
    let mut req = format!("wss://localhost:{}/ws", node.addr.port())
        .into_client_request()
        .unwrap();
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {}", token("tlsuser")).parse().unwrap(),
    );
    let (mut ws, _) = tokio_tungstenite::client_async(req, tls).await.unwrap();
    let hello = ws.next().await.unwrap().unwrap();
    let hello: ServerFrame = serde_json::from_str(hello.to_text().unwrap()).unwrap();
    assert!(matches!(hello, ServerFrame::Hello { .. }), "{hello:?}");
    ws.send(tokio_tungstenite::tungstenite::Message::text(
        r#"{"type":"send","rid":"1","client_msg_id":"t1","to":{"user":"tlsuser"},"body":"over tls"}"#,
    ))
    .await
    .unwrap();
    let mut acked = false;
    while let Ok(Some(Ok(m))) = tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
        if m.to_text().unwrap_or_default().contains("\"ack\"") {
            acked = true;
            break;
        }
    }
    assert!(acked, "no ack over wss");

    // Plain HTTP to the TLS port is not served.
    let plain = reqwest::Client::new()
        .get(format!("{}/healthz", node.http()))
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    assert!(plain.map(|r| !r.status().is_success()).unwrap_or(true));

    // Replace the certificate: new connections see the new one, the open session stays.
    let (pem2, key2, der2) = certificate();
    std::fs::write(&key_path, key2).unwrap();
    std::fs::write(&cert_path, pem2).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(line) = https_healthz(&node, &der2).await {
            assert_eq!(line, "HTTP/1.1 200 OK");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new certificate was not loaded"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        https_healthz(&node, &der1).await.is_err(),
        "the old certificate is still presented"
    );
    ws.send(tokio_tungstenite::tungstenite::Message::Ping(
        vec![1].into(),
    ))
    .await
    .unwrap();

    // A broken file keeps the current certificate and says so in the log.
    std::fs::write(&cert_path, "not a certificate").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut log = Vec::new();
    while !log.iter().any(|l: &String| l.contains("rejected")) {
        assert!(Instant::now() < deadline, "no error logged: {log:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
        log.extend(node.log_lines());
    }
    assert_eq!(
        https_healthz(&node, &der2).await.unwrap(),
        "HTTP/1.1 200 OK"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_allow_list_refuses_foreign_browsers_only() {
    let node = Node::start_with(NodeOpts::default().env(
        "CHATD_SERVER__ALLOWED_ORIGINS",
        "[\"https://chat.example.com\"]",
    ));
    let connect = |origin: Option<&'static str>| {
        let url = format!("ws://{}/ws", node.addr);
        async move {
            let mut req = url.into_client_request().unwrap();
            req.headers_mut().insert(
                "authorization",
                format!("Bearer {}", token("alice")).parse().unwrap(),
            );
            if let Some(o) = origin {
                req.headers_mut().insert("origin", o.parse().unwrap());
            }
            match tokio_tungstenite::connect_async(req).await {
                Ok(_) => Ok(()),
                Err(tokio_tungstenite::tungstenite::Error::Http(r)) => Err((
                    r.status().as_u16(),
                    String::from_utf8_lossy(r.body().as_deref().unwrap_or_default()).into_owned(),
                )),
                Err(e) => panic!("{e}"),
            }
        }
    };
    let (status, body) = connect(Some("https://evil.example.net")).await.unwrap_err();
    assert_eq!(status, 403);
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["error"]["code"], "forbidden");
    connect(Some("https://chat.example.com")).await.unwrap();
    connect(None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_never_reach_the_log() {
    let node = Node::start_with(NodeOpts::default().env("CHATD_LOG", "trace"));
    let good = token("alice");
    let bad = format!("{}x", token("mallory"));
    let garbage = "not-a-jwt-but-a-secret-1234567890";
    let base = format!("ws://{}/ws", node.addr);
    // Good and bad upgrades with the token in the query string.
    let mut c = Client::connect_token(&node, "alice", &good).await;
    c.ws.close(None).await.ok();
    for url in [
        format!("{base}?token={good}"),
        format!("{base}?token={bad}"),
        format!("{base}?token={garbage}"),
        format!("{base}?token={good}&codec=nope"),
        format!("{base}?token={garbage}&token={good}"),
    ] {
        let _ = Client::try_connect_raw(&url, None).await;
    }
    // The same on HTTP routes and a non-upgrade GET /ws.
    let http = reqwest::Client::new();
    for path in ["/ws", "/v1/me", "/v1/nowhere", "/healthz"] {
        let _ = http
            .get(format!("{}{path}?token={garbage}&t2={good}", node.http()))
            .send()
            .await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let lines = node.log_lines();
    assert!(lines.len() > 3, "expected a debug log: {lines:?}");
    for l in &lines {
        for t in [good.as_str(), bad.as_str(), garbage] {
            assert!(!l.contains(t), "token in the log: {l}");
        }
        // Not even the signature part of a JWT.
        let sig = good.rsplit('.').next().unwrap();
        assert!(!l.contains(sig), "token signature in the log: {l}");
    }
}

/// Every route of the OpenAPI document, with bad path segments, bad query strings, bad
/// bodies and wrong methods: every error is the JSON body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_every_error_as_json() {
    let node = Node::start_with(
        NodeOpts::default()
            .env("CHATD_AUTH__ADMINS", "[\"root\"]")
            .env("CHATD_LIMITS__MAX_HTTP_BODY", 4096)
            // A sweep of every route: far more requests per account than a person makes.
            .env("CHATD_LIMITS__HTTP_WRITES_BURST", 100_000)
            .env("CHATD_LIMITS__HTTP_READS_BURST", 100_000),
    );
    let api = Api::new(&node);
    let http = reqwest::Client::new();
    // The document is public.
    let doc: serde_json::Value = http
        .get(format!("{}/v1/openapi.json", node.http()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() > 30, "{} paths", paths.len());
    let bearer = token("root");
    let all = ["get", "post", "put", "patch", "delete"];
    let mut checked = 0;
    let send = |method: &str, path: String, body: Option<(&'static str, Vec<u8>)>| {
        let mut req = http
            .request(
                method.to_uppercase().parse().unwrap(),
                format!("{}{path}", node.http()),
            )
            .bearer_auth(&bearer);
        if let Some((ct, b)) = body {
            req = req.header("content-type", ct).body(b);
        }
        async move {
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            let text = resp.text().await.unwrap();
            let json = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
            (status, json)
        }
    };
    for (template, ops) in paths {
        let methods: Vec<&str> = all
            .iter()
            .copied()
            .filter(|m| ops.get(*m).is_some())
            .collect();
        let has_params = template.contains('{');
        let with = |seg: &str| {
            let mut out = String::new();
            let mut rest = template.as_str();
            while let Some(i) = rest.find('{') {
                out.push_str(&rest[..i]);
                out.push_str(seg);
                rest = &rest[rest[i..].find('}').unwrap() + i + 1..];
            }
            out.push_str(rest);
            out
        };
        for &m in &methods {
            // Bad path segments: invalid UTF-8 and non-numbers.
            if has_params {
                for seg in ["%FF", "abc", "-1"] {
                    let (status, body) = send(m, with(seg), None).await;
                    if status >= 400 {
                        assert_json_error(status, &body, &format!("{m} {} ({seg})", with(seg)));
                        assert!(status < 500, "{m} {template} {seg}: {status} {body}");
                        checked += 1;
                    }
                }
            }
            // Bad query strings (only routes that read them reject them).
            let path = with("nope");
            let q = format!("{path}?limit=-1&since=abc&before=%FF&after=x&seq=-1&role=%00");
            let (status, body) = send(m, q.clone(), None).await;
            if status >= 400 {
                assert_json_error(status, &body, &format!("{m} {q}"));
                checked += 1;
            }
            // Bad bodies on routes that take one.
            if m != "get" && m != "delete" {
                for (ct, b) in [
                    ("application/json", b"{".to_vec()),
                    ("application/json", b"[1,2,3]".to_vec()),
                    ("text/plain", b"hello".to_vec()),
                    ("application/json", vec![b' '; 8192]),
                ] {
                    let (status, body) = send(m, path.clone(), Some((ct, b))).await;
                    if status >= 400 {
                        assert_json_error(status, &body, &format!("{m} {path} body {ct}"));
                        assert!(status < 500, "{m} {path}: {status} {body}");
                        checked += 1;
                    }
                }
            }
        }
        // A method the route does not have: 405 with the JSON body.
        if let Some(wrong) = all.iter().find(|m| !methods.contains(m)) {
            let (status, body) = send(wrong, with("nope"), None).await;
            assert_eq!(status, 405, "{wrong} {template}: {body}");
            assert_json_error(status, &body, &format!("{wrong} {template}"));
            checked += 1;
        }
    }
    assert!(checked > 100, "only {checked} error answers checked");

    // The known offenders of the issue, by name.
    let (status, body) = api
        .call(
            reqwest::Method::GET,
            "/v1/audit?limit=-1",
            Some("root"),
            None,
        )
        .await;
    assert_eq!(status, 400);
    assert_json_error(status, &body, "?limit=-1");
    assert_eq!(body["error"]["code"], "bad_request");
    let (status, body) = api
        .call(
            reqwest::Method::GET,
            "/v1/audit?since=abc",
            Some("root"),
            None,
        )
        .await;
    assert_eq!(status, 400);
    assert_json_error(status, &body, "?since=abc");
    // 413 and 404 and 405.
    let (status, body) = send(
        "post",
        "/v1/groups".into(),
        Some(("application/json", vec![b' '; 8192])),
    )
    .await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["error"]["code"], "too_large");
    let (status, body) = send("get", "/v1/no/such/route".into(), None).await;
    assert_eq!(status, 404);
    assert_json_error(status, &body, "404");
    let (status, body) = send("delete", "/healthz".into(), None).await;
    assert_eq!(status, 405);
    assert_json_error(status, &body, "405");
    // The WebSocket route's own rejections: a GET without upgrade headers, a POST.
    let (status, body) = send("get", "/ws".into(), None).await;
    assert!(status == 400 || status == 426, "{status} {body}");
    assert_json_error(status, &body, "GET /ws without upgrade");
    let (status, body) = send("post", "/ws".into(), None).await;
    assert_eq!(status, 405);
    assert_json_error(status, &body, "POST /ws");
    let (status, body) = send("get", "/ws?codec=%FF&device=%FF".into(), None).await;
    assert_json_error(status, &body, "GET /ws bad query");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_its_responses_is_cut_off() {
    let node =
        Node::start_with(NodeOpts::default().env("CHATD_SERVER__KEEPALIVE_TIMEOUT_MS", 1000));
    let http = reqwest::Client::new();
    let one = http
        .get(format!("{}/v1/openapi.json", node.http()))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap()
        .len();
    // Many pipelined requests for a large response, from a socket with a tiny receive window,
    // and then no reading at all: the node's writes stall.
    let n = 400;
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let mut s = sock.connect(node.addr).await.unwrap();
    let req = "GET /v1/openapi.json HTTP/1.1\r\nHost: x\r\n\r\n".repeat(n);
    s.write_all(req.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    // Meanwhile others are served as usual.
    let (status, took) = healthz(&http, &node).await;
    assert_eq!(status, 200);
    assert!(took < Duration::from_secs(3));
    // The stalled connection was closed: what was buffered arrives, then the end.
    let mut got = 0usize;
    let mut buf = vec![0u8; 64 * 1024];
    let read_all = async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(k) => got += k,
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), read_all)
        .await
        .expect("the stalled connection was never closed");
    assert!(
        got < one * n / 2,
        "{got} bytes of {} arrived: the stalled connection was kept",
        one * n
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_file_descriptors_the_accept_loop_neither_dies_nor_spins() {
    // No reserve at 80 files: sessions plus the store's own files exhaust the descriptors,
    // so accept() itself fails with EMFILE.
    let mut node = low_fd_node(80, NodeOpts::default().env("CHATD_SERVER__FD_RESERVE", 0));
    let mut sessions = Vec::new();
    let url = format!("ws://{}/ws", node.addr);
    for i in 0..140 {
        let mut req = url.as_str().into_client_request().unwrap();
        req.headers_mut().insert(
            "authorization",
            format!("Bearer {}", token(&format!("f{i}")))
                .parse()
                .unwrap(),
        );
        match tokio::time::timeout(
            Duration::from_secs(2),
            tokio_tungstenite::connect_async(req),
        )
        .await
        {
            Ok(Ok((ws, _))) => sessions.push(ws),
            _ => break,
        }
    }
    assert!(sessions.len() > 20, "only {} sessions", sessions.len());
    // While descriptors are exhausted, the node backs off instead of spinning.
    let before = node.cpu_ticks();
    let waiting: Vec<_> = (0..20)
        .map(|_| std::net::TcpStream::connect(node.addr))
        .collect();
    std::thread::sleep(Duration::from_secs(2));
    let used = node.cpu_ticks() - before;
    // 2 s at 100 ticks/s: a spinning loop would use ~200.
    assert!(used < 100, "{used} ticks in 2 s");
    drop(waiting);
    // Sessions leave: the node serves again.
    sessions.truncate(sessions.len() / 2);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let http = reqwest::Client::new();
    let (status, took) = healthz(&http, &node).await;
    assert_eq!(status, 200);
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert!(node.is_running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_after_its_deadline_gets_503_json() {
    let node = Node::start_with(NodeOpts::default().env("CHATD_SERVER__UPGRADE_TIMEOUT_MS", 300));
    // Connect, dawdle past the deadline, then ask for the upgrade.
    let mut s = TcpStream::connect(node.addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    let req = format!(
        "GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Authorization: Bearer {}\r\n\r\n",
        token("slowpoke")
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&out).contains("}}") {
        let k = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("no answer")
            .unwrap();
        assert!(k > 0, "closed: {}", String::from_utf8_lossy(&out));
        out.extend_from_slice(&buf[..k]);
    }
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 503"), "{text}");
    assert!(text.contains("\"code\":\"unavailable\""), "{text}");
    // A prompt client is upgraded as usual.
    Client::connect(&node, "prompt").await;
}

/// Every way an upgrade request can be broken gets 400 with the JSON error body and says what
/// was wrong, before any token is looked at (the gateway's own handshake, ws_handshake.rs).
#[tokio::test]
async fn broken_upgrade_requests_get_400_json_saying_why() {
    let node = Node::start();
    let good = [
        ("Connection", "Upgrade"),
        ("Upgrade", "websocket"),
        ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];
    // (header, its broken value or "" to leave it out, what the answer says).
    let cases = [
        ("Connection", "keep-alive", "Connection: upgrade"),
        ("Upgrade", "h2c", "Upgrade: websocket"),
        ("Sec-WebSocket-Version", "8", "must be 13"),
        ("Sec-WebSocket-Version", "", "must be 13"),
        ("Sec-WebSocket-Key", "", "Sec-WebSocket-Key is missing"),
    ];
    for (header, broken, says) in cases {
        let mut req = format!("GET /ws?token={} HTTP/1.1\r\nHost: x\r\n", token("ann"));
        for (name, value) in good {
            let value = if name == header { broken } else { value };
            if !value.is_empty() {
                req.push_str(&format!("{name}: {value}\r\n"));
            }
        }
        req.push_str("\r\n");
        let mut s = TcpStream::connect(node.addr).await.unwrap();
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&out).contains("}}") {
            let k = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
                .await
                .expect("no answer")
                .unwrap();
            assert!(k > 0, "closed: {}", String::from_utf8_lossy(&out));
            out.extend_from_slice(&buf[..k]);
        }
        let text = String::from_utf8_lossy(&out);
        assert!(text.starts_with("HTTP/1.1 400"), "{header}: {text}");
        assert!(
            text.contains("\"code\":\"bad_request\""),
            "{header}: {text}"
        );
        assert!(text.contains(says), "{header}: {text}");
    }
    // The same request with nothing broken is upgraded.
    Client::connect(&node, "ann").await;
}
