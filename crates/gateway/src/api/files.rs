//! Attachments over HTTP: upload, download and metadata (`/v1/files`). The rules (who may
//! read a file, where contents are kept, shares) are in [`crate::files`].
//!
//! Budgets: a node receives at most `files.max_concurrent_uploads` uploads at once, one user
//! at most `files.max_concurrent_uploads_per_user` of them, and an upload must keep an
//! average of `files.upload_min_bytes_per_sec` after `files.upload_grace_ms`: a stalled or
//! trickling body ends with 408 `timeout` and frees its slot, so a few slow clients cannot
//! hold every slot.

use super::Caller;
use crate::directory::to_json;
use crate::error::{ApiError, ErrorBody};
use crate::files::{attachment_of, content_path, io_error, readable, FileRecord, NS_FILE};
use crate::state::{now_ms, AppState};
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use protocol::{Attachment, ErrorCode};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use store::MetaOp;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// The routes of this module. The body limit is the module's own (`files.max_bytes`),
/// checked while reading, so an oversized upload gets the JSON 413.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(upload))
        .routes(routes!(download))
        .routes(routes!(metadata))
        .layer(DefaultBodyLimit::disable())
}

/// `POST /v1/files` query.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UploadQuery {
    /// The file name shown to people (1..=255 characters).
    name: Option<String>,
}

/// Uploads a file: the request body is the content, `Content-Type` its media type (one of
/// `files.allowed_types`), `?name=` its name. Answers the attachment to put in a message.
#[utoipa::path(post, path = "/v1/files", tag = "files", params(UploadQuery), security(("bearer" = [])),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "The file's bytes"),
    responses((status = 201, body = Attachment), (status = 400, description = "Missing name, empty body, type not allowed", body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, description = "The name is blocked", body = ErrorBody),
        (status = 408, description = "The body came slower than files.upload_min_bytes_per_sec", body = ErrorBody),
        (status = 413, description = "Over files.max_bytes", body = ErrorBody),
        (status = 429, description = "Over files.uploads_per_minute or files.max_concurrent_uploads_per_user", body = ErrorBody),
        (status = 503, description = "Over files.max_concurrent_uploads", body = ErrorBody)))]
async fn upload(
    State(state): State<AppState>,
    Caller(me): Caller,
    Query(q): Query<UploadQuery>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    state.user_rates.check_upload_start(&me)?;
    let Some(_mine) = crate::budget::UserSlot::take(
        &state.uploads_by_user,
        &me,
        state.config.files.max_concurrent_uploads_per_user,
    ) else {
        return Err(ApiError::new(
            ErrorCode::RateLimited,
            format!(
                "you already have {} uploads in progress (files.max_concurrent_uploads_per_user)",
                state.config.files.max_concurrent_uploads_per_user
            ),
        ));
    };
    let Ok(_permit) = state.uploads.clone().try_acquire_owned() else {
        return Err(ApiError::new(
            ErrorCode::Unavailable,
            "too many uploads in progress on this node; retry shortly",
        ));
    };
    let max = state.config.files.max_bytes;
    let too_large = || {
        ApiError::new(
            ErrorCode::TooLarge,
            format!("the file is over the limit of {max} bytes (files.max_bytes)"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max.saturating_add(LINGER_BYTES)) {
        // Far over the limit: answer at once rather than read it.
        return Err(too_large());
    }
    let name = q.name.as_deref().map(str::trim).unwrap_or_default();
    if name.is_empty() || name.chars().count() > 255 || name.contains(['/', '\\', '\0']) {
        return Err(ApiError::bad_request(
            "name: 1 to 255 characters, without slashes",
        ));
    }
    let mime = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_lowercase()
        })
        .unwrap_or_default();
    if !state.config.files.allowed_types.contains(&mime) {
        return Err(ApiError::bad_request(format!(
            "content-type: {mime:?} is not an allowed file type (files.allowed_types)"
        )));
    }
    // An upload belongs to no conversation yet: its name is checked as the uploader's own
    // (outsider rules for an external uploader), and again with the conversation's rules in
    // every message that shares it.
    let own = crate::policy::Access::Direct([me.clone(), me.clone()]);
    let verdict = crate::policy::ModerationScope::of(&state, &own)
        .await?
        .check(&state, name);
    let name = match (verdict.action, verdict.masked_text) {
        (moderation::Action::Block, _) => {
            return Err(ApiError::new(
                ErrorCode::Blocked,
                "the file name is blocked by the moderation filter",
            ))
        }
        (moderation::Action::Mask | moderation::Action::Review, Some(masked)) => masked,
        _ => name.to_owned(),
    };
    let pace = Pace {
        grace: std::time::Duration::from_millis(state.config.files.upload_grace_ms),
        min_bytes_per_sec: state.config.files.upload_min_bytes_per_sec,
    };
    let bytes = match read_limited(body, max, pace).await {
        Ok(bytes) => bytes,
        Err(Refused::TooLarge) => return Err(too_large()),
        Err(Refused::TooSlow) => {
            return Err(ApiError::new(
                ErrorCode::Timeout,
                format!(
                "the upload came slower than {} bytes per second (files.upload_min_bytes_per_sec)",
                pace.min_bytes_per_sec
            ),
            ))
        }
    };
    if bytes.is_empty() {
        return Err(ApiError::bad_request("body: the file is empty"));
    }
    state
        .user_rates
        .check_upload_bytes(&me, bytes.len() as u64)?;
    let sha = hex::encode(Sha256::digest(&bytes));
    let path = content_path(&state, &sha);
    if tokio::fs::metadata(&path).await.is_err() {
        crate::files::check_free_space(&state, bytes.len() as u64).await?;
        // Write aside, then rename: a reader never sees half a file, and two uploads of the
        // same content race harmlessly.
        let dir = path.parent().map(PathBuf::from).unwrap_or_default();
        tokio::fs::create_dir_all(&dir).await.map_err(io_error)?;
        let tmp = dir.join(format!(".{sha}.{}", uuid::Uuid::new_v4().simple()));
        let written = async {
            let mut f = tokio::fs::File::create(&tmp).await?;
            tokio::io::AsyncWriteExt::write_all(&mut f, &bytes).await?;
            f.sync_all().await?;
            tokio::fs::rename(&tmp, &path).await
        }
        .await;
        if let Err(e) = written {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(io_error(e));
        }
    }
    let record = FileRecord {
        file_id: format!("f{}", uuid::Uuid::now_v7().simple()),
        name,
        size: bytes.len() as u64,
        mime,
        sha256: sha,
        uploader: me,
        created_at: now_ms(),
    };
    state
        .meta
        .apply(vec![MetaOp::put(
            NS_FILE,
            &record.file_id,
            to_json(&record)?,
        )])
        .await?;
    Ok((StatusCode::CREATED, Json(attachment_of(&record))).into_response())
}

/// How much of an oversized body is read and discarded before the 413 is sent: a client that
/// is still sending when the server closes would see a reset instead of the answer.
const LINGER_BYTES: u64 = 1024 * 1024;

/// The slowest an upload body may arrive.
#[derive(Debug, Clone, Copy)]
struct Pace {
    /// Time before the rate applies.
    grace: std::time::Duration,
    /// Average bytes per second since the start, required after `grace` (0: no minimum).
    min_bytes_per_sec: u64,
}

impl Pace {
    /// When the body must have sent more than `received` bytes.
    fn due(&self, start: tokio::time::Instant, received: u64) -> Option<tokio::time::Instant> {
        if self.min_bytes_per_sec == 0 {
            return None;
        }
        let earned =
            std::time::Duration::from_secs_f64(received as f64 / self.min_bytes_per_sec as f64);
        start.checked_add(self.grace)?.checked_add(earned)
    }
}

/// Why a body was not read.
#[derive(Debug, PartialEq, Eq)]
enum Refused {
    /// Over the limit, or cut short by the client.
    TooLarge,
    /// Slower than the [`Pace`].
    TooSlow,
}

/// Reads the body if it is at most `max` bytes and keeps `pace`; `TooLarge` (after discarding
/// up to [`LINGER_BYTES`] more) when it is larger, or when the client stops sending midway.
async fn read_limited(body: Body, max: u64, pace: Pace) -> Result<Vec<u8>, Refused> {
    use futures_util::StreamExt;
    let start = tokio::time::Instant::now();
    let mut stream = body.into_data_stream();
    let mut bytes = Vec::new();
    let mut total: u64 = 0;
    loop {
        let next = match pace.due(start, total) {
            Some(due) => tokio::time::timeout_at(due, stream.next())
                .await
                .map_err(|_| Refused::TooSlow)?,
            None => stream.next().await,
        };
        let Some(chunk) = next else { break };
        let chunk = chunk.map_err(|_| Refused::TooLarge)?;
        total = total.saturating_add(chunk.len() as u64);
        if total > max.saturating_add(LINGER_BYTES) {
            return Err(Refused::TooLarge);
        }
        if total <= max {
            bytes.extend_from_slice(&chunk);
        }
    }
    if total <= max {
        Ok(bytes)
    } else {
        Err(Refused::TooLarge)
    }
}

fn encode_filename(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Downloads a file's content (its uploader, company administrators, and the members of a
/// conversation it was shared in).
#[utoipa::path(get, path = "/v1/files/{id}", tag = "files", security(("bearer" = [])),
    params(("id" = String, Path, description = "File id")),
    responses((status = 200, description = "The content, with its media type", content_type = "application/octet-stream"),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn download(
    State(state): State<AppState>,
    Caller(me): Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let r = readable(&state, &me, &id).await?;
    let bytes = tokio::fs::read(content_path(&state, &r.sha256))
        .await
        .map_err(io_error)?;
    let ascii: String = r
        .name
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let disposition = format!(
        "attachment; filename=\"{ascii}\"; filename*=UTF-8''{}",
        encode_filename(&r.name)
    );
    let mut resp = bytes.into_response();
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&r.mime) {
        h.insert(header::CONTENT_TYPE, v);
    }
    if let Ok(v) = HeaderValue::from_str(&disposition) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    Ok(resp)
}

/// A file's record (same readers as the download).
#[utoipa::path(get, path = "/v1/files/{id}/meta", tag = "files", security(("bearer" = [])),
    params(("id" = String, Path, description = "File id")),
    responses((status = 200, body = FileRecord), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn metadata(
    State(state): State<AppState>,
    Caller(me): Caller,
    Path(id): Path<String>,
) -> Result<Json<FileRecord>, ApiError> {
    Ok(Json(readable(&state, &me, &id).await?))
}

/// Checks that `user` may attach the file to a message (they can read it) and returns the
/// attachment with the server's size and type; `not_found` for an unknown file id.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::budget::{UploadsByUser, UserSlot};
    use protocol::UserId;

    #[test]
    fn the_pace_grows_with_what_was_received() {
        let pace = Pace {
            grace: std::time::Duration::from_secs(10),
            min_bytes_per_sec: 1000,
        };
        let t = tokio::time::Instant::now();
        assert_eq!(pace.due(t, 0), Some(t + std::time::Duration::from_secs(10)));
        assert_eq!(
            pace.due(t, 5000),
            Some(t + std::time::Duration::from_secs(15))
        );
        let off = Pace {
            min_bytes_per_sec: 0,
            ..pace
        };
        assert_eq!(off.due(t, 5000), None);
    }

    #[test]
    fn one_user_holds_at_most_their_share() {
        let map = UploadsByUser::default();
        let (a, b) = (UserId::from("a"), UserId::from("b"));
        let s1 = UserSlot::take(&map, &a, 2).unwrap();
        let s2 = UserSlot::take(&map, &a, 2).unwrap();
        assert!(UserSlot::take(&map, &a, 2).is_none());
        let other = UserSlot::take(&map, &b, 2).unwrap();
        drop(s1);
        let s3 = UserSlot::take(&map, &a, 2).unwrap();
        drop((s2, s3, other));
        assert!(map.is_empty(), "slots are given back");
    }

    #[test]
    fn filenames_are_percent_encoded() {
        assert_eq!(encode_filename("a b.pdf"), "a%20b.pdf");
        assert_eq!(encode_filename("报告.pdf"), "%E6%8A%A5%E5%91%8A.pdf");
        assert_eq!(encode_filename("x\"y"), "x%22y");
    }
}
