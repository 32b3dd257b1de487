//! The services in the test process, with the settings the tests share, and what they
//! leave in the streams and databases.

use std::time::Duration;

use events::streams::{ORDER_EVENTS, PAYMENT_EVENTS};
use sqlx::PgPool;
use testkit::{Spawned, TestContext, eventually};

/// Fast failure detection for tests: reclaim after 1 s idle, re-publish after 1.5 s.
pub const ORDER_ARGS: &[&str] = &[
    "--claim-min-idle-ms",
    "1000",
    "--pending-republish-after-ms",
    "1500",
];
pub const PAYMENT_ARGS: &[&str] = &["--claim-min-idle-ms", "1000"];
pub const QUIET: Duration = Duration::from_secs(60);

pub async fn order_service(ctx: &TestContext) -> Spawned {
    ctx.spawn("order-service", ORDER_ARGS, order_service::start)
        .await
}

/// Both services on fresh databases, each given `args` (e.g. [`TRIM_HARD`]).
pub async fn both_services(ctx: &TestContext, args: &[&str]) -> (Spawned, Spawned) {
    let orders = ctx.spawn("order-service", args, order_service::start).await;
    let payments = ctx
        .spawn("payment-service", args, payment_service::start)
        .await;
    (orders, payments)
}

pub async fn payment_service(ctx: &TestContext) -> Spawned {
    ctx.spawn("payment-service", PAYMENT_ARGS, payment_service::start)
        .await
}

pub async fn published(ctx: &TestContext, logical: &str, n: usize) {
    eventually(
        &format!("{n} entries on {logical}"),
        Duration::from_secs(10),
        || async {
            let found = ctx.entries(logical).await.len();
            if found >= n {
                Ok(())
            } else {
                Err(format!("{found} entries"))
            }
        },
    )
    .await;
}

/// Waits until at least `n` orders are in the order database.
pub async fn orders_at_least(orders: &PgPool, n: i64) {
    eventually("the flow to get going", Duration::from_secs(30), || async {
        let count: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
            .fetch_one(orders)
            .await
            .map_err(|e| e.to_string())?;
        if count >= n {
            Ok(())
        } else {
            Err(format!("{count} orders"))
        }
    })
    .await;
}

/// Trim as hard and as often as the groups allow.
pub const TRIM_HARD: &[&str] = &[
    "--stream-retention-ms",
    "0",
    "--stream-trim-interval-ms",
    "50",
];

async fn length(ctx: &TestContext, logical: &str) -> u64 {
    redis::cmd("XLEN")
        .arg(ctx.stream(logical))
        .query_async(&mut ctx.redis().await)
        .await
        .expect("XLEN")
}

/// Waits until both streams are trimmed to their last delivered entry.
pub async fn trimmed_to_their_last_entry(ctx: &TestContext) {
    for logical in [ORDER_EVENTS, PAYMENT_EVENTS] {
        eventually(
            &format!("{logical} trimmed to its last delivered entry"),
            Duration::from_secs(10),
            || async {
                match length(ctx, logical).await {
                    1 => Ok(()),
                    n => Err(format!("{n} entries")),
                }
            },
        )
        .await;
    }
}
