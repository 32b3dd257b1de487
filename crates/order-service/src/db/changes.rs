//! Changing placed orders: locking those a batch of outcomes names, writing them back,
//! moving one to a status.

use sqlx::PgConnection;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::domain::{Order, OrderStatus};

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
