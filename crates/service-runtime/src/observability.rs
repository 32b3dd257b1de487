//! Metrics (SPEC §8), exported as Prometheus text on `GET /metrics`.
//!
//! Every metric name is a constant here. Counters and histograms are recorded where
//! things happen (HTTP middleware, relay, consumer, services); gauges that cost a query
//! (outbox backlog, consumer-group lag) are refreshed by a periodic job, not per scrape.
//! The recorder is process-wide (CRATES.md trap 6): it is installed once, and several
//! services in one test process share it, told apart by their labels.

use std::sync::OnceLock;
use std::time::Duration;

use crate::redis_conn::RedisConnection;
use axum::http::header;
use axum::response::IntoResponse;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use sqlx::PgPool;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// HTTP requests, by `method`, `route` and `status`.
pub const HTTP_REQUESTS: &str = "http_requests_total";
/// HTTP request latency in seconds, by `method`, `route` and `status`.
pub const HTTP_DURATION: &str = "http_request_duration_seconds";
/// Connections answered 503 and closed because `HTTP_MAX_CONNECTIONS` were open.
pub const HTTP_CONNECTIONS_REFUSED: &str = "http_connections_refused_total";
/// Events written to a stream by the relay, by `stream` and `event_type`.
pub const EVENTS_PUBLISHED: &str = "events_published_total";
/// Events handled, by `stream`, `event_type` and `result` (`applied` or `duplicate`).
pub const EVENTS_CONSUMED: &str = "events_consumed_total";
/// Entries acked without handling, by `stream` and `reason` (`unknown_type`, `deleted`).
pub const EVENTS_SKIPPED: &str = "events_skipped_total";
/// Handling attempts that failed and will be retried, by `stream` and `event_type`.
pub const EVENTS_FAILED: &str = "events_failed_total";
/// Entries moved to the dead-letter stream, by `stream` and `cause`: `undecodable`,
/// `invalid_content` (decodes but fails the content checks: forged or corrupted),
/// `rejected` (its handler refused it: it contradicts what the service knows) or
/// `exhausted` (failed on `MAX_DELIVERIES` deliveries).
pub const EVENTS_DEAD_LETTERED: &str = "events_dead_lettered_total";
/// Waits before a retry, by `loop`: `consumer` (a read or group failed), `event_in_place`
/// (an event retried in place through an outage or contention), `relay` (a publish or its
/// mark failed).
pub const RETRIES: &str = "retries_total";
/// Events of a newer schema version than the build reads, parked, by `stream` and
/// `schema_version` (a rolling upgrade under way).
pub const EVENTS_PARKED: &str = "events_parked_total";
/// Parked events waiting for a build that reads them, by `stream` (measured each time a
/// consumer comes round to reclaim).
pub const EVENTS_PARKED_NOW: &str = "events_parked";
/// Parked events put back on their stream by a build that reads them, by `stream`.
pub const EVENTS_UNPARKED: &str = "events_unparked_total";
/// Entries reclaimed from consumers that stopped answering, by `stream`.
pub const ENTRIES_RECLAIMED: &str = "stream_entries_reclaimed_total";
/// Outbox rows not yet published.
pub const OUTBOX_BACKLOG: &str = "outbox_backlog";
/// Age in seconds of the oldest unpublished outbox row (0 when there is none).
pub const OUTBOX_OLDEST_AGE: &str = "outbox_oldest_unpublished_age_seconds";
/// Entries of the consumed stream not yet delivered to the group, by `stream`, `group`.
pub const GROUP_LAG: &str = "consumer_group_lag";
/// Entries delivered to the group and not acked, by `stream`, `group`.
pub const GROUP_PENDING: &str = "consumer_group_pending";
/// Entries in a stream, by `stream` (the consumed one and its dead letters).
pub const STREAM_LENGTH: &str = "stream_length";
/// Entries trimmed from a stream by retention, by `stream`.
pub const STREAM_ENTRIES_TRIMMED: &str = "stream_entries_trimmed_total";
/// Idle consumers removed from the group, by `stream`.
pub const CONSUMERS_DELETED: &str = "stream_consumers_deleted_total";
/// Rows deleted by retention, by `table` (`outbox`, `inbox`, `idempotency_keys`).
pub const ROWS_PRUNED: &str = "rows_pruned_total";
/// Rows a periodic re-asking loop looked at in a round (each round is bounded), by `job`.
pub const REASK_EXAMINED: &str = "reask_examined_total";
/// Events published again by a re-asking loop, by `job` (the loop's name: here
/// `reconciler`, a question asked again, and `answers`, an answer given again) and
/// `event_type`.
pub const REASK_REPUBLISHED: &str = "reask_republished_total";
/// Entries whose signature does not stand, by `stream` and `reason` (`unsigned`,
/// `unknown_key`, `bad_signature`, `malformed`): dead-lettered as forged with
/// `SIGNATURES=require`, applied and counted with `report`.
pub const EVENTS_UNVERIFIED: &str = "events_unverified_total";

/// How often the gauges that cost a query are refreshed.
pub const GAUGE_REFRESH: Duration = Duration::from_secs(5);

static RECORDER: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// The process's Prometheus recorder, installed on first use. `None` if another
/// recorder was installed first.
pub fn recorder() -> Option<&'static PrometheusHandle> {
    RECORDER
        .get_or_init(|| {
            let latency = [
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ];
            PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), &latency)
                .ok()?
                .install_recorder()
                .ok()
        })
        .as_ref()
}

/// `GET /metrics`.
pub fn router<S: Clone + Send + Sync + 'static>() -> OpenApiRouter<S> {
    OpenApiRouter::new().routes(routes!(metrics_text))
}

/// Prometheus metrics of this process, in the text exposition format.
#[utoipa::path(get, path = "/metrics", tag = "observability",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain", body = String)))]
async fn metrics_text() -> impl IntoResponse {
    let body = recorder().map(PrometheusHandle::render).unwrap_or_default();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body)
}

/// Refreshes the outbox gauges. Returns 0 (nothing "done" worth logging).
pub async fn refresh_outbox_gauges(pool: &PgPool) -> anyhow::Result<u64> {
    let (backlog, oldest): (i64, f64) = sqlx::query_as(
        "SELECT count(*), COALESCE(EXTRACT(EPOCH FROM now() - min(queued_at)), 0)::float8
         FROM outbox_pending",
    )
    .fetch_one(pool)
    .await?;
    metrics::gauge!(OUTBOX_BACKLOG).set(backlog as f64);
    metrics::gauge!(OUTBOX_OLDEST_AGE).set(oldest);
    if let Some(handle) = recorder() {
        handle.run_upkeep();
    }
    Ok(0)
}

/// Refreshes lag and pending of `group` on `stream` from `XINFO GROUPS`.
pub async fn refresh_group_gauges(
    mut redis: RedisConnection,
    stream: &str,
    group: &str,
) -> anyhow::Result<u64> {
    let groups: Vec<std::collections::HashMap<String, redis::Value>> = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(stream)
        .query_async(&mut redis)
        .await?;
    let Some(info) = groups.iter().find(
        |g| matches!(g.get("name"), Some(redis::Value::BulkString(n)) if n == group.as_bytes()),
    ) else {
        return Ok(0);
    };
    let number = |key: &str| match info.get(key) {
        Some(redis::Value::Int(n)) => Some(*n as f64),
        _ => None,
    };
    let labels = [("stream", stream.to_owned()), ("group", group.to_owned())];
    if let Some(pending) = number("pending") {
        metrics::gauge!(GROUP_PENDING, &labels).set(pending);
    }
    if let Some(lag) = number("lag") {
        metrics::gauge!(GROUP_LAG, &labels).set(lag);
    }
    Ok(0)
}
