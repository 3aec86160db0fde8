//! What follows a durable change: cache invalidation on every node (control messages) and the
//! `event` frames that tell the people concerned. All of it is best effort, through
//! [`crate::post_commit`]: the change is already stored, so a failure is logged and counted
//! there and never fails the request.

use crate::post_commit;
use crate::state::AppState;
use protocol::{GroupId, ServerFrame, UserId};
use router::Control;

/// Drops cached copies of a group here and on every other node.
pub async fn changed(state: &AppState, id: &GroupId) {
    state.membership.invalidate(id);
    let control = Control::GroupChanged { group: id.clone() };
    post_commit::broadcast(&*state.router, control).await;
}

/// Drops cached copies of an account here and on every other node.
pub async fn user_changed(state: &AppState, user: &UserId) {
    state.membership.invalidate_user(user);
    let control = Control::UserChanged { user: user.clone() };
    post_commit::broadcast(&*state.router, control).await;
}

/// Sends a frame to the given users (best effort: a failure is logged and counted).
pub async fn publish(state: &AppState, audience: Vec<UserId>, frame: ServerFrame) {
    post_commit::event(&*state.router, audience, frame).await;
}
