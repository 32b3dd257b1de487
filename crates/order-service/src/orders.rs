//! Placing an order: the order row and its `OrderCreated` event commit in one
//! transaction (transactional outbox, SPEC §4.1); the relay publishes the event.
//!
//! Reconciling: an order that stays `PENDING` may have lost its event to a broker wipe
//! (SPEC §4.6). Its `OrderCreated` is published again, with the same `event_id`, until
//! the order is decided; payment-service answers a repeat with the outcome it recorded.

use events::streams::ORDER_EVENTS;
use events::{Envelope, Event, OrderCreated, Producer};
use service_runtime::outbox;
use std::time::Duration;

use sqlx::PgPool;
use uuid::Uuid;

use crate::db::{self, Order};
use crate::domain::NewOrder;

/// Stores `order` as `PENDING` and enqueues its `OrderCreated`, atomically.
pub async fn place_order(pool: &PgPool, order: &NewOrder) -> sqlx::Result<Order> {
    let id = Uuid::now_v7();
    let mut tx = pool.begin().await?;
    let placed = db::insert_order(&mut tx, id, order).await?;
    let event = Envelope::new(
        Producer::OrderService,
        Event::OrderCreated(OrderCreated {
            order_id: id,
            customer_id: order.customer_id.clone(),
            items: order.items.clone(),
            total_cents: order.total_cents,
            currency: order.currency,
        }),
    );
    outbox::enqueue(&mut tx, ORDER_EVENTS, &event).await?;
    tx.commit().await?;
    Ok(placed)
}

/// Re-publishes the `OrderCreated` of orders still `PENDING` whose event went out more
/// than `after` ago. Returns how many.
pub async fn republish_stale_pending(pool: &PgPool, after: Duration) -> sqlx::Result<u64> {
    let mut tx = pool.begin().await?;
    let rearmed = db::rearm_stale_order_created(&mut tx, after).await?;
    if rearmed > 0 {
        outbox::wake_relay(&mut tx).await?;
    }
    tx.commit().await?;
    Ok(rearmed)
}
