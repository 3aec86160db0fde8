//! The key of the `idempotency` keyspace: 20 bytes, whatever the ids' lengths.
//!
//! A message's idempotency key names (conversation, sender, `client_msg_id`). Written out, that
//! is 40–200 bytes (two user ids in a direct conversation's id, the sender again, a client
//! UUID), and every append inserts one into the keyspace's memtable: a skiplist whose search
//! compares the new key with ~30 others, each compare a cache miss to the other key's heap
//! copy and a `memcmp` over the long shared prefix. So the key is the hashed form instead:
//!
//! `0x01` · the conversation's 24-bit tag (big-endian) · the first 16 bytes of
//! SHA-256(`conv \0 sender \0 client_msg_id`)
//!
//! Twenty bytes is what fjall keeps inline in a skiplist node (no heap copy, no second miss);
//! the tag says which writer owns the conversation, which the startup scan needs to fill each
//! writer's filter (`shard_of` uses the same tag). SHA-256 truncated to 128 bits: two different
//! messages sharing a key would need 2^64 tries to find even on purpose, and the store checks
//! the sender of any stored message a key leads to (see `Keyspaces::append`).
//!
//! Data directories written before this form hold **legacy keys**, `conv \0 sender \0
//! client_msg_id` written out. They are never rewritten (retention keeps idempotency keys
//! as long as the conversation): a store that finds one looks a key up in both forms, and its
//! startup scan files a legacy key under the hashed key it stands for. The two forms cannot be
//! confused: a legacy key starts with a conversation id (`dm:` or `group:`), never `0x01`.

use sha2::{Digest, Sha256};

/// First byte of a hashed key (a legacy key's first byte is a conversation id's first letter).
pub const HASHED: u8 = 1;

/// Length of a hashed key.
pub const LEN: usize = 20;

/// Separates the parts of a legacy key (ids never contain a NUL byte).
const SEP: u8 = 0;

/// The 24-bit tag of a conversation: the top 24 bits of FNV-1a of its id (the well-mixed
/// ones; FNV-1a's low bits follow the bytes' low bits, so `% shards` of them would not spread
/// `g0`, `g1`, ...). Stable across versions and processes: it is part of the keys on disk.
pub fn conv_tag(conv: &[u8]) -> u32 {
    let h = conv.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    (h >> 40) as u32
}

/// The hashed idempotency key of (conversation, sender, client id).
pub fn hashed(conv: &[u8], from: &[u8], client_msg_id: &[u8]) -> [u8; LEN] {
    let mut sha = Sha256::new();
    sha.update(conv);
    sha.update([SEP]);
    sha.update(from);
    sha.update([SEP]);
    sha.update(client_msg_id);
    let digest = sha.finalize();
    let mut key = [0u8; LEN];
    key[0] = HASHED;
    key[1..4].copy_from_slice(&conv_tag(conv).to_be_bytes()[1..]);
    key[4..].copy_from_slice(&digest[..LEN - 4]);
    key
}

/// The legacy (written-out) key of (conversation, sender, client id), into `out`.
pub fn legacy_into(out: &mut Vec<u8>, conv: &[u8], from: &[u8], client_msg_id: &[u8]) {
    out.clear();
    out.extend_from_slice(conv);
    out.push(SEP);
    out.extend_from_slice(from);
    out.push(SEP);
    out.extend_from_slice(client_msg_id);
}

/// A key as found on disk: its conversation's tag and the hashed key it stands for (itself
/// when hashed; computed from its parts when legacy). `None` for a key of neither form.
pub fn normalize(key: &[u8]) -> Option<(u32, [u8; LEN])> {
    if key.len() == LEN && key[0] == HASHED {
        let tag = u32::from_be_bytes([0, key[1], key[2], key[3]]);
        let mut out = [0u8; LEN];
        out.copy_from_slice(key);
        return Some((tag, out));
    }
    let mut parts = key.splitn(3, |b| *b == SEP);
    let (conv, from, id) = (parts.next()?, parts.next()?, parts.next()?);
    Some((conv_tag(conv), hashed(conv, from, id)))
}

/// Whether `key` is a legacy key (see the module documentation).
pub fn is_legacy(key: &[u8]) -> bool {
    key.first().is_some_and(|b| *b != HASHED)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashed_keys_are_twenty_bytes_and_carry_the_tag() {
        let long = "u".repeat(64);
        for (conv, from, id) in [
            ("dm:a:b", "a", "c-1"),
            ("group:g1", long.as_str(), long.as_str()),
        ] {
            let k = hashed(conv.as_bytes(), from.as_bytes(), id.as_bytes());
            assert_eq!(k.len(), LEN);
            assert_eq!(k[0], HASHED);
            assert!(!is_legacy(&k));
            assert_eq!(normalize(&k), Some((conv_tag(conv.as_bytes()), k)));
        }
    }

    #[test]
    fn every_part_of_the_triple_changes_the_key() {
        let base = hashed(b"dm:a:b", b"a", b"c-1");
        assert_ne!(base, hashed(b"dm:a:c", b"a", b"c-1"));
        assert_ne!(base, hashed(b"dm:a:b", b"b", b"c-1"));
        assert_ne!(base, hashed(b"dm:a:b", b"a", b"c-2"));
        // The separator keeps the parts apart: ("a", "bc") is not ("ab", "c").
        assert_ne!(hashed(b"g", b"a", b"bc"), hashed(b"g", b"ab", b"c"));
    }

    #[test]
    fn a_legacy_key_normalizes_to_the_hashed_key_it_stands_for() {
        let mut legacy = Vec::new();
        legacy_into(&mut legacy, b"dm:alice:bob", b"alice", b"c-42");
        assert!(is_legacy(&legacy));
        let hashed_key = hashed(b"dm:alice:bob", b"alice", b"c-42");
        assert_eq!(
            normalize(&legacy),
            Some((conv_tag(b"dm:alice:bob"), hashed_key))
        );
        assert_eq!(normalize(b"no separators"), None);
    }

    #[test]
    fn tags_are_stable_and_spread() {
        // Part of the keys on disk: a change here breaks every data directory. (The values
        // were computed independently, with Python's hashlib and the FNV-1a constants.)
        assert_eq!(conv_tag(b"dm:alice:bob"), 0x6e_64c4);
        let key = hashed(b"dm:alice:bob", b"alice", b"c-42");
        let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, "016e64c4f4ebb8d69e5bba6cd6889c50713323bf");
        let tags: std::collections::HashSet<u32> = (0..1000)
            .map(|i| conv_tag(format!("group:g{i}").as_bytes()))
            .collect();
        assert!(tags.len() > 990, "{}", tags.len());
        assert!(tags.iter().all(|t| *t <= 0xff_ffff));
        // Writers are picked by `tag % writers`: consecutive names spread over them.
        for writers in [2, 3, 4] {
            let mut per = vec![0; writers];
            for t in &tags {
                per[*t as usize % writers] += 1;
            }
            let even = tags.len() / writers;
            assert!(per.iter().all(|n| n * 10 > even * 8), "{writers}: {per:?}");
        }
    }
}
