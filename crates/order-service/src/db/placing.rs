//! Placing orders: each with its deadline and its `OrderCreated` outbox row, in one
//! statement.

use std::collections::BTreeMap;

use service_runtime::outbox::{BindOutboxRows, OutboxRow};
use sqlx::types::Json;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::domain::{NewOrder, Order, OrderStatus};

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
