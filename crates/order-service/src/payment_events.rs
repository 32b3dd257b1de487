//! What payment outcomes do to orders (SPEC §5.1). Runs inside the consumer's
//! transaction, after the inbox recorded the event, so each applies exactly once.
//!
//! Updates are conditional on the current status (`WHERE status = 'PENDING'`), so the
//! database serialises racing events on one order; an outcome for an order that is no
//! longer pending changes nothing.

use events::{Envelope, Event};
use service_runtime::{EventHandler, HandleError};
use sqlx::PgConnection;
use tracing::info;

use crate::db;

/// Applies `payment-events` to orders.
#[derive(Debug, Clone, Copy, Default)]
pub struct PaymentEvents;

impl EventHandler for PaymentEvents {
    async fn handle(&self, tx: &mut PgConnection, envelope: &Envelope) -> Result<(), HandleError> {
        let applied = match &envelope.event {
            Event::PaymentCompleted(paid) => {
                db::mark_paid(tx, paid.order_id, paid.payment_id).await?
            }
            Event::PaymentFailed(failed) => {
                db::mark_payment_failed(tx, failed.order_id, failed.reason.as_str()).await?
            }
            Event::PaymentRefunded(refund) => db::mark_refunded(tx, refund.order_id).await?,
            Event::OrderCreated(_) | Event::OrderCancelled(_) => {
                return Err(HandleError::Rejected(format!(
                    "{} does not belong on payment-events",
                    envelope.event_type()
                )));
            }
        };
        if !applied {
            info!(order_id = %envelope.order_id, event_type = %envelope.event_type(),
                "the order is unknown or no longer pending; nothing to change");
        }
        Ok(())
    }
}
