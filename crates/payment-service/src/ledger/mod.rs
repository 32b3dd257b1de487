//! The settlement of a batch of order events, in memory (SPEC §5.2): given what the
//! database holds for the batch's orders and accounts (locked), run the events in stream
//! order through the per-order decisions of [`domain`](crate::domain), keeping balances
//! as they go, and come out with what to write ([`Settlement`]) and what to publish.
//! Pure: the handler loads, this decides, the handler writes, each in one statement.
//!
//! Every answer is recorded on the order's saga row (its `event_id`, and the reason of a
//! decline), so a question asked again is answered from that record and the payment,
//! with the same `event_id`, however long ago the outbox forgot the answer (SPEC §4.9). That
//! rebuilding is in `again.rs`.

use std::collections::{BTreeSet, HashMap};

use events::{
    Envelope, Event, FailureReason, OrderCancelled, OrderCreated, PaymentCancelled,
    PaymentCompleted, PaymentFailed, Producer,
};
use time::OffsetDateTime;
use tracing::info;
use uuid::Uuid;

use crate::batch::OrderEvent;
use crate::db::{Account, NewPayment, OrderPayment, Payment, Settlement};
use crate::domain::{
    Charge, OnOrderCancelled, OnOrderCreated, OrderPaymentState, decide_charge, on_order_cancelled,
    on_order_created,
};

mod again;
mod refund;

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
    #[error("payment {0} was not loaded")]
    PaymentNotLoaded(Uuid),
    #[error("stored payment {0} has an invalid currency")]
    InvalidCurrency(Uuid),
    #[error("order {0} was answered, but its record lacks the answer")]
    AnswerNotRecorded(Uuid),
    #[error("the event names customer {named:?}, but order {order_id} is {owner:?}'s")]
    CustomerMismatch {
        order_id: Uuid,
        named: String,
        owner: String,
    },
    #[error("the balance of {0} would leave the range of i64")]
    BalanceOverflow(String),
}

/// Which of an order's two questions an answer answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Question {
    Created,
    Cancelled,
}

/// What a batch came to: what to write, what to publish (in stream order), and the
/// recorded answers to publish again (rebuilt from the record, same `event_id`).
#[derive(Debug)]
pub struct Settled {
    pub settlement: Settlement,
    pub published: Vec<Envelope>,
    pub answered_again: Vec<Envelope>,
}

/// The state of a batch's orders and accounts, changed event by event.
#[derive(Debug)]
pub struct Ledger {
    states: HashMap<Uuid, Option<OrderPayment>>,
    accounts: HashMap<String, Account>,
    earlier_payments: HashMap<Uuid, Payment>,
    changed: BTreeSet<Uuid>,
    settled: Settled,
    /// The time payment deadlines are measured against.
    now: OffsetDateTime,
}

impl Ledger {
    /// Starts from the claimed saga states, the locked accounts and the earlier payments
    /// the batch names ([`payments_named`](crate::batch::payments_named)), at `now`.
    pub fn new(
        states: HashMap<Uuid, Option<OrderPayment>>,
        accounts: Vec<Account>,
        earlier_payments: Vec<Payment>,
        now: OffsetDateTime,
    ) -> Self {
        Self {
            states,
            accounts: accounts
                .into_iter()
                .map(|a| (a.customer_id.clone(), a))
                .collect(),
            earlier_payments: earlier_payments.into_iter().map(|p| (p.id, p)).collect(),
            changed: BTreeSet::new(),
            settled: Settled {
                settlement: Settlement::default(),
                published: Vec::new(),
                answered_again: Vec::new(),
            },
            now,
        }
    }

    /// Applies `event` to the ledger.
    pub fn apply(&mut self, event: OrderEvent<'_>) -> Result<(), LedgerError> {
        let decided = self.decided(event.order_id()).cloned();
        let state = decided.as_ref().map(|d| d.state);
        match event {
            OrderEvent::Created(cause, order) => {
                let answered = decided.as_ref().is_some_and(|d| d.created_answer.is_some());
                let expired = order.pay_by.is_some_and(|pay_by| pay_by <= self.now);
                match on_order_created(state, answered, expired) {
                    OnOrderCreated::AnswerAgain => {
                        info!(order_id = %order.order_id, ?state, "order already answered; no second charge, the answer again");
                        self.answer_created_again(cause, order)
                    }
                    OnOrderCreated::DeclineAsCancelled => {
                        let cancelled = OrderPaymentState::Cancelled;
                        self.decline(cause, order, FailureReason::OrderCancelled, cancelled);
                        Ok(())
                    }
                    OnOrderCreated::DeclineAsExpired => {
                        info!(order_id = %order.order_id, pay_by = ?order.pay_by, "the payment deadline has passed; not charged");
                        let declined = OrderPaymentState::Declined;
                        self.decline(cause, order, FailureReason::PaymentExpired, declined);
                        Ok(())
                    }
                    OnOrderCreated::TryCharge => self.try_charge(cause, order),
                }
            }
            OrderEvent::Cancelled(cause, cancel) => {
                let answered = decided
                    .as_ref()
                    .is_some_and(|d| d.cancelled_answer.is_some());
                match on_order_cancelled(state, answered) {
                    OnOrderCancelled::Remember => {
                        self.confirm_cancellation(cause, cancel, OrderPaymentState::Cancelled);
                        Ok(())
                    }
                    OnOrderCancelled::Confirm => {
                        self.confirm_cancellation(cause, cancel, OrderPaymentState::Declined);
                        Ok(())
                    }
                    OnOrderCancelled::AnswerAgain => self.answer_cancellation_again(cause, cancel),
                    OnOrderCancelled::Refund => self.refund(cause, cancel),
                }
            }
        }
    }

    /// What the batch came to.
    pub fn finish(mut self) -> Settled {
        for order_id in std::mem::take(&mut self.changed) {
            if let Some(Some(decided)) = self.states.remove(&order_id) {
                self.settled.settlement.orders.insert(order_id, decided);
            }
        }
        self.settled
    }

    fn decided(&self, order_id: Uuid) -> Option<&OrderPayment> {
        self.states.get(&order_id).and_then(Option::as_ref)
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
                self.decide(order.order_id, OrderPaymentState::Paid, Some(payment_id));
                self.answer(
                    cause,
                    Question::Created,
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
        self.decide(order.order_id, state, None);
        self.answer(cause, Question::Created, declined(order, reason));
    }

    /// Answers a cancellation of an order that was not and will not be charged, leaving
    /// it in `state`.
    fn confirm_cancellation(
        &mut self,
        cause: &Envelope,
        cancel: &OrderCancelled,
        state: OrderPaymentState,
    ) {
        self.decide(cancel.order_id, state, None);
        self.answer(cause, Question::Cancelled, cancellation_confirmed(cancel));
    }

    /// Sets the order's state (and its payment, if `payment_id` is given).
    fn decide(&mut self, order_id: Uuid, state: OrderPaymentState, payment_id: Option<Uuid>) {
        let decided = self
            .states
            .entry(order_id)
            .or_default()
            .get_or_insert_with(|| OrderPayment::new(state));
        decided.state = state;
        decided.payment_id = payment_id.or(decided.payment_id);
        self.changed.insert(order_id);
    }

    /// Publishes `event` as the answer to the order's `question`, and records it on the
    /// order's saga row (decided just before).
    fn answer(&mut self, cause: &Envelope, question: Question, event: Event) {
        let envelope = Envelope::caused_by(cause, Producer::PaymentService, event);
        if let Some(Some(decided)) = self.states.get_mut(&envelope.order_id) {
            match question {
                Question::Created => decided.created_answer = Some(envelope.event_id),
                Question::Cancelled => decided.cancelled_answer = Some(envelope.event_id),
            }
            if let Event::PaymentFailed(failed) = &envelope.event {
                decided.decline_reason = Some(failed.reason.clone());
            }
        }
        self.settled.published.push(envelope);
    }
}

/// The answer that `order` was not charged, for `reason`.
fn declined(order: &OrderCreated, reason: FailureReason) -> Event {
    Event::PaymentFailed(PaymentFailed {
        order_id: order.order_id,
        customer_id: order.customer_id.clone(),
        amount_cents: order.total_cents,
        currency: order.currency,
        reason,
    })
}

/// The answer that a cancelled order was not and will not be charged.
fn cancellation_confirmed(cancel: &OrderCancelled) -> Event {
    Event::PaymentCancelled(PaymentCancelled {
        order_id: cancel.order_id,
        customer_id: cancel.customer_id.clone(),
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use events::{Currency, OrderItem};

    use super::*;
    use crate::batch::{accounts_of, orders_of};
    use crate::domain::PaymentStatus;

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
                    pay_by: None,
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
            Some(OrderPayment::new(OrderPaymentState::Declined)),
        );
        let accounts = accounts_of(&batch, &claimed, &[]);
        assert_eq!(
            accounts.into_iter().collect::<Vec<_>>(),
            [("ann", Some("EUR"))],
            "no account for an order decided before or cancelled first"
        );
    }

    /// Settles `batch`, all of it ann's, with 1000 cents on her account.
    fn settle_for_ann(batch: Vec<OrderEvent<'_>>) -> Settled {
        let account = Account {
            customer_id: "ann".into(),
            balance_cents: 1000,
            currency: Some("EUR".into()),
        };
        let mut ledger = Ledger::new(
            unseen(&batch),
            vec![account],
            Vec::new(),
            OffsetDateTime::now_utc(),
        );
        for event in batch {
            ledger.apply(event).expect("applies");
        }
        ledger.finish()
    }

    #[test]
    fn an_order_charged_and_cancelled_in_one_batch_is_refunded_in_full() {
        let order = created("ann", "EUR", 700);
        let cancel = cancelled(&order);
        let batch = events(&[&order, &cancel]);
        let Settled {
            settlement,
            published,
            ..
        } = settle_for_ann(batch);
        assert_eq!(
            settlement.balance_deltas.get("ann"),
            Some(&0),
            "whole again"
        );
        assert!(settlement.new_payments.iter().all(|p| p.refunded));
        assert!(settlement.refunded.is_empty(), "no earlier payment touched");
        let decided = &settlement.orders[&order.order_id];
        assert_eq!(decided.state, OrderPaymentState::Refunded);
        assert_eq!(decided.payment_id, Some(settlement.new_payments[0].id));
        let types: Vec<_> = published.iter().map(|e| e.event_type().as_str()).collect();
        assert_eq!(types, ["PaymentCompleted", "PaymentRefunded"]);
        assert_eq!(
            (decided.created_answer, decided.cancelled_answer),
            (Some(published[0].event_id), Some(published[1].event_id)),
            "both answers recorded"
        );
        assert_eq!(
            published[0].traceparent, order.traceparent,
            "the answer continues its cause's trace"
        );
    }

    #[test]
    fn a_question_asked_again_in_the_same_batch_gets_the_answer_just_given() {
        let order = created("ann", "EUR", 700);
        let cancel = cancelled(&order);
        let batch = events(&[&order, &order, &cancel, &cancel]);
        let Settled {
            settlement,
            published,
            answered_again,
        } = settle_for_ann(batch);
        assert_eq!(settlement.new_payments.len(), 1, "charged once");
        assert_eq!(
            settlement.balance_deltas.get("ann"),
            Some(&0),
            "refunded once"
        );
        let told = |events: &[Envelope]| -> Vec<(Uuid, Event)> {
            events
                .iter()
                .map(|e| (e.event_id, e.event.clone()))
                .collect()
        };
        assert_eq!(told(&answered_again), told(&published));
    }

    /// `order` with its payment deadline at `pay_by`.
    fn due_by(mut order: Envelope, pay_by: OffsetDateTime) -> Envelope {
        if let Event::OrderCreated(created) = &mut order.event {
            created.pay_by = Some(pay_by);
        }
        order
    }

    #[test]
    fn what_is_not_charged_is_declined_for_its_reason_and_answered() {
        let now = OffsetDateTime::now_utc();
        let over = created("ann", "EUR", 5000);
        let expired = due_by(created("ann", "EUR", 100), now - time::Duration::seconds(1));
        let due = due_by(
            created("ann", "EUR", 100),
            now + time::Duration::minutes(15),
        );
        let never = created("ann", "EUR", 100);
        let cancel_first = cancelled(&never);
        let batch = events(&[&over, &expired, &due, &cancel_first, &never]);
        let Settled {
            settlement,
            published,
            ..
        } = settle_for_ann(batch);
        let told: Vec<(Uuid, String)> = published
            .iter()
            .map(|e| {
                let reason = match &e.event {
                    Event::PaymentFailed(failed) => failed.reason.to_string(),
                    other => other.event_type().to_string(),
                };
                (e.order_id, reason)
            })
            .collect();
        let told: Vec<(Uuid, &str)> = told.iter().map(|(id, r)| (*id, r.as_str())).collect();
        assert_eq!(
            told,
            [
                (over.order_id, "insufficient_funds"),
                (expired.order_id, "payment_expired"),
                (due.order_id, "PaymentCompleted"),
                (never.order_id, "PaymentCancelled"),
                (never.order_id, "order_cancelled"),
            ]
        );
        let state = |order: &Envelope| settlement.orders[&order.order_id].state;
        assert_eq!(state(&over), OrderPaymentState::Declined);
        assert_eq!(state(&expired), OrderPaymentState::Declined);
        assert_eq!(state(&due), OrderPaymentState::Paid);
        assert_eq!(state(&never), OrderPaymentState::Cancelled);
        assert_eq!(
            settlement.new_payments.len(),
            1,
            "only the order due is charged"
        );
        assert_eq!(settlement.balance_deltas.get("ann"), Some(&-100));
    }

    #[test]
    fn a_charge_of_an_earlier_batch_is_refunded_once_and_only_if_it_stands() {
        let order = created("ann", "EUR", 700);
        let cancel = cancelled(&order);
        let payment = |status| Payment {
            id: Uuid::now_v7(),
            order_id: order.order_id,
            customer_id: "ann".into(),
            amount_cents: 700,
            currency: "EUR".into(),
            status,
            created_at: OffsetDateTime::now_utc(),
            refunded_at: None,
        };
        let settle = |earlier: Payment| {
            let paid = OrderPayment {
                payment_id: Some(earlier.id),
                ..OrderPayment::new(OrderPaymentState::Paid)
            };
            let account = Account {
                customer_id: "ann".into(),
                balance_cents: 300,
                currency: Some("EUR".into()),
            };
            let mut ledger = Ledger::new(
                HashMap::from([(order.order_id, Some(paid))]),
                vec![account],
                vec![earlier],
                OffsetDateTime::now_utc(),
            );
            let applied = ledger.apply(OrderEvent::of(&cancel).expect("order event"));
            (applied, ledger.finish())
        };
        let standing = payment(PaymentStatus::Completed);
        let (applied, settled) = settle(standing.clone());
        assert_eq!(applied, Ok(()));
        assert_eq!(settled.settlement.refunded, [standing.id]);
        assert_eq!(settled.settlement.balance_deltas.get("ann"), Some(&700));
        let (applied, _) = settle(payment(PaymentStatus::Refunded));
        assert!(applied.is_err(), "a refunded charge is not refunded again");
    }

    #[test]
    fn a_charge_needs_a_locked_account_and_events_of_other_streams_are_rejected() {
        let order = created("ann", "EUR", 700);
        let batch = events(&[&order]);
        let mut ledger = Ledger::new(
            unseen(&batch),
            Vec::new(),
            Vec::new(),
            OffsetDateTime::now_utc(),
        );
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
