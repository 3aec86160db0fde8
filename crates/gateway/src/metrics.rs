//! Prometheus metrics: every metric name, its registration and its recording, in one place.
//!
//! Call sites elsewhere are one line each (`crate::metrics::fanout_delivery()`), so the
//! instrumentation survives code moving between modules. The recorder is the `metrics`
//! facade with `metrics-exporter-prometheus`; labelled series on hot paths (frames, send
//! outcomes, deliveries, sessions) are registered once when the node starts ([`install`]) and
//! kept as handles, so recording is an atomic add or a lock-free histogram push, with no
//! label allocation or registry lookup per call. Rare events (moderation verdicts, budget
//! refusals) go through the facade's macros.
//!
//! `/metrics` is served on its own listener (`metrics.listen`, loopback by default: chat
//! clients cannot reach it), or, with `metrics.listen = ""`, on the main listener to company
//! administrators only. The list of metrics is in docs/OPERATIONS.md.

use crate::config::MetricsConfig;
use crate::error::ApiError;
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics::{Counter, Gauge, Histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use protocol::{ClientFrame, Codec, ErrorCode, ServerFrame};
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Latency buckets, seconds: 100 µs to 10 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];
/// Size buckets (batch sizes, queue depths).
const SIZE_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

static RECORDER: OnceLock<PrometheusHandle> = OnceLock::new();
static HANDLES: OnceLock<Handles> = OnceLock::new();

/// Installs the process-wide recorder (once; later calls return the same handle) and
/// registers the pre-labelled series.
pub fn install() -> PrometheusHandle {
    let handle = RECORDER.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
            .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_size".into()), SIZE_BUCKETS))
            .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_depth".into()), SIZE_BUCKETS));
        let recorder = match builder {
            Ok(b) => b.build_recorder(),
            // The bucket lists are constants and not empty: this cannot happen.
            Err(e) => {
                tracing::warn!(error = %e, "metric buckets refused; histograms become summaries");
                PrometheusBuilder::new().build_recorder()
            }
        };
        let handle = recorder.handle();
        if let Err(e) = metrics::set_global_recorder(recorder) {
            tracing::warn!(error = %e, "a metrics recorder was already installed");
        }
        describe();
        handle
    });
    let _ = HANDLES.get_or_init(Handles::register);
    handle.clone()
}

/// Starts serving `/metrics`: on its own listener when `metrics.listen` is set (returns the
/// bound address), else nothing here (the main listener serves it, see `api::operations::metrics_routes`). Also
/// starts the recorder's upkeep task.
pub async fn start(
    cfg: &MetricsConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<Option<SocketAddr>> {
    let handle = install();
    {
        let (handle, shutdown) = (handle.clone(), shutdown.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tokio::select! {
                    _ = tick.tick() => handle.run_upkeep(),
                    _ = shutdown.cancelled() => return,
                }
            }
        });
    }
    if cfg.listen.is_empty() {
        return Ok(None);
    }
    let listener = tokio::net::TcpListener::bind(&cfg.listen)
        .await
        .map_err(|e| anyhow::anyhow!("binding metrics.listen {}: {e}", cfg.listen))?;
    let addr = listener.local_addr()?;
    let app = axum::Router::new().route(
        "/metrics",
        get(move || {
            let handle = handle.clone();
            async move { exposition(&handle) }
        }),
    );
    tokio::spawn(async move {
        let stop = shutdown.clone();
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await
        {
            tracing::warn!(error = %e, "metrics listener failed");
        }
    });
    Ok(Some(addr))
}

/// The Prometheus text exposition of every metric, as an HTTP response.
pub fn exposition(handle: &PrometheusHandle) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        handle.render(),
    )
        .into_response()
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_gauge!(
        "chatd_sessions",
        "WebSocket sessions open on this node, by codec"
    );
    describe_counter!(
        "chatd_sessions_opened_total",
        "WebSocket sessions opened, by codec"
    );
    describe_counter!(
        "chatd_session_closes_total",
        "Sessions closed, by close code"
    );
    describe_counter!("chatd_frames_in_total", "Client frames received, by type");
    describe_counter!(
        "chatd_frames_out_total",
        "Frames written to sessions, by codec"
    );
    describe_histogram!(
        "chatd_command_duration_seconds",
        Unit::Seconds,
        "Time to handle one client frame, by type"
    );
    describe_counter!("chatd_send_outcomes_total", "`send` results, by outcome");
    describe_histogram!(
        "chatd_send_ack_seconds",
        Unit::Seconds,
        "From a `send` being read to its ack being built (durable append included)"
    );
    describe_counter!(
        "chatd_fanout_deliveries_total",
        "Frames queued to sessions by fan-out"
    );
    describe_counter!(
        "chatd_slow_consumer_closes_total",
        "Sessions closed as slow consumers, by reason"
    );
    describe_histogram!(
        "chatd_outbound_queue_depth",
        "Frames a session writer found queued at each batch"
    );
    describe_counter!(
        "chatd_router_published_total",
        "Envelopes handed to the router by the delivery pump, by result"
    );
    describe_histogram!(
        "chatd_router_publish_seconds",
        Unit::Seconds,
        "Time of one router publish"
    );
    describe_counter!(
        "chatd_router_received_total",
        "Envelopes received from the router, by payload"
    );
    describe_histogram!(
        "chatd_router_lag_seconds",
        Unit::Seconds,
        "From a message's store time to its arrival at this node's hub through the router (clocks of two nodes in cluster mode)"
    );
    describe_counter!(
        "chatd_moderation_verdicts_total",
        "Moderation verdicts on sends, by action and category"
    );
    describe_counter!("chatd_logins_total", "`POST /v1/login` results");
    describe_counter!(
        "chatd_budget_refusals_total",
        "Requests refused by a budget"
    );
    describe_counter!(
        "chatd_post_commit_failures_total",
        "Follow-ups of stored changes that were lost (logged, never failing the request), by kind"
    );
    describe_histogram!(
        "chatd_store_append_batch_size",
        "Jobs per embedded store write batch"
    );
    describe_histogram!(
        "chatd_store_commit_seconds",
        Unit::Seconds,
        "Embedded store: time to write and sync one batch"
    );
    describe_gauge!(
        "chatd_backup_last_success_timestamp_seconds",
        "Unix time of the last successful backup"
    );
    describe_gauge!(
        "chatd_retention_last_success_timestamp_seconds",
        "Unix time of the last successful retention pass"
    );
    describe_counter!(
        "chatd_retention_deleted_total",
        "What retention passes deleted, by kind (messages, attachments, files)"
    );
    describe_gauge!(
        "chatd_compliance_export_last_success_timestamp_seconds",
        "Unix time of the last compliance export job this node finished"
    );
    describe_counter!(
        "chatd_leavers_erased_total",
        "Accounts of leavers the erasure job anonymised"
    );
}

/// The result of one `send`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Appended and acknowledged.
    Acked,
    /// A retry of an earlier send (same `client_msg_id`).
    Duplicate,
    /// Refused by the moderation filter.
    Blocked,
    /// Delivered with a masked body.
    Masked,
    /// Held for review or for a group's approval (no seq yet).
    Held,
    /// Refused by the send rate limit.
    RateLimited,
    /// Any other error reply.
    Error,
}

const OUTCOMES: [(Outcome, &str); 7] = [
    (Outcome::Acked, "acked"),
    (Outcome::Duplicate, "duplicate"),
    (Outcome::Blocked, "blocked"),
    (Outcome::Masked, "masked"),
    (Outcome::Held, "held"),
    (Outcome::RateLimited, "rate_limited"),
    (Outcome::Error, "error"),
];

/// Close codes with their own series; others count as `other`.
const CLOSE_CODES: [u16; 11] = [
    1000, 1001, 1002, 1007, 1009, 1011, 4000, 4001, 4002, 4003, 4004,
];

/// Why a session was closed as a slow consumer.
#[derive(Debug, Clone, Copy)]
pub enum SlowReason {
    /// Its outbound queue was full.
    QueueFull,
    /// A write to its socket did not finish in time.
    WriteTimeout,
}

/// Result of a sign-in.
#[derive(Debug, Clone, Copy)]
pub enum Login {
    /// A token was issued.
    Ok,
    /// Wrong user id or password, or an inactive account.
    Refused,
    /// Too many attempts.
    RateLimited,
    /// Anything else (bad request, store error).
    Error,
}

struct Handles {
    sessions: [Gauge; 2],
    opened: [Counter; 2],
    closes: Vec<Counter>,
    frames_in: Vec<Counter>,
    frames_in_invalid: Counter,
    reads_paused: Counter,
    command: Vec<Histogram>,
    frames_out: [Counter; 2],
    queue_depth: Histogram,
    outcomes: Vec<Counter>,
    send_ack: Histogram,
    fanout: Counter,
    slow: [Counter; 2],
    published: [Counter; 2],
    publish_time: Histogram,
    received: [Counter; 2],
    router_lag: Histogram,
    verdict_allow: Counter,
    logins: [Counter; 4],
}

impl Handles {
    fn register() -> Self {
        use metrics::{counter, gauge, histogram};
        let codecs = ["json", "msgpack"];
        Self {
            sessions: codecs.map(|c| gauge!("chatd_sessions", "codec" => c)),
            opened: codecs.map(|c| counter!("chatd_sessions_opened_total", "codec" => c)),
            closes: CLOSE_CODES
                .iter()
                .map(|c| counter!("chatd_session_closes_total", "code" => c.to_string()))
                .chain([counter!("chatd_session_closes_total", "code" => "other")])
                .collect(),
            frames_in: ClientFrame::TYPES
                .iter()
                .map(|t| counter!("chatd_frames_in_total", "type" => *t))
                .collect(),
            frames_in_invalid: counter!("chatd_frames_in_total", "type" => "invalid"),
            reads_paused: counter!("chatd_session_reads_paused_total"),
            command: ClientFrame::TYPES
                .iter()
                .map(|t| histogram!("chatd_command_duration_seconds", "type" => *t))
                .collect(),
            frames_out: codecs.map(|c| counter!("chatd_frames_out_total", "codec" => c)),
            queue_depth: histogram!("chatd_outbound_queue_depth"),
            outcomes: OUTCOMES
                .iter()
                .map(|(_, name)| counter!("chatd_send_outcomes_total", "outcome" => *name))
                .collect(),
            send_ack: histogram!("chatd_send_ack_seconds"),
            fanout: counter!("chatd_fanout_deliveries_total"),
            slow: ["queue_full", "write_timeout"]
                .map(|r| counter!("chatd_slow_consumer_closes_total", "reason" => r)),
            published: ["ok", "error"]
                .map(|r| counter!("chatd_router_published_total", "result" => r)),
            publish_time: histogram!("chatd_router_publish_seconds"),
            received: ["frame", "control"]
                .map(|p| counter!("chatd_router_received_total", "payload" => p)),
            router_lag: histogram!("chatd_router_lag_seconds"),
            verdict_allow: counter!(
                "chatd_moderation_verdicts_total",
                "action" => "allow",
                "category" => "none"
            ),
            logins: ["ok", "refused", "rate_limited", "error"]
                .map(|r| counter!("chatd_logins_total", "result" => r)),
        }
    }
}

/// The handles, or `None` before [`install`] (unit tests): recording is then skipped.
fn handles() -> Option<&'static Handles> {
    HANDLES.get()
}

fn codec_index(codec: Codec) -> usize {
    usize::from(!codec.is_text())
}

/// The index of a frame's type in [`ClientFrame::TYPES`] (exhaustive: a new frame type must
/// be added here).
fn frame_index(frame: &ClientFrame) -> usize {
    match frame {
        ClientFrame::Send(_) => 0,
        ClientFrame::History { .. } => 1,
        ClientFrame::Sync { .. } => 2,
        ClientFrame::Conversations { .. } => 3,
        ClientFrame::Read { .. } => 4,
        ClientFrame::Typing { .. } => 5,
        ClientFrame::Recall { .. } => 6,
        ClientFrame::Ping { .. } => 7,
    }
}

/// A session was registered.
pub fn session_opened(codec: Codec) {
    if let Some(h) = handles() {
        h.sessions[codec_index(codec)].increment(1.0);
        h.opened[codec_index(codec)].increment(1);
    }
}

/// A registered session ended, with its close code (`None`: the client closed).
pub fn session_closed(codec: Codec, code: Option<u16>) {
    if let Some(h) = handles() {
        h.sessions[codec_index(codec)].decrement(1.0);
        let code = code.unwrap_or(1000);
        let i = CLOSE_CODES
            .iter()
            .position(|c| *c == code)
            .unwrap_or(CLOSE_CODES.len());
        if let Some(c) = h.closes.get(i) {
            c.increment(1);
        }
    }
}

/// A frame that could not be decoded.
pub fn frame_in_invalid() {
    if let Some(h) = handles() {
        h.frames_in_invalid.increment(1);
    }
}

/// A session spent its read budget (`limits.frames_per_sec`): its socket is not read until
/// the budget refills.
pub fn session_reads_paused() {
    if let Some(h) = handles() {
        h.reads_paused.increment(1);
    }
}

/// Counts a client frame and times its handling until the returned guard drops.
pub fn command(frame: &ClientFrame) -> CommandTimer {
    command_at(frame_index(frame))
}

/// [`command`] for a `send` frame already taken apart (the session's pipelined sends).
pub fn send_command() -> CommandTimer {
    command_at(0)
}

fn command_at(index: usize) -> CommandTimer {
    if let Some(c) = handles().and_then(|h| h.frames_in.get(index)) {
        c.increment(1);
    }
    CommandTimer {
        index,
        started: Instant::now(),
    }
}

/// Records a command's duration when dropped (see [`command`]).
pub struct CommandTimer {
    index: usize,
    started: Instant,
}

impl Drop for CommandTimer {
    fn drop(&mut self) {
        if let Some(h) = handles().and_then(|h| h.command.get(self.index)) {
            h.record(self.started.elapsed().as_secs_f64());
        }
    }
}

/// Runs a `send` and records its outcome and send→ack latency.
pub async fn timed_send<F>(send: F) -> Result<Option<ServerFrame>, ApiError>
where
    F: std::future::Future<Output = Result<Option<ServerFrame>, ApiError>>,
{
    let started = Instant::now();
    let result = send.await;
    if let Some(h) = handles() {
        let outcome = classify(&result);
        if outcome != Outcome::Error {
            h.send_ack.record(started.elapsed().as_secs_f64());
        }
        if let Some(i) = OUTCOMES.iter().position(|(o, _)| *o == outcome) {
            h.outcomes[i].increment(1);
        }
    }
    result
}

fn classify(result: &Result<Option<ServerFrame>, ApiError>) -> Outcome {
    match result {
        Ok(Some(ServerFrame::Ack {
            duplicate: true, ..
        })) => Outcome::Duplicate,
        Ok(Some(ServerFrame::Ack { seq: None, .. })) => Outcome::Held,
        Ok(Some(ServerFrame::Ack {
            moderation: Some(note),
            ..
        })) if note.action == "mask" => Outcome::Masked,
        Ok(_) => Outcome::Acked,
        Err(e) => match e.code {
            ErrorCode::Blocked => Outcome::Blocked,
            ErrorCode::RateLimited => Outcome::RateLimited,
            _ => Outcome::Error,
        },
    }
}

/// One frame queued to a session by fan-out.
pub fn fanout_delivery() {
    if let Some(h) = handles() {
        h.fanout.increment(1);
    }
}

/// A session was closed as a slow consumer.
pub fn slow_consumer(reason: SlowReason) {
    if let Some(h) = handles() {
        h.slow[reason as usize].increment(1);
    }
}

/// A session writer took `n` frames, with `depth` more still queued.
pub fn frames_out(codec: Codec, n: usize, depth: usize) {
    if let Some(h) = handles() {
        h.frames_out[codec_index(codec)].increment(n as u64);
        h.queue_depth.record(depth as f64);
    }
}

/// The delivery pump published one envelope (`ok`) or failed to, taking `since.elapsed()`.
pub fn router_published(ok: bool, since: Instant) {
    if let Some(h) = handles() {
        h.published[usize::from(!ok)].increment(1);
        h.publish_time.record(since.elapsed().as_secs_f64());
    }
}

/// The router delivered an envelope to this node (`frame`: a frame, else a control message).
pub fn router_received(frame: bool) {
    if let Some(h) = handles() {
        h.received[usize::from(!frame)].increment(1);
    }
}

/// A message stored at `stored_ms` (its `ts`) reached this node's hub through the router.
pub fn router_lag(stored_ms: u64) {
    if let Some(h) = handles() {
        let lag_ms = crate::clock::now_ms().saturating_sub(stored_ms);
        h.router_lag.record(lag_ms as f64 / 1000.0);
    }
}

/// A moderation verdict on a send (`action` as in the ack's note).
pub fn moderation_verdict(action: &'static str, category: Option<&str>) {
    if action == "allow" {
        if let Some(h) = handles() {
            h.verdict_allow.increment(1);
        }
        return;
    }
    // Rare (a rule matched): the facade's lookup is fine here. Categories come from the
    // operator's rule files, so their number is bounded.
    metrics::counter!(
        "chatd_moderation_verdicts_total",
        "action" => action,
        "category" => category.unwrap_or("none").to_owned()
    )
    .increment(1);
}

/// A sign-in result.
pub fn login(result: Login) {
    if let Some(h) = handles() {
        h.logins[result as usize].increment(1);
    }
}

/// A request refused by the named budget (`reply_bytes`, `sessions`, `pending_connections`,
/// `draining`).
pub fn budget_refused(budget: &'static str) {
    metrics::counter!("chatd_budget_refusals_total", "budget" => budget).increment(1);
}

/// A follow-up of a stored change (audit entry, event, control message) was lost; `kind` is
/// `audit`, `event` or `control` (see [`crate::post_commit`]).
pub fn post_commit_failure(kind: &'static str) {
    metrics::counter!("chatd_post_commit_failures_total", "kind" => kind).increment(1);
}

/// A backup finished successfully now.
pub fn backup_succeeded() {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    metrics::gauge!("chatd_backup_last_success_timestamp_seconds").set(now);
}

/// A retention pass finished successfully now (see `crate::retention`).
pub fn retention_succeeded() {
    let now = crate::clock::now_ms() as f64 / 1000.0;
    metrics::gauge!("chatd_retention_last_success_timestamp_seconds").set(now);
}

/// A compliance export job finished successfully now (see `crate::compliance`).
pub fn compliance_export_succeeded() {
    let now = crate::clock::now_ms() as f64 / 1000.0;
    metrics::gauge!("chatd_compliance_export_last_success_timestamp_seconds").set(now);
}

/// The leavers' erasure job anonymised one account (see `crate::leavers`).
pub fn leaver_erased() {
    metrics::counter!("chatd_leavers_erased_total").increment(1);
}

/// What a retention pass deleted.
pub fn retention_deleted(messages: u64, attachments: u64, files: u64) {
    metrics::counter!("chatd_retention_deleted_total", "kind" => "messages").increment(messages);
    metrics::counter!("chatd_retention_deleted_total", "kind" => "attachments")
        .increment(attachments);
    metrics::counter!("chatd_retention_deleted_total", "kind" => "files").increment(files);
}

/// Middleware: counts `POST /v1/login` results by status.
pub async fn http_layer(req: Request, next: Next) -> Response {
    let login = req.uri().path() == "/v1/login";
    let response = next.run(req).await;
    if login {
        let status = response.status().as_u16();
        login_status(status);
    }
    response
}

fn login_status(status: u16) {
    login(match status {
        200..=299 => Login::Ok,
        401 | 403 => Login::Refused,
        429 => Login::RateLimited,
        _ => Login::Error,
    });
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn every_frame_type_has_its_index() {
        assert_eq!(ClientFrame::TYPES.len(), 8);
        let ping = ClientFrame::Ping { rid: None };
        assert_eq!(ClientFrame::TYPES[frame_index(&ping)], ping.type_name());
    }

    #[test]
    fn rendered_names_follow_the_conventions() {
        let handle = install();
        session_opened(Codec::Json);
        session_closed(Codec::Json, Some(4000));
        fanout_delivery();
        login_status(401);
        let text = handle.render();
        assert!(
            text.contains("chatd_sessions_opened_total{codec=\"json\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("chatd_session_closes_total{code=\"4000\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("chatd_logins_total{result=\"refused\"} 1"),
            "{text}"
        );
        for line in text.lines().filter(|l| l.starts_with("chatd_")) {
            assert!(
                !line.contains(' ') || line.split(' ').count() == 2,
                "{line}"
            );
        }
    }
}
