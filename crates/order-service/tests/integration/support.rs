//! Helpers shared by order-service's integration tests.

#![allow(dead_code)] // each test file uses its own subset

use std::time::Duration;

use events::streams::PAYMENT_EVENTS;
use events::{Currency, Envelope, Event, PaymentCompleted, Producer};
use serde_json::{Value, json};
use testkit::{ADMIN_TOKEN, Spawned, TestContext, eventually};
use uuid::Uuid;

pub async fn spawn(ctx: &TestContext) -> Spawned {
    ctx.spawn("order-service", &[], order_service::start).await
}

/// order-service with the admin API on, behind [`ADMIN_TOKEN`].
pub async fn spawn_with_admin(ctx: &TestContext) -> Spawned {
    ctx.spawn(
        "order-service",
        &["--admin-token", ADMIN_TOKEN],
        order_service::start,
    )
    .await
}

pub fn alice_order() -> Value {
    json!({"customer_id": "alice", "currency": "EUR",
           "items": [{"sku": "book", "quantity": 2, "unit_price_cents": 1250},
                     {"sku": "pen", "quantity": 3, "unit_price_cents": 100}]})
}

/// POSTs an order, expects 201, returns the order and its id.
pub async fn place(app: &Spawned, body: &Value) -> (Value, Uuid) {
    let response = app
        .http
        .post(app.url("/orders"))
        .json(body)
        .send()
        .await
        .expect("answers");
    assert_eq!(response.status(), 201);
    let order: Value = response.json().await.expect("JSON");
    let id = order["id"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("a UUID id");
    (order, id)
}

pub fn eur() -> Currency {
    Currency::parse("EUR").expect("valid")
}

/// A `PaymentCompleted` for `order_id`.
pub fn completed(order_id: Uuid, payment_id: Uuid, amount_cents: i64) -> Envelope {
    Envelope::new(
        Producer::PaymentService,
        Event::PaymentCompleted(PaymentCompleted {
            payment_id,
            order_id,
            customer_id: "alice".into(),
            amount_cents,
            currency: eur(),
        }),
    )
}

/// Publishes `event` on `payment-events` as payment-service would.
pub async fn publish(ctx: &TestContext, event: &Envelope) {
    ctx.xadd(PAYMENT_EVENTS, &event.to_fields()).await;
}

/// Waits until `GET /orders/{id}` satisfies `done`, and returns it.
pub async fn order_when(
    app: &Spawned,
    id: Uuid,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let path = format!("/orders/{id}");
    eventually(what, Duration::from_secs(5), || async {
        let (_, order) = app.get_json(&path).await;
        if done(&order) {
            Ok(order)
        } else {
            Err(order.to_string())
        }
    })
    .await
}

/// Counts rows of `table` in the service's database.
pub async fn count(app: &Spawned, table: &str) -> i64 {
    let sql = match table {
        "orders" => "SELECT count(*) FROM orders",
        "outbox" => "SELECT count(*) FROM outbox",
        "cancellations" => "SELECT count(*) FROM outbox WHERE event_type = 'OrderCancelled'",
        _ => unreachable!("known tables only"),
    };
    sqlx::query_scalar(sql)
        .fetch_one(&app.pool)
        .await
        .expect("count")
}

/// Lets the reconciler (asking again every 200 ms in these tests) run a few rounds: for a
/// test that then shows it stayed quiet.
pub async fn let_the_reconciler_run() {
    let mut rounds = tokio::time::interval(Duration::from_millis(200));
    for _ in 0..6 {
        rounds.tick().await; // the scenario: several rounds go by
    }
}
