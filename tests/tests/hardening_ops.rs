//! The budgets of the operations endpoints, attacked end to end against a real node by an
//! authorised but careless administrator or compliance officer: many parallel requests, huge
//! `limit`s, long time ranges. Each test checks the refusals the docs promise (503
//! `unavailable` with `retry: true`, 400 `bad_request`, 409 `conflict`), that the node's
//! memory stays bounded, and that an innocent pair's chat (send, ack, delivery) and an
//! ordinary administrator's request still answer in normal time during the flood.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use reqwest::{Method, RequestBuilder};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use testkit::compliance::{burst_padded, export_done};
use testkit::*;

/// How many answers of each HTTP status a flood got.
type Tally = BTreeMap<u16, usize>;

fn opts() -> NodeOpts {
    NodeOpts::default()
        .env("CHATD_AUTH__ADMINS", r#"["boss"]"#)
        .env("CHATD_COMPLIANCE__OFFICERS", r#"["auditor"]"#)
        .unthrottled_sends()
        // The per-account HTTP budgets would refuse most of each flood with 429 first
        // (tests/tests/hardening_rates.rs); raised here so the floods reach the endpoints'
        // own budgets, which hold for many accounts flooding at once.
        .env("CHATD_LIMITS__HTTP_WRITES_PER_SEC", 100_000)
        .env("CHATD_LIMITS__HTTP_WRITES_BURST", 100_000)
        .env("CHATD_LIMITS__HTTP_READS_PER_SEC", 100_000)
        .env("CHATD_LIMITS__HTTP_READS_BURST", 100_000)
}

/// `workers` tasks each send `make(worker, n)` (the n-th request of that worker) until `for_`
/// has passed. Every answer must be in `allowed`; a 503 must be `unavailable` with
/// `retry: true`, a 400 `bad_request`, a 409 `conflict`. Answers the tally.
async fn flood(
    workers: usize,
    for_: Duration,
    allowed: &'static [u16],
    make: impl Fn(usize, usize) -> RequestBuilder + Send + Sync + 'static,
) -> Tally {
    let make = Arc::new(make);
    let until = Instant::now() + for_;
    let tasks: Vec<_> = (0..workers)
        .map(|w| {
            let make = make.clone();
            tokio::spawn(async move {
                let mut tally = Tally::new();
                let mut n = 0;
                while Instant::now() < until {
                    let resp = make(w, n)
                        .timeout(Duration::from_secs(60))
                        .send()
                        .await
                        .unwrap();
                    let status = resp.status().as_u16();
                    let body = resp.bytes().await.unwrap();
                    assert!(
                        allowed.contains(&status),
                        "unexpected {status}: {}",
                        String::from_utf8_lossy(&body[..body.len().min(300)])
                    );
                    if status >= 400 {
                        let v: Value = serde_json::from_slice(&body).unwrap();
                        let want = match status {
                            503 => "unavailable",
                            409 => "conflict",
                            _ => "bad_request",
                        };
                        assert_eq!(code(&v), want, "{v}");
                        assert_eq!(v["error"]["retry"], status == 503, "{v}");
                    }
                    *tally.entry(status).or_default() += 1;
                    n += 1;
                }
                tally
            })
        })
        .collect();
    let mut total = Tally::new();
    for t in tasks {
        for (s, n) in t.await.unwrap() {
            *total.entry(s).or_default() += n;
        }
    }
    total
}

/// A node with a group of carol, dave and erin where carol sent `n` messages padded with
/// `pad` bytes; answers the node, an API client, carol's session and the group id.
async fn seeded(opts: NodeOpts, n: usize, pad: usize) -> (Node, Api, Client, String) {
    let node = Node::start_with(opts);
    let api = Api::new(&node);
    for u in ["dave", "erin"] {
        api.touch(u).await;
    }
    let g = api.create_group("carol", "busy", &["dave", "erin"]).await;
    let mut carol = Client::connect(&node, "carol").await;
    burst_padded(&mut carol, &g, "seed", n, pad).await;
    (node, api, carol, g)
}

/// The innocent side of a flood: the chat round trips, the node's memory, and ordinary
/// administrator requests, all measured while `attack` runs.
struct Watch {
    stop: tokio::sync::watch::Sender<bool>,
    chat: tokio::task::JoinHandle<Vec<Duration>>,
    rss: tokio::task::JoinHandle<u64>,
    admin: tokio::task::JoinHandle<Vec<Duration>>,
    before_kib: u64,
}

impl Watch {
    async fn start(node: &Node) -> Watch {
        let alice = Client::connect(node, "alice").await;
        let bob = Client::connect(node, "bob").await;
        let (stop, rx) = tokio::sync::watch::channel(false);
        let chat = tokio::spawn(round_trips_until(alice, bob, rx.clone()));
        // Ordinary administrator requests, one every 100 ms: the policies and the holds.
        let admin = tokio::spawn({
            let api = Api::new(node);
            let rx = rx.clone();
            async move {
                let mut times = Vec::new();
                let mut i = 0;
                while !*rx.borrow() {
                    let path = if i % 2 == 0 {
                        "/v1/admin/retention"
                    } else {
                        "/v1/admin/holds"
                    };
                    let t = Instant::now();
                    let (s, b) = api.call(Method::GET, path, Some("boss"), None).await;
                    assert_eq!(s, 200, "{path}: {b}");
                    times.push(t.elapsed());
                    i += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                times
            }
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        let before_kib = node.rss_kib();
        let rss = rss_peak_until(node.pid(), rx);
        Watch {
            stop,
            chat,
            rss,
            admin,
            before_kib,
        }
    }

    /// Stops watching; checks that chat and admin requests stayed fast and memory bounded
    /// (grew by less than `max_growth_mib`). Answers a line for the log.
    async fn finish(self, max_growth_mib: f64) -> String {
        tokio::time::sleep(Duration::from_millis(200)).await;
        self.stop.send(true).unwrap();
        let peak = self.rss.await.unwrap();
        let rtts = self.chat.await.unwrap();
        let admin = self.admin.await.unwrap();
        let (p50, max) = p50_max(&rtts);
        let (admin_p50, admin_max) = p50_max(&admin);
        let grew = peak.saturating_sub(self.before_kib) as f64 / 1024.0;
        let line = format!(
            "RSS {} KiB -> peak {peak} KiB (+{grew:.1} MiB); chat: {} round trips, p50 {p50:?}, \
             max {max:?}; admin requests: {}, p50 {admin_p50:?}, max {admin_max:?}",
            self.before_kib,
            rtts.len(),
            admin.len()
        );
        assert!(rtts.len() >= 5, "chat kept flowing: {line}");
        assert!(admin.len() >= 3, "admin requests kept answering: {line}");
        // Orders of magnitude: a round trip takes milliseconds; seconds would mean the flood
        // starved the node.
        assert!(max < Duration::from_secs(2), "{line}");
        assert!(admin_max < Duration::from_secs(2), "{line}");
        assert!(grew < max_growth_mib, "{line}");
        line
    }
}

#[tokio::test]
async fn a_flood_of_compliance_event_reads_gets_503_and_400_and_chat_stays_fast() {
    // 600 messages of 1 KiB: a page of every event is heavy (each event reads its message).
    let (node, api, _carol, _g) = seeded(opts(), 600, 1024).await;

    let watch = Watch::start(&node).await;
    let http = reqwest::Client::new();
    let base = node.http();
    let started = Instant::now();
    let tally = flood(24, Duration::from_secs(3), &[200, 400, 503], move |w, n| {
        let who = if w % 2 == 0 { "auditor" } else { "boss" };
        let url = match (w + n) % 6 {
            // The careless officer's huge limit, a limit of 0, a cursor that is not one.
            0 => events_url_of(&base, "", 100_000),
            1 => events_url_of(&base, "", 0),
            2 => events_url_of(&base, "zz", 1000),
            // The whole log at once, over and over.
            _ => events_url_of(&base, "", 1000),
        };
        http.get(url).bearer_auth(token(who))
    })
    .await;
    let flood_took = started.elapsed();
    let line = watch.finish(96.0).await;
    eprintln!("compliance reads for {flood_took:?}: {tally:?}; {line}");
    assert!(tally.get(&200).copied().unwrap_or(0) >= 2, "{tally:?}");
    assert!(tally.get(&400).copied().unwrap_or(0) >= 10, "{tally:?}");
    assert!(
        tally.get(&503).copied().unwrap_or(0) >= 1,
        "24 parallel readers against 2 read slots: some are refused: {tally:?}"
    );
    // After the flood the budget is whole again: a page reads at once.
    let resp = reqwest::get(events_url_of(&node.http(), "", 10))
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401, "no token, no events");
    let (s, _) = api
        .call(
            Method::GET,
            "/v1/admin/compliance/events?limit=10",
            Some("auditor"),
            None,
        )
        .await;
    assert_eq!(s, 200);
}

#[tokio::test]
async fn slow_readers_of_compliance_pages_hold_their_read_slots_until_the_page_is_sent() {
    // 600 messages of 8,000 characters: a page of every event is ~5 MB, more than the
    // sockets' buffers, so a reader that stops reading keeps the rest of it unsent.
    let (node, api, _carol, _g) = seeded(opts(), 600, 7900).await;
    // Both read slots (`compliance.max_concurrent_reads` = 2) taken by readers that read the
    // status line and then nothing more.
    let mut stalled = Vec::new();
    for _ in 0..2 {
        stalled.push(stalled_reader(&node).await);
    }
    // A page of ten as an ordinary administrator reads it.
    let page = || {
        api.call(
            Method::GET,
            "/v1/admin/compliance/events?limit=10",
            Some("boss"),
            None,
        )
    };
    let (s, v) = page().await;
    assert_eq!(s, 503, "the pages still being sent hold the two slots: {v}");
    assert_eq!(code(&v), "unavailable");
    // The slow readers give up: the slots come back.
    drop(stalled);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (s, _) = page().await;
        if s == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "the slots never came back ({s})");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // And an innocent pair still chats.
    let mut alice = Client::connect(&node, "alice").await;
    let mut bob = Client::connect(&node, "bob").await;
    let ack = alice.send_dm("bob", "still-here", "still here").await;
    assert!(matches!(ack, protocol::ServerFrame::Ack { .. }), "{ack:?}");
    assert_eq!(bob.next_message().await.body, "still here");
}

/// A raw HTTP/1.1 connection with a tiny receive buffer that asks for a page of 1000 events,
/// reads the response's first bytes (status 200) and then stops reading.
async fn stalled_reader(node: &Node) -> tokio::net::TcpStream {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr: std::net::SocketAddr = node.http()["http://".len()..].parse().unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(addr).await.unwrap();
    let request = format!(
        "GET /v1/admin/compliance/events?limit=1000 HTTP/1.1\r\nHost: chatd\r\n\
         Authorization: Bearer {}\r\n\r\n",
        token("auditor")
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut head = [0u8; 512];
    let n = stream.read(&mut head).await.unwrap();
    let text = String::from_utf8_lossy(&head[..n]);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    stream
}

fn events_url_of(base: &str, after: &str, limit: usize) -> String {
    format!("{base}/v1/admin/compliance/events?after={after}&limit={limit}")
}

/// Every event of the log through the API (pages of 1000, read until caught up).
async fn log_len(api: &Api) -> u64 {
    let mut after = String::new();
    let mut n = 0u64;
    loop {
        let resp = api
            .http
            .get(format!(
                "{}/v1/admin/compliance/events?limit=1000&after={after}",
                api.base
            ))
            .bearer_auth(token("boss"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        let more = resp.headers()["chatd-has-more"] == "true";
        after = resp.headers()["chatd-next-cursor"]
            .to_str()
            .unwrap()
            .to_owned();
        n += resp.text().await.unwrap().lines().count() as u64;
        if !more {
            return n;
        }
    }
}

#[tokio::test]
async fn a_flood_of_export_starts_runs_one_job_at_a_time_and_exports_each_event_once() {
    // Small batches with a pause between them: the job runs for a few seconds, so the flood
    // of starts meets it running.
    let (node, api, _carol, _g) = seeded(
        opts()
            .env("CHATD_COMPLIANCE__BATCH_EVENTS", 50)
            .env("CHATD_TEST_EXPORT_BATCH_DELAY_MS", 150),
        400,
        512,
    )
    .await;

    let watch = Watch::start(&node).await;
    let http = reqwest::Client::new();
    let base = node.http();
    let tally = flood(12, Duration::from_secs(3), &[200, 409, 503], move |w, _| {
        let who = if w % 2 == 0 { "auditor" } else { "boss" };
        if w % 3 == 0 {
            // Pull reads beside the job: they share its read slots.
            http.get(events_url_of(&base, "", 1000))
                .bearer_auth(token(who))
        } else {
            http.post(format!("{base}/v1/admin/compliance/exports"))
                .bearer_auth(token(who))
        }
    })
    .await;
    let line = watch.finish(96.0).await;
    eprintln!("export starts and reads: {tally:?}; {line}");
    assert!(
        tally.get(&409).copied().unwrap_or(0) >= 5,
        "starts while the job runs are refused: {tally:?}"
    );

    // Nothing is left recorded as running without a process running it; every event of the
    // log was exported exactly once (the jobs continue each other), each batch once.
    let status = export_done(&api, Duration::from_secs(60)).await;
    let events = log_len(&api).await;
    // Events committed after the last job (the chat above is in the log too) are not in it:
    // one more job catches up.
    let (s, b) = api
        .call(
            Method::POST,
            "/v1/admin/compliance/exports",
            Some("auditor"),
            None,
        )
        .await;
    assert_eq!(s, 200, "{b}");
    let status = if status["events"].as_u64() == Some(events) {
        status
    } else {
        export_done(&api, Duration::from_secs(60)).await
    };
    assert_eq!(status["events"].as_u64(), Some(events), "{status}");
    let dir = node.data_dir.join("compliance");
    let files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(files.iter().all(|f| !f.ends_with(".partial")), "{files:?}");
    assert_eq!(
        files.len() as u64,
        status["batches"].as_u64().unwrap(),
        "{files:?}"
    );
}

#[tokio::test]
async fn a_flood_of_retention_dry_runs_and_passes_gets_503_and_deletes_nothing() {
    let (node, api, mut carol, g) = seeded(opts(), 1000, 256).await;

    let watch = Watch::start(&node).await;
    let http = reqwest::Client::new();
    let base = node.http();
    let far = 4_000_000_000_000u64; // the year 2096: every message is old by then
    let many: Vec<String> = (0..1001).map(|i| format!("group:g{i}")).collect();
    let tally = flood(16, Duration::from_secs(3), &[200, 400, 503], move |w, n| {
        let req = |path: &str, body: Value| {
            http.post(format!("{base}/v1/admin/retention/{path}"))
                .bearer_auth(token("boss"))
                .json(&body)
        };
        match (w + n) % 5 {
            // The longest range there is: everything would go.
            0 | 1 => req(
                "dry-run",
                json!({"policies": {"company": {"message_age_secs": 1}}, "as_of": far}),
            ),
            // A pass with the saved policies (none: it keeps everything).
            2 => req("run", json!({})),
            // Too many conversations; an age past 100 years.
            3 => req("dry-run", json!({"conversations": many})),
            _ => req(
                "dry-run",
                json!({"policies": {"company": {"message_age_secs": u64::MAX / 2}}}),
            ),
        }
    })
    .await;
    let line = watch.finish(96.0).await;
    eprintln!("retention dry runs and passes: {tally:?}; {line}");
    assert!(tally.get(&200).copied().unwrap_or(0) >= 2, "{tally:?}");
    assert!(tally.get(&400).copied().unwrap_or(0) >= 10, "{tally:?}");
    assert!(
        tally.get(&503).copied().unwrap_or(0) >= 1,
        "one pass or dry run at a time: {tally:?}"
    );
    // The dry runs wrote nothing: every message is still there.
    let conv = protocol::ConvId::parse(&format!("group:{g}")).unwrap();
    let kept = carol.sync_all(&conv, 0, 500).await;
    assert_eq!(kept.len(), 1000);
    // And a dry run now says all of them would go.
    let (s, report) = api
        .call(
            Method::POST,
            "/v1/admin/retention/dry-run",
            Some("boss"),
            Some(json!({"policies": {"company": {"message_age_secs": 1}}, "as_of": far})),
        )
        .await;
    assert_eq!(s, 200, "{report}");
    let entry = report["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["conv"] == conv.as_str())
        .unwrap();
    assert_eq!(entry["messages"], 1000, "{report}");
}
