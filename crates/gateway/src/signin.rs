//! What keeps sign-in from being turned into a memory or CPU bomb: the password hashing
//! workers ([`HashPool`]), a per-client-address limit on sign-in attempts (beside the
//! per-user-id one), and the client address itself ([`SignIn::client`]), taken from the TCP
//! peer or, behind a trusted reverse proxy, from its `X-Forwarded-For`.

use crate::config::AuthConfig;
use crate::error::ApiError;
use crate::hashing::HashPool;
use axum::http::HeaderMap;
use protocol::ErrorCode;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

/// Sign-in budgets of the node.
pub struct SignIn {
    /// Password hashing workers (`auth.hash_*`).
    pub hashing: HashPool,
    /// Sign-in attempts per client address (`auth.login_attempts_per_minute_per_address`).
    per_address: governor::DefaultKeyedRateLimiter<IpAddr>,
    /// `auth.trusted_proxies`, parsed.
    trusted: Vec<IpAddr>,
}

impl SignIn {
    /// Starts the hashing workers and parses the trusted proxies; an address that does not
    /// parse is an error naming the setting.
    pub fn new(cfg: &AuthConfig) -> anyhow::Result<Self> {
        let trusted = cfg
            .trusted_proxies
            .iter()
            .map(|p| {
                p.trim().parse::<IpAddr>().map_err(|e| {
                    anyhow::anyhow!("auth.trusted_proxies: {p:?} is not an IP address: {e}")
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let per_minute = NonZeroU32::new(cfg.login_attempts_per_minute_per_address.max(1))
            .unwrap_or(NonZeroU32::MIN);
        Ok(Self {
            hashing: HashPool::new(
                cfg.hash_concurrency,
                cfg.hash_queue,
                Duration::from_millis(cfg.hash_wait_ms),
            )?,
            per_address: governor::RateLimiter::keyed(governor::Quota::per_minute(per_minute)),
            trusted,
        })
    }

    /// Counts a sign-in attempt from `addr`; `rate_limited` over the limit.
    pub fn check_address(&self, addr: Option<IpAddr>) -> Result<(), ApiError> {
        let Some(addr) = addr else { return Ok(()) };
        if self.per_address.check_key(&addr).is_err() {
            return Err(ApiError::new(
                ErrorCode::RateLimited,
                "too many sign-in attempts from this address; wait a minute",
            ));
        }
        // The limiter keeps one entry per address seen; drop the idle ones now and then.
        if self.per_address.len() > 100_000 {
            self.per_address.retain_recent();
        }
        Ok(())
    }

    /// The client's address: the peer, or behind a trusted proxy the right-most
    /// `X-Forwarded-For` entry that is not itself a trusted proxy.
    pub fn client(&self, peer: Option<IpAddr>, headers: &HeaderMap) -> Option<IpAddr> {
        let peer = peer?;
        if !self.trusted.contains(&peer) {
            return Some(peer);
        }
        let forwarded: Vec<IpAddr> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|s| s.trim().parse::<IpAddr>().ok())
            .collect();
        forwarded
            .into_iter()
            .rev()
            .find(|a| !self.trusted.contains(a))
            .or(Some(peer))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signin(trusted: &[&str]) -> SignIn {
        SignIn::new(&AuthConfig {
            trusted_proxies: trusted.iter().map(|s| s.to_string()).collect(),
            login_attempts_per_minute_per_address: 3,
            hash_concurrency: 1,
            ..AuthConfig::default()
        })
        .unwrap()
    }

    #[test]
    fn forwarded_for_counts_only_behind_a_trusted_proxy() {
        let s = signin(&["10.0.0.5", "10.0.0.6"]);
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            "1.2.3.4, 5.6.7.8, 10.0.0.6".parse().unwrap(),
        );
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        // A stranger cannot choose its address.
        assert_eq!(s.client(ip("9.9.9.9"), &h), ip("9.9.9.9"));
        // Through the proxies: the right-most untrusted entry (earlier ones are the client's
        // own claims).
        assert_eq!(s.client(ip("10.0.0.5"), &h), ip("5.6.7.8"));
        assert_eq!(s.client(ip("10.0.0.5"), &HeaderMap::new()), ip("10.0.0.5"));
        assert!(SignIn::new(&AuthConfig {
            trusted_proxies: vec!["nonsense".into()],
            ..AuthConfig::default()
        })
        .is_err());
    }

    #[test]
    fn addresses_are_limited_one_by_one() {
        let s = signin(&[]);
        let a = Some("1.1.1.1".parse().unwrap());
        let b = Some("2.2.2.2".parse().unwrap());
        for _ in 0..3 {
            assert!(s.check_address(a).is_ok());
        }
        let e = s.check_address(a).unwrap_err();
        assert_eq!(e.code, ErrorCode::RateLimited);
        assert!(s.check_address(b).is_ok());
    }
}
