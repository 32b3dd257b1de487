//! Every query of the order database, one function each. Functions that take a
//! `&mut PgConnection` run inside the caller's transaction.

use events::OrderItem;
use serde::Serialize;
use sqlx::types::Json;
use std::time::Duration;

use sqlx::{PgConnection, PgPool};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::domain::{NewOrder, OrderStatus};

/// An order as stored and as `GET /orders/{id}` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct Order {
    pub id: Uuid,
    pub customer_id: String,
    #[sqlx(json)]
    pub items: Vec<OrderItem>,
    pub total_cents: i64,
    pub currency: String,
    #[sqlx(try_from = "String")]
    pub status: OrderStatus,
    pub payment_id: Option<Uuid>,
    pub failure_reason: Option<String>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub refunded_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

/// Inserts a new `PENDING` order with id `id`.
#[tracing::instrument(skip_all, fields(order_id = %id))]
pub async fn insert_order(
    conn: &mut PgConnection,
    id: Uuid,
    order: &NewOrder,
) -> sqlx::Result<Order> {
    sqlx::query_as(
        "INSERT INTO orders (id, customer_id, items, total_cents, currency)
         VALUES ($1, $2, $3, $4, $5)
         RETURNING *",
    )
    .bind(id)
    .bind(&order.customer_id)
    .bind(Json(&order.items))
    .bind(order.total_cents)
    .bind(order.currency.as_str())
    .fetch_one(conn)
    .await
}

/// The order with id `id`, if any.
#[tracing::instrument(skip_all, fields(order_id = %id))]
pub async fn find_order(pool: &PgPool, id: Uuid) -> sqlx::Result<Option<Order>> {
    sqlx::query_as("SELECT * FROM orders WHERE id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await
}

/// `PENDING` -> `PAID`. Returns false when the order is not pending (or unknown).
#[tracing::instrument(skip_all, fields(order_id = %order_id))]
pub async fn mark_paid(
    conn: &mut PgConnection,
    order_id: Uuid,
    payment_id: Uuid,
) -> sqlx::Result<bool> {
    let updated = sqlx::query(
        "UPDATE orders SET status = 'PAID', payment_id = $2, updated_at = now()
         WHERE id = $1 AND status = 'PENDING'",
    )
    .bind(order_id)
    .bind(payment_id)
    .execute(conn)
    .await?;
    Ok(updated.rows_affected() == 1)
}

/// `PENDING` -> `PAYMENT_FAILED` with `reason`. Returns false when the order is not
/// pending (or unknown).
#[tracing::instrument(skip_all, fields(order_id = %order_id))]
pub async fn mark_payment_failed(
    conn: &mut PgConnection,
    order_id: Uuid,
    reason: &str,
) -> sqlx::Result<bool> {
    let updated = sqlx::query(
        "UPDATE orders SET status = 'PAYMENT_FAILED', failure_reason = $2, updated_at = now()
         WHERE id = $1 AND status = 'PENDING'",
    )
    .bind(order_id)
    .bind(reason)
    .execute(conn)
    .await?;
    Ok(updated.rows_affected() == 1)
}

/// Records that the order's payment was refunded. Returns false for an unknown order.
#[tracing::instrument(skip_all, fields(order_id = %order_id))]
pub async fn mark_refunded(conn: &mut PgConnection, order_id: Uuid) -> sqlx::Result<bool> {
    let updated = sqlx::query(
        "UPDATE orders SET refunded_at = COALESCE(refunded_at, now()), updated_at = now() WHERE id = $1",
    )
    .bind(order_id)
    .execute(conn)
    .await?;
    Ok(updated.rows_affected() == 1)
}

/// Marks for re-publishing the `OrderCreated` of every order still `PENDING` whose event
/// was last published more than `after` ago. Returns how many.
#[tracing::instrument(skip_all)]
pub async fn rearm_stale_order_created(
    conn: &mut PgConnection,
    after: Duration,
) -> sqlx::Result<u64> {
    let rearmed = sqlx::query(
        "UPDATE outbox SET published_at = NULL
         FROM orders
         WHERE orders.id = outbox.order_id
           AND orders.status = 'PENDING'
           AND outbox.event_type = 'OrderCreated'
           AND outbox.published_at < now() - make_interval(secs => $1)",
    )
    .bind(after.as_secs_f64())
    .execute(conn)
    .await?;
    Ok(rearmed.rows_affected())
}
