//! Password hashing behind a node-wide budget: a few dedicated worker threads, each with its
//! own argon2 memory allocated once and reused, fed by a bounded queue.
//!
//! Every argon2id hash or check needs 19 MiB of memory (the default parameters). Run on the
//! blocking pool, a burst of sign-ins allocated that much per attempt on as many threads as
//! the pool grows to, and the allocator kept the freed memory: 60 concurrent logins took a
//! node to ~2 GB. Here at most `auth.hash_concurrency` hashes run at once, each on a worker
//! that owns its memory blocks, so the memory for hashing is `hash_concurrency × 19 MiB`
//! whatever the load. At most `auth.hash_queue` more wait, each for at most
//! `auth.hash_wait_ms`; beyond that the request gets `unavailable` (503, `retry: true`).
//!
//! A check for an unknown user runs the same computation (default parameters, a fixed salt)
//! as a check of a real password, so neither the answer nor its time tells which ids exist.

use crate::error::ApiError;
use argon2::password_hash::phc::{Output, ParamsString, PasswordHash, Salt};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use protocol::ErrorCode;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// The largest argon2 memory a stored hash may ask for (64 MiB); a larger one is refused
/// rather than allocated.
const MAX_BLOCKS: usize = 64 * 1024;

/// The salt of the check run for unknown users (its result is thrown away).
const DUMMY_SALT: &[u8] = b"chatd-unknown-user-salt";

/// What a worker is asked to do.
enum Work {
    /// Hash a new password with the default parameters.
    Hash(String),
    /// Check a password against a stored PHC string; `None` runs the same work for nothing
    /// (unknown user) and answers `false`.
    Verify(String, Option<String>),
}

/// A worker's answer.
enum Done {
    Hashed(Result<String, String>),
    Verified(bool),
    /// The job waited past its deadline and was not run.
    Expired,
}

struct Job {
    work: Work,
    deadline: Instant,
    reply: oneshot::Sender<Done>,
}

/// The node's password hashing workers.
pub struct HashPool {
    queue: SyncSender<Job>,
    wait: Duration,
}

fn busy() -> ApiError {
    ApiError::new(
        ErrorCode::Unavailable,
        "too many sign-ins in progress on this node; retry in a moment",
    )
}

impl HashPool {
    /// Starts `workers` hashing threads (at least one) behind a queue of `queue` jobs, each
    /// allowed to wait `wait` for a worker.
    pub fn new(workers: usize, queue: usize, wait: Duration) -> std::io::Result<Self> {
        let (tx, rx) = sync_channel::<Job>(queue);
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..workers.max(1) {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("chatd-hash-{i}"))
                .spawn(move || worker(&rx))?;
        }
        Ok(Self { queue: tx, wait })
    }

    async fn run(&self, work: Work) -> Result<Done, ApiError> {
        let (reply, answer) = oneshot::channel();
        let job = Job {
            work,
            deadline: Instant::now()
                .checked_add(self.wait)
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600)),
            reply,
        };
        match self.queue.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => return Err(busy()),
            Err(TrySendError::Disconnected(_)) => {
                return Err(ApiError::new(
                    ErrorCode::Internal,
                    "password hashing is not running",
                ))
            }
        }
        match answer.await {
            Ok(Done::Expired) => Err(busy()),
            Ok(done) => Ok(done),
            Err(_) => Err(ApiError::new(
                ErrorCode::Internal,
                "password hashing failed",
            )),
        }
    }

    /// Hashes a new password with argon2id (default parameters) into a PHC string.
    pub async fn hash(&self, password: String) -> Result<String, ApiError> {
        match self.run(Work::Hash(password)).await? {
            Done::Hashed(Ok(h)) => Ok(h),
            Done::Hashed(Err(e)) => {
                Err(ApiError::new(ErrorCode::Internal, format!("hashing: {e}")))
            }
            _ => Err(ApiError::new(ErrorCode::Internal, "hashing: no hash")),
        }
    }

    /// Checks a password against a stored hash; with `None` (no such user) it spends the
    /// same time and answers `false`.
    pub async fn verify(&self, password: String, hash: Option<String>) -> Result<bool, ApiError> {
        match self.run(Work::Verify(password, hash)).await? {
            Done::Verified(ok) => Ok(ok),
            _ => Ok(false),
        }
    }
}

fn worker(rx: &Mutex<Receiver<Job>>) {
    // Allocated at the first job, then reused for every hash this thread runs.
    let mut memory: Vec<Block> = Vec::new();
    loop {
        let job = {
            let Ok(rx) = rx.lock() else { return };
            match rx.recv() {
                Ok(job) => job,
                Err(_) => return,
            }
        };
        if job.reply.is_closed() {
            continue;
        }
        if Instant::now() > job.deadline {
            let _ = job.reply.send(Done::Expired);
            continue;
        }
        let done = match job.work {
            Work::Hash(password) => Done::Hashed(hash(&mut memory, password.as_bytes())),
            Work::Verify(password, stored) => {
                Done::Verified(verify(&mut memory, password.as_bytes(), stored.as_deref()))
            }
        };
        let _ = job.reply.send(done);
    }
}

/// Runs argon2 with this thread's memory, growing it (up to [`MAX_BLOCKS`]) when needed.
fn compute(
    memory: &mut Vec<Block>,
    argon: &Argon2<'_>,
    password: &[u8],
    salt: &[u8],
    out: &mut [u8],
) -> Result<(), String> {
    let blocks = argon.params().block_count();
    if blocks > MAX_BLOCKS {
        return Err(format!("the hash asks for {blocks} KiB of memory"));
    }
    if memory.len() < blocks {
        memory.resize(blocks, Block::new());
    }
    let Some(slice) = memory.get_mut(..blocks) else {
        return Err("memory".into());
    };
    argon
        .hash_password_into_with_memory(password, salt, out, slice)
        .map_err(|e| e.to_string())
}

fn hash(memory: &mut Vec<Block>, password: &[u8]) -> Result<String, String> {
    let params = Params::DEFAULT;
    let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
    let salt_bytes: [u8; 16] = rand::random();
    let salt = Salt::new(&salt_bytes).map_err(|e| e.to_string())?;
    let mut out = [0u8; Params::DEFAULT_OUTPUT_LEN];
    compute(memory, &argon, password, &salt_bytes, &mut out)?;
    let phc = PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(&params).map_err(|e| e.to_string())?,
        salt: Some(salt),
        hash: Some(Output::new(&out).map_err(|e| e.to_string())?),
    };
    Ok(phc.to_string())
}

fn verify(memory: &mut Vec<Block>, password: &[u8], stored: Option<&str>) -> bool {
    let Some(stored) = stored else {
        // Unknown user: the same work as a real check with the default parameters.
        let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, Params::DEFAULT);
        let mut out = [0u8; Params::DEFAULT_OUTPUT_LEN];
        let _ = compute(memory, &argon, password, DUMMY_SALT, &mut out);
        return false;
    };
    let checked = (|| -> Result<bool, String> {
        let phc = PasswordHash::new(stored).map_err(|e| e.to_string())?;
        let algorithm = Algorithm::try_from(phc.algorithm.as_str()).map_err(|e| e.to_string())?;
        let version = match phc.version {
            Some(v) => Version::try_from(v).map_err(|e| e.to_string())?,
            None => Version::default(),
        };
        let params = Params::try_from(&phc).map_err(|e| e.to_string())?;
        let (Some(salt), Some(expected)) = (&phc.salt, &phc.hash) else {
            return Err("no salt or hash".into());
        };
        let argon = Argon2::new(algorithm, version, params);
        let mut out = vec![0u8; expected.len()];
        compute(memory, &argon, password, salt.as_ref(), &mut out)?;
        // `Output` compares in constant time.
        Ok(Output::new(&out).map_err(|e| e.to_string())? == *expected)
    })();
    checked.unwrap_or_else(|e| {
        tracing::warn!(error = %e, "a stored password hash cannot be checked");
        false
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool() -> HashPool {
        HashPool::new(1, 4, Duration::from_secs(30)).unwrap()
    }

    #[tokio::test]
    async fn hashes_verify_with_the_argon2_crate_and_back() {
        let p = pool();
        let h = p.hash("correct horse 1".into()).await.unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{h}");
        assert!(p
            .verify("correct horse 1".into(), Some(h.clone()))
            .await
            .unwrap());
        assert!(!p
            .verify("wrong horse 1".into(), Some(h.clone()))
            .await
            .unwrap());
        // The crate's own verifier agrees, and we check what the crate hashes.
        use argon2::password_hash::{PasswordHasher, PasswordVerifier};
        assert!(Argon2::default()
            .verify_password(b"correct horse 1", h.as_str())
            .is_ok());
        let theirs = Argon2::default()
            .hash_password(b"other pass 2")
            .unwrap()
            .to_string();
        assert!(p.verify("other pass 2".into(), Some(theirs)).await.unwrap());
        assert!(!p
            .verify("x".into(), Some("not a hash".into()))
            .await
            .unwrap());
        assert!(!p.verify("x".into(), None).await.unwrap());
    }

    #[tokio::test]
    async fn an_unknown_user_costs_as_much_as_a_wrong_password() {
        let p = pool();
        let h = p.hash("correct horse 1".into()).await.unwrap();
        // Warm the worker's memory first, then compare.
        let _ = p.verify("x".into(), None).await;
        let time = |stored: Option<String>| {
            let p = &p;
            async move {
                let t = Instant::now();
                let _ = p.verify("wrong horse 1".into(), stored).await;
                t.elapsed()
            }
        };
        // The fastest of five runs each, interleaved: a busy machine only ever adds time, so
        // the minimums compare the work done, not the load at that moment.
        let (mut known, mut unknown) = (Duration::MAX, Duration::MAX);
        for _ in 0..5 {
            known = known.min(time(Some(h.clone())).await);
            unknown = unknown.min(time(None).await);
        }
        let ratio = known.as_secs_f64() / unknown.as_secs_f64();
        assert!((0.5..2.0).contains(&ratio), "{known:?} vs {unknown:?}");
    }

    #[tokio::test]
    async fn a_full_queue_answers_unavailable() {
        let p = HashPool::new(1, 1, Duration::from_secs(30)).unwrap();
        let jobs: Vec<_> = (0..8).map(|_| p.verify("x".into(), None)).collect();
        let results = futures_util::future::join_all(jobs).await;
        let busy = results
            .iter()
            .filter(|r| matches!(r, Err(e) if e.code == ErrorCode::Unavailable))
            .count();
        assert!(busy >= 5, "{busy} of 8 refused");
    }
}
