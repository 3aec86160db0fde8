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
use store::{MetaOp, MetaStore};

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

/// An account as stored in [`NS_USER`]: the account and which password record is its.
///
/// The binding makes account creation crash-safe without undo. A creation with a password
/// writes the hash first, under a key of its own ([`credential_key`] with a fresh random
/// suffix), and then inserts the account naming that key (`insert_new`, the commit point). A
/// creation that fails or crashes in between leaves only a password record that no account
/// names; one that loses the race for the id to another creation leaves the winner with its
/// own password record (or none), never the loser's. Readers that only need the account
/// decode [`Account`] (the extra field is ignored); code that rewrites an account record
/// must go through this type, or the binding is dropped (which disables the password, never
/// attaches another one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountRecord {
    /// The account.
    #[serde(flatten)]
    pub account: Account,
    /// The suffix of this account's password record key; none: the record at the user id
    /// (accounts whose password an administrator set later, and accounts from before).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

impl AccountRecord {
    /// The key of this account's password record in [`NS_CREDENTIAL`].
    pub fn credential_key(&self) -> String {
        credential_key(&self.account.id, self.credential.as_deref())
    }
}

/// The key of a password record: the user id, or `user/suffix` for one written with a new
/// account (`/` is not allowed in user ids, so keys of two users never meet).
pub fn credential_key(user: &UserId, suffix: Option<&str>) -> String {
    match suffix {
        Some(s) => format!("{user}/{s}"),
        None => user.to_string(),
    }
}

/// Creates an account, with its password hash when there is one; `false` when the id is
/// taken. Crash-safe without undo (see [`AccountRecord`]): the hash goes under a key only
/// this creation uses, and the account's `insert_new` naming that key is the commit point.
/// When the id turns out taken, the unreachable hash record is deleted (tidying only: no
/// account names it, so leaving it would be harmless too).
pub async fn create_account(
    meta: &Arc<dyn MetaStore>,
    account: Account,
    hash: Option<String>,
) -> Result<bool, ApiError> {
    let mut record = AccountRecord {
        account,
        credential: None,
    };
    if let Some(h) = hash {
        record.credential = Some(uuid::Uuid::new_v4().simple().to_string());
        meta.apply(vec![MetaOp::put(
            NS_CREDENTIAL,
            &record.credential_key(),
            to_json(&h)?,
        )])
        .await?;
    }
    #[cfg(feature = "test-hooks")]
    if crate::faults::fail_once("account.create") {
        return Err(ApiError::new(
            ErrorCode::Unavailable,
            "test hook: account.create failed",
        ));
    }
    let id = record.account.id.clone();
    if meta
        .insert_new(NS_USER, id.as_str(), to_json(&record)?)
        .await?
    {
        return Ok(true);
    }
    if record.credential.is_some() {
        if let Err(e) = meta
            .apply(vec![MetaOp::delete(
                NS_CREDENTIAL,
                &record.credential_key(),
            )])
            .await
        {
            tracing::debug!(error = %e, user = %id, "an unused password record stays");
        }
    }
    Ok(false)
}

/// The stored password hash of a directory account, with its record; `None` without an
/// account or without a password.
pub async fn password_of(
    meta: &Arc<dyn MetaStore>,
    user: &UserId,
) -> Result<Option<(AccountRecord, String)>, ApiError> {
    let Some(record) = get_json::<AccountRecord>(meta, NS_USER, user.as_str()).await? else {
        return Ok(None);
    };
    let hash: Option<String> = get_json(meta, NS_CREDENTIAL, &record.credential_key()).await?;
    Ok(hash.map(|h| (record, h)))
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
    let mut pages = store::Pages::new(&**meta, ns, prefix, 1000);
    while let Some(page) = pages.next().await? {
        for (k, v) in page {
            let record = from_json(&v)?;
            out.push((k, record));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn account(id: &str) -> Account {
        Account {
            id: UserId::new(id),
            name: id.to_uppercase(),
            department: None,
            title: None,
            status: Status::Active,
            external: false,
            tokens_valid_after: 0,
            created_at: 1,
            updated_at: 1,
        }
    }

    #[test]
    fn the_password_binding_is_stored_but_not_part_of_the_account() {
        let record = AccountRecord {
            account: account("ann"),
            credential: Some("c1".into()),
        };
        assert_eq!(record.credential_key(), "ann/c1");
        let bytes = to_json(&record).unwrap();
        // Readers that decode the account ignore the binding; answers never carry it.
        let plain: Account = from_json(&bytes).unwrap();
        assert_eq!(plain, record.account);
        assert!(!String::from_utf8(to_json(&plain).unwrap())
            .unwrap()
            .contains("credential"));
        assert_eq!(from_json::<AccountRecord>(&bytes).unwrap(), record);
        // A record from before (or rewritten as a bare account) uses the key at the user id.
        let old: AccountRecord = from_json(&to_json(&account("bob")).unwrap()).unwrap();
        assert_eq!((old.credential_key(), old.credential), ("bob".into(), None));
    }

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
