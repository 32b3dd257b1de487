//! The payment side of the saga (SPEC §5.2), as pure functions: what an order event does
//! given what was already decided for that order, and whether an account can pay.
//! Handlers lock the order, read its state, ask these functions, and carry out the answer.

use events::FailureReason;

/// What payment-service has decided for an order so far (`None`: never seen).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderPaymentState {
    /// Charged; the payment stands.
    Paid,
    /// Not charged, and never will be.
    Declined,
    /// Cancelled before any `OrderCreated` was seen: a later one must not be charged.
    Cancelled,
    /// Charged, then credited back after a cancellation.
    Refunded,
}

impl OrderPaymentState {
    /// The text stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Paid => "PAID",
            Self::Declined => "DECLINED",
            Self::Cancelled => "CANCELLED",
            Self::Refunded => "REFUNDED",
        }
    }
}

impl TryFrom<String> for OrderPaymentState {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        [Self::Paid, Self::Declined, Self::Cancelled, Self::Refunded]
            .into_iter()
            .find(|s| s.as_str() == text)
            .ok_or_else(|| format!("unknown order payment state {text:?}"))
    }
}

/// Where a payment stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PaymentStatus {
    /// The charge stands.
    Completed,
    /// Credited back after the order was cancelled.
    Refunded,
}

impl PaymentStatus {
    /// The text stored in the database and shown in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Completed => "COMPLETED",
            Self::Refunded => "REFUNDED",
        }
    }
}

impl TryFrom<String> for PaymentStatus {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        [Self::Completed, Self::Refunded]
            .into_iter()
            .find(|s| s.as_str() == text)
            .ok_or_else(|| format!("unknown payment status {text:?}"))
    }
}

/// What to do with an `OrderCreated`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnOrderCreated {
    /// First sight of the order: try to charge it ([`decide_charge`]).
    TryCharge,
    /// Cancelled first: publish `PaymentFailed(order_cancelled)`, charge nothing.
    DeclineAsCancelled,
    /// First sight, but its payment deadline has passed: publish
    /// `PaymentFailed(payment_expired)`, charge nothing (SPEC §3.4).
    DeclineAsExpired,
    /// Answered already: no second effect; the question came again, so the recorded
    /// answer is published again.
    AnswerAgain,
}

/// What to do with an `OrderCreated`, given the order's state, whether an
/// `OrderCreated` of it was `answered` already, and whether its payment deadline has
/// `expired` (never charge after `pay_by`; an answer given before it stands).
pub fn on_order_created(
    state: Option<OrderPaymentState>,
    answered: bool,
    expired: bool,
) -> OnOrderCreated {
    match state {
        _ if answered => OnOrderCreated::AnswerAgain,
        None if expired => OnOrderCreated::DeclineAsExpired,
        None => OnOrderCreated::TryCharge,
        Some(OrderPaymentState::Cancelled) => OnOrderCreated::DeclineAsCancelled,
        // Decided by an OrderCreated, so answered (the saga row's constraint).
        Some(
            OrderPaymentState::Paid | OrderPaymentState::Declined | OrderPaymentState::Refunded,
        ) => OnOrderCreated::AnswerAgain,
    }
}

/// What to do with an `OrderCancelled`. Every cancellation gets exactly one answer
/// (SPEC §4.6): `PaymentRefunded`, or `PaymentCancelled` when nothing was or ever will be
/// charged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnOrderCancelled {
    /// Not seen yet: remember, so a later `OrderCreated` is not charged, and answer
    /// `PaymentCancelled`.
    Remember,
    /// Paid: credit the payment back and answer `PaymentRefunded`.
    Refund,
    /// Declined: nothing was charged; answer `PaymentCancelled`.
    Confirm,
    /// Settled by an earlier cancellation: publish its answer again.
    AnswerAgain,
}

/// What to do with an `OrderCancelled`, given the order's state and whether a
/// cancellation of it was `answered` already.
pub fn on_order_cancelled(state: Option<OrderPaymentState>, answered: bool) -> OnOrderCancelled {
    match state {
        _ if answered => OnOrderCancelled::AnswerAgain,
        None => OnOrderCancelled::Remember,
        Some(OrderPaymentState::Paid) => OnOrderCancelled::Refund,
        Some(OrderPaymentState::Declined) => OnOrderCancelled::Confirm,
        // Decided by a cancellation, so answered (the saga row's constraint).
        Some(OrderPaymentState::Cancelled | OrderPaymentState::Refunded) => {
            OnOrderCancelled::AnswerAgain
        }
    }
}

/// The outcome of trying to charge an account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Charge {
    Approve,
    Decline(FailureReason),
}

/// Whether an account holding `balance_cents` in `account_currency` can pay
/// `amount_cents` in `currency`.
pub fn decide_charge(
    balance_cents: i64,
    account_currency: &str,
    amount_cents: i64,
    currency: &str,
) -> Charge {
    if account_currency != currency {
        Charge::Decline(FailureReason::CurrencyMismatch)
    } else if balance_cents >= amount_cents {
        Charge::Approve
    } else {
        Charge::Decline(FailureReason::InsufficientFunds)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use OrderPaymentState::*;

    #[test]
    fn order_created_in_every_state() {
        for expired in [false, true] {
            assert_eq!(
                on_order_created(Some(Cancelled), false, expired),
                OnOrderCreated::DeclineAsCancelled
            );
            for state in [Paid, Declined, Refunded] {
                assert_eq!(
                    on_order_created(Some(state), true, expired),
                    OnOrderCreated::AnswerAgain,
                    "{state:?}: the answer given stands, deadline or not"
                );
            }
            assert_eq!(
                on_order_created(Some(Cancelled), true, expired),
                OnOrderCreated::AnswerAgain,
                "declined as cancelled once, answered the same again"
            );
        }
        assert_eq!(
            on_order_created(None, false, false),
            OnOrderCreated::TryCharge
        );
        assert_eq!(
            on_order_created(None, false, true),
            OnOrderCreated::DeclineAsExpired,
            "never charged after its deadline"
        );
    }

    #[test]
    fn order_cancelled_in_every_state() {
        assert_eq!(on_order_cancelled(None, false), OnOrderCancelled::Remember);
        assert_eq!(
            on_order_cancelled(Some(Paid), false),
            OnOrderCancelled::Refund
        );
        assert_eq!(
            on_order_cancelled(Some(Declined), false),
            OnOrderCancelled::Confirm
        );
        for state in [Cancelled, Refunded, Declined] {
            assert_eq!(
                on_order_cancelled(Some(state), true),
                OnOrderCancelled::AnswerAgain,
                "{state:?}"
            );
        }
    }

    #[test]
    fn charges_when_the_balance_covers_the_amount() {
        assert_eq!(decide_charge(1000, "EUR", 1000, "EUR"), Charge::Approve);
        assert_eq!(decide_charge(1000, "EUR", 0, "EUR"), Charge::Approve);
        assert_eq!(
            decide_charge(999, "EUR", 1000, "EUR"),
            Charge::Decline(FailureReason::InsufficientFunds)
        );
    }

    #[test]
    fn another_currency_is_declined_whatever_the_balance() {
        assert_eq!(
            decide_charge(1_000_000, "EUR", 1, "USD"),
            Charge::Decline(FailureReason::CurrencyMismatch)
        );
    }

    #[test]
    fn states_round_trip_through_text() {
        for state in [Paid, Declined, Cancelled, Refunded] {
            assert_eq!(
                OrderPaymentState::try_from(state.as_str().to_owned()),
                Ok(state)
            );
        }
        assert!(OrderPaymentState::try_from("NEW".to_owned()).is_err());
        for status in [PaymentStatus::Completed, PaymentStatus::Refunded] {
            assert_eq!(
                PaymentStatus::try_from(status.as_str().to_owned()),
                Ok(status)
            );
            assert_eq!(
                serde_json::to_value(status).ok(),
                Some(serde_json::json!(status.as_str()))
            );
        }
    }
}
