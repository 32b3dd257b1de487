//! Every query of the order database, one function each. Functions that take a
//! `&mut PgConnection` run inside the caller's transaction.

use std::collections::BTreeMap;
use std::sync::LazyLock;
use std::time::Duration;

use service_runtime::outbox::{BindOutboxRows, OutboxRow};
use sqlx::migrate::Migrator;
use sqlx::types::Json;
use sqlx::{PgConnection, PgPool};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::domain::{NewOrder, Order, OrderStatus};

/// The order database's migrations (the runtime's outbox and inbox, then
/// `migrations/order`), embedded in the binary and run at start-up.
pub static MIGRATOR: LazyLock<Migrator> = LazyLock::new(|| {
    service_runtime::schema::with_runtime(&sqlx::migrate!("../../migrations/order"))
});

/// The columns of an order with its deadline, as [`Order`] reads them, from `orders o
/// LEFT JOIN order_deadlines d`. Named, never `*`: a column that a later release adds
/// must not change what this release's prepared statements return, or a replica of it
/// still running during the rolling upgrade fails on every one ("cached plan must not
/// change result type").
macro_rules! order_columns {
    () => {
        "o.id, o.customer_id, o.items, o.total_cents, o.currency, o.status, o.payment_id,
         o.failure_reason, o.refunded_at, o.cancellation_confirmed_at, o.created_at,
         o.updated_at, d.pay_by"
    };
}

/// An order to insert, and its `OrderCreated` outbox row.
#[derive(Debug, Clone, Copy)]
pub struct NewOrderRow<'a> {
    pub id: Uuid,
    pub order: &'a NewOrder,
    /// Its payment deadline.
    pub pay_by: OffsetDateTime,
    pub event: &'a OutboxRow,
}

/// Inserts new `PENDING` orders together with their deadlines and `OrderCreated` outbox
/// rows, in one statement: all or none, without a transaction's extra round trips.
/// Returns the orders as stored, in the order given: what the database decides (status,
/// timestamps) comes back from it; the rest is what was written, not read back (the
/// items' JSON would be printed by Postgres and parsed here again for nothing).
#[tracing::instrument(level = "debug", skip_all, fields(orders = orders.len()))]
pub async fn insert_orders_with_events<'c>(
    conn: impl sqlx::PgExecutor<'c>,
    orders: &[NewOrderRow<'_>],
) -> sqlx::Result<Vec<Order>> {
    /// The `OrderCreated` rows queued (`$1`-`$6`), then the orders (`$7`-`$12`) with their
    /// deadlines, in one statement that returns what the database set.
    const INSERT: &str = concat!(
        "WITH ",
        service_runtime::queue_outbox_rows!(),
        "given AS (
             SELECT * FROM unnest($7::uuid[], $8::text[], $9::jsonb[], $10::bigint[], $11::text[],
                                  $12::timestamptz[])
                 AS g(id, customer_id, items, total_cents, currency, pay_by)
         ), d AS (
             INSERT INTO order_deadlines (order_id, pay_by)
             SELECT id, pay_by FROM given
         )
         INSERT INTO orders (id, customer_id, items, total_cents, currency)
         SELECT id, customer_id, items, total_cents, currency FROM given
         RETURNING id, status, created_at, updated_at"
    );
    let events: Vec<&OutboxRow> = orders.iter().map(|o| o.event).collect();
    let stored: Vec<(Uuid, String, OffsetDateTime, OffsetDateTime)> = sqlx::query_as(INSERT)
        .bind_outbox_rows(&events)
        .bind(orders.iter().map(|o| o.id).collect::<Vec<_>>())
        .bind(
            orders
                .iter()
                .map(|o| o.order.customer_id.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            orders
                .iter()
                .map(|o| Json(&o.order.items))
                .collect::<Vec<_>>(),
        )
        .bind(
            orders
                .iter()
                .map(|o| o.order.total_cents)
                .collect::<Vec<_>>(),
        )
        .bind(
            orders
                .iter()
                .map(|o| o.order.currency.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(orders.iter().map(|o| o.pay_by).collect::<Vec<_>>())
        .fetch_all(conn)
        .await?;
    let mut stored: BTreeMap<Uuid, (String, OffsetDateTime, OffsetDateTime)> = stored
        .into_iter()
        .map(|(id, status, created_at, updated_at)| (id, (status, created_at, updated_at)))
        .collect();
    orders
        .iter()
        .map(|row| {
            let (status, created_at, updated_at) =
                stored.remove(&row.id).ok_or(sqlx::Error::RowNotFound)?;
            Ok(Order {
                id: row.id,
                customer_id: row.order.customer_id.clone(),
                items: row.order.items.clone(),
                total_cents: row.order.total_cents,
                currency: row.order.currency.as_str().to_owned(),
                status: OrderStatus::try_from(status).map_err(|e| sqlx::Error::Decode(e.into()))?,
                payment_id: None,
                failure_reason: None,
                refunded_at: None,
                cancellation_confirmed_at: None,
                pay_by: Some(row.pay_by),
                created_at,
                updated_at,
            })
        })
        .collect()
}

/// The order with id `id`, if any.
#[tracing::instrument(level = "debug", skip_all, fields(order_id = %id))]
pub async fn find_order<'c>(
    conn: impl sqlx::PgExecutor<'c>,
    id: Uuid,
) -> sqlx::Result<Option<Order>> {
    sqlx::query_as(concat!(
        "SELECT ",
        order_columns!(),
        " FROM orders o LEFT JOIN order_deadlines d ON d.order_id = o.id WHERE o.id = $1"
    ))
    .bind(id)
    .fetch_optional(conn)
    .await
}

/// The orders with these ids that exist, locked until the transaction ends (in id
/// order, so that transactions locking several never deadlock): changes to one order are
/// serialised by the database.
#[tracing::instrument(level = "debug", skip_all, fields(orders = ids.len()))]
pub async fn lock_orders(conn: &mut PgConnection, ids: &[Uuid]) -> sqlx::Result<Vec<Order>> {
    sqlx::query_as(concat!(
        "SELECT ",
        order_columns!(),
        " FROM orders o LEFT JOIN order_deadlines d ON d.order_id = o.id
         WHERE o.id = ANY($1) ORDER BY o.id FOR UPDATE OF o"
    ))
    .bind(ids)
    .fetch_all(conn)
    .await
}

/// Writes back the status, payment id, failure reason, refund and confirmation times of
/// `orders` (locked by [`lock_orders`]), in one statement, and sets their `updated_at`
/// to the time it wrote (the transaction's, `now()`), the one column the database
/// decides: nothing else is read back.
#[tracing::instrument(level = "debug", skip_all, fields(orders = orders.len()))]
pub async fn update_orders(conn: &mut PgConnection, orders: &mut [Order]) -> sqlx::Result<()> {
    if orders.is_empty() {
        return Ok(());
    }
    let updated_at: OffsetDateTime = sqlx::query_scalar(
        "WITH o AS (
             UPDATE orders o
             SET status = t.status, payment_id = t.payment_id,
                 failure_reason = t.failure_reason, refunded_at = t.refunded_at,
                 cancellation_confirmed_at = t.confirmed_at, updated_at = now()
             FROM unnest($1::uuid[], $2::text[], $3::uuid[], $4::text[], $5::timestamptz[],
                         $6::timestamptz[])
                  AS t(id, status, payment_id, failure_reason, refunded_at, confirmed_at)
             WHERE o.id = t.id
         )
         SELECT now()",
    )
    .bind(orders.iter().map(|o| o.id).collect::<Vec<_>>())
    .bind(orders.iter().map(|o| o.status.as_str()).collect::<Vec<_>>())
    .bind(orders.iter().map(|o| o.payment_id).collect::<Vec<_>>())
    .bind(
        orders
            .iter()
            .map(|o| o.failure_reason.as_deref())
            .collect::<Vec<_>>(),
    )
    .bind(orders.iter().map(|o| o.refunded_at).collect::<Vec<_>>())
    .bind(
        orders
            .iter()
            .map(|o| o.cancellation_confirmed_at)
            .collect::<Vec<_>>(),
    )
    .fetch_one(conn)
    .await?;
    for order in orders {
        order.updated_at = updated_at;
    }
    Ok(())
}

/// Moves the order to `status`, recording the payment id and failure reason if given.
#[tracing::instrument(level = "debug", skip_all, fields(order_id = %id, status = status.as_str()))]
pub async fn set_status(
    conn: &mut PgConnection,
    id: Uuid,
    status: OrderStatus,
    payment_id: Option<Uuid>,
    failure_reason: Option<&str>,
) -> sqlx::Result<Order> {
    sqlx::query_as(concat!(
        "WITH o AS (
             UPDATE orders SET status = $2, payment_id = COALESCE($3, payment_id),
                    failure_reason = COALESCE($4, failure_reason), updated_at = now()
             WHERE id = $1
             RETURNING *
         )
         SELECT ",
        order_columns!(),
        " FROM o LEFT JOIN order_deadlines d ON d.order_id = o.id"
    ))
    .bind(id)
    .bind(status.as_str())
    .bind(payment_id)
    .bind(failure_reason)
    .fetch_one(conn)
    .await
}

/// A page of `GET /orders`.
#[derive(Debug, Clone, Default)]
pub struct OrderFilter {
    pub customer_id: Option<String>,
    pub status: Option<OrderStatus>,
    /// Only orders after this id (keyset pagination; ids are UUID v7, time-ordered).
    pub after: Option<Uuid>,
    pub limit: i64,
}

/// Orders matching `filter`, oldest first.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn list_orders(pool: &PgPool, filter: &OrderFilter) -> sqlx::Result<Vec<Order>> {
    sqlx::query_as(concat!(
        "SELECT ",
        order_columns!(),
        " FROM orders o LEFT JOIN order_deadlines d ON d.order_id = o.id
         WHERE ($1::text IS NULL OR o.customer_id = $1)
           AND ($2::text IS NULL OR o.status = $2)
           AND ($3::uuid IS NULL OR o.id > $3)
         ORDER BY o.id
         LIMIT $4"
    ))
    .bind(filter.customer_id.as_deref())
    .bind(filter.status.map(OrderStatus::as_str))
    .bind(filter.after)
    .bind(filter.limit)
    .fetch_all(pool)
    .await
}

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
