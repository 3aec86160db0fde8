//! The ScyllaDB backend against a real CQL database (Apache Cassandra 5 in the tests).
//!
//! The database's address comes from `CHATD_TEST_CQL` (`host:port`), which
//! `scripts/services/cassandra.sh start` (or `scripts/services/env.sh start`) writes to
//! `.cache/services.env`. Without it these tests fail: they never pass silently. Every test
//! works in a keyspace of its own (`chat_test_<random>_<name>`) and drops it at the end, also
//! when it fails.

#![cfg(feature = "scylla")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use futures_util::FutureExt;
use protocol::{ConvId, GroupId, Seq, UserId};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use store::conformance::new_msg;
use store::scylla::{ScyllaOptions, ScyllaStore};
use store::{LocalSeqSource, Store, StoreError};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Schema changes of concurrently running tests, one at a time (Cassandra copes badly with
/// concurrent DDL).
static DDL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn cql_addr() -> String {
    match std::env::var("CHATD_TEST_CQL") {
        Ok(a) if !a.trim().is_empty() => a,
        _ => panic!(
            "CHATD_TEST_CQL is not set. These tests need a CQL database: start one with \
             `scripts/services/cassandra.sh start` (about 1-2 minutes), then \
             `source .cache/services.env` (it exports CHATD_TEST_CQL=127.0.0.1:PORT) and run \
             the tests again"
        ),
    }
}

fn keyspace(tag: &str) -> String {
    format!(
        "chat_test_{}_{tag}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

fn opts(node: &str, ks: &str) -> ScyllaOptions {
    ScyllaOptions {
        request_timeout: Duration::from_secs(10),
        ..ScyllaOptions::single_node(node, ks)
    }
}

async fn open(o: &ScyllaOptions) -> ScyllaStore {
    ScyllaStore::new(o.clone(), Arc::new(LocalSeqSource::new()))
        .await
        .expect("connect to CHATD_TEST_CQL")
}

async fn drop_keyspace(node: &str, ks: &str) {
    let _ddl = DDL.lock().await;
    let session = scylla::client::session_builder::SessionBuilder::new()
        .known_node(node)
        .build()
        .await
        .expect("connect to drop the keyspace");
    if let Err(e) = session
        .query_unpaged(format!("DROP KEYSPACE IF EXISTS {ks}"), &[])
        .await
    {
        eprintln!("dropping keyspace {ks}: {e}");
    }
}

/// Creates a keyspace with `o` (migrated, under the DDL lock), runs `body` with a store on
/// it, then drops the keyspace whatever happened, and re-raises a failure.
async fn with_keyspace<F, Fut>(tag: &str, tune: impl FnOnce(&mut ScyllaOptions), body: F)
where
    F: FnOnce(ScyllaStore, ScyllaOptions) -> Fut,
    Fut: Future<Output = ()>,
{
    let node = cql_addr();
    let ks = keyspace(tag);
    let mut o = opts(&node, &ks);
    tune(&mut o);
    let outcome = AssertUnwindSafe(async {
        let store = open(&o).await;
        {
            let _ddl = DDL.lock().await;
            store.migrate().await.expect("migrate");
        }
        body(store, o.clone()).await;
    })
    .catch_unwind()
    .await;
    drop_keyspace(&node, &ks).await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

fn group_conv(name: &str) -> ConvId {
    ConvId::group(&GroupId::new(format!(
        "{name}{}",
        uuid::Uuid::new_v4().simple()
    )))
}

fn seqs(p: &store::Page) -> Vec<u64> {
    p.messages.iter().map(|m| m.seq.0).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conformance() {
    with_keyspace(
        "conf",
        |_| {},
        |store, _| async move {
            store::conformance::run_all(&store).await;
            // The migration is idempotent: running it again changes nothing.
            {
                let _ddl = DDL.lock().await;
                store.migrate().await.unwrap();
            }
            store.close().await.unwrap();
            assert!(matches!(
                store.last_seq(&group_conv("x")).await,
                Err(StoreError::Unavailable { .. })
            ));
        },
    )
    .await;
}

/// A skip placeholder fills a seq that holds no message, shows in `after`/`history` and
/// `last_seq`, never hides a stored message, and loses to a real write that lands later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skip_placeholders_never_hide_a_message() {
    with_keyspace(
        "skip",
        |_| {},
        |store, _| async move {
            let c = group_conv("s");
            let first = store.append(new_msg(&c, "u1", "k1")).await.unwrap();
            // A stored message is returned as it is.
            let kept = store.mark_skipped(&c, Seq(1)).await.unwrap().unwrap();
            assert_eq!(kept, first.message);
            // Seq 2 holds nothing (its node died): a placeholder, visible to readers.
            let skip = store.mark_skipped(&c, Seq(2)).await.unwrap().unwrap();
            assert_eq!(skip.kind, protocol::MessageKind::Skipped);
            assert_eq!((skip.seq, skip.body.as_str()), (Seq(2), ""));
            assert_eq!(store.last_seq(&c).await.unwrap(), Seq(2));
            let page = store.after(&c, Seq(0), 10).await.unwrap();
            assert_eq!(seqs(&page), vec![1, 2]);
            assert_eq!(page.messages[1].kind, protocol::MessageKind::Skipped);
            // The real write of seq 2 lands late (the seq source hands out 2 next): it wins.
            let late = store.append(new_msg(&c, "u2", "k2")).await.unwrap();
            assert_eq!(late.message.seq, Seq(2));
            let page = store.after(&c, Seq(0), 10).await.unwrap();
            assert_eq!(page.messages[1], late.message);
            // Marking it again returns the message, not a placeholder.
            let again = store.mark_skipped(&c, Seq(2)).await.unwrap().unwrap();
            assert_eq!(again, late.message);
        },
    )
    .await;
}

/// A fresh seq source (Redis restarted empty) continues after the highest stored seq and
/// never reuses one; idempotency keys survive the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_seq_counter_is_recovered_from_the_store() {
    with_keyspace(
        "recover",
        |_| {},
        |first, o| async move {
            let c = group_conv("r");
            let other = group_conv("o");
            for i in 1..=7u64 {
                let a = first
                    .append(new_msg(&c, "u1", &format!("k{i}")))
                    .await
                    .unwrap();
                assert_eq!(a.message.seq, Seq(i));
            }
            first.append(new_msg(&other, "u1", "x")).await.unwrap();

            let second = open(&o).await; // a new LocalSeqSource: no counters at all
            let retry = second.append(new_msg(&c, "u1", "k2")).await.unwrap();
            assert!(retry.duplicate);
            assert_eq!(retry.message.seq, Seq(2));
            let next = second.append(new_msg(&c, "u2", "k2")).await.unwrap();
            assert!(!next.duplicate);
            assert_eq!(next.message.seq, Seq(8));
            assert_eq!(
                second
                    .append(new_msg(&other, "u1", "y"))
                    .await
                    .unwrap()
                    .message
                    .seq,
                Seq(2)
            );
            assert_eq!(second.last_seq(&c).await.unwrap(), Seq(8));
            let all = second.history(&c, None, 100).await.unwrap();
            assert_eq!(seqs(&all), (1..=8).rev().collect::<Vec<_>>());
        },
    )
    .await;
}

/// Kept messages below the min seq are read past whole buckets retention emptied (a bucket
/// size of 4: the conformance check's seqs 16-47 are eight empty partitions).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_hop_over_emptied_buckets_to_kept_messages() {
    with_keyspace(
        "kept",
        |o| o.bucket_size = 4,
        |store, _| async move {
            store::conformance::reads_reach_kept_messages_past_emptied_buckets(&store).await;
        },
    )
    .await;
}

/// History and sync page across partitions (a bucket size of 4 here), and the recovery
/// path finds the highest seq in the newest bucket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_cross_bucket_boundaries() {
    with_keyspace(
        "buckets",
        |o| o.bucket_size = 4,
        |store, o| async move {
            let c = group_conv("b");
            for i in 1..=11u64 {
                let a = store
                    .append(new_msg(&c, "u1", &format!("k{i}")))
                    .await
                    .unwrap();
                assert_eq!(a.message.seq, Seq(i));
            }
            // Buckets: 0 = 1..3, 1 = 4..7, 2 = 8..11.
            let p = store.history(&c, None, 5).await.unwrap();
            assert_eq!(seqs(&p), vec![11, 10, 9, 8, 7]);
            assert!(p.has_more);
            let p = store.history(&c, Some(Seq(7)), 5).await.unwrap();
            assert_eq!(seqs(&p), vec![6, 5, 4, 3, 2]);
            assert!(p.has_more);
            let p = store.history(&c, Some(Seq(2)), 5).await.unwrap();
            assert_eq!(seqs(&p), vec![1]);
            assert!(!p.has_more);
            let p = store.history(&c, Some(Seq(9)), 100).await.unwrap();
            assert_eq!(seqs(&p), (1..=8).rev().collect::<Vec<_>>());
            assert!(!p.has_more);
            let p = store.history(&c, Some(Seq(u64::MAX)), 3).await.unwrap();
            assert_eq!(seqs(&p), vec![11, 10, 9]);

            let p = store.after(&c, Seq(0), 5).await.unwrap();
            assert_eq!(seqs(&p), vec![1, 2, 3, 4, 5]);
            assert!(p.has_more);
            let p = store.after(&c, Seq(5), 5).await.unwrap();
            assert_eq!(seqs(&p), vec![6, 7, 8, 9, 10]);
            assert!(p.has_more);
            let p = store.after(&c, Seq(10), 5).await.unwrap();
            assert_eq!(seqs(&p), vec![11]);
            assert!(!p.has_more);
            let p = store.after(&c, Seq(3), 100).await.unwrap();
            assert_eq!(seqs(&p), (4..=11).collect::<Vec<_>>());
            assert!(!p.has_more);

            // Recovery with an empty seq source reads bucket 2's top.
            let again = open(&o).await;
            let a = again.append(new_msg(&c, "u1", "k12")).await.unwrap();
            assert_eq!(a.message.seq, Seq(12));
            assert_eq!(again.after(&c, Seq(11), 5).await.unwrap().messages.len(), 1);

            // The bucket size is fixed once the keyspace exists.
            let wrong = ScyllaOptions {
                bucket_size: 10_000,
                ..o.clone()
            };
            let wrong = open(&wrong).await;
            let _ddl = DDL.lock().await;
            let err = wrong.migrate().await.unwrap_err();
            assert!(err.to_string().contains("bucket_size"), "{err}");
        },
    )
    .await;
}

/// A group's retention becomes the messages' TTL: they disappear, and the seq still never
/// goes back (the conversation's meta row does not expire).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_retention_expires_messages() {
    with_keyspace(
        "ttl",
        |_| {},
        |store, o| async move {
            let gid = GroupId::new(format!("ttl{}", uuid::Uuid::new_v4().simple()));
            let c = ConvId::group(&gid);
            let kept = group_conv("kept");
            assert_eq!(store.group_retention(&gid).await.unwrap(), None);
            store.set_group_retention(&gid, Some(2)).await.unwrap();
            assert_eq!(store.group_retention(&gid).await.unwrap(), Some(2));
            store.append(new_msg(&c, "u1", "t1")).await.unwrap();
            store.append(new_msg(&c, "u1", "t2")).await.unwrap();
            store.append(new_msg(&kept, "u1", "t1")).await.unwrap();
            assert_eq!(store.history(&c, None, 10).await.unwrap().messages.len(), 2);

            tokio::time::sleep(Duration::from_millis(3_200)).await;
            let p = store.history(&c, None, 10).await.unwrap();
            assert!(p.messages.is_empty() && !p.has_more, "{p:?}");
            assert!(store
                .after(&c, Seq(0), 10)
                .await
                .unwrap()
                .messages
                .is_empty());
            assert_eq!(store.last_seq(&c).await.unwrap(), Seq(2));
            assert_eq!(
                store.history(&kept, None, 10).await.unwrap().messages.len(),
                1
            );

            // A restarted seq source continues after the expired messages.
            let fresh = open(&o).await;
            fresh.set_group_retention(&gid, None).await.unwrap();
            let a = fresh.append(new_msg(&c, "u1", "t3")).await.unwrap();
            assert_eq!(a.message.seq, Seq(3));
            assert_eq!(fresh.group_retention(&gid).await.unwrap(), None);
        },
    )
    .await;
}

/// The default TTL applies to direct conversations and groups without their own setting;
/// `Some(0)` on a group keeps its messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_ttl_and_group_override() {
    with_keyspace(
        "defttl",
        |o| o.default_ttl_secs = Some(2),
        |store, _| async move {
            let dm = ConvId::direct(&UserId::new("a1"), &UserId::new("b1"));
            let keep = GroupId::new(format!("keep{}", uuid::Uuid::new_v4().simple()));
            store.set_group_retention(&keep, Some(0)).await.unwrap();
            store.append(new_msg(&dm, "a1", "d1")).await.unwrap();
            store
                .append(new_msg(&ConvId::group(&keep), "a1", "g1"))
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(3_200)).await;
            assert!(store
                .history(&dm, None, 10)
                .await
                .unwrap()
                .messages
                .is_empty());
            assert_eq!(
                store
                    .history(&ConvId::group(&keep), None, 10)
                    .await
                    .unwrap()
                    .messages
                    .len(),
                1
            );
            // The conversation list keeps the direct conversation and its last seq.
            let list = store.conversations(&UserId::new("b1")).await.unwrap();
            assert_eq!(list.len(), 1);
            assert_eq!(list[0].last_seq, Seq(1));
        },
    )
    .await;
}

/// A group created with many members (more than one batch can carry) and read back page
/// by page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_group() {
    with_keyspace(
        "large",
        |_| {},
        |store, _| async move {
            let gid = GroupId::new(format!("all{}", uuid::Uuid::new_v4().simple()));
            let members: Vec<store::Member> = (0..1200)
                .map(|i| store::Member {
                    user: UserId::new(format!("employee-{i:05}@example.com")),
                    role: if i == 0 {
                        store::Role::Owner
                    } else {
                        store::Role::Member
                    },
                    joined_at: 1,
                })
                .collect();
            let group = store::Group {
                id: gid.clone(),
                name: "Everyone".into(),
                kind: store::GroupKind::Company,
                created_by: members[0].user.clone(),
                created_at: 1,
            };
            store
                .create_group(group.clone(), members.clone())
                .await
                .unwrap();
            assert_eq!(store.group(&gid).await.unwrap(), Some(group));
            let mut got = store.members(&gid).await.unwrap();
            got.sort_by(|a, b| a.user.cmp(&b.user));
            assert_eq!(got, members);
            assert_eq!(
                store.user_groups(&members[777].user).await.unwrap(),
                vec![gid.clone()]
            );
        },
    )
    .await;
}

/// A TCP proxy in front of the database that can be cut (every connection closed, new ones
/// refused) and restored on the same port: the database "goes down" for this test's store
/// only, without disturbing the shared database.
struct Proxy {
    port: u16,
    target: String,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Proxy {
    async fn start(target: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let p = Self {
            port,
            target: target.to_owned(),
            tasks: Arc::default(),
        };
        p.serve(listener);
        p
    }

    fn serve(&self, listener: TcpListener) {
        let tasks = self.tasks.clone();
        let target = self.target.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let target = target.clone();
                let conn = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                tasks.lock().unwrap().push(conn);
            }
        });
        self.tasks.lock().unwrap().push(accept);
    }

    fn cut(&self) {
        for t in self.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
    }

    async fn restore(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match TcpListener::bind(("127.0.0.1", self.port)).await {
                Ok(l) => return self.serve(l),
                Err(e) if Instant::now() < deadline => {
                    eprintln!("rebinding the proxy: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("rebinding the proxy on {}: {e}", self.port),
            }
        }
    }
}

/// A seq source that cuts the proxy when asked, right after handing out a seq: the append's
/// reads went through, its write will not.
struct CuttingSeqSource {
    inner: LocalSeqSource,
    proxy: Arc<Proxy>,
    cut_next: std::sync::atomic::AtomicBool,
}

#[async_trait::async_trait]
impl store::SeqSource for CuttingSeqSource {
    async fn next(&self, conv: &ConvId) -> store::Result<Option<Seq>> {
        let s = self.inner.next(conv).await;
        if self
            .cut_next
            .swap(false, std::sync::atomic::Ordering::SeqCst)
        {
            self.proxy.cut();
        }
        s
    }
    async fn restore(&self, conv: &ConvId, last: Seq) -> store::Result<Seq> {
        let s = self.inner.restore(conv, last).await;
        if self
            .cut_next
            .swap(false, std::sync::atomic::Ordering::SeqCst)
        {
            self.proxy.cut();
        }
        s
    }
}

/// Waits until the store reaches the database again.
async fn wait_until_up(store: &ScyllaStore, c: &ConvId) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while let Err(e) = store.last_seq(c).await {
        assert!(Instant::now() < deadline, "database never came back: {e}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// With the database unreachable an append fails quickly with `Unavailable` and nothing is
/// acknowledged. An append whose write failed after it got its seq keeps that seq in the
/// retry queue: the queue writes it once the database is back (no gap), and the sender's
/// retry gets it, with the same seq, acknowledged once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unavailable_database_and_retry_queue() {
    with_keyspace(
        "down",
        |_| {},
        |direct, o| async move {
            let proxy = Arc::new(Proxy::start(&cql_addr()).await);
            let seq = Arc::new(CuttingSeqSource {
                inner: LocalSeqSource::new(),
                proxy: proxy.clone(),
                cut_next: false.into(),
            });
            let via = ScyllaOptions {
                nodes: vec![format!("127.0.0.1:{}", proxy.port)],
                request_timeout: Duration::from_secs(1),
                connect_timeout: Duration::from_secs(1),
                retry_interval: Duration::from_millis(200),
                ..o.clone()
            };
            let store = ScyllaStore::new(via, seq.clone()).await.unwrap();
            let c = group_conv("d");
            assert_eq!(
                store
                    .append(new_msg(&c, "u1", "k1"))
                    .await
                    .unwrap()
                    .message
                    .seq,
                Seq(1)
            );

            // Down before the append: its first read fails, fast, and no seq is taken.
            proxy.cut();
            let t = Instant::now();
            let err = store.append(new_msg(&c, "u1", "k2")).await.unwrap_err();
            assert!(matches!(err, StoreError::Unavailable { .. }), "{err:?}");
            assert!(
                t.elapsed() < Duration::from_secs(5),
                "took {:?}",
                t.elapsed()
            );
            assert_eq!(store.pending_writes(), 0);
            proxy.restore().await;
            wait_until_up(&store, &c).await;

            // Down between the seq and the write: the write fails, the seq waits in the queue,
            // and the queue writes it on its own once the database is back.
            seq.cut_next
                .store(true, std::sync::atomic::Ordering::SeqCst);
            let t = Instant::now();
            let err = store.append(new_msg(&c, "u1", "k2")).await.unwrap_err();
            assert!(matches!(err, StoreError::Unavailable { .. }), "{err:?}");
            assert!(
                t.elapsed() < Duration::from_secs(5),
                "took {:?}",
                t.elapsed()
            );
            assert_eq!(store.pending_writes(), 1);
            assert!(direct
                .after(&c, Seq(1), 10)
                .await
                .unwrap()
                .messages
                .is_empty());
            proxy.restore().await;
            let deadline = Instant::now() + Duration::from_secs(60);
            while store.pending_writes() > 0 {
                assert!(Instant::now() < deadline, "the retry queue never drained");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            assert_eq!(
                seqs(&direct.after(&c, Seq(0), 10).await.unwrap()),
                vec![1, 2]
            );
            // The sender's retry is its first acknowledgement: not a duplicate, same seq.
            let retried = store.append(new_msg(&c, "u1", "k2")).await.unwrap();
            assert!(!retried.duplicate);
            assert_eq!(retried.message.seq, Seq(2));
            let again = store.append(new_msg(&c, "u1", "k2")).await.unwrap();
            assert!(again.duplicate);
            assert_eq!(again.message.seq, Seq(2));

            // Same, but the sender retries before the queue wrote it: the retry writes it.
            seq.cut_next
                .store(true, std::sync::atomic::Ordering::SeqCst);
            assert!(store.append(new_msg(&c, "u1", "k3")).await.is_err());
            proxy.restore().await;
            let deadline = Instant::now() + Duration::from_secs(60);
            let retried = loop {
                match store.append(new_msg(&c, "u1", "k3")).await {
                    Ok(a) => break a,
                    Err(e @ StoreError::Unavailable { .. }) if Instant::now() < deadline => {
                        eprintln!("still down: {e}");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    Err(e) => panic!("database did not come back: {e}"),
                }
            };
            assert!(!retried.duplicate);
            assert_eq!(retried.message.seq, Seq(3));
            assert_eq!(
                store
                    .append(new_msg(&c, "u1", "k4"))
                    .await
                    .unwrap()
                    .message
                    .seq,
                Seq(4)
            );
            assert_eq!(store.pending_writes(), 0);
            assert_eq!(
                seqs(&direct.after(&c, Seq(0), 10).await.unwrap()),
                vec![1, 2, 3, 4]
            );
            proxy.cut();
        },
    )
    .await;
}

/// Every write path stores a direct message once per key and lists the conversation for both
/// sides, also when the split path skips `user_convs` rows it already wrote, and from a
/// second store (a fresh cache) on the same keyspace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_paths_keep_idempotency_and_conversation_lists() {
    use store::scylla::WritePath;
    for path in [WritePath::Logged, WritePath::Split, WritePath::Unlogged] {
        with_keyspace(
            "paths",
            |o| o.write_path = path,
            |store, o| async move {
                let (a, b) = (UserId::new("pa"), UserId::new("pb"));
                let conv = ConvId::direct(&a, &b);
                let first = store.append(new_msg(&conv, "pa", "k1")).await.unwrap();
                assert!(!first.duplicate, "{path:?}");
                let again = store.append(new_msg(&conv, "pa", "k1")).await.unwrap();
                assert!(again.duplicate, "{path:?}");
                assert_eq!(again.message.seq, first.message.seq);
                let second = store.append(new_msg(&conv, "pb", "k2")).await.unwrap();
                assert_eq!(second.message.seq, Seq(2), "{path:?}");
                let other = open(&o).await;
                let third = other.append(new_msg(&conv, "pa", "k3")).await.unwrap();
                assert_eq!(third.message.seq, Seq(3), "{path:?}");
                for s in [&store, &other] {
                    for u in [&a, &b] {
                        let list = s.conversations(u).await.unwrap();
                        let c = list.iter().find(|c| c.conv == conv).expect("listed");
                        assert_eq!(c.last_seq, Seq(3), "{path:?}");
                    }
                }
                assert_eq!(
                    seqs(&store.history(&conv, None, 10).await.unwrap()),
                    [3, 2, 1]
                );
            },
        )
        .await;
    }
}
