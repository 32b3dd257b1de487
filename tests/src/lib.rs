//! What the cross-service tests share: a load of orders over HTTP, and the check of the
//! SPEC §4.8 invariants on both databases once the system is quiet.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use sqlx::PgPool;
use testkit::eventually;
use uuid::Uuid;

/// Customers of the generated orders.
pub const CUSTOMERS: [&str; 4] = ["ana", "ben", "cho", "dev"];
/// `INITIAL_CREDIT_CENTS` the tests run with (the default).
pub const INITIAL_CREDIT: i64 = 100_000;

/// Order `n`: customer `n % 4`, 1-3 lines, small prices, so a few hundred orders per
/// customer fit in the initial credit and most are paid.
pub fn order_body(n: usize) -> Value {
    let customer = CUSTOMERS[n % CUSTOMERS.len()];
    let items: Vec<Value> = (0..=(n % 3))
        .map(|line| json!({"sku": format!("sku-{line}"), "quantity": 1 + (n + line) % 3, "unit_price_cents": 50 + (n + line) % 40}))
        .collect();
    json!({"customer_id": customer, "currency": "EUR", "items": items})
}

/// What a load run got back.
#[derive(Debug, Default)]
pub struct Placed {
    /// Orders answered 201.
    pub accepted: Vec<Value>,
    /// Requests that failed (service down, 503): not retried.
    pub failed: usize,
}

/// POSTs orders `0..n` to `base_url` with `concurrency` requests in flight.
pub async fn place_orders(base_url: &str, n: usize, concurrency: usize) -> Placed {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("a client");
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (http, next, url) = (http.clone(), next.clone(), format!("{base_url}/orders"));
        workers.spawn(async move {
            let mut placed = Placed::default();
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= n {
                    return placed;
                }
                match http.post(&url).json(&order_body(i)).send().await {
                    Ok(response) if response.status() == 201 => {
                        placed
                            .accepted
                            .push(response.json().await.expect("an order"));
                    }
                    _ => placed.failed += 1,
                }
            }
        });
    }
    let mut all = Placed::default();
    for placed in workers.join_all().await {
        all.accepted.extend(placed.accepted);
        all.failed += placed.failed;
    }
    all
}

/// `(id, order_id, customer_id, amount_cents, status)` of a payment.
type PaymentRow = (Uuid, Uuid, String, i64, String);
/// `(id, customer_id, total_cents, status, payment_id)` of an order.
type OrderRow = (Uuid, String, i64, String, Option<Uuid>);

/// How the orders ended.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    pub paid: usize,
    pub payment_failed: usize,
    pub cancelled: usize,
}

/// Waits (up to `timeout`) until no order is `PENDING`, then checks SPEC §4.8 against
/// the two databases: every order final; at most one payment per order, one exactly for
/// each `PAID` order with its amount, none standing for any other; each balance equal to
/// the initial credit less the totals of its `PAID` orders; no payment for an order
/// order-service does not know.
pub async fn assert_invariants(
    orders_db: &PgPool,
    payments_db: &PgPool,
    timeout: Duration,
) -> Outcome {
    eventually("every order to reach a final state", timeout, || async {
        let pending: i64 =
            sqlx::query_scalar("SELECT count(*) FROM orders WHERE status = 'PENDING'")
                .fetch_one(orders_db)
                .await
                .map_err(|e| e.to_string())?;
        if pending == 0 {
            Ok(())
        } else {
            Err(format!("{pending} orders PENDING"))
        }
    })
    .await;

    let orders: Vec<OrderRow> =
        sqlx::query_as("SELECT id, customer_id, total_cents, status, payment_id FROM orders")
            .fetch_all(orders_db)
            .await
            .expect("orders");
    let payments: Vec<PaymentRow> =
        sqlx::query_as("SELECT id, order_id, customer_id, amount_cents, status FROM payments")
            .fetch_all(payments_db)
            .await
            .expect("payments");
    let balances: HashMap<String, i64> =
        sqlx::query_as("SELECT customer_id, balance_cents FROM accounts")
            .fetch_all(payments_db)
            .await
            .expect("accounts")
            .into_iter()
            .collect();

    let mut payments_by_order: HashMap<Uuid, Vec<&PaymentRow>> = HashMap::new();
    for payment in &payments {
        payments_by_order
            .entry(payment.1)
            .or_default()
            .push(payment);
    }
    let known: std::collections::HashSet<Uuid> = orders.iter().map(|o| o.0).collect();
    for order_id in payments_by_order.keys() {
        assert!(
            known.contains(order_id),
            "a payment for {order_id}, which order-service does not know"
        );
    }

    let mut outcome = Outcome::default();
    let mut spent: HashMap<&str, i64> = HashMap::new();
    for (id, customer, total, status, payment_id) in &orders {
        let charges = payments_by_order.get(id).map_or(&[][..], Vec::as_slice);
        assert!(
            charges.len() <= 1,
            "order {id} has {} payments",
            charges.len()
        );
        let standing = charges.iter().find(|p| p.4 == "COMPLETED");
        match status.as_str() {
            "PAID" => {
                outcome.paid += 1;
                let payment =
                    standing.unwrap_or_else(|| panic!("PAID order {id} has no standing payment"));
                assert_eq!(
                    payment.3, *total,
                    "order {id} charged {} for a total of {total}",
                    payment.3
                );
                assert_eq!(
                    Some(payment.0),
                    *payment_id,
                    "order {id} shows another payment"
                );
                *spent.entry(customer).or_default() += total;
            }
            other => {
                assert!(
                    standing.is_none(),
                    "{other} order {id} has a standing charge"
                );
                match other {
                    "PAYMENT_FAILED" => outcome.payment_failed += 1,
                    "CANCELLED" => outcome.cancelled += 1,
                    _ => panic!("order {id} is {other}"),
                }
            }
        }
    }
    for (customer, balance) in &balances {
        let expected = INITIAL_CREDIT - spent.get(customer.as_str()).copied().unwrap_or(0);
        assert_eq!(
            *balance, expected,
            "{customer}'s balance is not the initial credit less their paid orders"
        );
    }
    for customer in spent.keys() {
        assert!(
            balances.contains_key(*customer),
            "{customer} paid without an account"
        );
    }
    outcome
}
