//! Backup and restore of an embedded node: an online backup under load, a wipe, a restore,
//! and every conversation compared message by message.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use protocol::{ConvId, GroupId, Message, UserId};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use testkit::*;

fn key(m: &Message) -> (u64, String, String, String) {
    (
        m.seq.0,
        m.id.to_string(),
        m.from.to_string(),
        m.body.clone(),
    )
}

fn chatd(args: &[&str]) -> std::process::Output {
    std::process::Command::new(chatd_bin())
        .args(args)
        .env("CHATD_LOG", "warn")
        .output()
        .unwrap()
}

#[tokio::test]
async fn backup_under_load_then_restore_gives_back_every_conversation() {
    let opts = NodeOpts::default()
        .env("CHATD_AUTH__ADMINS", r#"["boss"]"#)
        .unthrottled_sends();
    let src = tempfile::tempdir().unwrap();
    let mut node = Node::spawn(src.path(), opts.clone());
    let api = Api::new(&node);
    for u in ["ann", "bob", "cat"] {
        api.touch(u).await;
    }
    let group = api.create_group("ann", "team", &["bob", "cat"]).await;
    let (s, file) = api
        .upload("ann", "notes.txt", "text/plain", b"attached notes".to_vec())
        .await;
    assert_eq!(s, 201, "{file}");
    let file_id = file["file_id"].as_str().unwrap().to_owned();

    // Some history before the backup.
    let mut ann = Client::connect(&node, "ann").await;
    for i in 0..20 {
        ack_seq(
            &ann.send_dm("bob", &format!("pre{i}"), &format!("before {i}"))
                .await,
        );
        ack_seq(
            &ann.send_group(&group, &format!("gpre{i}"), &format!("group before {i}"))
                .await,
        );
    }

    // Load while the backup runs: two senders in DMs and the group.
    let stop = Arc::new(AtomicBool::new(false));
    let mut load = Vec::new();
    for (me, to) in [("bob", "cat"), ("cat", "ann")] {
        let (stop, addr, group) = (stop.clone(), node.addr, group.clone());
        load.push(tokio::spawn(async move {
            let mut c = Client::connect_with(addr, me, protocol::Codec::Json).await;
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) && n < 400 {
                ack_seq(
                    &c.send_dm(to, &format!("{me}-d{n}"), &format!("{me} load {n}"))
                        .await,
                );
                ack_seq(
                    &c.send_group(&group, &format!("{me}-g{n}"), &format!("{me} group {n}"))
                        .await,
                );
                n += 1;
            }
            n
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let archive = src.path().join("out/backup.tar.gz");
    let (url, boss) = (node.http(), token("boss"));
    let archive_s = archive.to_str().unwrap().to_owned();
    let out = tokio::task::spawn_blocking(move || {
        chatd(&[
            "backup", "--out", &archive_s, "--url", &url, "--token", &boss,
        ])
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "backup failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    stop.store(true, Ordering::Relaxed);
    for l in load {
        assert!(l.await.unwrap() > 0);
    }
    assert!(archive.exists());

    // The original node's final state.
    let convs = [
        ConvId::direct(&UserId::new("ann"), &UserId::new("bob")),
        ConvId::direct(&UserId::new("bob"), &UserId::new("cat")),
        ConvId::direct(&UserId::new("cat"), &UserId::new("ann")),
        ConvId::group(&GroupId::new(group.clone())),
    ];
    let mut cat = Client::connect(&node, "cat").await;
    let mut before = BTreeMap::new();
    for conv in &convs {
        let reader = if conv.to_string().contains("ann") || conv.group_id().is_some() {
            &mut ann
        } else {
            &mut cat
        };
        let all = reader.sync_all(conv, 0, 200).await;
        before.insert(conv.clone(), all);
    }
    drop((ann, cat));
    assert!(node.terminate(Duration::from_secs(15)));

    // Wipe, then restore into a fresh directory.
    std::fs::remove_dir_all(src.path().join("chat")).unwrap();
    let dst = tempfile::tempdir().unwrap();
    let dst_s = dst.path().to_str().unwrap();
    let out = chatd(&[
        "restore",
        "--from",
        archive.to_str().unwrap(),
        "--data-dir",
        dst_s,
    ]);
    assert!(
        out.status.success(),
        "restore failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A second restore into the now non-empty directory is refused, unless forced.
    let out = chatd(&[
        "restore",
        "--from",
        archive.to_str().unwrap(),
        "--data-dir",
        dst_s,
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not empty"), "{err}");
    let out = chatd(&[
        "restore",
        "--from",
        archive.to_str().unwrap(),
        "--data-dir",
        dst_s,
        "--force",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The restored node: every conversation is a gap-free prefix of the original, holding at
    // least what was acked before the backup started.
    let node = Node::spawn(dst.path(), opts);
    let mut ann = Client::connect(&node, "ann").await;
    let mut cat = Client::connect(&node, "cat").await;
    let mut restored_total = 0;
    for conv in &convs {
        let reader = if conv.to_string().contains("ann") || conv.group_id().is_some() {
            &mut ann
        } else {
            &mut cat
        };
        let got = reader.sync_all(conv, 0, 200).await;
        let orig = &before[conv];
        let seqs: Vec<u64> = got.iter().map(|m| m.seq.0).collect();
        assert_eq!(
            seqs,
            (1..=got.len() as u64).collect::<Vec<_>>(),
            "{conv}: seqs are not gap-free"
        );
        assert!(got.len() <= orig.len(), "{conv}: more than the original");
        let want: Vec<_> = orig[..got.len()].iter().map(key).collect();
        assert_eq!(got.iter().map(key).collect::<Vec<_>>(), want, "{conv}");
        eprintln!(
            "{conv}: {} of {} messages in the backup",
            got.len(),
            orig.len()
        );
        restored_total += got.len();
    }
    let dm = &before[&convs[0]];
    assert_eq!(dm.len(), 20);
    let ab = ann.sync_all(&convs[0], 0, 200).await;
    assert_eq!(
        ab.len(),
        20,
        "messages acked before the backup are all there"
    );
    let g = ann.sync_all(&convs[3], 0, 200).await;
    assert!(g.len() >= 20);
    assert!(restored_total >= 40);
    // New messages continue each sequence.
    let next = ack_seq(&ann.send_dm("bob", "after-restore", "hello again").await);
    assert_eq!(next, 21);
    // The attachment came back too.
    let resp = reqwest::Client::new()
        .get(format!("{}/v1/files/{file_id}", node.http()))
        .bearer_auth(token("ann"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.bytes().await.unwrap().as_ref(), b"attached notes");
    assert!(Path::new(dst_s).join("chat").exists());
}
