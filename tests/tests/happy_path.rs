//! Both services in one process, against real Postgres (one database each) and real
//! Redis (one namespace): many orders from several customers, all placed concurrently
//! over HTTP, all reach `PAID`, each charged exactly once, each balance debited by
//! exactly the sum of its customer's orders.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{Value, json};
use testkit::{Spawned, TestContext, eventually};

const CUSTOMERS: [&str; 4] = ["ana", "ben", "cho", "dev"];
const ORDERS_PER_CUSTOMER: usize = 25;
const INITIAL_CREDIT: i64 = 100_000;

async fn start_both(ctx: &TestContext) -> (Spawned, Spawned) {
    let orders = ctx.spawn("order-service", &[], order_service::start).await;
    let payments = ctx
        .spawn("payment-service", &[], payment_service::start)
        .await;
    (orders, payments)
}

/// Order `n` of a customer: 1-3 lines, small prices, so every balance covers them all.
fn order_body(customer: &str, n: usize) -> Value {
    let items: Vec<Value> = (0..=(n % 3))
        .map(|line| json!({"sku": format!("sku-{line}"), "quantity": 1 + (n + line) % 4, "unit_price_cents": 100 + 7 * n + line}))
        .collect();
    json!({"customer_id": customer, "currency": "EUR", "items": items})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_orders_from_several_customers_are_all_paid_exactly_once() {
    let ctx = TestContext::new();
    let (orders, payments) = start_both(&ctx).await;

    let mut placing = tokio::task::JoinSet::new();
    for customer in CUSTOMERS {
        for n in 0..ORDERS_PER_CUSTOMER {
            let (http, url) = (orders.http.clone(), orders.url("/orders"));
            placing.spawn(async move {
                let response = http
                    .post(url)
                    .json(&order_body(customer, n))
                    .send()
                    .await
                    .expect("answers");
                assert_eq!(response.status(), 201);
                response.json::<Value>().await.expect("JSON")
            });
        }
    }
    let placed: Vec<Value> = placing.join_all().await;
    assert_eq!(placed.len(), CUSTOMERS.len() * ORDERS_PER_CUSTOMER);

    let mut spent: HashMap<String, i64> = HashMap::new();
    for order in &placed {
        let customer = order["customer_id"].as_str().expect("customer").to_owned();
        *spent.entry(customer).or_default() += order["total_cents"].as_i64().expect("total");
    }

    for order in &placed {
        let path = format!("/orders/{}", order["id"].as_str().expect("id"));
        let paid = eventually(
            &format!("{path} to be PAID"),
            Duration::from_secs(30),
            || async {
                let (_, current) = orders.get_json(&path).await;
                if current["status"] == "PAID" {
                    Ok(current)
                } else {
                    Err(current.to_string())
                }
            },
        )
        .await;
        let (status, charges) = payments
            .get_json(&format!(
                "/payments?order_id={}",
                order["id"].as_str().expect("id")
            ))
            .await;
        assert_eq!(status, 200);
        let charges = charges.as_array().expect("list");
        assert_eq!(charges.len(), 1, "exactly one payment for {path}");
        assert_eq!(charges[0]["amount_cents"], order["total_cents"]);
        assert_eq!(
            charges[0]["id"], paid["payment_id"],
            "the order shows its payment"
        );
    }

    for customer in CUSTOMERS {
        let (_, account) = payments.get_json(&format!("/accounts/{customer}")).await;
        assert_eq!(
            account["balance_cents"].as_i64(),
            Some(INITIAL_CREDIT - spent[customer]),
            "{customer} is debited by exactly the sum of their orders"
        );
    }
    let total_payments: i64 = sqlx::query_scalar("SELECT count(*) FROM payments")
        .fetch_one(&payments.pool)
        .await
        .expect("count");
    assert_eq!(total_payments, placed.len() as i64);

    orders.stop().await.expect("order-service stops cleanly");
    payments
        .stop()
        .await
        .expect("payment-service stops cleanly");
}
