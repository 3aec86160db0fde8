//! Cluster mode on a Redis Cluster (`router.redis_mode = "cluster"`): two chatd processes
//! sharing a real three-master Redis Cluster (sharded pub/sub, seq counters) and the real CQL
//! database. `router.redis_url` points at a closed port, so everything must go through the
//! cluster seeds.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use protocol::{ConvId, GroupId, ServerFrame};
use std::time::Duration;
use testkit::*;

/// A cluster-mode node whose Redis is the test Redis Cluster.
fn redis_cluster_node(keyspace: &str, node_id: &str) -> NodeOpts {
    let urls = service_env("CHATD_TEST_REDIS_CLUSTER_URLS");
    let list = urls
        .split(',')
        .map(|u| format!("\"{u}\""))
        .collect::<Vec<_>>()
        .join(",");
    cluster_node(keyspace, node_id)
        .env("CHATD_ROUTER__REDIS_MODE", "cluster")
        .env("CHATD_ROUTER__REDIS_CLUSTER_URLS", format!("[{list}]"))
        // Nothing may use a standalone Redis: this port is closed.
        .env("CHATD_ROUTER__REDIS_URL", "redis://127.0.0.1:1")
}

#[tokio::test]
async fn two_nodes_on_a_redis_cluster_deliver_dms_and_groups() {
    let keyspace = unique_keyspace("rc");
    let a = Node::start_with(redis_cluster_node(&keyspace, &format!("{keyspace}-a")));
    let b = Node::start_with(redis_cluster_node(&keyspace, &format!("{keyspace}-b")));
    let mut alice = Client::connect(&a, "alice").await;
    let mut bob = Client::connect(&b, "bob").await;
    let mut dave_a = Client::connect(&a, "dave").await;
    let mut dave_b = Client::connect(&b, "dave").await;

    // Direct messages both ways, across nodes; seqs come from the cluster's counters.
    for i in 1..=3u64 {
        let ack = alice
            .send_dm("bob", &format!("a{i}"), &format!("a->b {i}"))
            .await;
        assert_eq!(ack_seq(&ack), 2 * i - 1);
        assert_eq!(bob.next_message().await.body, format!("a->b {i}"));
        let ack = bob
            .send_dm("alice", &format!("b{i}"), &format!("b->a {i}"))
            .await;
        assert_eq!(ack_seq(&ack), 2 * i);
        assert_eq!(alice.next_message().await.body, format!("b->a {i}"));
    }

    // A group with members on both nodes; dave has a session on each and sees everything once,
    // in seq order.
    let g = Api::new(&a)
        .create_group("alice", "sharded", &["bob", "dave"])
        .await;
    for i in 1..=6u64 {
        let ack = if i % 2 == 0 {
            bob.send_group(&g, &format!("g{i}"), &format!("m{i}")).await
        } else {
            alice
                .send_group(&g, &format!("g{i}"), &format!("m{i}"))
                .await
        };
        assert_eq!(ack_seq(&ack), i);
    }
    for dave in [&mut dave_a, &mut dave_b] {
        for i in 1..=6u64 {
            let m = dave.next_message().await;
            assert_eq!((m.seq.0, m.body.clone()), (i, format!("m{i}")));
        }
        assert!(
            dave.try_recv(Duration::from_millis(300))
                .await
                .is_none_or(|f| !matches!(f, ServerFrame::Message(_))),
            "no duplicates"
        );
    }
    // Many conversations (their counters and the nodes' channels on different shards) still
    // deliver across nodes.
    for i in 0..10 {
        let peer = format!("peer{i}");
        let mut p = Client::connect(&b, &peer).await;
        assert_eq!(ack_seq(&alice.send_dm(&peer, "x", "hello").await), 1);
        assert_eq!(p.next_message().await.body, "hello");
    }
    // History is shared.
    let conv = ConvId::group(&GroupId::new(g));
    assert_eq!(bob.sync_all(&conv, 0, 500).await.len(), 6);
}

/// One master of the test Redis Cluster.
#[derive(Debug, Clone)]
struct Master {
    id: String,
    port: String,
    slots: Vec<(u16, u16)>,
}

/// Runs `redis-cli -p <port> <args>` and returns its output (an error on failure or on a
/// Redis error reply).
fn cli(port: &str, args: &[&str]) -> Result<String, String> {
    let out = std::process::Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", port])
        .args(args)
        .output()
        .map_err(|e| format!("redis-cli: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if !out.status.success() || text.starts_with("ERR") || text.contains("(error)") {
        return Err(format!("redis-cli -p {port} {args:?}: {text}"));
    }
    Ok(text)
}

fn seed_port() -> String {
    let urls = service_env("CHATD_TEST_REDIS_CLUSTER_URLS");
    let first = urls.split(',').next().unwrap().to_owned();
    first.rsplit(':').next().unwrap().to_owned()
}

fn masters() -> Vec<Master> {
    cli(&seed_port(), &["CLUSTER", "NODES"])
        .unwrap()
        .lines()
        .filter(|l| l.contains("master"))
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let port = f[1].split('@').next().unwrap().rsplit(':').next().unwrap();
            let slots = f[8..]
                .iter()
                .filter(|s| !s.starts_with('['))
                .map(|s| match s.split_once('-') {
                    Some((a, b)) => (a.parse().unwrap(), b.parse().unwrap()),
                    None => (s.parse().unwrap(), s.parse().unwrap()),
                })
                .collect();
            Master {
                id: f[0].to_owned(),
                port: port.to_owned(),
                slots,
            }
        })
        .collect()
}

fn keyslot(key: &str) -> u16 {
    cli(&seed_port(), &["CLUSTER", "KEYSLOT", key])
        .unwrap()
        .parse()
        .unwrap()
}

/// Moves `slot` (and its keys) from `from` to `to` the way `redis-cli --cluster reshard`
/// does: IMPORTING on the target, MIGRATING on the source, MIGRATE the keys, then NODE on
/// every master. `pause` is spent with the slot half-moved (commands meet ASK redirects).
fn move_slot(
    slot: u16,
    from: &Master,
    to: &Master,
    all: &[Master],
    pause: Duration,
) -> Result<(), String> {
    let s = slot.to_string();
    cli(&to.port, &["CLUSTER", "SETSLOT", &s, "IMPORTING", &from.id])?;
    cli(&from.port, &["CLUSTER", "SETSLOT", &s, "MIGRATING", &to.id])?;
    std::thread::sleep(pause / 2);
    loop {
        let keys = cli(&from.port, &["CLUSTER", "GETKEYSINSLOT", &s, "100"])?;
        let keys: Vec<&str> = keys.lines().filter(|k| !k.is_empty()).collect();
        if keys.is_empty() {
            break;
        }
        let mut args = vec!["MIGRATE", "127.0.0.1", &to.port, "", "0", "5000", "KEYS"];
        args.extend(keys);
        cli(&from.port, &args)?;
    }
    std::thread::sleep(pause / 2);
    cli(&to.port, &["CLUSTER", "SETSLOT", &s, "NODE", &to.id])?;
    cli(&from.port, &["CLUSTER", "SETSLOT", &s, "NODE", &to.id])?;
    for m in all.iter().filter(|m| m.id != from.id && m.id != to.id) {
        cli(&m.port, &["CLUSTER", "SETSLOT", &s, "NODE", &to.id])?;
    }
    Ok(())
}

/// A slot moved away from its master for a test; dropping it moves the slot back (the
/// cluster is shared with other tests).
struct MovedSlot {
    slot: u16,
    home: Master,
    away: Master,
    all: Vec<Master>,
}

impl MovedSlot {
    /// Moves `slot` from its owner to another master, `pause` spent half-moved.
    fn away(slot: u16, pause: Duration) -> MovedSlot {
        let all = masters();
        let home = all
            .iter()
            .find(|m| m.slots.iter().any(|(a, b)| (*a..=*b).contains(&slot)))
            .expect("slot owner")
            .clone();
        let away = all.iter().find(|m| m.id != home.id).unwrap().clone();
        move_slot(slot, &home, &away, &all, pause).unwrap();
        MovedSlot {
            slot,
            home,
            away,
            all,
        }
    }
}

impl Drop for MovedSlot {
    fn drop(&mut self) {
        if let Err(e) = move_slot(self.slot, &self.away, &self.home, &self.all, Duration::ZERO) {
            eprintln!("could not move slot {} back: {e}", self.slot);
        }
    }
}

/// Sends `n` DMs from `from` to `to` back to back (from `first`), returning the acked seqs.
fn spawn_sender(
    mut from: Client,
    to: &str,
    first: u64,
    n: u64,
) -> (
    tokio::task::JoinHandle<Client>,
    tokio::sync::mpsc::UnboundedReceiver<u64>,
) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let to = to.to_owned();
    let task = tokio::spawn(async move {
        for i in first..first + n {
            let cmid = format!("m{i}");
            let ack = from.send_dm(&to, &cmid, &cmid).await;
            let _ = tx.send(ack_seq(&ack));
        }
        from
    });
    (task, rx)
}

/// Reads `conv`'s messages until `last` arrived, the socket closed or `wait` passed without
/// one; asserts seq order. Returns them and whether the socket is still open.
async fn read_until(
    c: &mut Client,
    conv: &ConvId,
    last: u64,
    wait: Duration,
) -> (Vec<protocol::Message>, bool) {
    let mut got: Vec<protocol::Message> = Vec::new();
    while got.last().is_none_or(|m| m.seq.0 < last) {
        match tokio::time::timeout(wait, c.ws_next()).await {
            Ok(Some(ServerFrame::Message(m))) if &m.conv == conv => {
                if let Some(prev) = got.last() {
                    assert!(m.seq > prev.seq, "seq {} after {}", m.seq.0, prev.seq.0);
                }
                got.push(m);
            }
            Ok(Some(_)) => {}
            Ok(None) => return (got, false),
            Err(_) => break,
        }
    }
    (got, true)
}

#[tokio::test]
async fn slot_migrations_while_messages_flow_lose_nothing_acked() {
    // The shared cluster: run this test alone (it moves two slots and moves them back).
    let keyspace = unique_keyspace("rcm");
    let a_id = format!("{keyspace}-a");
    let b_id = format!("{keyspace}-b");
    let a = Node::start_with(redis_cluster_node(&keyspace, &a_id));
    let b = Node::start_with(redis_cluster_node(&keyspace, &b_id));
    let (sender, receiver) = ("migsend", "migrecv");
    let conv = ConvId::parse(&format!("dm:{receiver}:{sender}")).unwrap();
    let mut bob = Client::connect(&b, receiver).await;
    let alice = Client::connect(&a, sender).await;

    // 1. The conversation's seq counter moves to another master mid-flow: the counter follows
    //    (ASK, then MOVED), seqs stay dense, every message is delivered live, in order.
    let (task, mut acks) = spawn_sender(alice, receiver, 1, 80);
    for _ in 0..20 {
        acks.recv().await.unwrap();
    }
    let slot = keyslot(&format!("chat:seq:{keyspace}:{{{conv}}}"));
    let moved =
        tokio::task::spawn_blocking(move || MovedSlot::away(slot, Duration::from_millis(300)))
            .await
            .unwrap();
    let alice = task.await.unwrap();
    let (got, open) = read_until(&mut bob, &conv, 80, Duration::from_secs(10)).await;
    assert!(open, "moving a counter's slot closes no session");
    let seqs: Vec<u64> = got.iter().map(|m| m.seq.0).collect();
    assert_eq!(seqs, (1..=80).collect::<Vec<_>>());
    eprintln!(
        "slot {slot} (the counter) moved from {} to {}",
        moved.home.port, moved.away.port
    );
    tokio::task::spawn_blocking(move || drop(moved))
        .await
        .unwrap();

    // 2. The receiving node's channel moves mid-flow: the server drops the sharded
    //    subscription, the node subscribes again on the new owner and (it may have missed
    //    envelopes) closes its sessions with 4000; the client reconnects and syncs. Nothing
    //    acked is lost, live order holds, and live delivery works again afterwards.
    let (task, mut acks) = spawn_sender(alice, receiver, 81, 80);
    for _ in 0..20 {
        acks.recv().await.unwrap();
    }
    let slot = keyslot(&format!("chat:node:{{{b_id}}}"));
    let moved =
        tokio::task::spawn_blocking(move || MovedSlot::away(slot, Duration::from_millis(300)))
            .await
            .unwrap();
    let mut alice = task.await.unwrap();
    let (mut got2, open) = read_until(&mut bob, &conv, 160, Duration::from_secs(10)).await;
    let closed_live = got2.len();
    if got2.last().is_none_or(|m| m.seq.0 < 160) {
        bob = Client::connect(&b, receiver).await;
        let after = got2.last().map_or(80, |m| m.seq.0);
        got2.extend(bob.sync_all(&conv, after, 500).await);
    }
    let seqs: Vec<u64> = got2.iter().map(|m| m.seq.0).collect();
    assert_eq!(
        seqs,
        (81..=160).collect::<Vec<_>>(),
        "nothing acked lost, in order"
    );
    eprintln!(
        "slot {slot} (node b's channel) moved: {closed_live} delivered live, session {}",
        if open {
            "stayed open"
        } else {
            "closed (reconnected and synced)"
        }
    );
    // Live delivery to node b follows the slot: a session opened once the node settled gets
    // the next message live (no sync).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    drop(bob);
    let mut bob = Client::connect(&b, receiver).await;
    let ack = alice.send_dm(receiver, "after", "after").await;
    assert_eq!(ack_seq(&ack), 161);
    assert_eq!(bob.next_message().await.seq.0, 161);
    // And again after the slot came home.
    tokio::task::spawn_blocking(move || drop(moved))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    drop(bob);
    let mut bob = Client::connect(&b, receiver).await;
    let ack = alice.send_dm(receiver, "home", "home").await;
    assert_eq!(ack_seq(&ack), 162);
    assert_eq!(bob.next_message().await.seq.0, 162);
    for l in b.log_lines() {
        if l.contains("sharded") || l.contains("subscription") {
            eprintln!("node b: {l}");
        }
    }
}

#[tokio::test]
async fn a_dead_publishers_first_messages_reach_the_survivor_on_a_redis_cluster() {
    // As in cluster_delivery.rs, on the Redis Cluster: the allocation record lives in the
    // dead node's slot and the counter in the conversation's, and the alive keys are read
    // across shards.
    let keyspace = unique_keyspace("rcd");
    let conv = ConvId::parse("dm:deadrecv:deadsend").unwrap();
    let survivor = Node::start_with(redis_cluster_node(&keyspace, &format!("{keyspace}-ok")));
    let mut silent = Node::start_with(
        redis_cluster_node(&keyspace, &format!("{keyspace}-silent"))
            .env("CHATD_TEST_DROP_PUBLISH_IN", conv.as_str()),
    );
    let mut recv = Client::connect(&survivor, "deadrecv").await;
    let mut send = Client::connect(&silent, "deadsend").await;
    for i in 1..=3u64 {
        let cmid = format!("d{i}");
        assert_eq!(ack_seq(&send.send_dm("deadrecv", &cmid, &cmid).await), i);
    }
    assert!(
        recv.try_recv(Duration::from_millis(1000))
            .await
            .is_none_or(|f| !matches!(f, ServerFrame::Message(_))),
        "nothing is published while the publisher lives"
    );
    silent.kill9();
    let killed = std::time::Instant::now();
    let mut seqs = Vec::new();
    while seqs.len() < 3 {
        let m = recv.next_message().await;
        seqs.push((m.seq.0, m.body));
    }
    let elapsed = killed.elapsed();
    assert_eq!(
        seqs,
        vec![(1, "d1".into()), (2, "d2".into()), (3, "d3".into())]
    );
    eprintln!("delivered {elapsed:?} after the kill");
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
}
