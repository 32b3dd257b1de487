//! What payment outcomes do to orders (SPEC §5.1). Runs inside the consumer's
//! transaction, after the inbox recorded the event, so each applies exactly once.
//!
//! The order row is locked, the state machine ([`transition`]) decides, and the change
//! is written: racing events and cancellations on one order are serialised by the
//! database. An outcome for an order that moved on changes nothing, except that a
//! cancelled order records the payment being refunded and a refund is recorded.

use events::{Envelope, Event};
use service_runtime::{EventHandler, HandleError};
use sqlx::PgConnection;
use tracing::info;

use crate::domain::{OrderEvent, OrderStatus, Transition, transition};
use crate::{db, orders};

/// Applies `payment-events` to orders.
#[derive(Debug, Clone, Copy, Default)]
pub struct PaymentEvents;

impl EventHandler for PaymentEvents {
    async fn handle(&self, tx: &mut PgConnection, envelope: &Envelope) -> Result<(), HandleError> {
        let (event, payment_id, failure_reason) = match &envelope.event {
            Event::PaymentCompleted(paid) => {
                (OrderEvent::PaymentCompleted, Some(paid.payment_id), None)
            }
            Event::PaymentFailed(failed) => (
                OrderEvent::PaymentFailed,
                None,
                Some(failed.reason.as_str()),
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
        let Some(order) = db::lock_order(tx, envelope.order_id).await? else {
            info!(order_id = %envelope.order_id, event_type = %envelope.event_type(), "no such order; nothing to change");
            return Ok(());
        };
        match (transition(order.status, event), event, payment_id) {
            (Transition::To(status), _, _) => {
                let decided =
                    db::set_status(tx, order.id, status, payment_id, failure_reason).await?;
                orders::record_time_to_final(&decided);
            }
            (_, OrderEvent::PaymentRefunded, _) => {
                db::mark_refunded(tx, order.id).await?;
            }
            (_, OrderEvent::PaymentCompleted, Some(payment_id))
                if order.status == OrderStatus::Cancelled =>
            {
                db::record_payment(tx, order.id, payment_id).await?;
            }
            _ => {
                info!(order_id = %order.id, status = order.status.as_str(), event_type = %envelope.event_type(),
                "the order moved on; nothing to change")
            }
        }
        Ok(())
    }
}
