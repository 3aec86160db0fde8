//! Attachments: uploads and downloads of files referenced by image and file messages.
//!
//! Placeholder while the module is being written: no routes yet, and attachments are
//! passed through unchecked as before.

use crate::error::ApiError;
use crate::state::AppState;
use protocol::{Attachment, ConvId, UserId};
use utoipa_axum::router::OpenApiRouter;

/// The routes of this module.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
}

/// Checks that `user` may attach the file to a message and returns the attachment as the
/// server records it.
pub async fn check_attachment(
    _state: &AppState,
    _user: &UserId,
    attachment: &Attachment,
) -> Result<Attachment, ApiError> {
    Ok(attachment.clone())
}

/// Records that a file was shared in a conversation (its members may then download it).
pub async fn record_share(
    _state: &AppState,
    _file_id: &str,
    _conv: &ConvId,
) -> Result<(), ApiError> {
    Ok(())
}
