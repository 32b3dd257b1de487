//! What order events do to accounts and payments (SPEC §5.2, §4.5). Runs inside the
//! consumer's transaction, after the inbox recorded the events, so each applies once.
//!
//! A batch is applied set-based, in a fixed number of statements whatever its size:
//! 1. claim the saga row of every order it names (locking them, in order-id order):
//!    `OrderCreated` and `OrderCancelled` of one order are serialised by the database
//!    whatever order they arrive in, and a cancelled order is never charged without
//!    being refunded; an event naming another customer than the one the order's
//!    `OrderCreated` named is refused (forged);
//! 2. read the earlier payments it names (only when it cancels a paid order, or asks
//!    again about a charged one);
//! 3. open and lock the accounts it touches (in customer order);
//! 4. settle the events in stream order in memory ([`Ledger`]);
//! 5. write payments, balances, saga states and the outcomes' outbox rows in one
//!    statement.
//!
//! Every question gets exactly one answer (SPEC §4.6): `OrderCreated` a `PaymentCompleted`
//! or `PaymentFailed`, `OrderCancelled` a `PaymentRefunded` or `PaymentCancelled`. A
//! question asked again (the same event, or another about an order already answered) has
//! its recorded answer published again, same `event_id`: rebuilt from the saga row and the
//! payment, so it never depends on how long the outbox keeps rows (SPEC §4.9). Where the
//! outbox still holds the answer, that row goes out again as committed.

use events::streams::PAYMENT_EVENTS;
use events::{Envelope, EventWriter};
use service_runtime::observability::REASK_REPUBLISHED;
use service_runtime::outbox::{self, OutboxRow};
use service_runtime::{EventHandler, HandleError};
use sqlx::PgConnection;
use time::OffsetDateTime;
use tracing::info;

use crate::batch::{OrderEvent, accounts_of, check_customers, orders_of, payments_named};
use crate::db;
use crate::ledger::{Ledger, LedgerError};

/// A ledger error is about the event itself: it can never be applied (dead-lettered).
fn rejected(error: LedgerError) -> HandleError {
    HandleError::Rejected(error.to_string())
}

/// Applies `order-events` to accounts and payments.
#[derive(Debug, Clone)]
pub struct OrderEvents {
    /// Balance a new account opens with.
    pub initial_credit_cents: i64,
    /// How answers are written (`WRITE_SCHEMA_VERSION`, the signing key).
    pub writer: EventWriter,
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
        let named = payments_named(&events, &claimed);
        let payments = if named.is_empty() {
            Vec::new()
        } else {
            db::payments_by_id(tx, &named).await?
        };
        let accounts = accounts_of(&events, &claimed, &payments);
        let accounts = if accounts.is_empty() {
            Vec::new()
        } else {
            db::open_and_lock_accounts(tx, &accounts, self.initial_credit_cents).await?
        };
        let mut ledger = Ledger::new(claimed, accounts, payments, OffsetDateTime::now_utc());
        for event in events {
            ledger.apply(event).map_err(rejected)?;
        }
        let settled = ledger.finish();
        let mut outgoing = OutboxRow::new_all(PAYMENT_EVENTS, &self.writer, &settled.published);
        db::settle(tx, &settled.settlement, &outgoing).await?;
        if !settled.answered_again.is_empty() {
            let again =
                outbox::enqueue_again(tx, PAYMENT_EVENTS, &self.writer, &settled.answered_again)
                    .await?;
            info!(
                asked = settled.answered_again.len(),
                queued = again.len(),
                "order-service asked again; publishing the recorded answers"
            );
            for row in &again {
                metrics::counter!(REASK_REPUBLISHED, "job" => "answers", "event_type" => row.event_type)
                    .increment(1);
            }
            outgoing.extend(again);
        }
        Ok(outgoing)
    }

    /// A repeated question means order-service has not heard the answer (its reconciler
    /// asked again, e.g. after a broker loss): it is settled again, which, the order being
    /// answered, publishes the recorded answer again, same `event_id`, and never charges
    /// or refunds a second time (SPEC §4.6).
    async fn on_duplicate(
        &self,
        tx: &mut PgConnection,
        envelope: &Envelope,
    ) -> Result<Vec<OutboxRow>, HandleError> {
        self.handle(tx, &[envelope]).await
    }
}
