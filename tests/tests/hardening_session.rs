//! Hardening of a session (issue 10, items 2, 4 and 7): replies that grow with data are
//! bounded in bytes and memory, `read`/`typing` floods are coalesced, and broken WebSocket
//! input and slow consumers get the documented close codes.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use futures_util::{SinkExt, StreamExt};
use protocol::{close, ClientFrame, ConvId, GroupId, MessageKind, Seq, ServerFrame, Target};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use testkit::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;

// ---------------------------------------------------------------------------------------
// Raw WebSocket frames, written by hand.

/// Opens a WebSocket over a plain TCP stream (no client library), returning the stream and
/// whatever the server sent after its headers (usually `hello`).
async fn raw_ws(node: &Node, user: &str) -> (TcpStream, Vec<u8>) {
    let mut s = TcpStream::connect(node.addr).await.unwrap();
    let req = format!(
        "GET /ws?token={} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        token(user),
        node.addr
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(WAIT, s.read(&mut chunk))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed during the handshake");
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            assert!(head.starts_with("HTTP/1.1 101"), "{head}");
            return (s, buf[end + 4..].to_vec());
        }
    }
}

/// One frame: `first` is FIN/RSV/opcode; masked with a fixed key when `masked`.
fn frame(first: u8, masked: bool, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    let mask_bit = if masked { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(mask_bit | n as u8),
        n if n < 65536 => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    if masked {
        let key = [0x11, 0x22, 0x33, 0x44];
        out.extend_from_slice(&key);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    } else {
        out.extend_from_slice(payload);
    }
    out
}

/// Reads server frames until a close frame and returns its code (`None`: the connection
/// ended without one).
async fn read_close_code(s: &mut TcpStream, mut buf: Vec<u8>) -> Option<u16> {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut chunk = vec![0u8; 65536];
    loop {
        // Parse whole frames in `buf`.
        while buf.len() >= 2 {
            let opcode = buf[0] & 0x0f;
            let (len, start) = match buf[1] & 0x7f {
                126 if buf.len() >= 4 => (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4),
                127 if buf.len() >= 10 => (
                    u64::from_be_bytes(buf[2..10].try_into().unwrap()) as usize,
                    10,
                ),
                126 | 127 => break,
                n => (n as usize, 2),
            };
            if buf.len() < start + len {
                break;
            }
            if opcode == 8 {
                let p = &buf[start..start + len];
                return Some(if p.len() >= 2 {
                    u16::from_be_bytes([p[0], p[1]])
                } else {
                    1005
                });
            }
            buf.drain(..start + len);
        }
        let n = match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
            Err(_) => panic!("no close within {WAIT:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => return None,
            Ok(Ok(n)) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn ping_ok(c: &mut Client) -> Duration {
    let t = Instant::now();
    c.send(&ClientFrame::Ping {
        rid: Some("alive".into()),
    })
    .await;
    c.recv_until(|f| matches!(f, ServerFrame::Pong { .. }))
        .await;
    t.elapsed()
}

#[tokio::test]
async fn broken_websocket_frames_get_1002_1007_and_1009() {
    let node = Node::start();
    let ping = br#"{"type":"ping"}"#;
    let big = vec![b'x'; 70_000];
    // Just over the default limit (64 KiB): the rest of it stays unread in the node's
    // receive buffer when the session closes (found by the `session` fuzz target).
    let just_over = vec![b'x'; 64 * 1024 + 1];
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        (
            "invalid UTF-8 in a text frame",
            frame(0x81, true, &[0x7b, 0xff, 0xfe, 0x7d]),
            close::INVALID_PAYLOAD,
        ),
        (
            "invalid UTF-8 across fragments",
            [frame(0x01, true, &[b'"', 0xe6]), frame(0x80, true, b"AB")].concat(),
            close::INVALID_PAYLOAD,
        ),
        (
            "unmasked client frame",
            frame(0x81, false, ping),
            close::PROTOCOL_ERROR,
        ),
        (
            "reserved data opcode",
            frame(0x83, true, ping),
            close::PROTOCOL_ERROR,
        ),
        (
            "reserved control opcode",
            frame(0x8b, true, b""),
            close::PROTOCOL_ERROR,
        ),
        (
            "reserved bit RSV1",
            frame(0xc1, true, ping),
            close::PROTOCOL_ERROR,
        ),
        (
            "reserved bit RSV3",
            frame(0x91, true, ping),
            close::PROTOCOL_ERROR,
        ),
        (
            "continuation without a start",
            frame(0x80, true, ping),
            close::PROTOCOL_ERROR,
        ),
        (
            "new message inside a fragmented one",
            [frame(0x01, true, b"{\"ty"), frame(0x81, true, ping)].concat(),
            close::PROTOCOL_ERROR,
        ),
        (
            "control frame too long",
            frame(0x89, true, &[0u8; 126]),
            close::PROTOCOL_ERROR,
        ),
        (
            "fragmented control frame",
            frame(0x09, true, b"p"),
            close::PROTOCOL_ERROR,
        ),
        (
            "frame over the limit",
            frame(0x81, true, &big),
            close::TOO_LARGE,
        ),
        (
            "frame just over the limit",
            frame(0x81, true, &just_over),
            close::TOO_LARGE,
        ),
        (
            "binary frame just over the limit, then more frames",
            [frame(0x82, true, &just_over), frame(0x81, true, ping)].concat(),
            close::TOO_LARGE,
        ),
    ];
    for (what, bytes, expected) in cases {
        let (mut s, rest) = raw_ws(&node, "ann").await;
        // A well-formed frame first: the session works until the violation.
        s.write_all(&frame(0x81, true, ping)).await.unwrap();
        s.write_all(&bytes).await.unwrap();
        if expected == close::TOO_LARGE {
            // A client that reads its socket a little later must still find the close frame:
            // the node must not reset the connection under it (the rest of the oversized
            // frame is unread in the node's receive buffer).
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let code = read_close_code(&mut s, rest).await;
        assert_eq!(code, Some(expected), "{what}");
    }
    // The node keeps serving with normal latency.
    let mut c = Client::connect(&node, "bob").await;
    assert!(ping_ok(&mut c).await < Duration::from_secs(2));
}

#[tokio::test]
async fn a_client_that_stops_reading_gets_close_4000() {
    let node = Node::start_with(
        NodeOpts::default()
            .env("CHATD_SERVER__OUTBOUND_QUEUE", 32)
            .unthrottled_sends(),
    );
    let api = Api::new(&node);
    api.touch("victim").await;
    // The victim's socket has a small receive buffer, so the flood backs up into the node.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(8 * 1024).unwrap();
    let stream = sock.connect(node.addr).await.unwrap();
    let url = format!("ws://{}/ws?token={}", node.addr, token("victim"));
    let (mut victim, _) = tokio_tungstenite::client_async(url, stream).await.unwrap();
    match victim.next().await {
        Some(Ok(WsMessage::Text(t))) => assert!(t.contains("hello"), "{t}"),
        other => panic!("{other:?}"),
    }
    // The victim now reads nothing while a flood of long messages is delivered to it.
    let mut flooder = Client::connect(&node, "flooder").await;
    let body = "x".repeat(7_900);
    let overflowed = Arc::new(AtomicBool::new(false));
    let stop = overflowed.clone();
    let flood = tokio::spawn(async move {
        let mut sent = 0u32;
        while !stop.load(Ordering::Relaxed) && sent < 4_000 {
            for _ in 0..50 {
                sent += 1;
                let f = ClientFrame::Send(protocol::SendFrame {
                    rid: None,
                    client_msg_id: format!("f{sent}"),
                    to: Target::User(protocol::UserId::new("victim")),
                    kind: MessageKind::Text,
                    body: body.clone(),
                    attachment: None,
                    mentions: vec![],
                    reply_to: None,
                });
                flooder.send(&f).await;
            }
            // Keep the flooder's own acks flowing.
            while flooder.try_recv(Duration::from_millis(1)).await.is_some() {}
        }
        sent
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if node
            .log_lines()
            .iter()
            .any(|l| l.contains("closing slow consumer"))
        {
            break;
        }
        assert!(Instant::now() < deadline, "the queue never overflowed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    overflowed.store(true, Ordering::Relaxed);
    // The victim resumes reading: what was already on its way, then close 4000.
    let mut messages = 0;
    let code = loop {
        match tokio::time::timeout(WAIT, victim.next()).await.unwrap() {
            Some(Ok(WsMessage::Close(Some(c)))) => break Some(u16::from(c.code)),
            Some(Ok(WsMessage::Close(None))) => break None,
            Some(Ok(_)) => messages += 1,
            Some(Err(e)) => panic!("error instead of a close frame after {messages}: {e}"),
            None => panic!("connection ended without a close frame after {messages}"),
        }
    };
    assert_eq!(code, Some(close::SLOW_CONSUMER), "after {messages} frames");
    let sent = flood.await.unwrap();
    eprintln!("slow consumer: {sent} sent, {messages} frames read before close 4000");
    // Nothing was lost: the victim reconnects and syncs everything.
    let mut again = Client::connect(&node, "victim").await;
    assert!(ping_ok(&mut again).await < Duration::from_secs(2));
}

// ---------------------------------------------------------------------------------------
// Replies bounded in bytes.

fn sync_frame(rid: &str, cursors: BTreeMap<ConvId, Seq>) -> ClientFrame {
    ClientFrame::Sync {
        rid: Some(rid.to_owned()),
        cursors,
        limit: None,
    }
}

async fn pipelined_dms(c: &mut Client, to: &str, n: usize, body: &str, tag: &str) {
    for i in 0..n {
        c.send(&ClientFrame::Send(protocol::SendFrame {
            rid: Some(format!("{tag}{i}")),
            client_msg_id: format!("{tag}{i}"),
            to: Target::User(protocol::UserId::new(to)),
            kind: MessageKind::Text,
            body: body.to_owned(),
            attachment: None,
            mentions: vec![],
            reply_to: None,
        }))
        .await;
    }
    let last = format!("{tag}{}", n - 1);
    c.recv_until(|f| is_reply_to(f, &last)).await;
}

#[tokio::test]
async fn sync_and_history_pages_stop_at_the_byte_budget() {
    let node = Node::start_with(
        NodeOpts::default()
            .env("CHATD_LIMITS__REPLY_MAX_BYTES", 20_000)
            .env("CHATD_LIMITS__SEND_PER_SEC", 10_000)
            .env("CHATD_LIMITS__SEND_BURST", 10_000),
    );
    let api = Api::new(&node);
    api.touch("bob").await;
    let mut a = Client::connect(&node, "ann").await;
    pipelined_dms(&mut a, "bob", 30, &"m".repeat(2_000), "s").await;
    // A message larger than the whole budget still comes, alone.
    ack_seq(&a.send_dm("bob", "huge", &"机".repeat(8_000)).await);
    let conv = ConvId::parse("dm:ann:bob").unwrap();

    // sync: pages of fewer than 31 messages, `has_more` until the end, no gaps.
    let mut cursor = 0;
    let mut pages = 0;
    loop {
        pages += 1;
        let rid = format!("p{pages}");
        a.send(&sync_frame(
            &rid,
            BTreeMap::from([(conv.clone(), Seq(cursor))]),
        ))
        .await;
        let ServerFrame::Synced { conversations, .. } = a
            .recv_until(|f| matches!(f, ServerFrame::Synced { .. }))
            .await
        else {
            unreachable!()
        };
        let page = &conversations[0];
        assert!(!page.messages.is_empty(), "every page makes progress");
        assert!(page.messages.len() < 31);
        for m in &page.messages {
            assert_eq!(m.seq.0, cursor + 1, "gap-free");
            cursor = m.seq.0;
        }
        if !page.has_more {
            break;
        }
        assert!(pages < 40);
    }
    assert_eq!(cursor, 31);
    assert!(pages >= 4, "20 kB pages of 2 kB messages: {pages} pages");

    // history: newest first, the huge message alone, then pages back to seq 1.
    let mut before = None;
    let mut seen = Vec::new();
    loop {
        a.send(&ClientFrame::History {
            rid: Some("h".into()),
            conv: conv.clone(),
            before_seq: before,
            limit: Some(200),
        })
        .await;
        let ServerFrame::History {
            messages, has_more, ..
        } = a
            .recv_until(|f| matches!(f, ServerFrame::History { .. }))
            .await
        else {
            unreachable!()
        };
        if before.is_none() {
            assert_eq!(messages.len(), 1, "the oversized message comes alone");
            assert_eq!(messages[0].seq, Seq(31));
        }
        assert!(!messages.is_empty());
        seen.extend(messages.iter().map(|m| m.seq.0));
        before = messages.last().map(|m| m.seq);
        if !has_more {
            break;
        }
    }
    assert_eq!(seen, (1..=31).rev().collect::<Vec<_>>());

    // conversations stays within the budget too: the huge last message is left out.
    a.send(&ClientFrame::Conversations {
        rid: Some("c".into()),
    })
    .await;
    let ServerFrame::Conversations { conversations, .. } = a
        .recv_until(|f| matches!(f, ServerFrame::Conversations { .. }))
        .await
    else {
        unreachable!()
    };
    assert_eq!(conversations[0].last_seq, Seq(31));
    assert!(conversations[0].last_message.is_none());
}

/// The next frame's raw size and decoded form.
async fn recv_sized(c: &mut Client) -> (usize, ServerFrame) {
    loop {
        match tokio::time::timeout(Duration::from_secs(60), c.ws.next())
            .await
            .expect("a reply")
        {
            Some(Ok(WsMessage::Text(t))) => {
                return (t.len(), protocol::Codec::Json.decode(t.as_bytes()).unwrap())
            }
            Some(Ok(WsMessage::Close(c))) => panic!("closed: {c:?}"),
            Some(Ok(_)) => continue,
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test]
async fn eight_concurrent_maximal_syncs_stay_within_the_memory_budget() {
    let node = Node::start_with(NodeOpts::default().unthrottled_sends());
    let api = Api::new(&node);
    // 2 conversations x 500 messages of 8,000 three-byte characters (24 kB each): a
    // complete sync of them would be a 24 MB reply, eight of them 192 MB.
    let peers = ["p0", "p1"];
    for p in peers {
        api.touch(p).await;
    }
    api.touch("bob").await;
    let mut hog = Client::connect(&node, "hog").await;
    let body = "机".repeat(8_000);
    for p in peers {
        pipelined_dms(&mut hog, p, 500, &body, p).await;
    }
    // The maximal request: 200 conversations (the 2 full ones and 198 empty ones), 500
    // messages each.
    let mut cursors = BTreeMap::new();
    for p in peers {
        cursors.insert(ConvId::parse(&format!("dm:hog:{p}")).unwrap(), Seq(0));
    }
    for i in 0..198 {
        cursors.insert(ConvId::parse(&format!("dm:hog:zz{i:03}")).unwrap(), Seq(0));
    }
    let mut clients = Vec::new();
    for _ in 0..8 {
        clients.push(Client::connect(&node, "hog").await);
    }
    let mut innocent = Client::connect(&node, "ann").await;
    ping_ok(&mut innocent).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = node.rss_kib();

    // Sample the node's RSS while the syncs run.
    let pid = node.pid();
    let peak = Arc::new(AtomicU64::new(before));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, done) = (peak.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                peak.fetch_max(proc_status_kib(pid, "VmRSS:"), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (i, mut c) in clients.into_iter().enumerate() {
        let cursors = cursors.clone();
        tasks.push(tokio::spawn(async move {
            let mut largest = 0;
            let mut messages = 0;
            let mut cursors = cursors;
            // Three rounds each, every round the maximal request from where it left off;
            // all eight send at once (a client may also pipeline: the session holds one).
            for round in 0..3 {
                c.send(&sync_frame(&format!("s{i}-{round}"), cursors.clone()))
                    .await;
            }
            let mut replies = 0;
            while replies < 3 {
                let (size, f) = recv_sized(&mut c).await;
                if !matches!(f, ServerFrame::Message(_)) {
                    replies += 1;
                }
                match f {
                    // A late live delivery of the set-up's own messages (this is the sender's
                    // account): not a reply.
                    ServerFrame::Message(_) => {}
                    ServerFrame::Synced { conversations, .. } => {
                        largest = largest.max(size);
                        for sc in conversations {
                            messages += sc.messages.len();
                            if let Some(m) = sc.messages.last() {
                                cursors.insert(sc.conv.clone(), m.seq);
                            }
                        }
                    }
                    ServerFrame::Error { code, retry, .. } => {
                        assert_eq!(code, protocol::ErrorCode::Unavailable);
                        assert!(retry);
                    }
                    other => panic!("{other:?}"),
                }
            }
            (largest, messages)
        }));
    }
    // The innocent client's pings and direct messages keep normal latency meanwhile.
    let mut worst = Duration::ZERO;
    let mut k = 0;
    while !tasks.iter().all(|t| t.is_finished()) {
        worst = worst.max(ping_ok(&mut innocent).await);
        let t = Instant::now();
        ack_seq(
            &innocent
                .send_dm("bob", &format!("i{k}"), "still here?")
                .await,
        );
        worst = worst.max(t.elapsed());
        k += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut largest = 0;
    let mut total = 0;
    for t in tasks {
        let (l, m) = t.await.unwrap();
        largest = largest.max(l);
        total += m;
    }
    let elapsed = started.elapsed();
    done.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    let peak = peak.load(Ordering::Relaxed);
    let grown_mib = peak.saturating_sub(before) as f64 / 1024.0;
    eprintln!(
        "8 x 3 maximal syncs in {elapsed:?}: {total} messages, largest reply {largest} bytes; \
         RSS {before} KiB before, peak {peak} KiB (+{grown_mib:.1} MiB); innocent worst {worst:?}"
    );
    assert!(total > 0, "the syncs made progress");
    assert!(
        largest <= 1024 * 1024 + 64 * 1024,
        "a reply of {largest} bytes"
    );
    assert!(grown_mib < 64.0, "RSS grew by {grown_mib:.1} MiB");
    assert!(worst < Duration::from_secs(2), "innocent latency {worst:?}");
}

// ---------------------------------------------------------------------------------------
// Ephemeral floods.

#[tokio::test]
async fn read_and_typing_floods_are_coalesced() {
    // What is measured here is the coalescing of what the server reads; at the default read
    // budget (`limits.frames_per_sec`, 200/s) these 200,000 frames would take over 15 minutes
    // to be read at all (that budget has its own test below).
    let node = Node::start_with(
        NodeOpts::default()
            .env("CHATD_LIMITS__FRAMES_PER_SEC", 10_000_000)
            .env("CHATD_LIMITS__FRAMES_BURST", 10_000_000),
    );
    let api = Api::new(&node);
    let mut alice = Client::connect(&node, "alice").await;
    let mut bob = Client::connect(&node, "bob").await;
    let mut carol = Client::connect(&node, "carol").await;
    let g = api.create_group("alice", "flood", &["bob", "carol"]).await;
    for i in 0..5 {
        ack_seq(&alice.send_group(&g, &format!("m{i}"), "hello").await);
    }
    let conv = ConvId::group(&GroupId::new(g.clone()));
    // Drain what the setup delivered.
    while bob.try_recv(Duration::from_millis(300)).await.is_some() {}
    while carol.try_recv(Duration::from_millis(100)).await.is_some() {}

    // Bob counts what reaches him while alice floods; carol reads nothing meanwhile.
    let counting = Arc::new(AtomicBool::new(true));
    let bob_task = {
        let counting = counting.clone();
        tokio::spawn(async move {
            let (mut reads, mut typing, mut last) = (0u32, 0u32, 0u64);
            let start = Instant::now();
            let mut final_at = None;
            loop {
                let f = bob.try_recv(Duration::from_millis(200)).await;
                match f {
                    Some(ServerFrame::Read { seq, .. }) => {
                        reads += 1;
                        last = last.max(seq.0);
                        if seq.0 == 5 && final_at.is_none() {
                            final_at = Some(start.elapsed());
                        }
                    }
                    Some(ServerFrame::Typing { .. }) => typing += 1,
                    Some(_) => {}
                    None if !counting.load(Ordering::Relaxed) => break,
                    None => {}
                }
            }
            (reads, typing, last, final_at, start.elapsed(), bob)
        })
    };
    let n = 200_000;
    let started = Instant::now();
    for i in 0..n {
        let text = if i == n - 1 {
            format!(r#"{{"type":"read","conv":"{conv}","seq":5}}"#)
        } else if i % 10 == 9 {
            format!(r#"{{"type":"typing","conv":"{conv}"}}"#)
        } else {
            format!(r#"{{"type":"read","conv":"{conv}","seq":{}}}"#, 1 + i % 4)
        };
        alice.ws.feed(WsMessage::Text(text.into())).await.unwrap();
        if i % 1000 == 999 {
            alice.ws.flush().await.unwrap();
        }
    }
    // The last frame is the read of seq 5.
    alice.ws.flush().await.unwrap();
    // A ping after the flood: the sender is not disconnected and still served.
    let flood_secs = started.elapsed();
    assert!(ping_ok(&mut alice).await < Duration::from_secs(30));
    // Wait for the final cursor to reach bob (it may be held back by the rate for a moment).
    tokio::time::sleep(Duration::from_secs(2)).await;
    counting.store(false, Ordering::Relaxed);
    let (reads, typing, last, final_at, elapsed, _bob) = bob_task.await.unwrap();
    let secs = elapsed.as_secs_f64();
    eprintln!(
        "{n} ephemeral frames sent in {flood_secs:?}; bob got {reads} read and {typing} typing \
         frames in {secs:.1} s (final cursor after {final_at:?})"
    );
    assert_eq!(last, 5, "the final cursor arrives");
    assert!(final_at.is_some());
    // At most the burst plus the sustained rate (5/s), with slack for timing.
    let allowed = 12.0 + 6.0 * secs;
    assert!(
        f64::from(reads + typing) <= allowed,
        "{reads} reads + {typing} typing in {secs:.1} s"
    );
    assert!(typing <= 2 + (secs / 3.0) as u32, "typing {typing}");

    // Carol, who read nothing meanwhile, is still connected and gets the final cursor.
    let mut carol_last = 0;
    while let Some(f) = carol.try_recv(Duration::from_millis(300)).await {
        if let ServerFrame::Read { seq, .. } = f {
            carol_last = carol_last.max(seq.0);
        }
    }
    assert_eq!(carol_last, 5);
    assert!(ping_ok(&mut carol).await < Duration::from_secs(2));

    // The final cursor is stored.
    alice
        .send(&ClientFrame::Conversations {
            rid: Some("c".into()),
        })
        .await;
    let ServerFrame::Conversations { conversations, .. } = alice
        .recv_until(|f| matches!(f, ServerFrame::Conversations { .. }))
        .await
    else {
        unreachable!()
    };
    let c = conversations.iter().find(|c| c.conv == conv).unwrap();
    assert_eq!(c.read_seq, Seq(5));
}

/// A session that floods WebSocket pings and frames that do not decode (neither passes a
/// per-request limit) is read at `limits.frames_per_sec`: the server's CPU stays low, the
/// attacker gets no more replies than the budget allows, and another pair's DMs stay fast.
/// Before the read budget one such socket took 93-95 % of a core.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_pings_and_undecodable_frames_is_read_at_the_frame_budget() {
    let node = Node::start_with(frame_budget(NodeOpts::default()));
    let api = Api::new(&node);
    api.touch("bob").await;
    let mut ann = Client::connect(&node, "ann").await;
    let mut bob = Client::connect(&node, "bob").await;
    let (stream, _) = raw_ws(&node, "mal").await;
    let (mut rx, tx) = stream.into_split();

    // The attacker's replies: count the `bad_request` errors (one per undecodable frame read).
    let errors = Arc::new(AtomicU64::new(0));
    let counted = errors.clone();
    let reader = tokio::spawn(async move {
        const MARK: &[u8] = b"bad_request";
        let mut chunk = vec![0u8; 65536];
        let mut buf = Vec::new();
        while let Ok(Ok(n)) = tokio::time::timeout(WAIT, rx.read(&mut chunk)).await {
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
            let found = buf.windows(MARK.len()).filter(|w| *w == MARK).count() as u64;
            counted.fetch_add(found, Ordering::Relaxed);
            // Keep what may be the start of a marker split across reads (too short to hold
            // a whole one, so nothing is counted twice).
            buf.drain(..buf.len().saturating_sub(MARK.len() - 1));
        }
    });

    let mut burst = Vec::new();
    for i in 0..2000 {
        if i % 2 == 0 {
            burst.extend(frame(0x89, true, b"ping"));
        } else {
            burst.extend(frame(0x81, true, br#"{"type":"nonsense"}"#));
        }
    }
    let (stop, writer) = flood(tx, burst, 2000);
    let (worst, cpu, secs) = innocent_dms(&node, &mut ann, &mut bob).await;
    let answered = errors.load(Ordering::Relaxed);
    // Frames read from the attacker's socket since it connected (its `hello` came before).
    let read_for = secs + 1.0;
    stop.store(true, Ordering::Relaxed);
    let (written, _tx) = writer.await.unwrap();
    eprintln!(
        "flood: {written} frames written, {answered} errors back in {secs:.1}s; \
         server CPU {:.0} % of a core; worst innocent DM {worst:?}",
        cpu * 100.0
    );
    assert!(
        written >= 4000,
        "the flood did not get going: {written} frames"
    );
    // Half the frames read are undecodable: at most (burst + rate × time) / 2 errors, and
    // slack for the reader's last pause.
    let allowed = (500.0 + 200.0 * read_for) / 2.0 + 10.0;
    assert!(
        (answered as f64) <= allowed,
        "{answered} undecodable frames answered in {secs:.1}s, at most {allowed:.0} allowed"
    );
    assert!(answered > 0, "the attacker's session was not read at all");
    assert!(
        cpu < 0.5,
        "the server spent {:.0} % of a core on one flooding session",
        cpu * 100.0
    );
    assert!(
        worst < Duration::from_millis(500),
        "an innocent DM took {worst:?}"
    );
    reader.abort();
}

/// A message that never ends (a text frame without FIN, then empty continuation frames) is
/// read at the frame budget too: every frame on the wire is charged, fragments included,
/// not each message the WebSocket layer assembles. Before the frames were counted on the
/// wire, one such socket (~17 million 6-byte fragments/s) kept a core 98 % busy (release
/// build) and no per-message count ever saw it. A legitimate fragmented message, with a
/// control frame between its fragments, still gets its answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_fragmented_message_is_read_at_the_frame_budget() {
    let node = Node::start_with(frame_budget(NodeOpts::default()));
    // Measured: 4-5 % with the meter (debug build), 27-34 % without it while the test's own
    // writer was the bottleneck.
    endless_message_against(&node, &node, &node, 0.2).await;
}

/// The same in cluster mode (docs/PROTOCOL.md, Liveness: the budget is kept by the node the
/// session is on): the attacker on one node of two, the innocent pair across both, so their
/// DMs go through Redis and the CQL database while the flood runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_fragmented_message_is_read_at_the_frame_budget_in_a_cluster() {
    let keyspace = unique_keyspace("frames");
    let nodes: Vec<Node> = (0..2)
        .map(|i| {
            let opts = cluster_node(&keyspace, &format!("{keyspace}-n{i}"));
            Node::start_with(frame_budget(opts))
        })
        .collect();
    // Measured: 13 % (debug build; the node's Redis and CQL clients included).
    endless_message_against(&nodes[0], &nodes[0], &nodes[1], 0.4).await;
}

/// Frames budget of 200/s, burst 500 (the defaults, set explicitly).
fn frame_budget(opts: NodeOpts) -> NodeOpts {
    opts.env("CHATD_LIMITS__FRAMES_PER_SEC", 200)
        .env("CHATD_LIMITS__FRAMES_BURST", 500)
}

/// Floods `node` with an endless fragmented message from one socket while ann (on
/// `ann_node`) sends DMs to bob (on `bob_node`); checks that its reads paused, that its CPU
/// stayed under `cpu_limit` (of a core), and the innocent DMs' latency.
async fn endless_message_against(node: &Node, ann_node: &Node, bob_node: &Node, cpu_limit: f64) {
    Api::new(bob_node).touch("bob").await;
    let mut ann = Client::connect(ann_node, "ann").await;
    let mut bob = Client::connect(bob_node, "bob").await;
    let (mut stream, _) = raw_ws(node, "mal").await;

    // Fragments are fine: `ping` in three pieces with a WebSocket ping between them.
    let request = br#"{"type":"ping","rid":"in-pieces"}"#;
    let fragmented = [
        frame(0x01, true, &request[..10]),
        frame(0x00, true, &request[10..20]),
        frame(0x89, true, b"between"),
        frame(0x80, true, &request[20..]),
    ]
    .concat();
    stream.write_all(&fragmented).await.unwrap();
    let mut seen = Vec::new();
    let mut chunk = [0u8; 4096];
    while !seen.windows(9).any(|w| w == b"in-pieces") {
        let n = tokio::time::timeout(WAIT, stream.read(&mut chunk))
            .await
            .expect("no pong for the fragmented ping")
            .unwrap();
        assert!(n > 0, "closed instead of answering the fragmented ping");
        seen.extend_from_slice(&chunk[..n]);
    }

    let (_rx, mut tx) = stream.into_split();
    tx.write_all(&frame(0x01, true, b"{\"type\":"))
        .await
        .unwrap();
    let empty = frame(0x00, true, b"");
    let burst: Vec<u8> = empty
        .iter()
        .copied()
        .cycle()
        .take(empty.len() * 16384)
        .collect();
    let paused_before = node.metric("chatd_session_reads_paused_total").await;
    let (stop, writer) = flood(tx, burst, 16384);
    let (worst, cpu, secs) = innocent_dms(node, &mut ann, &mut bob).await;
    stop.store(true, Ordering::Relaxed);
    let (written, _tx) = writer.await.unwrap();
    let paused = node.metric("chatd_session_reads_paused_total").await - paused_before;
    eprintln!(
        "fragment flood: {written} empty fragments written in {secs:.1}s, reads paused \
         {paused} times; server CPU {:.0} % of a core; worst innocent DM {worst:?}",
        cpu * 100.0
    );
    assert!(
        written >= 100_000,
        "the flood did not get going: {written} frames"
    );
    // Nothing but the fragments can spend this session's budget: the meter saw them.
    assert!(paused >= 1.0, "the endless message never paused its socket");
    assert!(
        cpu < cpu_limit,
        "the server spent {:.0} % of a core on one endless message",
        cpu * 100.0
    );
    assert!(
        worst < Duration::from_millis(500),
        "an innocent DM took {worst:?}"
    );
}

/// Writes `burst` (`frames` frames) to `tx` over and over until the returned flag is set; the
/// task returns how many frames went out, and the write half (kept open until then).
fn flood(
    mut tx: tokio::net::tcp::OwnedWriteHalf,
    burst: Vec<u8>,
    frames: u64,
) -> (
    Arc<AtomicBool>,
    tokio::task::JoinHandle<(u64, tokio::net::tcp::OwnedWriteHalf)>,
) {
    let stop = Arc::new(AtomicBool::new(false));
    let stopping = stop.clone();
    let writer = tokio::spawn(async move {
        let mut written = 0u64;
        while !stopping.load(Ordering::Relaxed) {
            // The server stops reading: the write blocks once the socket buffers are full.
            match tokio::time::timeout(Duration::from_millis(200), tx.write_all(&burst)).await {
                Ok(Ok(())) => written += frames,
                Ok(Err(_)) => break,
                Err(_) => {}
            }
        }
        (written, tx)
    });
    (stop, writer)
}

/// For 3 s, ann sends bob a DM every 50 ms, each acked and delivered; returns the slowest
/// round trip, `node`'s CPU meanwhile (share of a core) and the seconds it ran.
async fn innocent_dms(node: &Node, ann: &mut Client, bob: &mut Client) -> (Duration, f64, f64) {
    let cpu_before = node.cpu_ticks();
    let started = Instant::now();
    let mut worst = Duration::ZERO;
    let mut i = 0;
    while started.elapsed() < Duration::from_secs(3) {
        let t = Instant::now();
        let ack = ann.send_dm("bob", &format!("during-{i}"), "hello").await;
        assert!(matches!(ack, ServerFrame::Ack { .. }), "{ack:?}");
        bob.recv_until(|f| matches!(f, ServerFrame::Message(_)))
            .await;
        worst = worst.max(t.elapsed());
        i += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    let cpu = (node.cpu_ticks() - cpu_before) as f64 / 100.0 / secs;
    (worst, cpu, secs)
}
