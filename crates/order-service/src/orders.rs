//! The order use cases, each owning its transaction, and waking the relay after a commit
//! that gave it events to publish.
//!
//! - Placing: in [`crate::placing`].
//! - Cancelling: the order is locked, the state machine decides, and `OrderCancelled`
//!   commits with the new status; payment-service refunds a paid order.
//! - Reconciling: an order that stays `PENDING`, or stays cancelled without
//!   payment-service confirming it, may have lost its event to a broker wipe or a dead
//!   letter (SPEC §4.6). Its `OrderCreated` or `OrderCancelled` is published again, with
//!   the same `event_id`, until the answer arrives; payment-service answers a repeat with
//!   the outcome it recorded.

use std::time::Duration;

use events::streams::ORDER_EVENTS;
use events::{Envelope, Event, EventType, OrderCancelled, Producer};
use service_runtime::observability::ORDER_TIME_TO_FINAL;
use service_runtime::outbox::{self, AwaitingAnswer, RelayQueue};
use sqlx::PgPool;
use uuid::Uuid;

use crate::db;
use crate::domain::{Order, OrderStatus, OrderTrigger, Transition, transition};

/// The outbox rows whose answer has not arrived: the `OrderCreated` of an order still
/// `PENDING`, the `OrderCancelled` of a cancellation not confirmed. The sweeper keeps them.
pub const AWAITING_ANSWER: AwaitingAnswer = AwaitingAnswer(
    "(outbox.event_type = 'OrderCreated' AND EXISTS (
         SELECT 1 FROM orders o WHERE o.id = outbox.order_id AND o.status = 'PENDING'))
     OR (outbox.event_type = 'OrderCancelled' AND EXISTS (
         SELECT 1 FROM orders o WHERE o.id = outbox.order_id
           AND o.cancellation_confirmed_at IS NULL))",
);

/// The reason `OrderCancelled` carries for a cancellation through the API.
pub const CANCEL_REASON: &str = "customer_request";

/// Why an order was not cancelled.
#[derive(Debug, thiserror::Error)]
pub enum CancelError {
    #[error("no such order")]
    NotFound,
    #[error("an order that is {} cannot be cancelled", .0.as_str())]
    Conflict(OrderStatus),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Cancels a `PENDING` or `PAID` order and enqueues `OrderCancelled`, atomically.
/// Concurrent cancellations of one order are serialised by its row lock: one wins, the
/// others see `CANCELLED` and conflict.
pub async fn cancel_order(
    pool: &PgPool,
    relay: &RelayQueue,
    id: Uuid,
) -> Result<Order, CancelError> {
    let mut tx = pool.begin().await?;
    let order = db::lock_orders(&mut tx, &[id])
        .await?
        .pop()
        .ok_or(CancelError::NotFound)?;
    match transition(order.status, OrderTrigger::CancelRequested) {
        Transition::To(status) => {
            let cancelled = db::set_status(&mut tx, id, status, None, None).await?;
            if order.status == OrderStatus::Pending {
                record_time_to_final(&cancelled);
            }
            let event = Envelope::new(
                Producer::OrderService,
                Event::OrderCancelled(OrderCancelled {
                    order_id: id,
                    customer_id: order.customer_id,
                    reason: CANCEL_REASON.to_owned(),
                }),
            );
            let queued = outbox::enqueue(&mut tx, ORDER_EVENTS, &event).await?;
            tx.commit().await?;
            relay.hand_over(queued);
            Ok(cancelled)
        }
        Transition::Keep | Transition::Conflict => Err(CancelError::Conflict(order.status)),
    }
}

/// Asks payment-service again what it has not answered: re-publishes (same `event_id`)
/// the `OrderCreated` of orders still `PENDING`, and the `OrderCancelled` of cancelled
/// orders whose cancellation is not confirmed, whose event was made, or last re-published,
/// more than `after` ago. Returns how many.
pub async fn republish_unanswered(
    pool: &PgPool,
    relay: &RelayQueue,
    after: Duration,
) -> sqlx::Result<u64> {
    let mut tx = pool.begin().await?;
    let pending = db::stale_pending_orders(&mut tx, after).await?;
    let created = [EventType::OrderCreated];
    let mut rearmed = outbox::republish(&mut tx, &pending, Some(&created), after).await?;
    let cancelled = db::unconfirmed_cancellations(&mut tx, after).await?;
    let cancellation = [EventType::OrderCancelled];
    rearmed.extend(outbox::republish(&mut tx, &cancelled, Some(&cancellation), after).await?);
    tx.commit().await?;
    let count = rearmed.len() as u64;
    relay.hand_over(rearmed);
    Ok(count)
}

/// Records how long an order took from creation to its final state (first final state
/// only: a paid order later cancelled was final when paid).
pub fn record_time_to_final(order: &Order) {
    let seconds = (order.updated_at - order.created_at)
        .as_seconds_f64()
        .max(0.0);
    metrics::histogram!(ORDER_TIME_TO_FINAL, "status" => order.status.as_str()).record(seconds);
}
