//! Both services in one process, against real Postgres (one database each) and real
//! Redis (one namespace): many orders from several customers, placed concurrently over
//! HTTP, all reach `PAID`, each charged exactly once, each balance debited by exactly the
//! sum of its customer's orders, as both HTTP APIs show.

use std::collections::HashMap;
use std::time::Duration;

use e2e::{CUSTOMERS, INITIAL_CREDIT, Outcome, assert_invariants, place_orders};
use testkit::{TestContext, eventually};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_orders_from_several_customers_are_all_paid_exactly_once() {
    let ctx = TestContext::new();
    let orders = ctx.spawn("order-service", &[], order_service::start).await;
    let payments = ctx
        .spawn("payment-service", &[], payment_service::start)
        .await;

    let placed = place_orders(&orders.url(""), 100, 8).await;
    assert_eq!((placed.accepted.len(), placed.failed), (100, 0));

    let outcome = assert_invariants(&orders.pool, &payments.pool, Duration::from_secs(30)).await;
    assert_eq!(
        outcome,
        Outcome {
            paid: 100,
            payment_failed: 0,
            cancelled: 0
        }
    );

    let mut spent: HashMap<String, i64> = HashMap::new();
    for order in &placed.accepted {
        let id = order["id"].as_str().expect("id");
        let (_, current) = orders.get_json(&format!("/orders/{id}")).await;
        assert_eq!(current["status"], "PAID");
        let (_, charges) = payments.get_json(&format!("/payments?order_id={id}")).await;
        let charges = charges.as_array().cloned().expect("a list");
        assert_eq!(charges.len(), 1, "exactly one payment for {id}");
        assert_eq!(
            (&charges[0]["amount_cents"], &charges[0]["id"]),
            (&order["total_cents"], &current["payment_id"])
        );
        *spent
            .entry(order["customer_id"].as_str().expect("customer").to_owned())
            .or_default() += order["total_cents"].as_i64().expect("total");
    }
    for customer in CUSTOMERS {
        let path = format!("/accounts/{customer}");
        let expected = INITIAL_CREDIT - spent[customer];
        eventually(
            &format!("{customer}'s balance"),
            Duration::from_secs(5),
            || async {
                let (_, account) = payments.get_json(&path).await;
                if account["balance_cents"].as_i64() == Some(expected) {
                    Ok(())
                } else {
                    Err(account.to_string())
                }
            },
        )
        .await;
    }

    orders.stop().await.expect("order-service stops cleanly");
    payments
        .stop()
        .await
        .expect("payment-service stops cleanly");
}
