//! What order events do to accounts and payments (SPEC §5.2, §4.5). Runs inside the
//! consumer's transaction, after the inbox recorded the event, so each applies once.
//!
//! Both handlers first claim the order's saga row (locking it), which tells what was
//! decided for it: `OrderCreated` and `OrderCancelled` of one order are serialised by the database
//! whatever order they arrive in, and a cancelled order is never charged without being
//! refunded. Outcomes are enqueued in the outbox in the same transaction.

use events::streams::PAYMENT_EVENTS;
use events::{
    Envelope, Event, FailureReason, OrderCancelled, OrderCreated, PaymentCompleted, PaymentFailed,
    PaymentRefunded, Producer,
};
use service_runtime::{EventHandler, HandleError, outbox};
use sqlx::PgConnection;
use tracing::info;
use uuid::Uuid;

use crate::db;
use crate::domain::{
    Charge, OnOrderCancelled, OnOrderCreated, OrderPaymentState, decide_charge, on_order_cancelled,
    on_order_created,
};

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
        match &envelope.event {
            Event::OrderCreated(order) => order.customer_id.clone(),
            Event::OrderCancelled(cancel) => cancel.customer_id.clone(),
            _ => envelope.order_id.to_string(),
        }
    }
    async fn handle(&self, tx: &mut PgConnection, envelope: &Envelope) -> Result<(), HandleError> {
        match &envelope.event {
            Event::OrderCreated(order) => self.order_created(tx, order).await,
            Event::OrderCancelled(cancel) => order_cancelled(tx, cancel).await,
            Event::PaymentCompleted(_) | Event::PaymentFailed(_) | Event::PaymentRefunded(_) => {
                Err(HandleError::Rejected(format!(
                    "{} does not belong on order-events",
                    envelope.event_type()
                )))
            }
        }
    }

    /// A repeated `OrderCreated` means order-service has not heard the outcome (its
    /// reconciler re-published after a broker loss): publish the recorded outcome again,
    /// same `event_id`, and never charge a second time (SPEC §4.6).
    async fn on_duplicate(
        &self,
        tx: &mut PgConnection,
        envelope: &Envelope,
    ) -> Result<(), HandleError> {
        if let Event::OrderCreated(order) = &envelope.event {
            let rearmed = db::rearm_outcomes(tx, order.order_id).await?;
            if rearmed > 0 {
                outbox::wake_relay(tx).await?;
                info!(order_id = %order.order_id, rearmed, "order-service asked again; re-publishing the recorded outcome");
            }
        }
        Ok(())
    }
}

impl OrderEvents {
    async fn order_created(
        &self,
        tx: &mut PgConnection,
        order: &OrderCreated,
    ) -> Result<(), HandleError> {
        let state = db::claim_order(tx, order.order_id, &order.customer_id)
            .await?
            .map(|p| p.state);
        match on_order_created(state) {
            OnOrderCreated::AlreadyDecided => {
                info!(order_id = %order.order_id, ?state, "order already decided; no second charge");
                Ok(())
            }
            OnOrderCreated::DeclineAsCancelled => {
                decline(
                    tx,
                    order,
                    FailureReason::OrderCancelled,
                    OrderPaymentState::Cancelled,
                )
                .await
            }
            OnOrderCreated::TryCharge => {
                let currency = order.currency.as_str();
                let account = db::open_and_lock_account(
                    tx,
                    &order.customer_id,
                    self.initial_credit_cents,
                    currency,
                )
                .await?;
                // Opening the account set its currency if it had none.
                let account_currency = account.currency.as_deref().unwrap_or(currency);
                match decide_charge(
                    account.balance_cents,
                    account_currency,
                    order.total_cents,
                    currency,
                ) {
                    Charge::Approve => charge(tx, order).await,
                    Charge::Decline(reason) => {
                        decline(tx, order, reason, OrderPaymentState::Declined).await
                    }
                }
            }
        }
    }
}

/// Debits the account, records the payment, publishes `PaymentCompleted`.
async fn charge(tx: &mut PgConnection, order: &OrderCreated) -> Result<(), HandleError> {
    let payment_id = Uuid::now_v7();
    let currency = order.currency.as_str();
    db::charge(
        tx,
        payment_id,
        order.order_id,
        &order.customer_id,
        order.total_cents,
        currency,
    )
    .await?;
    publish(
        tx,
        Event::PaymentCompleted(PaymentCompleted {
            payment_id,
            order_id: order.order_id,
            customer_id: order.customer_id.clone(),
            amount_cents: order.total_cents,
            currency: order.currency,
        }),
    )
    .await
}

/// Publishes `PaymentFailed(reason)` and leaves the order in `state`; charges nothing.
async fn decline(
    tx: &mut PgConnection,
    order: &OrderCreated,
    reason: FailureReason,
    state: OrderPaymentState,
) -> Result<(), HandleError> {
    db::set_order_payment(tx, order.order_id, &order.customer_id, state, None).await?;
    publish(
        tx,
        Event::PaymentFailed(PaymentFailed {
            order_id: order.order_id,
            customer_id: order.customer_id.clone(),
            amount_cents: order.total_cents,
            currency: order.currency,
            reason,
        }),
    )
    .await
}

async fn order_cancelled(
    tx: &mut PgConnection,
    cancel: &OrderCancelled,
) -> Result<(), HandleError> {
    let decided = db::claim_order(tx, cancel.order_id, &cancel.customer_id).await?;
    match on_order_cancelled(decided.as_ref().map(|d| d.state)) {
        OnOrderCancelled::Nothing => Ok(()),
        OnOrderCancelled::Remember => {
            db::set_order_payment(
                tx,
                cancel.order_id,
                &cancel.customer_id,
                OrderPaymentState::Cancelled,
                None,
            )
            .await?;
            Ok(())
        }
        OnOrderCancelled::Refund => {
            let payment_id = decided
                .and_then(|d| d.payment_id)
                .ok_or_else(|| HandleError::Rejected("a paid order has no payment id".into()))?;
            let payment = db::refund_payment(tx, payment_id).await?;
            db::adjust_balance(tx, &payment.customer_id, payment.amount_cents).await?;
            db::set_order_payment(
                tx,
                cancel.order_id,
                &cancel.customer_id,
                OrderPaymentState::Refunded,
                None,
            )
            .await?;
            let currency = events::Currency::parse(&payment.currency)
                .map_err(|e| HandleError::Rejected(format!("stored payment: {e}")))?;
            publish(
                tx,
                Event::PaymentRefunded(PaymentRefunded {
                    payment_id,
                    order_id: payment.order_id,
                    customer_id: payment.customer_id,
                    amount_cents: payment.amount_cents,
                    currency,
                }),
            )
            .await
        }
    }
}

async fn publish(tx: &mut PgConnection, event: Event) -> Result<(), HandleError> {
    outbox::enqueue(
        tx,
        PAYMENT_EVENTS,
        &Envelope::new(Producer::PaymentService, event),
    )
    .await?;
    Ok(())
}
