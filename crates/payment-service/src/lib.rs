//! payment-service: charges customers' accounts for orders, owns the payment database,
//! consumes `order-events` and publishes outcomes to `payment-events` through its outbox.
//!
//! - [`domain`]: the payment decision and the per-order saga state, pure.
//! - [`db`]: every query, one function each.
//! - [`order_events`]: what `OrderCreated` and `OrderCancelled` do: a batch is loaded,
//!   settled in memory by the [`ledger`], and written back.
//! - [`accounts`] holds deposits.
//! - [`http`]: payments, accounts, deposits.
//! - [`app`]: wiring, started by `main` and by tests alike.

pub mod accounts;
pub mod app;
pub mod db;
pub mod domain;
pub mod http;
pub mod ledger;
pub mod order_events;
pub mod settings;

pub use app::start;
pub use settings::Settings;

/// The `payment-service` binary: settings from the environment, run until SIGINT or
/// SIGTERM. Exit code 0 after a clean stop, 1 when it cannot start or fails, 2 on bad
/// settings.
#[tokio::main]
pub async fn main() -> std::process::ExitCode {
    service_runtime::service::run_main("payment-service", |s: &Settings| &s.common, start).await
}

/// The payment database's migrations, embedded in the binary and run at start-up.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/payment");
