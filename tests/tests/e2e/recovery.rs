//! Every event whose effect its sender waits for is sent again until its answer arrives
//! (SPEC §4.6), and the answer is sent again when the question repeats. One test per way
//! an event of the cancel half of the saga can be lost; the create half is covered by
//! the broker-wipe tests in `chaos.rs`. Each ends with the SPEC §4.8 invariants: every
//! cancelled order confirmed, no standing charge, balances whole.

use std::time::Duration;

use e2e::{
    ORDER_ARGS, PAYMENT_ARGS, QUIET, assert_invariants, cancel_all, order_service, payment_service,
    place_orders, published,
};
use events::streams::{ORDER_EVENTS, PAYMENT_EVENTS};
use serde_json::Value;
use sqlx::PgPool;
use testkit::{PrivateRedis, Spawned, TestContext, eventually};

/// Places `n` orders and waits until every one is paid.
async fn paid_orders(orders: &Spawned, payments: &Spawned, n: usize) -> Vec<Value> {
    let placed = place_orders(&orders.url(""), n, 4).await;
    let outcome = assert_invariants(&orders.pool, &payments.pool, QUIET).await;
    assert_eq!(outcome.paid, n, "every order paid before the fault");
    placed.accepted
}

/// How many of the cancelled orders have had their cancellation confirmed.
async fn confirmed(orders: &PgPool) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM orders
         WHERE status = 'CANCELLED' AND cancellation_confirmed_at IS NOT NULL",
    )
    .fetch_one(orders)
    .await
    .expect("count")
}

/// Waits until every order is cancelled, refunded and confirmed, and the invariants hold.
async fn all_refunded(orders: &Spawned, payments: &Spawned, n: usize) {
    let outcome = assert_invariants(&orders.pool, &payments.pool, QUIET).await;
    assert_eq!(outcome.cancelled, n, "every order cancelled, none charged");
    eventually("every refund recorded", Duration::from_secs(10), || async {
        let refunded: i64 =
            sqlx::query_scalar("SELECT count(*) FROM orders WHERE refunded_at IS NOT NULL")
                .fetch_one(&orders.pool)
                .await
                .map_err(|e| e.to_string())?;
        if refunded as usize == n {
            Ok(())
        } else {
            Err(format!("{refunded} refunded"))
        }
    })
    .await;
    assert_eq!(confirmed(&orders.pool).await as usize, n);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_order_cancelled_is_sent_again_and_the_charge_refunded() {
    let redis = PrivateRedis::start().await;
    let ctx = TestContext::with_redis(&redis.url());
    let orders = order_service(&ctx).await;
    let payments = payment_service(&ctx).await;
    let placed = paid_orders(&orders, &payments, 12).await;
    let payment_db = payments.database_url.clone();
    payments.stop().await.expect("stops");

    cancel_all(&orders, &placed).await;
    published(&ctx, ORDER_EVENTS, 2 * placed.len()).await; // every OrderCancelled went out...
    redis.flush_all().await; // ...and was lost before payment-service read it

    let payments = ctx
        .spawn_on(
            "payment-service",
            &payment_db,
            PAYMENT_ARGS,
            payment_service::start,
        )
        .await;
    all_refunded(&orders, &payments, placed.len()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_refund_is_asked_for_again_and_answered_without_a_second_refund() {
    let redis = PrivateRedis::start().await;
    let ctx = TestContext::with_redis(&redis.url());
    let orders = order_service(&ctx).await;
    let payments = payment_service(&ctx).await;
    let placed = paid_orders(&orders, &payments, 12).await;
    let order_db = orders.database_url.clone();
    let n = placed.len();

    // order-service stops right after cancelling (its relay flushes the cancellations
    // as it stops); payment-service refunds them, and the answers are lost.
    cancel_all(&orders, &placed).await;
    orders.stop().await.expect("stops");
    published(&ctx, PAYMENT_EVENTS, 2 * n).await; // n PaymentCompleted, n PaymentRefunded
    redis.flush_all().await;

    let orders = ctx
        .spawn_on("order-service", &order_db, ORDER_ARGS, order_service::start)
        .await;
    all_refunded(&orders, &payments, n).await;
    let refunds: i64 =
        sqlx::query_scalar("SELECT count(*) FROM payments WHERE status = 'REFUNDED'")
            .fetch_one(&payments.pool)
            .await
            .expect("count");
    assert_eq!(refunds as usize, n, "each payment refunded once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_lettered_order_cancelled_is_sent_again_once_the_fault_is_gone() {
    let ctx = TestContext::new();
    let orders = order_service(&ctx).await;
    let payments = ctx
        .spawn(
            "payment-service",
            &[PAYMENT_ARGS, &["--max-deliveries", "1"]].concat(),
            payment_service::start,
        )
        .await;
    let placed = paid_orders(&orders, &payments, 6).await;

    // A fault that is not an outage (a bug, say): every refund fails, and with one
    // delivery allowed each cancellation is dead-lettered at once.
    sqlx::raw_sql(
        "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN RAISE EXCEPTION 'injected fault'; END $$;
         CREATE TRIGGER refuse BEFORE UPDATE ON order_payments
             FOR EACH ROW EXECUTE FUNCTION refuse();",
    )
    .execute(&payments.pool)
    .await
    .expect("fault injected");
    cancel_all(&orders, &placed).await;
    eventually("the cancellations dead-lettered", QUIET, || async {
        let dead = ctx.dead_letters(ORDER_EVENTS).await.len();
        if dead >= placed.len() {
            Ok(())
        } else {
            Err(format!("{dead} dead letters"))
        }
    })
    .await;

    // The fault is fixed; nobody replays the dead letters by hand.
    sqlx::raw_sql("DROP TRIGGER refuse ON order_payments")
        .execute(&payments.pool)
        .await
        .expect("fault removed");
    all_refunded(&orders, &payments, placed.len()).await;
}
