//! Orders: the states they move through (SPEC §5.1), what a payment outcome does to
//! one, and (in `order_request.rs`) what a valid new order is (SPEC §6.1). Pure: no I/O,
//! every rule unit-tested.

mod order_request;

use events::{Currency, Envelope, Event, FailureReason, OrderItem};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tracing::info;
use uuid::Uuid;

pub use order_request::{FieldErrors, NewOrder, OrderRequest, OrderRequestItem, limits};

/// Where an order stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OrderStatus {
    Pending,
    Paid,
    PaymentFailed,
    Cancelled,
}

impl OrderStatus {
    /// The text stored in the database and shown in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::Paid => "PAID",
            Self::PaymentFailed => "PAYMENT_FAILED",
            Self::Cancelled => "CANCELLED",
        }
    }

    /// Parses the stored text.
    pub fn parse(text: &str) -> Option<Self> {
        [
            Self::Pending,
            Self::Paid,
            Self::PaymentFailed,
            Self::Cancelled,
        ]
        .into_iter()
        .find(|s| s.as_str() == text)
    }
}

/// Something that can happen to an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderTrigger {
    PaymentCompleted,
    PaymentFailed,
    PaymentRefunded,
    /// payment-service settled a cancellation with nothing charged.
    PaymentCancelled,
    /// `POST /orders/{id}/cancel`.
    CancelRequested,
}

/// What an [`OrderTrigger`] does to an order in a given status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// The order moves to this status.
    To(OrderStatus),
    /// The status stays; a late or repeated event, not an error.
    Keep,
    /// Refused: the caller asked for something the status does not allow (409).
    Conflict,
}

/// The order state machine (SPEC §5.1): `PENDING` -> `PAID` | `PAYMENT_FAILED`;
/// `PENDING` or `PAID` -> `CANCELLED` by the user (a paid order is then refunded by
/// payment-service). Payment outcomes for an order that moved on change nothing: a
/// payment for a cancelled order is refunded because payment-service sees the
/// cancellation too.
pub fn transition(status: OrderStatus, event: OrderTrigger) -> Transition {
    use OrderStatus as S;
    use OrderTrigger as E;
    match (status, event) {
        (S::Pending, E::PaymentCompleted) => Transition::To(S::Paid),
        (S::Pending, E::PaymentFailed) => Transition::To(S::PaymentFailed),
        (S::Pending | S::Paid, E::CancelRequested) => Transition::To(S::Cancelled),
        (S::PaymentFailed | S::Cancelled, E::CancelRequested) => Transition::Conflict,
        (S::Paid | S::PaymentFailed | S::Cancelled, E::PaymentCompleted | E::PaymentFailed)
        | (_, E::PaymentRefunded | E::PaymentCancelled) => Transition::Keep,
    }
}

impl TryFrom<String> for OrderStatus {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        Self::parse(&text).ok_or_else(|| format!("unknown order status {text:?}"))
    }
}

/// An order as stored and as `GET /orders/{id}` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Order {
    pub id: Uuid,
    pub customer_id: String,
    #[sqlx(json)]
    pub items: Vec<OrderItem>,
    pub total_cents: i64,
    pub currency: String,
    #[sqlx(try_from = "String")]
    pub status: OrderStatus,
    pub payment_id: Option<Uuid>,
    pub failure_reason: Option<String>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub refunded_at: Option<OffsetDateTime>,
    /// When payment-service confirmed a cancellation: the charge refunded, or nothing
    /// charged and nothing ever to be. Until then order-service keeps asking (SPEC §4.6).
    #[serde(with = "time::serde::rfc3339::option")]
    pub cancellation_confirmed_at: Option<OffsetDateTime>,
    /// The payment deadline: still unpaid then, the order fails with `payment_expired`
    /// and its payment is cancelled (none for orders placed before deadlines existed).
    #[serde(with = "time::serde::rfc3339::option")]
    pub pay_by: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

impl Order {
    /// Whether payment-service is asked to cancel this order's payment: the user
    /// cancelled it, or it expired unpaid (whoever saw the deadline pass first). A charge
    /// of such an order is refunded.
    pub fn cancellation_asked(&self) -> bool {
        self.status == OrderStatus::Cancelled || self.expired()
    }

    /// Whether it failed because its payment deadline passed.
    pub fn expired(&self) -> bool {
        self.status == OrderStatus::PaymentFailed
            && self.failure_reason.as_deref() == Some(FailureReason::PaymentExpired.as_str())
    }
}

/// What a payment outcome changed in an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Nothing,
    /// Its status (and what comes with it).
    Status,
    /// Only its payment id or refund time.
    Details,
    /// It expired (charged after its payment deadline, or declined as past it): the order
    /// fails with `payment_expired`, and its payment is to be cancelled (refunded if
    /// charged), as when order-service's expirer sees the deadline pass.
    Expired,
}

/// A payment outcome (an event of `payment-events`), as it concerns an order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentOutcome {
    pub order_id: Uuid,
    trigger: OrderTrigger,
    payment_id: Option<Uuid>,
    failure_reason: Option<String>,
    /// Whose order payment-service says it is.
    customer_id: String,
    /// The amount and currency it says it charged, declined or refunded (none for
    /// `PaymentCancelled`, which moves no money).
    amount: Option<(i64, Currency)>,
    /// When payment-service decided it.
    decided_at: OffsetDateTime,
}

impl PaymentOutcome {
    /// The outcome `envelope` carries; `None` for an event that is not a payment outcome.
    pub fn of(envelope: &Envelope) -> Option<Self> {
        let (trigger, payment_id, failure_reason, customer_id, amount) = match &envelope.event {
            Event::PaymentCompleted(paid) => (
                OrderTrigger::PaymentCompleted,
                Some(paid.payment_id),
                None,
                &paid.customer_id,
                Some((paid.amount_cents, paid.currency)),
            ),
            Event::PaymentFailed(failed) => (
                OrderTrigger::PaymentFailed,
                None,
                Some(failed.reason.as_str().to_owned()),
                &failed.customer_id,
                Some((failed.amount_cents, failed.currency)),
            ),
            Event::PaymentRefunded(refund) => (
                OrderTrigger::PaymentRefunded,
                Some(refund.payment_id),
                None,
                &refund.customer_id,
                Some((refund.amount_cents, refund.currency)),
            ),
            Event::PaymentCancelled(cancelled) => (
                OrderTrigger::PaymentCancelled,
                None,
                None,
                &cancelled.customer_id,
                None,
            ),
            Event::OrderCreated(_) | Event::OrderCancelled(_) => return None,
        };
        Some(Self {
            order_id: envelope.order_id,
            trigger,
            payment_id,
            failure_reason,
            customer_id: customer_id.clone(),
            amount,
            decided_at: envelope.occurred_at,
        })
    }

    /// What in this outcome contradicts `order` as order-service knows it: another
    /// customer, another amount or another currency; or the answer to a question
    /// order-service never asked (a refund, or a settled cancellation, of an order whose
    /// payment it never asked to cancel). payment-service only ever answers with the
    /// order's own, and only what it was asked, so such an outcome is forged (or
    /// corrupted) and must change nothing.
    pub fn contradiction(&self, order: &Order) -> Option<String> {
        let answers_a_cancellation = matches!(
            self.trigger,
            OrderTrigger::PaymentRefunded | OrderTrigger::PaymentCancelled
        );
        if answers_a_cancellation && !order.cancellation_asked() {
            return Some(format!(
                "{:?} answers a cancellation of order {}, which order-service never asked for ({})",
                self.trigger,
                order.id,
                order.status.as_str()
            ));
        }
        if self.customer_id != order.customer_id {
            return Some(format!(
                "{:?} names customer {:?}, but order {} is {:?}'s",
                self.trigger, self.customer_id, order.id, order.customer_id
            ));
        }
        match self.amount {
            Some((cents, currency))
                if cents != order.total_cents || currency.as_str() != order.currency =>
            {
                Some(format!(
                    "{:?} is for {cents} {currency}, but order {} is for {} {}",
                    self.trigger, order.id, order.total_cents, order.currency
                ))
            }
            _ => None,
        }
    }

    /// Changes `order` as this outcome says: the state machine moves it; an order that
    /// moved on records only a late payment (cancelled or expired meanwhile:
    /// payment-service refunds it), its refund, and the confirmation of its cancellation,
    /// once each. A charge decided after the order's deadline never pays it (a reader of
    /// schema version 1 does not know the deadline): the order expires instead.
    pub fn apply(&self, order: &mut Order) -> Change {
        let late = order.pay_by.is_some_and(|pay_by| self.decided_at > pay_by);
        if self.trigger == OrderTrigger::PaymentCompleted
            && order.status == OrderStatus::Pending
            && late
        {
            order.status = OrderStatus::PaymentFailed;
            order.failure_reason = Some(FailureReason::PaymentExpired.to_string());
            order.payment_id = self.payment_id;
            return Change::Expired;
        }
        if let Transition::To(status) = transition(order.status, self.trigger) {
            order.status = status;
            order.payment_id = self.payment_id.or(order.payment_id);
            if let Some(reason) = &self.failure_reason {
                order.failure_reason = Some(reason.clone());
            }
            return if order.expired() {
                Change::Expired
            } else {
                Change::Status
            };
        }
        let now = OffsetDateTime::now_utc();
        let mut changed = match self.trigger {
            OrderTrigger::PaymentRefunded => record_once(&mut order.refunded_at, now),
            OrderTrigger::PaymentCompleted
                if order.cancellation_asked() && order.payment_id.is_none() =>
            {
                order.payment_id = self.payment_id;
                true
            }
            _ => false,
        };
        let settles_cancellation = matches!(
            self.trigger,
            OrderTrigger::PaymentRefunded | OrderTrigger::PaymentCancelled
        );
        if settles_cancellation && order.cancellation_asked() {
            changed |= record_once(&mut order.cancellation_confirmed_at, now);
        }
        if !changed {
            info!(order_id = %order.id, status = order.status.as_str(), trigger = ?self.trigger,
                "the order moved on; nothing to change");
            return Change::Nothing;
        }
        Change::Details
    }
}

/// Sets `field` to `now` unless it was set before; says whether it did.
fn record_once(field: &mut Option<OffsetDateTime>, now: OffsetDateTime) -> bool {
    let unset = field.is_none();
    field.get_or_insert(now);
    unset
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_status_and_event() {
        use OrderStatus as S;
        use OrderTrigger as E;
        use Transition::{Conflict, Keep, To};
        let expected = [
            (S::Pending, E::PaymentCompleted, To(S::Paid)),
            (S::Pending, E::PaymentFailed, To(S::PaymentFailed)),
            (S::Pending, E::PaymentRefunded, Keep),
            (S::Pending, E::PaymentCancelled, Keep),
            (S::Pending, E::CancelRequested, To(S::Cancelled)),
            (S::Paid, E::PaymentCompleted, Keep),
            (S::Paid, E::PaymentFailed, Keep),
            (S::Paid, E::PaymentRefunded, Keep),
            (S::Paid, E::PaymentCancelled, Keep),
            (S::Paid, E::CancelRequested, To(S::Cancelled)),
            (S::PaymentFailed, E::PaymentCompleted, Keep),
            (S::PaymentFailed, E::PaymentFailed, Keep),
            (S::PaymentFailed, E::PaymentRefunded, Keep),
            (S::PaymentFailed, E::PaymentCancelled, Keep),
            (S::PaymentFailed, E::CancelRequested, Conflict),
            (S::Cancelled, E::PaymentCompleted, Keep),
            (S::Cancelled, E::PaymentFailed, Keep),
            (S::Cancelled, E::PaymentRefunded, Keep),
            (S::Cancelled, E::PaymentCancelled, Keep),
            (S::Cancelled, E::CancelRequested, Conflict),
        ];
        for (status, event, outcome) in expected {
            assert_eq!(transition(status, event), outcome, "{status:?} + {event:?}");
        }
    }

    #[test]
    fn statuses_round_trip_through_text() {
        for status in [
            OrderStatus::Pending,
            OrderStatus::Paid,
            OrderStatus::PaymentFailed,
            OrderStatus::Cancelled,
        ] {
            assert_eq!(OrderStatus::parse(status.as_str()), Some(status));
            assert_eq!(
                serde_json::to_value(status).ok(),
                Some(serde_json::json!(status.as_str()))
            );
        }
        assert_eq!(OrderStatus::parse("SHIPPED"), None);
    }

    use events::{PaymentCancelled, PaymentCompleted, PaymentFailed, PaymentRefunded, Producer};

    fn order(status: OrderStatus) -> Order {
        let now = OffsetDateTime::now_utc();
        Order {
            id: Uuid::now_v7(),
            customer_id: "alice".into(),
            items: Vec::new(),
            total_cents: 700,
            currency: "EUR".into(),
            status,
            payment_id: None,
            failure_reason: None,
            refunded_at: None,
            cancellation_confirmed_at: None,
            pay_by: None,
            created_at: now,
            updated_at: now,
        }
    }

    fn outcome(order: &Order, event: Event) -> PaymentOutcome {
        let envelope = Envelope::new(Producer::PaymentService, event);
        assert_eq!(envelope.order_id, order.id);
        PaymentOutcome::of(&envelope).expect("a payment outcome")
    }

    fn eur() -> Currency {
        Currency::parse("EUR").expect("valid")
    }

    fn completed(order: &Order, payment_id: Uuid) -> PaymentOutcome {
        outcome(
            order,
            Event::PaymentCompleted(PaymentCompleted {
                payment_id,
                order_id: order.id,
                customer_id: order.customer_id.clone(),
                amount_cents: 700,
                currency: eur(),
            }),
        )
    }

    #[test]
    fn a_charge_decided_at_the_deadline_itself_pays_and_one_after_it_expires() {
        let mut in_time = order(OrderStatus::Pending);
        let paid = completed(&in_time, Uuid::now_v7());
        in_time.pay_by = Some(paid.decided_at);
        assert_eq!(paid.apply(&mut in_time), Change::Status);
        assert_eq!(in_time.status, OrderStatus::Paid);

        let mut late = order(OrderStatus::Pending);
        let paid = completed(&late, Uuid::now_v7());
        late.pay_by = Some(paid.decided_at - time::Duration::milliseconds(1));
        assert_eq!(paid.apply(&mut late), Change::Expired);
        assert_eq!(late.status, OrderStatus::PaymentFailed);
    }

    #[test]
    fn outcomes_of_one_batch_apply_in_stream_order() {
        let mut paid = order(OrderStatus::Pending);
        let payment_id = Uuid::now_v7();
        let failed = outcome(
            &paid,
            Event::PaymentFailed(PaymentFailed {
                order_id: paid.id,
                customer_id: "alice".into(),
                amount_cents: 700,
                currency: eur(),
                reason: events::FailureReason::InsufficientFunds,
            }),
        );
        assert_eq!(
            completed(&paid, payment_id).apply(&mut paid),
            Change::Status
        );
        assert_eq!(
            failed.apply(&mut paid),
            Change::Nothing,
            "the first outcome stands"
        );
        assert_eq!(
            (paid.status, paid.payment_id, paid.failure_reason),
            (OrderStatus::Paid, Some(payment_id), None)
        );
    }

    #[test]
    fn a_cancelled_order_records_the_late_payment_and_its_refund() {
        let mut cancelled = order(OrderStatus::Cancelled);
        let payment_id = Uuid::now_v7();
        let refunded = outcome(
            &cancelled,
            Event::PaymentRefunded(PaymentRefunded {
                payment_id,
                order_id: cancelled.id,
                customer_id: "alice".into(),
                amount_cents: 700,
                currency: eur(),
            }),
        );
        let late = completed(&cancelled, payment_id);
        assert_eq!(late.apply(&mut cancelled), Change::Details);
        assert_eq!(refunded.apply(&mut cancelled), Change::Details);
        assert_eq!(refunded.apply(&mut cancelled), Change::Nothing, "once");
        assert_eq!(late.apply(&mut cancelled), Change::Nothing, "once");
        assert_eq!(cancelled.status, OrderStatus::Cancelled);
        assert_eq!(cancelled.payment_id, Some(payment_id));
        assert!(cancelled.refunded_at.is_some());
        assert!(
            cancelled.cancellation_confirmed_at.is_some(),
            "a refund confirms the cancellation"
        );
    }

    #[test]
    fn an_expired_order_stays_failed_and_records_a_racing_charge_and_its_refund() {
        let mut expired = order(OrderStatus::PaymentFailed);
        expired.failure_reason = Some("payment_expired".into());
        let payment_id = Uuid::now_v7();
        let refunded = outcome(
            &expired,
            Event::PaymentRefunded(PaymentRefunded {
                payment_id,
                order_id: expired.id,
                customer_id: "alice".into(),
                amount_cents: 700,
                currency: eur(),
            }),
        );
        assert_eq!(
            completed(&expired, payment_id).apply(&mut expired),
            Change::Details
        );
        assert_eq!(refunded.apply(&mut expired), Change::Details);
        assert_eq!(expired.status, OrderStatus::PaymentFailed, "never paid");
        assert_eq!(expired.payment_id, Some(payment_id));
        assert!(expired.refunded_at.is_some());
        assert!(expired.cancellation_confirmed_at.is_some());

        let declined = order(OrderStatus::PaymentFailed);
        let confirmed = outcome(
            &declined,
            Event::PaymentCancelled(PaymentCancelled {
                order_id: declined.id,
                customer_id: "alice".into(),
            }),
        );
        assert!(
            confirmed.contradiction(&declined).is_some(),
            "nobody asked to cancel an order that was declined"
        );
        assert_eq!(confirmed.contradiction(&expired), None);
    }

    #[test]
    fn a_charge_decided_after_the_deadline_expires_the_order_instead_of_paying_it() {
        let mut order_in_time = order(OrderStatus::Pending);
        order_in_time.pay_by = Some(OffsetDateTime::now_utc() + time::Duration::minutes(1));
        assert_eq!(
            completed(&order_in_time, Uuid::now_v7()).apply(&mut order_in_time),
            Change::Status
        );
        assert_eq!(order_in_time.status, OrderStatus::Paid);

        let mut late = order(OrderStatus::Pending);
        late.pay_by = Some(OffsetDateTime::now_utc() - time::Duration::seconds(1));
        let payment_id = Uuid::now_v7();
        assert_eq!(
            completed(&late, payment_id).apply(&mut late),
            Change::Expired
        );
        assert_eq!(late.status, OrderStatus::PaymentFailed);
        assert_eq!(late.failure_reason.as_deref(), Some("payment_expired"));
        assert_eq!(late.payment_id, Some(payment_id), "the charge to refund");
        assert!(late.cancellation_asked());

        let mut declined_late = order(OrderStatus::Pending);
        let expired = outcome(
            &declined_late,
            Event::PaymentFailed(PaymentFailed {
                order_id: declined_late.id,
                customer_id: "alice".into(),
                amount_cents: 700,
                currency: eur(),
                reason: FailureReason::PaymentExpired,
            }),
        );
        assert_eq!(
            expired.apply(&mut declined_late),
            Change::Expired,
            "cancelled like any expired order, so the reconciler's question is answered"
        );
        assert!(declined_late.expired());
    }

    #[test]
    fn a_refund_of_an_order_never_cancelled_is_an_answer_nobody_asked_for() {
        let paid = order(OrderStatus::Paid);
        let refund = outcome(
            &paid,
            Event::PaymentRefunded(PaymentRefunded {
                payment_id: Uuid::now_v7(),
                order_id: paid.id,
                customer_id: "alice".into(),
                amount_cents: 700,
                currency: eur(),
            }),
        );
        let told = refund.contradiction(&paid).expect("a contradiction");
        assert!(told.contains("never asked"), "{told}");
        let mut cancelled = paid.clone();
        cancelled.status = OrderStatus::Cancelled;
        assert_eq!(refund.contradiction(&cancelled), None, "asked: answered");
    }

    #[test]
    fn an_outcome_that_contradicts_its_order_is_told_apart() {
        let pending = order(OrderStatus::Pending);
        assert_eq!(
            completed(&pending, Uuid::now_v7()).contradiction(&pending),
            None
        );
        let paid = |customer_id: &str, amount_cents: i64, currency: &str| {
            outcome(
                &pending,
                Event::PaymentCompleted(PaymentCompleted {
                    payment_id: Uuid::now_v7(),
                    order_id: pending.id,
                    customer_id: customer_id.into(),
                    amount_cents,
                    currency: Currency::parse(currency).expect("valid"),
                }),
            )
        };
        for forged in [
            paid("mallory", 700, "EUR"),
            paid("alice", 1, "EUR"),
            paid("alice", 700, "USD"),
        ] {
            assert!(forged.contradiction(&pending).is_some(), "{forged:?}");
        }
        let settled = outcome(
            &pending,
            Event::PaymentCancelled(PaymentCancelled {
                order_id: pending.id,
                customer_id: "mallory".into(),
            }),
        );
        assert!(settled.contradiction(&pending).is_some());
    }

    #[test]
    fn payment_cancelled_confirms_a_cancellation_once_and_nothing_else() {
        let mut cancelled = order(OrderStatus::Cancelled);
        let settled = outcome(
            &cancelled,
            Event::PaymentCancelled(PaymentCancelled {
                order_id: cancelled.id,
                customer_id: "alice".into(),
            }),
        );
        assert_eq!(settled.apply(&mut cancelled), Change::Details);
        let confirmed = cancelled.cancellation_confirmed_at;
        assert!(confirmed.is_some());
        assert_eq!(settled.apply(&mut cancelled), Change::Nothing, "once");
        assert_eq!(cancelled.cancellation_confirmed_at, confirmed);
        assert_eq!(cancelled.refunded_at, None, "nothing was refunded");

        let mut pending = order(OrderStatus::Pending);
        let forged = outcome(
            &pending,
            Event::PaymentCancelled(PaymentCancelled {
                order_id: pending.id,
                customer_id: "alice".into(),
            }),
        );
        assert_eq!(forged.apply(&mut pending), Change::Nothing);
        assert_eq!(
            (pending.status, pending.cancellation_confirmed_at),
            (OrderStatus::Pending, None),
            "only a cancelled order has a cancellation to confirm"
        );
    }
}
