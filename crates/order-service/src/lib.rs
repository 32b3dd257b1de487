//! order-service: takes orders over HTTP, owns the order database, publishes
//! `OrderCreated` through its outbox, and follows payment outcomes from `payment-events`.
//!
//! - [`domain`]: orders and their validation, pure.
//! - [`db`]: every query, one function each.
//! - [`placing`]: placing orders (the outbox write, grouped under load).
//! - [`orders`]: cancelling and reconciling orders.
//! - [`http`]: routes and the service's HTTP errors.
//! - [`payment_events`]: what a payment event does to an order.
//! - [`app`]: wiring, started by `main` and by tests alike.

pub mod app;
pub mod db;
pub mod domain;
pub mod http;
pub mod orders;
pub mod payment_events;
pub mod placing;
pub mod settings;

pub use app::start;
pub use settings::Settings;
