//! The node's shared state, behind one cheap handle that every task clones.

use crate::auth::Auth;
use crate::config::Config;
use crate::error::ApiError;
use crate::hub::Hub;
use crate::membership::{GroupView, Membership};
use dashmap::DashSet;
use protocol::{GroupId, UserId};
use router::Router;
use std::sync::Arc;
use store::Store;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// Everything a request handler needs.
#[derive(Clone)]
pub struct AppState(pub Arc<Inner>);

/// The contents of [`AppState`].
pub struct Inner {
    /// Effective configuration.
    pub config: Config,
    /// Memory budgets of heavy replies (`limits.reply_max_bytes` and friends).
    pub replies: Arc<crate::budget::ReplyBudgets>,
    /// How fast each session's socket is read (`limits.frames_per_sec`), worked out once.
    pub read_rate: crate::read_budget::ReadRate,
    /// Token checking.
    pub auth: Auth,
    /// Persistence.
    pub store: Arc<dyn Store>,
    /// Audit log and review queue.
    pub review: Arc<dyn store::ReviewStore>,
    /// Administrative records: accounts, departments, group settings, files.
    pub meta: Arc<dyn store::MetaStore>,
    /// Moderation rules, escalation and penalties.
    pub moderation: Arc<crate::moderation::Moderation>,
    /// Delivery.
    pub router: Arc<dyn Router>,
    /// Ordered hand-off of new messages to the router.
    pub pump: Arc<crate::pump::DeliveryPump>,
    /// Sessions on this node.
    pub hub: Arc<Hub>,
    /// Cached groups and members.
    pub membership: Arc<Membership>,
    /// Users known to exist (cache of the store's user table).
    pub known_users: DashSet<UserId>,
    /// Permits for WebSocket sessions (`server.max_connections`).
    pub connections: Arc<Semaphore>,
    /// Sign-in attempts per user id (`auth.login_attempts_per_minute`).
    pub login_limiter: governor::DefaultKeyedRateLimiter<UserId>,
    /// Per-user message, delivery and HTTP write rates across sessions (`limits.user_*`,
    /// `limits.http_writes_*`).
    pub user_rates: crate::user_rates::UserRates,
    /// Refuses clients' writes while the data volume is nearly full (`store.min_free_bytes`).
    pub disk: Arc<crate::disk::DiskGuard>,
    /// Permits for uploads being received (`files.max_concurrent_uploads`).
    pub uploads: Arc<Semaphore>,
    /// Uploads in progress per user (`files.max_concurrent_uploads_per_user`).
    pub uploads_by_user: crate::budget::UploadsByUser,
    /// Password hashing workers and the per-address sign-in limit.
    pub signin: crate::signin::SignIn,
    /// Cancelled when the node shuts down.
    pub shutdown: CancellationToken,
    /// Readiness and drain state (`/readyz`, SIGTERM).
    pub health: Arc<crate::health::Health>,
    /// The embedded store (embedded mode), for backups.
    pub embedded: Option<store::embedded::EmbeddedStore>,
}

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

/// Milliseconds since the epoch (the clock lives in [`crate::clock`]; re-exported here for
/// the handlers that already import it with the state).
pub use crate::clock::now_ms;

impl Inner {
    /// Whether the user is a company administrator (`auth.admins`).
    pub fn is_company_admin(&self, user: &UserId) -> bool {
        self.config.auth.admins.iter().any(|a| a == user.as_str())
    }

    /// Refuses with `unauthorized` a token of a deactivated account, one issued before the
    /// account's tokens were revoked, and a revoked token (by its id `token_id` or by the
    /// user's cut-off, see [`crate::revocation`]); returns the directory record when there
    /// is one.
    pub async fn check_account(
        &self,
        user: &UserId,
        issued_at: u64,
        token_id: &str,
    ) -> Result<Option<Arc<crate::directory::Account>>, ApiError> {
        if self
            .membership
            .revocations
            .is_revoked(user, token_id, issued_at)
            .await?
        {
            return Err(ApiError::new(
                protocol::ErrorCode::Unauthorized,
                "this token was revoked; sign in again",
            ));
        }
        let account = self.membership.account(user).await?;
        if let Some(a) = &account {
            if !a.is_active() {
                return Err(ApiError::new(
                    protocol::ErrorCode::Unauthorized,
                    "this account is deactivated",
                ));
            }
            if issued_at < a.tokens_valid_after {
                return Err(ApiError::new(
                    protocol::ErrorCode::Unauthorized,
                    "this token was revoked; sign in again",
                ));
            }
        }
        Ok(account)
    }

    /// Whether the user is marked external in the directory.
    pub async fn is_external(&self, user: &UserId) -> Result<bool, ApiError> {
        Ok(self
            .membership
            .account(user)
            .await?
            .is_some_and(|a| a.external))
    }

    /// `forbidden` unless the user is a company administrator.
    pub fn require_company_admin(&self, user: &UserId) -> Result<(), ApiError> {
        if self.is_company_admin(user) {
            Ok(())
        } else {
            Err(ApiError::forbidden(
                "only company administrators may do this",
            ))
        }
    }

    /// Whether the user reviews announcements (`auth.reviewers`, and company administrators).
    pub fn is_reviewer(&self, user: &UserId) -> bool {
        self.is_company_admin(user)
            || self
                .config
                .auth
                .reviewers
                .iter()
                .any(|r| r == user.as_str())
    }

    /// Records an audit entry; a failure is logged, never fatal to the request.
    pub async fn audit(&self, entry: store::AuditEntry) {
        crate::post_commit::audit(&*self.review, entry).await;
    }

    /// Records a user as known (first authenticated contact).
    pub async fn touch_user(&self, user: &UserId) -> Result<(), ApiError> {
        if self.known_users.contains(user) {
            return Ok(());
        }
        self.store.touch_user(user, now_ms()).await?;
        self.known_users.insert(user.clone());
        Ok(())
    }

    /// Whether a user exists.
    pub async fn user_exists(&self, user: &UserId) -> Result<bool, ApiError> {
        if self.known_users.contains(user) {
            return Ok(true);
        }
        let exists = self.store.user_exists(user).await?;
        if exists {
            self.known_users.insert(user.clone());
        }
        Ok(exists)
    }

    /// The group, or `not_found` (also for a dissolved group).
    pub async fn group(&self, id: &GroupId) -> Result<Arc<GroupView>, ApiError> {
        self.membership
            .get(id)
            .await?
            .filter(|g| g.settings.lifecycle != crate::membership::Lifecycle::Dissolved)
            .ok_or_else(|| ApiError::not_found(format!("no group {id}")))
    }
}
