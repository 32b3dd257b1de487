//! A batch of `order-events` as payment-service reads it: each event typed, and what the
//! batch needs loaded before the [`Ledger`](crate::ledger::Ledger) can settle it: the
//! orders it names, the payments it refunds, the accounts it touches.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use events::{Envelope, Event, OrderCancelled, OrderCreated};
use uuid::Uuid;

use crate::db::{ClaimedOrders, OrderPayment, Payment};
use crate::domain::OrderPaymentState;
use crate::ledger::LedgerError;

/// An event of `order-events`, with the envelope it came in.
#[derive(Debug, Clone, Copy)]
pub enum OrderEvent<'a> {
    Created(&'a Envelope, &'a OrderCreated),
    Cancelled(&'a Envelope, &'a OrderCancelled),
}

impl<'a> OrderEvent<'a> {
    /// The order event in `envelope`; anything else does not belong on `order-events`.
    pub fn of(envelope: &'a Envelope) -> Result<Self, LedgerError> {
        match &envelope.event {
            Event::OrderCreated(order) => Ok(Self::Created(envelope, order)),
            Event::OrderCancelled(cancel) => Ok(Self::Cancelled(envelope, cancel)),
            Event::PaymentCompleted(_)
            | Event::PaymentFailed(_)
            | Event::PaymentRefunded(_)
            | Event::PaymentCancelled(_) => {
                Err(LedgerError::WrongStream(envelope.event_type().as_str()))
            }
        }
    }

    pub fn order_id(&self) -> Uuid {
        match self {
            Self::Created(_, order) => order.order_id,
            Self::Cancelled(_, cancel) => cancel.order_id,
        }
    }

    pub fn customer_id(&self) -> &'a str {
        match self {
            Self::Created(_, order) => &order.customer_id,
            Self::Cancelled(_, cancel) => &cancel.customer_id,
        }
    }
}

/// The orders `events` name, each with the customer it first names.
pub fn orders_of<'a>(events: &[OrderEvent<'a>]) -> BTreeMap<Uuid, &'a str> {
    let mut orders = BTreeMap::new();
    for event in events {
        orders
            .entry(event.order_id())
            .or_insert_with(|| event.customer_id());
    }
    orders
}

/// Checks that every event names the customer its order belongs to (`customers`, as
/// claimed). order-service never changes an order's customer, so an event that names
/// another one is forged or corrupted: it must neither charge nor refund anyone.
///
/// Only orders whose customer an `OrderCreated` established are checked (charged,
/// declined or refunded): a saga row that a cancellation opened, before any
/// `OrderCreated`, names whoever that cancellation named, and an `OrderCreated`
/// contradicting it is declined as cancelled anyway (no money moves either way), rather
/// than dead-lettered and asked again for ever.
pub fn check_customers(
    events: &[OrderEvent<'_>],
    claimed: &ClaimedOrders,
) -> Result<(), LedgerError> {
    for event in events {
        let order_id = event.order_id();
        let created = matches!(
            claimed.states.get(&order_id),
            Some(Some(decided)) if decided.state != OrderPaymentState::Cancelled
        );
        match claimed.customers.get(&order_id) {
            Some(owner) if created && owner != event.customer_id() => {
                return Err(LedgerError::CustomerMismatch {
                    order_id,
                    named: event.customer_id().to_owned(),
                    owner: owner.clone(),
                });
            }
            _ => {}
        }
    }
    Ok(())
}

/// The earlier payments `events` need: those of charged orders (paid, or paid and
/// refunded), to refund them or to tell them again to a question asked again.
pub fn payments_named(
    events: &[OrderEvent<'_>],
    claimed: &HashMap<Uuid, Option<OrderPayment>>,
) -> Vec<Uuid> {
    let named: BTreeSet<Uuid> = events
        .iter()
        .filter_map(|event| claimed.get(&event.order_id())?.as_ref())
        .filter(|decided| {
            matches!(
                decided.state,
                OrderPaymentState::Paid | OrderPaymentState::Refunded
            )
        })
        .filter_map(|decided| decided.payment_id)
        .collect();
    named.into_iter().collect()
}

/// The accounts `events` touch, each with the currency of its first order to be charged:
/// the customers of orders seen here for the first time (to charge them) and of
/// `payments` (to refund them, or tell them again).
pub fn accounts_of<'a>(
    events: &[OrderEvent<'a>],
    claimed: &HashMap<Uuid, Option<OrderPayment>>,
    payments: &'a [Payment],
) -> BTreeMap<&'a str, Option<&'a str>> {
    let mut accounts = BTreeMap::new();
    let mut seen = HashSet::new();
    for event in events {
        let first_sight = seen.insert(event.order_id());
        if let OrderEvent::Created(_, order) = *event
            && first_sight
            && matches!(claimed.get(&order.order_id), Some(None))
        {
            let currency = accounts.entry(order.customer_id.as_str()).or_insert(None);
            currency.get_or_insert(order.currency.as_str());
        }
    }
    for payment in payments {
        accounts.entry(payment.customer_id.as_str()).or_insert(None);
    }
    accounts
}
