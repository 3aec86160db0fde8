//! Tokens: HS256 JWTs whose `sub` is the user id.
//!
//! The signing secret comes from configuration or the environment; when neither sets it, the
//! node keeps a random one in `<data_dir>/jwt.secret` (created with mode 0600 on first start),
//! so `cargo run` works with nothing configured and no secret ever lives in the repository.

use crate::config::{AuthConfig, ServerConfig};
use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use protocol::UserId;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The claims the server reads and writes.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    /// The user id.
    pub sub: String,
    /// Expiry, seconds since the epoch.
    pub exp: u64,
    /// Issue time, seconds since the epoch.
    #[serde(default)]
    pub iat: u64,
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No token in the header or query.
    #[error("missing token: send Authorization: Bearer <jwt> or ?token=<jwt>")]
    Missing,
    /// The token's `exp` has passed.
    #[error("token expired")]
    Expired,
    /// Bad signature, bad shape, or an invalid user id.
    #[error("invalid token: {0}")]
    Invalid(String),
}

/// Checks and mints tokens with one secret.
#[derive(Clone)]
pub struct Auth {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    ttl_secs: u64,
}

/// Seconds since the epoch.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Auth {
    /// Builds from a secret.
    pub fn new(secret: &[u8], cfg: &AuthConfig) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = cfg.leeway_secs;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            ttl_secs: cfg.token_ttl_secs,
        }
    }

    /// Builds from configuration, reading or creating the secret file when no secret is set.
    pub fn from_config(auth: &AuthConfig, server: &ServerConfig) -> std::io::Result<Self> {
        let secret = match &auth.jwt_secret {
            Some(s) if !s.is_empty() => s.as_bytes().to_vec(),
            _ => load_or_create_secret(&server.data_dir)?,
        };
        Ok(Self::new(&secret, auth))
    }

    /// Mints a token for `user`, valid for `ttl_secs` (or the configured lifetime).
    pub fn mint(&self, user: &UserId, ttl_secs: Option<u64>) -> Result<String, AuthError> {
        let now = now_secs();
        let claims = Claims {
            sub: user.to_string(),
            exp: now + ttl_secs.unwrap_or(self.ttl_secs),
            iat: now,
        };
        encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|e| AuthError::Invalid(e.to_string()))
    }

    /// Mints a token for a sign-in whose account revoked every token issued before
    /// `not_before` (seconds): the token's `iat` is at least that. Returns it with its expiry.
    pub fn mint_not_before(
        &self,
        user: &UserId,
        not_before: u64,
    ) -> Result<(String, u64), AuthError> {
        let iat = now_secs().max(not_before);
        let claims = Claims {
            sub: user.to_string(),
            exp: iat + self.ttl_secs,
            iat,
        };
        let token = encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|e| AuthError::Invalid(e.to_string()))?;
        Ok((token, claims.exp))
    }

    /// Verifies a token and returns its claims.
    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        let data =
            decode::<Claims>(token, &self.decoding, &self.validation).map_err(|e| {
                match e.kind() {
                    jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::Expired,
                    _ => AuthError::Invalid(e.to_string()),
                }
            })?;
        if !UserId::new(data.claims.sub.clone()).is_valid() {
            return Err(AuthError::Invalid("sub is not a valid user id".into()));
        }
        Ok(data.claims)
    }
}

fn load_or_create_secret(dir: &Path) -> std::io::Result<Vec<u8>> {
    let path = dir.join("jwt.secret");
    match std::fs::read_to_string(&path) {
        Ok(s) if !s.trim().is_empty() => return Ok(s.trim().as_bytes().to_vec()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    std::fs::create_dir_all(dir)?;
    let secret = hex::encode(rand::random::<[u8; 32]>());
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    match opts.open(&path) {
        Ok(mut f) => {
            use std::io::Write;
            f.write_all(secret.as_bytes())?;
            f.sync_all()?;
            tracing::info!(path = %path.display(), "generated a new token signing secret");
            Ok(secret.into_bytes())
        }
        // Another process created it first: use theirs.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            Ok(std::fs::read_to_string(&path)?.trim().as_bytes().to_vec())
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mint_then_verify() {
        let a = Auth::new(b"secret", &AuthConfig::default());
        let t = a.mint(&UserId::from("alice"), None).unwrap();
        assert_eq!(a.verify(&t).unwrap().sub, "alice");
        let other = Auth::new(b"other", &AuthConfig::default());
        assert!(matches!(other.verify(&t), Err(AuthError::Invalid(_))));
        assert!(matches!(a.verify("garbage"), Err(AuthError::Invalid(_))));
    }

    #[test]
    fn expired_tokens_are_refused() {
        let cfg = AuthConfig {
            leeway_secs: 0,
            ..AuthConfig::default()
        };
        let a = Auth::new(b"secret", &cfg);
        let claims = Claims {
            sub: "bob".into(),
            exp: now_secs() - 10,
            iat: 0,
        };
        let t = encode(&Header::new(Algorithm::HS256), &claims, &a.encoding).unwrap();
        assert_eq!(a.verify(&t), Err(AuthError::Expired));
    }

    #[test]
    fn secret_file_is_created_once() {
        let dir = tempfile::tempdir().unwrap();
        let s1 = load_or_create_secret(dir.path()).unwrap();
        let s2 = load_or_create_secret(dir.path()).unwrap();
        assert_eq!(s1, s2);
        assert_eq!(s1.len(), 64);
    }
}
