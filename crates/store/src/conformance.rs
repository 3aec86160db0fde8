//! The conformance suite every backend must pass: [`Store`], [`MetaStore`] and
//! [`ReviewStore`].
//!
//! Test code only: the module is compiled for this crate's unit tests and with the
//! `conformance` feature, which a backend's tests enable as a dev-dependency feature
//! (`store = { path = "...", features = ["conformance"] }`); production builds do not carry it.
//! Each backend's tests call [`run_all`] on a fresh, empty store. The functions panic on a
//! failed expectation, as tests do; conversation and group ids are made unique per run so a
//! shared database (such as a CQL keyspace) can be reused.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::{
    AdminExport, AdminRecord, AuditEntry, AuditQuery, Group, GroupKind, HeldMessage, Member,
    MetaOp, MetaStore, NewMessage, ReviewStore, Role, Store, StoreError, Swap,
};
use protocol::{ConvId, GroupId, MessageId, MessageKind, Seq, UserId};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

static COUNTER: AtomicU64 = AtomicU64::new(0);

fn unique(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{prefix}{t:x}{n}")
}

/// A text message from `from` in `conv` with the given idempotency key.
pub fn new_msg(conv: &ConvId, from: &str, client_msg_id: &str) -> NewMessage {
    NewMessage {
        conv: conv.clone(),
        from: UserId::new(from),
        client_msg_id: client_msg_id.to_owned(),
        id: MessageId::new(unique("m")),
        kind: MessageKind::Text,
        body: format!("body {client_msg_id}"),
        attachment: None,
        mentions: vec![],
        reply_to: None,
        ts: 1_700_000_000_000,
        participants: match conv.kind() {
            protocol::ConvKind::Direct(a, b) => vec![UserId::new(a), UserId::new(b)],
            protocol::ConvKind::Group(_) => vec![],
        },
        moderation: None,
    }
}

/// Runs every check of the suite.
pub async fn run_all<S: Store + MetaStore + ReviewStore + AdminExport + Clone>(store: &S) {
    seqs_are_gap_free_and_ordered(store).await;
    appends_are_idempotent(store).await;
    concurrent_appends_keep_seq_dense(store).await;
    concurrent_retries_store_once(store).await;
    append_then_runs_once_durable(store).await;
    history_pages_backwards(store).await;
    after_pages_forwards(store).await;
    read_cursors_only_move_forward(store).await;
    groups_and_members(store).await;
    conversation_list(store).await;
    users(store).await;
    recall_leaves_a_tombstone(store).await;
    marking_a_stored_seq_skipped_keeps_the_message(store).await;
    meta_records(store).await;
    meta_compare_and_swap(store).await;
    meta_compare_and_delete(store).await;
    audit_log_and_review_queue(store).await;
    compliance_log_records_every_change_in_order(store).await;
    compliance_log_pages_exactly_under_concurrent_commits(store).await;
    members_change_together(store).await;
    admin_export_reads_every_record(store).await;
    retention_deletes_below_the_min_seq(store).await;
    reads_reach_kept_messages_past_emptied_buckets(store).await;
}

/// `put_members` writes several members at once: a change of owner in one step.
pub async fn members_change_together<S: Store>(store: &S) {
    let gid = GroupId::new(unique("g"));
    let (old, new) = (UserId::new(unique("o")), UserId::new(unique("n")));
    let group = Group {
        id: gid.clone(),
        name: "Handed over".into(),
        kind: GroupKind::Project,
        created_by: old.clone(),
        created_at: 1,
    };
    let m = |u: &UserId, role| Member {
        user: u.clone(),
        role,
        joined_at: 2,
    };
    store
        .create_group(group, vec![m(&old, Role::Owner)])
        .await
        .unwrap();
    store
        .put_members(&gid, vec![m(&new, Role::Owner), m(&old, Role::Member)])
        .await
        .unwrap();
    let mut members = store.members(&gid).await.unwrap();
    members.sort_by(|a, b| a.user.cmp(&b.user));
    let mut want = vec![m(&new, Role::Owner), m(&old, Role::Member)];
    want.sort_by(|a, b| a.user.cmp(&b.user));
    assert_eq!(members, want);
    assert_eq!(store.user_groups(&new).await.unwrap(), vec![gid.clone()]);
    let missing = GroupId::new(unique("nope"));
    assert!(matches!(
        store
            .put_members(&missing, vec![m(&new, Role::Owner)])
            .await,
        Err(StoreError::NotFound(_))
    ));
}

/// `export_admin` reads back every record written through `MetaStore` and `ReviewStore`.
pub async fn admin_export_reads_every_record<S: MetaStore + ReviewStore + AdminExport>(store: &S) {
    let ns = unique("ns");
    store
        .apply(vec![
            MetaOp::put(&ns, "a", b"1".to_vec()),
            MetaOp::put(&ns, "b/c", b"{\"x\":2}".to_vec()),
        ])
        .await
        .unwrap();
    let actor = UserId::new(unique("exporter"));
    let entry = AuditEntry::action(1_700_000_000_123, &actor, "test.export");
    store.audit(entry.clone()).await.unwrap();
    let conv = ConvId::group(&GroupId::new(unique("ex")));
    let held = HeldMessage {
        id: "r1".into(),
        conv: conv.clone(),
        from: actor.clone(),
        client_msg_id: "c1".into(),
        kind: MessageKind::Text,
        body: "held".into(),
        attachment: None,
        mentions: vec![],
        reply_to: None,
        ts: 9,
        category: None,
        rule: None,
    };
    store.hold(held.clone()).await.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::channel(4);
    let reader = tokio::spawn(async move {
        let mut all = Vec::new();
        while let Some(r) = rx.recv().await {
            all.push(r);
        }
        all
    });
    store.export_admin(tx).await.unwrap();
    let all = reader.await.unwrap();
    let mine: Vec<&AdminRecord> = all
        .iter()
        .filter(|r| matches!(r, AdminRecord::Meta { ns: n, .. } if *n == ns))
        .collect();
    assert_eq!(
        mine,
        vec![
            &AdminRecord::Meta {
                ns: ns.clone(),
                key: "a".into(),
                value: b"1".to_vec()
            },
            &AdminRecord::Meta {
                ns: ns.clone(),
                key: "b/c".into(),
                value: b"{\"x\":2}".to_vec()
            },
        ]
    );
    assert!(all.contains(&AdminRecord::Audit(entry)));
    assert!(all.contains(&AdminRecord::Held(held)));
    // Meta records come first, then the audit log, then the review queue.
    let kind = |r: &AdminRecord| match r {
        AdminRecord::Meta { .. } => 0,
        AdminRecord::Audit(_) => 1,
        AdminRecord::Held(_) => 2,
    };
    assert!(all.windows(2).all(|w| kind(&w[0]) <= kind(&w[1])));
    assert!(!crate::admin_export::is_empty(store).await.unwrap());
}

/// `mark_skipped` never replaces a stored message: it returns it as it is (what a backend
/// does for a seq without a message is its own: a placeholder, or nothing).
pub async fn marking_a_stored_seq_skipped_keeps_the_message<S: Store>(store: &S) {
    let c = ConvId::group(&GroupId::new(unique("g")));
    let m = store.append(new_msg(&c, "u1", "s1")).await.unwrap();
    let back = store.mark_skipped(&c, Seq(1)).await.unwrap();
    assert_eq!(back, Some(m.message.clone()));
    let page = store.after(&c, Seq(0), 10).await.unwrap();
    assert_eq!(page.messages, vec![m.message]);
}

/// Seq starts at 1 and grows by one per message, per conversation.
pub async fn seqs_are_gap_free_and_ordered<S: Store>(store: &S) {
    let a = ConvId::group(&GroupId::new(unique("g")));
    let b = ConvId::group(&GroupId::new(unique("g")));
    assert_eq!(store.last_seq(&a).await.unwrap(), Seq(0));
    for i in 1..=5u64 {
        let x = store
            .append(new_msg(&a, "u1", &format!("a{i}")))
            .await
            .unwrap();
        assert_eq!(x.message.seq, Seq(i));
        assert!(!x.duplicate);
    }
    let y = store.append(new_msg(&b, "u1", "b1")).await.unwrap();
    assert_eq!(y.message.seq, Seq(1));
    assert_eq!(store.last_seq(&a).await.unwrap(), Seq(5));
}

/// The same (conv, sender, client_msg_id) stores once; another sender's key is separate.
pub async fn appends_are_idempotent<S: Store>(store: &S) {
    let c = ConvId::group(&GroupId::new(unique("g")));
    let first = store.append(new_msg(&c, "u1", "same")).await.unwrap();
    let mut retry = new_msg(&c, "u1", "same");
    retry.body = "changed".into();
    let second = store.append(retry).await.unwrap();
    assert!(second.duplicate);
    assert_eq!(second.message, first.message);
    let other = store.append(new_msg(&c, "u2", "same")).await.unwrap();
    assert!(!other.duplicate);
    assert_eq!(other.message.seq, Seq(2));
    assert_eq!(store.last_seq(&c).await.unwrap(), Seq(2));
}

/// Many concurrent appends to one conversation get seqs 1..=n exactly once.
pub async fn concurrent_appends_keep_seq_dense<S: Store + Clone>(store: &S) {
    let c = ConvId::group(&GroupId::new(unique("g")));
    let n = 200u64;
    let mut tasks = Vec::new();
    for i in 0..n {
        let s = store.clone();
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            s.append(new_msg(&c, "u1", &format!("k{i}")))
                .await
                .unwrap()
                .message
                .seq
        }));
    }
    let mut seqs = Vec::new();
    for t in tasks {
        seqs.push(t.await.unwrap().0);
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=n).collect::<Vec<_>>());
    let _ = Arc::new(());
}

/// Retries of one message racing each other (likely in one group commit) store it once.
pub async fn concurrent_retries_store_once<S: Store + Clone>(store: &S) {
    let c = ConvId::group(&GroupId::new(unique("g")));
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let s = store.clone();
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            s.append(new_msg(&c, "u1", "racy")).await.unwrap()
        }));
    }
    let mut fresh = 0;
    for t in tasks {
        let a = t.await.unwrap();
        assert_eq!(a.message.seq, Seq(1));
        fresh += usize::from(!a.duplicate);
    }
    assert_eq!(fresh, 1);
    assert_eq!(store.last_seq(&c).await.unwrap(), Seq(1));
    assert_eq!(store.history(&c, None, 10).await.unwrap().messages.len(), 1);
}

/// `append_then` runs its continuation exactly once, with the stored message.
pub async fn append_then_runs_once_durable<S: Store + Clone>(store: &S) {
    let c = ConvId::group(&GroupId::new(unique("g")));
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let s2 = seen.clone();
    let a = store
        .append_then(
            new_msg(&c, "u1", "t1"),
            Box::new(move |a| s2.lock().unwrap().push((a.message.seq, a.duplicate))),
        )
        .await
        .unwrap();
    assert_eq!(*seen.lock().unwrap(), vec![(a.message.seq, false)]);
    assert_eq!(store.last_seq(&c).await.unwrap(), a.message.seq);
}

/// `history` returns newest first and pages with `before`.
pub async fn history_pages_backwards<S: Store>(store: &S) {
    let c = ConvId::group(&GroupId::new(unique("g")));
    for i in 0..25 {
        store
            .append(new_msg(&c, "u1", &format!("h{i}")))
            .await
            .unwrap();
    }
    let p1 = store.history(&c, None, 10).await.unwrap();
    let seqs: Vec<u64> = p1.messages.iter().map(|m| m.seq.0).collect();
    assert_eq!(seqs, (16..=25).rev().collect::<Vec<_>>());
    assert!(p1.has_more);
    let p3 = store.history(&c, Some(Seq(6)), 10).await.unwrap();
    let seqs: Vec<u64> = p3.messages.iter().map(|m| m.seq.0).collect();
    assert_eq!(seqs, vec![5, 4, 3, 2, 1]);
    assert!(!p3.has_more);
    let exact = store.history(&c, Some(Seq(11)), 10).await.unwrap();
    assert_eq!(exact.messages.len(), 10);
    assert!(!exact.has_more);
    assert_eq!(exact.messages[0].body, "body h9");
    let empty = store
        .history(&ConvId::group(&GroupId::new(unique("g"))), None, 10)
        .await
        .unwrap();
    assert!(empty.messages.is_empty() && !empty.has_more);
}

/// `after` returns oldest first from the cursor and says whether more follow.
pub async fn after_pages_forwards<S: Store>(store: &S) {
    let c = ConvId::group(&GroupId::new(unique("g")));
    for i in 0..12 {
        store
            .append(new_msg(&c, "u1", &format!("s{i}")))
            .await
            .unwrap();
    }
    let p = store.after(&c, Seq(3), 5).await.unwrap();
    let seqs: Vec<u64> = p.messages.iter().map(|m| m.seq.0).collect();
    assert_eq!(seqs, vec![4, 5, 6, 7, 8]);
    assert!(p.has_more);
    let p = store.after(&c, Seq(8), 5).await.unwrap();
    let seqs: Vec<u64> = p.messages.iter().map(|m| m.seq.0).collect();
    assert_eq!(seqs, vec![9, 10, 11, 12]);
    assert!(!p.has_more);
    assert!(store
        .after(&c, Seq(12), 5)
        .await
        .unwrap()
        .messages
        .is_empty());
    assert!(store
        .after(&c, Seq(u64::MAX), 5)
        .await
        .unwrap()
        .messages
        .is_empty());
}

/// A read cursor never moves back.
pub async fn read_cursors_only_move_forward<S: Store>(store: &S) {
    let c = ConvId::group(&GroupId::new(unique("g")));
    let u = UserId::new(unique("u"));
    assert_eq!(store.set_read(&u, &c, Seq(5)).await.unwrap(), Seq(5));
    assert_eq!(store.set_read(&u, &c, Seq(3)).await.unwrap(), Seq(5));
    assert_eq!(store.set_read(&u, &c, Seq(7)).await.unwrap(), Seq(7));
}

/// Groups, members, roles and the reverse index.
pub async fn groups_and_members<S: Store>(store: &S) {
    let gid = GroupId::new(unique("g"));
    let owner = UserId::new(unique("o"));
    let other = UserId::new(unique("m"));
    let group = Group {
        id: gid.clone(),
        name: "Project X".into(),
        kind: GroupKind::Project,
        created_by: owner.clone(),
        created_at: 1,
    };
    let m = |u: &UserId, role| Member {
        user: u.clone(),
        role,
        joined_at: 1,
    };
    store
        .create_group(group.clone(), vec![m(&owner, Role::Owner)])
        .await
        .unwrap();
    assert!(matches!(
        store.create_group(group.clone(), vec![]).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(store.group(&gid).await.unwrap(), Some(group));
    assert_eq!(
        store.group(&GroupId::new(unique("none"))).await.unwrap(),
        None
    );
    store
        .put_member(&gid, m(&other, Role::Member))
        .await
        .unwrap();
    let members = store.members(&gid).await.unwrap();
    assert_eq!(members.len(), 2);
    assert!(members
        .iter()
        .any(|x| x.user == owner && x.role == Role::Owner));
    assert_eq!(store.user_groups(&other).await.unwrap(), vec![gid.clone()]);
    store
        .put_member(&gid, m(&other, Role::Admin))
        .await
        .unwrap();
    assert!(store
        .members(&gid)
        .await
        .unwrap()
        .iter()
        .any(|x| x.user == other && x.role == Role::Admin));
    assert!(store.remove_member(&gid, &other).await.unwrap());
    assert!(!store.remove_member(&gid, &other).await.unwrap());
    assert!(store.user_groups(&other).await.unwrap().is_empty());
    assert!(matches!(
        store
            .put_member(&GroupId::new(unique("none")), m(&other, Role::Member))
            .await,
        Err(StoreError::NotFound(_))
    ));
}

/// The conversation list has direct conversations and groups, with unread counts.
pub async fn conversation_list<S: Store>(store: &S) {
    let a = UserId::new(unique("a"));
    let b = UserId::new(unique("b"));
    let dm = ConvId::direct(&a, &b);
    for i in 0..3 {
        store
            .append(new_msg(&dm, a.as_str(), &format!("d{i}")))
            .await
            .unwrap();
    }
    let gid = GroupId::new(unique("g"));
    store
        .create_group(
            Group {
                id: gid.clone(),
                name: "G".into(),
                kind: GroupKind::Study,
                created_by: a.clone(),
                created_at: 1,
            },
            vec![Member {
                user: b.clone(),
                role: Role::Member,
                joined_at: 1,
            }],
        )
        .await
        .unwrap();
    store.set_read(&b, &dm, Seq(1)).await.unwrap();
    let list = store.conversations(&b).await.unwrap();
    assert_eq!(list.len(), 2, "{list:?}");
    let d = list.iter().find(|c| c.conv == dm).unwrap();
    assert_eq!((d.last_seq, d.read_seq, d.unread), (Seq(3), Seq(1), 2));
    let g = list.iter().find(|c| c.conv == ConvId::group(&gid)).unwrap();
    assert_eq!((g.last_seq, g.unread), (Seq(0), 0));
    assert_eq!(store.conversations(&a).await.unwrap().len(), 1);
}

/// Users become known once touched.
pub async fn users<S: Store>(store: &S) {
    let u = UserId::new(unique("u"));
    assert!(!store.user_exists(&u).await.unwrap());
    store.touch_user(&u, 5).await.unwrap();
    store.touch_user(&u, 6).await.unwrap();
    assert!(store.user_exists(&u).await.unwrap());
}

/// A recalled message keeps its seq, id, sender and time; its content is gone from history.
pub async fn recall_leaves_a_tombstone<S: Store>(store: &S) {
    let conv = ConvId::group(&GroupId::new(unique("grecall")));
    for i in 0..3 {
        store
            .append(new_msg(&conv, "a", &format!("r{i}")))
            .await
            .unwrap();
    }
    let original = store.recall(&conv, Seq(2)).await.unwrap().unwrap();
    assert_eq!(original.seq, Seq(2));
    assert_eq!(original.body, "body r1");
    let page = store.history(&conv, None, 10).await.unwrap();
    let seqs: Vec<u64> = page.messages.iter().map(|m| m.seq.0).collect();
    assert_eq!(seqs, vec![3, 2, 1], "the seq stays in place");
    let tomb = &page.messages[1];
    assert_eq!(tomb.kind, MessageKind::Recalled);
    assert!(tomb.body.is_empty() && tomb.attachment.is_none() && tomb.mentions.is_empty());
    assert_eq!(
        (tomb.id.clone(), tomb.from.clone()),
        (original.id, original.from)
    );
    assert_eq!(page.messages[0].body, "body r2", "neighbours are untouched");
    let after = store.after(&conv, Seq(1), 10).await.unwrap();
    assert_eq!(after.messages[0].kind, MessageKind::Recalled);
    assert!(store.recall(&conv, Seq(9)).await.unwrap().is_none());
    assert!(store.recall(&conv, Seq(0)).await.unwrap().is_none());
}

/// Get, prefix scans with paging, create-once and atomic batches of the meta records.
pub async fn meta_records<S: MetaStore>(store: &S) {
    let ns = unique("ns");
    assert_eq!(store.get(&ns, "x").await.unwrap(), None);
    assert!(store
        .insert_new(&ns, "user:a", b"1".to_vec())
        .await
        .unwrap());
    assert!(!store
        .insert_new(&ns, "user:a", b"2".to_vec())
        .await
        .unwrap());
    assert_eq!(store.get(&ns, "user:a").await.unwrap(), Some(b"1".to_vec()));
    store
        .apply(vec![
            MetaOp::put(&ns, "user:b", b"b".to_vec()),
            MetaOp::put(&ns, "user:c", b"c".to_vec()),
            MetaOp::put(&ns, "other", b"o".to_vec()),
            MetaOp::put(&ns, "user:a", b"a".to_vec()),
        ])
        .await
        .unwrap();
    let all = store.scan(&ns, "user:", "", 10).await.unwrap();
    let keys: Vec<&str> = all.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, vec!["user:a", "user:b", "user:c"]);
    assert_eq!(all[0].1, b"a".to_vec());
    let page = store.scan(&ns, "user:", "user:a", 1).await.unwrap();
    assert_eq!(page.len(), 1);
    assert_eq!(page[0].0, "user:b");
    assert_eq!(store.scan(&ns, "", "", 10).await.unwrap().len(), 4);
    // The paging walk: every record under the prefix once, in key order, whatever the page
    // size (a full last page ends with one empty read, never an empty page).
    for size in [1, 2, 3, 4] {
        let mut pages = crate::Pages::new(store, &ns, "user:", size);
        let mut walked = Vec::new();
        while let Some(page) = pages.next().await.unwrap() {
            assert!(!page.is_empty() && page.len() <= size);
            walked.extend(page.into_iter().map(|(k, _)| k));
        }
        assert_eq!(
            walked,
            vec!["user:a", "user:b", "user:c"],
            "pages of {size}"
        );
    }
    store
        .apply(vec![
            MetaOp::delete(&ns, "user:b"),
            MetaOp::delete(&ns, "missing"),
        ])
        .await
        .unwrap();
    assert_eq!(store.get(&ns, "user:b").await.unwrap(), None);
    assert_eq!(store.scan(&ns, "user:", "", 10).await.unwrap().len(), 2);
    // Racing creations: exactly one wins.
    let results = futures_join(store, &ns).await;
    assert_eq!(results.iter().filter(|w| **w).count(), 1);
}

/// Compare-and-swap: writes only over the expected value (or over nothing), and of many
/// racing read-modify-write loops on one record none loses its update.
pub async fn meta_compare_and_swap<S: MetaStore + Clone>(store: &S) {
    let ns = unique("cas");
    let cas = |key: &'static str, expected: Option<&[u8]>, new: &[u8]| {
        store.compare_and_swap(&ns, key, expected.map(<[u8]>::to_vec), new.to_vec())
    };
    assert_eq!(cas("k", None, b"1").await.unwrap(), Swap::Done);
    // Refusals answer what is stored.
    assert_eq!(
        cas("k", None, b"x").await.unwrap(),
        Swap::Current(Some(b"1".to_vec()))
    );
    assert_eq!(
        cas("k", Some(b"0"), b"x").await.unwrap(),
        Swap::Current(Some(b"1".to_vec()))
    );
    assert_eq!(store.get(&ns, "k").await.unwrap(), Some(b"1".to_vec()));
    assert_eq!(cas("k", Some(b"1"), b"2").await.unwrap(), Swap::Done);
    assert_eq!(store.get(&ns, "k").await.unwrap(), Some(b"2".to_vec()));
    assert_eq!(
        cas("absent", Some(b"1"), b"x").await.unwrap(),
        Swap::Current(None)
    );
    assert_eq!(store.get(&ns, "absent").await.unwrap(), None);
    // Racing increments of a counter, each retrying with the value a refusal answered:
    // every one of them lands.
    let (tasks, each) = (4usize, 5usize);
    let mut handles = Vec::new();
    for _ in 0..tasks {
        let (store, ns) = (store.clone(), ns.clone());
        handles.push(tokio::spawn(async move {
            let mut old = store.get(&ns, "n").await.unwrap();
            for _ in 0..each {
                loop {
                    let n: usize = old
                        .as_deref()
                        .map(|v| String::from_utf8_lossy(v).parse().unwrap())
                        .unwrap_or(0);
                    let new = (n + 1).to_string().into_bytes();
                    match store
                        .compare_and_swap(&ns, "n", old.clone(), new.clone())
                        .await
                        .unwrap()
                    {
                        Swap::Done => {
                            old = Some(new);
                            break;
                        }
                        Swap::Current(now) => old = now,
                    }
                }
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    let total = store.get(&ns, "n").await.unwrap().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&total).parse::<usize>().unwrap(),
        tasks * each
    );
}

/// Compare-and-delete: deletes only the expected value, and a refusal answers what is stored.
pub async fn meta_compare_and_delete<S: MetaStore>(store: &S) {
    let ns = unique("cad");
    store
        .apply(vec![MetaOp::put(&ns, "k", b"1".to_vec())])
        .await
        .unwrap();
    assert_eq!(
        store
            .compare_and_delete(&ns, "k", b"0".to_vec())
            .await
            .unwrap(),
        Swap::Current(Some(b"1".to_vec()))
    );
    assert_eq!(store.get(&ns, "k").await.unwrap(), Some(b"1".to_vec()));
    assert_eq!(
        store
            .compare_and_delete(&ns, "k", b"1".to_vec())
            .await
            .unwrap(),
        Swap::Done
    );
    assert_eq!(store.get(&ns, "k").await.unwrap(), None);
    assert_eq!(
        store
            .compare_and_delete(&ns, "k", b"1".to_vec())
            .await
            .unwrap(),
        Swap::Current(None)
    );
    // A record written again after the delete is a new value: kept.
    assert_eq!(
        store
            .compare_and_swap(&ns, "k", None, b"2".to_vec())
            .await
            .unwrap(),
        Swap::Done
    );
    assert_eq!(
        store
            .compare_and_delete(&ns, "k", b"1".to_vec())
            .await
            .unwrap(),
        Swap::Current(Some(b"2".to_vec()))
    );
}

async fn futures_join<S: MetaStore>(store: &S, ns: &str) -> Vec<bool> {
    let a = store.insert_new(ns, "race", b"a".to_vec());
    let b = store.insert_new(ns, "race", b"b".to_vec());
    let c = store.insert_new(ns, "race", b"c".to_vec());
    let (a, b, c) = tokio::join!(a, b, c);
    vec![a.unwrap(), b.unwrap(), c.unwrap()]
}

/// The audit log (filters, time bounds, limit, newest first) and the review queue (held in
/// time order, taken once).
pub async fn audit_log_and_review_queue<S: ReviewStore>(store: &S) {
    let conv = ConvId::group(&GroupId::new(unique("rq")));
    let porn = unique("porn");
    let day = 86_400_000u64;
    let t0 = 1_700_000_000_000u64;
    for (i, cat) in [porn.as_str(), "phone", porn.as_str()].iter().enumerate() {
        store
            .audit(AuditEntry {
                // Spread over days, so a backend that partitions by day pages across them.
                ts: t0 + i as u64 * day,
                actor: UserId::new(format!("u{i}")),
                action: "moderation.block".into(),
                conv: Some(conv.clone()),
                target: None,
                message: None,
                rule: Some("deny/porn.txt:1".into()),
                category: Some((*cat).into()),
                detail: None,
            })
            .await
            .unwrap();
    }
    let q = AuditQuery {
        category: Some(porn.clone()),
        ..AuditQuery::default()
    };
    let got = store.audit_query(&q).await.unwrap();
    assert_eq!(
        got.iter().map(|e| e.actor.as_str()).collect::<Vec<_>>(),
        vec!["u2", "u0"],
        "newest first"
    );
    let q = AuditQuery {
        conv: Some(conv.clone()),
        since: Some(t0 + day),
        until: Some(t0 + 2 * day),
        ..AuditQuery::default()
    };
    let got = store.audit_query(&q).await.unwrap();
    assert_eq!(
        got.iter().map(|e| e.actor.as_str()).collect::<Vec<_>>(),
        vec!["u1"],
        "since is inclusive, until exclusive"
    );
    let q = AuditQuery {
        conv: Some(conv.clone()),
        limit: Some(2),
        ..AuditQuery::default()
    };
    assert_eq!(store.audit_query(&q).await.unwrap().len(), 2);

    let held = |id: &str, ts| HeldMessage {
        id: id.into(),
        conv: conv.clone(),
        from: UserId::new("a"),
        client_msg_id: format!("c{id}"),
        kind: MessageKind::Text,
        body: "hold me".into(),
        attachment: None,
        mentions: vec![],
        reply_to: None,
        ts,
        category: Some("ads".into()),
        rule: None,
    };
    assert!(store.held(&conv).await.unwrap().is_empty());
    store.hold(held("r2", 6)).await.unwrap();
    store.hold(held("r1", 5)).await.unwrap();
    assert_eq!(
        store.held(&conv).await.unwrap(),
        vec![held("r1", 5), held("r2", 6)]
    );
    assert_eq!(
        store.take_held(&conv, "r1").await.unwrap(),
        Some(held("r1", 5))
    );
    assert_eq!(store.take_held(&conv, "r1").await.unwrap(), None);
    assert_eq!(store.held(&conv).await.unwrap(), vec![held("r2", 6)]);
}

/// Retention: `expire` deletes what it is given below the raised min seq and keeps the rest
/// (a held message below it stays readable); the min seq never goes down; seqs never
/// restart, even when every message is gone; a retry of a deleted message's key is still a
/// duplicate; the conversation is listed by `conversation_ids`.
pub async fn retention_deletes_below_the_min_seq<S: Store>(store: &S) {
    let c = ConvId::group(&GroupId::new(unique("g")));
    for i in 1..=10 {
        store
            .append(new_msg(&c, "u1", &format!("r{i}")))
            .await
            .unwrap();
    }
    assert_eq!(store.min_seq(&c).await.unwrap(), Seq(1));
    // Seq 2 is kept (as a hold would keep it); 1, 3 and 4 go.
    let n = store
        .expire(&c, &[Seq(1), Seq(3), Seq(4)], Seq(5))
        .await
        .unwrap();
    assert_eq!(n, 3);
    assert_eq!(store.min_seq(&c).await.unwrap(), Seq(5));
    let seqs = |p: crate::Page| p.messages.iter().map(|m| m.seq.0).collect::<Vec<_>>();
    assert_eq!(
        seqs(store.history(&c, None, 100).await.unwrap()),
        vec![10, 9, 8, 7, 6, 5, 2]
    );
    assert_eq!(
        seqs(store.after(&c, Seq(0), 100).await.unwrap()),
        vec![2, 5, 6, 7, 8, 9, 10]
    );
    // Deleting again is harmless; the min seq never goes down.
    assert_eq!(store.expire(&c, &[Seq(3)], Seq(3)).await.unwrap(), 0);
    assert_eq!(store.min_seq(&c).await.unwrap(), Seq(5));
    // A retry of a deleted message is a duplicate at its old seq, not a new message.
    let again = store.append(new_msg(&c, "u1", "r3")).await.unwrap();
    assert!(again.duplicate);
    assert_eq!(again.message.seq, Seq(3));
    assert_eq!(store.recall(&c, Seq(4)).await.unwrap(), None);
    // Everything at and above the min seq deleted: the seqs go on where they were.
    let all: Vec<Seq> = (5..=10).map(Seq).collect();
    assert_eq!(store.expire(&c, &all, Seq(11)).await.unwrap(), 6);
    assert_eq!(store.min_seq(&c).await.unwrap(), Seq(11));
    assert_eq!(store.last_seq(&c).await.unwrap(), Seq(10));
    assert_eq!(seqs(store.history(&c, None, 100).await.unwrap()), vec![2]);
    let next = store.append(new_msg(&c, "u1", "r11")).await.unwrap();
    assert_eq!(next.message.seq, Seq(11));
    assert!(!next.duplicate);
    // The min seq is never raised past the last seq + 1.
    store.expire(&c, &[], Seq(1000)).await.unwrap();
    assert_eq!(store.min_seq(&c).await.unwrap(), Seq(12));
    // Listed among the conversations, page by page.
    let mut after: Option<ConvId> = None;
    let mut found = false;
    for _ in 0..100_000 {
        let page = store.conversation_ids(after.as_ref(), 50).await.unwrap();
        if page.iter().any(|x| x == &c) {
            found = true;
            break;
        }
        match page.last() {
            Some(last) => after = Some(last.clone()),
            None => break,
        }
    }
    assert!(found, "{c} not listed by conversation_ids");
}

/// Messages kept below the min seq (a hold, an exemption) are read by `history` and `after`
/// however many whole buckets retention emptied between them (the CQL backend's tests run
/// this with 4 seqs per bucket, so seqs 16-47 below are eight empty partitions).
pub async fn reads_reach_kept_messages_past_emptied_buckets<S: Store>(store: &S) {
    let c = ConvId::group(&GroupId::new(unique("g")));
    for i in 1..=60 {
        store
            .append(new_msg(&c, "u1", &format!("k{i}")))
            .await
            .unwrap();
    }
    // A pass in batches of ten: 1-50 go but 2 and 13 (kept), the min seq rising each batch.
    for lo in (1..=50u64).step_by(10) {
        let gone: Vec<Seq> = (lo..lo + 10)
            .filter(|s| *s != 2 && *s != 13)
            .map(Seq)
            .collect();
        store.expire(&c, &gone, Seq(lo + 10)).await.unwrap();
    }
    assert_eq!(store.min_seq(&c).await.unwrap(), Seq(51));
    let seqs = |p: &crate::Page| p.messages.iter().map(|m| m.seq.0).collect::<Vec<_>>();
    let mut want: Vec<u64> = (51..=60).rev().collect();
    want.extend([13, 2]);
    let all = store.history(&c, None, 100).await.unwrap();
    assert_eq!(seqs(&all), want);
    assert!(!all.has_more);
    // Paged backwards as a client does, from each page's oldest seq.
    let mut paged = Vec::new();
    let mut before = None;
    loop {
        let p = store.history(&c, before, 4).await.unwrap();
        paged.extend(seqs(&p));
        before = p.messages.last().map(|m| m.seq);
        if !p.has_more {
            break;
        }
        assert!(paged.len() < 100, "history pages never end");
    }
    assert_eq!(paged, want);
    let p = store.history(&c, Some(Seq(40)), 10).await.unwrap();
    assert_eq!(seqs(&p), vec![13, 2]);
    assert!(!p.has_more);
    // Forwards the same.
    want.reverse();
    assert_eq!(seqs(&store.after(&c, Seq(0), 100).await.unwrap()), want);
    let mut paged = Vec::new();
    let mut after = Seq(0);
    loop {
        let p = store.after(&c, after, 3).await.unwrap();
        paged.extend(seqs(&p));
        after = p.messages.last().map_or(after, |m| m.seq);
        if !p.has_more {
            break;
        }
        assert!(paged.len() < 100, "after pages never end");
    }
    assert_eq!(paged, want);
    assert_eq!(
        seqs(&store.after(&c, Seq(2), 2).await.unwrap()),
        vec![13, 51]
    );
    // The hold on 13 ends and a later pass deletes it: 2 is still found.
    store.expire(&c, &[Seq(13)], Seq(51)).await.unwrap();
    let p = store.history(&c, Some(Seq(51)), 10).await.unwrap();
    assert_eq!(seqs(&p), vec![2]);
    assert_eq!(
        seqs(&store.after(&c, Seq(0), 3).await.unwrap()),
        vec![2, 51, 52]
    );
    // Nothing kept any more: reads start at the min seq.
    store.expire(&c, &[Seq(2)], Seq(51)).await.unwrap();
    assert_eq!(
        seqs(&store.history(&c, None, 100).await.unwrap()),
        (51..=60).rev().collect::<Vec<_>>()
    );
    assert_eq!(
        seqs(&store.after(&c, Seq(0), 2).await.unwrap()),
        vec![51, 52]
    );
    // Kept again later (a new hold): found past the buckets emptied before.
    let gone: Vec<Seq> = (51..=57).map(Seq).collect();
    store.expire(&c, &gone, Seq(59)).await.unwrap();
    assert_eq!(
        seqs(&store.history(&c, None, 100).await.unwrap()),
        vec![60, 59, 58]
    );
}

// ---- The compliance event log (crate::compliance) ----

/// How long a check waits for events to become final (the CQL backend's horizon follows the
/// nodes' published floors, about a second behind).
const FINAL_WITHIN: std::time::Duration = std::time::Duration::from_secs(20);

/// Reads the log from `from` until it has `want` events that `keep` selects, in pages of
/// `page`; panics after [`FINAL_WITHIN`]. Returns them and the cursor after them.
async fn read_log<S: ReviewStore>(
    store: &S,
    from: &crate::EventId,
    page: usize,
    want: usize,
    keep: impl Fn(&crate::EventBody) -> bool,
) -> (Vec<crate::StoredEvent>, crate::EventId) {
    let deadline = std::time::Instant::now() + FINAL_WITHIN;
    let mut cursor = from.clone();
    let mut out = Vec::new();
    loop {
        let p = store.compliance_events(&cursor, page).await.unwrap();
        for e in p.events {
            assert!(e.id > cursor, "events come after the cursor, in order");
            assert!(e.id.ts < p.horizon, "only final events are answered");
            cursor = e.id.clone();
            if keep(&e.body) {
                out.push(e);
            }
        }
        assert!(p.next >= cursor);
        cursor = p.next;
        if out.len() >= want && !p.has_more {
            return (out, cursor);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "only {} of {want} events became final",
            out.len()
        );
        if !p.has_more {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
}

fn conv_of(e: &crate::EventBody) -> Option<&str> {
    match e {
        crate::EventBody::Message { conv, .. } | crate::EventBody::Recall { conv, .. } => {
            Some(conv.as_str())
        }
        crate::EventBody::Member { group, .. } => Some(group.as_str()),
        crate::EventBody::Audit { entry } => entry.conv.as_ref().map(|c| c.as_str()),
    }
}

/// Messages, recalls, membership changes and audit entries each leave one event, in the
/// order they were made; duplicates of an append and removals of non-members leave none.
pub async fn compliance_log_records_every_change_in_order<S: Store + ReviewStore>(store: &S) {
    use crate::{EventBody, MemberChange};
    let g = GroupId::new(unique("cg"));
    let c = ConvId::group(&g);
    let mine = |e: &EventBody| conv_of(e).is_some_and(|x| x.contains(g.as_str()));
    let (_, start) = read_log(store, &crate::EventId::default(), 1000, 0, |_| false).await;

    store
        .create_group(
            Group {
                id: g.clone(),
                name: "compliance".into(),
                kind: GroupKind::Project,
                created_by: UserId::new("u1"),
                created_at: 1,
            },
            vec![Member {
                user: UserId::new("u1"),
                role: Role::Owner,
                joined_at: 1,
            }],
        )
        .await
        .unwrap();
    let mut first = new_msg(&c, "u1", "k1");
    first.moderation = Some("mask".into());
    let m1 = store.append(first).await.unwrap().message;
    assert!(
        store
            .append(new_msg(&c, "u1", "k1"))
            .await
            .unwrap()
            .duplicate
    );
    let m2 = store.append(new_msg(&c, "u2", "k2")).await.unwrap().message;
    store.recall(&c, m1.seq).await.unwrap();
    let member = Member {
        user: UserId::new("u2"),
        role: Role::Member,
        joined_at: 2,
    };
    store.put_member(&g, member).await.unwrap();
    assert!(store.remove_member(&g, &UserId::new("u2")).await.unwrap());
    assert!(!store
        .remove_member(&g, &UserId::new("nobody"))
        .await
        .unwrap());
    let mut entry = AuditEntry::action(5, &UserId::new("boss"), "group.remove_member");
    entry.conv = Some(c.clone());
    store.audit(entry.clone()).await.unwrap();
    // A hand-over writes both members at once: one event each.
    let owner = |u: &str, role| Member {
        user: UserId::new(u),
        role,
        joined_at: 3,
    };
    store
        .put_members(
            &g,
            vec![owner("u3", Role::Owner), owner("u1", Role::Member)],
        )
        .await
        .unwrap();

    let (got, _) = read_log(store, &start, 2, 9, mine).await;
    let kinds: Vec<&str> = got.iter().map(|e| e.body.kind()).collect();
    assert_eq!(
        kinds,
        [
            "member", "message", "message", "recall", "member", "member", "audit", "member",
            "member"
        ]
    );
    assert!(matches!(
        &got[7].body,
        EventBody::Member { user, role: Some(Role::Owner), .. } if user.as_str() == "u3"
    ));
    assert_eq!(
        got[1].body,
        EventBody::Message {
            conv: c.clone(),
            seq: m1.seq,
            id: m1.id.clone(),
            from: UserId::new("u1"),
            client_msg_id: "k1".into(),
            moderation: Some("mask".into()),
        }
    );
    assert!(matches!(&got[2].body, EventBody::Message { seq, .. } if *seq == m2.seq));
    assert!(
        matches!(&got[3].body, EventBody::Recall { seq, id, .. } if *seq == m1.seq && *id == m1.id)
    );
    assert!(matches!(
        &got[4].body,
        EventBody::Member {
            change: MemberChange::Put,
            role: Some(Role::Member),
            ..
        }
    ));
    assert!(matches!(
        &got[5].body,
        EventBody::Member { change: MemberChange::Removed, user, .. } if user.as_str() == "u2"
    ));
    assert_eq!(got[6].body, EventBody::Audit { entry });
    let mut ids: Vec<_> = got.iter().map(|e| e.id.clone()).collect();
    ids.dedup();
    assert_eq!(ids.len(), got.len());
}

/// Pages read while appends commit concurrently (some allocated before others that become
/// durable first) see every append exactly once, in one stable order.
pub async fn compliance_log_pages_exactly_under_concurrent_commits<
    S: Store + ReviewStore + Clone,
>(
    store: &S,
) {
    let tag = unique("cc");
    let mine = {
        let tag = tag.clone();
        move |e: &crate::EventBody| matches!(e, crate::EventBody::Message { conv, .. } if conv.as_str().contains(&tag))
    };
    let (_, start) = read_log(store, &crate::EventId::default(), 1000, 0, |_| false).await;
    let (writers, each) = (4usize, 25u64);
    let mut tasks = Vec::new();
    for w in 0..writers {
        let (s, tag) = (store.clone(), tag.clone());
        tasks.push(tokio::spawn(async move {
            let c = ConvId::group(&GroupId::new(format!("{tag}-{w}")));
            for i in 0..each {
                s.append(new_msg(&c, "u1", &format!("k{i}"))).await.unwrap();
            }
        }));
    }
    // Page while they write: small pages, so that many reads interleave with the commits.
    let mut seen = Vec::new();
    let mut cursor = start;
    let deadline = std::time::Instant::now() + FINAL_WITHIN;
    while seen.len() < writers * each as usize {
        let p = store.compliance_events(&cursor, 3).await.unwrap();
        for e in &p.events {
            assert!(e.id > cursor);
            cursor = e.id.clone();
        }
        cursor = p.next.clone();
        seen.extend(p.events.into_iter().filter(|e| mine(&e.body)));
        assert!(
            std::time::Instant::now() < deadline,
            "events missing: {}",
            seen.len()
        );
        if !p.has_more {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    let (late, _) = read_log(store, &cursor, 50, 0, &mine).await;
    assert!(
        late.is_empty(),
        "an event appeared behind the cursor: {late:?}"
    );
    let mut keys: Vec<(String, u64)> = seen
        .iter()
        .filter_map(|e| match &e.body {
            crate::EventBody::Message { conv, seq, .. } => Some((conv.as_str().to_owned(), seq.0)),
            _ => None,
        })
        .collect();
    assert_eq!(keys.len(), writers * each as usize);
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), writers * each as usize, "no event twice");
    // Each conversation's events come in seq order.
    for w in 0..writers {
        let conv = format!("group:{tag}-{w}");
        let seqs: Vec<u64> = seen
            .iter()
            .filter_map(|e| match &e.body {
                crate::EventBody::Message { conv: c, seq, .. } if c.as_str() == conv => Some(seq.0),
                _ => None,
            })
            .collect();
        assert_eq!(seqs, (1..=each).collect::<Vec<_>>());
    }
}
