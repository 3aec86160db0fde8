//! Operator endpoints on the main listener: the probes (`/livez`, `/readyz`), `/metrics`
//! when it is not on its own listener (company administrators only), and the on-demand backup
//! download. The lifecycle flags live in [`crate::health`], the metric names in
//! [`crate::metrics`], the archive format in [`crate::backup`].

use crate::api::Caller;
use crate::config::MetricsConfig;
use crate::error::{ApiError, ErrorBody};
use crate::state::AppState;
use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use protocol::UserId;
use serde::Serialize;
use std::io;
use std::time::Duration;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// `/livez` and `/readyz` (see [`crate::health`]); no authentication: they say nothing about users.
pub fn probe_routes() -> Router<AppState> {
    Router::new()
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
}

#[derive(Serialize)]
struct Live {
    status: &'static str,
}

async fn livez() -> Json<Live> {
    Json(Live { status: "ok" })
}

/// The `/readyz` body.
#[derive(Serialize)]
struct Ready {
    ready: bool,
    starting: bool,
    draining: bool,
    store: bool,
    router: bool,
    sessions: usize,
}

/// How long a backend may take to answer the readiness probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
async fn readyz(State(state): State<AppState>) -> Response {
    let probe_user = UserId::new("readyz-probe");
    let store = async {
        matches!(
            tokio::time::timeout(PROBE_TIMEOUT, state.store.user_exists(&probe_user)).await,
            Ok(Ok(_))
        )
    };
    let router = async {
        matches!(
            tokio::time::timeout(PROBE_TIMEOUT, state.router.remote_sessions(&probe_user)).await,
            Ok(Ok(_))
        )
    };
    let (store, router) = match state.health.cached_probe() {
        Some(cached) => cached,
        None => {
            let (store, router) = tokio::join!(store, router);
            state.health.remember_probe(store, router);
            (store, router)
        }
    };
    let starting = !state.health.is_started();
    let draining = state.health.is_draining();
    let ready = store && router && !starting && !draining;
    let body = Ready {
        ready,
        starting,
        draining,
        store,
        router,
        sessions: state.hub.len(),
    };
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

/// `/metrics` on the main listener (when `metrics.listen` is empty): company administrators
/// only, with a bearer token like the `/v1` API.
pub fn metrics_routes(cfg: &MetricsConfig) -> axum::Router<AppState> {
    if cfg.listen.is_empty() {
        axum::Router::new().route("/metrics", get(admin_metrics))
    } else {
        axum::Router::new()
    }
}

async fn admin_metrics(
    State(state): State<AppState>,
    Caller(user): Caller,
) -> Result<Response, ApiError> {
    state.require_company_admin(&user)?;
    Ok(crate::metrics::exposition(&crate::metrics::install()))
}

/// `GET /v1/admin/backup` (documented in the OpenAPI document, so the authorization matrix
/// covers it).
pub fn backup_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(download))
}

/// Takes a backup now (kept in `backup.dir` like a scheduled one) and sends it
/// (`application/gzip`). Company administrators only; one backup runs at a time (503 with
/// retry otherwise); embedded mode only (400 in cluster mode).
#[utoipa::path(get, path = "/v1/admin/backup", tag = "admin", security(("bearer" = [])),
    responses((status = 200, description = "The backup archive (tar.gz)", content_type = "application/gzip"), (status = 401, description = "No valid token", body = ErrorBody), (status = 403, description = "Not allowed", body = ErrorBody), (status = 400, description = "Not embedded mode", body = ErrorBody), (status = 503, description = "Another backup is running", body = ErrorBody)))]
async fn download(
    State(state): State<AppState>,
    Caller(user): Caller,
) -> Result<Response, ApiError> {
    state.require_company_admin(&user)?;
    let (path, _) = crate::backup::run_once(&state).await?;
    let file = tokio::fs::File::open(&path)
        .await
        .map_err(|e| ApiError::new(protocol::ErrorCode::Internal, e.to_string()))?;
    let stream = futures_util::stream::unfold(file, |mut file| async move {
        use tokio::io::AsyncReadExt;
        let mut buf = vec![0u8; 64 * 1024];
        match file.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok::<_, io::Error>(bytes::Bytes::from(buf)), file))
            }
            Err(e) => Some((Err(e), file)),
        }
    });
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("chatd-backup.tar.gz")
        .to_owned();
    Ok((
        [
            (
                axum::http::header::CONTENT_TYPE,
                "application/gzip".to_owned(),
            ),
            (
                axum::http::header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}\""),
            ),
        ],
        Body::from_stream(stream),
    )
        .into_response())
}
