//! Questions asked again (SPEC §4.6, §4.9): the answer an order was given, rebuilt from
//! its saga row and its payment, to be published again under its recorded `event_id`.

use events::{
    Envelope, Event, OrderCancelled, OrderCreated, PaymentCompleted, PaymentRefunded, Producer,
};
use uuid::Uuid;

use super::{Ledger, LedgerError, cancellation_confirmed, declined};
use crate::domain::OrderPaymentState;

impl Ledger {
    /// Tells again what an order's `OrderCreated` was answered: the payment made, or the
    /// decline and its reason.
    pub(super) fn answer_created_again(
        &mut self,
        cause: &Envelope,
        order: &OrderCreated,
    ) -> Result<(), LedgerError> {
        let not_recorded = || LedgerError::AnswerNotRecorded(order.order_id);
        let decided = self.decided(order.order_id).ok_or_else(not_recorded)?;
        let answer_id = decided.created_answer.ok_or_else(not_recorded)?;
        let event = match (decided.payment_id, &decided.decline_reason) {
            (Some(payment_id), _) => {
                let charge = self.charge(payment_id)?;
                Event::PaymentCompleted(PaymentCompleted {
                    payment_id,
                    order_id: order.order_id,
                    customer_id: charge.customer_id,
                    amount_cents: charge.amount_cents,
                    currency: charge.currency,
                })
            }
            (None, Some(reason)) => declined(order, reason.clone()),
            (None, None) => return Err(not_recorded()),
        };
        self.answer_again(cause, answer_id, event);
        Ok(())
    }

    /// Tells again what an order's cancellation was answered: the refund, or that nothing
    /// was or will be charged.
    pub(super) fn answer_cancellation_again(
        &mut self,
        cause: &Envelope,
        cancel: &OrderCancelled,
    ) -> Result<(), LedgerError> {
        let not_recorded = || LedgerError::AnswerNotRecorded(cancel.order_id);
        let decided = self.decided(cancel.order_id).ok_or_else(not_recorded)?;
        let answer_id = decided.cancelled_answer.ok_or_else(not_recorded)?;
        let event = match (decided.state, decided.payment_id) {
            (OrderPaymentState::Refunded, Some(payment_id)) => {
                let charge = self.charge(payment_id)?;
                Event::PaymentRefunded(PaymentRefunded {
                    payment_id,
                    order_id: cancel.order_id,
                    customer_id: charge.customer_id,
                    amount_cents: charge.amount_cents,
                    currency: charge.currency,
                })
            }
            (OrderPaymentState::Refunded | OrderPaymentState::Paid, _) => {
                return Err(not_recorded());
            }
            (OrderPaymentState::Cancelled | OrderPaymentState::Declined, _) => {
                cancellation_confirmed(cancel)
            }
        };
        self.answer_again(cause, answer_id, event);
        Ok(())
    }

    /// Publishes again, as `answer_id`, an answer rebuilt from the record.
    fn answer_again(&mut self, cause: &Envelope, answer_id: Uuid, event: Event) {
        self.settled.answered_again.push(Envelope {
            event_id: answer_id,
            ..Envelope::caused_by(cause, Producer::PaymentService, event)
        });
    }
}
