//! Posts waiting for a reviewer over HTTP (`/v1/posts`): thin handlers over [`crate::posts`].

use super::{ApiJson, Caller};
use crate::error::{ApiError, ErrorBody};
use crate::posts::{Post, PostState};
use crate::state::AppState;
use axum::extract::{Path, Query, State};
use axum::Json;
use serde::Deserialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// The routes of this module.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(approve))
        .routes(routes!(reject))
}

/// `GET /v1/posts` filters.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PostQuery {
    /// Only posts in this state.
    state: Option<PostState>,
    /// Only posts to this group.
    group: Option<String>,
}

/// Posts: reviewers see every post, other users their own.
#[utoipa::path(get, path = "/v1/posts", tag = "posts", params(PostQuery), security(("bearer" = [])),
    responses((status = 200, body = [Post]), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
async fn list(
    State(state): State<AppState>,
    Caller(me): Caller,
    Query(q): Query<PostQuery>,
) -> Result<Json<Vec<Post>>, ApiError> {
    Ok(Json(
        crate::posts::list(&state, &me, q.state, q.group.as_deref()).await?,
    ))
}

/// `POST /v1/posts/{id}/reject` body.
#[derive(Debug, Deserialize, utoipa::ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct Decision {
    /// Why (shown to the author).
    #[serde(default)]
    reason: Option<String>,
}

/// Approves a pending post: a message is stored with the next seq and delivered; an
/// announcement replaces the group's. Reviewers only, never their own post.
#[utoipa::path(post, path = "/v1/posts/{id}/approve", tag = "posts", security(("bearer" = [])),
    params(("id" = String, Path, description = "Post id")),
    responses((status = 200, body = Post), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, description = "Already decided", body = ErrorBody)))]
async fn approve(
    State(state): State<AppState>,
    Caller(me): Caller,
    Path(id): Path<String>,
) -> Result<Json<Post>, ApiError> {
    Ok(Json(crate::posts::approve(&state, &me, &id).await?))
}

/// Rejects a pending post; it is never delivered and its author is told. Reviewers only.
#[utoipa::path(post, path = "/v1/posts/{id}/reject", tag = "posts", request_body = Decision, security(("bearer" = [])),
    params(("id" = String, Path, description = "Post id")),
    responses((status = 200, body = Post), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, description = "Already decided", body = ErrorBody)))]
async fn reject(
    State(state): State<AppState>,
    Caller(me): Caller,
    Path(id): Path<String>,
    ApiJson(d): ApiJson<Decision>,
) -> Result<Json<Post>, ApiError> {
    Ok(Json(
        crate::posts::reject(&state, &me, &id, d.reason).await?,
    ))
}
