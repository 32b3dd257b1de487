//! What payment outcomes do to orders (SPEC §5.1). Runs inside the consumer's
//! transaction, after the inbox recorded the events, so each applies exactly once.
//!
//! A batch is applied in three steps: lock every order it names (one statement), run
//! its outcomes through the domain's rules ([`PaymentOutcome::apply`]) in stream order,
//! in memory, and write the changed orders back (one statement). Racing events and
//! cancellations on one order are serialised by the row lock.
//!
//! A charge decided after its order's deadline (by a reader of schema version 1, which
//! does not know it) expires the order instead of paying it, and cancels the payment in
//! the same transaction, so it is refunded (SPEC §3.4).
//!
//! An outcome that contradicts its order (another customer, amount or currency than the
//! order's) is refused: payment-service never writes one, so it is forged or corrupted,
//! and it is dead-lettered without changing the order.

use std::collections::{BTreeMap, BTreeSet};

use events::streams::ORDER_EVENTS;
use events::{Envelope, EventWriter};
use service_runtime::outbox::{self, OutboxRow};
use service_runtime::{EventHandler, HandleError};
use sqlx::PgConnection;
use tracing::info;
use uuid::Uuid;

use crate::db;
use crate::domain::{Change, Order, PaymentOutcome};
use crate::orders;

/// Applies `payment-events` to orders.
#[derive(Debug, Clone)]
pub struct PaymentEvents {
    /// How the cancellation of a late charge is written.
    pub writer: EventWriter,
}

impl EventHandler for PaymentEvents {
    /// Payment outcomes change orders; only a charge after the deadline is answered, with
    /// the cancellation of its payment.
    async fn handle(
        &self,
        tx: &mut PgConnection,
        events: &[&Envelope],
    ) -> Result<Vec<OutboxRow>, HandleError> {
        let outcomes = events
            .iter()
            .map(|envelope| {
                PaymentOutcome::of(envelope).ok_or_else(|| {
                    HandleError::Rejected(format!(
                        "{} does not belong on payment-events",
                        envelope.event_type()
                    ))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let ids: Vec<Uuid> = outcomes
            .iter()
            .map(|o| o.order_id)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let mut orders: BTreeMap<Uuid, Order> = db::lock_orders(tx, &ids)
            .await?
            .into_iter()
            .map(|order| (order.id, order))
            .collect();
        let mut changed = BTreeSet::new();
        let mut decided = BTreeSet::new();
        let mut expired = Vec::new();
        for outcome in &outcomes {
            let Some(order) = orders.get_mut(&outcome.order_id) else {
                info!(order_id = %outcome.order_id, "no such order; nothing to change");
                continue;
            };
            if let Some(contradiction) = outcome.contradiction(order) {
                return Err(HandleError::Rejected(contradiction));
            }
            match outcome.apply(order) {
                Change::Nothing => {}
                Change::Status => {
                    changed.insert(order.id);
                    decided.insert(order.id);
                }
                Change::Details => {
                    changed.insert(order.id);
                }
                Change::Expired => {
                    changed.insert(order.id);
                    decided.insert(order.id);
                    expired.push(orders::cancellation(order, orders::EXPIRED_REASON));
                }
            }
        }
        let mut changed: Vec<Order> = orders
            .into_values()
            .filter(|order| changed.contains(&order.id))
            .collect();
        db::update_orders(tx, &mut changed).await?;
        for order in changed.iter().filter(|order| decided.contains(&order.id)) {
            orders::record_time_to_final(order);
        }
        Ok(outbox::enqueue_all(tx, ORDER_EVENTS, &self.writer, &expired).await?)
    }
}
