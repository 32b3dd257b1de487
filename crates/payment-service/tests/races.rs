//! The payment handler under every interleaving of one order's events (SPEC §4.5): fed
//! directly, in transactions like the consumer's, in each order and concurrently. A
//! cancelled order must end uncharged: never charged, or charged and refunded.

use events::{Currency, Envelope, Event, OrderCancelled, OrderCreated, OrderItem, Producer};
use payment_service::order_events::OrderEvents;
use service_runtime::EventHandler;
use sqlx::PgPool;
use testkit::TestContext;
use uuid::Uuid;

const CREDIT: i64 = 100_000;

async fn database(ctx: &TestContext) -> PgPool {
    let pool = PgPool::connect(&ctx.database().await)
        .await
        .expect("connects");
    payment_service::MIGRATOR
        .run(&pool)
        .await
        .expect("migrates");
    pool
}

fn pair(customer: &str) -> (Envelope, Envelope) {
    let order_id = Uuid::now_v7();
    let created = Envelope::new(
        Producer::OrderService,
        Event::OrderCreated(OrderCreated {
            order_id,
            customer_id: customer.into(),
            items: vec![OrderItem {
                sku: "x".into(),
                quantity: 1,
                unit_price_cents: 700,
            }],
            total_cents: 700,
            currency: Currency::parse("EUR").expect("valid"),
        }),
    );
    let cancelled = Envelope::new(
        Producer::OrderService,
        Event::OrderCancelled(OrderCancelled {
            order_id,
            customer_id: customer.into(),
            reason: "changed my mind".into(),
        }),
    );
    (created, cancelled)
}

async fn apply(pool: &PgPool, envelope: &Envelope) {
    let mut tx = pool.begin().await.expect("begins");
    OrderEvents {
        initial_credit_cents: CREDIT,
    }
    .handle(&mut tx, envelope)
    .await
    .expect("applies");
    tx.commit().await.expect("commits");
}

/// The order ends uncharged, and what was published says so consistently.
async fn assert_uncharged(pool: &PgPool, order_id: Uuid, customer: &str) {
    let standing: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM payments WHERE order_id = $1 AND status = 'COMPLETED'",
    )
    .bind(order_id)
    .fetch_one(pool)
    .await
    .expect("count");
    assert_eq!(standing, 0, "a cancelled order has no standing charge");
    let balance: i64 =
        sqlx::query_scalar("SELECT balance_cents FROM accounts WHERE customer_id = $1")
            .bind(customer)
            .fetch_optional(pool)
            .await
            .expect("balance")
            .unwrap_or(CREDIT);
    assert_eq!(balance, CREDIT, "{customer} is whole");
    let published: Vec<String> =
        sqlx::query_scalar("SELECT event_type FROM outbox WHERE order_id = $1 ORDER BY id")
            .bind(order_id)
            .fetch_all(pool)
            .await
            .expect("outbox");
    assert!(
        published == ["PaymentFailed"] || published == ["PaymentCompleted", "PaymentRefunded"],
        "outcomes {published:?}"
    );
}

#[tokio::test]
async fn cancelled_before_created_is_declined_without_a_charge() {
    let ctx = TestContext::new();
    let pool = database(&ctx).await;
    let (created, cancelled) = pair("first");
    apply(&pool, &cancelled).await;
    apply(&pool, &created).await;
    assert_uncharged(&pool, created.order_id, "first").await;
    let reason: Option<String> =
        sqlx::query_scalar("SELECT fields[array_position(fields, 'payload') + 1] FROM outbox")
            .fetch_optional(&pool)
            .await
            .expect("payload");
    assert!(reason.is_some_and(|p| p.contains("order_cancelled")));
}

#[tokio::test]
async fn cancelled_after_created_is_refunded() {
    let ctx = TestContext::new();
    let pool = database(&ctx).await;
    let (created, cancelled) = pair("second");
    apply(&pool, &created).await;
    apply(&pool, &cancelled).await;
    assert_uncharged(&pool, created.order_id, "second").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn created_and_cancelled_at_the_same_time_never_leave_a_charge() {
    let ctx = TestContext::new();
    let pool = database(&ctx).await;
    for round in 0..30 {
        let customer = format!("racer-{round}");
        let (created, cancelled) = pair(&customer);
        // Both transactions in flight at once; which wins is up to the scheduler.
        let (a, b) = (pool.clone(), pool.clone());
        let (c1, c2) = (created.clone(), cancelled.clone());
        let first = tokio::spawn(async move { apply(&a, &c1).await });
        let second = tokio::spawn(async move { apply(&b, &c2).await });
        first.await.expect("applied");
        second.await.expect("applied");
        assert_uncharged(&pool, created.order_id, &customer).await;
    }
}

#[tokio::test]
async fn a_second_cancellation_or_creation_changes_nothing() {
    let ctx = TestContext::new();
    let pool = database(&ctx).await;
    let (created, cancelled) = pair("third");
    apply(&pool, &created).await;
    apply(&pool, &cancelled).await;
    // The same facts again under new event ids (a misbehaving producer): no effect.
    apply(
        &pool,
        &Envelope::new(Producer::OrderService, cancelled.event.clone()),
    )
    .await;
    apply(
        &pool,
        &Envelope::new(Producer::OrderService, created.event.clone()),
    )
    .await;
    assert_uncharged(&pool, created.order_id, "third").await;
}
