//! Departing employees, end to end on real nodes: deactivation hands the leaver's groups to a
//! successor (or is refused without one), users known only from tokens can be deactivated,
//! the scheduled erasure anonymises an account and keeps its messages, and the metadata of a
//! cluster survives `chatd export` then `chatd import` into an empty keyspace.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use protocol::{close, ConvId, GroupId};
use reqwest::Method;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};
use testkit::*;

/// The role of each member of a group, as its owner sees it.
async fn roles(api: &Api, group: &str, who: &str) -> Vec<(String, String)> {
    let (s, b) = call(api, Method::GET, &format!("/v1/groups/{group}"), who, None).await;
    assert_eq!(s, 200, "{b}");
    let mut out: Vec<(String, String)> = b["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["user"].as_str().unwrap().to_owned(),
                m["role"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    out.sort();
    out
}

fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter()
        .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
        .collect()
}

#[tokio::test]
async fn deactivation_hands_the_leavers_groups_to_the_successor() {
    let node = admin_node(&[]);
    let api = Api::new(&node);
    api.touch("boss").await;
    for id in ["lea", "sam", "mem", "ext"] {
        api.create_account(
            "boss",
            json!({"id": id, "name": id.to_uppercase(), "external": id == "ext"}),
        )
        .await;
    }
    let g1 = api.create_group("lea", "Leaving project", &["mem"]).await;
    let g2 = api
        .create_group("lea", "Second project", &["mem", "sam"])
        .await;
    let g3 = api.create_group("mem", "Not hers", &["lea"]).await;
    let mut lea = Client::connect(&node, "lea").await;

    // Owned groups and no successor: refused, naming them, and nothing changed.
    let (s, b) = call(&api, Method::POST, "/v1/users/lea/deactivate", "boss", None).await;
    assert_eq!((s, code(&b)), (409, "conflict"), "{b}");
    let msg = b["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains(&g1) && msg.contains(&g2) && msg.contains("successor"),
        "{msg}"
    );
    let (s, _) = call(&api, Method::GET, "/v1/me", "lea", None).await;
    assert_eq!(s, 200, "a refused deactivation leaves the account active");
    // A successor who cannot take over: refused too.
    for (successor, status) in [("ghost", 404), ("lea", 400), ("ext", 400), ("bad id!", 400)] {
        let (s, b) = call(
            &api,
            Method::POST,
            "/v1/users/lea/deactivate",
            "boss",
            Some(json!({ "successor": successor })),
        )
        .await;
        assert_eq!(s, status, "{successor}: {b}");
    }
    let (s, b) = call(
        &api,
        Method::POST,
        "/v1/users/lea/deactivate",
        "boss",
        Some(json!({"surprise": 1})),
    )
    .await;
    assert_eq!((s, code(&b)), (400, "bad_request"), "{b}");
    assert_eq!(
        roles(&api, &g1, "boss").await,
        pairs(&[("lea", "owner"), ("mem", "member")])
    );

    // With a successor: deactivated, and both groups handed over in one request.
    let (s, b) = call(
        &api,
        Method::POST,
        "/v1/users/lea/deactivate",
        "boss",
        Some(json!({"successor": "sam"})),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["status"], "deactivated");
    assert_eq!(b["successor"], "sam");
    let moved: BTreeSet<&str> = b["transferred"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g.as_str().unwrap())
        .collect();
    assert_eq!(moved, BTreeSet::from([g1.as_str(), g2.as_str()]));
    assert_eq!(lea.expect_close().await, close::SIGNED_OUT);
    assert_eq!(
        roles(&api, &g1, "sam").await,
        pairs(&[("lea", "member"), ("mem", "member"), ("sam", "owner")])
    );
    assert_eq!(
        roles(&api, &g2, "sam").await,
        pairs(&[("lea", "member"), ("mem", "member"), ("sam", "owner")])
    );
    assert_eq!(
        roles(&api, &g3, "mem").await,
        pairs(&[("lea", "member"), ("mem", "owner")]),
        "a group she did not own is untouched"
    );

    // The successor administers: an owner-only action works.
    let (s, b) = call(
        &api,
        Method::POST,
        &format!("/v1/groups/{g2}/transfer"),
        "sam",
        Some(json!({"user": "mem"})),
    )
    .await;
    assert_eq!(s, 204, "{b}");
    let (s, b) = call(
        &api,
        Method::POST,
        &format!("/v1/groups/{g1}/members"),
        "sam",
        Some(json!({"user": "boss"})),
    )
    .await;
    assert!(s == 200 || s == 201 || s == 204, "{s} {b}");

    // Audited: the deactivation with its successor, and each transfer.
    let (_, log) = call(&api, Method::GET, "/v1/audit?user=sam", "boss", None).await;
    let transfers = log
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "group.transfer" && e["target"] == "sam")
        .count();
    assert_eq!(transfers, 2, "{log}");
    let (_, log) = call(&api, Method::GET, "/v1/audit?user=lea", "boss", None).await;
    let deactivation = log
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "user.deactivate")
        .expect("audited");
    assert!(
        deactivation["detail"].as_str().unwrap().contains("sam"),
        "{deactivation}"
    );

    // Repeating the request is harmless (nothing left to hand over).
    let (s, b) = call(
        &api,
        Method::POST,
        "/v1/users/lea/deactivate",
        "boss",
        Some(json!({"successor": "sam"})),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["transferred"], json!([]));
}

#[tokio::test]
async fn users_known_only_from_tokens_can_be_deactivated() {
    let node = admin_node(&[]);
    let api = Api::new(&node);
    api.touch("boss").await;
    // "tok" signs in with tokens only (dev sign-in, an external identity provider).
    api.touch("tok").await;
    let tok_token = token("tok");
    let mut ws = Client::connect_token(&node, "tok", &tok_token).await;
    let (s, b) = call(&api, Method::GET, "/v1/users/tok", "boss", None).await;
    assert_eq!(s, 404, "no directory record yet: {b}");

    let (s, b) = call(&api, Method::POST, "/v1/users/tok/deactivate", "boss", None).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["status"], "deactivated");
    assert_eq!(b["id"], "tok");
    assert_eq!(ws.expect_close().await, close::SIGNED_OUT);
    // Refused at the API, at connect (old and new tokens alike) and at sign-in.
    let (s, b) = api
        .call_token(Method::GET, "/v1/me", Some(&tok_token), None)
        .await;
    assert_eq!((s, code(&b)), (401, "unauthorized"), "{b}");
    let url = format!("ws://{}/ws", node.addr);
    for t in [tok_token, token("tok")] {
        let refusal = Client::try_connect_raw(&url, Some(&t)).await.unwrap_err();
        assert_eq!(refusal.status, 401, "{}", refusal.body);
    }
    let (s, _) = api
        .call(
            Method::POST,
            "/v1/login",
            None,
            Some(json!({"user": "tok", "password": "whatever12"})),
        )
        .await;
    assert_eq!(s, 401);

    // Even an id the server has never seen can be switched off before its first use.
    let (s, b) = call(
        &api,
        Method::POST,
        "/v1/users/idp.only/deactivate",
        "boss",
        None,
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let (s, _) = call(&api, Method::GET, "/v1/me", "idp.only", None).await;
    assert_eq!(s, 401);
    let (_, log) = call(&api, Method::GET, "/v1/audit?user=tok", "boss", None).await;
    assert!(
        log.as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "user.deactivate"
                && e["detail"].as_str().unwrap_or("").contains("created")),
        "{log}"
    );
    // Not a user id: refused.
    let (s, _) = call(
        &api,
        Method::POST,
        "/v1/users/a%20b/deactivate",
        "boss",
        None,
    )
    .await;
    assert_eq!(s, 400);
}

#[tokio::test]
async fn erasure_anonymises_after_the_delay_and_messages_stay_readable() {
    // One "day" is three seconds here (test hook), and the job runs every second.
    let node = admin_node(&[
        ("CHATD_LEAVERS__ERASE_AFTER_DAYS", "1"),
        ("CHATD_LEAVERS__ERASE_INTERVAL_SECS", "1"),
        ("CHATD_TEST_DAY_MS", "3000"),
    ]);
    let api = Api::new(&node);
    api.touch("boss").await;
    api.touch("bob").await;
    let (s, b) = call(
        &api,
        Method::POST,
        "/v1/departments",
        "boss",
        Some(json!({"id": "rd", "name": "R&D"})),
    )
    .await;
    assert_eq!(s, 201, "{b}");
    api.create_account(
        "boss",
        json!({"id": "eve", "name": "Eve Example", "department": "rd", "title": "Engineer", "password": "letmein42"}),
    )
    .await;
    api.create_account("boss", json!({"id": "fay", "name": "Fay Stays"}))
        .await;
    // Gil leaves too, but a legal hold covers him: his account must outlive the delay.
    api.create_account("boss", json!({"id": "gil", "name": "Gil Held"}))
        .await;
    let (s, hold) = call(
        &api,
        Method::POST,
        "/v1/admin/holds",
        "boss",
        Some(json!({"scope": {"type": "user", "user": "gil"}, "reason": "case 7"})),
    )
    .await;
    assert!(s < 300, "{hold}");
    let (s, b) = call(&api, Method::POST, "/v1/users/gil/deactivate", "boss", None).await;
    assert_eq!(s, 200, "{b}");
    let mut eve = Client::connect(&node, "eve").await;
    ack_seq(&eve.send_dm("bob", "c1", "hello from eve").await);

    // Fay is deactivated and re-activated at once: her erasure is cancelled.
    for step in ["deactivate", "activate"] {
        let (s, b) = call(
            &api,
            Method::POST,
            &format!("/v1/users/fay/{step}"),
            "boss",
            None,
        )
        .await;
        assert_eq!(s, 200, "{b}");
    }
    // Taken before the request: the erasure cannot come sooner than a "day" after it.
    let started = Instant::now();
    let (s, b) = call(&api, Method::POST, "/v1/users/eve/deactivate", "boss", None).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["name"], "Eve Example", "not erased before the delay");
    assert_eq!(eve.expect_close().await, close::SIGNED_OUT);

    // Within a few job runs after the delay, the account is anonymised; colleagues see the
    // former employee.
    let account = loop {
        let (s, a) = call(&api, Method::GET, "/v1/users/eve", "bob", None).await;
        assert_eq!(s, 200, "{a}");
        if a["name"].as_str().unwrap().starts_with("Former employee") {
            break a;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "not erased: {a}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "erased before the delay"
    );
    assert_eq!(account["status"], "deactivated");
    assert!(
        account.get("department").is_none() && account.get("title").is_none(),
        "{account}"
    );
    assert!(!account.to_string().contains("Eve"), "{account}");
    // Credentials are gone: even a re-activated account could not sign in with the old password.
    let (s, _) = call(&api, Method::POST, "/v1/users/eve/activate", "boss", None).await;
    assert_eq!(s, 200);
    let (s, _) = api
        .call(
            Method::POST,
            "/v1/login",
            None,
            Some(json!({"user": "eve", "password": "letmein42"})),
        )
        .await;
    assert_eq!(s, 401);
    // The messages stay readable, under the same user id.
    let mut bob = Client::connect(&node, "bob").await;
    let dm = ConvId::parse("dm:bob:eve").unwrap();
    let messages = bob.sync_all(&dm, 0, 50).await;
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].body, "hello from eve");
    assert_eq!(messages[0].from.as_str(), "eve");
    // Audited once; Fay, re-activated, is untouched.
    let (_, log) = call(&api, Method::GET, "/v1/audit?user=eve", "boss", None).await;
    let erasures = log
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "user.erase")
        .count();
    assert_eq!(erasures, 1, "{log}");
    let (_, fay) = call(&api, Method::GET, "/v1/users/fay", "boss", None).await;
    assert_eq!(fay["name"], "Fay Stays");

    // Gil was deactivated before Eve and is past the delay too, but held: untouched, even
    // after two more runs of the job.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (_, gil) = call(&api, Method::GET, "/v1/users/gil", "boss", None).await;
    assert_eq!(gil["name"], "Gil Held", "erased under a legal hold: {gil}");
    // Released, he follows the normal rule at the next run.
    let id = hold["id"].as_str().unwrap();
    let (s, b) = call(
        &api,
        Method::POST,
        &format!("/v1/admin/holds/{id}/release"),
        "boss",
        None,
    )
    .await;
    assert!(s < 300, "{b}");
    let released = Instant::now();
    loop {
        let (_, gil) = call(&api, Method::GET, "/v1/users/gil", "boss", None).await;
        if gil["name"].as_str().unwrap().starts_with("Former employee") {
            break;
        }
        assert!(
            released.elapsed() < Duration::from_secs(30),
            "not erased after the release: {gil}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

// ---- cluster metadata export / import ----

fn chatd(args: &[&str], opts: &NodeOpts) -> Output {
    let mut cmd = Command::new(chatd_bin());
    cmd.args(args).env("CHATD_LOG", "warn");
    for (k, v) in &opts.env {
        cmd.env(k, v);
    }
    cmd.output().expect("run chatd")
}

/// The first `n` bytes of `rest`, which moves past them.
fn take<'a>(rest: &mut &'a [u8], n: usize) -> &'a [u8] {
    let (head, tail) = rest.split_at(n);
    *rest = tail;
    head
}

/// The records of an export, in a comparable form: meta records, audit lines, held lines
/// (sorted), and the manifest.
type Contents = (
    BTreeSet<(String, String, Vec<u8>)>,
    Vec<Value>,
    Vec<Value>,
    Value,
);

fn contents(archive: &Path) -> Contents {
    let file = std::fs::File::open(archive).unwrap();
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(file));
    let (mut meta, mut audit, mut held, mut manifest) =
        (BTreeSet::new(), Vec::new(), Vec::new(), Value::Null);
    for entry in tar.entries().unwrap() {
        let mut entry = entry.unwrap();
        let name = entry.path().unwrap().to_string_lossy().into_owned();
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes).unwrap();
        match name.as_str() {
            "meta.kv" => {
                let mut rest = bytes.as_slice();
                while !rest.is_empty() {
                    let n = u16::from_be_bytes(take(&mut rest, 2).try_into().unwrap()) as usize;
                    let ns = String::from_utf8(take(&mut rest, n).to_vec()).unwrap();
                    let n = u32::from_be_bytes(take(&mut rest, 4).try_into().unwrap()) as usize;
                    let key = String::from_utf8(take(&mut rest, n).to_vec()).unwrap();
                    let n = u32::from_be_bytes(take(&mut rest, 4).try_into().unwrap()) as usize;
                    meta.insert((ns, key, take(&mut rest, n).to_vec()));
                }
            }
            "audit.jsonl" | "held.jsonl" => {
                let mut lines: Vec<Value> = String::from_utf8(bytes)
                    .unwrap()
                    .lines()
                    .map(|l| serde_json::from_str(l).unwrap())
                    .collect();
                lines.sort_by_key(|v| v.to_string());
                if name == "audit.jsonl" {
                    audit = lines;
                } else {
                    held = lines;
                }
            }
            "manifest.json" => manifest = serde_json::from_slice(&bytes).unwrap(),
            _ => {}
        }
    }
    (meta, audit, held, manifest)
}

#[tokio::test]
async fn cluster_metadata_export_then_import_into_an_empty_keyspace_round_trips() {
    let source = unique_keyspace("leavers_src");
    let target = unique_keyspace("leavers_dst");
    let opts = |ks: &str, id: &str| cluster_node(ks, id).env("CHATD_AUTH__ADMINS", r#"["boss"]"#);
    let a = Node::start_with(opts(&source, &format!("{source}-a")));
    let api = Api::new(&a);
    api.touch("boss").await;
    // Something in many namespaces: a department, accounts with passwords, a group with
    // settings (name reservation, announcement, mute), a leaver, a revoked user, a held message.
    let (s, _) = call(
        &api,
        Method::POST,
        "/v1/departments",
        "boss",
        Some(json!({"id": "ops", "name": "Ops"})),
    )
    .await;
    assert_eq!(s, 201);
    api.create_account(
        "boss",
        json!({"id": "kim", "name": "Kim", "department": "ops", "password": "welcome42"}),
    )
    .await;
    api.create_account("boss", json!({"id": "lou", "name": "Lou"}))
        .await;
    let g = api.create_group("kim", "Ops room", &["lou"]).await;
    let (s, b) = call(
        &api,
        Method::POST,
        &format!("/v1/groups/{g}/mutes"),
        "kim",
        Some(json!({"user": "lou", "duration_secs": 600})),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let (s, b) = call(
        &api,
        Method::PUT,
        "/v1/users/lou/password",
        "boss",
        Some(json!({"password": "another42"})),
    )
    .await;
    assert_eq!(s, 204, "{b}");
    let mut kim = Client::connect(&a, "kim").await;
    let held = kim.send_group(&g, "ad1", "便宜好货 加微信 abc123").await;
    assert!(
        matches!(held, protocol::ServerFrame::Ack { seq: None, .. }),
        "{held:?}"
    );
    let (s, b) = call(&api, Method::POST, "/v1/users/lou/deactivate", "boss", None).await;
    assert_eq!(s, 200, "{b}");

    let dir = tempfile::tempdir().unwrap();
    let first = dir.path().join("source.tar.gz");
    let out = chatd(
        &["export", "--out", first.to_str().unwrap()],
        &opts(&source, "x"),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let exported = contents(&first);
    let namespaces = exported.3["namespaces"].as_object().unwrap();
    for ns in [
        "user",
        "credential",
        "dept",
        "group_name",
        "group_settings",
        "leaver",
        "revoked_user",
    ] {
        assert!(
            namespaces.contains_key(ns),
            "{ns} missing from {namespaces:?}"
        );
    }
    assert!(
        !exported.1.is_empty() && exported.2.len() == 1,
        "{}",
        exported.3
    );

    // Into an empty keyspace: every record back; not a second time without --force.
    let load = |force: bool| {
        let mut args = vec!["import", "--from", first.to_str().unwrap()];
        if force {
            args.push("--force");
        }
        chatd(&args, &opts(&target, "y"))
    };
    let out = load(false);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = load(false);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already holds metadata"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let second = dir.path().join("target.tar.gz");
    let out = chatd(
        &["export", "--out", second.to_str().unwrap()],
        &opts(&target, "z"),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let imported = contents(&second);
    assert_eq!(imported.0, exported.0, "meta records differ");
    assert_eq!(imported.1, exported.1, "audit entries differ");
    assert_eq!(imported.2, exported.2, "held messages differ");
    assert_eq!(imported.3["namespaces"], exported.3["namespaces"]);

    // A node on the imported keyspace knows the accounts: Kim signs in with her password.
    let b_node = Node::start_with(opts(&target, &format!("{target}-b")));
    let on_b = Api::new(&b_node);
    let (s, b) = on_b
        .call(
            Method::POST,
            "/v1/login",
            None,
            Some(json!({"user": "kim", "password": "welcome42"})),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    let (s, b) = call(&on_b, Method::GET, "/v1/users/lou", "boss", None).await;
    assert_eq!((s, b["status"].as_str()), (200, Some("deactivated")), "{b}");
    // A backup archive is not a metadata export: refused with a clear message.
    let bogus = dir.path().join("bogus.tar.gz");
    std::fs::write(&bogus, b"not an archive").unwrap();
    let out = chatd(
        &["import", "--from", bogus.to_str().unwrap(), "--force"],
        &opts(&target, "w"),
    );
    assert!(!out.status.success());
    drop(b_node);
    drop(a);
    let _ = GroupId::new(g);
}
