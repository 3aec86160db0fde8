//! A read-through cache of group records and member lists, so the send path does not read
//! the store for every message. Entries are dropped whenever membership changes (through
//! this node's API, or a `GroupChanged` control message from another node).

use dashmap::DashMap;
use protocol::{GroupId, UserId};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use store::{Group, Member, Role, Store, StoreError};

/// A group and its members, as cached.
#[derive(Debug)]
pub struct GroupView {
    /// The group record.
    pub group: Group,
    /// Role by member.
    pub roles: HashMap<UserId, Role>,
    /// The members, for fan-out.
    pub members: Arc<Vec<UserId>>,
}

impl GroupView {
    /// The user's role, if a member.
    pub fn role_of(&self, user: &UserId) -> Option<Role> {
        self.roles.get(user).copied()
    }
}

/// The cache.
pub struct Membership {
    store: Arc<dyn Store>,
    groups: DashMap<GroupId, Arc<GroupView>>,
    /// Bumped by every invalidation, so a load that raced with one is not cached.
    epoch: AtomicU64,
}

impl Membership {
    /// An empty cache over `store`.
    pub fn new(store: Arc<dyn Store>) -> Arc<Self> {
        Arc::new(Self {
            store,
            groups: DashMap::new(),
            epoch: AtomicU64::new(0),
        })
    }

    /// The group and its members, or `None` if it does not exist.
    pub async fn get(&self, id: &GroupId) -> Result<Option<Arc<GroupView>>, StoreError> {
        if let Some(v) = self.groups.get(id) {
            return Ok(Some(v.value().clone()));
        }
        let epoch = self.epoch.load(Ordering::Acquire);
        let Some(group) = self.store.group(id).await? else {
            return Ok(None);
        };
        let members: Vec<Member> = self.store.members(id).await?;
        let view = Arc::new(GroupView {
            group,
            roles: members.iter().map(|m| (m.user.clone(), m.role)).collect(),
            members: Arc::new(members.into_iter().map(|m| m.user).collect()),
        });
        if self.epoch.load(Ordering::Acquire) == epoch {
            self.groups.insert(id.clone(), view.clone());
        }
        Ok(Some(view))
    }

    /// Forgets a group (after its membership changed).
    pub fn invalidate(&self, id: &GroupId) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.groups.remove(id);
    }
}
