//! Attachments: uploads and downloads of the files that image and file messages reference.
//!
//! Content is stored once per distinct content (content-addressed by SHA-256) under
//! `files.dir`; each upload gets its own file id and record (name, type, uploader) in the
//! [`store::MetaStore`]. A file may be downloaded by its uploader, by company administrators,
//! and by the members of any conversation it was shared in (recorded when a message that
//! references it is sent).
//! The HTTP handlers are in `api/files.rs`.

use crate::directory::get_json;
use crate::error::ApiError;
use crate::state::AppState;
use protocol::{Attachment, ConvId, ErrorCode, UserId};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use store::MetaOp;

/// Namespace of file records, keyed by file id.
pub const NS_FILE: &str = "file";
/// Namespace of shares, keyed `file_id/conv`.
pub const NS_FILE_SHARE: &str = "file_share";
/// Namespace of files attached to messages held for review, keyed `file_id/conv`: the
/// conversation's reviewers may read them.
pub const NS_FILE_HELD: &str = "file_held";

/// What the server records about an upload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FileRecord {
    /// The file id (`f` + a UUIDv7).
    pub file_id: String,
    /// The file name (after moderation).
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// The media type.
    pub mime: String,
    /// SHA-256 of the content, hex.
    pub sha256: String,
    /// Who uploaded it.
    pub uploader: UserId,
    /// Upload time, ms since the epoch.
    pub created_at: u64,
}

/// Where file contents are kept (`files.dir`, default `<data_dir>/files`).
pub fn files_dir(state: &AppState) -> PathBuf {
    let f = &state.config.files;
    if f.dir.as_os_str().is_empty() {
        state.config.server.data_dir.join("files")
    } else {
        f.dir.clone()
    }
}

/// The path of the content with SHA-256 `sha`.
pub fn content_path(state: &AppState, sha: &str) -> PathBuf {
    files_dir(state)
        .join(sha.get(0..2).unwrap_or("00"))
        .join(sha.get(2..4).unwrap_or("00"))
        .join(sha)
}

/// Refuses to store `size` more bytes when that would leave less than `files.min_free_bytes`
/// free on the files volume (503 with `retry`): uploads must not fill the disk that the
/// message store needs. The volume is measured at the nearest existing ancestor of the files
/// directory.
pub async fn check_free_space(state: &AppState, size: u64) -> Result<(), ApiError> {
    let min_free = state.config.files.min_free_bytes;
    if min_free == 0 {
        return Ok(());
    }
    let dir = files_dir(state);
    let free = tokio::task::spawn_blocking(move || crate::disk::free_bytes(&dir))
        .await
        .map_err(|e| io_error(std::io::Error::other(e)))?
        .map_err(io_error)?;
    if free < min_free.saturating_add(size) {
        tracing::warn!(
            free,
            min_free,
            size,
            "upload refused: the files volume is nearly full"
        );
        return Err(ApiError::new(
            ErrorCode::Unavailable,
            "the server's file storage is nearly full (files.min_free_bytes); retry later",
        ));
    }
    Ok(())
}

/// A file storage failure: logged, answered as `unavailable`.
pub fn io_error(e: std::io::Error) -> ApiError {
    tracing::error!(error = %e, "file storage");
    ApiError::new(ErrorCode::Unavailable, "file storage is unavailable")
}

/// The attachment a message carries for a stored file.
pub fn attachment_of(r: &FileRecord) -> Attachment {
    Attachment {
        file_id: r.file_id.clone(),
        name: r.name.clone(),
        size: r.size,
        mime: r.mime.clone(),
        width: None,
        height: None,
    }
}

/// The record of file `id`, or `not_found`.
pub async fn record(state: &AppState, id: &str) -> Result<FileRecord, ApiError> {
    if id.is_empty() || id.len() > 128 {
        return Err(ApiError::not_found(format!("no file {id}")));
    }
    get_json(&state.meta, NS_FILE, id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no file {id}")))
}

/// Whether `user` may read the file: its uploader, a company administrator, a member of a
/// conversation it was shared in, or a reviewer of a conversation where a message with it
/// was held for review.
async fn may_read(state: &AppState, user: &UserId, r: &FileRecord) -> Result<bool, ApiError> {
    if &r.uploader == user || state.is_company_admin(user) {
        return Ok(true);
    }
    for conv in convs_of(state, NS_FILE_SHARE, &r.file_id).await? {
        if crate::policy::access(state, user, &conv).await.is_ok() {
            return Ok(true);
        }
    }
    for conv in convs_of(state, NS_FILE_HELD, &r.file_id).await? {
        if crate::policy::require_reviewer(state, user, &conv)
            .await
            .is_ok()
        {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The conversations recorded for a file in namespace `ns` (keys `file_id/conv`).
async fn convs_of(state: &AppState, ns: &str, file_id: &str) -> Result<Vec<ConvId>, ApiError> {
    let prefix = format!("{file_id}/");
    let mut convs = Vec::new();
    let mut pages = store::Pages::new(&*state.meta, ns, &prefix, 200);
    while let Some(page) = pages.next().await? {
        for (key, _) in page {
            if let Some(conv) = key
                .strip_prefix(&prefix)
                .and_then(|c| ConvId::parse(c).ok())
            {
                convs.push(conv);
            }
        }
    }
    Ok(convs)
}

/// The record of file `id` if `user` may read it: `not_found` or `forbidden` otherwise.
pub async fn readable(state: &AppState, user: &UserId, id: &str) -> Result<FileRecord, ApiError> {
    let r = record(state, id).await?;
    if !may_read(state, user, &r).await? {
        return Err(ApiError::forbidden(
            "only the uploader and members of a conversation the file was shared in may read it",
        ));
    }
    Ok(r)
}

/// `filename*` value per RFC 5987: UTF-8, percent-encoded.
pub async fn check_attachment(
    state: &AppState,
    user: &UserId,
    attachment: &Attachment,
) -> Result<Attachment, ApiError> {
    let r = readable(state, user, &attachment.file_id).await?;
    Ok(Attachment {
        file_id: r.file_id,
        name: attachment.name.clone(),
        size: r.size,
        mime: r.mime,
        width: attachment.width,
        height: attachment.height,
    })
}

/// Records, durably, that a file was shared in a conversation: its members may then read it.
pub async fn record_share(state: &AppState, file_id: &str, conv: &ConvId) -> Result<(), ApiError> {
    put_link(state, NS_FILE_SHARE, file_id, conv).await
}

/// Records that a message with the file is held for review in a conversation: its reviewers
/// may then read the file (its members only once the message is approved).
pub async fn record_held(state: &AppState, file_id: &str, conv: &ConvId) -> Result<(), ApiError> {
    put_link(state, NS_FILE_HELD, file_id, conv).await
}

async fn put_link(
    state: &AppState,
    ns: &str,
    file_id: &str,
    conv: &ConvId,
) -> Result<(), ApiError> {
    state
        .meta
        .apply(vec![MetaOp::put(
            ns,
            &format!("{file_id}/{conv}"),
            Vec::new(),
        )])
        .await?;
    Ok(())
}
