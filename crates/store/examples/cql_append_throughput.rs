//! Persisted messages per second into a CQL database through [`ScyllaStore::append`].
//!
//! ```text
//! source .cache/services.env     # CHATD_TEST_CQL=127.0.0.1:PORT (scripts/services/cassandra.sh start)
//! cargo run --release -p store --example cql_append_throughput -- \
//!     [--messages 100000] [--concurrency 512] [--convs 1000] [--consistency one] [--node HOST:PORT]
//!     [--write-path logged|split|unlogged] [--dm] [--db-pid PID]
//! ```
//!
//! `--dm` writes direct messages (two participants, so the `user_convs` rows are written too);
//! otherwise group messages. `--db-pid` names the database process, whose CPU time (from
//! /proc) is reported per message next to this process's own.
//!
//! Every append is acknowledged only after its logged batch was written at the given
//! consistency (the same path the gateway uses). Seqs come from an in-process
//! [`LocalSeqSource`] (Redis in cluster mode). The benchmark makes a keyspace of its own
//! and drops it at the end.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use protocol::{ConvId, GroupId, MessageId, MessageKind, UserId};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use store::scylla::{parse_consistency, ScyllaOptions, ScyllaStore, WritePath};
use store::{LocalSeqSource, NewMessage, Store};

struct Args {
    node: String,
    messages: u64,
    concurrency: u64,
    convs: u64,
    consistency: String,
    write_path: WritePath,
    dm: bool,
    db_pid: Option<u32>,
}

fn args() -> Args {
    let mut a = Args {
        node: std::env::var("CHATD_TEST_CQL").unwrap_or_default(),
        messages: 100_000,
        concurrency: 512,
        convs: 1000,
        consistency: "one".into(),
        write_path: WritePath::default(),
        dm: false,
        db_pid: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--dm" {
            a.dm = true;
            continue;
        }
        let value = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--node" => a.node = value,
            "--messages" => a.messages = value.parse().expect("--messages N"),
            "--concurrency" => a.concurrency = value.parse().expect("--concurrency N"),
            "--convs" => a.convs = value.parse().expect("--convs N"),
            "--consistency" => a.consistency = value,
            "--db-pid" => a.db_pid = Some(value.parse().expect("--db-pid PID")),
            "--write-path" => {
                a.write_path = match value.as_str() {
                    "logged" => WritePath::Logged,
                    "split" => WritePath::Split,
                    "unlogged" => WritePath::Unlogged,
                    other => panic!("--write-path logged|split|unlogged, not {other}"),
                }
            }
            other => panic!("unknown flag {other}"),
        }
    }
    assert!(
        !a.node.is_empty(),
        "no database: pass --node HOST:PORT or set CHATD_TEST_CQL \
         (scripts/services/cassandra.sh start; source .cache/services.env)"
    );
    a
}

#[tokio::main]
async fn main() {
    let a = args();
    let ks = format!(
        "chat_bench_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    );
    let opts = ScyllaOptions {
        consistency: parse_consistency(&a.consistency).expect("consistency"),
        request_timeout: Duration::from_secs(30),
        write_path: a.write_path,
        ..ScyllaOptions::single_node(a.node.clone(), ks.clone())
    };
    let store = ScyllaStore::new(opts, Arc::new(LocalSeqSource::new()))
        .await
        .expect("connect");
    store.migrate().await.expect("migrate");
    let convs: Vec<ConvId> = (0..a.convs)
        .map(|i| {
            if a.dm {
                ConvId::direct(&UserId::new(format!("a{i}")), &UserId::new(format!("b{i}")))
            } else {
                ConvId::group(&GroupId::new(format!("bench{i}")))
            }
        })
        .collect();
    let convs = Arc::new(convs);
    let next = Arc::new(AtomicU64::new(0));
    // Warm-up: the first message of each conversation takes the recovery path.
    for c in convs.iter() {
        store
            .append(msg(c, u64::MAX - 1, 0))
            .await
            .expect("warm-up");
    }
    let cpu0 = (cpu_ms("self"), a.db_pid.map(|p| cpu_ms(&p.to_string())));
    let start = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..a.concurrency {
        let (store, convs, next) = (store.clone(), convs.clone(), next.clone());
        let total = a.messages;
        workers.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= total {
                    return lat;
                }
                let c = &convs[(n % convs.len() as u64) as usize];
                let t = Instant::now();
                store.append(msg(c, n, 0)).await.expect("append");
                lat.push(t.elapsed());
            }
        }));
    }
    let mut lat = Vec::with_capacity(a.messages as usize);
    for w in workers {
        lat.extend(w.await.expect("worker"));
    }
    let took = start.elapsed();
    let own_ms = cpu_ms("self") - cpu0.0;
    let db_ms = a
        .db_pid
        .map(|p| cpu_ms(&p.to_string()) - cpu0.1.unwrap_or(0.0));
    lat.sort_unstable();
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    println!(
        "{} {} messages, {} concurrent appends, {} conversations, consistency {}, {:?}: \
         {:.1} s, {:.0} persisted messages/s; latency p50 {:?} p99 {:?} max {:?}; \
         CPU per message: client {:.3} ms, database {}",
        a.messages,
        if a.dm { "direct" } else { "group" },
        a.concurrency,
        a.convs,
        a.consistency,
        a.write_path,
        took.as_secs_f64(),
        a.messages as f64 / took.as_secs_f64(),
        pct(0.50),
        pct(0.99),
        lat[lat.len() - 1],
        own_ms / a.messages as f64,
        db_ms.map_or("-".into(), |d| format!("{:.3} ms", d / a.messages as f64)),
    );
    let session = scylla::client::session_builder::SessionBuilder::new()
        .known_node(&a.node)
        .build()
        .await
        .expect("connect to drop the keyspace");
    session
        .query_unpaged(format!("DROP KEYSPACE IF EXISTS {ks}"), &[])
        .await
        .expect("drop keyspace");
}

/// CPU time (user + system) of a process so far, ms, from /proc/<pid>/stat.
fn cpu_ms(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc stat");
    // Fields after the command name (which is in parentheses and may contain spaces).
    let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    let ticks: f64 = f[11].parse::<f64>().expect("utime") + f[12].parse::<f64>().expect("stime");
    // USER_HZ is 100 on Linux.
    ticks * 10.0
}

fn msg(conv: &ConvId, n: u64, ts: u64) -> NewMessage {
    NewMessage {
        conv: conv.clone(),
        from: UserId::new(format!("u{}", n % 50)),
        client_msg_id: format!("c{n}"),
        id: MessageId::new(uuid::Uuid::now_v7().to_string()),
        kind: MessageKind::Text,
        body: "a typical short chat message of about sixty bytes, give or take".into(),
        attachment: None,
        mentions: vec![],
        reply_to: None,
        ts: 1_700_000_000_000 + ts,
        participants: match conv.kind() {
            protocol::ConvKind::Direct(x, y) => vec![UserId::new(x), UserId::new(y)],
            _ => vec![],
        },
        moderation: None,
    }
}
