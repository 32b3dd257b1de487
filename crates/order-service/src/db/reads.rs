//! Reading orders for the API: one by id, a page of a filtered list.

use sqlx::PgPool;
use uuid::Uuid;

use crate::domain::{Order, OrderStatus};

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
