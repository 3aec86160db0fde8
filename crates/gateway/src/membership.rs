//! Read-through caches of what every request checks: group records with their members and
//! settings, and directory accounts. The send path must not read the store for every
//! message. Entries are dropped whenever they change (through this node's API, or a
//! `GroupChanged` / `UserChanged` control message from another node).

use crate::directory::{Account, NS_USER};
use dashmap::DashMap;
use protocol::{GroupId, Seq, UserId};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use store::{Group, Member, MetaStore, Role, Store, StoreError};

/// Namespace of [`GroupSettings`] records, keyed by group id.
pub const NS_GROUP_SETTINGS: &str = "group_settings";
/// Namespace of group names ([`name_key`]), each naming its group's id: names are unique,
/// and a group exists only while its name names it.
pub const NS_GROUP_NAME: &str = "group_name";

/// The key of a group name in [`NS_GROUP_NAME`] (case-insensitive).
pub fn name_key(name: &str) -> String {
    name.trim().to_lowercase()
}

/// Namespace of a group's own moderation rules ([`moderation::GroupPolicySpec`] as JSON),
/// keyed by group id. Apart from the settings, which every member reads: the rules (a list
/// of words banned in the group) are for the group's owner, admins and company admins.
pub const NS_GROUP_MODERATION: &str = "group_moderation";

/// Where a project group is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Lifecycle {
    /// Open for posting.
    #[default]
    Active,
    /// Read-only: history stays readable, nobody posts.
    Archived,
    /// Dissolved: no members are left and the group is gone for everyone.
    Dissolved,
}

/// What group owners and admins change about a group, beside its members.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default, utoipa::ToSchema)]
pub struct GroupSettings {
    /// Only the owner and admins may post.
    #[serde(default)]
    pub muted_all: bool,
    /// Muted members and until when (ms since the epoch).
    #[serde(default)]
    pub mutes: BTreeMap<UserId, u64>,
    /// Users who may not be added again except by the owner or an admin.
    #[serde(default)]
    pub banned: BTreeSet<UserId>,
    /// Pinned messages, oldest pin first.
    #[serde(default)]
    pub pinned: Vec<Seq>,
    /// The group announcement.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub announcement: Option<String>,
    /// Posts go out only after a reviewer approves them (an announcement channel).
    #[serde(default)]
    pub approval_required: bool,
    /// Archived or active.
    #[serde(default)]
    pub lifecycle: Lifecycle,
    /// The department whose members this group follows (department groups).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub department: Option<String>,
}

impl GroupSettings {
    /// Until when `user` is muted, if they are now.
    pub fn muted_until(&self, user: &UserId, now: u64) -> Option<u64> {
        self.mutes.get(user).copied().filter(|until| *until > now)
    }
}

/// A group, its members and its settings, as cached.
#[derive(Debug)]
pub struct GroupView {
    /// The group record.
    pub group: Group,
    /// Role by member.
    pub roles: HashMap<UserId, Role>,
    /// The members, for fan-out.
    pub members: Arc<Vec<UserId>>,
    /// Settings.
    pub settings: GroupSettings,
    /// The group's own moderation rules, if it has any.
    pub moderation: Option<Arc<moderation::GroupPolicySpec>>,
    /// Whether some member is an external account (or the group is an external group),
    /// worked out at the first message that needs it.
    external: tokio::sync::OnceCell<bool>,
}

impl GroupView {
    /// The user's role, if a member.
    pub fn role_of(&self, user: &UserId) -> Option<Role> {
        self.roles.get(user).copied()
    }

    /// Whether the user is the owner or an admin.
    pub fn is_admin(&self, user: &UserId) -> bool {
        self.role_of(user).is_some_and(|r| r >= Role::Admin)
    }
}

/// The caches.
pub struct Membership {
    store: Arc<dyn Store>,
    meta: Arc<dyn MetaStore>,
    groups: DashMap<GroupId, Arc<GroupView>>,
    /// `None` caches "not in the directory".
    accounts: DashMap<UserId, Option<Arc<Account>>>,
    /// Bumped by every invalidation, so a load that raced with one is not cached.
    epoch: AtomicU64,
    /// Serializes read-modify-write changes of one group's settings on this node.
    locks: Vec<tokio::sync::Mutex<()>>,
    /// Revoked tokens and users' cut-offs (cached in front of the store).
    pub revocations: Arc<crate::revocation::Revocations>,
    /// Moderation penalties in force (cached in front of the store).
    pub penalties: Arc<crate::penalties::Penalties>,
}

fn meta_err(e: crate::error::ApiError) -> StoreError {
    StoreError::corrupt(e.message)
}

impl Membership {
    /// Empty caches over the stores.
    pub fn new(store: Arc<dyn Store>, meta: Arc<dyn MetaStore>) -> Arc<Self> {
        Arc::new(Self {
            store,
            revocations: Arc::new(crate::revocation::Revocations::new(meta.clone())),
            penalties: Arc::new(crate::penalties::Penalties::new(meta.clone())),
            meta,
            groups: DashMap::new(),
            accounts: DashMap::new(),
            epoch: AtomicU64::new(0),
            locks: (0..64).map(|_| tokio::sync::Mutex::new(())).collect(),
        })
    }

    /// Holds the change lock of a group (one of 64 stripes) until the guard drops.
    pub async fn lock(&self, id: &GroupId) -> tokio::sync::MutexGuard<'_, ()> {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        id.hash(&mut h);
        let i = (h.finish() % self.locks.len() as u64) as usize;
        self.locks[i].lock().await
    }

    /// The group, its members and settings, or `None` if it does not exist.
    pub async fn get(&self, id: &GroupId) -> Result<Option<Arc<GroupView>>, StoreError> {
        if let Some(v) = self.groups.get(id) {
            return Ok(Some(v.value().clone()));
        }
        let epoch = self.epoch.load(Ordering::Acquire);
        let Some(group) = self.store.group(id).await? else {
            return Ok(None);
        };
        let settings: GroupSettings =
            crate::directory::get_json(&self.meta, NS_GROUP_SETTINGS, id.as_str())
                .await
                .map_err(meta_err)?
                .unwrap_or_default();
        // A group exists from the moment its name record names it (the commit point of a
        // creation, see `group_admin::create`); rows of a creation that failed or crashed
        // before that step stay invisible.
        if settings.lifecycle != Lifecycle::Dissolved {
            let name = self.meta.get(NS_GROUP_NAME, &name_key(&group.name)).await?;
            if name.as_deref() != Some(id.as_str().as_bytes()) {
                return Ok(None);
            }
        }
        let members: Vec<Member> = self.store.members(id).await?;
        let moderation: Option<moderation::GroupPolicySpec> =
            crate::directory::get_json(&self.meta, NS_GROUP_MODERATION, id.as_str())
                .await
                .map_err(meta_err)?;
        let view = Arc::new(GroupView {
            group,
            roles: members.iter().map(|m| (m.user.clone(), m.role)).collect(),
            members: Arc::new(members.into_iter().map(|m| m.user).collect()),
            settings,
            moderation: moderation.map(Arc::new),
            external: tokio::sync::OnceCell::new(),
        });
        if self.epoch.load(Ordering::Acquire) == epoch {
            self.groups.insert(id.clone(), view.clone());
        }
        Ok(Some(view))
    }

    /// Forgets a group (after its membership or settings changed).
    pub fn invalidate(&self, id: &GroupId) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.groups.remove(id);
    }

    /// The user's directory account, `None` when they are not in the directory.
    pub async fn account(&self, user: &UserId) -> Result<Option<Arc<Account>>, StoreError> {
        if let Some(v) = self.accounts.get(user) {
            return Ok(v.value().clone());
        }
        let epoch = self.epoch.load(Ordering::Acquire);
        let account: Option<Account> =
            crate::directory::get_json(&self.meta, NS_USER, user.as_str())
                .await
                .map_err(meta_err)?;
        let account = account.map(Arc::new);
        if self.epoch.load(Ordering::Acquire) == epoch {
            // Bounded: a flood of unknown ids must not grow the cache without limit.
            if self.accounts.len() > 1_000_000 {
                self.accounts.clear();
            }
            self.accounts.insert(user.clone(), account.clone());
        }
        Ok(account)
    }

    /// Forgets an account (after it changed), and the groups it is a member of (whether a
    /// group has an external member depends on its members' accounts).
    pub fn invalidate_user(&self, user: &UserId) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.accounts.remove(user);
        self.groups.retain(|_, v| !v.roles.contains_key(user));
    }

    /// Whether the user's directory account marks them external.
    pub async fn is_external(&self, user: &UserId) -> Result<bool, StoreError> {
        Ok(self.account(user).await?.is_some_and(|a| a.external))
    }

    /// Whether the group is an external group or has an external member: the account of
    /// every member is read once per cached group view (most from the account cache,
    /// 32 at a time).
    pub async fn has_external_member(&self, view: &GroupView) -> Result<bool, StoreError> {
        view.external
            .get_or_try_init(|| async {
                if view.group.kind == store::GroupKind::External {
                    return Ok(true);
                }
                // 32 reads at a time: a large group's first message must not wait for one
                // round trip per member to a remote store.
                for chunk in view.members.chunks(32) {
                    let reads: Vec<_> = chunk.iter().map(|m| self.is_external(m)).collect();
                    for external in futures_util::future::join_all(reads).await {
                        if external? {
                            return Ok(true);
                        }
                    }
                }
                Ok(false)
            })
            .await
            .copied()
    }
}
