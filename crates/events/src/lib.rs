//! The event contract between order-service and payment-service (SPEC §3).
//!
//! This crate owns the event types, their payloads, and their encoding to and from the
//! flat field list of a Redis Stream entry. It does no I/O: the stream runtime moves
//! entries, the services decide what events mean, and both agree on the shape here.
//!
//! Decoding is a tolerant reader: an `event_type` this version does not know is reported
//! as [`DecodeError::UnknownEventType`] so consumers can skip it (producers may add types
//! first), while a known type that does not decode is poison (every other error), and so
//! is one that decodes but fails the content checks (`checks.rs`: producer, identifiers,
//! amounts, an order's total).
//! [`PaymentCancelled`] came that way: added after the first five types, skipped by
//! consumers built before it.

mod checks;
pub mod contract;
mod envelope;
mod key_files;
pub mod limits;
mod money;
mod payloads;
mod signature_tree;
mod signing;
pub mod streams;
pub mod text;
mod versions;
mod writer;

pub use envelope::{DecodeError, Envelope, EventType, Producer, fields};
pub use key_files::KeyError;
pub use money::{Currency, InvalidCurrency};
pub use payloads::{
    Event, FailureReason, OrderCancelled, OrderCreated, OrderItem, PaymentCancelled,
    PaymentCompleted, PaymentFailed, PaymentRefunded,
};
pub use signature_tree::LEAVES_PER_TREE;
pub use signing::{EventSigner, SIGNED_FIELDS, Unverified, VerifyingKeys, signed_bytes};
pub use versions::SchemaVersion;
pub use writer::{EventWriter, SignatureScope};
