//! An outage never spends deliveries (SPEC §4.3): while the database is not working (it
//! turned read-only in a failover, its connections were terminated) or a lock keeps it
//! from working for a while, nothing is dead-lettered, however many replicas wait, and
//! everything ends final afterwards. An event that can never commit is dead-lettered in
//! the end, and blocks nothing else meanwhile.
//!
//! Each database fault is set on the test's own databases only (`ALTER DATABASE`, then
//! its sessions terminated so new ones take the setting), never on the shared server.

use std::time::Duration;

use e2e::{QUIET, assert_invariants, place_orders};
use events::streams::{ORDER_EVENTS, PAYMENT_EVENTS};
use events::{EventWriter, SchemaVersion};
use order_service::orders;
use service_runtime::outbox::RelayQueue;
use sqlx::PgPool;
use testkit::{Spawned, TestContext, backends, eventually};

/// Deliveries are few and reclaiming is quick: an outage that spent deliveries would
/// dead-letter within a second or two.
/// Lock waits end after 50 ms (the service's own bound on its sessions), and contention
/// is retried in place for about 6.5 s (statement + idle in transaction + lock bounds).
const IMPATIENT: &[&str] = &[
    "--max-deliveries",
    "2",
    "--claim-min-idle-ms",
    "300",
    "--db-lock-timeout-ms",
    "50",
    "--db-statement-timeout-ms",
    "1000",
    "--db-idle-in-transaction-timeout-ms",
    "5500",
];
/// order-service asks again soon for what was not answered.
const REPUBLISH_SOON: &[&str] = &["--pending-republish-after-ms", "1500"];

async fn services(ctx: &TestContext, replicas: usize) -> (Spawned, Vec<Spawned>) {
    services_asking_again_after(ctx, replicas, REPUBLISH_SOON).await
}

async fn services_asking_again_after(
    ctx: &TestContext,
    replicas: usize,
    republish: &[&str],
) -> (Spawned, Vec<Spawned>) {
    let order_args = [IMPATIENT, republish].concat();
    let orders = ctx
        .spawn("order-service", &order_args, order_service::start)
        .await;
    let first = ctx
        .spawn("payment-service", IMPATIENT, payment_service::start)
        .await;
    let mut payments = vec![];
    for _ in 1..replicas {
        let url = first.database_url.clone();
        payments.push(
            ctx.spawn_on("payment-service", &url, IMPATIENT, payment_service::start)
                .await,
        );
    }
    payments.insert(0, first);
    (orders, payments)
}

fn db_name(app: &Spawned) -> String {
    let url = app.database_url.as_str();
    let path = url.rsplit('/').next().unwrap_or_default();
    path.split('?').next().unwrap_or_default().to_owned()
}

/// Sets `setting` (e.g. `default_transaction_read_only = on`) on the databases of `apps`,
/// or resets it (`None`), and terminates their sessions so that new ones take it.
async fn set_on(admin: &PgPool, apps: &[&Spawned], name: &str, value: Option<&str>) {
    for app in apps {
        let db = db_name(app);
        let statement = match value {
            Some(value) => format!(r#"ALTER DATABASE "{db}" SET {name} = '{value}'"#),
            None => format!(r#"ALTER DATABASE "{db}" RESET {name}"#),
        };
        sqlx::raw_sql(sqlx::AssertSqlSafe(statement))
            .execute(admin)
            .await
            .expect("ALTER DATABASE");
        sqlx::query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE datname = $1 AND pid <> pg_backend_pid()",
        )
        .bind(&db)
        .execute(admin)
        .await
        .expect("sessions terminated");
    }
}

/// Nothing on either dead-letter stream.
async fn no_dead_letters(ctx: &TestContext) {
    for logical in [ORDER_EVENTS, PAYMENT_EVENTS] {
        let dead = ctx.dead_letters(logical).await;
        assert!(dead.is_empty(), "{logical}: dead-lettered {dead:?}");
    }
}

/// Keeps both databases read-only for three seconds in the middle of a load.
async fn read_only_for_three_seconds(replicas: usize) {
    let ctx = TestContext::new();
    let (orders, payments) = services(&ctx, replicas).await;
    let admin = PgPool::connect(&backends().database_url)
        .await
        .expect("admin");
    let load = tokio::spawn({
        let url = orders.url("");
        async move { place_orders(&url, 150, 4).await }
    });
    eventually("the flow to get going", Duration::from_secs(20), || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM inbox")
            .fetch_one(&payments[0].pool)
            .await
            .map_err(|e| e.to_string())?;
        if n >= 20 {
            Ok(())
        } else {
            Err(format!("{n} applied"))
        }
    })
    .await;
    let databases = [&orders, &payments[0]];
    set_on(
        &admin,
        &databases,
        "default_transaction_read_only",
        Some("on"),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await; // the fault's length, not a wait
    set_on(&admin, &databases, "default_transaction_read_only", None).await;

    let placed = load.await.expect("load ran");
    let outcome = assert_invariants(&orders.pool, &payments[0].pool, QUIET).await;
    assert_eq!(outcome.paid + outcome.payment_failed, placed.accepted.len());
    no_dead_letters(&ctx).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_database_dead_letters_nothing() {
    read_only_for_three_seconds(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_database_dead_letters_nothing_with_three_replicas_waiting() {
    read_only_for_three_seconds(3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_held_for_seconds_dead_letters_nothing() {
    let ctx = TestContext::new();
    let (orders, payments) = services(&ctx, 3).await;

    // Someone holds the accounts table for three seconds: every charge times out on it.
    let mut blocker = payments[0].pool.begin().await.expect("a transaction");
    sqlx::query("LOCK TABLE accounts IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *blocker)
        .await
        .expect("locked");
    let placed = place_orders(&orders.url(""), 40, 4).await;
    tokio::time::sleep(Duration::from_secs(3)).await; // the fault's length, not a wait
    blocker.rollback().await.expect("released");

    let outcome = assert_invariants(&orders.pool, &payments[0].pool, QUIET).await;
    assert_eq!(outcome.paid + outcome.payment_failed, placed.accepted.len());
    no_dead_letters(&ctx).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_that_can_never_commit_is_dead_lettered_in_the_end_and_the_rest_flows() {
    let ctx = TestContext::new();
    // order-service asks again only when told to, below.
    let patient = ["--pending-republish-after-ms", "600000"];
    let (orders, payments) = services_asking_again_after(&ctx, 1, &patient).await;
    // zed's account is locked for as long as the test wants: each charge of zed's times
    // out on it, every time.
    sqlx::query("INSERT INTO accounts (customer_id, balance_cents) VALUES ('zed', 100000)")
        .execute(&payments[0].pool)
        .await
        .expect("account");
    let mut blocker = payments[0].pool.begin().await.expect("a transaction");
    sqlx::query("SELECT 1 FROM accounts WHERE customer_id = 'zed' FOR UPDATE")
        .execute(&mut *blocker)
        .await
        .expect("locked");

    let zed = serde_json::json!({"customer_id": "zed", "currency": "EUR",
        "items": [{"sku": "x", "quantity": 1, "unit_price_cents": 100}]});
    let response = orders
        .http
        .post(orders.url("/orders"))
        .json(&zed)
        .send()
        .await
        .expect("answers");
    assert_eq!(response.status(), 201);
    let placed = place_orders(&orders.url(""), 30, 4).await;
    eventually("every other order final", QUIET, || async {
        let open: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM orders WHERE status = 'PENDING' AND customer_id <> 'zed'",
        )
        .fetch_one(&orders.pool)
        .await
        .map_err(|e| e.to_string())?;
        if open == 0 {
            Ok(())
        } else {
            Err(format!("{open} pending"))
        }
    })
    .await;
    eventually("zed's order dead-lettered", QUIET, || async {
        match ctx.dead_letters(ORDER_EVENTS).await.len() {
            0 => Err("none yet".to_owned()),
            _ => Ok(()),
        }
    })
    .await;

    // Released; order-service asks again for what is still pending, and it ends.
    blocker.rollback().await.expect("released");
    // Asked from the test process: the service's relay finds the rows by its poll.
    let reconciler = orders::Reconciler::new(
        orders.pool.clone(),
        ctx.redis().await,
        RelayQueue::default(),
        ctx.stream(ORDER_EVENTS),
        (Duration::ZERO, Duration::ZERO),
        EventWriter::unsigned(SchemaVersion::NEWEST),
    );
    reconciler.run_once().await.expect("asks again");
    let outcome = assert_invariants(&orders.pool, &payments[0].pool, QUIET).await;
    assert_eq!(
        outcome.paid + outcome.payment_failed,
        placed.accepted.len() + 1
    );
}

/// Terminates every session of both databases every 40 ms while a load runs.
async fn connections_terminated_under_load(replicas: usize) {
    let ctx = TestContext::new();
    let (orders, payments) = services(&ctx, replicas).await;
    let admin = PgPool::connect(&backends().database_url)
        .await
        .expect("admin");
    let databases = [db_name(&orders), db_name(&payments[0])];
    let load = tokio::spawn({
        let url = orders.url("");
        async move { place_orders(&url, 150, 4).await }
    });
    let mut pace = tokio::time::interval(Duration::from_millis(40)); // the fault's pace
    while !load.is_finished() {
        pace.tick().await;
        sqlx::query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE datname = ANY($1) AND pid <> pg_backend_pid()",
        )
        .bind(&databases[..])
        .execute(&admin)
        .await
        .expect("terminate");
    }
    let placed = load.await.expect("load ran");
    let outcome = assert_invariants(&orders.pool, &payments[0].pool, QUIET).await;
    assert_eq!(outcome.paid + outcome.payment_failed, placed.accepted.len());
    no_dead_letters(&ctx).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminated_connections_dead_letter_nothing() {
    connections_terminated_under_load(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminated_connections_dead_letter_nothing_with_three_replicas() {
    connections_terminated_under_load(3).await;
}
