//! Placing orders in groups: orders placed at the same moment share one statement, a
//! second group is written while the first waits, and an order Postgres refuses fails
//! alone.

use std::time::Duration;

use events::{EventWriter, OrderItem, SchemaVersion};
use order_service::domain::NewOrder;
use order_service::placing::{PlaceError, Placed, Placing, Terms};
use service_runtime::outbox::RelayQueue;
use sqlx::{Connection, Executor, PgConnection};
use testkit::{TestContext, eventually};
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::support::{eur, spawn};

fn terms() -> Terms {
    Terms {
        payment_deadline: Duration::from_secs(900),
        writer: EventWriter::unsigned(SchemaVersion::NEWEST),
    }
}

/// A writer on a pool of its own: two blocked statements hold two connections, and the
/// test's pool stays free to watch them.
async fn start_placing(database_url: &str) -> Placing {
    let pool = sqlx::PgPool::connect(database_url).await.expect("connects");
    Placing::start(pool, RelayQueue::default(), terms())
}

fn order(customer: &str, total_cents: i64) -> NewOrder {
    NewOrder {
        customer_id: customer.to_owned(),
        currency: eur(),
        items: vec![OrderItem {
            sku: "book".into(),
            quantity: 1,
            unit_price_cents: total_cents,
        }],
        total_cents,
    }
}

/// Holds a lock on `orders` that blocks every insert until the returned connection
/// commits or is dropped.
async fn block_inserts(database_url: &str) -> PgConnection {
    let mut blocker = PgConnection::connect(database_url).await.expect("connects");
    blocker
        .execute("BEGIN; LOCK TABLE orders IN SHARE MODE")
        .await
        .expect("locks");
    blocker
}

fn place_in_background(
    placing: &Placing,
    order: NewOrder,
) -> JoinHandle<Result<Placed, PlaceError>> {
    let placing = placing.clone();
    tokio::spawn(async move { placing.place(order, None).await })
}

/// Waits until `count` of the writer's inserts wait for the lock (the service's own jobs
/// may wait for it too).
async fn until_blocked(pool: &sqlx::PgPool, count: i64) {
    eventually(
        &format!("{count} inserts to wait for the lock"),
        Duration::from_secs(5),
        || async {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE datname = current_database() AND wait_event_type = 'Lock'
                   AND query LIKE '%INSERT INTO orders%'",
            )
            .fetch_one(pool)
            .await
            .map_err(|e| e.to_string())?;
            (waiting == count)
                .then_some(())
                .ok_or(format!("{waiting} waiting"))
        },
    )
    .await;
}

/// Waits until `count` orders wait in the writer's queue.
async fn until_queued(placing: &Placing, count: usize) {
    eventually(
        &format!("{count} orders to wait for the writer"),
        Duration::from_secs(5),
        || async {
            let queued = placing.queued();
            (queued == count)
                .then_some(())
                .ok_or(format!("{queued} queued"))
        },
    )
    .await;
}

/// The writer, kept busy by two blocked inserts (one order each), while `orders` are
/// handed to it: they wait, and form the next group. Returns the handles of the blocked
/// orders and of those.
async fn queue_behind_blocked_inserts(
    placing: &Placing,
    pool: &sqlx::PgPool,
    orders: Vec<NewOrder>,
) -> (
    Vec<JoinHandle<Result<Placed, PlaceError>>>,
    Vec<JoinHandle<Result<Placed, PlaceError>>>,
) {
    let first = place_in_background(placing, order("first", 100));
    until_blocked(pool, 1).await;
    let second = place_in_background(placing, order("second", 100));
    until_blocked(pool, 2).await;
    let count = orders.len();
    let rest = orders
        .into_iter()
        .map(|o| place_in_background(placing, o))
        .collect();
    until_queued(placing, count).await;
    (vec![first, second], rest)
}

async fn all_placed(handles: Vec<JoinHandle<Result<Placed, PlaceError>>>) -> Vec<Placed> {
    let mut placed = Vec::new();
    for handle in handles {
        placed.push(handle.await.expect("joins").expect("placed"));
    }
    placed
}

#[tokio::test]
async fn a_second_group_is_written_while_the_first_waits_and_a_third_waits_for_them() {
    let ctx = TestContext::new();
    let app = spawn(&ctx).await;
    let placing = start_placing(&app.database_url).await;
    let blocker = block_inserts(&app.database_url).await;
    let first = place_in_background(&placing, order("first", 100));
    until_blocked(&app.pool, 1).await;

    // As big as the group being written (one order): its statement starts at once.
    let second = place_in_background(&placing, order("second", 100));
    until_blocked(&app.pool, 2).await;
    // Two statements are running: the next order waits for one of them.
    let third = place_in_background(&placing, order("third", 100));
    until_queued(&placing, 1).await;
    drop(blocker);

    let placed = all_placed(vec![first, second, third]).await;
    let customers: Vec<&str> = placed
        .iter()
        .map(|p| p.order.customer_id.as_str())
        .collect();
    assert_eq!(customers, ["first", "second", "third"]);
}

#[tokio::test]
async fn orders_placed_at_the_same_moment_share_one_statement() {
    let ctx = TestContext::new();
    let app = spawn(&ctx).await;
    let placing = start_placing(&app.database_url).await;
    let blocker = block_inserts(&app.database_url).await;
    let customers: Vec<String> = (0..10).map(|n| format!("customer-{n}")).collect();
    let (blocked, rest) = queue_behind_blocked_inserts(
        &placing,
        &app.pool,
        customers.iter().map(|c| order(c, 100)).collect(),
    )
    .await;
    drop(blocker);

    all_placed(blocked).await;
    let mut ids = Vec::new();
    for (placed, customer) in all_placed(rest).await.into_iter().zip(&customers) {
        assert_eq!(
            &placed.order.customer_id, customer,
            "each request gets its own order"
        );
        ids.push(placed.order.id);
    }
    let transactions: i64 =
        sqlx::query_scalar("SELECT count(DISTINCT xmin::text) FROM orders WHERE id = ANY($1)")
            .bind(&ids)
            .fetch_one(&app.pool)
            .await
            .expect("counts");
    assert_eq!(
        transactions, 1,
        "the ten waiting orders were written together"
    );
    let mut events: Vec<Uuid> = sqlx::query_scalar(
        "SELECT order_id FROM outbox WHERE event_type = 'OrderCreated' AND order_id = ANY($1)",
    )
    .bind(&ids)
    .fetch_all(&app.pool)
    .await
    .expect("reads the outbox");
    events.sort();
    ids.sort();
    assert_eq!(events, ids, "one OrderCreated per order");
}

#[tokio::test]
async fn an_order_postgres_refuses_fails_alone_and_the_rest_of_its_group_is_placed() {
    let ctx = TestContext::new();
    let app = spawn(&ctx).await;
    let placing = start_placing(&app.database_url).await;
    let blocker = block_inserts(&app.database_url).await;
    // A negative total passes no validation of the API; here it reaches Postgres, whose
    // CHECK refuses it and so the whole group's statement.
    let orders = vec![order("good-1", 100), order("bad", -1), order("good-2", 100)];
    let (blocked, rest) = queue_behind_blocked_inserts(&placing, &app.pool, orders).await;
    drop(blocker);

    all_placed(blocked).await;
    let outcomes: Vec<_> = futures::future::join_all(rest)
        .await
        .into_iter()
        .map(|joined| joined.expect("joins"))
        .collect();
    assert!(outcomes[0].is_ok() && outcomes[2].is_ok(), "{outcomes:?}");
    assert!(
        matches!(&outcomes[1], Err(PlaceError::Database(sqlx::Error::Database(e))) if e.code().as_deref() == Some("23514")),
        "the refused order gets its own error: {:?}",
        outcomes[1]
    );
    let stored: Vec<String> =
        sqlx::query_scalar("SELECT customer_id FROM orders ORDER BY customer_id")
            .fetch_all(&app.pool)
            .await
            .expect("reads orders");
    assert_eq!(stored, ["first", "good-1", "good-2", "second"]);
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
        .fetch_one(&app.pool)
        .await
        .expect("counts");
    assert_eq!(events, 4, "no event for the refused order");
}
