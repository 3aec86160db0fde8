//! Attachments end to end: upload, share in a message, download as a member, and the refusals
//! (size, type, name, readers) with their JSON errors. The authorization matrix of the files
//! routes is in `authz.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use protocol::{ClientFrame, ErrorCode, GroupId, MessageKind, ServerFrame, Target, UserId};
use serde_json::Value;
use testkit::*;

/// Sends a file message with `attachment` (as JSON from the upload) and returns the reply.
async fn send_file(c: &mut Client, to: Target, cmid: &str, attachment: &Value) -> ServerFrame {
    send_file_with(c, to, cmid, "", attachment).await
}

/// [`send_file`] with a caption.
async fn send_file_with(
    c: &mut Client,
    to: Target,
    cmid: &str,
    body: &str,
    attachment: &Value,
) -> ServerFrame {
    c.send(&ClientFrame::Send(protocol::SendFrame {
        rid: Some(cmid.into()),
        client_msg_id: cmid.into(),
        to,
        kind: MessageKind::File,
        body: body.into(),
        attachment: Some(serde_json::from_value(attachment.clone()).unwrap()),
        mentions: vec![],
        reply_to: None,
    }))
    .await;
    c.recv_until(|f| is_reply_to(f, cmid)).await
}

async fn get(api: &Api, user: &str, path: &str) -> reqwest::Response {
    api.http
        .get(format!("{}{path}", api.base))
        .bearer_auth(token(user))
        .send()
        .await
        .unwrap()
}

fn error_of(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("<no JSON error>")
}

#[tokio::test]
async fn a_shared_file_is_readable_by_the_conversation_and_nobody_else() {
    let node = Node::start();
    let api = Api::new(&node);
    for u in ["ann", "bob", "eve"] {
        api.touch(u).await;
    }
    let content = "季度报告：收入增长 12%\n".repeat(100).into_bytes();
    let (s, att) = api
        .upload(
            "ann",
            "季度 报告.txt",
            "text/plain; charset=utf-8",
            content.clone(),
        )
        .await;
    assert_eq!(s, 201, "{att}");
    assert_eq!(att["size"], content.len());
    assert_eq!(att["mime"], "text/plain");
    let id = att["file_id"].as_str().unwrap().to_owned();

    // Before it is shared, only the uploader reads it.
    let r = get(&api, "bob", &format!("/v1/files/{id}")).await;
    assert_eq!(r.status(), 403);
    assert_eq!(
        get(&api, "ann", &format!("/v1/files/{id}")).await.status(),
        200
    );

    let mut a = Client::connect(&node, "ann").await;
    let mut b = Client::connect(&node, "bob").await;
    ack_seq(&send_file(&mut a, Target::User(UserId::new("bob")), "f1", &att).await);
    let m = b.next_message().await;
    assert_eq!(m.attachment.as_ref().unwrap().file_id, id);

    let r = get(&api, "bob", &format!("/v1/files/{id}")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/plain");
    assert_eq!(r.headers()["x-content-type-options"], "nosniff");
    let disposition = r.headers()["content-disposition"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        disposition.contains("filename*=UTF-8''%E5%AD%A3%E5%BA%A6%20%E6%8A%A5%E5%91%8A.txt"),
        "{disposition}"
    );
    assert_eq!(r.bytes().await.unwrap().to_vec(), content);

    let r = get(&api, "bob", &format!("/v1/files/{id}/meta")).await;
    let meta: Value = r.json().await.unwrap();
    assert_eq!(meta["uploader"], "ann");
    assert_eq!(meta["name"], "季度 报告.txt");
    assert_eq!(meta["sha256"].as_str().unwrap().len(), 64);

    // Someone outside the conversation can neither read it nor forward it.
    let r = get(&api, "eve", &format!("/v1/files/{id}")).await;
    assert_eq!(r.status(), 403);
    let body: Value = r.json().await.unwrap();
    assert_eq!(error_of(&body), "forbidden");
    let mut e = Client::connect(&node, "eve").await;
    let f = send_file(&mut e, Target::User(UserId::new("ann")), "steal", &att).await;
    assert_eq!(error_code(&f), ErrorCode::Forbidden);

    // A member of the conversation may forward it to a group; the group's members then read it.
    let g = api.create_group("bob", "forwarded", &["eve"]).await;
    ack_seq(&send_file(&mut b, Target::Group(GroupId::new(&g)), "fwd", &att).await);
    assert_eq!(
        get(&api, "eve", &format!("/v1/files/{id}")).await.status(),
        200
    );
}

#[tokio::test]
async fn uploads_are_refused_with_clear_errors() {
    let node = Node::start_with(NodeOpts::default().env("CHATD_FILES__MAX_BYTES", 1024));
    let api = Api::new(&node);
    let (s, b) = api
        .upload("ann", "big.png", "image/png", vec![7; 1025])
        .await;
    assert_eq!((s, error_of(&b)), (413, "too_large"), "{b}");
    assert!(
        b["error"]["message"].as_str().unwrap().contains("1024"),
        "{b}"
    );

    // The limit holds for a body without a length, too (chunked, checked while reading).
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = (0..8).map(|_| Ok(vec![1u8; 200])).collect();
    let resp = api
        .http
        .post(format!("{}/v1/files?name=stream.png", api.base))
        .header("content-type", "image/png")
        .bearer_auth(token("ann"))
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    let b: Value = resp.json().await.unwrap();
    assert_eq!(error_of(&b), "too_large");

    let (s, b) = api
        .upload("ann", "run.exe", "application/x-msdownload", vec![1; 10])
        .await;
    assert_eq!((s, error_of(&b)), (400, "bad_request"), "{b}");
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap()
            .contains("content-type"),
        "{b}"
    );

    let (s, b) = api.upload("ann", "", "image/png", vec![1; 10]).await;
    assert_eq!((s, error_of(&b)), (400, "bad_request"), "{b}");
    assert!(
        b["error"]["message"].as_str().unwrap().starts_with("name"),
        "{b}"
    );
    let (s, b) = api
        .upload("ann", "../../etc/passwd", "text/plain", vec![1; 10])
        .await;
    assert_eq!((s, error_of(&b)), (400, "bad_request"), "{b}");

    let (s, b) = api
        .upload("ann", "empty.png", "image/png", Vec::new())
        .await;
    assert_eq!((s, error_of(&b)), (400, "bad_request"), "{b}");

    // File names pass the moderation filter.
    let (s, b) = api
        .upload("ann", "网络赌博攻略.pdf", "application/pdf", vec![1; 10])
        .await;
    assert_eq!((s, error_of(&b)), (403, "blocked"), "{b}");

    // Nothing was stored by the refused uploads.
    let files = node.data_dir.join("files");
    let stored = walk(&files);
    assert!(stored.is_empty(), "{stored:?}");

    // Unknown ids: 404 with a JSON body, over HTTP and in a message.
    let r = get(&api, "ann", "/v1/files/fnope").await;
    assert_eq!(r.status(), 404);
    let b: Value = r.json().await.unwrap();
    assert_eq!(error_of(&b), "not_found");
    let mut a = Client::connect(&node, "ann").await;
    let fake =
        serde_json::json!({"file_id": "fnope", "name": "x.png", "size": 1, "mime": "image/png"});
    let f = send_file(&mut a, Target::User(UserId::new("bob")), "fake", &fake).await;
    assert_eq!(error_code(&f), ErrorCode::NotFound);
    // Without a token: 401.
    let r = api
        .http
        .get(format!("{}/v1/files/fnope", api.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test]
async fn content_is_stored_once_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = Node::spawn(dir.path(), NodeOpts::default());
    let api = Api::new(&node);
    let bytes = b"%PDF-1.7 the same handbook".to_vec();
    let (s1, a1) = api
        .upload("ann", "handbook.pdf", "application/pdf", bytes.clone())
        .await;
    let (s2, a2) = api
        .upload("bob", "copy.pdf", "application/pdf", bytes.clone())
        .await;
    assert_eq!((s1, s2), (201, 201));
    assert_ne!(a1["file_id"], a2["file_id"], "each upload has its own id");
    let stored = walk(&dir.path().join("files"));
    assert_eq!(stored.len(), 1, "one copy of the content: {stored:?}");

    // Uploads are not bound by limits.max_http_body (1 MiB), only by files.max_bytes.
    let big: Vec<u8> = (0..3 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    let (s, a3) = api
        .upload("ann", "scan.png", "image/png", big.clone())
        .await;
    assert_eq!(s, 201, "{a3}");

    node.kill9();
    let node = Node::spawn(dir.path(), NodeOpts::default());
    let api = Api::new(&node);
    let id = a2["file_id"].as_str().unwrap();
    let r = get(&api, "bob", &format!("/v1/files/{id}")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().to_vec(), bytes);
    let id3 = a3["file_id"].as_str().unwrap();
    let r = get(&api, "ann", &format!("/v1/files/{id3}")).await;
    assert_eq!(r.bytes().await.unwrap().to_vec(), big);
    // The other uploader's record is still theirs alone.
    let id = a1["file_id"].as_str().unwrap();
    assert_eq!(
        get(&api, "bob", &format!("/v1/files/{id}")).await.status(),
        403
    );
}

#[tokio::test]
async fn a_held_file_is_readable_by_its_reviewers_and_by_members_once_approved() {
    let node = Node::start();
    let api = Api::new(&node);
    for u in ["ann", "bob", "cat"] {
        api.touch(u).await;
    }
    let g = api.create_group("ann", "team", &["bob", "cat"]).await;
    let (s, att) = api
        .upload("bob", "offer.txt", "text/plain", b"offer".to_vec())
        .await;
    assert_eq!(s, 201);
    let id = att["file_id"].as_str().unwrap().to_owned();
    let mut b = Client::connect(&node, "bob").await;
    // An advertisement in the body sends the message to review.
    let ack = send_file_with(
        &mut b,
        Target::Group(GroupId::new(&g)),
        "held",
        "便宜好货 加微信 abc123",
        &att,
    )
    .await;
    let ServerFrame::Ack {
        seq: None,
        id: held,
        ..
    } = &ack
    else {
        panic!("expected a hold, got {ack:?}")
    };
    assert_eq!(
        get(&api, "cat", &format!("/v1/files/{id}")).await.status(),
        403
    );
    // The group's owner reviews the message, so she may open the file it carries.
    assert_eq!(
        get(&api, "ann", &format!("/v1/files/{id}")).await.status(),
        200
    );
    let conv = protocol::ConvId::group(&GroupId::new(&g)).to_string();
    let (s, body) = api
        .call(
            reqwest::Method::POST,
            "/v1/review/approve",
            Some("ann"),
            Some(serde_json::json!({"conv": conv, "id": held.as_str()})),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(
        get(&api, "cat", &format!("/v1/files/{id}")).await.status(),
        200
    );
}

/// Every regular file under `dir`, recursively (none when it does not exist).
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[tokio::test]
async fn uploads_are_rate_limited_per_user() {
    let node = Node::start_with(NodeOpts::default().env("CHATD_FILES__UPLOADS_PER_MINUTE", 3));
    let api = Api::new(&node);
    for i in 0..3 {
        let (s, b) = api
            .upload("ann", &format!("n{i}.txt"), "text/plain", vec![b'x'; 4])
            .await;
        assert_eq!(s, 201, "{b}");
    }
    let (s, b) = api
        .upload("ann", "n3.txt", "text/plain", vec![b'x'; 4])
        .await;
    assert_eq!((s, error_of(&b)), (429, "rate_limited"), "{b}");
    // Another user is not affected.
    let (s, _) = api
        .upload("bob", "b.txt", "text/plain", vec![b'x'; 4])
        .await;
    assert_eq!(s, 201);
}
