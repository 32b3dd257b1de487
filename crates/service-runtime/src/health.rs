//! `GET /health/live` (the process answers and its loops come round, [`crate::liveness`]) and `GET /health/ready` (Postgres and Redis
//! reachable, every migration applied), SPEC §6.3. Readiness reports each dependency,
//! so an operator sees which one failed.

use std::time::Duration;

use crate::liveness::Liveness;
use crate::redis_conn::RedisConnection;
use crate::signatures::SignatureMode;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use sqlx::PgPool;
use sqlx::migrate::Migrator;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// How long each readiness check may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// What readiness checks.
#[derive(Clone)]
pub struct Readiness {
    pub pool: PgPool,
    pub redis: RedisConnection,
    pub migrator: &'static Migrator,
    /// Whether events are signed and verified (`SIGNATURES`), shown with the checks.
    pub signatures: SignatureMode,
}

/// Readiness, dependency by dependency.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Report {
    /// `ready` or `not_ready`.
    status: &'static str,
    checks: Checks,
    /// `require`, `report` or `off` (`SIGNATURES`): whether events are signed and verified.
    signatures: &'static str,
}

/// Each dependency: `ok`, `unavailable`, `timeout`, or (migrations) `pending`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Checks {
    postgres: &'static str,
    redis: &'static str,
    migrations: &'static str,
}

/// Liveness.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Live {
    /// `live`, or `stalled` when a loop that must make progress has not come round.
    status: &'static str,
    /// The loops that have not come round for longer than `LIVENESS_STALL_MS`, with the
    /// seconds since they last did.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    stalled: Vec<StalledLoop>,
}

/// A loop that has not come round.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct StalledLoop {
    /// `relay`, `consumer`, or `consumer of <stream>` in a service that consumes several.
    name: String,
    /// Seconds since it last came round.
    silent_seconds: u64,
}

/// The health routes.
pub fn router<S: Clone + Send + Sync + 'static>(
    readiness: Readiness,
    liveness: Liveness,
) -> OpenApiRouter<S> {
    OpenApiRouter::new()
        .routes(routes!(live))
        .with_state(liveness)
        .merge(
            OpenApiRouter::new()
                .routes(routes!(ready))
                .with_state(readiness),
        )
}

/// The process is up and its loops come round (SPEC §4.9); 503 names the stuck ones.
#[utoipa::path(get, path = "/health/live", tag = "health", responses(
    (status = 200, body = Live, description = "Live"),
    (status = 503, body = Live, description = "A loop is stuck"),
))]
async fn live(State(liveness): State<Liveness>) -> Response {
    let stalled: Vec<StalledLoop> = liveness
        .stalled()
        .into_iter()
        .map(|(name, silent)| StalledLoop {
            name,
            silent_seconds: silent.as_secs(),
        })
        .collect();
    if stalled.is_empty() {
        return axum::Json(Live {
            status: "live",
            stalled,
        })
        .into_response();
    }
    tracing::error!(?stalled, "not live: a loop is stuck");
    let live = Live {
        status: "stalled",
        stalled,
    };
    (StatusCode::SERVICE_UNAVAILABLE, axum::Json(live)).into_response()
}

/// Postgres and Redis answer and every migration is applied; otherwise 503 with
/// `Retry-After`, saying which dependency failed.
#[utoipa::path(get, path = "/health/ready", tag = "health", responses(
    (status = 200, body = Report, description = "Ready"),
    (status = 503, body = Report, description = "A dependency is down",
     headers(("Retry-After" = u32, description = "Seconds to wait"))),
))]
async fn ready(State(readiness): State<Readiness>) -> Response {
    let (postgres, redis, migrations) = tokio::join!(
        check(postgres_ok(&readiness.pool)),
        check(redis_ok(readiness.redis.clone())),
        check(migrations_ok(&readiness.pool, readiness.migrator)),
    );
    let ok = [postgres, redis, migrations].iter().all(|c| *c == "ok");
    let report = Report {
        status: if ok { "ready" } else { "not_ready" },
        checks: Checks {
            postgres,
            redis,
            migrations,
        },
        signatures: readiness.signatures.as_str(),
    };
    if ok {
        axum::Json(report).into_response()
    } else {
        tracing::warn!(?report, "not ready");
        let mut response = (StatusCode::SERVICE_UNAVAILABLE, axum::Json(report)).into_response();
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(5));
        response
    }
}

async fn check(probe: impl Future<Output = Result<bool, String>>) -> &'static str {
    match tokio::time::timeout(CHECK_TIMEOUT, probe).await {
        Ok(Ok(true)) => "ok",
        Ok(Ok(false)) => "pending",
        Ok(Err(error)) => {
            tracing::debug!(error, "readiness check failed");
            "unavailable"
        }
        Err(_) => "timeout",
    }
}

async fn postgres_ok(pool: &PgPool) -> Result<bool, String> {
    sqlx::query("SELECT 1")
        .execute(pool)
        .await
        .map(|_| true)
        .map_err(|e| e.to_string())
}

async fn redis_ok(mut redis: RedisConnection) -> Result<bool, String> {
    redis::cmd("PING")
        .query_async::<String>(&mut redis)
        .await
        .map(|_| true)
        .map_err(|e| e.to_string())
}

/// Every migration this build embeds has been applied successfully.
async fn migrations_ok(pool: &PgPool, migrator: &Migrator) -> Result<bool, String> {
    let applied: Vec<i64> =
        sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
            .fetch_all(pool)
            .await
            .map_err(|e| e.to_string())?;
    Ok(migrator.iter().all(|m| applied.contains(&m.version)))
}
