//! The order use cases, each owning its transaction, and waking the relay after a commit
//! that gave it events to publish.
//!
//! - Placing: the order row and its `OrderCreated` commit in one transaction
//!   (transactional outbox, SPEC §4.1); the relay publishes the event. An
//!   `Idempotency-Key` is claimed in the same transaction, so a retried request returns
//!   the order of the first and publishes nothing new.
//! - Cancelling: the order is locked, the state machine decides, and `OrderCancelled`
//!   commits with the new status; payment-service refunds a paid order.
//! - Reconciling: an order that stays `PENDING`, or stays cancelled without
//!   payment-service confirming it, may have lost its event to a broker wipe or a dead
//!   letter (SPEC §4.6). Its `OrderCreated` or `OrderCancelled` is published again, with
//!   the same `event_id`, until the answer arrives; payment-service answers a repeat with
//!   the outcome it recorded.

use std::time::Duration;

use events::streams::ORDER_EVENTS;
use events::{Envelope, Event, EventType, OrderCancelled, OrderCreated, Producer};
use service_runtime::observability::ORDER_TIME_TO_FINAL;
use service_runtime::outbox::{self, AwaitingAnswer, OutboxRow, RelayWaker};
use sqlx::PgPool;
use uuid::Uuid;

use crate::db;
use crate::domain::{NewOrder, Order, OrderStatus, OrderTrigger, Transition, transition};

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

/// A placed order, and whether it was placed by an earlier request with the same key.
#[derive(Debug)]
pub struct Placed {
    pub order: Order,
    pub replayed: bool,
}

/// Why an order was not placed.
#[derive(Debug, thiserror::Error)]
pub enum PlaceError {
    #[error("the idempotency key was used with another request")]
    KeyReused,
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Stores `order` as `PENDING` and enqueues its `OrderCreated`, atomically: in one
/// statement, or, with `idempotency_key`, in a transaction that also claims the key (a
/// repeat of the same request then returns the first order).
pub async fn place_order(
    pool: &PgPool,
    relay: &RelayWaker,
    order: &NewOrder,
    idempotency_key: Option<&str>,
) -> Result<Placed, PlaceError> {
    let id = Uuid::now_v7();
    let event = OutboxRow::new(
        ORDER_EVENTS,
        &Envelope::new(
            Producer::OrderService,
            Event::OrderCreated(OrderCreated {
                order_id: id,
                customer_id: order.customer_id.clone(),
                items: order.items.clone(),
                total_cents: order.total_cents,
                currency: order.currency,
            }),
        ),
    );
    let Some(key) = idempotency_key else {
        let order = db::insert_order_with_event(pool, id, order, &event).await?;
        relay.wake();
        return Ok(Placed {
            order,
            replayed: false,
        });
    };
    let mut tx = pool.begin().await?;
    let request = order.canonical_json();
    if !db::claim_idempotency_key(&mut tx, key, &request, id).await? {
        let (first_request, first_order) = db::find_idempotency_key(&mut tx, key)
            .await?
            .ok_or(sqlx::Error::RowNotFound)?;
        if first_request != request {
            return Err(PlaceError::KeyReused);
        }
        let order = db::find_order(&mut *tx, first_order)
            .await?
            .ok_or(sqlx::Error::RowNotFound)?;
        return Ok(Placed {
            order,
            replayed: true,
        });
    }
    let placed = db::insert_order_with_event(&mut *tx, id, order, &event).await?;
    tx.commit().await?;
    relay.wake();
    Ok(Placed {
        order: placed,
        replayed: false,
    })
}

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
    relay: &RelayWaker,
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
            outbox::enqueue(&mut tx, ORDER_EVENTS, &event).await?;
            tx.commit().await?;
            relay.wake();
            Ok(cancelled)
        }
        Transition::Keep | Transition::Conflict => Err(CancelError::Conflict(order.status)),
    }
}

/// Asks payment-service again what it has not answered: re-publishes (same `event_id`)
/// the `OrderCreated` of orders still `PENDING`, and the `OrderCancelled` of cancelled
/// orders whose cancellation is not confirmed, whose event went out more than `after`
/// ago. Returns how many.
pub async fn republish_unanswered(
    pool: &PgPool,
    relay: &RelayWaker,
    after: Duration,
) -> sqlx::Result<u64> {
    let mut tx = pool.begin().await?;
    let pending = db::stale_pending_orders(&mut tx, after).await?;
    let created = [EventType::OrderCreated];
    let mut rearmed = outbox::republish(&mut tx, &pending, Some(&created), after).await?;
    let cancelled = db::unconfirmed_cancellations(&mut tx, after).await?;
    let cancellation = [EventType::OrderCancelled];
    rearmed += outbox::republish(&mut tx, &cancelled, Some(&cancellation), after).await?;
    tx.commit().await?;
    if rearmed > 0 {
        relay.wake();
    }
    Ok(rearmed)
}

/// Records how long an order took from creation to its final state (first final state
/// only: a paid order later cancelled was final when paid).
pub fn record_time_to_final(order: &Order) {
    let seconds = (order.updated_at - order.created_at)
        .as_seconds_f64()
        .max(0.0);
    metrics::histogram!(ORDER_TIME_TO_FINAL, "status" => order.status.as_str()).record(seconds);
}
