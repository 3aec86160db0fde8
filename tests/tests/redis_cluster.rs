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
