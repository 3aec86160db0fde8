//! Tokens: JWTs whose `sub` is the user id.
//!
//! The server mints and checks HS256 tokens with one secret. The secret comes from
//! configuration or the environment; when neither sets it, the node keeps a random one in
//! `<data_dir>/jwt.secret` (created with mode 0600 on first start), so `cargo run` works with
//! nothing configured and no secret ever lives in the repository. A company's identity
//! provider may instead sign with its private key: with `auth.jwt_public_key_file` set,
//! tokens whose header names an asymmetric algorithm are checked with that public key.
//!
//! Every token the server mints names its session with a random `sid` claim, so one token
//! can be revoked (see [`crate::revocation`]); no token may live longer than
//! `auth.max_token_lifetime_secs`, so a revocation record can be pruned after that time.
//!
//! The signatures themselves run on *ring* ([`crate::jwt_crypto`]).

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
    /// The token's id (tokens this server mints; an identity provider's may carry one).
    #[serde(default)]
    pub sid: Option<String>,
}

impl Claims {
    /// The id revocations name this token by: its `sid`, else a digest of `token` (the
    /// token these claims came from).
    pub fn token_id(&self, token: &str) -> String {
        crate::revocation::token_id(self.sid.as_deref(), token)
    }
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

/// Checks and mints tokens: HS256 with the secret, and optionally the identity provider's
/// public-key tokens.
#[derive(Clone)]
pub struct Auth {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    external: Option<std::sync::Arc<(DecodingKey, Validation)>>,
    audience: Option<String>,
    ttl_secs: u64,
    max_lifetime_secs: u64,
}

/// What the server writes into the tokens it mints.
#[derive(Serialize)]
struct Minted<'a> {
    sub: &'a str,
    exp: u64,
    iat: u64,
    sid: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    aud: Option<&'a str>,
}

/// Seconds since the epoch (see [`crate::clock`]).
pub use crate::clock::now_secs;

fn validation(algorithms: &[Algorithm], cfg: &AuthConfig, issuer: Option<&str>) -> Validation {
    let mut v = Validation::new(algorithms[0]);
    v.algorithms = algorithms.to_vec();
    v.leeway = cfg.leeway_secs;
    let mut required = vec!["exp", "sub"];
    match &cfg.jwt_audience {
        Some(aud) => {
            v.set_audience(&[aud]);
            required.push("aud");
        }
        None => v.validate_aud = false,
    }
    if let Some(iss) = issuer {
        v.set_issuer(&[iss]);
        required.push("iss");
    }
    v.set_required_spec_claims(&required);
    v
}

/// Reads an identity provider's PEM public key and the algorithms it verifies.
pub fn public_key(pem: &[u8]) -> Result<(DecodingKey, Vec<Algorithm>), String> {
    use Algorithm::*;
    if let Ok(k) = DecodingKey::from_ed_pem(pem) {
        return Ok((k, vec![EdDSA]));
    }
    if let Ok(k) = DecodingKey::from_ec_pem(pem) {
        return Ok((k, vec![ES256, ES384]));
    }
    if let Ok(k) = DecodingKey::from_rsa_pem(pem) {
        return Ok((k, vec![RS256, RS384, RS512, PS256, PS384, PS512]));
    }
    Err("not a PEM public key of RSA, EC (P-256, P-384) or Ed25519".into())
}

impl Auth {
    /// Builds from a secret (HS256 only).
    pub fn new(secret: &[u8], cfg: &AuthConfig) -> Self {
        crate::jwt_crypto::install();
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation: validation(&[Algorithm::HS256], cfg, None),
            external: None,
            audience: cfg.jwt_audience.clone(),
            ttl_secs: cfg.token_ttl_secs,
            max_lifetime_secs: cfg.max_token_lifetime_secs,
        }
    }

    /// Also accepts tokens signed with the private half of `pem` (the identity provider's
    /// public key).
    pub fn with_public_key(mut self, pem: &[u8], cfg: &AuthConfig) -> Result<Self, String> {
        let (key, algorithms) = public_key(pem)?;
        let v = validation(&algorithms, cfg, cfg.jwt_issuer.as_deref());
        self.external = Some(std::sync::Arc::new((key, v)));
        Ok(self)
    }

    /// Builds from configuration, reading or creating the secret file when no secret is set,
    /// and reading the identity provider's public key when one is configured.
    pub fn from_config(auth: &AuthConfig, server: &ServerConfig) -> std::io::Result<Self> {
        let secret = match &auth.jwt_secret {
            Some(s) if !s.is_empty() => s.as_bytes().to_vec(),
            _ => load_or_create_secret(&server.data_dir)?,
        };
        let this = Self::new(&secret, auth);
        let Some(path) = &auth.jwt_public_key_file else {
            return Ok(this);
        };
        std::fs::read(path)
            .map_err(|e| e.to_string())
            .and_then(|pem| this.with_public_key(&pem, auth))
            .map_err(|e| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("auth.jwt_public_key_file {}: {e}", path.display()),
                )
            })
    }

    fn sign(&self, user: &UserId, iat: u64, exp: u64) -> Result<String, AuthError> {
        let sid = uuid::Uuid::new_v4().simple().to_string();
        let claims = Minted {
            sub: user.as_str(),
            exp,
            iat,
            sid: &sid,
            aud: self.audience.as_deref(),
        };
        encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|e| AuthError::Invalid(e.to_string()))
    }

    /// Mints a token for `user`, valid for `ttl_secs` (or the configured lifetime), with a
    /// fresh `sid`. A lifetime over `auth.max_token_lifetime_secs` is refused.
    pub fn mint(&self, user: &UserId, ttl_secs: Option<u64>) -> Result<String, AuthError> {
        let now = now_secs();
        let ttl = ttl_secs.unwrap_or(self.ttl_secs);
        if ttl > self.max_lifetime_secs {
            return Err(AuthError::Invalid(format!(
                "a lifetime of {ttl} s is over auth.max_token_lifetime_secs ({} s)",
                self.max_lifetime_secs
            )));
        }
        self.sign(user, now, now + ttl)
    }

    /// The longest a token may live (`auth.max_token_lifetime_secs`): every token issued
    /// before a time has expired this long (plus the leeway) after it.
    pub fn max_lifetime_secs(&self) -> u64 {
        self.max_lifetime_secs
            .saturating_add(self.validation.leeway)
    }

    /// Mints a token for a sign-in whose account revoked every token issued before
    /// `not_before` (seconds): the token's `iat` is at least that. Returns it with its expiry.
    pub fn mint_not_before(
        &self,
        user: &UserId,
        not_before: u64,
    ) -> Result<(String, u64), AuthError> {
        let iat = now_secs().max(not_before);
        let exp = iat + self.ttl_secs;
        Ok((self.sign(user, iat, exp)?, exp))
    }

    /// Verifies a token (HS256 with the secret, or an asymmetric algorithm with the identity
    /// provider's key) and returns its claims.
    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| AuthError::Invalid(e.to_string()))?;
        let (key, validation) = match (&header.alg, &self.external) {
            (Algorithm::HS256, _) => (&self.decoding, &self.validation),
            (_, Some(ext)) => (&ext.0, &ext.1),
            (alg, None) => {
                return Err(AuthError::Invalid(format!(
                    "{alg:?} tokens are not accepted (no auth.jwt_public_key_file)"
                )))
            }
        };
        let data = decode::<Claims>(token, key, validation).map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::Expired,
            _ => AuthError::Invalid(e.to_string()),
        })?;
        if !UserId::new(data.claims.sub.clone()).is_valid() {
            return Err(AuthError::Invalid("sub is not a valid user id".into()));
        }
        // A token that would outlive every revocation record is refused: its revocation
        // could be pruned while it still works.
        if data.claims.exp > now_secs().saturating_add(self.max_lifetime_secs()) {
            return Err(AuthError::Invalid(format!(
                "the token lives longer than auth.max_token_lifetime_secs ({} s)",
                self.max_lifetime_secs
            )));
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
    fn minted_tokens_name_their_session_and_live_a_bounded_time() {
        let a = Auth::new(b"secret", &AuthConfig::default());
        let t1 = a
            .verify(&a.mint(&UserId::from("a"), None).unwrap())
            .unwrap();
        let t2 = a
            .verify(&a.mint(&UserId::from("a"), None).unwrap())
            .unwrap();
        assert_eq!(t1.sid.as_deref().map(str::len), Some(32));
        assert_ne!(t1.sid, t2.sid);
        let max = AuthConfig::default().max_token_lifetime_secs;
        assert!(a.mint(&UserId::from("a"), Some(max + 1)).is_err());
        let long = Claims {
            sub: "a".into(),
            exp: now_secs() + max + 3600,
            iat: now_secs(),
            sid: None,
        };
        let t = encode(&Header::new(Algorithm::HS256), &long, &a.encoding).unwrap();
        let e = a.verify(&t).unwrap_err();
        assert!(e.to_string().contains("max_token_lifetime_secs"), "{e}");
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
            sid: None,
        };
        let t = encode(&Header::new(Algorithm::HS256), &claims, &a.encoding).unwrap();
        assert_eq!(a.verify(&t), Err(AuthError::Expired));
    }

    fn idp_token(key_file: &str, alg: Algorithm, claims: &serde_json::Value) -> String {
        let pem = std::fs::read(format!(
            "{}/testdata/{key_file}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap();
        let key = match alg {
            Algorithm::EdDSA => EncodingKey::from_ed_pem(&pem),
            Algorithm::ES256 => EncodingKey::from_ec_pem(&pem),
            _ => EncodingKey::from_rsa_pem(&pem),
        }
        .unwrap();
        encode(&Header::new(alg), claims, &key).unwrap()
    }

    fn idp_auth(pub_file: &str, cfg: &AuthConfig) -> Auth {
        let pem = std::fs::read(format!(
            "{}/testdata/{pub_file}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap();
        Auth::new(b"secret", cfg)
            .with_public_key(&pem, cfg)
            .unwrap()
    }

    #[test]
    fn identity_provider_tokens_are_checked_with_its_public_key() {
        let cfg = AuthConfig::default();
        let claims = serde_json::json!({"sub": "carol", "exp": now_secs() + 60, "iat": now_secs()});
        for (key, public, alg) in [
            ("idp-ed25519.key", "idp-ed25519.pub", Algorithm::EdDSA),
            ("idp-p256.key", "idp-p256.pub", Algorithm::ES256),
            ("idp-rsa.key", "idp-rsa.pub", Algorithm::RS256),
            ("idp-rsa.key", "idp-rsa.pub", Algorithm::PS384),
        ] {
            let a = idp_auth(public, &cfg);
            let t = idp_token(key, alg, &claims);
            assert_eq!(a.verify(&t).unwrap().sub, "carol", "{alg:?}");
            // The server's own HS256 tokens keep working beside them.
            let own = a.mint(&UserId::from("dan"), None).unwrap();
            assert_eq!(a.verify(&own).unwrap().sub, "dan");
            // Without the key configured, such tokens are refused, saying why.
            let plain = Auth::new(b"secret", &cfg);
            let e = plain.verify(&t).unwrap_err();
            assert!(e.to_string().contains("jwt_public_key_file"), "{e}");
        }
        // A stranger's key, and a key of the wrong family for the header, are refused.
        let a = idp_auth("idp-ed25519.pub", &cfg);
        let forged = idp_token("other-ed25519.key", Algorithm::EdDSA, &claims);
        assert!(matches!(a.verify(&forged), Err(AuthError::Invalid(_))));
        let wrong = idp_token("idp-p256.key", Algorithm::ES256, &claims);
        assert!(matches!(a.verify(&wrong), Err(AuthError::Invalid(_))));
        // Expired is reported as such.
        let old = serde_json::json!({"sub": "carol", "exp": now_secs() - 600});
        let t = idp_token("idp-ed25519.key", Algorithm::EdDSA, &old);
        assert_eq!(a.verify(&t), Err(AuthError::Expired));
        assert!(
            public_key(b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n").is_err()
        );
    }

    #[test]
    fn issuer_and_audience_are_enforced_when_configured() {
        let cfg = AuthConfig {
            jwt_issuer: Some("https://idp.example".into()),
            jwt_audience: Some("chatd".into()),
            ..AuthConfig::default()
        };
        let a = idp_auth("idp-ed25519.pub", &cfg);
        let exp = now_secs() + 60;
        let good = serde_json::json!({"sub": "carol", "exp": exp, "iss": "https://idp.example", "aud": "chatd"});
        let t = idp_token("idp-ed25519.key", Algorithm::EdDSA, &good);
        assert_eq!(a.verify(&t).unwrap().sub, "carol");
        for bad in [
            serde_json::json!({"sub": "carol", "exp": exp, "iss": "https://evil.example", "aud": "chatd"}),
            serde_json::json!({"sub": "carol", "exp": exp, "iss": "https://idp.example", "aud": "other"}),
            serde_json::json!({"sub": "carol", "exp": exp, "aud": "chatd"}),
        ] {
            let t = idp_token("idp-ed25519.key", Algorithm::EdDSA, &bad);
            assert!(matches!(a.verify(&t), Err(AuthError::Invalid(_))), "{bad}");
        }
        // Minted tokens carry the audience, so they pass the same check.
        let own = a.mint(&UserId::from("dan"), None).unwrap();
        assert_eq!(a.verify(&own).unwrap().sub, "dan");
    }

    #[test]
    fn an_unreadable_public_key_stops_the_node_naming_the_setting() {
        let dir = tempfile::tempdir().unwrap();
        let not_a_key = dir.path().join("idp.pub");
        std::fs::write(&not_a_key, "hello").unwrap();
        for path in [dir.path().join("missing.pub"), not_a_key] {
            let cfg = AuthConfig {
                jwt_secret: Some("s".into()),
                jwt_public_key_file: Some(path.clone()),
                ..AuthConfig::default()
            };
            let e = Auth::from_config(&cfg, &ServerConfig::default())
                .err()
                .expect("refused");
            let msg = e.to_string();
            assert!(msg.contains("auth.jwt_public_key_file"), "{msg}");
            assert!(msg.contains(&path.display().to_string()), "{msg}");
        }
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
