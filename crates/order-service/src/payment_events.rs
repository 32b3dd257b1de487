//! What payment outcomes do to orders (SPEC §5.1). Runs inside the consumer's
//! transaction, after the inbox recorded the events, so each applies exactly once.
//!
//! A batch is applied in three steps: lock every order it names (one statement), run
//! its outcomes through the state machine ([`transition`]) in stream order, in memory,
//! and write the changed orders back (one statement). Racing events and cancellations
//! on one order are serialised by the row lock. An outcome for an order that moved on
//! changes nothing, except that a cancelled order records the payment being refunded and
//! a refund is recorded.

use std::collections::{BTreeMap, BTreeSet};

use events::{Envelope, Event};
use service_runtime::{EventHandler, HandleError};
use sqlx::PgConnection;
use time::OffsetDateTime;
use tracing::info;
use uuid::Uuid;

use crate::db::{self, Order};
use crate::domain::{OrderEvent, OrderStatus, Transition, transition};
use crate::orders;

/// Applies `payment-events` to orders.
#[derive(Debug, Clone, Copy, Default)]
pub struct PaymentEvents;

impl EventHandler for PaymentEvents {
    async fn handle(&self, tx: &mut PgConnection, events: &[&Envelope]) -> Result<(), HandleError> {
        let outcomes = events
            .iter()
            .map(|envelope| Outcome::of(envelope))
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
        for outcome in &outcomes {
            let Some(order) = orders.get_mut(&outcome.order_id) else {
                info!(order_id = %outcome.order_id, "no such order; nothing to change");
                continue;
            };
            match outcome.apply(order) {
                Change::Nothing => {}
                Change::Status => {
                    changed.insert(order.id);
                    decided.insert(order.id);
                }
                Change::Details => {
                    changed.insert(order.id);
                }
            }
        }
        let changed: Vec<Order> = orders
            .into_values()
            .filter(|order| changed.contains(&order.id))
            .collect();
        for order in db::update_orders(tx, &changed).await? {
            if decided.contains(&order.id) {
                orders::record_time_to_final(&order);
            }
        }
        Ok(())
    }
}

/// What an outcome changed in an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    Nothing,
    /// Its status (and what comes with it).
    Status,
    /// Only its payment id or refund time.
    Details,
}

/// A payment outcome, as it concerns an order.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Outcome {
    order_id: Uuid,
    event: OrderEvent,
    payment_id: Option<Uuid>,
    failure_reason: Option<String>,
}

impl Outcome {
    fn of(envelope: &Envelope) -> Result<Self, HandleError> {
        let (event, payment_id, failure_reason) = match &envelope.event {
            Event::PaymentCompleted(paid) => {
                (OrderEvent::PaymentCompleted, Some(paid.payment_id), None)
            }
            Event::PaymentFailed(failed) => (
                OrderEvent::PaymentFailed,
                None,
                Some(failed.reason.as_str().to_owned()),
            ),
            Event::PaymentRefunded(refund) => {
                (OrderEvent::PaymentRefunded, Some(refund.payment_id), None)
            }
            Event::OrderCreated(_) | Event::OrderCancelled(_) => {
                return Err(HandleError::Rejected(format!(
                    "{} does not belong on payment-events",
                    envelope.event_type()
                )));
            }
        };
        Ok(Self {
            order_id: envelope.order_id,
            event,
            payment_id,
            failure_reason,
        })
    }

    /// Changes `order` as this outcome says.
    fn apply(&self, order: &mut Order) -> Change {
        match (transition(order.status, self.event), self.event) {
            (Transition::To(status), _) => {
                order.status = status;
                order.payment_id = self.payment_id.or(order.payment_id);
                if let Some(reason) = &self.failure_reason {
                    order.failure_reason = Some(reason.clone());
                }
                Change::Status
            }
            (_, OrderEvent::PaymentRefunded) if order.refunded_at.is_none() => {
                order.refunded_at = Some(OffsetDateTime::now_utc());
                Change::Details
            }
            (_, OrderEvent::PaymentCompleted)
                if order.status == OrderStatus::Cancelled
                    && order.payment_id.is_none()
                    && self.payment_id.is_some() =>
            {
                // The order was cancelled meanwhile; payment-service refunds it.
                order.payment_id = self.payment_id;
                Change::Details
            }
            _ => {
                info!(order_id = %order.id, status = order.status.as_str(), event = ?self.event,
                    "the order moved on; nothing to change");
                Change::Nothing
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use events::{Currency, PaymentCompleted, PaymentFailed, PaymentRefunded, Producer};

    use super::*;

    fn order(status: OrderStatus) -> Order {
        let now = OffsetDateTime::now_utc();
        Order {
            id: Uuid::now_v7(),
            customer_id: "alice".into(),
            items: Vec::new(),
            total_cents: 700,
            currency: "EUR".into(),
            status,
            payment_id: None,
            failure_reason: None,
            refunded_at: None,
            created_at: now,
            updated_at: now,
        }
    }

    fn outcome(order: &Order, event: Event) -> Outcome {
        let envelope = Envelope::new(Producer::PaymentService, event);
        assert_eq!(envelope.order_id, order.id);
        Outcome::of(&envelope).expect("a payment outcome")
    }

    fn eur() -> Currency {
        Currency::parse("EUR").expect("valid")
    }

    fn completed(order: &Order, payment_id: Uuid) -> Outcome {
        outcome(
            order,
            Event::PaymentCompleted(PaymentCompleted {
                payment_id,
                order_id: order.id,
                customer_id: order.customer_id.clone(),
                amount_cents: 700,
                currency: eur(),
            }),
        )
    }

    #[test]
    fn outcomes_of_one_batch_apply_in_stream_order() {
        let mut paid = order(OrderStatus::Pending);
        let payment_id = Uuid::now_v7();
        let failed = outcome(
            &paid,
            Event::PaymentFailed(PaymentFailed {
                order_id: paid.id,
                customer_id: "alice".into(),
                amount_cents: 700,
                currency: eur(),
                reason: events::FailureReason::InsufficientFunds,
            }),
        );
        assert_eq!(
            completed(&paid, payment_id).apply(&mut paid),
            Change::Status
        );
        assert_eq!(
            failed.apply(&mut paid),
            Change::Nothing,
            "the first outcome stands"
        );
        assert_eq!(
            (paid.status, paid.payment_id, paid.failure_reason),
            (OrderStatus::Paid, Some(payment_id), None)
        );
    }

    #[test]
    fn a_cancelled_order_records_the_late_payment_and_its_refund() {
        let mut cancelled = order(OrderStatus::Cancelled);
        let payment_id = Uuid::now_v7();
        let refunded = outcome(
            &cancelled,
            Event::PaymentRefunded(PaymentRefunded {
                payment_id,
                order_id: cancelled.id,
                customer_id: "alice".into(),
                amount_cents: 700,
                currency: eur(),
            }),
        );
        let late = completed(&cancelled, payment_id);
        assert_eq!(late.apply(&mut cancelled), Change::Details);
        assert_eq!(refunded.apply(&mut cancelled), Change::Details);
        assert_eq!(refunded.apply(&mut cancelled), Change::Nothing, "once");
        assert_eq!(late.apply(&mut cancelled), Change::Nothing, "once");
        assert_eq!(cancelled.status, OrderStatus::Cancelled);
        assert_eq!(cancelled.payment_id, Some(payment_id));
        assert!(cancelled.refunded_at.is_some());
    }
}
