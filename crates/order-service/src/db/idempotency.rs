//! `Idempotency-Key`s: claimed with the order they created, found again, pruned after
//! their retention.

use std::time::Duration;

use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

/// Claims `key` for a new order. Returns false when the key was claimed before (then
/// [`find_idempotency_key`] tells by whom); a concurrent claim waits for the first to
/// commit or roll back.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn claim_idempotency_key(
    conn: &mut PgConnection,
    key: &str,
    request: &serde_json::Value,
    order_id: Uuid,
) -> sqlx::Result<bool> {
    let claimed = sqlx::query(
        "INSERT INTO idempotency_keys (key, request, order_id) VALUES ($1, $2, $3)
         ON CONFLICT (key) DO NOTHING",
    )
    .bind(key)
    .bind(request)
    .bind(order_id)
    .execute(conn)
    .await?;
    Ok(claimed.rows_affected() == 1)
}

/// Deletes the idempotency keys older than `retention`, in batches. Returns how many.
pub async fn prune_idempotency_keys(pool: &PgPool, retention: Duration) -> sqlx::Result<u64> {
    service_runtime::retention::prune(
        pool,
        "idempotency_keys",
        "DELETE FROM idempotency_keys WHERE key = ANY(ARRAY(
             SELECT key FROM idempotency_keys
             WHERE created_at < now() - make_interval(secs => $1)
             LIMIT $2))",
        retention,
    )
    .await
}

/// The request and order an idempotency key was first used with.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn find_idempotency_key(
    conn: &mut PgConnection,
    key: &str,
) -> sqlx::Result<Option<(serde_json::Value, Uuid)>> {
    sqlx::query_as("SELECT request, order_id FROM idempotency_keys WHERE key = $1")
        .bind(key)
        .fetch_optional(conn)
        .await
}
