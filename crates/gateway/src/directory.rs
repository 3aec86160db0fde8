//! The company directory: accounts (with status and the external flag), departments, and
//! built-in passwords, kept as records of the [`MetaStore`].
//!
//! The directory is optional. A user known only from a token (an external identity
//! provider, `chatd token`) and never registered here is an active internal user; once an
//! administrator registers or deactivates them, the record decides.

use crate::error::ApiError;
use protocol::{ErrorCode, UserId};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::sync::Arc;
use store::MetaStore;

/// Namespace of account records, keyed by user id.
pub const NS_USER: &str = "user";
/// Namespace of password hashes, keyed by user id (apart, so no API answer can leak one).
pub const NS_CREDENTIAL: &str = "credential";
/// Namespace of departments, keyed by department id.
pub const NS_DEPT: &str = "dept";

/// Whether an account may sign in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// May sign in and use the server.
    #[default]
    Active,
    /// Switched off: every token is refused and every session closed.
    Deactivated,
}

/// A directory account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Account {
    /// The user id (the token's `sub`).
    pub id: UserId,
    /// Display name.
    pub name: String,
    /// Department id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub department: Option<String>,
    /// Job title.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// Active or deactivated.
    #[serde(default)]
    pub status: Status,
    /// Someone outside the company (may only join external groups).
    #[serde(default)]
    pub external: bool,
    /// Tokens issued before this time (seconds since the epoch) are refused.
    #[serde(default)]
    pub tokens_valid_after: u64,
    /// Creation time, ms since the epoch.
    pub created_at: u64,
    /// Last change, ms since the epoch.
    pub updated_at: u64,
}

impl Account {
    /// Whether the account is active.
    pub fn is_active(&self) -> bool {
        self.status == Status::Active
    }
}

/// A department; departments form a tree through `parent`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Department {
    /// Its id (`[A-Za-z0-9_.@-]`, 1..=64).
    pub id: String,
    /// Display name.
    pub name: String,
    /// The parent department, none for a top-level one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
}

/// The password rules of built-in sign-in (`auth.password_*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswordPolicy {
    /// Fewest characters.
    pub min_len: usize,
    /// Whether letters and digits are both required.
    pub letters_and_digits: bool,
}

impl PasswordPolicy {
    /// Checks a password; the error names the policy.
    pub fn check(&self, password: &str) -> Result<(), ApiError> {
        let long_enough = password.chars().count() >= self.min_len;
        let mixed = !self.letters_and_digits
            || (password.chars().any(char::is_alphabetic)
                && password.chars().any(|c| c.is_ascii_digit()));
        if long_enough && mixed && password.len() <= 1024 {
            return Ok(());
        }
        let mut rule = format!("at least {} characters", self.min_len);
        if self.letters_and_digits {
            rule.push_str(" with both letters and digits");
        }
        Err(ApiError::bad_request(format!(
            "password: too weak; the password policy requires {rule} (and at most 1024 bytes)"
        )))
    }
}

/// Encodes a record.
pub fn to_json<T: Serialize>(v: &T) -> Result<Vec<u8>, ApiError> {
    serde_json::to_vec(v).map_err(|e| ApiError::new(ErrorCode::Internal, format!("encode: {e}")))
}

/// Decodes a record.
pub fn from_json<T: DeserializeOwned>(b: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(b)
        .map_err(|e| ApiError::new(ErrorCode::Internal, format!("decode: {e}")))
}

/// Reads one JSON record.
pub async fn get_json<T: DeserializeOwned>(
    meta: &Arc<dyn MetaStore>,
    ns: &str,
    key: &str,
) -> Result<Option<T>, ApiError> {
    match meta.get(ns, key).await? {
        Some(b) => Ok(Some(from_json(&b)?)),
        None => Ok(None),
    }
}

/// Every record of a namespace (paged internally), decoded.
pub async fn scan_all<T: DeserializeOwned>(
    meta: &Arc<dyn MetaStore>,
    ns: &str,
    prefix: &str,
) -> Result<Vec<(String, T)>, ApiError> {
    let mut out = Vec::new();
    let mut after = String::new();
    loop {
        let page = meta.scan(ns, prefix, &after, 1000).await?;
        let done = page.len() < 1000;
        for (k, v) in page {
            after.clone_from(&k);
            out.push((k, from_json(&v)?));
        }
        if done {
            return Ok(out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_policy_wants_eight_with_letters_and_digits() {
        let p = PasswordPolicy {
            min_len: 8,
            letters_and_digits: true,
        };
        assert!(p.check("abcd1234").is_ok());
        assert!(p.check("密码密码密码12").is_ok());
        for weak in ["abc123", "abcdefgh", "12345678", ""] {
            let e = p.check(weak).unwrap_err();
            assert_eq!(e.code, ErrorCode::BadRequest);
            assert!(e.message.contains("at least 8 characters"), "{}", e.message);
        }
    }
}
