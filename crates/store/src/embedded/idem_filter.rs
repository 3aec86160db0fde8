//! The idempotency filter: answers "was this idempotency key ever written?" with **no** for
//! almost every new message, so the common append needs no LSM lookup.
//!
//! Every append checks its idempotency key (the hashed form of `embedded::idem_key`) before it
//! takes a seq, and nearly every check is a miss. In fjall a miss still walks the active and
//! sealed memtables' skiplists (measured: ~11 % of the process's CPU in the append
//! benchmark); on-disk tables answer it from their own bloom filters. This filter is a bloom
//! filter over **every** idempotency key in the keyspace: rebuilt after open by one scan of
//! the keyspace, and fed by the writer with each key it writes. A "no" is exact (a bloom filter
//! has no false negatives, and every key on disk or written since open is in it), so the
//! writer appends without the lookup; a "maybe" (a retry, or a false positive) falls back to
//! the LSM lookup, which decides.
//!
//! The scan runs on a thread of its own so that opening the store does not wait for it
//! (~1.4 s per million keys, measured on a loaded machine). Until its result arrives, a writer's filter holds
//! only the keys written since open, says "maybe" to everything, and every append does the
//! LSM lookup as before. The scan reads a snapshot taken after the writers started feeding
//! their filters, so the union of the two holds every key: each key is either in the
//! snapshot or written by the writer after open.
//!
//! Each writer thread owns the filter of its own conversations (a conversation's appends
//! always go to the same writer), so it takes no lock. The filter is a split-block bloom
//! filter (the Parquet/Impala layout: one 32-byte block per key, one bit in each of its
//! eight 32-bit words, a single cache line per query) with [`BITS_PER_KEY`] bits per key:
//! by the usual estimate 0.1-0.2 % false positives at its design load (the unit test checks
//! under 1 % across several generations). When more keys arrive than it was sized for, it
//! adds a generation twice as large, up to [`MAX_BYTES`] for the keys on disk at open and as
//! much for the keys written since; past that the newest generation keeps absorbing keys and its
//! false-positive rate rises, which costs LSM lookups, never correctness. The next open sizes
//! the filter for what is then on disk.

use std::hash::BuildHasher;

/// Bits of filter per key at its design load.
const BITS_PER_KEY: usize = 16;
/// Keys the first generation of a writer's filter is sized for, at least.
const MIN_KEYS: usize = 1 << 16;
/// Most bytes the filters of one store take together, for the keys on disk at open and as
/// much again for the keys written since (each split evenly between the writers): 32 MiB is
/// the design load of ~16 million idempotency keys (one per message kept).
pub const MAX_BYTES: usize = 32 << 20;

/// Salts of the split-block bloom filter (from the Parquet specification).
const SALT: [u32; 8] = [
    0x47b6_137b,
    0x4497_4d91,
    0x8824_ad5b,
    0xa2b7_289d,
    0x7054_95c7,
    0x2df1_424b,
    0x9efc_4947,
    0x5c6b_fb31,
];

/// The hash of an idempotency key as the filter sees it (fixed seed: the same in every
/// process, though nothing on disk depends on it).
pub fn hash(key: &[u8]) -> u64 {
    foldhash::quality::FixedState::with_seed(0x5eed_1de4_a11c_e5e5).hash_one(key)
}

/// One bloom filter of fixed size.
struct Generation {
    blocks: Vec<[u32; 8]>,
    /// Keys it was sized for.
    capacity: usize,
    /// Keys inserted.
    len: usize,
}

impl Generation {
    fn new(capacity: usize) -> Self {
        let blocks = (capacity * BITS_PER_KEY).div_ceil(256).max(1);
        Self {
            blocks: vec![[0; 8]; blocks],
            capacity,
            len: 0,
        }
    }

    fn bytes(&self) -> usize {
        self.blocks.len() * 32
    }

    /// The block and the bit of each of its words for `h`.
    fn place(&self, h: u64) -> (usize, [u32; 8]) {
        // Upper half picks the block (multiply-shift instead of a modulo), lower half the bits.
        let block = (((h >> 32) * self.blocks.len() as u64) >> 32) as usize;
        let key = h as u32;
        let mut mask = [0u32; 8];
        for (m, salt) in mask.iter_mut().zip(SALT) {
            *m = 1 << (key.wrapping_mul(salt) >> 27);
        }
        (block, mask)
    }

    fn insert(&mut self, h: u64) {
        let (block, mask) = self.place(h);
        if let Some(b) = self.blocks.get_mut(block) {
            for (w, m) in b.iter_mut().zip(mask) {
                *w |= m;
            }
        }
        self.len += 1;
    }

    fn contains(&self, h: u64) -> bool {
        let (block, mask) = self.place(h);
        self.blocks
            .get(block)
            .is_some_and(|b| b.iter().zip(mask).all(|(w, m)| w & m == m))
    }
}

/// A writer's idempotency filter (see the module documentation).
pub struct IdemFilter {
    /// Oldest first; keys go into the last one.
    gens: Vec<Generation>,
    /// Most bytes this filter may take.
    max_bytes: usize,
    /// Whether it holds every key of the keyspace (else only those inserted, and it answers
    /// "maybe" to everything until [`Self::absorb`] adds the scan's filter).
    complete: bool,
}

impl IdemFilter {
    /// An empty, complete filter (for an empty keyspace, or the scan's) sized for `expected`
    /// keys (at least [`MIN_KEYS`]), never growing past `max_bytes`.
    pub fn new(expected: usize, max_bytes: usize) -> Self {
        let most = max_bytes * 8 / BITS_PER_KEY;
        let capacity = expected.max(MIN_KEYS).min(most.max(1));
        Self {
            gens: vec![Generation::new(capacity)],
            max_bytes,
            complete: true,
        }
    }

    /// An empty filter for the keys written from now on, waiting for the scan of the keys
    /// already on disk: it answers "maybe" until [`Self::absorb`].
    pub fn awaiting_scan(max_bytes: usize) -> Self {
        Self {
            complete: false,
            ..Self::new(0, max_bytes)
        }
    }

    /// Adds the filter built by the scan: from now on this one holds every key and its "no"
    /// is exact.
    pub fn absorb(&mut self, scanned: IdemFilter) {
        let mut gens = scanned.gens;
        gens.append(&mut self.gens);
        self.gens = gens;
        self.max_bytes += scanned.max_bytes;
        self.complete = true;
    }

    /// Whether [`Self::absorb`] still has to run (the scan's result has not arrived).
    #[cfg(test)]
    pub fn awaits_scan(&self) -> bool {
        !self.complete
    }

    /// Records a key (by its [`hash`]).
    pub fn insert(&mut self, h: u64) {
        let grow = match self.gens.last() {
            Some(last) if last.len >= last.capacity => {
                let next = last.capacity * 2;
                let bytes: usize = self.gens.iter().map(Generation::bytes).sum();
                (bytes + (next * BITS_PER_KEY).div_ceil(256) * 32 <= self.max_bytes).then_some(next)
            }
            Some(_) => None,
            None => Some(MIN_KEYS),
        };
        if let Some(capacity) = grow {
            self.gens.push(Generation::new(capacity));
        }
        if let Some(last) = self.gens.last_mut() {
            last.insert(h);
        }
    }

    /// False when the key (by its [`hash`]) was certainly never inserted; true when it may
    /// have been.
    pub fn may_contain(&self, h: u64) -> bool {
        !self.complete || self.gens.iter().rev().any(|g| g.contains(h))
    }

    /// Bytes of memory the filter takes.
    pub fn bytes(&self) -> usize {
        self.gens.iter().map(Generation::bytes).sum()
    }
}

impl Default for IdemFilter {
    fn default() -> Self {
        Self::new(0, MAX_BYTES)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn key(i: usize) -> Vec<u8> {
        format!("group:g{}\0u{}\0c{i}", i % 1000, i % 97).into_bytes()
    }

    /// No false negatives, across generations; few false positives.
    #[test]
    fn no_false_negatives_and_few_false_positives() {
        let mut f = IdemFilter::new(0, MAX_BYTES);
        let n = 300_000; // past the first generation (65,536 keys): three more
        for i in 0..n {
            f.insert(hash(&key(i)));
        }
        assert!(f.gens.len() > 1, "it grew");
        for i in 0..n {
            assert!(f.may_contain(hash(&key(i))), "false negative at {i}");
        }
        let fp = (n..2 * n).filter(|i| f.may_contain(hash(&key(*i)))).count();
        // Each generation ~0.2 % at its design load; four checked on a miss.
        assert!(fp < n / 100, "{fp} false positives in {n}");
    }

    /// A filter waiting for the scan says "maybe" to everything; after absorbing the scan's
    /// filter it knows the keys of both.
    #[test]
    fn absorbing_the_scan_completes_the_filter() {
        let mut live = IdemFilter::awaiting_scan(MAX_BYTES);
        live.insert(hash(b"new"));
        assert!(live.awaits_scan());
        assert!(live.may_contain(hash(b"anything")));
        let mut scanned = IdemFilter::new(10, MAX_BYTES);
        scanned.insert(hash(b"old"));
        live.absorb(scanned);
        assert!(!live.awaits_scan());
        assert!(live.may_contain(hash(b"old")) && live.may_contain(hash(b"new")));
        let fp = (0..10_000)
            .filter(|i| live.may_contain(hash(format!("other{i}").as_bytes())))
            .count();
        assert!(fp < 100, "{fp}");
    }

    /// At its memory bound the filter stops growing and still has no false negatives.
    #[test]
    fn bounded_memory_keeps_every_key() {
        let max = 64 << 10;
        let mut f = IdemFilter::new(0, max);
        for i in 0..200_000 {
            f.insert(hash(&key(i)));
        }
        assert!(f.bytes() <= max, "{} bytes", f.bytes());
        for i in 0..200_000 {
            assert!(f.may_contain(hash(&key(i))));
        }
    }
}
