//! Refunding a charged order whose cancellation came, and what a payment charged, as the
//! answers about it tell it (a refund, or an answer rebuilt in [`again`](super::again)).

use events::{Currency, Envelope, Event, OrderCancelled, PaymentRefunded};
use uuid::Uuid;

use super::{Ledger, LedgerError, Question};
use crate::domain::{OrderPaymentState, PaymentStatus};

impl Ledger {
    /// Credits the order's payment back and publishes `PaymentRefunded`.
    pub(super) fn refund(
        &mut self,
        cause: &Envelope,
        cancel: &OrderCancelled,
    ) -> Result<(), LedgerError> {
        let payment_id = self
            .decided(cancel.order_id)
            .and_then(|decided| decided.payment_id)
            .ok_or(LedgerError::NoPaymentId(cancel.order_id))?;
        let charge = self.charge(payment_id)?;
        if let Some(made_now) = self
            .settled
            .settlement
            .new_payments
            .iter_mut()
            .find(|p| p.id == payment_id)
        {
            made_now.refunded = true;
        } else if self
            .earlier_payments
            .get(&payment_id)
            .is_some_and(|p| p.status == PaymentStatus::Completed)
        {
            self.settled.settlement.refunded.push(payment_id);
        } else {
            return Err(LedgerError::NotAStandingCharge(payment_id));
        }
        let customer_id = &charge.customer_id;
        let overflow = || LedgerError::BalanceOverflow(customer_id.clone());
        if let Some(account) = self.accounts.get_mut(customer_id) {
            account.balance_cents = account
                .balance_cents
                .checked_add(charge.amount_cents)
                .ok_or_else(overflow)?;
        }
        let delta = self
            .settled
            .settlement
            .balance_deltas
            .entry(customer_id.clone())
            .or_default();
        *delta = delta
            .checked_add(charge.amount_cents)
            .ok_or_else(overflow)?;
        self.decide(
            cancel.order_id,
            OrderPaymentState::Refunded,
            Some(payment_id),
        );
        self.answer(
            cause,
            Question::Cancelled,
            Event::PaymentRefunded(PaymentRefunded {
                payment_id,
                order_id: cancel.order_id,
                customer_id: charge.customer_id,
                amount_cents: charge.amount_cents,
                currency: charge.currency,
            }),
        );
        Ok(())
    }

    /// The charge of payment `payment_id`, made by this batch or loaded.
    pub(super) fn charge(&self, payment_id: Uuid) -> Result<Charged, LedgerError> {
        if let Some(made_now) = self
            .settled
            .settlement
            .new_payments
            .iter()
            .find(|p| p.id == payment_id)
        {
            return Charged::of(
                payment_id,
                &made_now.customer_id,
                made_now.amount_cents,
                &made_now.currency,
            );
        }
        let earlier = self
            .earlier_payments
            .get(&payment_id)
            .ok_or(LedgerError::PaymentNotLoaded(payment_id))?;
        Charged::of(
            payment_id,
            &earlier.customer_id,
            earlier.amount_cents,
            &earlier.currency,
        )
    }
}

/// What a payment charged, as its answers tell it.
pub(super) struct Charged {
    pub(super) customer_id: String,
    pub(super) amount_cents: i64,
    pub(super) currency: Currency,
}

impl Charged {
    fn of(
        payment_id: Uuid,
        customer_id: &str,
        amount_cents: i64,
        currency: &str,
    ) -> Result<Self, LedgerError> {
        Ok(Self {
            customer_id: customer_id.to_owned(),
            amount_cents,
            currency: Currency::parse(currency)
                .map_err(|_| LedgerError::InvalidCurrency(payment_id))?,
        })
    }
}
