//! Stream and consumer-group names of SPEC §3.1, before any namespace prefix.
//!
//! The stream runtime applies the configured `STREAM_NAMESPACE`; these are the logical
//! names both services agree on.

/// Stream order-service publishes to; consumed by group [`PAYMENT_SERVICE_GROUP`].
pub const ORDER_EVENTS: &str = "order-events";
/// Stream payment-service publishes to; consumed by group [`ORDER_SERVICE_GROUP`].
pub const PAYMENT_EVENTS: &str = "payment-events";
/// Consumer group of payment-service on [`ORDER_EVENTS`].
pub const PAYMENT_SERVICE_GROUP: &str = "payment-service";
/// Consumer group of order-service on [`PAYMENT_EVENTS`].
pub const ORDER_SERVICE_GROUP: &str = "order-service";
/// What follows a stream's key, as a hash tag, in the key of a group's dead letters
/// (the group's name comes after it): `order-events` -> `{order-events}:dlq:payment-service`.
pub const DEAD_LETTER_SUFFIX: &str = ":dlq";
