//! Chaos: break things on purpose, then check the SPEC §4.8 invariants once the system is
//! quiet (every order final, balances exact, at most one payment per order).
//!
//! Destructive Redis scenarios run against a private `redis-server` of their own, and
//! database outages go through a proxy in front of one service only, so nothing here
//! disturbs other tests running at the same time.

use std::collections::HashSet;
use std::time::Duration;

use e2e::{
    ORDER_ARGS, PAYMENT_ARGS, QUIET, assert_invariants, order_service, orders_at_least,
    payment_service, place_orders, published, ready, start_process, terminate,
};
use events::streams::{ORDER_EVENTS, ORDER_SERVICE_GROUP, PAYMENT_EVENTS, PAYMENT_SERVICE_GROUP};
use serde_json::Value;
use sqlx::PgPool;
use testkit::{FaultProxy, PrivateRedis, TestContext, backends, eventually, host_port};

async fn xpending_of(ctx: &TestContext, logical: &str, group: &str, consumer: &str) -> usize {
    let pending: Vec<(String, String, u64, u64)> = redis::cmd("XPENDING")
        .arg(ctx.stream(logical))
        .arg(group)
        .arg("-")
        .arg("+")
        .arg(1000)
        .arg(consumer)
        .query_async(&mut ctx.redis().await)
        .await
        .expect("XPENDING");
    pending.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_of_a_consumer_killed_mid_batch_are_reclaimed_and_finished() {
    let ctx = TestContext::new();
    let orders = order_service(&ctx).await;
    let placed = place_orders(&orders.url(""), 40, 4).await;
    published(&ctx, ORDER_EVENTS, 40).await;

    // A payment-service consumer takes a batch of 25 and dies before acking any of it.
    let mut redis = ctx.redis().await;
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(ctx.stream(ORDER_EVENTS))
        .arg(PAYMENT_SERVICE_GROUP)
        .arg("0")
        .arg("MKSTREAM")
        .query_async(&mut redis)
        .await
        .expect("group");
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg(PAYMENT_SERVICE_GROUP)
        .arg("victim")
        .arg("COUNT")
        .arg(25)
        .arg("STREAMS")
        .arg(ctx.stream(ORDER_EVENTS))
        .arg(">")
        .query_async(&mut redis)
        .await
        .expect("read");
    assert_eq!(
        xpending_of(&ctx, ORDER_EVENTS, PAYMENT_SERVICE_GROUP, "victim").await,
        25
    );

    let payments = payment_service(&ctx).await;
    let outcome = assert_invariants(&orders.pool, &payments.pool, QUIET).await;
    assert_eq!(outcome.paid, placed.accepted.len());
    assert_eq!(
        xpending_of(&ctx, ORDER_EVENTS, PAYMENT_SERVICE_GROUP, "victim").await,
        0,
        "all reclaimed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_share_the_work_and_finish_what_a_killed_one_left() {
    let ctx = TestContext::new();
    let orders = order_service(&ctx).await;
    let first = ctx
        .spawn(
            "payment-service",
            &[PAYMENT_ARGS, &["--consumer-name", "replica-1"]].concat(),
            payment_service::start,
        )
        .await;
    let database = first.database_url.clone();
    let mut replicas = vec![first];
    for name in ["replica-2", "replica-3"] {
        let args = [PAYMENT_ARGS, &["--consumer-name", name]].concat();
        replicas.push(
            ctx.spawn_on("payment-service", &database, &args, payment_service::start)
                .await,
        );
    }

    // Who held entries of the group, sampled all along: the work is shared only if every
    // replica was seen holding some.
    let holders = std::sync::Arc::new(std::sync::Mutex::new(HashSet::new()));
    let sampler = tokio::spawn({
        let (mut redis, stream) = (ctx.redis().await, ctx.stream(ORDER_EVENTS));
        let holders = holders.clone();
        async move {
            let mut every = tokio::time::interval(Duration::from_millis(5));
            loop {
                every.tick().await;
                let held = holders_of(&mut redis, &stream, PAYMENT_SERVICE_GROUP).await;
                holders.lock().expect("holders").extend(held);
            }
        }
    });
    let load = tokio::spawn({
        let url = orders.url("");
        async move { place_orders(&url, 300, 8).await }
    });
    // Kill one replica while it holds entries, without a chance to finish or ack them.
    eventually(
        "replica-2 to hold entries",
        Duration::from_secs(20),
        || async {
            if xpending_of(&ctx, ORDER_EVENTS, PAYMENT_SERVICE_GROUP, "replica-2").await > 0 {
                Ok(())
            } else {
                Err("none pending".to_owned())
            }
        },
    )
    .await;
    replicas.remove(1).kill();
    let placed = load.await.expect("load ran");

    let outcome = assert_invariants(&orders.pool, &replicas[0].pool, QUIET).await;
    assert_eq!(outcome.paid + outcome.payment_failed, placed.accepted.len());
    ctx.drained(ORDER_EVENTS, PAYMENT_SERVICE_GROUP).await;
    sampler.abort();
    assert_eq!(
        xpending_of(&ctx, ORDER_EVENTS, PAYMENT_SERVICE_GROUP, "replica-2").await,
        0,
        "what the killed replica held was finished by the others"
    );
    let holders = holders.lock().expect("holders").clone();
    assert_eq!(
        holders,
        HashSet::from(["replica-1", "replica-2", "replica-3"].map(String::from)),
        "every replica held some of the group's entries"
    );
}

/// The consumers of `group` on `stream` holding entries now (`XPENDING` summary).
async fn holders_of(
    redis: &mut service_runtime::RedisConnection,
    stream: &str,
    group: &str,
) -> Vec<String> {
    let summary: redis::Value = redis::cmd("XPENDING")
        .arg(stream)
        .arg(group)
        .query_async(redis)
        .await
        .unwrap_or(redis::Value::Nil);
    let redis::Value::Array(parts) = summary else {
        return Vec::new();
    };
    let Some(redis::Value::Array(consumers)) = parts.into_iter().nth(3) else {
        return Vec::new();
    };
    consumers
        .into_iter()
        .filter_map(|consumer| {
            let (name, _count): (String, String) = redis::from_redis_value(consumer).ok()?;
            Some(name)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_wiped_before_payment_loses_no_order() {
    let redis = PrivateRedis::start().await;
    let ctx = TestContext::with_redis(&redis.url());
    let orders = order_service(&ctx).await;
    let placed = place_orders(&orders.url(""), 30, 4).await;
    published(&ctx, ORDER_EVENTS, 30).await;

    redis.flush_all().await; // every OrderCreated is gone before payment-service saw it
    let payments = payment_service(&ctx).await;
    let outcome = assert_invariants(&orders.pool, &payments.pool, QUIET).await;
    assert_eq!(
        outcome.paid,
        placed.accepted.len(),
        "the reconciler re-published them all"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_wiped_after_payment_charges_no_order_twice() {
    let redis = PrivateRedis::start().await;
    let ctx = TestContext::with_redis(&redis.url());
    let orders = order_service(&ctx).await;
    let order_db = orders.database_url.clone();
    let placed = place_orders(&orders.url(""), 30, 4).await;
    published(&ctx, ORDER_EVENTS, 30).await;
    orders.stop().await.expect("stops");

    let payments = payment_service(&ctx).await;
    published(&ctx, PAYMENT_EVENTS, 30).await; // every order charged and answered...
    redis.flush_all().await; // ...and every answer lost before order-service read it

    let orders = ctx
        .spawn_on("order-service", &order_db, ORDER_ARGS, order_service::start)
        .await;
    let outcome = assert_invariants(&orders.pool, &payments.pool, QUIET).await;
    assert_eq!(outcome.paid, placed.accepted.len());
    let charges: i64 = sqlx::query_scalar("SELECT count(*) FROM payments")
        .fetch_one(&payments.pool)
        .await
        .expect("count");
    assert_eq!(
        charges as usize,
        placed.accepted.len(),
        "the recorded outcomes were re-published, not re-charged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_wiped_twice_under_load_loses_and_duplicates_nothing() {
    let redis = PrivateRedis::start().await;
    let ctx = TestContext::with_redis(&redis.url());
    let orders = order_service(&ctx).await;
    let payments = payment_service(&ctx).await;
    let load = tokio::spawn({
        let url = orders.url("");
        async move { place_orders(&url, 200, 4).await }
    });
    for after in [40, 120] {
        orders_at_least(&orders.pool, after).await;
        redis.flush_all().await;
    }
    let placed = load.await.expect("load ran");
    assert_eq!(placed.failed, 0, "orders are accepted whatever Redis does");
    let outcome = assert_invariants(&orders.pool, &payments.pool, QUIET).await;
    assert_eq!(outcome.paid + outcome.payment_failed, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_orders_are_still_accepted_and_flow_when_it_returns() {
    let mut redis = PrivateRedis::start().await;
    let ctx = TestContext::with_redis(&redis.url());
    let orders = order_service(&ctx).await;
    let payments = payment_service(&ctx).await;
    assert_eq!(
        place_orders(&orders.url(""), 10, 2).await.accepted.len(),
        10
    );

    redis.kill();
    let during = place_orders(&orders.url(""), 20, 2).await;
    assert_eq!(
        (during.accepted.len(), during.failed),
        (20, 0),
        "accepted into the outbox while Redis is down"
    );
    redis.restart().await; // back, and empty

    let outcome = assert_invariants(&orders.pool, &payments.pool, QUIET).await;
    assert_eq!(outcome.paid + outcome.payment_failed, 30);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_unreachable_acks_nothing_and_processing_resumes_when_it_returns() {
    let ctx = TestContext::new();
    let orders = order_service(&ctx).await;
    let proxy = FaultProxy::start(host_port(&backends().database_url, 5432)).await;
    let payment_db = ctx.database().await;
    let payments = ctx
        .spawn_on(
            "payment-service",
            &proxy.url_through(&payment_db),
            PAYMENT_ARGS,
            payment_service::start,
        )
        .await;
    let direct = PgPool::connect(&payment_db).await.expect("direct access");

    proxy.cut();
    let placed = place_orders(&orders.url(""), 20, 2).await;
    published(&ctx, ORDER_EVENTS, 20).await;
    let (status, ready) = payments.get_json("/health/ready").await;
    assert_eq!(
        (status, &ready["checks"]["postgres"]),
        (503, &Value::from("unavailable")),
        "{ready}"
    );
    // Delivered or not, nothing is acked while the database is away.
    eventually(
        "the consumer to hold entries it cannot apply",
        Duration::from_secs(10),
        || async {
            match ctx.group_backlog(ORDER_EVENTS, PAYMENT_SERVICE_GROUP).await {
                Some((pending, lag)) if pending > 0 && pending + lag == 20 => Ok(()),
                other => Err(format!("(pending, lag) = {other:?}")),
            }
        },
    )
    .await;

    proxy.restore();
    let outcome = assert_invariants(&orders.pool, &direct, QUIET).await;
    assert_eq!(outcome.paid, placed.accepted.len());
    assert!(
        ctx.dead_letters(ORDER_EVENTS).await.is_empty(),
        "an outage dead-letters nothing"
    );
}

/// Every event is delivered again, newest first, while the flow it belongs to is under
/// way (orders placed, paid, a third of them cancelled and refunded), where the inbox
/// absorbs the copies; then, the inboxes forgotten (their retention passed), every event
/// once more, where only the natural keys and state machines stand between a copy and a
/// second effect: payment-service's saga row per order and `payments.order_id`, the
/// orders' state machine. Breaking either kind of mechanism fails this test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicated_and_reordered_deliveries_have_no_second_effect() {
    let ctx = TestContext::new();
    let orders = order_service(&ctx).await;
    let payments = payment_service(&ctx).await;
    let done = std::sync::atomic::AtomicBool::new(false);
    let replayer = async {
        // A replay round every 5 ms: the pace of the duplicates, not a wait.
        let (mut replayed, mut every) = (
            HashSet::new(),
            tokio::time::interval(Duration::from_millis(5)),
        );
        while !done.load(std::sync::atomic::Ordering::Relaxed) {
            every.tick().await;
            replay(&ctx, &mut replayed).await;
        }
        replayed.len()
    };
    let flow = async {
        let placed = place_orders(&orders.url(""), 60, 4).await;
        let cancelled: Vec<Value> = placed.accepted.iter().step_by(3).cloned().collect();
        e2e::cancel_all(&orders, &cancelled).await;
        let outcome = assert_invariants(&orders.pool, &payments.pool, QUIET).await;
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        (placed.accepted.len(), cancelled.len(), outcome)
    };
    let (replays, (accepted, cancelled, before)) = tokio::join!(replayer, flow);
    assert!(
        replays >= accepted + 2 * cancelled,
        "each question and answer delivered twice ({replays} replayed)"
    );
    assert_eq!(before.paid, accepted - cancelled);
    assert_eq!(before.cancelled, cancelled);

    for pool in [&orders.pool, &payments.pool] {
        sqlx::query("DELETE FROM inbox")
            .execute(pool)
            .await
            .expect("inbox forgotten");
    }
    replay(&ctx, &mut HashSet::new()).await;
    ctx.drained(ORDER_EVENTS, PAYMENT_SERVICE_GROUP).await;
    ctx.drained(PAYMENT_EVENTS, ORDER_SERVICE_GROUP).await;
    let after = assert_invariants(&orders.pool, &payments.pool, QUIET).await;
    assert_eq!(after, before, "no copy had a second effect");
}

/// Writes every entry of both streams whose `event_id` is not in `replayed` again,
/// newest first, and adds its id.
async fn replay(ctx: &TestContext, replayed: &mut HashSet<String>) {
    for logical in [ORDER_EVENTS, PAYMENT_EVENTS] {
        let mut entries = ctx.entries(logical).await;
        entries.reverse();
        for (_, fields) in &entries {
            let event_id = fields.iter().find(|(k, _)| k == "event_id");
            if !event_id.is_some_and(|(_, id)| replayed.insert(id.clone())) {
                continue;
            }
            let fields: Vec<(&str, &str)> = fields
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            ctx.xadd(logical, &fields).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_entries_of_every_shape_are_dead_lettered_and_the_flow_goes_on() {
    let ctx = TestContext::new();
    let orders = order_service(&ctx).await;
    let payments = payment_service(&ctx).await;
    let load = tokio::spawn({
        let url = orders.url("");
        async move { place_orders(&url, 60, 4).await }
    });
    let shapes: Vec<Vec<(&str, &[u8])>> = vec![
        vec![("nothing", b"useful")],
        vec![("event_type", b"OrderCreated"), ("schema_version", b"1")],
        vec![
            ("event_type", b"OrderCreated"),
            ("schema_version", b"9"),
            ("payload", b"{}"),
        ],
        vec![
            ("event_type", b"OrderCreated"),
            ("schema_version", b"1"),
            ("event_id", b"x"),
            ("payload", b"{"),
        ],
        vec![("event_type", b"\xff\xfe"), ("payload", b"\x00")],
        vec![("", b"")],
    ];
    for logical in [ORDER_EVENTS, PAYMENT_EVENTS] {
        for shape in &shapes {
            ctx.xadd(logical, shape).await;
        }
        ctx.xadd(logical, &[("event_type", &b"InvoiceIssued"[..])])
            .await; // unknown: skipped
    }
    let placed = load.await.expect("load ran");
    let outcome = assert_invariants(&orders.pool, &payments.pool, QUIET).await;
    assert_eq!(outcome.paid + outcome.payment_failed, placed.accepted.len());
    ctx.drained(ORDER_EVENTS, PAYMENT_SERVICE_GROUP).await;
    ctx.drained(PAYMENT_EVENTS, ORDER_SERVICE_GROUP).await;
    for logical in [ORDER_EVENTS, PAYMENT_EVENTS] {
        let dead = ctx.dead_letters(logical).await;
        assert_eq!(
            dead.len(),
            shapes.len(),
            "{logical}: each poison shape once, the unknown type not at all"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_binaries_killed_with_sigkill_under_load_lose_nothing() {
    let ctx = TestContext::new();
    let order_db = ctx.database().await;
    let payment_db = ctx.database().await;
    let common = |db: &str| {
        vec![
            ("DATABASE_URL", db.to_owned()),
            ("REDIS_URL", ctx.redis_url().to_owned()),
            ("STREAM_NAMESPACE", ctx.namespace().to_owned()),
            ("DATABASE_MAX_CONNECTIONS", "4".to_owned()),
            ("READ_BLOCK_MS", "200".to_owned()),
            ("CLAIM_MIN_IDLE_MS", "1000".to_owned()),
            // Longer than the test: what a kill loses must be published by the outbox and
            // reclaimed from the group, never repaired by the reconciler asking again.
            ("PENDING_REPUBLISH_AFTER_MS", "600000".to_owned()),
            ("SHUTDOWN_TIMEOUT_MS", "5000".to_owned()),
        ]
    };
    let start_orders = || {
        start_process(
            env!("CARGO_BIN_EXE_chaos-order-service"),
            &common(&order_db),
        )
    };
    let start_payments = || {
        start_process(
            env!("CARGO_BIN_EXE_chaos-payment-service"),
            &common(&payment_db),
        )
    };
    let mut orders = start_orders();
    let mut payments = start_payments();
    ready(&mut orders).await;
    ready(&mut payments).await;

    let mut accepted = 0;
    for round in 0..4 {
        let load = tokio::spawn({
            let url = orders.base_url.clone();
            async move { place_orders(&url, 60, 4).await }
        });
        // Kill mid-load: payment-service every round, order-service every other round.
        tokio::time::sleep(Duration::from_millis(150 + 100 * round)).await; // when to strike, not a wait
        payments.child.kill().expect("SIGKILL");
        payments.child.wait().expect("reaped");
        if round % 2 == 1 {
            orders.child.kill().expect("SIGKILL");
            orders.child.wait().expect("reaped");
        }
        accepted += load.await.expect("load ran").accepted.len();
        if round % 2 == 1 {
            orders = start_orders();
            ready(&mut orders).await;
        }
        payments = start_payments();
        ready(&mut payments).await;
    }
    assert!(accepted > 0);

    let (order_pool, payment_pool) = (
        PgPool::connect(&order_db).await.expect("db"),
        PgPool::connect(&payment_db).await.expect("db"),
    );
    let outcome = assert_invariants(&order_pool, &payment_pool, QUIET).await;
    assert!(
        outcome.paid + outcome.payment_failed >= accepted,
        "{outcome:?} for {accepted} accepted"
    );

    // SIGTERM: both finish what they hold and exit 0 within SHUTDOWN_TIMEOUT_MS.
    for mut process in [orders, payments] {
        let exited = terminate(&mut process, Duration::from_secs(7)).await;
        assert_eq!(exited.code(), Some(0), "graceful shutdown exits 0");
    }
    assert_eq!(
        assert_invariants(&order_pool, &payment_pool, QUIET).await,
        outcome
    );
}
