//! Moderation penalties hold on every node and across restarts: violations seen by different
//! nodes climb one escalation ladder, a mute earned on one node is enforced on the other, an
//! administrator's lift on either frees the user everywhere, and a suspension outlives a
//! restart of an embedded node.
//!
//! The cluster test shares the test Redis and CQL database (`CHATD_TEST_REDIS_URL`,
//! `CHATD_TEST_CQL`) and never disturbs them.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use protocol::{ErrorCode, ServerFrame};
use reqwest::Method;
use std::path::Path;
use std::time::{Duration, Instant};
use testkit::*;

/// A text the shipped rules block and escalate (drugs).
const VIOLATION: &str = "买冰毒吗";
/// A clean text.
const CLEAN: &str = "a perfectly clean message";
/// How long a node may take to learn a penalty or its lift (a broadcast is immediate; the
/// periodic refresh, set to 1 s below, is the bound for a node that missed it). Generous for
/// a loaded machine.
const BOUND: Duration = Duration::from_secs(10);

fn with_admin(opts: NodeOpts) -> NodeOpts {
    opts.env("CHATD_AUTH__ADMINS", r#"["boss"]"#)
        .env("CHATD_MODERATION__PENALTY_REFRESH_MS", 1000)
}

/// Sends a violating DM; asserts it is blocked.
async fn violate(c: &mut Client, to: &str, cmid: &str) {
    let f = c.send_dm(to, cmid, VIOLATION).await;
    assert_eq!(error_code(&f), ErrorCode::Blocked, "{f:?}");
}

/// Sends clean DMs until one gets the `want`ed answer (`None`: an ack), within [`BOUND`];
/// returns how long it took.
async fn until_answer(c: &mut Client, to: &str, tag: &str, want: Option<ErrorCode>) -> Duration {
    let start = Instant::now();
    for i in 0.. {
        let f = c.send_dm(to, &format!("{tag}-{i}"), CLEAN).await;
        let got = match &f {
            ServerFrame::Ack { seq: Some(_), .. } => None,
            ServerFrame::Error { code, .. } => Some(*code),
            other => panic!("unexpected answer {other:?}"),
        };
        if got == want {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < BOUND,
            "{tag}: still {got:?} after {:?}, wanted {want:?}",
            start.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    unreachable!()
}

/// An innocent user's message is acked at normal speed.
async fn innocent_is_served(c: &mut Client, to: &str, cmid: &str) {
    let start = Instant::now();
    ack_seq(&c.send_dm(to, cmid, CLEAN).await);
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "an innocent send took {:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn penalties_hold_on_every_node_of_a_cluster() {
    let keyspace = unique_keyspace("pen");
    let a = Node::start_with(with_admin(cluster_node(
        &keyspace,
        &format!("{keyspace}-a"),
    )));
    let b = Node::start_with(with_admin(cluster_node(
        &keyspace,
        &format!("{keyspace}-b"),
    )));
    let (api_a, api_b) = (Api::new(&a), Api::new(&b));
    api_a.touch("boss").await;
    let mut bob = Client::connect(&b, "bob").await;
    let mut ann_a = Client::connect(&a, "ann").await;
    let mut ann_b = Client::connect(&b, "ann").await;

    // The default ladder: warn at 1, mute for 10 minutes at 3. Two violations, one per node:
    // not muted yet, on either node.
    violate(&mut ann_a, "bob", "v1").await;
    violate(&mut ann_b, "bob", "v2").await;
    ack_seq(&ann_a.send_dm("bob", "c1", CLEAN).await);
    ack_seq(&ann_b.send_dm("bob", "c2", CLEAN).await);

    // The third, on node A, reaches the mute step; node B refuses her too, with the same
    // error as on one node.
    let start = Instant::now();
    violate(&mut ann_a, "bob", "v3").await;
    eprintln!(
        "a violation that mutes (count, store, broadcast) answered in {:?}",
        start.elapsed()
    );
    let f = ann_a.send_dm("bob", "c3", CLEAN).await;
    assert_eq!(error_code(&f), ErrorCode::Muted, "{f:?}");
    let took = until_answer(&mut ann_b, "bob", "mb", Some(ErrorCode::Muted)).await;
    eprintln!("node B refused the muted user after {took:?}");
    // Reconnecting to node B does not escape it.
    drop(ann_b);
    let mut ann_b = Client::connect(&b, "ann").await;
    let f = ann_b.send_dm("bob", "c4", CLEAN).await;
    assert_eq!(error_code(&f), ErrorCode::Muted, "{f:?}");
    // Others are unaffected.
    innocent_is_served(&mut bob, "ann", "bob1").await;

    // An administrator lifts it on node B: node A lets her post again, and the count starts
    // over (one more violation only warns).
    let (s, body) = api_b
        .call(Method::POST, "/v1/admin/users/ann/lift", Some("boss"), None)
        .await;
    assert_eq!(s, 204, "{body}");
    let took = until_answer(&mut ann_a, "bob", "la", None).await;
    eprintln!("node A freed the user after {took:?}");
    violate(&mut ann_b, "bob", "v4").await;
    ack_seq(&ann_a.send_dm("bob", "c5", CLEAN).await);
    innocent_is_served(&mut bob, "ann", "bob2").await;
}

/// A node that misses a penalty's broadcast (node A's are refused by a test hook) still
/// enforces it, and its lift, within the refresh interval (1 s here), read from the store.
#[tokio::test]
async fn a_node_that_missed_the_broadcast_converges_within_the_refresh() {
    let keyspace = unique_keyspace("pen");
    let a = Node::start_with(with_admin(
        cluster_node(&keyspace, &format!("{keyspace}-a"))
            .env("CHATD_TEST_FAIL_PENALTY_BROADCASTS", 1),
    ));
    let b = Node::start_with(with_admin(cluster_node(
        &keyspace,
        &format!("{keyspace}-b"),
    )));
    Api::new(&a).touch("boss").await;
    let mut bob = Client::connect(&b, "bob").await;
    let mut ann_a = Client::connect(&a, "ann").await;
    let mut ann_b = Client::connect(&b, "ann").await;
    for i in 0..3 {
        violate(&mut ann_a, "bob", &format!("v{i}")).await;
    }
    let took = until_answer(&mut ann_b, "bob", "mb", Some(ErrorCode::Muted)).await;
    eprintln!("without the broadcast, node B refused the muted user after {took:?}");
    innocent_is_served(&mut bob, "ann", "bob1").await;
    let (s, body) = Api::new(&a)
        .call(Method::POST, "/v1/admin/users/ann/lift", Some("boss"), None)
        .await;
    assert_eq!(s, 204, "{body}");
    let took = until_answer(&mut ann_b, "bob", "lb", None).await;
    eprintln!("without the broadcast, node B freed the user after {took:?}");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).unwrap();
        }
    }
}

/// The shipped rules with a ladder that suspends at the first violation.
fn suspend_at_once_rules(dir: &Path) {
    copy_dir(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/moderation"),
        dir,
    );
    let policy = dir.join("policy.toml");
    let mut text = std::fs::read_to_string(&policy).unwrap();
    let start = text.find("ladder = [").expect("a ladder in policy.toml");
    let end = start + text[start..].find("\n]").expect("the ladder's end") + 2;
    text.replace_range(start..end, r#"ladder = [{ at = 1, penalty = "suspend" }]"#);
    std::fs::write(policy, text).unwrap();
}

#[tokio::test]
async fn a_suspension_outlives_a_restart() {
    let rules = tempfile::tempdir().unwrap();
    suspend_at_once_rules(rules.path());
    let data = tempfile::tempdir().unwrap();
    let opts =
        with_admin(NodeOpts::default()).env("CHATD_MODERATION__RULES_DIR", rules.path().display());
    let mut node = Node::spawn(data.path(), opts.clone());
    Api::new(&node).touch("boss").await;
    let bob = Client::connect(&node, "bob").await;
    let mut ann = Client::connect(&node, "ann").await;
    violate(&mut ann, "bob", "v1").await;
    let f = ann.send_dm("bob", "c1", CLEAN).await;
    assert_eq!(error_code(&f), ErrorCode::Muted, "{f:?}");
    drop((ann, bob));

    // A crash, not a clean stop: the penalty was durable when it was handed out.
    node.kill9();
    let node = Node::spawn(data.path(), opts);
    let mut bob = Client::connect(&node, "bob").await;
    let mut ann = Client::connect(&node, "ann").await;
    let f = ann.send_dm("bob", "c2", CLEAN).await;
    assert_eq!(error_code(&f), ErrorCode::Muted, "{f:?}");
    innocent_is_served(&mut bob, "ann", "bob1").await;

    let (s, body) = Api::new(&node)
        .call(Method::POST, "/v1/admin/users/ann/lift", Some("boss"), None)
        .await;
    assert_eq!(s, 204, "{body}");
    ack_seq(&ann.send_dm("bob", "c3", CLEAN).await);
    // A lift names a user id.
    let (s, body) = Api::new(&node)
        .call(Method::POST, "/v1/admin/users/%00/lift", Some("boss"), None)
        .await;
    assert_eq!(s, 400, "not a user id: {body}");
}
