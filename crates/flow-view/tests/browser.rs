//! The flow view over both services, in a real browser (headless `chromium`): orders
//! placed by filling the page's form and clicking are seen through to their end; with
//! payment-service stopped the page shows the entries waiting (lag) and, once it is
//! back, the lag drained, live, without a reload. A test binary of its own, so that the
//! browser never runs beside the timing-sensitive end-to-end tests.

use std::time::Duration;

use clap::Parser;
use flow_view::{FlowView, Settings};
use testkit::browser::Browser;
use testkit::{Spawned, TestContext};

/// Places an order of `cents` for `customer` with order-service's API; its status.
async fn post_order(orders: &Spawned, customer: &str, cents: i64) -> u16 {
    reqwest::Client::new()
        .post(orders.url("/orders"))
        .json(
            &serde_json::json!({"customer_id": customer, "currency": "EUR",
            "items": [{"sku": "thing", "quantity": 1, "unit_price_cents": cents}]}),
        )
        .send()
        .await
        .expect("order-service answers")
        .status()
        .as_u16()
}

/// Both services in this process and the view over them.
async fn both_services_and_the_view(ctx: &TestContext) -> (Spawned, Spawned, FlowView) {
    let orders = ctx.spawn("order-service", &[], order_service::start).await;
    let payments = ctx
        .spawn("payment-service", &[], payment_service::start)
        .await;
    let view = view_over(ctx, &orders, &payments).await;
    (orders, payments, view)
}

async fn view_over(ctx: &TestContext, orders: &Spawned, payments: &Spawned) -> FlowView {
    let (order_url, payment_url) = (orders.url(""), payments.url(""));
    let settings = Settings::parse_from([
        "flow-view",
        "--http-addr",
        "127.0.0.1:0",
        "--redis-url",
        ctx.redis_url(),
        "--stream-namespace",
        ctx.namespace(),
        "--order-service-url",
        order_url.as_str(),
        "--payment-service-url",
        payment_url.as_str(),
        "--refresh-ms",
        "200",
    ]);
    flow_view::start(settings).await.expect("the view starts")
}

/// Where the browser test leaves its screenshot (the README shows a copy of one:
/// docs/flow-view.png).
const SCREENSHOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../target/flow-view.png");

/// Whether the page shows an order in `state`, `n` times.
fn states(state: &str, n: usize) -> String {
    format!(
        "[...document.querySelectorAll('#orders .state')].filter(e => e.textContent === '{state}').length === {n}"
    )
}

/// The lag the page shows for `order-events`' group.
fn lag_is(n: u64) -> String {
    format!(
        "document.querySelector('table[data-stream=\"order-events\"] td.lag')?.textContent === '{n}'"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_browser_orders_placed_with_the_form_are_seen_through_to_their_end() {
    let ctx = TestContext::new();
    let (_orders, _payments, view) = both_services_and_the_view(&ctx).await;
    let page = format!("http://{}/", view.addr);

    tokio::task::spawn_blocking(move || {
        let mut browser = Browser::start(1280, 860);
        browser.open(&page);
        browser.wait_until(
            "the form",
            Duration::from_secs(10),
            "!!document.getElementById('place')",
        );
        browser.type_into("input[name=customer_id]", "vic");
        browser.type_into("input[name=quantity]", "2");
        browser.click("#place button");
        browser.wait_until(
            "vic's order PAID",
            Duration::from_secs(30),
            &states("PAID", 1),
        );
        let timeline = browser.eval("document.getElementById('orders').innerText");
        let timeline = timeline.as_str().expect("text");
        for step in ["OrderCreated", "PaymentCompleted", "vic", "2500 cents"] {
            assert!(timeline.contains(step), "{step} in {timeline}");
        }
        // One the account cannot pay, for the picture.
        browser.type_into("input[name=unit_price_cents]", "5000000");
        browser.click("#place button");
        browser.wait_until(
            "the second declined",
            Duration::from_secs(30),
            &states("PAYMENT_FAILED", 1),
        );
        browser.screenshot(std::path::Path::new(SCREENSHOT));
    })
    .await
    .expect("the browser test");
    view.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_browser_a_stopped_payment_service_shows_as_lag_that_drains_when_it_returns() {
    let ctx = TestContext::new();
    let (orders, payments, view) = both_services_and_the_view(&ctx).await;
    let payments_db = payments.database_url.clone();
    payments.stop().await.expect("stopped");
    let page = format!("http://{}/", view.addr);
    let mut browser = tokio::task::spawn_blocking(move || {
        let mut browser = Browser::start(1280, 860);
        browser.open(&page);
        browser.wait_until("the group", Duration::from_secs(10), &lag_is(0));
        // Marks this page: the rest must come live, without a reload.
        browser.eval("window.notReloaded = true");
        browser
    })
    .await
    .expect("the browser opens the page");

    for _ in 0..3 {
        assert_eq!(post_order(&orders, "wes", 100).await, 201);
    }
    browser = tokio::task::spawn_blocking(move || {
        browser.wait_until("three entries waiting", Duration::from_secs(30), &lag_is(3));
        browser
    })
    .await
    .expect("the lag shows");

    let payments = ctx
        .spawn_on("payment-service", &payments_db, &[], payment_service::start)
        .await;
    tokio::task::spawn_blocking(move || {
        browser.wait_until("the lag drained", Duration::from_secs(30), &lag_is(0));
        browser.wait_until(
            "the three paid",
            Duration::from_secs(30),
            &states("PAID", 3),
        );
        assert_eq!(
            browser.eval("window.notReloaded === true"),
            serde_json::json!(true)
        );
    })
    .await
    .expect("the lag drains");
    view.stop().await;
    drop(payments);
}
