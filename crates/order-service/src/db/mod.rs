//! Every query of the order database, one function each, in a file per concern (placing,
//! reads, changes, idempotency keys, sweeps). Functions that take a `&mut PgConnection`
//! run inside the caller's transaction.

use std::sync::LazyLock;

use sqlx::migrate::Migrator;

/// The order database's migrations (the runtime's outbox and inbox, then
/// `migrations/order`), embedded in the binary and run at start-up.
pub static MIGRATOR: LazyLock<Migrator> = LazyLock::new(|| {
    service_runtime::schema::with_runtime(&sqlx::migrate!("../../migrations/order"))
});

/// The columns of an order with its deadline, as [`Order`](crate::domain::Order) reads them, from `orders o
/// LEFT JOIN order_deadlines d`. Named, never `*`: a column that a later release adds
/// must not change what this release's prepared statements return, or a replica of it
/// still running during the rolling upgrade fails on every one ("cached plan must not
/// change result type").
macro_rules! order_columns {
    () => {
        "o.id, o.customer_id, o.items, o.total_cents, o.currency, o.status, o.payment_id,
         o.failure_reason, o.refunded_at, o.cancellation_confirmed_at, o.created_at,
         o.updated_at, d.pay_by"
    };
}

mod changes;
mod idempotency;
mod placing;
mod reads;
mod sweeps;

pub use changes::{lock_orders, set_status, update_orders};
pub use idempotency::{claim_idempotency_key, find_idempotency_key, prune_idempotency_keys};
pub use placing::{NewOrderRow, insert_orders_with_events};
pub use reads::{OrderFilter, find_order, list_orders};
pub use sweeps::{ScanFrom, expire_unpaid, stale_pending_orders, unconfirmed_cancellations};
