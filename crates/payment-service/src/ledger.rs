//! The settlement of a batch of order events, in memory (SPEC §5.2): given what the
//! database holds for the batch's orders and accounts (locked), run the events in stream
//! order through the per-order decisions of [`domain`](crate::domain), keeping balances
//! as they go, and come out with what to write ([`Settlement`]) and what to publish.
//! Pure: the handler loads, this decides, the handler writes, each in one statement.

use std::collections::HashMap;

use events::{
    Currency, Envelope, Event, FailureReason, OrderCancelled, OrderCreated, PaymentCancelled,
    PaymentCompleted, PaymentFailed, PaymentRefunded, Producer,
};
use tracing::info;
use uuid::Uuid;

use crate::batch::OrderEvent;
use crate::db::{Account, NewPayment, OrderPayment, Payment, Settlement};
use crate::domain::{
    Charge, OnOrderCancelled, OnOrderCreated, OrderPaymentState, PaymentStatus, decide_charge,
    on_order_cancelled, on_order_created,
};

/// Why the ledger cannot settle an event: it can never be applied as it stands.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LedgerError {
    #[error("{0} does not belong on order-events")]
    WrongStream(&'static str),
    #[error("the account of {0} was not locked")]
    AccountNotLocked(String),
    #[error("paid order {0} has no payment id")]
    NoPaymentId(Uuid),
    #[error("payment {0} is not a standing charge")]
    NotAStandingCharge(Uuid),
    #[error("stored payment {0} has an invalid currency")]
    InvalidCurrency(Uuid),
    #[error("the event names customer {named:?}, but order {order_id} is {owner:?}'s")]
    CustomerMismatch {
        order_id: Uuid,
        named: String,
        owner: String,
    },
    #[error("the balance of {0} would leave the range of i64")]
    BalanceOverflow(String),
}

/// The orders whose question came again after it was answered (the inbox forgot it, or
/// another event asked the same): the recorded answers are to be published again.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AskedAgain {
    /// Orders whose `OrderCreated` came again.
    pub created: Vec<Uuid>,
    /// Orders whose cancellation came again.
    pub cancelled: Vec<Uuid>,
}

/// What a batch came to: what to write, what to publish (in stream order), and which
/// answers to publish again.
#[derive(Debug)]
pub struct Settled {
    pub settlement: Settlement,
    pub published: Vec<Envelope>,
    pub asked_again: AskedAgain,
}

/// The state of a batch's orders and accounts, changed event by event.
#[derive(Debug)]
pub struct Ledger {
    states: HashMap<Uuid, Option<OrderPayment>>,
    accounts: HashMap<String, Account>,
    earlier_payments: HashMap<Uuid, Payment>,
    settled: Settled,
}

impl Ledger {
    /// Starts from the claimed saga states, the locked accounts and the payments to
    /// refund.
    pub fn new(
        states: HashMap<Uuid, Option<OrderPayment>>,
        accounts: Vec<Account>,
        earlier_payments: Vec<Payment>,
    ) -> Self {
        Self {
            states,
            accounts: accounts
                .into_iter()
                .map(|a| (a.customer_id.clone(), a))
                .collect(),
            earlier_payments: earlier_payments.into_iter().map(|p| (p.id, p)).collect(),
            settled: Settled {
                settlement: Settlement::default(),
                published: Vec::new(),
                asked_again: AskedAgain::default(),
            },
        }
    }

    /// Applies `event` to the ledger.
    pub fn apply(&mut self, event: OrderEvent<'_>) -> Result<(), LedgerError> {
        let state = self
            .states
            .get(&event.order_id())
            .copied()
            .flatten()
            .map(|decided| decided.state);
        match event {
            OrderEvent::Created(cause, order) => match on_order_created(state) {
                OnOrderCreated::AnswerAgain => {
                    info!(order_id = %order.order_id, ?state, "order already decided; no second charge, the outcome again");
                    self.settled.asked_again.created.push(order.order_id);
                    Ok(())
                }
                OnOrderCreated::DeclineAsCancelled => {
                    let cancelled = OrderPaymentState::Cancelled;
                    self.decline(cause, order, FailureReason::OrderCancelled, cancelled);
                    Ok(())
                }
                OnOrderCreated::TryCharge => self.try_charge(cause, order),
            },
            OrderEvent::Cancelled(cause, cancel) => match on_order_cancelled(state) {
                OnOrderCancelled::Remember => {
                    self.set_state(cancel.order_id, OrderPaymentState::Cancelled, None);
                    self.confirm_cancellation(cause, cancel);
                    Ok(())
                }
                OnOrderCancelled::Confirm => {
                    self.confirm_cancellation(cause, cancel);
                    Ok(())
                }
                OnOrderCancelled::AnswerAgain => {
                    self.settled.asked_again.cancelled.push(cancel.order_id);
                    Ok(())
                }
                OnOrderCancelled::Refund => self.refund(cause, cancel),
            },
        }
    }

    /// What the batch came to.
    pub fn finish(self) -> Settled {
        self.settled
    }

    fn try_charge(&mut self, cause: &Envelope, order: &OrderCreated) -> Result<(), LedgerError> {
        let currency = order.currency.as_str();
        let account = self
            .accounts
            .get_mut(&order.customer_id)
            .ok_or_else(|| LedgerError::AccountNotLocked(order.customer_id.clone()))?;
        // Opening the account set its currency if it had none.
        let account_currency = account.currency.as_deref().unwrap_or(currency);
        match decide_charge(
            account.balance_cents,
            account_currency,
            order.total_cents,
            currency,
        ) {
            Charge::Decline(reason) => {
                self.decline(cause, order, reason, OrderPaymentState::Declined);
                Ok(())
            }
            Charge::Approve => {
                let overflow = || LedgerError::BalanceOverflow(order.customer_id.clone());
                account.balance_cents = account
                    .balance_cents
                    .checked_sub(order.total_cents)
                    .ok_or_else(overflow)?;
                let delta = self
                    .settled
                    .settlement
                    .balance_deltas
                    .entry(order.customer_id.clone())
                    .or_default();
                *delta = delta.checked_sub(order.total_cents).ok_or_else(overflow)?;
                let payment_id = Uuid::now_v7();
                self.settled.settlement.new_payments.push(NewPayment {
                    id: payment_id,
                    order_id: order.order_id,
                    customer_id: order.customer_id.clone(),
                    amount_cents: order.total_cents,
                    currency: currency.to_owned(),
                    refunded: false,
                });
                self.set_state(order.order_id, OrderPaymentState::Paid, Some(payment_id));
                self.publish(
                    cause,
                    Event::PaymentCompleted(PaymentCompleted {
                        payment_id,
                        order_id: order.order_id,
                        customer_id: order.customer_id.clone(),
                        amount_cents: order.total_cents,
                        currency: order.currency,
                    }),
                );
                Ok(())
            }
        }
    }

    /// Publishes `PaymentFailed(reason)` and leaves the order in `state`; charges nothing.
    fn decline(
        &mut self,
        cause: &Envelope,
        order: &OrderCreated,
        reason: FailureReason,
        state: OrderPaymentState,
    ) {
        self.set_state(order.order_id, state, None);
        self.publish(
            cause,
            Event::PaymentFailed(PaymentFailed {
                order_id: order.order_id,
                customer_id: order.customer_id.clone(),
                amount_cents: order.total_cents,
                currency: order.currency,
                reason,
            }),
        );
    }

    /// Answers a cancellation of an order that was not and will not be charged.
    fn confirm_cancellation(&mut self, cause: &Envelope, cancel: &OrderCancelled) {
        self.publish(
            cause,
            Event::PaymentCancelled(PaymentCancelled {
                order_id: cancel.order_id,
                customer_id: cancel.customer_id.clone(),
            }),
        );
    }

    /// Credits the order's payment back and publishes `PaymentRefunded`.
    fn refund(&mut self, cause: &Envelope, cancel: &OrderCancelled) -> Result<(), LedgerError> {
        let payment_id = self
            .states
            .get(&cancel.order_id)
            .copied()
            .flatten()
            .and_then(|decided| decided.payment_id)
            .ok_or(LedgerError::NoPaymentId(cancel.order_id))?;
        let (customer_id, amount_cents, currency) = if let Some(made_now) = self
            .settled
            .settlement
            .new_payments
            .iter_mut()
            .find(|p| p.id == payment_id)
        {
            made_now.refunded = true;
            (
                made_now.customer_id.clone(),
                made_now.amount_cents,
                made_now.currency.clone(),
            )
        } else {
            let earlier = self
                .earlier_payments
                .get(&payment_id)
                .filter(|p| p.status == PaymentStatus::Completed)
                .ok_or(LedgerError::NotAStandingCharge(payment_id))?;
            self.settled.settlement.refunded.push(payment_id);
            (
                earlier.customer_id.clone(),
                earlier.amount_cents,
                earlier.currency.clone(),
            )
        };
        let overflow = || LedgerError::BalanceOverflow(customer_id.clone());
        if let Some(account) = self.accounts.get_mut(&customer_id) {
            account.balance_cents = account
                .balance_cents
                .checked_add(amount_cents)
                .ok_or_else(overflow)?;
        }
        let delta = self
            .settled
            .settlement
            .balance_deltas
            .entry(customer_id.clone())
            .or_default();
        *delta = delta.checked_add(amount_cents).ok_or_else(overflow)?;
        self.set_state(
            cancel.order_id,
            OrderPaymentState::Refunded,
            Some(payment_id),
        );
        let currency =
            Currency::parse(&currency).map_err(|_| LedgerError::InvalidCurrency(payment_id))?;
        self.publish(
            cause,
            Event::PaymentRefunded(PaymentRefunded {
                payment_id,
                order_id: cancel.order_id,
                customer_id,
                amount_cents,
                currency,
            }),
        );
        Ok(())
    }

    fn set_state(&mut self, order_id: Uuid, state: OrderPaymentState, payment_id: Option<Uuid>) {
        let decided = self.states.entry(order_id).or_default();
        let payment_id = payment_id.or(decided.and_then(|d| d.payment_id));
        *decided = Some(OrderPayment { state, payment_id });
        self.settled
            .settlement
            .orders
            .insert(order_id, (state, payment_id));
    }

    fn publish(&mut self, cause: &Envelope, event: Event) {
        self.settled
            .published
            .push(Envelope::caused_by(cause, Producer::PaymentService, event));
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use events::{Currency, OrderItem};

    use super::*;
    use crate::batch::{accounts_of, orders_of};

    fn created(customer: &str, currency: &str, total_cents: i64) -> Envelope {
        Envelope {
            traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
            ..Envelope::new(
                Producer::OrderService,
                Event::OrderCreated(OrderCreated {
                    order_id: Uuid::now_v7(),
                    customer_id: customer.into(),
                    items: vec![OrderItem {
                        sku: "x".into(),
                        quantity: 1,
                        unit_price_cents: total_cents,
                    }],
                    total_cents,
                    currency: Currency::parse(currency).expect("valid"),
                }),
            )
        }
    }

    fn cancelled(order: &Envelope) -> Envelope {
        Envelope::new(
            Producer::OrderService,
            Event::OrderCancelled(OrderCancelled {
                order_id: order.order_id,
                customer_id: OrderEvent::of(order)
                    .expect("order event")
                    .customer_id()
                    .into(),
                reason: "changed my mind".into(),
            }),
        )
    }

    fn events<'a>(envelopes: &[&'a Envelope]) -> Vec<OrderEvent<'a>> {
        envelopes
            .iter()
            .map(|e| OrderEvent::of(e).expect("order event"))
            .collect()
    }

    /// The claim of a batch whose orders were all unseen.
    fn unseen(events: &[OrderEvent<'_>]) -> HashMap<Uuid, Option<OrderPayment>> {
        orders_of(events).into_keys().map(|id| (id, None)).collect()
    }

    #[test]
    fn accounts_are_opened_only_for_orders_to_charge_in_the_first_currency() {
        let (first, second, decided) = (
            created("ann", "EUR", 100),
            created("ann", "USD", 100),
            created("bob", "EUR", 100),
        );
        let cancelled_first = created("cyd", "EUR", 100);
        let cancel = cancelled(&cancelled_first);
        let batch = events(&[&first, &second, &decided, &cancel, &cancelled_first]);
        let mut claimed = unseen(&batch);
        claimed.insert(
            decided.order_id,
            Some(OrderPayment {
                state: OrderPaymentState::Declined,
                payment_id: None,
            }),
        );
        let accounts = accounts_of(&batch, &claimed, &[]);
        assert_eq!(
            accounts.into_iter().collect::<Vec<_>>(),
            [("ann", Some("EUR"))],
            "no account for an order decided before or cancelled first"
        );
    }

    #[test]
    fn an_order_charged_and_cancelled_in_one_batch_is_refunded_in_full() {
        let order = created("ann", "EUR", 700);
        let cancel = cancelled(&order);
        let batch = events(&[&order, &cancel]);
        let account = Account {
            customer_id: "ann".into(),
            balance_cents: 1000,
            currency: Some("EUR".into()),
        };
        let mut ledger = Ledger::new(unseen(&batch), vec![account], Vec::new());
        for event in batch {
            ledger.apply(event).expect("applies");
        }
        let Settled {
            settlement,
            published,
            ..
        } = ledger.finish();
        assert_eq!(
            settlement.balance_deltas.get("ann"),
            Some(&0),
            "whole again"
        );
        assert!(settlement.new_payments.iter().all(|p| p.refunded));
        assert!(settlement.refunded.is_empty(), "no earlier payment touched");
        let (state, payment_id) = settlement.orders[&order.order_id];
        assert_eq!(state, OrderPaymentState::Refunded);
        assert_eq!(payment_id, Some(settlement.new_payments[0].id));
        let types: Vec<_> = published.iter().map(|e| e.event_type().as_str()).collect();
        assert_eq!(types, ["PaymentCompleted", "PaymentRefunded"]);
        assert_eq!(
            published[0].traceparent, order.traceparent,
            "the answer continues its cause's trace"
        );
    }

    #[test]
    fn a_charge_needs_a_locked_account_and_events_of_other_streams_are_rejected() {
        let order = created("ann", "EUR", 700);
        let batch = events(&[&order]);
        let mut ledger = Ledger::new(unseen(&batch), Vec::new(), Vec::new());
        assert!(matches!(
            ledger.apply(batch[0]),
            Err(LedgerError::AccountNotLocked(_))
        ));
        let paid = Envelope::new(
            Producer::PaymentService,
            Event::PaymentFailed(PaymentFailed {
                order_id: order.order_id,
                customer_id: "ann".into(),
                amount_cents: 700,
                currency: Currency::parse("EUR").expect("valid"),
                reason: FailureReason::InsufficientFunds,
            }),
        );
        assert!(matches!(
            OrderEvent::of(&paid),
            Err(LedgerError::WrongStream("PaymentFailed"))
        ));
    }
}
