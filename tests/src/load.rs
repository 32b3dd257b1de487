//! Orders over HTTP: a load of generated orders, one order, a request, waiting for an
//! order to be decided, cancelling.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use testkit::{ADMIN_TOKEN, Spawned, eventually};

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

pub async fn post(app: &Spawned, path: &str, body: &Value) -> (u16, Value) {
    let response = app
        .http
        .post(app.url(path))
        .bearer_auth(ADMIN_TOKEN)
        .json(body)
        .send()
        .await
        .expect("answers");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

pub async fn final_order(orders: &Spawned, id: &str) -> Value {
    let path = format!("/orders/{id}");
    eventually(
        &format!("{path} to be decided"),
        Duration::from_secs(10),
        || async {
            let (_, order) = orders.get_json(&path).await;
            if order["status"] != "PENDING" {
                Ok(order)
            } else {
                Err(order.to_string())
            }
        },
    )
    .await
}

pub fn order_of(customer: &str, cents: i64) -> Value {
    json!({"customer_id": customer, "currency": "EUR", "items": [{"sku": "thing", "quantity": 1, "unit_price_cents": cents}]})
}

/// Cancels every order through the API.
pub async fn cancel_all(orders: &Spawned, placed: &[Value]) {
    for order in placed {
        let id = order["id"].as_str().expect("an id");
        let response = orders
            .http
            .post(orders.url(&format!("/orders/{id}/cancel")))
            .send()
            .await
            .expect("answers");
        assert_eq!(response.status(), 200, "order {id} cancelled");
    }
}
