//! Both services on a Redis Cluster (`REDIS_URL=redis+cluster://…`) of the test's own:
//! three masters, three replicas. The flows run as on one node, and a stream's master
//! failed over, killed under load, or its slot moved to another master mid-flow loses and
//! duplicates nothing (SPEC §4.8). A killed master takes with it the writes it had not
//! replicated yet: the recovery loops (re-publishing what was not answered) cover them.
//!
//! The tests of this file run one at a time: each starts six `redis-server`s, and on two
//! cores several clusters at once would miss their own failure-detection deadlines.

use std::time::Duration;

use e2e::{
    ORDER_ARGS, Outcome, PAYMENT_ARGS, QUIET, assert_invariants, cancel_all, final_order, order_of,
    orders_at_least, place_orders, post,
};
use events::streams::{ORDER_EVENTS, PAYMENT_EVENTS};
use serde_json::json;
use testkit::{RedisCluster, Spawned, TestContext, eventually};
use tokio::sync::Mutex;

static ONE_CLUSTER_AT_A_TIME: Mutex<()> = Mutex::const_new(());

async fn services(ctx: &TestContext) -> (Spawned, Spawned) {
    let orders = ctx
        .spawn("order-service", ORDER_ARGS, order_service::start)
        .await;
    let payments = ctx
        .spawn("payment-service", PAYMENT_ARGS, payment_service::start)
        .await;
    (orders, payments)
}

/// Places `n` orders in the background; `fault` runs once a quarter of them exist, and
/// another `n / 2` are placed once it is over (through the new topology). Then every
/// accepted order must end paid or declined, with the invariants holding.
async fn under_load<F>(ctx: &TestContext, n: usize, fault: F)
where
    F: AsyncFnOnce(),
{
    let (orders, payments) = services(ctx).await;
    let load = tokio::spawn({
        let url = orders.url("");
        async move { place_orders(&url, n, 2).await }
    });
    orders_at_least(&orders.pool, (n / 4) as i64).await;
    fault().await;
    let after = place_orders(&orders.url(""), n / 2, 4).await;
    let during = load.await.expect("the load ran");
    assert_eq!(
        during.failed + after.failed,
        0,
        "orders are accepted whatever Redis does"
    );
    let outcome = assert_invariants(&orders.pool, &payments.pool, QUIET).await;
    assert_eq!(
        outcome.paid + outcome.payment_failed,
        n + n / 2,
        "{outcome:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_flows_run_on_a_redis_cluster() {
    let _one = ONE_CLUSTER_AT_A_TIME.lock().await;
    let cluster = RedisCluster::start().await;
    let ctx = TestContext::with_redis(&cluster.url());
    for logical in [ORDER_EVENTS, PAYMENT_EVENTS] {
        assert_eq!(
            cluster.slot_of(&ctx.stream(logical)).await,
            cluster.slot_of(&ctx.dead_letter_stream(logical)).await,
            "{logical} and its dead letters share a slot"
        );
    }
    let (orders, payments) = services(&ctx).await;

    let placed = place_orders(&orders.url(""), 20, 4).await;
    assert_eq!(placed.accepted.len(), 20);
    let (status, declined) = post(&orders, "/orders", &order_of("kim", 150_000)).await;
    assert_eq!(status, 201);
    let (_, cancelled) = post(&orders, "/orders", &order_of("lee", 100)).await;
    cancel_all(&orders, &[cancelled]).await;
    ctx.xadd(
        ORDER_EVENTS,
        &[("event_type", "OrderCreated"), ("payload", "{")],
    )
    .await;

    let outcome = assert_invariants(&orders.pool, &payments.pool, QUIET).await;
    assert_eq!(
        outcome,
        Outcome {
            paid: 20,
            payment_failed: 1,
            cancelled: 1
        }
    );
    let declined = final_order(&orders, declined["id"].as_str().expect("an id")).await;
    assert_eq!(declined["failure_reason"], json!("insufficient_funds"));
    eventually(
        "the poison entry dead-lettered",
        Duration::from_secs(10),
        || async {
            match ctx.dead_letters(ORDER_EVENTS).await.len() {
                1 => Ok(()),
                n => Err(format!("{n} dead letters")),
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_failover_of_a_streams_master_mid_flow_loses_nothing() {
    let _one = ONE_CLUSTER_AT_A_TIME.lock().await;
    let cluster = RedisCluster::start().await;
    let ctx = TestContext::with_redis(&cluster.url());
    under_load(&ctx, 200, async || {
        cluster.fail_over(&ctx.stream(ORDER_EVENTS)).await;
        cluster.fail_over(&ctx.stream(PAYMENT_EVENTS)).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_master_of_order_events_killed_under_load_loses_nothing() {
    let _one = ONE_CLUSTER_AT_A_TIME.lock().await;
    let mut cluster = RedisCluster::start().await;
    let ctx = TestContext::with_redis(&cluster.url());
    let stream = ctx.stream(ORDER_EVENTS);
    under_load(&ctx, 200, async || {
        let killed = cluster.kill_master_of(&stream).await;
        assert_ne!(cluster.master_of(&stream).await, killed);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streams_slot_moved_to_another_master_mid_flow_loses_nothing() {
    let _one = ONE_CLUSTER_AT_A_TIME.lock().await;
    let cluster = RedisCluster::start().await;
    let ctx = TestContext::with_redis(&cluster.url());
    let stream = ctx.stream(ORDER_EVENTS);
    under_load(&ctx, 200, async || {
        let before = cluster.master_of(&stream).await;
        let after = cluster.migrate_slot_of(&stream).await;
        assert_ne!(before, after);
    })
    .await;
}
