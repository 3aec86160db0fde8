//! Compliance export helpers for the end-to-end tests: page the event log over HTTP, wait
//! for an export job, and open and check the batch files it writes (zip, optionally age
//! encrypted, with a manifest of checksums).

use crate::{token, Api, Client};
use protocol::{ClientFrame, GroupId, MessageKind, SendFrame, ServerFrame, Target};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// One page of `GET /v1/admin/compliance/events`.
pub struct EventsPage {
    pub status: u16,
    pub records: Vec<Value>,
    pub next: String,
    pub has_more: bool,
    pub body: String,
}

/// One page of the log as `user`.
pub async fn events(base: &str, user: &str, after: &str, limit: usize) -> EventsPage {
    let resp = reqwest::Client::new()
        .get(format!("{base}/v1/admin/compliance/events"))
        .query(&[("after", after), ("limit", &limit.to_string())])
        .bearer_auth(token(user))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let header = |n: &str| {
        resp.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let (next, has_more) = (
        header("chatd-next-cursor"),
        header("chatd-has-more") == "true",
    );
    let body = resp.text().await.unwrap();
    let records = if status == 200 {
        body.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    } else {
        Vec::new()
    };
    EventsPage {
        status,
        records,
        next,
        has_more,
        body,
    }
}

/// Pages the log from `after` until `done` says the records read so far are complete (or
/// panics after `within`); returns them and the cursor after them.
pub async fn read_until(
    base: &str,
    user: &str,
    after: &str,
    limit: usize,
    within: Duration,
    done: impl Fn(&[Value]) -> bool,
) -> (Vec<Value>, String) {
    let deadline = Instant::now() + within;
    let mut cursor = after.to_owned();
    let mut out = Vec::new();
    loop {
        let p = events(base, user, &cursor, limit).await;
        assert_eq!(p.status, 200, "{}", p.body);
        assert!(p.records.len() <= limit);
        out.extend(p.records);
        cursor = p.next;
        if !p.has_more && done(&out) {
            return (out, cursor);
        }
        assert!(
            Instant::now() < deadline,
            "log incomplete: {} records",
            out.len()
        );
        if !p.has_more {
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
    }
}

/// The seqs of the message events of `conv`, in log order.
pub fn message_keys(records: &[Value], conv: &str) -> Vec<u64> {
    records
        .iter()
        .filter(|r| r["kind"] == "message" && r["conv"] == conv)
        .map(|r| r["seq"].as_u64().unwrap())
        .collect()
}

/// Panics when two records have the same cursor.
pub fn assert_unique_cursors(records: &[Value]) {
    let cursors: BTreeSet<&str> = records
        .iter()
        .map(|r| r["cursor"].as_str().unwrap())
        .collect();
    assert_eq!(cursors.len(), records.len(), "an event was answered twice");
}

/// Sends `n` messages to `group` without waiting for each ack (pipelined), then waits for
/// every ack.
pub async fn burst(c: &mut Client, group: &str, prefix: &str, n: usize) {
    burst_padded(c, group, prefix, n, 0).await;
}

/// [`burst`] with `pad` more bytes in each body (heavier pages to read).
pub async fn burst_padded(c: &mut Client, group: &str, prefix: &str, n: usize, pad: usize) {
    let filler = "x".repeat(pad);
    for i in 0..n {
        c.send(&ClientFrame::Send(SendFrame {
            rid: Some(format!("{prefix}{i}")),
            client_msg_id: format!("{prefix}{i}"),
            to: Target::Group(GroupId::new(group)),
            kind: MessageKind::Text,
            body: format!("{prefix} message {i}{filler}"),
            attachment: None,
            mentions: vec![],
            reply_to: None,
        }))
        .await;
    }
    let mut acked = 0;
    while acked < n {
        match c.recv().await {
            ServerFrame::Ack { seq: Some(_), .. } => acked += 1,
            ServerFrame::Error { code, message, .. } => panic!("{code:?}: {message}"),
            _ => {}
        }
    }
}

/// The batch files in `dir`, by batch number.
pub fn batches(dir: &Path) -> BTreeMap<u64, PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return BTreeMap::new();
    };
    entries
        .map(|e| e.unwrap().path())
        .filter_map(|p| {
            let name = p.file_name()?.to_str()?.to_owned();
            let n = name
                .strip_prefix("chatd-compliance-")?
                .split('.')
                .next()?
                .parse()
                .ok()?;
            (!name.ends_with(".partial")).then_some((n, p))
        })
        .collect()
}

/// A batch's files by name, after decrypting it with `identity` when given.
pub fn open_batch(
    path: &Path,
    identity: Option<&age::x25519::Identity>,
) -> BTreeMap<String, Vec<u8>> {
    let raw = std::fs::read(path).unwrap();
    let zip_bytes = match identity {
        Some(id) => {
            assert!(path.to_str().unwrap().ends_with(".zip.age"));
            let d = age::Decryptor::new(&raw[..]).unwrap();
            let mut r = d
                .decrypt(std::iter::once(id as &dyn age::Identity))
                .unwrap();
            let mut out = Vec::new();
            r.read_to_end(&mut out).unwrap();
            out
        }
        None => {
            assert!(path.to_str().unwrap().ends_with(".zip"));
            raw
        }
    };
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(zip_bytes)).unwrap();
    let mut files = BTreeMap::new();
    for i in 0..zip.len() {
        let mut f = zip.by_index(i).unwrap();
        let mut b = Vec::new();
        f.read_to_end(&mut b).unwrap();
        files.insert(f.name().to_owned(), b);
    }
    files
}

/// Checks a batch against its manifest; returns its manifest and records.
pub fn check_batch(files: &BTreeMap<String, Vec<u8>>) -> (Value, Vec<Value>) {
    let names: Vec<&str> = files.keys().map(|k| k.as_str()).collect();
    assert_eq!(names, ["events.csv", "events.jsonl", "manifest.json"]);
    let manifest: Value = serde_json::from_slice(&files["manifest.json"]).unwrap();
    for f in manifest["files"].as_array().unwrap() {
        let bytes = &files[f["path"].as_str().unwrap()];
        assert_eq!(f["bytes"].as_u64().unwrap(), bytes.len() as u64);
        assert_eq!(f["sha256"], hex::encode(Sha256::digest(bytes)), "{f}");
    }
    let records: Vec<Value> = std::str::from_utf8(&files["events.jsonl"])
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(manifest["events"].as_u64().unwrap(), records.len() as u64);
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    for r in &records {
        *counts
            .entry(r["kind"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    assert_eq!(manifest["counts"], serde_json::to_value(&counts).unwrap());
    assert_eq!(manifest["last"], records.last().unwrap()["cursor"]);
    // One CSV row per record, under the header, in the same order (parsed as RFC 4180: a
    // body may hold commas, quotes and new lines).
    let mut csv = csv::Reader::from_reader(&files["events.csv"][..]);
    let header: Vec<String> = csv.headers().unwrap().iter().map(str::to_owned).collect();
    assert_eq!(header[..5], ["cursor", "commit_ts", "kind", "conv", "seq"]);
    let body_at = header.iter().position(|h| h == "body").unwrap();
    let rows: Vec<csv::StringRecord> = csv.records().map(|r| r.unwrap()).collect();
    assert_eq!(rows.len(), records.len());
    for (row, r) in rows.iter().zip(&records) {
        assert_eq!(row.len(), header.len());
        assert_eq!(&row[0], r["cursor"].as_str().unwrap());
        assert_eq!(&row[2], r["kind"].as_str().unwrap());
        if let Some(body) = r["message"]["body"].as_str() {
            // A would-be formula is defused in CSV only.
            let want = if body.starts_with('=') {
                format!("'{body}")
            } else {
                body.to_owned()
            };
            assert_eq!(row[body_at], want);
        }
    }
    (manifest, records)
}

/// Waits until the export job is done; returns the status.
pub async fn export_done(api: &Api, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let (s, status) = api
            .call(
                reqwest::Method::GET,
                "/v1/admin/compliance/exports",
                Some("auditor"),
                None,
            )
            .await;
        assert_eq!(s, 200, "{status}");
        match status["job"]["state"].as_str() {
            Some("done") => return status,
            Some("failed") => panic!("export failed: {status}"),
            _ => {}
        }
        assert!(Instant::now() < deadline, "export not done: {status}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every record of the whole log, through the API.
pub async fn whole_log(base: &str, want_messages: usize, conv: &str) -> Vec<Value> {
    read_until(base, "boss", "", 1000, Duration::from_secs(20), |r| {
        message_keys(r, conv).len() >= want_messages
    })
    .await
    .0
}

/// Every batch's records in batch order, checking each batch and that each starts where the
/// one before it ended.
pub fn all_batches(dir: &Path, identity: Option<&age::x25519::Identity>) -> Vec<Value> {
    let found = batches(dir);
    assert!(!found.is_empty(), "no batch in {}", dir.display());
    assert_eq!(
        found.keys().copied().collect::<Vec<_>>(),
        (1..=found.len() as u64).collect::<Vec<_>>(),
        "batch numbers are contiguous"
    );
    let mut out = Vec::new();
    let mut last = Value::String(String::new());
    for path in found.values() {
        let (manifest, records) = check_batch(&open_batch(path, identity));
        assert_eq!(
            manifest["after"], last,
            "batch {} continues the last",
            manifest["batch"]
        );
        last = manifest["last"].clone();
        out.extend(records);
    }
    out
}

/// The records' cursors, in order.
pub fn cursors(records: &[Value]) -> Vec<String> {
    records
        .iter()
        .map(|r| r["cursor"].as_str().unwrap().to_owned())
        .collect()
}
