//! The payment handler under every interleaving of one order's events (SPEC §4.5): fed
//! directly, in transactions like the consumer's, in each order, in one batch and
//! concurrently. A cancelled order must end uncharged: never charged, or charged and
//! refunded. And a batch charges one account in stream order.

use events::{
    Currency, Envelope, Event, EventWriter, OrderCancelled, OrderCreated, OrderItem, Producer,
    SchemaVersion,
};
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
    payment_service::db::MIGRATOR
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
            pay_by: Some(time::OffsetDateTime::now_utc() + time::Duration::hours(1)),
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

/// Applies `batch` as the consumer does a batch of first-time events.
async fn apply_batch(pool: &PgPool, batch: &[&Envelope]) {
    let mut tx = pool.begin().await.expect("begins");
    OrderEvents {
        initial_credit_cents: CREDIT,
        writer: EventWriter::unsigned(SchemaVersion::NEWEST),
    }
    .handle(&mut tx, batch)
    .await
    .expect("applies");
    tx.commit().await.expect("commits");
}

async fn apply(pool: &PgPool, envelope: &Envelope) {
    apply_batch(pool, &[envelope]).await;
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
        published == ["PaymentCancelled", "PaymentFailed"]
            || published == ["PaymentCompleted", "PaymentRefunded"],
        "one answer to each question, in order: {published:?}"
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
    let reason: Option<String> = sqlx::query_scalar(
        "SELECT fields[array_position(fields, 'payload') + 1] FROM outbox
             WHERE event_type = 'PaymentFailed'",
    )
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

#[tokio::test]
async fn created_and_cancelled_in_one_batch_leave_no_charge_in_either_order() {
    let ctx = TestContext::new();
    let pool = database(&ctx).await;
    let (created, cancelled) = pair("together");
    apply_batch(&pool, &[&created, &cancelled]).await;
    assert_uncharged(&pool, created.order_id, "together").await;
    let refunded: String = sqlx::query_scalar("SELECT status FROM payments WHERE order_id = $1")
        .bind(created.order_id)
        .fetch_one(&pool)
        .await
        .expect("the payment is recorded");
    assert_eq!(refunded, "REFUNDED");

    let (created, cancelled) = pair("reversed");
    apply_batch(&pool, &[&cancelled, &created]).await;
    assert_uncharged(&pool, created.order_id, "reversed").await;
}

#[tokio::test]
async fn a_batch_charges_an_account_in_stream_order_until_it_runs_dry() {
    let ctx = TestContext::new();
    let pool = database(&ctx).await;
    // CREDIT pays for 142 orders of 700 (99,400), not 143.
    let orders: Vec<(Envelope, Envelope)> = (0..145).map(|_| pair("spender")).collect();
    let batch: Vec<&Envelope> = orders.iter().map(|(created, _)| created).collect();
    apply_batch(&pool, &batch).await;
    let outcomes: Vec<String> = sqlx::query_scalar("SELECT event_type FROM outbox ORDER BY id")
        .fetch_all(&pool)
        .await
        .expect("outbox");
    let paid = CREDIT as usize / 700;
    assert_eq!(outcomes.len(), orders.len(), "one outcome per order");
    assert!(
        outcomes[..paid].iter().all(|t| t == "PaymentCompleted"),
        "{outcomes:?}"
    );
    assert!(
        outcomes[paid..].iter().all(|t| t == "PaymentFailed"),
        "{outcomes:?}"
    );
    let balance: i64 =
        sqlx::query_scalar("SELECT balance_cents FROM accounts WHERE customer_id = 'spender'")
            .fetch_one(&pool)
            .await
            .expect("balance");
    assert_eq!(balance, CREDIT - 700 * paid as i64);
    let order_of_outcomes: Vec<uuid::Uuid> =
        sqlx::query_scalar("SELECT order_id FROM outbox ORDER BY id")
            .fetch_all(&pool)
            .await
            .expect("outbox");
    let order_of_events: Vec<uuid::Uuid> = orders.iter().map(|(c, _)| c.order_id).collect();
    assert_eq!(
        order_of_outcomes, order_of_events,
        "outcomes in stream order"
    );
}
