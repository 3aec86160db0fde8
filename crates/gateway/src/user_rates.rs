//! Per-user budgets that hold across a user's sessions: what one account may make the node
//! (and other members) spend per second, however many connections it opens.
//!
//! The per-session send limit (`limits.send_per_sec`) alone lets one account multiply its
//! rate by its sessions (`server.max_sessions_per_user`), and a message to a large group costs
//! one delivery per member, so three keyed limits sit beside it:
//!
//! - **messages** (`limits.user_send_per_sec`, `limits.user_send_burst`, never below the
//!   per-session `limits.send_per_sec`/`send_burst`): messages one user sends per second from
//!   all their sessions on this node;
//! - **deliveries** (`limits.user_deliveries_per_sec`, `limits.user_deliveries_burst`): the
//!   recipients of those messages per second, so posting to a 5,000-member group costs 5,000
//!   (a message to a group larger than the burst costs the whole burst, so it can still be sent);
//! - **HTTP writes** (`limits.http_writes_per_sec`, `limits.http_writes_burst`): mutating HTTP
//!   requests (anything but `GET`/`HEAD`/`OPTIONS`) per authenticated user: group and directory
//!   changes, announcements, uploads' records;
//! - **HTTP reads** (`limits.http_reads_per_sec`, `limits.http_reads_burst`): every other
//!   authenticated HTTP request (searches, listings, audit and history reads);
//! - **message bytes** (`limits.user_message_bytes_per_day`): bytes of message bodies one user
//!   stores per day, refilled evenly, so one account cannot fill the message store's disk
//!   (see also [`crate::disk`]);
//! - **uploads** (`files.uploads_per_minute`) and **upload bytes** (`files.upload_bytes_per_day`): bytes one user uploads per day, refilled
//!   evenly, counted in KiB.
//!
//! Each refusal is `rate_limited` (HTTP 429, `retry: true`) and changes nothing. The limits are
//! kept per node (a user's sessions on N nodes get N times the budget; sessions per user are
//! capped). Keys are authenticated user ids only, and idle keys are dropped once the table
//! holds more than [`PRUNE_ABOVE`] of them.

use crate::config::{FilesConfig, LimitsConfig};
use crate::error::ApiError;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use protocol::{ErrorCode, UserId};
use std::num::NonZeroU32;

/// Keys a limiter keeps before idle ones are dropped (`retain_recent`).
pub const PRUNE_ABOVE: usize = 100_000;

/// The node's per-user limiters.
pub struct UserRates {
    messages: DefaultKeyedRateLimiter<UserId>,
    deliveries: DefaultKeyedRateLimiter<UserId>,
    deliveries_burst: NonZeroU32,
    http_writes: DefaultKeyedRateLimiter<UserId>,
    http_reads: DefaultKeyedRateLimiter<UserId>,
    upload_kib: DefaultKeyedRateLimiter<UserId>,
    /// `None` when `limits.user_message_bytes_per_day` is 0 (off).
    message_bytes: Option<DefaultKeyedRateLimiter<UserId>>,
    uploads: DefaultKeyedRateLimiter<UserId>,
    uploads_per_minute: u32,
    /// Checks so far, for [`UserRates::maybe_prune`].
    checks: std::sync::atomic::AtomicU64,
}

fn nz(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n.max(1)).unwrap_or(NonZeroU32::MIN)
}

fn keyed(per_sec: u32, burst: u32) -> DefaultKeyedRateLimiter<UserId> {
    RateLimiter::keyed(Quota::per_second(nz(per_sec)).allow_burst(nz(burst)))
}

/// A limiter of `per_day` units a day, refilled evenly, the whole day's worth as its burst.
fn keyed_per_day(per_day: u32) -> DefaultKeyedRateLimiter<UserId> {
    let per_day = per_day.max(1);
    let every = std::time::Duration::from_secs(86_400) / per_day;
    RateLimiter::keyed(
        Quota::with_period(every.max(std::time::Duration::from_nanos(1)))
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
            .allow_burst(nz(per_day)),
    )
}

/// Checks between two looks at the limiters' sizes: counting keys locks every shard of a
/// limiter's map, which a send should not pay each time.
const PRUNE_EVERY: u64 = 4096;

fn prune(limiter: &DefaultKeyedRateLimiter<UserId>) {
    if limiter.len() > PRUNE_ABOVE {
        limiter.retain_recent();
        limiter.shrink_to_fit();
    }
}

impl UserRates {
    /// Limiters from the `[limits]` and `[files]` sections.
    pub fn new(limits: &LimitsConfig, files: &FilesConfig) -> Self {
        let day_kib = u32::try_from(files.upload_bytes_per_day / 1024)
            .unwrap_or(u32::MAX)
            .max(1);
        Self {
            message_bytes: (limits.user_message_bytes_per_day > 0)
                .then(|| keyed_per_day(limits.user_message_bytes_per_day)),
            uploads: RateLimiter::keyed(Quota::per_minute(nz(files.uploads_per_minute))),
            uploads_per_minute: files.uploads_per_minute,
            checks: std::sync::atomic::AtomicU64::new(0),
            upload_kib: keyed_per_day(day_kib),
            // Never below one session's own limit: a single session keeps its full rate.
            messages: keyed(
                limits.user_send_per_sec.max(limits.send_per_sec),
                limits.user_send_burst.max(limits.send_burst),
            ),
            deliveries: keyed(limits.user_deliveries_per_sec, limits.user_deliveries_burst),
            deliveries_burst: nz(limits.user_deliveries_burst),
            http_writes: keyed(limits.http_writes_per_sec, limits.http_writes_burst),
            http_reads: keyed(limits.http_reads_per_sec, limits.http_reads_burst),
        }
    }

    /// Every [`PRUNE_EVERY`] checks, drops idle keys from each limiter that holds more than
    /// [`PRUNE_ABOVE`] of them.
    fn maybe_prune(&self) {
        let n = self
            .checks
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if n % PRUNE_EVERY == PRUNE_EVERY - 1 {
            for limiter in [
                &self.messages,
                &self.deliveries,
                &self.http_writes,
                &self.http_reads,
                &self.upload_kib,
                &self.uploads,
            ] {
                prune(limiter);
            }
            if let Some(limiter) = &self.message_bytes {
                prune(limiter);
            }
        }
    }

    /// Charges one message to `recipients` members to `user`; `rate_limited` when either the
    /// user's message rate or their delivery rate is spent (nothing is charged then for the
    /// delivery budget; a refused message still counts as an attempt against the message rate).
    pub fn check_send(&self, user: &UserId, recipients: usize) -> Result<(), ApiError> {
        self.maybe_prune();
        if self.messages.check_key(user).is_err() {
            return Err(ApiError::new(
                ErrorCode::RateLimited,
                "too many messages from this account across its sessions; slow down and retry",
            ));
        }
        let cost = u32::try_from(recipients)
            .unwrap_or(u32::MAX)
            .min(self.deliveries_burst.get());
        match self.deliveries.check_key_n(user, nz(cost)) {
            Ok(Ok(())) => Ok(()),
            // `cost` never exceeds the burst, so capacity is never insufficient.
            Ok(Err(_)) | Err(_) => Err(ApiError::new(
                ErrorCode::RateLimited,
                "this account's messages reach too many recipients per second; slow down and retry",
            )),
        }
    }

    /// Charges a message body of `bytes` to `user`; `rate_limited` when their day's budget
    /// (`limits.user_message_bytes_per_day`) does not hold it.
    pub fn check_message_bytes(&self, user: &UserId, bytes: usize) -> Result<(), ApiError> {
        let Some(limiter) = &self.message_bytes else {
            return Ok(());
        };
        let n = u32::try_from(bytes.max(1)).unwrap_or(u32::MAX);
        match limiter.check_key_n(user, nz(n)) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) | Err(_) => Err(ApiError::new(
                ErrorCode::RateLimited,
                "this account stored its day's message bytes (limits.user_message_bytes_per_day); \
                 retry later",
            )),
        }
    }

    /// Charges the start of an upload to `user`; `rate_limited` past
    /// `files.uploads_per_minute`.
    pub fn check_upload_start(&self, user: &UserId) -> Result<(), ApiError> {
        self.maybe_prune();
        self.uploads.check_key(user).map_err(|_| {
            ApiError::new(
                ErrorCode::RateLimited,
                format!(
                    "more than {} uploads in a minute (files.uploads_per_minute)",
                    self.uploads_per_minute
                ),
            )
        })
    }

    /// Charges an upload of `bytes` to `user`; `rate_limited` when their day's budget
    /// (`files.upload_bytes_per_day`) does not hold it.
    pub fn check_upload_bytes(&self, user: &UserId, bytes: u64) -> Result<(), ApiError> {
        self.maybe_prune();
        let kib = u32::try_from(bytes.div_ceil(1024)).unwrap_or(u32::MAX);
        match self.upload_kib.check_key_n(user, nz(kib)) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) | Err(_) => Err(ApiError::new(
                ErrorCode::RateLimited,
                "this account uploaded its day's bytes (files.upload_bytes_per_day); retry later",
            )),
        }
    }

    /// Charges one authenticated HTTP read (`GET`, `HEAD`) to `user`; `rate_limited` when
    /// their budget is spent.
    pub fn check_http_read(&self, user: &UserId) -> Result<(), ApiError> {
        self.maybe_prune();
        self.http_reads.check_key(user).map_err(|_| {
            ApiError::new(
                ErrorCode::RateLimited,
                "too many requests from this account; slow down and retry",
            )
        })
    }

    /// Charges one mutating HTTP request to `user`; `rate_limited` when their budget is spent.
    pub fn check_http_write(&self, user: &UserId) -> Result<(), ApiError> {
        self.maybe_prune();
        self.http_writes.check_key(user).map_err(|_| {
            ApiError::new(
                ErrorCode::RateLimited,
                "too many changes from this account; slow down and retry",
            )
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn rates(send: (u32, u32), deliveries: (u32, u32), http: (u32, u32)) -> UserRates {
        let limits = LimitsConfig {
            send_per_sec: 1,
            send_burst: 1,
            user_send_per_sec: send.0,
            user_send_burst: send.1,
            user_deliveries_per_sec: deliveries.0,
            user_deliveries_burst: deliveries.1,
            http_writes_per_sec: http.0,
            http_writes_burst: http.1,
            ..LimitsConfig::default()
        };
        UserRates::new(&limits, &FilesConfig::default())
    }

    #[test]
    fn messages_are_counted_per_user_not_per_caller() {
        let r = rates((1, 3), (1000, 1000), (1, 1));
        let (a, b) = (UserId::new("a"), UserId::new("b"));
        for _ in 0..3 {
            r.check_send(&a, 2).unwrap();
        }
        assert_eq!(
            r.check_send(&a, 2).unwrap_err().code,
            ErrorCode::RateLimited
        );
        // Another user is not affected.
        r.check_send(&b, 2).unwrap();
    }

    #[test]
    fn deliveries_weigh_by_recipients_and_a_huge_group_costs_the_burst() {
        let r = rates((1000, 1000), (10, 100), (1, 1));
        let a = UserId::new("a");
        r.check_send(&a, 60).unwrap();
        assert!(r.check_send(&a, 60).is_err(), "60 + 60 > 100");
        let b = UserId::new("b");
        // Larger than the burst: allowed once (costs the whole burst), then refused.
        r.check_send(&b, 1_000_000).unwrap();
        assert!(r.check_send(&b, 1).is_err());
    }

    #[test]
    fn uploads_are_held_to_the_day_s_bytes() {
        let files = FilesConfig {
            upload_bytes_per_day: 100 * 1024,
            ..FilesConfig::default()
        };
        let r = UserRates::new(&LimitsConfig::default(), &files);
        let (a, b) = (UserId::new("a"), UserId::new("b"));
        r.check_upload_bytes(&a, 60 * 1024).unwrap();
        assert!(r.check_upload_bytes(&a, 60 * 1024).is_err());
        r.check_upload_bytes(&a, 30 * 1024).unwrap();
        r.check_upload_bytes(&b, 100 * 1024).unwrap();
        assert!(r.check_upload_bytes(&b, 1).is_err());
    }

    #[test]
    fn message_bytes_are_held_to_the_day_s_budget_and_zero_is_off() {
        let limits = LimitsConfig {
            user_message_bytes_per_day: 10_000,
            ..LimitsConfig::default()
        };
        let r = UserRates::new(&limits, &FilesConfig::default());
        let (a, b) = (UserId::new("a"), UserId::new("b"));
        r.check_message_bytes(&a, 6_000).unwrap();
        assert!(r.check_message_bytes(&a, 6_000).is_err());
        r.check_message_bytes(&a, 3_000).unwrap();
        r.check_message_bytes(&b, 10_000).unwrap();
        // An empty body still costs a byte.
        assert!(r.check_message_bytes(&b, 0).is_err());
        let off = UserRates::new(
            &LimitsConfig {
                user_message_bytes_per_day: 0,
                ..LimitsConfig::default()
            },
            &FilesConfig::default(),
        );
        for _ in 0..10 {
            off.check_message_bytes(&a, usize::MAX).unwrap();
        }
    }

    #[test]
    fn http_writes_have_their_own_budget() {
        let r = rates((1, 1), (1, 1), (1, 2));
        let a = UserId::new("a");
        r.check_http_write(&a).unwrap();
        r.check_http_write(&a).unwrap();
        assert!(r.check_http_write(&a).is_err());
        r.check_send(&a, 1).unwrap();
    }
}
