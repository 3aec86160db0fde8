//! The web app (built from `web/` into `web/dist`, see docs/WEB.md), served at `/`.
//!
//! The built assets are embedded in the binary with `rust-embed`, so `cargo run --release`
//! serves the app with nothing else installed. `server.web_dir` serves them from a
//! directory instead (development: rebuild the app without rebuilding chatd).
//! `index.html` is revalidated on every load (`no-cache` with an `ETag`); files under
//! `assets/` have content hashes in their names and are cached for a year (`immutable`).
//! Pages carry a Content-Security-Policy that allows only this origin (and its WebSocket),
//! and are gzipped for clients that accept it.

use crate::error::ApiError;
use crate::state::AppState;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use sha2::{Digest, Sha256};
use std::borrow::Cow;
use std::path::Component;

/// The embedded build of the web app.
#[derive(rust_embed::RustEmbed)]
#[folder = "../../web/dist/"]
#[allow_missing = true]
struct Assets;

/// The policy of the app's pages: scripts, styles and fonts from this origin only; images
/// also from `blob:` (previews of downloaded files); connections to this origin's HTTP and
/// WebSocket; never framed.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
img-src 'self' blob: data:; connect-src 'self' ws: wss:; object-src 'none'; base-uri 'none'; \
frame-ancestors 'none'; form-action 'self'";

/// The routes of the web app: `/`, `/index.html` and `/assets/*`.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(index))
        .route("/index.html", get(index))
        .route("/favicon.svg", get(favicon))
        .route("/assets/{*path}", get(asset))
        // gzip for clients that accept it (the app is about a third of its size gzipped).
        .layer(tower_http::compression::CompressionLayer::new())
}

async fn index(State(state): State<AppState>, headers: HeaderMap) -> Response {
    serve(&state, "index.html", &headers).await
}

async fn favicon(State(state): State<AppState>, headers: HeaderMap) -> Response {
    serve(&state, "favicon.svg", &headers).await
}

async fn asset(
    State(state): State<AppState>,
    Path(path): Path<String>,
    headers: HeaderMap,
) -> Response {
    serve(&state, &format!("assets/{path}"), &headers).await
}

/// One file, from the directory of `server.web_dir` or from the embedded copy.
async fn serve(state: &AppState, path: &str, headers: &HeaderMap) -> Response {
    let (body, etag): (Cow<'static, [u8]>, String) = match &state.config.server.web_dir {
        Some(dir) => {
            // Only plain names: no `..`, no absolute paths, nothing outside the directory.
            let rel = std::path::Path::new(path);
            if !rel.components().all(|c| matches!(c, Component::Normal(_))) {
                return ApiError::not_found("no such file").into_response();
            }
            match tokio::fs::read(dir.join(rel)).await {
                Ok(bytes) => {
                    let etag = format!("\"{}\"", hex::encode(Sha256::digest(&bytes)));
                    (Cow::Owned(bytes), etag)
                }
                Err(_) => return ApiError::not_found("no such file").into_response(),
            }
        }
        None => match Assets::get(path) {
            Some(file) => {
                let etag = format!("\"{}\"", hex::encode(file.metadata.sha256_hash()));
                (file.data, etag)
            }
            None => return ApiError::not_found("no such file").into_response(),
        },
    };
    let immutable = path.starts_with("assets/");
    let cache = if immutable {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    let mime = mime_for(path);
    let mut out = HeaderMap::new();
    out.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    out.insert(header::CONTENT_TYPE, mime);
    out.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    out.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    out.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    if let Ok(v) = HeaderValue::from_str(&etag) {
        out.insert(header::ETAG, v);
    }
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag));
    if fresh {
        return (StatusCode::NOT_MODIFIED, out).into_response();
    }
    (out, body.into_owned()).into_response()
}

/// The media type of a file, from its extension (`charset=utf-8` for text).
fn mime_for(path: &str) -> HeaderValue {
    let guess = mime_guess::from_path(path).first_or_octet_stream();
    let s = guess.essence_str();
    let text = s.starts_with("text/") || s == "application/javascript" || s == "image/svg+xml";
    let v = if text {
        format!("{s}; charset=utf-8")
    } else {
        s.to_owned()
    };
    HeaderValue::from_str(&v).unwrap_or(HeaderValue::from_static("application/octet-stream"))
}
