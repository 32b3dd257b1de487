//! Placing an order: the order row and its `OrderCreated` event commit in one
//! transaction (transactional outbox, SPEC §4.1); the relay publishes the event.

use events::streams::ORDER_EVENTS;
use events::{Envelope, Event, OrderCreated, Producer};
use service_runtime::outbox;
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
