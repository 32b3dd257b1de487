//! The order use cases, each owning its transaction, and waking the relay after a commit
//! that gave it events to publish.
//!
//! - Placing: in [`crate::placing`].
//! - Cancelling: the order is locked, the state machine decides, and `OrderCancelled`
//!   commits with the new status; payment-service refunds a paid order.
//! - Expiring (SPEC §5.1): an order still `PENDING` at its payment deadline fails with
//!   `payment_expired`, and its payment is cancelled as a user's would be (`OrderCancelled`,
//!   asked until confirmed): payment-service charges nothing after the deadline, and a
//!   charge that raced it is refunded. A durable timer of the saga: [`expire_unpaid`].
//! - Reconciling: an order that stays `PENDING`, or stays cancelled without
//!   payment-service confirming it, may have lost its event to a broker wipe or a dead
//!   letter (SPEC §4.6). Its `OrderCreated` or `OrderCancelled` is published again, with
//!   the same `event_id`, until the answer arrives; payment-service answers a repeat with
//!   the outcome it recorded. Bounded whatever the outage (SPEC §4.9): [`Reconciler`].

use std::sync::Mutex;
use std::time::Duration;

use events::streams::{ORDER_EVENTS, PAYMENT_SERVICE_GROUP};
use events::{Envelope, Event, EventType, EventWriter, OrderCancelled, Producer};
use service_runtime::RedisConnection;
use service_runtime::observability::{REASK_EXAMINED, REASK_REPUBLISHED};
use service_runtime::outbox::{self, AwaitingAnswer, Reask, RelayQueue};
use sqlx::PgPool;
use time::OffsetDateTime;
use tracing::warn;
use uuid::Uuid;

/// Orders expired unpaid at their payment deadline.
const ORDERS_EXPIRED: &str = "orders_expired_total";
/// Seconds from an order's creation to its final state, by `status`.
const ORDER_TIME_TO_FINAL: &str = "order_time_to_final_seconds";

use crate::db::{self, ScanFrom};
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

/// The reason `OrderCancelled` carries for the payment of an order that expired unpaid.
pub const EXPIRED_REASON: &str = "payment_expired";

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

/// Cancels a `PENDING` or `PAID` order and enqueues `OrderCancelled` (as `writer` writes
/// it), atomically. Concurrent cancellations of one order are serialised by its row lock:
/// one wins, the others see `CANCELLED` and conflict.
pub async fn cancel_order(
    pool: &PgPool,
    relay: &RelayQueue,
    writer: &EventWriter,
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
            let event = cancellation(&order, CANCEL_REASON);
            let queued = outbox::enqueue(&mut tx, ORDER_EVENTS, writer, &event).await?;
            tx.commit().await?;
            relay.hand_over(queued);
            Ok(cancelled)
        }
        Transition::Keep | Transition::Conflict => Err(CancelError::Conflict(order.status)),
    }
}

/// The `OrderCancelled` of `order`, for `reason`.
pub fn cancellation(order: &Order, reason: &str) -> Envelope {
    Envelope::new(
        Producer::OrderService,
        Event::OrderCancelled(OrderCancelled {
            order_id: order.id,
            customer_id: order.customer_id.clone(),
            reason: reason.to_owned(),
        }),
    )
}

/// The most orders one round of the expirer expires; the rest wait for the next round.
pub const EXPIRE_BATCH: i64 = 500;

/// One bounded round of the expirer: orders still `PENDING` past their deadline fail with
/// `payment_expired`, and their payment is cancelled (`OrderCancelled`, as `writer`
/// writes it) in the same transaction. Returns how many expired.
pub async fn expire_unpaid(
    pool: &PgPool,
    relay: &RelayQueue,
    writer: &EventWriter,
) -> anyhow::Result<u64> {
    let mut tx = pool.begin().await?;
    let expired = db::expire_unpaid(&mut tx, EXPIRE_BATCH).await?;
    let cancellations: Vec<Envelope> = expired
        .iter()
        .map(|order| cancellation(order, EXPIRED_REASON))
        .collect();
    let queued = outbox::enqueue_all(&mut tx, ORDER_EVENTS, writer, &cancellations).await?;
    tx.commit().await?;
    relay.hand_over(queued);
    for order in &expired {
        record_time_to_final(order);
    }
    if !expired.is_empty() {
        warn!(
            orders = expired.len(),
            "orders expired unpaid; their payments are cancelled"
        );
        metrics::counter!(ORDERS_EXPIRED).increment(expired.len() as u64);
    }
    Ok(expired.len() as u64)
}

/// Orders looked at per kind of question in one round of the reconciler: its work and
/// memory per round are bounded whatever the backlog; a cursor carries the next round on
/// from where this one stopped.
pub const REASK_BATCH: i64 = 500;

/// Asks payment-service again what it has not answered (SPEC §4.6, §4.9): re-publishes
/// (same `event_id`) the `OrderCreated` of orders still `PENDING`, and the
/// `OrderCancelled` of cancelled orders whose cancellation is not confirmed. Never while
/// the last copy still waits in `order-events` undelivered (an outage of payment-service
/// adds nothing to the stream), then with a backoff per order, doubling up to a cap.
pub struct Reconciler {
    pub pool: PgPool,
    pub redis: RedisConnection,
    pub relay: RelayQueue,
    /// The key of `order-events`.
    pub stream: String,
    /// When to ask again.
    pub after: Duration,
    pub backoff_cap: Duration,
    /// How questions are written when they are asked again (see `outbox::republish`).
    pub writer: EventWriter,
    /// Where the last round's two scans stopped.
    cursors: Mutex<(ScanFrom, ScanFrom)>,
}

impl Reconciler {
    pub fn new(
        pool: PgPool,
        redis: RedisConnection,
        relay: RelayQueue,
        stream: String,
        (after, backoff_cap): (Duration, Duration),
        writer: EventWriter,
    ) -> Self {
        Self {
            pool,
            redis,
            relay,
            stream,
            after,
            backoff_cap,
            writer,
            cursors: Mutex::default(),
        }
    }

    /// How often a round runs: twice per `after`, so a question is asked again at most
    /// half a wait late.
    pub fn round_interval(&self) -> Duration {
        self.after / 2
    }

    /// One bounded round. Returns how many events were published again.
    pub async fn run_once(&self) -> anyhow::Result<u64> {
        // Without the broker's view (Redis away), every due question is asked: its copy
        // waits in the outbox for the relay, and the backoff still holds.
        let still_queued =
            outbox::still_queued(&mut self.redis.clone(), &self.stream, PAYMENT_SERVICE_GROUP)
                .await
                .inspect_err(
                    |e| warn!(error = %e, "cannot read the stream's state; asking what is due"),
                )
                .ok()
                .flatten();
        let reask = Reask {
            after: self.after,
            backoff_cap: self.backoff_cap,
            still_queued,
            looks_every: self.round_interval(),
        };
        let (from_pending, from_cancelled) =
            *self.cursors.lock().unwrap_or_else(|e| e.into_inner());
        let mut tx = self.pool.begin().await?;
        let pending =
            db::stale_pending_orders(&mut tx, self.after, from_pending, REASK_BATCH).await?;
        let cancelled =
            db::unconfirmed_cancellations(&mut tx, self.after, from_cancelled, REASK_BATCH).await?;
        let ids = |rows: &[(OffsetDateTime, Uuid)]| {
            rows.iter()
                .map(|(_, id)| id.to_string())
                .collect::<Vec<_>>()
        };
        let mut rearmed = outbox::republish(
            &mut tx,
            &ids(&pending),
            Some(&[EventType::OrderCreated]),
            &reask,
            &self.writer,
        )
        .await?;
        rearmed.extend(
            outbox::republish(
                &mut tx,
                &ids(&cancelled),
                Some(&[EventType::OrderCancelled]),
                &reask,
                &self.writer,
            )
            .await?,
        );
        tx.commit().await?;
        *self.cursors.lock().unwrap_or_else(|e| e.into_inner()) =
            (next_from(&pending), next_from(&cancelled));
        metrics::counter!(REASK_EXAMINED, "job" => "reconciler")
            .increment((pending.len() + cancelled.len()) as u64);
        for row in &rearmed {
            metrics::counter!(REASK_REPUBLISHED, "job" => "reconciler", "event_type" => row.event_type)
                .increment(1);
        }
        let count = rearmed.len() as u64;
        self.relay.hand_over(rearmed);
        Ok(count)
    }
}

/// Where the next round's scan starts: after the last row of a full batch, or from the
/// beginning once a scan came to the end.
fn next_from(batch: &[(OffsetDateTime, Uuid)]) -> ScanFrom {
    if batch.len() as i64 == REASK_BATCH {
        batch.last().copied()
    } else {
        None
    }
}

/// Records how long an order took from creation to its final state (first final state
/// only: a paid order later cancelled was final when paid).
pub fn record_time_to_final(order: &Order) {
    let seconds = (order.updated_at - order.created_at)
        .as_seconds_f64()
        .max(0.0);
    metrics::histogram!(ORDER_TIME_TO_FINAL, "status" => order.status.as_str()).record(seconds);
}
