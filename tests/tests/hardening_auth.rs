//! Hardening of sign-in, uploads and revocation (issue 10, items 3, 5 and 6), attacked end to
//! end against a real node: a flood of sign-ins cannot grow memory or starve chat, trickling
//! uploads cannot hold every upload slot, and a revoked token stops working everywhere, also
//! after a restart and on another node of a cluster.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use reqwest::Method;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use testkit::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn login(api: &Api, user: &str, password: &str) -> (u16, Value) {
    api.call(
        Method::POST,
        "/v1/login",
        None,
        Some(json!({"user": user, "password": password})),
    )
    .await
}

/// Signs in, retrying while the hashing workers are busy (503).
async fn login_ok(api: &Api, user: &str, password: &str) -> String {
    for _ in 0..20 {
        let (s, b) = login(api, user, password).await;
        if s == 503 {
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        }
        assert_eq!(s, 200, "{b}");
        return b["token"].as_str().unwrap().to_owned();
    }
    panic!("sign-in stayed busy");
}

#[tokio::test]
async fn a_flood_of_sign_ins_grows_memory_little_and_chat_keeps_flowing() {
    // The per-address limit would refuse most of the flood from one address at once: lifted
    // here, so the hashing budget itself is what is attacked.
    let node = Node::start_with(admin_opts().env(
        "CHATD_AUTH__LOGIN_ATTEMPTS_PER_MINUTE_PER_ADDRESS",
        1_000_000,
    ));
    let api = Api::new(&node);
    let alice = Client::connect(&node, "alice").await;
    let bob = Client::connect(&node, "bob").await;
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let chat = tokio::spawn(round_trips_until(alice, bob, stop.clone()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = node.rss_kib();
    let sampler = rss_peak_until(node.pid(), stop.clone());
    let started = Instant::now();
    let http = reqwest::Client::new();
    let attempts: Vec<_> = (0..200)
        .map(|i| {
            let http = http.clone();
            let url = format!("{}/v1/login", node.http());
            tokio::spawn(async move {
                let resp = http
                    .post(url)
                    .json(&json!({"user": format!("ghost{i}"), "password": "guess1234"}))
                    .timeout(Duration::from_secs(60))
                    .send()
                    .await
                    .unwrap();
                let status = resp.status().as_u16();
                let body: Value = resp.json().await.unwrap_or(Value::Null);
                (status, body)
            })
        })
        .collect();
    let mut refused = 0;
    let mut busy = 0;
    for a in attempts {
        let (status, body) = a.await.unwrap();
        match status {
            401 => {
                assert_eq!(code(&body), "unauthorized");
                refused += 1;
            }
            503 => {
                assert_eq!(code(&body), "unavailable");
                assert_eq!(body["error"]["retry"], true, "{body}");
                busy += 1;
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    let flood = started.elapsed();
    // Let the chat run a little past the flood, then stop.
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop_tx.send(true).unwrap();
    let peak = sampler.await.unwrap();
    let rtts = chat.await.unwrap();
    let (p50, max) = p50_max(&rtts);
    let grew_mib = peak.saturating_sub(before) as f64 / 1024.0;
    eprintln!(
        "200 sign-ins in {flood:?}: {refused} checked (401), {busy} refused busy (503); \
         RSS {before} KiB -> peak {peak} KiB (+{grew_mib:.1} MiB); chat during the flood: \
         {} round trips, p50 {p50:?}, max {max:?}",
        rtts.len()
    );
    assert!(refused >= 2, "some attempts were checked");
    assert_eq!(refused + busy, 200);
    assert!(grew_mib < 64.0, "RSS grew by {grew_mib:.1} MiB");
    assert!(rtts.len() >= 5, "chat kept flowing");
    assert!(
        max < Duration::from_secs(2),
        "a chat round trip took {max:?}"
    );

    // The node still signs in a real user afterwards.
    api.create_account(
        "boss",
        json!({"id": "lin", "name": "Lin", "password": "letmein42"}),
    )
    .await;
    login_ok(&api, "lin", "letmein42").await;
}

#[tokio::test]
async fn sign_ins_are_limited_per_client_address() {
    let node = Node::start_with(
        NodeOpts::default()
            .env("CHATD_AUTH__LOGIN_ATTEMPTS_PER_MINUTE_PER_ADDRESS", 3)
            .env("CHATD_AUTH__TRUSTED_PROXIES", r#"["127.0.0.1"]"#),
    );
    let http = reqwest::Client::new();
    let attempt = |user: String, forwarded: &'static str| {
        let http = http.clone();
        let url = format!("{}/v1/login", node.http());
        async move {
            let resp = http
                .post(url)
                .header("x-forwarded-for", forwarded)
                .json(&json!({"user": user, "password": "guess1234"}))
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            (status, resp.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    // Behind the trusted proxy (127.0.0.1), X-Forwarded-For names the client: three
    // attempts with three different user ids, then the address is refused.
    for i in 0..3 {
        let (s, b) = attempt(format!("u{i}"), "203.0.113.7").await;
        assert_eq!(s, 401, "{b}");
    }
    let started = Instant::now();
    let (s, b) = attempt("u9".into(), "203.0.113.7").await;
    assert_eq!((s, code(&b)), (429, "rate_limited"), "{b}");
    assert_eq!(b["error"]["retry"], true);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "refused without hashing"
    );
    // Another client behind the same proxy is not affected.
    let (s, b) = attempt("u0".into(), "198.51.100.1").await;
    assert_eq!(s, 401, "{b}");
}

#[tokio::test]
async fn unknown_users_and_wrong_passwords_get_the_same_answer_in_similar_time() {
    let node = Node::start_with(admin_opts());
    let api = Api::new(&node);
    api.create_account(
        "boss",
        json!({"id": "lin", "name": "Lin", "password": "letmein42"}),
    )
    .await;
    // Warm both hashing workers (the first hash of each allocates its memory), then
    // alternate the two cases so that load on the machine hits both alike.
    for user in ["lin", "nobody-here", "lin", "nobody-here"] {
        let _ = login(&api, user, "wrong pass 1").await;
    }
    let (mut wrong, mut unknown) = (Duration::ZERO, Duration::ZERO);
    let mut bodies = Vec::new();
    for _ in 0..5 {
        for (user, total) in [("lin", &mut wrong), ("nobody-here", &mut unknown)] {
            let t = Instant::now();
            let (s, b) = login(&api, user, "wrong pass 1").await;
            *total += t.elapsed();
            assert_eq!(s, 401, "{b}");
            bodies.push(b);
        }
    }
    assert!(bodies.windows(2).all(|w| w[0] == w[1]), "the same answer");
    let ratio = wrong.as_secs_f64() / unknown.as_secs_f64();
    eprintln!("5 wrong passwords {wrong:?}, 5 unknown ids {unknown:?} (ratio {ratio:.2})");
    assert!((0.5..2.0).contains(&ratio), "{wrong:?} vs {unknown:?}");
}

/// Opens a WebSocket with `token` expecting a refusal; returns its HTTP status.
async fn refused_status(node: &Node, token: &str) -> u16 {
    let url = format!("ws://{}/ws", node.addr);
    match Client::try_connect_raw(&url, Some(token)).await {
        Ok(()) => 101,
        Err(r) => r.status,
    }
}

async fn get_groups(api: &Api, token: &str) -> u16 {
    api.call_token(Method::GET, "/v1/groups", Some(token), None)
        .await
        .0
}

#[tokio::test]
async fn every_revocation_path_refuses_the_old_token_also_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let opts = admin_opts();
    let mut node = Node::spawn(dir.path(), opts.clone());
    let api = Api::new(&node);
    api.create_account(
        "boss",
        json!({"id": "lin", "name": "Lin", "password": "letmein42"}),
    )
    .await;

    // 1. Signing out a device revokes that device's token, and only it.
    let phone_token = login_ok(&api, "lin", "letmein42").await;
    let laptop_token = login_ok(&api, "lin", "letmein42").await;
    assert_ne!(phone_token, laptop_token);
    let mut phone = Client::connect_token(&node, "lin", &phone_token).await;
    let mut laptop = Client::connect_token(&node, "lin", &laptop_token).await;
    let (s, _) = api
        .call_token(
            Method::DELETE,
            &format!("/v1/me/sessions/{}", laptop.session_id),
            Some(&phone_token),
            None,
        )
        .await;
    assert_eq!(s, 204);
    assert_eq!(laptop.expect_close().await, protocol::close::SIGNED_OUT);
    assert_eq!(refused_status(&node, &laptop_token).await, 401);
    assert_eq!(get_groups(&api, &laptop_token).await, 401);
    assert_eq!(get_groups(&api, &phone_token).await, 200);
    ack_seq(&phone.send_dm("boss", "p1", "phone still works").await);

    // The same for a user known only from tokens (no directory account, no `sid` claim): the
    // token is named by its digest.
    let carol_a = token_with_exp("carol", now() + 3000);
    let carol_b = token_with_exp("carol", now() + 3001);
    let _carol_1 = Client::connect_token(&node, "carol", &carol_a).await;
    let mut carol_2 = Client::connect_token(&node, "carol", &carol_b).await;
    let (s, _) = api
        .call_token(
            Method::DELETE,
            &format!("/v1/me/sessions/{}", carol_2.session_id),
            Some(&carol_a),
            None,
        )
        .await;
    assert_eq!(s, 204);
    assert_eq!(carol_2.expect_close().await, protocol::close::SIGNED_OUT);
    assert_eq!(refused_status(&node, &carol_b).await, 401);
    assert_eq!(get_groups(&api, &carol_a).await, 200);

    // 2. An administrator's disconnect revokes on request, for a token-only user too; without
    // the flag the client may come back.
    let dan_token = token("dan");
    let mut dan = Client::connect_token(&node, "dan", &dan_token).await;
    let (s, _) = api
        .call(
            Method::POST,
            "/v1/admin/users/dan/disconnect",
            Some("boss"),
            None,
        )
        .await;
    assert_eq!(s, 204);
    assert_eq!(dan.expect_close().await, protocol::close::SIGNED_OUT);
    let mut dan = Client::connect_token(&node, "dan", &dan_token).await;
    let (s, _) = api
        .call(
            Method::POST,
            "/v1/admin/users/dan/disconnect?revoke=true",
            Some("boss"),
            None,
        )
        .await;
    assert_eq!(s, 204);
    assert_eq!(dan.expect_close().await, protocol::close::SIGNED_OUT);
    assert_eq!(refused_status(&node, &dan_token).await, 401);
    // A token issued after the revocation works (cut-offs have one-second resolution).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let dan_new = token("dan");
    assert_eq!(get_groups(&api, &dan_new).await, 200);

    // 3. A password change revokes every older token and answers a fresh one.
    let started = Instant::now();
    let (s, b) = api
        .call_token(
            Method::PUT,
            "/v1/users/lin/password",
            Some(&phone_token),
            Some(json!({"password": "newpass42", "current": "letmein42"})),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    let fresh = b["token"].as_str().unwrap().to_owned();
    assert!(b["expires_at"].as_u64().unwrap() > now());
    assert_eq!(phone.expect_close().await, protocol::close::SIGNED_OUT);
    eprintln!("password change and close in {:?}", started.elapsed());
    assert_eq!(refused_status(&node, &phone_token).await, 401);
    assert_eq!(get_groups(&api, &phone_token).await, 401);
    let mut lin = Client::connect_token(&node, "lin", &fresh).await;
    assert_eq!(get_groups(&api, &fresh).await, 200);

    // 4. An administrator's reset revokes them too (204: the administrator gets no token).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (s, b) = api
        .call(
            Method::PUT,
            "/v1/users/lin/password",
            Some("boss"),
            Some(json!({"password": "reset4242"})),
        )
        .await;
    assert_eq!(s, 204, "{b}");
    assert_eq!(lin.expect_close().await, protocol::close::SIGNED_OUT);
    assert_eq!(refused_status(&node, &fresh).await, 401);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let after_reset = login_ok(&api, "lin", "reset4242").await;
    assert_eq!(get_groups(&api, &after_reset).await, 200);

    // 5. Revocations survive a restart.
    assert!(node.terminate(Duration::from_secs(10)));
    let node = Node::spawn(dir.path(), opts);
    let api = Api::new(&node);
    for (what, t) in [
        ("signed-out device", &laptop_token),
        ("signed-out token-only device", &carol_b),
        ("disconnected with revoke", &dan_token),
        ("before a password change", &phone_token),
        ("before a password reset", &fresh),
    ] {
        assert_eq!(refused_status(&node, t).await, 401, "{what}");
        assert_eq!(get_groups(&api, t).await, 401, "{what}");
    }
    for t in [&carol_a, &dan_new, &after_reset] {
        assert_eq!(get_groups(&api, t).await, 200);
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test]
async fn tokens_from_chatd_token_name_their_session_and_can_be_signed_out() {
    let node = Node::start();
    let api = Api::new(&node);
    let minted = std::process::Command::new(chatd_bin())
        .args(["token", "--user", "erin", "--data-dir"])
        .arg(&node.data_dir)
        .env("CHATD_AUTH__JWT_SECRET", SECRET)
        .output()
        .unwrap();
    assert!(minted.status.success());
    let erin_token = String::from_utf8(minted.stdout).unwrap().trim().to_owned();
    let payload = erin_token.split('.').nth(1).unwrap();
    let claims = decode_b64url(payload);
    assert_eq!(claims["sid"].as_str().map(str::len), Some(32), "{claims}");

    let mut erin = Client::connect_token(&node, "erin", &erin_token).await;
    let other = token("erin");
    let (_, sessions) = api
        .call_token(Method::GET, "/v1/me/sessions", Some(&other), None)
        .await;
    assert_eq!(sessions[0]["token_id"], claims["sid"], "{sessions}");
    let (s, _) = api
        .call_token(
            Method::DELETE,
            &format!("/v1/me/sessions/{}", erin.session_id),
            Some(&other),
            None,
        )
        .await;
    assert_eq!(s, 204);
    assert_eq!(erin.expect_close().await, protocol::close::SIGNED_OUT);
    assert_eq!(refused_status(&node, &erin_token).await, 401);
    assert_eq!(get_groups(&api, &other).await, 200);
}

fn decode_b64url(s: &str) -> Value {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut bits = 0u32;
    let mut n = 0;
    let mut out = Vec::new();
    for c in s.bytes() {
        let v = ALPHABET.iter().position(|a| *a == c).unwrap() as u32;
        bits = (bits << 6) | v;
        n += 6;
        if n >= 8 {
            n -= 8;
            out.push((bits >> n) as u8);
            bits &= (1 << n) - 1;
        }
    }
    serde_json::from_slice(&out).unwrap()
}

/// Two nodes sharing the test Redis (each with its own embedded store): a revocation made
/// on one node closes the sessions on the other within a second, and the other node refuses
/// the token from then on.
#[tokio::test]
async fn revocations_reach_every_node_of_a_cluster_within_a_second() {
    let redis = service_env("CHATD_TEST_REDIS_URL");
    let run = unique_keyspace("revoke");
    let cluster = |i: usize| {
        admin_opts()
            .env("CHATD_ROUTER__BACKEND", "redis")
            .env("CHATD_ROUTER__REDIS_URL", &redis)
            .env("CHATD_ROUTER__NODE_ID", format!("{run}-n{i}"))
            .env("CHATD_ROUTER__HEARTBEAT_MS", 200)
            .env("CHATD_ROUTER__RECONCILE_MS", 1000)
    };
    let a = Node::start_with(cluster(0));
    let b = Node::start_with(cluster(1));
    let api_a = Api::new(&a);
    let user = format!("fay{}", std::process::id());

    // A device signed out through node A, connected to node B.
    let t1 = token_with_exp(&user, now() + 3000);
    let t2 = token_with_exp(&user, now() + 3001);
    let mut on_b = Client::connect_token(&b, &user, &t2).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let (s, _) = api_a
        .call_token(
            Method::DELETE,
            &format!("/v1/me/sessions/{}", on_b.session_id),
            Some(&t1),
            None,
        )
        .await;
    assert_eq!(s, 204);
    assert_eq!(on_b.expect_close().await, protocol::close::SIGNED_OUT);
    let took = started.elapsed();
    assert!(took < Duration::from_secs(1), "took {took:?}");
    assert_eq!(refused_status(&b, &t2).await, 401);
    assert_eq!(refused_status(&a, &t2).await, 401);

    // An administrator on node A revokes every token; node B closes and refuses.
    let mut on_b = Client::connect_token(&b, &user, &t1).await;
    let started = Instant::now();
    let (s, _) = api_a
        .call(
            Method::POST,
            &format!("/v1/admin/users/{user}/disconnect?revoke=true"),
            Some("boss"),
            None,
        )
        .await;
    assert_eq!(s, 204);
    assert_eq!(on_b.expect_close().await, protocol::close::SIGNED_OUT);
    let took = started.elapsed();
    eprintln!("revocation reached the other node in {took:?}");
    assert!(took < Duration::from_secs(1), "took {took:?}");
    assert_eq!(refused_status(&b, &t1).await, 401);
}

/// Reads an HTTP/1.1 response from `buf` once complete: status and body.
fn parse_response(buf: &[u8]) -> Option<(u16, String)> {
    let text = String::from_utf8_lossy(buf);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    (body.len() >= len).then(|| (status, body.to_owned()))
}

/// An upload that declares 100 kB and sends one byte every 300 ms; returns the status and
/// body of the answer and when it came.
async fn trickle(addr: SocketAddr, user: &str) -> (u16, String, Duration) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /v1/files?name=slow.txt HTTP/1.1\r\nHost: chatd\r\nAuthorization: Bearer {}\r\n\
         Content-Type: text/plain\r\nContent-Length: 100000\r\n\r\n",
        token(user)
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(300));
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let give_up = tokio::time::sleep(Duration::from_secs(30));
    tokio::pin!(give_up);
    loop {
        tokio::select! {
            r = s.read(&mut chunk) => match r {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some((status, body)) = parse_response(&buf) {
                        return (status, body, started.elapsed());
                    }
                }
            },
            _ = tick.tick() => {
                let _ = s.write_all(b"x").await;
            }
            _ = &mut give_up => panic!("{user}: no answer to a trickling upload"),
        }
    }
    match parse_response(&buf) {
        Some((status, body)) => (status, body, started.elapsed()),
        None => (0, String::new(), started.elapsed()),
    }
}

fn upload_opts(grace_ms: u64) -> NodeOpts {
    NodeOpts::default().env("CHATD_FILES__UPLOAD_GRACE_MS", grace_ms)
}

#[tokio::test]
async fn one_trickling_user_gets_their_share_and_a_408_and_others_upload() {
    let grace = Duration::from_millis(1500);
    let node = Node::start_with(upload_opts(grace.as_millis() as u64));
    let api = Api::new(&node);
    let addr = node.addr;
    let tricklers: Vec<_> = (0..8)
        .map(|_| tokio::spawn(async move { trickle(addr, "tom").await }))
        .collect();
    tokio::time::sleep(Duration::from_millis(400)).await;
    // Everyone else uploads at once and normally.
    let t = Instant::now();
    let (s, b) = api
        .upload("ivy", "fine.txt", "text/plain", vec![b'a'; 50_000])
        .await;
    assert_eq!(s, 201, "{b}");
    let innocent = t.elapsed();
    let mut timeouts = 0;
    let mut shares = 0;
    for tr in tricklers {
        let (status, body, after) = tr.await.unwrap();
        match status {
            408 => {
                let b: Value = serde_json::from_str(&body).unwrap();
                assert_eq!(code(&b), "timeout", "{body}");
                assert!(
                    after < grace + Duration::from_secs(3),
                    "408 after {after:?}"
                );
                timeouts += 1;
            }
            429 => {
                assert!(body.contains("max_concurrent_uploads_per_user"), "{body}");
                shares += 1;
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    eprintln!(
        "innocent upload in {innocent:?}; {timeouts} tricklers cut with 408, {shares} refused 429"
    );
    assert_eq!((timeouts, shares), (2, 6));
    assert!(innocent < Duration::from_secs(2), "{innocent:?}");
}

#[tokio::test]
async fn trickling_users_holding_every_slot_are_cut_off_and_the_slots_come_back() {
    let grace = Duration::from_millis(1500);
    let node = Node::start_with(upload_opts(grace.as_millis() as u64));
    let api = Api::new(&node);
    let addr = node.addr;
    // Four users with two uploads each hold all eight slots.
    let tricklers: Vec<_> = (0..8)
        .map(|i| tokio::spawn(async move { trickle(addr, &format!("t{}", i % 4)).await }))
        .collect();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let started = Instant::now();
    let (s, b) = api
        .upload("ivy", "fine.txt", "text/plain", vec![b'a'; 1000])
        .await;
    assert_eq!((s, code(&b)), (503, "unavailable"), "{b}");
    assert_eq!(b["error"]["retry"], true);
    for tr in tricklers {
        let (status, body, after) = tr.await.unwrap();
        assert_eq!(status, 408, "{body}");
        assert!(
            after < grace + Duration::from_secs(3),
            "408 after {after:?}"
        );
    }
    // The slots are free again: the retry succeeds.
    let (s, b) = api
        .upload("ivy", "fine.txt", "text/plain", vec![b'a'; 1000])
        .await;
    assert_eq!(s, 201, "{b}");
    eprintln!("slots back after {:?}", started.elapsed());
}
