//! Moderation by people: the review queue of held messages, the audit log, and the company
//! administrator's moderation tools (rule reload, lifting penalties, signing a user out).

use super::{ApiJson, Caller};
use crate::error::{ApiError, ErrorBody};
use crate::post_commit::Audit;
use crate::state::{now_ms, AppState};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use protocol::{ConvId, ErrorCode, EventKind, GroupId, ServerFrame, UserId};
use router::{Control, Envelope};
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// The routes of this module.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(review_list))
        .routes(routes!(review_approve))
        .routes(routes!(review_reject))
        .routes(routes!(audit))
        .routes(routes!(reload_rules))
        .routes(routes!(lift))
        .routes(routes!(disconnect))
}

/// `?conv=` of the review list.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ConvQuery {
    conv: String,
}

/// Body of approve and reject.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReviewDecision {
    /// The conversation the message was sent to.
    conv: String,
    /// The review id (the `id` of the sender's `ack`).
    id: String,
}

pub(crate) fn parse_conv(s: &str) -> Result<ConvId, ApiError> {
    ConvId::parse(s).map_err(|e| ApiError::bad_request(format!("conv: {e}")))
}

/// Messages held by the moderation filter in a conversation (its admins, company admins).
#[utoipa::path(get, path = "/v1/review", tag = "review", params(ConvQuery), security(("bearer" = [])),
    responses((status = 200, body = [store::HeldMessage]), (status = 400, body = ErrorBody), (status = 401, description = "No valid token", body = ErrorBody), (status = 403, description = "Not allowed", body = ErrorBody)))]
async fn review_list(
    State(state): State<AppState>,
    Caller(me): Caller,
    Query(q): axum::extract::Query<ConvQuery>,
) -> Result<Json<Vec<store::HeldMessage>>, ApiError> {
    let conv = parse_conv(&q.conv)?;
    crate::policy::require_reviewer(&state, &me, &conv).await?;
    Ok(Json(state.review.held(&conv).await?))
}

/// The answer to an approval.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Approved {
    conv: ConvId,
    seq: protocol::Seq,
    id: protocol::MessageId,
}

/// Approves a held message: it is stored with a fresh seq and delivered.
#[utoipa::path(post, path = "/v1/review/approve", tag = "review", request_body = ReviewDecision, security(("bearer" = [])),
    responses((status = 200, body = Approved), (status = 404, body = ErrorBody), (status = 401, description = "No valid token", body = ErrorBody), (status = 403, description = "Not allowed", body = ErrorBody)))]
async fn review_approve(
    State(state): State<AppState>,
    Caller(me): Caller,
    ApiJson(d): ApiJson<ReviewDecision>,
) -> Result<Json<Approved>, ApiError> {
    let conv = parse_conv(&d.conv)?;
    crate::policy::require_reviewer(&state, &me, &conv).await?;
    let held =
        state.review.take_held(&conv, &d.id).await?.ok_or_else(|| {
            ApiError::not_found(format!("no message {} waiting for review", d.id))
        })?;
    let audience = match conv.kind() {
        protocol::ConvKind::Direct(a, b) => vec![UserId::new(a), UserId::new(b)],
        protocol::ConvKind::Group(g) => state
            .group(&GroupId::new(g))
            .await?
            .members
            .as_ref()
            .clone(),
    };
    let participants = if conv.group_id().is_some() {
        Vec::new()
    } else {
        audience.clone()
    };
    let id = protocol::MessageId::new(uuid::Uuid::now_v7().to_string());
    if let Some(a) = &held.attachment {
        // The share is recorded only now: a held file is not readable by the members before.
        crate::retention::record_share(&state, &a.file_id, &conv, &id).await?;
    }
    let appended = crate::messages::append_and_deliver(
        &state,
        store::NewMessage {
            conv: conv.clone(),
            from: held.from.clone(),
            client_msg_id: held.client_msg_id.clone(),
            id,
            kind: held.kind,
            body: held.body.clone(),
            attachment: held.attachment.clone(),
            mentions: held.mentions.clone(),
            reply_to: held.reply_to,
            ts: now_ms(),
            participants,
            moderation: Some("review".into()),
        },
        audience,
        None,
        None,
    )
    .await?;
    let message = appended.message;
    decided(
        &state,
        me,
        &conv,
        held,
        EventKind::ReviewApproved,
        Some(message.seq),
    )
    .await;
    Ok(Json(Approved {
        conv,
        seq: message.seq,
        id: message.id,
    }))
}

/// Rejects a held message; its sender is told.
#[utoipa::path(post, path = "/v1/review/reject", tag = "review", request_body = ReviewDecision, security(("bearer" = [])),
    responses((status = 204, description = "Rejected"), (status = 404, body = ErrorBody), (status = 401, description = "No valid token", body = ErrorBody), (status = 403, description = "Not allowed", body = ErrorBody)))]
async fn review_reject(
    State(state): State<AppState>,
    Caller(me): Caller,
    ApiJson(d): ApiJson<ReviewDecision>,
) -> Result<StatusCode, ApiError> {
    let conv = parse_conv(&d.conv)?;
    crate::policy::require_reviewer(&state, &me, &conv).await?;
    let held =
        state.review.take_held(&conv, &d.id).await?.ok_or_else(|| {
            ApiError::not_found(format!("no message {} waiting for review", d.id))
        })?;
    decided(&state, me, &conv, held, EventKind::ReviewRejected, None).await;
    Ok(StatusCode::NO_CONTENT)
}

/// Tells the sender of a held message what the reviewer decided, and records it.
async fn decided(
    state: &AppState,
    reviewer: UserId,
    conv: &ConvId,
    held: store::HeldMessage,
    event: EventKind,
    seq: Option<protocol::Seq>,
) {
    let frame = ServerFrame::Event {
        event,
        conv: Some(conv.clone()),
        actor: Some(reviewer.clone()),
        user: Some(held.from.clone()),
        seq,
        until: None,
        detail: Some(held.client_msg_id.clone()),
    };
    crate::post_commit::event(&*state.router, vec![held.from.clone()], frame).await;
    let action = match event {
        EventKind::ReviewApproved => "review.approve",
        _ => "review.reject",
    };
    state
        .audit(
            Audit::new(now_ms(), &reviewer, action)
                .conv(conv.clone())
                .target(held.from)
                .message(held.id)
                .verdict(held.rule, held.category)
                .build(),
        )
        .await;
}

fn require_company_admin(state: &AppState, me: &UserId) -> Result<(), ApiError> {
    if state.is_company_admin(me) {
        Ok(())
    } else {
        Err(ApiError::forbidden(
            "only company administrators may do this",
        ))
    }
}

/// `GET /v1/audit` filters, as query parameters.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditParams {
    user: Option<String>,
    group: Option<String>,
    conv: Option<String>,
    category: Option<String>,
    since: Option<u64>,
    until: Option<u64>,
    limit: Option<usize>,
}

/// The audit log: moderation verdicts and admin actions, newest first (company admins).
#[utoipa::path(get, path = "/v1/audit", tag = "audit", params(AuditParams), security(("bearer" = [])),
    responses((status = 200, body = [store::AuditEntry]), (status = 401, description = "No valid token", body = ErrorBody), (status = 403, description = "Not allowed", body = ErrorBody)))]
async fn audit(
    State(state): State<AppState>,
    Caller(me): Caller,
    Query(p): axum::extract::Query<AuditParams>,
) -> Result<Json<Vec<store::AuditEntry>>, ApiError> {
    require_company_admin(&state, &me)?;
    let conv = match (p.conv, p.group) {
        (Some(c), _) => Some(parse_conv(&c)?),
        (None, Some(g)) => Some(ConvId::group(&GroupId::new(g))),
        (None, None) => None,
    };
    let q = store::AuditQuery {
        user: p.user.map(UserId::new),
        conv,
        category: p.category,
        since: p.since,
        until: p.until,
        limit: p.limit,
    };
    Ok(Json(state.review.audit_query(&q).await?))
}

/// Reloads the moderation rules from disk (company admins).
#[utoipa::path(post, path = "/v1/admin/moderation/reload", tag = "admin", security(("bearer" = [])),
    responses((status = 200, description = "Reloaded"), (status = 400, description = "Rules rejected", body = ErrorBody), (status = 401, description = "No valid token", body = ErrorBody), (status = 403, description = "Not allowed", body = ErrorBody)))]
async fn reload_rules(
    State(state): State<AppState>,
    Caller(me): Caller,
) -> Result<Json<serde_json::Value>, ApiError> {
    require_company_admin(&state, &me)?;
    let m = state.moderation.clone();
    let result = tokio::task::spawn_blocking(move || m.reload())
        .await
        .map_err(|e| ApiError::new(ErrorCode::Internal, format!("reload task: {e}")))?;
    match result {
        Ok(stats) => {
            state
                .audit(Audit::new(now_ms(), &me, "moderation.reload").build())
                .await;
            Ok(Json(
                serde_json::json!({"status": "reloaded", "stats": format!("{stats:?}")}),
            ))
        }
        Err(e) => Err(ApiError::bad_request(format!(
            "rules rejected, the previous rules stay in force: {e}"
        ))),
    }
}

/// Lifts a user's moderation penalty (mute or suspension) (company admins).
#[utoipa::path(post, path = "/v1/admin/users/{user}/lift", tag = "admin", security(("bearer" = [])),
    params(("user" = String, Path, description = "User id")),
    responses((status = 204, description = "Lifted"), (status = 400, body = ErrorBody), (status = 401, description = "No valid token", body = ErrorBody), (status = 403, description = "Not allowed", body = ErrorBody)))]
async fn lift(
    State(state): State<AppState>,
    Caller(me): Caller,
    Path(user): Path<String>,
) -> Result<StatusCode, ApiError> {
    require_company_admin(&state, &me)?;
    let user = UserId::new(user);
    if !user.is_valid() {
        return Err(ApiError::bad_request("user: not a user id"));
    }
    state
        .membership
        .penalties
        .lift(&*state.router, &user)
        .await?;
    state.moderation.lift(&user);
    state
        .audit(
            Audit::new(now_ms(), &me, "moderation.lift")
                .target(user.clone())
                .build(),
        )
        .await;
    let frame = ServerFrame::Event {
        event: EventKind::Unmuted,
        conv: None,
        actor: None,
        user: Some(user.clone()),
        seq: None,
        until: None,
        detail: None,
    };
    crate::post_commit::event(&*state.router, vec![user], frame).await;
    Ok(StatusCode::NO_CONTENT)
}

/// `?revoke=` of a disconnect.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DisconnectQuery {
    /// Also revoke every token of the user issued up to now (they must sign in again; with an
    /// identity provider, get a new token). Without it the clients may reconnect.
    #[serde(default)]
    revoke: bool,
}

/// Closes every session of a user on every node (company admins); with `?revoke=true` also
/// revokes every token issued to them up to now, directory account or not.
#[utoipa::path(post, path = "/v1/admin/users/{user}/disconnect", tag = "admin", params(("user" = String, Path, description = "User id"), DisconnectQuery),
    security(("bearer" = [])),
    responses((status = 204, description = "Signed out"), (status = 400, body = ErrorBody), (status = 401, description = "No valid token", body = ErrorBody), (status = 403, description = "Not allowed", body = ErrorBody)))]
async fn disconnect(
    State(state): State<AppState>,
    Caller(me): Caller,
    Path(user): Path<String>,
    Query(q): Query<DisconnectQuery>,
) -> Result<StatusCode, ApiError> {
    require_company_admin(&state, &me)?;
    let user = UserId::new(user);
    if q.revoke {
        if !user.is_valid() {
            return Err(ApiError::bad_request("user: not a user id"));
        }
        super::directory::revoke_all_tokens(&state, &user).await?;
    }
    let control = Control::Disconnect {
        code: protocol::close::SIGNED_OUT,
        reason: "signed out by an administrator".into(),
        session: None,
    };
    if q.revoke {
        // The revocation is stored: the disconnect is a best-effort follow-up.
        crate::post_commit::control(&*state.router, vec![user.clone()], control).await;
    } else {
        // Nothing is stored: the disconnect is the whole request, so its failure is the
        // request's.
        state
            .router
            .publish(Envelope::control(vec![user.clone()], control))
            .await?;
    }
    let mut entry = Audit::new(now_ms(), &me, "user.disconnect").target(user);
    if q.revoke {
        entry = entry.detail("tokens revoked");
    }
    state.audit(entry.build()).await;
    Ok(StatusCode::NO_CONTENT)
}
