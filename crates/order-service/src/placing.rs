//! Placing an order (SPEC §4.1): the order row and its `OrderCreated` outbox row commit in
//! one statement (transactional outbox), and the relay publishes the event.
//!
//! Orders placed at the same moment share that statement, and so its commit: a request
//! hands its order to the writer, and the writer, once free, takes every order waiting
//! (up to [`MAX_GROUP`]) and inserts them together. A lone request is written at once, so
//! this adds no latency; under load, a round trip and a durable commit, most of what
//! writing one order costs Postgres, serve many orders (group commit, done before the
//! database has to). If a group's statement fails, each of its orders is written again on
//! its own: an order Postgres refuses fails alone, and each request gets its own answer.
//!
//! One writer, with two statements at most: while a group is written, the orders arriving
//! meanwhile form the next group, which starts once it is as big as the one being
//! written, or when that one is done. Under load most of a group's time is the wait for
//! its commit to be flushed, and the next group's statement executes meanwhile. Two
//! writers taking orders at once instead wrote groups half as big: more statements and
//! commits for the same orders, and less of the box for the rest (docs/performance.md,
//! 2026-12-04, "one writer"; 2026-12-05, "overlapping groups").
//!
//! The writer signs its group's events as it writes them, so with
//! `SIGNATURE_SCOPE=batch` one signature serves the group.
//!
//! With an `Idempotency-Key` the key is claimed in the order's own transaction, so a
//! retried request returns the order of the first and publishes nothing new; such orders
//! are written one at a time, as that transaction needs.

use std::time::Duration;

use events::streams::ORDER_EVENTS;
use events::{Envelope, Event, EventWriter, OrderCreated, Producer};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use service_runtime::outbox::{self, OutboxRow, RelayQueue};
use sqlx::PgPool;
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::db::{self, NewOrderRow};
use crate::domain::{NewOrder, Order};

/// The most orders one statement inserts.
pub const MAX_GROUP: usize = 64;

/// Group statements running at once at most.
const RUNNING: usize = 2;

/// Orders waiting for the writer at most; a request beyond waits to hand its order over.
const QUEUE: usize = 1024;

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

/// Places orders. Clones share the writer, which stops when the last clone is dropped.
#[derive(Clone)]
pub struct Placing {
    pool: PgPool,
    relay: RelayQueue,
    queue: mpsc::Sender<Waiting>,
    terms: Terms,
}

/// What every order is placed with.
#[derive(Debug, Clone)]
pub struct Terms {
    /// How long after it is placed an order may be paid (`PAYMENT_DEADLINE_MS`).
    pub payment_deadline: Duration,
    /// How `OrderCreated` is written (`WRITE_SCHEMA_VERSION`, the signing key).
    pub writer: EventWriter,
}

/// An order handed to the writer, and where its outcome goes.
struct Waiting {
    id: Uuid,
    order: NewOrder,
    pay_by: OffsetDateTime,
    /// Its `OrderCreated`, in the trace of the request that placed it.
    event: Envelope,
    outcome: oneshot::Sender<sqlx::Result<Order>>,
}

impl Placing {
    /// Starts the writer on `pool`, writing one group at a time; each group's events go
    /// to the relay once it commits.
    pub fn start(pool: PgPool, relay: RelayQueue, terms: Terms) -> Self {
        let (queue, waiting) = mpsc::channel(QUEUE);
        tokio::spawn(write_groups(
            pool.clone(),
            relay.clone(),
            terms.writer.clone(),
            waiting,
        ));
        Self {
            pool,
            relay,
            queue,
            terms,
        }
    }

    /// How many orders wait for the writer.
    pub fn queued(&self) -> usize {
        self.queue.max_capacity() - self.queue.capacity()
    }

    /// Stores `order` as `PENDING` with its `OrderCreated`, atomically; with
    /// `idempotency_key`, in a transaction that also claims the key (a repeat of the same
    /// request then returns the first order).
    pub async fn place(
        &self,
        order: NewOrder,
        idempotency_key: Option<&str>,
    ) -> Result<Placed, PlaceError> {
        let id = Uuid::now_v7();
        let pay_by = pay_by(self.terms.payment_deadline);
        let event = outbox::traced(order_created(id, &order, pay_by));
        let Some(key) = idempotency_key else {
            let (outcome, placed) = oneshot::channel();
            let waiting = Waiting {
                id,
                order,
                pay_by,
                event,
                outcome,
            };
            // The writer is gone only when the service is shutting down.
            self.queue
                .send(waiting)
                .await
                .map_err(|_| sqlx::Error::PoolClosed)?;
            let order = placed.await.map_err(|_| sqlx::Error::PoolClosed)??;
            return Ok(Placed {
                order,
                replayed: false,
            });
        };
        let mut tx = self.pool.begin().await?;
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
        let event = OutboxRow::new(ORDER_EVENTS, &self.terms.writer, &event);
        let row = NewOrderRow {
            id,
            order: &order,
            pay_by,
            event: &event,
        };
        let placed = db::insert_orders_with_events(&mut *tx, &[row]).await?;
        tx.commit().await?;
        self.relay.hand_over(vec![event]);
        let order = placed.into_iter().next().ok_or(sqlx::Error::RowNotFound)?;
        Ok(Placed {
            order,
            replayed: false,
        })
    }
}

/// The deadline of an order placed now, in whole milliseconds (as exact in the database,
/// which keeps microseconds, as in the event).
fn pay_by(deadline: Duration) -> OffsetDateTime {
    let due = OffsetDateTime::now_utc() + deadline;
    due.replace_millisecond(due.millisecond()).unwrap_or(due)
}

/// The `OrderCreated` of order `id`.
fn order_created(id: Uuid, order: &NewOrder, pay_by: OffsetDateTime) -> Envelope {
    Envelope::new(
        Producer::OrderService,
        Event::OrderCreated(OrderCreated {
            order_id: id,
            customer_id: order.customer_id.clone(),
            items: order.items.clone(),
            total_cents: order.total_cents,
            currency: order.currency,
            pay_by: Some(pay_by),
        }),
    )
}

/// The writer: gathers the orders waiting into groups and writes each group in one
/// statement, at most [`RUNNING`] at once (see [`starts`]); while that many are being
/// written, orders wait in the queue.
async fn write_groups(
    pool: PgPool,
    relay: RelayQueue,
    writer: EventWriter,
    mut waiting: mpsc::Receiver<Waiting>,
) {
    // The groups being written, each giving back its size once its requests are answered.
    let mut running = FuturesUnordered::new();
    let mut running_sizes: Vec<usize> = Vec::with_capacity(RUNNING);
    let mut next = Vec::with_capacity(MAX_GROUP);
    let mut open = true;
    loop {
        let room = MAX_GROUP - next.len();
        let taking = open && room > 0 && running_sizes.len() < RUNNING;
        tokio::select! {
            biased;
            Some(size) = running.next() => {
                if let Some(i) = running_sizes.iter().position(|&s| s == size) {
                    running_sizes.swap_remove(i);
                }
            }
            received = waiting.recv_many(&mut next, room), if taking => {
                open = received > 0; // 0: every sender is gone
            }
            else => return, // nothing being written, nothing more to take
        }
        if starts(&running_sizes, next.len()) {
            let group = std::mem::replace(&mut next, Vec::with_capacity(MAX_GROUP));
            running_sizes.push(group.len());
            running.push(write_group(&pool, &relay, &writer, group));
        }
    }
}

/// Whether a group of `waiting` orders starts while groups of `running` sizes are being
/// written: at once if none is, else once it holds as many orders as the smallest of
/// them, while fewer than [`RUNNING`] are. So a second statement executes while the
/// first waits for its commit to be flushed, and groups are no smaller for it.
fn starts(running: &[usize], waiting: usize) -> bool {
    match running.iter().min() {
        None => waiting > 0,
        Some(&smallest) => running.len() < RUNNING && waiting >= smallest,
    }
}

/// Signs the group's events as one batch, writes the group, answers each of its requests;
/// returns its size.
async fn write_group(
    pool: &PgPool,
    relay: &RelayQueue,
    writer: &EventWriter,
    mut group: Vec<Waiting>,
) -> usize {
    let size = group.len();
    let envelopes: Vec<Envelope> = group.iter().map(|w| w.event.clone()).collect();
    let events = OutboxRow::new_all(ORDER_EVENTS, writer, &envelopes);
    match insert(pool, &group, &events).await {
        Ok(placed) => {
            for (waiting, order) in group.drain(..).zip(placed) {
                let _ = waiting.outcome.send(Ok(order));
            }
            relay.hand_over(events);
        }
        Err(error) if size == 1 => {
            if let Some(waiting) = group.pop() {
                let _ = waiting.outcome.send(Err(error));
            }
        }
        Err(_) => {
            // Which order was refused, or whether the database failed for all, only
            // writing each on its own tells; they go concurrently. Each event's
            // signature stands alone, batch or not.
            let alone = group.drain(..).zip(events).map(|(waiting, event)| async {
                let events = [event];
                let outcome = insert(pool, std::slice::from_ref(&waiting), &events)
                    .await
                    .and_then(|placed| placed.into_iter().next().ok_or(sqlx::Error::RowNotFound));
                if outcome.is_ok() {
                    relay.hand_over(events.into());
                }
                let _ = waiting.outcome.send(outcome);
            });
            futures::future::join_all(alone).await;
        }
    }
    size
}

/// Inserts `group`, with `events` (one each, in order), in one statement.
async fn insert(
    pool: &PgPool,
    group: &[Waiting],
    events: &[OutboxRow],
) -> sqlx::Result<Vec<Order>> {
    let rows: Vec<NewOrderRow<'_>> = group
        .iter()
        .zip(events)
        .map(|(waiting, event)| NewOrderRow {
            id: waiting.id,
            order: &waiting.order,
            pay_by: waiting.pay_by,
            event,
        })
        .collect();
    db::insert_orders_with_events(pool, &rows).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_group_starts_at_once_when_none_is_being_written() {
        assert!(starts(&[], 1));
        assert!(!starts(&[], 0));
    }

    #[test]
    fn a_second_group_starts_once_it_is_as_big_as_the_one_being_written() {
        assert!(!starts(&[10], 9));
        assert!(starts(&[10], 10));
        assert!(starts(&[10], 64));
    }

    #[test]
    fn no_more_than_two_groups_are_written_at_once() {
        assert!(!starts(&[3, 3], MAX_GROUP));
    }
}
