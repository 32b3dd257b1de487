//! The payment deadline across both services (SPEC §3.4, §4.8): payment-service is away
//! across an order's deadline; the order expires; once payment-service is back, the
//! order is never charged for good, whichever schema version order-service writes.
//! Written as version 2, `OrderCreated` carries `pay_by` and nothing is charged after it;
//! written as version 1 it cannot, so the late charge is refunded on the cancellation
//! the expiry sent.

use std::time::Duration;

use e2e::{assert_invariants, final_order, order_of, post};
use serde_json::json;
use testkit::{Spawned, TestContext};

/// The payments of `customer`, as (status, amount).
async fn payments_of(payments: &Spawned, customer: &str) -> Vec<(String, i64)> {
    sqlx::query_as("SELECT status, amount_cents FROM payments WHERE customer_id = $1")
        .bind(customer)
        .fetch_all(&payments.pool)
        .await
        .expect("payments")
}

async fn an_order_expired_while_payment_service_was_away_is_never_charged(writes: &str) {
    let ctx = TestContext::new();
    let orders = ctx
        .spawn(
            "order-service",
            &[
                "--payment-deadline-ms",
                "1500",
                "--write-schema-version",
                writes,
            ],
            order_service::start,
        )
        .await;
    let (status, placed) = post(&orders, "/orders", &order_of("lee", 700)).await;
    assert_eq!(status, 201);
    let expired = final_order(&orders, placed["id"].as_str().expect("id")).await;
    assert_eq!(
        (&expired["status"], &expired["failure_reason"]),
        (&json!("PAYMENT_FAILED"), &json!("payment_expired"))
    );

    // payment-service comes back: it reads the OrderCreated, then the cancellation.
    let payments = ctx
        .spawn("payment-service", &[], payment_service::start)
        .await;
    assert_invariants(&orders.pool, &payments.pool, Duration::from_secs(30)).await;
    let (_, account) = payments.get_json("/accounts/lee").await;
    assert_eq!(account["balance_cents"], 100_000, "whole");
    let made = payments_of(&payments, "lee").await;
    match writes {
        "2" => assert!(made.is_empty(), "nothing charged after pay_by: {made:?}"),
        _ => assert_eq!(
            made,
            [("REFUNDED".to_owned(), 700)],
            "version 1 has no deadline: charged late, then refunded"
        ),
    }
    let (_, settled) = orders
        .get_json(&format!("/orders/{}", placed["id"].as_str().expect("id")))
        .await;
    assert_eq!(settled["status"], "PAYMENT_FAILED", "it stays expired");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_written_as_version_2_is_not_charged_after_its_deadline() {
    an_order_expired_while_payment_service_was_away_is_never_charged("2").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_written_as_version_1_charged_after_its_deadline_is_refunded() {
    an_order_expired_while_payment_service_was_away_is_never_charged("1").await;
}
