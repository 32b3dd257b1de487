//! The bodies of the six event types (SPEC §3.3), carried as the JSON `payload` field of
//! a stream entry, in every schema version this build reads (`versions.rs`: version 2
//! adds `OrderCreated.pay_by`).
//!
//! Payloads ignore fields they do not know, so a producer can add an optional field
//! without breaking older consumers.

use std::fmt;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::{Currency, EventType, SchemaVersion};

/// One line of an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct OrderItem {
    pub sku: String,
    pub quantity: u32,
    pub unit_price_cents: i64,
}

/// An order was accepted and waits for payment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderCreated {
    pub order_id: Uuid,
    pub customer_id: String,
    pub items: Vec<OrderItem>,
    pub total_cents: i64,
    pub currency: Currency,
    /// The payment deadline (schema version 2 on; `None` read from version 1): no charge
    /// after it.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    pub pay_by: Option<OffsetDateTime>,
}

/// The customer cancelled an order (before or after it was paid).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderCancelled {
    pub order_id: Uuid,
    pub customer_id: String,
    pub reason: String,
}

/// The customer's account was debited for the order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentCompleted {
    pub payment_id: Uuid,
    pub order_id: Uuid,
    pub customer_id: String,
    pub amount_cents: i64,
    pub currency: Currency,
}

/// The order was not charged, for `reason`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentFailed {
    pub order_id: Uuid,
    pub customer_id: String,
    pub amount_cents: i64,
    pub currency: Currency,
    pub reason: FailureReason,
}

/// A payment was credited back to the customer (the order was cancelled after payment).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentRefunded {
    pub payment_id: Uuid,
    pub order_id: Uuid,
    pub customer_id: String,
    pub amount_cents: i64,
    pub currency: Currency,
}

/// The answer to an `OrderCancelled` when nothing was charged and nothing ever will be
/// (the order was declined, or cancelled before payment-service saw it): the
/// cancellation is settled. (A charged order is answered with [`PaymentRefunded`].)
///
/// Added to schema version 1 after the first five types: a consumer built before it
/// skips it as an unknown `event_type` (tolerant reader), so payment-service can publish
/// it before every order-service reads it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentCancelled {
    pub order_id: Uuid,
    pub customer_id: String,
}

/// Why a payment failed. Reasons this version does not know are kept as text rather than
/// rejected, so payment-service can add reasons without poisoning order-service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum FailureReason {
    InsufficientFunds,
    OrderCancelled,
    CurrencyMismatch,
    /// The order's payment deadline (`pay_by`) passed before it was charged.
    PaymentExpired,
    Other(String),
}

impl FailureReason {
    /// The wire text, e.g. `insufficient_funds`.
    pub fn as_str(&self) -> &str {
        match self {
            Self::InsufficientFunds => "insufficient_funds",
            Self::OrderCancelled => "order_cancelled",
            Self::CurrencyMismatch => "currency_mismatch",
            Self::PaymentExpired => "payment_expired",
            Self::Other(reason) => reason,
        }
    }
}

impl fmt::Display for FailureReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<String> for FailureReason {
    fn from(reason: String) -> Self {
        match reason.as_str() {
            "insufficient_funds" => Self::InsufficientFunds,
            "order_cancelled" => Self::OrderCancelled,
            "currency_mismatch" => Self::CurrencyMismatch,
            "payment_expired" => Self::PaymentExpired,
            _ => Self::Other(reason),
        }
    }
}

impl From<FailureReason> for String {
    fn from(reason: FailureReason) -> Self {
        reason.as_str().to_owned()
    }
}

/// A decoded event: its type and its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    OrderCreated(OrderCreated),
    OrderCancelled(OrderCancelled),
    PaymentCompleted(PaymentCompleted),
    PaymentFailed(PaymentFailed),
    PaymentRefunded(PaymentRefunded),
    PaymentCancelled(PaymentCancelled),
}

impl Event {
    /// The `event_type` field of this event.
    pub fn event_type(&self) -> EventType {
        match self {
            Self::OrderCreated(_) => EventType::OrderCreated,
            Self::OrderCancelled(_) => EventType::OrderCancelled,
            Self::PaymentCompleted(_) => EventType::PaymentCompleted,
            Self::PaymentFailed(_) => EventType::PaymentFailed,
            Self::PaymentRefunded(_) => EventType::PaymentRefunded,
            Self::PaymentCancelled(_) => EventType::PaymentCancelled,
        }
    }

    /// The order every event belongs to.
    pub fn order_id(&self) -> Uuid {
        match self {
            Self::OrderCreated(e) => e.order_id,
            Self::OrderCancelled(e) => e.order_id,
            Self::PaymentCompleted(e) => e.order_id,
            Self::PaymentFailed(e) => e.order_id,
            Self::PaymentRefunded(e) => e.order_id,
            Self::PaymentCancelled(e) => e.order_id,
        }
    }

    /// The body as the JSON text of the `payload` field in schema `version`.
    pub(crate) fn payload_json(&self, version: SchemaVersion) -> String {
        let json = match self {
            Self::OrderCreated(e) if version < SchemaVersion::V2 => {
                serde_json::to_string(&OrderCreated {
                    pay_by: None,
                    ..e.clone()
                })
            }
            Self::OrderCreated(e) => serde_json::to_string(e),
            Self::OrderCancelled(e) => serde_json::to_string(e),
            Self::PaymentCompleted(e) => serde_json::to_string(e),
            Self::PaymentFailed(e) => serde_json::to_string(e),
            Self::PaymentRefunded(e) => serde_json::to_string(e),
            Self::PaymentCancelled(e) => serde_json::to_string(e),
        };
        // Plain structs of strings, integers and UUIDs always serialize.
        json.unwrap_or_else(|_| "{}".to_owned())
    }

    /// Parses the `payload` field of an entry whose type is `event_type`, written in
    /// schema `version`, upcast to this build's types.
    pub(crate) fn from_payload(
        event_type: EventType,
        version: SchemaVersion,
        payload: &str,
    ) -> Result<Self, serde_json::Error> {
        Ok(match event_type {
            EventType::OrderCreated => {
                let mut order: OrderCreated = serde_json::from_str(payload)?;
                if version < SchemaVersion::V2 {
                    order.pay_by = None; // not part of version 1: no deadline
                } else if order.pay_by.is_none() {
                    return Err(serde::de::Error::missing_field("pay_by"));
                }
                Self::OrderCreated(order)
            }
            EventType::OrderCancelled => Self::OrderCancelled(serde_json::from_str(payload)?),
            EventType::PaymentCompleted => Self::PaymentCompleted(serde_json::from_str(payload)?),
            EventType::PaymentFailed => Self::PaymentFailed(serde_json::from_str(payload)?),
            EventType::PaymentRefunded => Self::PaymentRefunded(serde_json::from_str(payload)?),
            EventType::PaymentCancelled => Self::PaymentCancelled(serde_json::from_str(payload)?),
        })
    }
}
