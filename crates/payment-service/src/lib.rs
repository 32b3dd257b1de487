//! payment-service: charges customers' accounts for orders, owns the payment database,
//! consumes `order-events` and publishes outcomes to `payment-events` through its outbox.
//!
//! - [`domain`]: the payment decision and the per-order saga state, pure.
//! - [`db`]: every query, one function each.
//! - [`order_events`]: what `OrderCreated` and `OrderCancelled` do: a batch is loaded,
//!   settled in memory by the [`ledger`], and written back; [`batch`] reads the
//!   events and says what a batch needs loaded.
//! - [`accounts`] holds deposits.
//! - [`http`]: payments, accounts, deposits.
//! - [`app`]: wiring, started by `main` and by tests alike.

pub mod accounts;
pub mod app;
pub mod batch;
pub mod db;
pub mod domain;
pub mod http;
pub mod ledger;
pub mod order_events;
pub mod settings;

pub use app::start;
pub use settings::Settings;
