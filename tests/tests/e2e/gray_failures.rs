//! Gray failures (SPEC §4.9): a replica that stops without dying must not stall its group.
//!
//! Each test runs two replicas of one service as real processes, freezes one with
//! `SIGSTOP` at a chosen instant (inside an open transaction, found in
//! `pg_stat_activity`; or while it holds the reading turn), and shows that orders placed
//! after the freeze still reach a final state, in about `CLAIM_MIN_IDLE_MS` plus the
//! bound the service sets on its own transactions, with nothing dead-lettered, and that
//! the frozen one does no harm once it resumes.

use std::time::Duration;

use e2e::{Frozen, Process, assert_invariants, ready, start_process};
use events::streams::{ORDER_EVENTS, PAYMENT_EVENTS, PAYMENT_SERVICE_GROUP};
use serde_json::{Value, json};
use service_runtime::StreamKeys;
use sqlx::PgPool;
use testkit::{TestContext, eventually};

/// `DB_IDLE_IN_TRANSACTION_TIMEOUT_MS` of these tests: how long a frozen replica's open
/// transaction (and its locks) lasts before Postgres ends its session.
const IDLE_IN_TRANSACTION_MS: u64 = 6_000;
/// `CLAIM_MIN_IDLE_MS` of these tests.
const CLAIM_MIN_IDLE_MS: u64 = 1_000;
/// What "a few seconds" beyond those two is allowed to be on a loaded 2-core box.
const SLACK: Duration = Duration::from_secs(8);

/// One service's two replicas (`a`, the one frozen, and `b`) and the other service, all
/// real processes on the test's databases and namespace.
struct Replicated {
    ctx: TestContext,
    orders_db: String,
    payments_db: String,
    orders: Vec<Process>,
    payments: Vec<Process>,
}

#[derive(Clone, Copy, PartialEq)]
enum Service {
    Orders,
    Payments,
}

impl Replicated {
    async fn start(replicated: Service) -> Self {
        let ctx = TestContext::new();
        let orders_db = ctx.database().await;
        let payments_db = ctx.database().await;
        let mut system = Self {
            ctx,
            orders_db,
            payments_db,
            orders: Vec::new(),
            payments: Vec::new(),
        };
        let replicas = |service| if service == replicated { 2 } else { 1 };
        for name in ["a", "b"].into_iter().take(replicas(Service::Orders)) {
            let process = system.process(Service::Orders, name);
            system.orders.push(process);
        }
        for name in ["a", "b"].into_iter().take(replicas(Service::Payments)) {
            let process = system.process(Service::Payments, name);
            system.payments.push(process);
        }
        for process in system.orders.iter_mut().chain(&mut system.payments) {
            ready(process).await;
        }
        system
    }

    fn process(&self, service: Service, consumer: &str) -> Process {
        let (binary, db) = match service {
            Service::Orders => (env!("CARGO_BIN_EXE_chaos-order-service"), &self.orders_db),
            Service::Payments => (
                env!("CARGO_BIN_EXE_chaos-payment-service"),
                &self.payments_db,
            ),
        };
        start_process(
            binary,
            &[
                ("DATABASE_URL", db.clone()),
                ("REDIS_URL", self.ctx.redis_url().to_owned()),
                ("STREAM_NAMESPACE", self.ctx.namespace().to_owned()),
                ("CONSUMER_NAME", consumer.to_owned()),
                ("DATABASE_MAX_CONNECTIONS", "4".to_owned()),
                ("READ_BLOCK_MS", "200".to_owned()),
                ("CLAIM_MIN_IDLE_MS", CLAIM_MIN_IDLE_MS.to_string()),
                ("PENDING_REPUBLISH_AFTER_MS", "3000".to_owned()),
                (
                    "DB_IDLE_IN_TRANSACTION_TIMEOUT_MS",
                    IDLE_IN_TRANSACTION_MS.to_string(),
                ),
                ("SHUTDOWN_TIMEOUT_MS", "5000".to_owned()),
            ],
        )
    }

    async fn pools(&self) -> (PgPool, PgPool) {
        (
            PgPool::connect(&self.orders_db).await.expect("db"),
            PgPool::connect(&self.payments_db).await.expect("db"),
        )
    }

    /// Places `n` orders, one per customer `{prefix}-{i}`, through the last order-service
    /// replica (never the frozen one); returns their ids.
    async fn place(&self, prefix: &str, n: usize) -> Vec<String> {
        let http = reqwest::Client::new();
        let mut ids = Vec::with_capacity(n);
        let replica = self.orders.last().expect("an order-service");
        for i in 0..n {
            let body = json!({"customer_id": format!("{prefix}-{i}"), "currency": "EUR",
                "items": [{"sku": "s", "quantity": 1, "unit_price_cents": 100}]});
            let order: Value = http
                .post(format!("{}/orders", replica.base_url))
                .json(&body)
                .send()
                .await
                .expect("order-service answers")
                .json()
                .await
                .expect("an order");
            ids.push(order["id"].as_str().expect("an id").to_owned());
        }
        ids
    }

    async fn dead_letters(&self) -> usize {
        let mut total = 0;
        for stream in [ORDER_EVENTS, PAYMENT_EVENTS] {
            total += self.ctx.dead_letters(stream).await.len();
        }
        total
    }
}

/// Waits until every order of `ids` is final in the order database.
async fn all_final(orders: &PgPool, ids: &[String], within: Duration) {
    eventually("the new orders to reach a final state", within, || async {
        let pending: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM orders WHERE id::text = ANY($1) AND status = 'PENDING'",
        )
        .bind(ids)
        .fetch_one(orders)
        .await
        .map_err(|e| e.to_string())?;
        if pending == 0 {
            Ok(())
        } else {
            Err(format!("{pending} of {} still PENDING", ids.len()))
        }
    })
    .await;
}

/// Waits until a session of `db` waits for a lock.
async fn lock_wait(db: &PgPool) {
    eventually(
        "a session to wait for a lock",
        Duration::from_secs(20),
        || async {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity
              WHERE datname = current_database() AND wait_event_type = 'Lock'",
            )
            .fetch_one(db)
            .await
            .map_err(|e| e.to_string())?;
            if waiting > 0 {
                Ok(())
            } else {
                Err("no lock wait".into())
            }
        },
    )
    .await;
}

/// Keeps placing orders in the background (customers `load-*`), so that the replica to be
/// frozen is busy; stops when dropped.
fn background_load(system: &Replicated) -> tokio::task::JoinHandle<()> {
    let urls: Vec<String> = system.orders.iter().map(|p| p.base_url.clone()).collect();
    tokio::spawn(async move {
        let http = reqwest::Client::new();
        for i in 0.. {
            let body = json!({"customer_id": format!("load-{}", i % 8), "currency": "EUR",
                "items": [{"sku": "s", "quantity": 1, "unit_price_cents": 1}]});
            let _ = http
                .post(format!("{}/orders", urls[i % urls.len()]))
                .json(&body)
                .send()
                .await;
        }
    })
}

/// A statement of the consumer's batch transaction (after it wrote, so it holds locks),
/// per service.
fn batch_statement(service: Service) -> &'static str {
    match service {
        Service::Payments => "(inbox|order_payments|accounts)",
        // Not the relay's claim (`FOR UPDATE SKIP LOCKED` of `outbox_pending`) nor the
        // expirer's (of `order_deadlines` and `orders`): nobody waits on their locks, they
        // are skipped. The consumer's: its inbox insert, `lock_orders`, `update_orders`.
        Service::Orders => "(INSERT INTO inbox|WHERE o.id = ANY|SET status = t.status)",
    }
}

async fn a_replica_frozen_inside_its_batch_transaction_does_not_stall(service: Service) {
    let system = Replicated::start(service).await;
    let (orders_db, payments_db) = system.pools().await;
    let (frozen_db, replicas) = match service {
        Service::Orders => (&orders_db, &system.orders),
        Service::Payments => (&payments_db, &system.payments),
    };
    let load = background_load(&system);
    let frozen =
        Frozen::inside_transaction(&replicas[0], frozen_db, batch_statement(service)).await;
    load.abort();
    // The other replica reclaims the frozen one's entries and meets its locks.
    lock_wait(frozen_db).await;

    let late = system.place("late", 30).await;
    let within = Duration::from_millis(CLAIM_MIN_IDLE_MS + IDLE_IN_TRANSACTION_MS) + SLACK;
    all_final(&orders_db, &late, within).await;

    // Resumed, the frozen replica finds its session ended and its entries reclaimed:
    // no second effect, nothing dead-lettered.
    drop(frozen);
    assert_invariants(&orders_db, &payments_db, Duration::from_secs(60)).await;
    assert_eq!(system.dead_letters().await, 0, "nothing dead-lettered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payment_replica_frozen_inside_its_batch_transaction_does_not_stall_the_group() {
    a_replica_frozen_inside_its_batch_transaction_does_not_stall(Service::Payments).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_replica_frozen_inside_its_batch_transaction_does_not_stall_the_group() {
    a_replica_frozen_inside_its_batch_transaction_does_not_stall(Service::Orders).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_frozen_holding_the_reading_turn_does_not_stall_the_group() {
    let system = Replicated::start(Service::Payments).await;
    let (orders_db, payments_db) = system.pools().await;
    let turn =
        StreamKeys::new(system.ctx.namespace()).read_turn(ORDER_EVENTS, PAYMENT_SERVICE_GROUP);
    let redis = system.ctx.redis().await;
    let holder = || async {
        redis::cmd("GET")
            .arg(&turn)
            .query_async::<Option<String>>(&mut redis.clone())
            .await
            .map_err(|e| e.to_string())
    };
    // Frozen at a moment replica a holds the turn, checked still held once it is stopped.
    let frozen = eventually(
        "to freeze replica a holding the turn",
        Duration::from_secs(30),
        || async {
            if holder().await?.as_deref() != Some("a") {
                return Err("a does not hold the turn".to_owned());
            }
            let frozen = Frozen::now(&system.payments[0]);
            match holder().await?.as_deref() {
                Some("a") => Ok(frozen),
                other => Err(format!("it passed the turn before the stop: {other:?}")),
            }
        },
    )
    .await;
    let late = system.place("late", 30).await;
    all_final(
        &orders_db,
        &late,
        Duration::from_millis(CLAIM_MIN_IDLE_MS) + SLACK,
    )
    .await;
    drop(frozen);
    assert_invariants(&orders_db, &payments_db, Duration::from_secs(60)).await;
    assert_eq!(system.dead_letters().await, 0, "nothing dead-lettered");
}

/// SPEC §4.9: re-asking is bounded whatever the outage. payment-service is down for 20 s
/// while orders keep coming (10/s) and order-service would ask again after 2 s: nothing
/// is asked again while its original waits unread in the stream, so `order-events` holds
/// at most 1.5 entries per order, during the outage and after the backlog drained.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_payment_outage_adds_at_most_half_an_entry_per_order_to_the_stream() {
    let ctx = TestContext::new();
    let orders = ctx
        .spawn(
            "order-service",
            &["--pending-republish-after-ms", "2000"],
            order_service::start,
        )
        .await;
    let payments = ctx
        .spawn("payment-service", &[], payment_service::start)
        .await;
    let payments_db = payments.database_url.clone();
    payments.stop().await.expect("stopped");

    let placed = steady_load(&orders.url(""), 10, Duration::from_secs(20)).await;
    let bound = |n: usize| n + n / 2;
    let during = ctx.entries(ORDER_EVENTS).await.len();
    eprintln!("order-events: {during} entries for {placed} orders during the outage");
    assert!(
        during <= bound(placed),
        "{during} entries on order-events for {placed} orders during the outage"
    );

    let payments = ctx
        .spawn_on("payment-service", &payments_db, &[], payment_service::start)
        .await;
    let outcome = assert_invariants(&orders.pool, &payments.pool, Duration::from_secs(60)).await;
    assert_eq!(outcome.paid + outcome.payment_failed, placed);
    let after = ctx.entries(ORDER_EVENTS).await.len();
    eprintln!("order-events: {after} entries for {placed} orders once drained");
    assert!(
        after <= bound(placed),
        "{after} entries on order-events for {placed} orders once drained"
    );
}

/// Places `per_second` orders a second for `length` (one customer each, so all are paid);
/// returns how many were accepted.
async fn steady_load(base_url: &str, per_second: u64, length: Duration) -> usize {
    let http = reqwest::Client::new();
    let mut pace = tokio::time::interval(Duration::from_millis(1000 / per_second)); // the load's rate
    let end = tokio::time::Instant::now() + length;
    let mut accepted = 0;
    for i in 0.. {
        pace.tick().await;
        if tokio::time::Instant::now() >= end {
            break;
        }
        let body = json!({"customer_id": format!("steady-{i}"), "currency": "EUR",
            "items": [{"sku": "s", "quantity": 1, "unit_price_cents": 100}]});
        let response = http
            .post(format!("{base_url}/orders"))
            .json(&body)
            .send()
            .await;
        if response.is_ok_and(|r| r.status() == 201) {
            accepted += 1;
        }
    }
    accepted
}

/// SPEC §4.9: logs stay readable under a sustained fault. Redis is away for twice the
/// summary interval while orders keep coming: each cause (the place in the code that
/// logs) prints its first warning, then one line per interval saying how many more came.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_redis_outage_logs_a_line_per_cause_per_interval() {
    const INTERVAL: Duration = Duration::from_secs(8);
    const OUTAGE: Duration = Duration::from_secs(20);
    let mut redis = testkit::PrivateRedis::start().await;
    let ctx = TestContext::with_redis(&redis.url());
    let (orders_db, payments_db) = (ctx.database().await, ctx.database().await);
    let dir = std::env::temp_dir().join(format!("logs-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("a log directory");
    let start = |binary: &str, db: &str, name: &str| {
        let log = std::fs::File::create(dir.join(name)).expect("a log file");
        let env = [
            ("DATABASE_URL", db.to_owned()),
            ("REDIS_URL", ctx.redis_url().to_owned()),
            ("STREAM_NAMESPACE", ctx.namespace().to_owned()),
            ("READ_BLOCK_MS", "200".to_owned()),
            ("PENDING_REPUBLISH_AFTER_MS", "3000".to_owned()),
            ("LOG_FORMAT", "json".to_owned()),
            ("LOG_SUMMARY_INTERVAL_MS", INTERVAL.as_millis().to_string()),
        ];
        e2e::start_logging_process(binary, &env, &log)
    };
    let mut orders = start(
        env!("CARGO_BIN_EXE_chaos-order-service"),
        &orders_db,
        "orders",
    );
    let mut payments = start(
        env!("CARGO_BIN_EXE_chaos-payment-service"),
        &payments_db,
        "payments",
    );
    ready(&mut orders).await;
    ready(&mut payments).await;

    redis.kill();
    // Orders keep coming through the outage, 2 a second.
    let placed = steady_load(&orders.base_url, 2, OUTAGE).await;
    redis.restart().await;
    let (orders_pool, payments_pool) = (
        PgPool::connect(&orders_db).await.expect("db"),
        PgPool::connect(&payments_db).await.expect("db"),
    );
    let outcome = assert_invariants(&orders_pool, &payments_pool, Duration::from_secs(30)).await;
    assert_eq!(outcome.paid + outcome.payment_failed, placed);
    drop((orders, payments));

    for name in ["orders", "payments"] {
        let text = std::fs::read_to_string(dir.join(name)).expect("the log");
        let mut per_cause = std::collections::BTreeMap::<String, usize>::new();
        let mut held_back = 0;
        for line in text.lines() {
            let Ok(line) = serde_json::from_str::<Value>(line) else {
                continue;
            };
            if !matches!(line["level"].as_str(), Some("WARN" | "ERROR")) {
                continue;
            }
            if line["target"] == "log_summary" {
                held_back += line["held_back"].as_u64().expect("a count");
            } else {
                let cause = format!(
                    "{} {}:{}",
                    line["target"], line["filename"], line["line_number"]
                );
                *per_cause.entry(cause).or_default() += 1;
            }
        }
        let most = (OUTAGE.as_secs() / INTERVAL.as_secs()) as usize + 1;
        assert!(
            per_cause.values().all(|&n| n <= most),
            "{name}: at most {most} lines of one cause in {OUTAGE:?}: {per_cause:#?}"
        );
        assert!(
            held_back > 0,
            "{name}: repeats were summarised: {per_cause:#?}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
