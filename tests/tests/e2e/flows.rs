//! Business flows across both services (SPEC §5): a decline and a deposit, a refund after
//! cancellation, and many orders cancelled right after creation while several consumers
//! of each group race, ending consistent (SPEC §4.5, §4.8).

use std::time::Duration;

use e2e::{Outcome, assert_invariants, final_order, order_body, order_of, post};
use futures::future::join_all;
use serde_json::json;
use testkit::{ADMIN_TOKEN, TestContext, eventually};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declined_customer_deposits_and_then_orders_successfully() {
    let ctx = TestContext::new();
    let orders = ctx.spawn("order-service", &[], order_service::start).await;
    let payments = ctx
        .spawn(
            "payment-service",
            &[
                "--initial-credit-cents",
                "1000",
                "--admin-token",
                ADMIN_TOKEN,
            ],
            payment_service::start,
        )
        .await;

    let (status, declined) = post(&orders, "/orders", &order_of("kim", 5000)).await;
    assert_eq!(status, 201);
    let declined = final_order(&orders, declined["id"].as_str().expect("id")).await;
    assert_eq!(
        (&declined["status"], &declined["failure_reason"]),
        (&json!("PAYMENT_FAILED"), &json!("insufficient_funds"))
    );
    let (_, account) = payments.get_json("/accounts/kim").await;
    assert_eq!(account["balance_cents"], 1000, "a decline charges nothing");

    let (status, account) = post(
        &payments,
        "/accounts/kim/deposits",
        &json!({"amount_cents": 10_000}),
    )
    .await;
    assert_eq!((status, &account["balance_cents"]), (200, &json!(11_000)));

    let (_, paid) = post(&orders, "/orders", &order_of("kim", 5000)).await;
    let paid = final_order(&orders, paid["id"].as_str().expect("id")).await;
    assert_eq!(paid["status"], "PAID");
    let (_, account) = payments.get_json("/accounts/kim").await;
    assert_eq!(
        (&account["balance_cents"], &account["currency"]),
        (&json!(6000), &json!("EUR"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_paid_order_refunds_it() {
    let ctx = TestContext::new();
    let orders = ctx.spawn("order-service", &[], order_service::start).await;
    let payments = ctx
        .spawn("payment-service", &[], payment_service::start)
        .await;
    let (_, order) = post(&orders, "/orders", &order_of("lee", 4200)).await;
    let id = order["id"].as_str().expect("id").to_owned();
    assert_eq!(final_order(&orders, &id).await["status"], "PAID");
    let (_, account) = payments.get_json("/accounts/lee").await;
    assert_eq!(account["balance_cents"], 100_000 - 4200);

    let (status, cancelled) = post(&orders, &format!("/orders/{id}/cancel"), &json!({})).await;
    assert_eq!((status, &cancelled["status"]), (200, &json!("CANCELLED")));
    let path = format!("/orders/{id}");
    let refunded = eventually(
        "the refund to reach the order",
        Duration::from_secs(10),
        || async {
            let (_, order) = orders.get_json(&path).await;
            if order["refunded_at"].is_string() {
                Ok(order)
            } else {
                Err(order.to_string())
            }
        },
    )
    .await;
    assert_eq!(refunded["status"], "CANCELLED");
    let (_, account) = payments.get_json("/accounts/lee").await;
    assert_eq!(account["balance_cents"], 100_000, "the balance is restored");
    let (_, charges) = payments.get_json(&format!("/payments?order_id={id}")).await;
    assert_eq!(charges[0]["status"], "REFUNDED");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_cancelled_right_after_creation_under_load_end_consistent() {
    let ctx = TestContext::new();
    let args = ["--claim-min-idle-ms", "2000"];
    let orders = ctx
        .spawn("order-service", &args, order_service::start)
        .await;
    let payments = ctx
        .spawn("payment-service", &args, payment_service::start)
        .await;
    // A second consumer in each group, on the same databases.
    let _orders_2 = ctx
        .spawn_on(
            "order-service",
            &orders.database_url,
            &args,
            order_service::start,
        )
        .await;
    let _payments_2 = ctx
        .spawn_on(
            "payment-service",
            &payments.database_url,
            &args,
            payment_service::start,
        )
        .await;

    let cancels = (0..120).map(|n| {
        let orders = &orders;
        async move {
            let (status, order) = post(orders, "/orders", &order_body(n)).await;
            assert_eq!(status, 201);
            if n % 2 == 0 {
                let id = order["id"].as_str().expect("id");
                let (status, _) = post(orders, &format!("/orders/{id}/cancel"), &json!({})).await;
                assert!(status == 200 || status == 409, "cancel answered {status}");
            }
        }
    });
    join_all(cancels).await;

    let outcome = assert_invariants(&orders.pool, &payments.pool, Duration::from_secs(60)).await;
    assert_eq!(
        outcome.paid + outcome.payment_failed + outcome.cancelled,
        120
    );
    assert!(
        outcome.cancelled >= 55,
        "about half were cancelled: {outcome:?}"
    );
    assert_ne!(
        outcome,
        Outcome {
            paid: 0,
            payment_failed: 0,
            cancelled: 120
        }
    );
}
