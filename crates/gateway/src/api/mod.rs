//! The HTTP JSON API under `/v1/` and `/healthz`, described by an OpenAPI document served
//! at `/v1/openapi.json`.
//!
//! Every `/v1` route but `POST /v1/login` and `GET /v1/openapi.json` (public: it describes
//! the API, not its data) authenticates with `Authorization: Bearer <jwt>`. Every error of
//! every route, `/ws` included, is `{"error": {"code", "message", "retry"}}`: handlers answer
//! with [`ApiError`], and the [`json_errors`] middleware rewrites whatever else is an error
//! (axum's query, path and body rejections, 404, 405, 413, a refused WebSocket upgrade) into
//! the same shape, keeping the status and axum's message. Routes are registered through
//! [`utoipa_axum`], so a route cannot exist without its entry in the OpenAPI document.

mod compliance;
mod conversations;
mod directory;
mod files;
mod group_moderation;
pub(crate) mod groups;
pub(crate) mod operations;
mod posts;
mod retention;
pub(crate) mod review;
pub(crate) mod web;

use crate::error::ApiError;
use crate::session::{auth_error, bearer};
use crate::state::AppState;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use protocol::{ErrorCode, UserId};
use serde::Serialize;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// The authenticated caller of an HTTP request: a valid token of an active account.
pub struct Caller(pub UserId);

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = bearer(&parts.headers, None)
            .ok_or_else(|| auth_error(crate::auth::AuthError::Missing))?;
        let claims = state.auth.verify(&token).map_err(auth_error)?;
        let token_id = claims.token_id(&token);
        let user = UserId::new(claims.sub);
        state.check_account(&user, claims.iat, &token_id).await?;
        if matches!(
            parts.method,
            axum::http::Method::GET | axum::http::Method::HEAD | axum::http::Method::OPTIONS
        ) {
            state.user_rates.check_http_read(&user)?;
        } else {
            state.user_rates.check_http_write(&user)?;
            // A nearly full data volume stops what adds data (POST, PUT, PATCH); deletions,
            // and company administrators (who free space: retention, dissolving, deactivating),
            // go on.
            if parts.method != axum::http::Method::DELETE && !state.is_company_admin(&user) {
                state.disk.check()?;
            }
        }
        state.touch_user(&user).await?;
        Ok(Caller(user))
    }
}

/// The client address of a request (`None` when the server was not started with connect
/// info, as in unit tests).
pub struct ClientAddr(pub Option<std::net::IpAddr>);

impl FromRequestParts<AppState> for ClientAddr {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let peer = parts
            .extensions
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map(|c| c.0.ip());
        Ok(ClientAddr(state.signin.client(peer, &parts.headers)))
    }
}

/// A JSON body whose rejection is a JSON `bad_request`.
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    Json<T>: FromRequest<S, Rejection = JsonRejection>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(ApiJson(v)),
            Err(JsonRejection::BytesRejection(e))
                if e.status() == StatusCode::PAYLOAD_TOO_LARGE =>
            {
                Err(ApiError::new(ErrorCode::TooLarge, "request body too large"))
            }
            Err(e) => Err(ApiError::bad_request(e.body_text())),
        }
    }
}

/// The OpenAPI document's fixed parts; the paths come from the routers.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "chatd HTTP API",
        description = "Directory, groups, moderation review, audit and files of a chatd node. \
                       Errors are `{\"error\": {\"code\", \"message\", \"retry\"}}`; \
                       the WebSocket protocol is in docs/PROTOCOL.md."
    ),
    modifiers(&BearerAuth),
    components(schemas(crate::error::ErrorBody, protocol::ErrorCode))
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

/// Every documented route with its OpenAPI document.
pub fn documented() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(healthz))
        .merge(directory::routes())
        .merge(groups::routes())
        .merge(group_moderation::routes())
        .merge(conversations::routes())
        .merge(review::routes())
        .merge(posts::routes())
        .merge(files::routes())
        .merge(operations::backup_routes())
        .merge(retention::routes())
        .merge(compliance::routes())
        .split_for_parts()
}

/// The routes of the API, `/v1/openapi.json` included.
pub fn routes() -> Router<AppState> {
    let (router, doc) = documented();
    let doc = std::sync::Arc::new(doc);
    router
        .route(
            "/v1/openapi.json",
            axum::routing::get(move || {
                let doc = doc.clone();
                async move { Json(doc.as_ref().clone()) }
            }),
        )
        .fallback(|| async { ApiError::not_found("no such route") })
}

/// The error code for an HTTP error status that no handler of ours produced.
fn code_for_status(status: StatusCode) -> ErrorCode {
    match status.as_u16() {
        401 => ErrorCode::Unauthorized,
        403 => ErrorCode::Forbidden,
        404 | 410 => ErrorCode::NotFound,
        409 => ErrorCode::Conflict,
        413 => ErrorCode::TooLarge,
        429 => ErrorCode::RateLimited,
        408 | 502..=504 => ErrorCode::Unavailable,
        400..=499 => ErrorCode::BadRequest,
        _ => ErrorCode::Internal,
    }
}

/// Longest error text of axum's kept as the message.
const MAX_ERROR_TEXT: usize = 1024;

/// Middleware: any 4xx/5xx response that is not already JSON becomes the documented error
/// body, with the same status, the matching code and the original text as its message
/// (or the status's reason, or for 405 the allowed methods). `Allow`, `Retry-After` and
/// `WWW-Authenticate` headers are kept.
pub async fn json_errors(req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let uri = req.uri().clone();
    let response = next.run(req).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    // The query may hold a token: only the redacted form is ever logged.
    let uri = crate::listener::redacted_uri(&uri);
    // 503 is expected backpressure (a budget): not worth a warning per request.
    if status.is_server_error() && status != StatusCode::SERVICE_UNAVAILABLE {
        tracing::warn!(%method, %uri, status = status.as_u16(), "request failed");
    } else {
        tracing::debug!(%method, %uri, status = status.as_u16(), "request refused");
    }
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, MAX_ERROR_TEXT)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
        .unwrap_or_default();
    let allow = parts
        .headers
        .get(header::ALLOW)
        .and_then(|v| v.to_str().ok());
    let message = match (text.is_empty(), allow) {
        (false, _) => text,
        (true, Some(allow)) if status == StatusCode::METHOD_NOT_ALLOWED => {
            format!("method not allowed; this route allows {allow}")
        }
        (true, _) => status
            .canonical_reason()
            .unwrap_or("request failed")
            .to_lowercase(),
    };
    let mut out = ApiError::new(code_for_status(status), message).into_response();
    *out.status_mut() = status;
    for name in [header::ALLOW, header::RETRY_AFTER, header::WWW_AUTHENTICATE] {
        if let Some(v) = parts.headers.get(&name) {
            out.headers_mut().insert(name, v.clone());
        }
    }
    out
}

/// `GET /healthz`.
#[derive(Serialize, utoipa::ToSchema)]
struct Health {
    status: &'static str,
    sessions: usize,
    /// Follow-ups of stored changes this process lost (see `post_commit`).
    post_commit_failures: crate::post_commit::Failures,
}

/// Liveness of the node (no authentication).
#[utoipa::path(get, path = "/healthz", tag = "node",
    responses((status = 200, description = "The node is serving", body = Health)))]
async fn healthz(State(state): State<AppState>) -> Json<Health> {
    Json(Health {
        status: "ok",
        sessions: state.hub.len(),
        post_commit_failures: crate::post_commit::failures(),
    })
}
