//! What order events do to accounts and payments (SPEC §5.2, §4.5). Runs inside the
//! consumer's transaction, after the inbox recorded the events, so each applies once.
//!
//! A batch is applied set-based, in a fixed number of statements whatever its size:
//! 1. claim the saga row of every order it names (locking them, in order-id order):
//!    `OrderCreated` and `OrderCancelled` of one order are serialised by the database
//!    whatever order they arrive in, and a cancelled order is never charged without
//!    being refunded; an event naming another customer than the one the order's
//!    `OrderCreated` named is refused (forged);
//! 2. read the payments it will refund (only when it cancels paid orders);
//! 3. open and lock the accounts it touches (in customer order);
//! 4. settle the events in stream order in memory ([`Ledger`]);
//! 5. write payments, balances, saga states and the outcomes' outbox rows in one
//!    statement.
//!
//! Every question gets exactly one answer (SPEC §4.6): `OrderCreated` a `PaymentCompleted`
//! or `PaymentFailed`, `OrderCancelled` a `PaymentRefunded` or `PaymentCancelled`. A
//! question asked again (the same event, or another about an order already settled) has
//! its recorded answer published again, same `event_id`.

use std::time::Duration;

use events::Envelope;
use events::streams::PAYMENT_EVENTS;
use service_runtime::outbox::{self, OutboxRow, Reask};
use service_runtime::{EventHandler, HandleError};
use sqlx::PgConnection;
use tracing::info;

use crate::batch::{OrderEvent, accounts_of, check_customers, orders_of, payments_to_refund};
use crate::db;
use crate::domain::{ANSWERS_TO_CANCELLED, ANSWERS_TO_CREATED};
use crate::ledger::{Ledger, LedgerError};

/// A ledger error is about the event itself: it can never be applied (dead-lettered).
fn rejected(error: LedgerError) -> HandleError {
    HandleError::Rejected(error.to_string())
}

/// Applies `order-events` to accounts and payments.
#[derive(Debug, Clone, Copy)]
pub struct OrderEvents {
    /// Balance a new account opens with.
    pub initial_credit_cents: i64,
}

impl EventHandler for OrderEvents {
    /// By customer: a customer's events lock its account row, so they go to one
    /// transaction in stream order, and concurrent transactions never wait on each other.
    fn partition_key(&self, envelope: &Envelope) -> String {
        match OrderEvent::of(envelope) {
            Ok(event) => event.customer_id().to_owned(),
            Err(_) => envelope.order_id.to_string(),
        }
    }

    async fn handle(
        &self,
        tx: &mut PgConnection,
        events: &[&Envelope],
    ) -> Result<Vec<OutboxRow>, HandleError> {
        let events = events
            .iter()
            .map(|envelope| OrderEvent::of(envelope))
            .collect::<Result<Vec<_>, _>>()
            .map_err(rejected)?;
        let claimed = db::claim_orders(tx, &orders_of(&events)).await?;
        check_customers(&events, &claimed).map_err(rejected)?;
        let claimed = claimed.states;
        let refunding = payments_to_refund(&events, &claimed);
        let payments = if refunding.is_empty() {
            Vec::new()
        } else {
            db::payments_by_id(tx, &refunding).await?
        };
        let accounts = accounts_of(&events, &claimed, &payments);
        let accounts = if accounts.is_empty() {
            Vec::new()
        } else {
            db::open_and_lock_accounts(tx, &accounts, self.initial_credit_cents).await?
        };
        let mut ledger = Ledger::new(claimed, accounts, payments);
        for event in events {
            ledger.apply(event).map_err(rejected)?;
        }
        let settled = ledger.finish();
        let mut outgoing: Vec<OutboxRow> = settled
            .published
            .iter()
            .map(|answer| OutboxRow::new(PAYMENT_EVENTS, answer))
            .collect();
        db::settle(tx, &settled.settlement, &outgoing).await?;
        let asked = &settled.asked_again;
        outgoing.extend(
            outbox::republish(
                tx,
                &asked.created,
                Some(&ANSWERS_TO_CREATED),
                &Reask::every(Duration::ZERO),
            )
            .await?,
        );
        outgoing.extend(
            outbox::republish(
                tx,
                &asked.cancelled,
                Some(&ANSWERS_TO_CANCELLED),
                &Reask::every(Duration::ZERO),
            )
            .await?,
        );
        Ok(outgoing)
    }

    /// A repeated question means order-service has not heard the answer (its reconciler
    /// asked again, e.g. after a broker loss): publish the recorded answer again, same
    /// `event_id`, and never charge or refund a second time (SPEC §4.6).
    async fn on_duplicate(
        &self,
        tx: &mut PgConnection,
        envelope: &Envelope,
    ) -> Result<Vec<OutboxRow>, HandleError> {
        let (order_id, answers) = match OrderEvent::of(envelope) {
            Ok(OrderEvent::Created(_, order)) => (order.order_id, ANSWERS_TO_CREATED),
            Ok(OrderEvent::Cancelled(_, cancel)) => (cancel.order_id, ANSWERS_TO_CANCELLED),
            Err(_) => return Ok(Vec::new()),
        };
        let rearmed = outbox::republish(
            tx,
            &[order_id],
            Some(&answers),
            &Reask::every(Duration::ZERO),
        )
        .await?;
        if !rearmed.is_empty() {
            info!(%order_id, rearmed = rearmed.len(), "order-service asked again; re-publishing the recorded answer");
        }
        Ok(rearmed)
    }
}
