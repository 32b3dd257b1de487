//! The bounded scans of the reconciler and the expirer: cancellations still unconfirmed,
//! orders still pending, deadlines that passed.

use std::time::Duration;

use sqlx::PgConnection;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::domain::Order;

/// Where a bounded scan stopped: the last `(time, id)` it returned.
pub type ScanFrom = Option<(OffsetDateTime, Uuid)>;

/// Up to `limit` orders cancelled (by the user, or by their expiry) whose cancellation
/// payment-service has not confirmed, last changed more than `after` ago, after `from`,
/// in `(updated_at, id)` order.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn unconfirmed_cancellations(
    conn: &mut PgConnection,
    after: Duration,
    from: ScanFrom,
    limit: i64,
) -> sqlx::Result<Vec<(OffsetDateTime, Uuid)>> {
    let (from_time, from_id) = from.unzip();
    sqlx::query_as(
        "SELECT updated_at, id FROM orders
         WHERE (status = 'CANCELLED' OR failure_reason = 'payment_expired')
           AND cancellation_confirmed_at IS NULL
           AND updated_at < now() - make_interval(secs => $1)
           AND ($2::timestamptz IS NULL OR (updated_at, id) > ($2, $3))
         ORDER BY updated_at, id
         LIMIT $4",
    )
    .bind(after.as_secs_f64())
    .bind(from_time)
    .bind(from_id)
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// Up to `limit` orders still `PENDING` that were placed more than `after` ago, after
/// `from`, in `(created_at, id)` order.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn stale_pending_orders(
    conn: &mut PgConnection,
    after: Duration,
    from: ScanFrom,
    limit: i64,
) -> sqlx::Result<Vec<(OffsetDateTime, Uuid)>> {
    let (from_time, from_id) = from.unzip();
    sqlx::query_as(
        "SELECT created_at, id FROM orders
         WHERE status = 'PENDING' AND created_at < now() - make_interval(secs => $1)
           AND ($2::timestamptz IS NULL OR (created_at, id) > ($2, $3))
         ORDER BY created_at, id
         LIMIT $4",
    )
    .bind(after.as_secs_f64())
    .bind(from_time)
    .bind(from_id)
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// Expires up to `limit` orders still `PENDING` whose payment deadline has passed (SPEC
/// §5.1): `PAYMENT_FAILED` with `payment_expired`. Every deadline that passed is marked
/// so (the expirer's index holds only those to come); one whose order or deadline row is
/// locked by a transaction (a payment outcome being applied) is left to the next round.
/// Returns the orders expired, as stored.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn expire_unpaid(conn: &mut PgConnection, limit: i64) -> sqlx::Result<Vec<Order>> {
    sqlx::query_as(concat!(
        "WITH due AS (
             SELECT d.order_id, o.status = 'PENDING' AS pending
             FROM order_deadlines d JOIN orders o ON o.id = d.order_id
             WHERE NOT d.passed AND d.pay_by <= now()
             ORDER BY d.pay_by
             LIMIT $1
             FOR UPDATE OF d, o SKIP LOCKED
         ), passed AS (
             UPDATE order_deadlines SET passed = true
             WHERE order_id IN (SELECT order_id FROM due)
         ), o AS (
             UPDATE orders o
             SET status = 'PAYMENT_FAILED', failure_reason = 'payment_expired',
                 updated_at = now()
             FROM due WHERE o.id = due.order_id AND due.pending
             RETURNING o.*
         )
         SELECT ",
        order_columns!(),
        " FROM o JOIN order_deadlines d ON d.order_id = o.id"
    ))
    .bind(limit)
    .fetch_all(conn)
    .await
}
