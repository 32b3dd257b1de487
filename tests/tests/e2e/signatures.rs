//! Turning event signatures on in a running deployment (SPEC §4.9) loses nothing: both
//! services first without them (`SIGNATURES=off`, as a build before signing), with unsigned
//! entries still waiting in `order-events`; then both restarted with their keys and
//! `SIGNATURES=report` (they sign what they write; the unsigned entries waiting are applied
//! and counted in `events_unverified_total`); then, once nothing unsigned is left, with
//! `require`. No dead letter, every order final, the invariants hold throughout.

use std::time::Duration;

use e2e::{assert_invariants, place_orders};
use events::streams::{ORDER_EVENTS, PAYMENT_EVENTS};
use sqlx::PgPool;
use testkit::{Spawned, TestContext};

async fn both(ctx: &TestContext, dbs: (&str, &str), mode: &str) -> (Spawned, Spawned) {
    let args = ["--signatures", mode];
    (
        ctx.spawn_on("order-service", dbs.0, &args, order_service::start)
            .await,
        ctx.spawn_on("payment-service", dbs.1, &args, payment_service::start)
            .await,
    )
}

/// `events_unverified_total` of this test's `stream`, as `app` counts it.
async fn unverified(app: &Spawned, ctx: &TestContext, stream: &str) -> u64 {
    let labels = [format!("stream=\"{}\"", ctx.stream(stream))];
    app.metric("events_unverified_total", &labels).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turning_signatures_on_in_a_running_deployment_loses_nothing() {
    let ctx = TestContext::new();
    let (orders_db, payments_db) = (ctx.database().await, ctx.database().await);
    let dbs = (orders_db.as_str(), payments_db.as_str());
    let pools = (
        PgPool::connect(&orders_db).await.expect("db"),
        PgPool::connect(&payments_db).await.expect("db"),
    );
    let quiet = Duration::from_secs(30);

    // Before: nothing signed; then payment-service away while orders come in.
    let (orders, payments) = both(&ctx, dbs, "off").await;
    place_orders(&orders.url(""), 20, 4).await;
    assert_invariants(&pools.0, &pools.1, quiet).await;
    payments.stop().await.expect("stops");
    let waiting = place_orders(&orders.url(""), 10, 4).await;
    assert_eq!(waiting.accepted.len(), 10);
    orders.stop().await.expect("stops");

    // Step 1: keys and `report`: the unsigned entries waiting are applied, and counted.
    let (orders, payments) = both(&ctx, dbs, "report").await;
    place_orders(&orders.url(""), 10, 4).await;
    assert_invariants(&pools.0, &pools.1, quiet).await;
    assert!(
        unverified(&payments, &ctx, ORDER_EVENTS).await >= 10,
        "the unsigned entries were reported"
    );
    payments.stop().await.expect("stops");
    orders.stop().await.expect("stops");

    // Step 2: `require`, once nothing unsigned waits.
    let (orders, _payments) = both(&ctx, dbs, "require").await;
    let last = place_orders(&orders.url(""), 10, 4).await;
    assert_eq!(last.accepted.len(), 10);
    let outcome = assert_invariants(&pools.0, &pools.1, quiet).await;
    assert_eq!(
        outcome.paid + outcome.payment_failed + outcome.cancelled,
        50
    );
    for stream in [ORDER_EVENTS, PAYMENT_EVENTS] {
        let dead = ctx.dead_letters(stream).await;
        assert!(dead.is_empty(), "dead letters on {stream}: {dead:?}");
    }
}
