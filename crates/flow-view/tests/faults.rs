//! Gray failures around the view (SPEC §4.9: what does not crash must not stall): a
//! service that freezes (the kernel accepts its connections, nothing answers, as with
//! `SIGSTOP`) leaves only its own figures stale; Redis frozen, then gone for a minute,
//! then back empty: the page answers throughout, says Redis cannot be read, and goes on
//! with the new streams once Redis is back.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{page_showing, text_of, view_of, view_with_services, xadd};
use service_runtime::RedisConnection;
use testkit::{PrivateRedis, eventually};

/// A stand-in for payment-service's `/metrics` whose counter grows at every scrape.
async fn growing_metrics() -> String {
    let scrapes = Arc::new(AtomicU64::new(0));
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let n = scrapes.fetch_add(1, Ordering::SeqCst);
            async move { format!("outbox_backlog 0\nevents_published_total {}\n", n * 1000) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a port");
    let addr = listener.local_addr().expect("an address");
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

/// The row of `service` in the page's table of services.
fn row_of<'a>(page: &'a str, service: &str) -> &'a str {
    let start = page
        .find(&format!("<td>{service}</td>"))
        .unwrap_or_else(|| panic!("{service} on the page"));
    let row = &page[start..];
    &row[..row.find("</tr>").unwrap_or(row.len())]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_order_service_leaves_only_its_own_figures_stale() {
    let redis = PrivateRedis::start().await;
    let conn = RedisConnection::connect_for_commands(&redis.url())
        .await
        .expect("connects");
    // Orders with an outcome and no final state: the view asks order-service for each.
    for n in 0..20 {
        let order = format!("01937a2e-5c00-7000-8000-{n:012}");
        for (stream, event) in [
            ("order-events", "OrderCreated"),
            ("payment-events", "PaymentCompleted"),
        ] {
            xadd(
                &conn,
                stream,
                &[("event_type", event), ("order_id", &order)],
            )
            .await;
        }
    }
    // Bound, never accepted: connections are made, requests never answered.
    let frozen = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
    let frozen_url = format!("http://{}", frozen.local_addr().expect("an address"));
    let payments = growing_metrics().await;
    let view = view_with_services(&redis.url(), &frozen_url, &payments).await;

    // payment-service's rate needs two scrapes: they come a round apart whatever
    // order-service does (each request is bounded, and none waits for another).
    let page = format!("http://{}/", view.addr);
    eventually(
        "payment-service's rate on the page",
        Duration::from_secs(15),
        || async {
            let text = text_of(&page).await?;
            let row = row_of(&text, "payment-service");
            if row.contains("<td>yes</td>") && !row.contains('–') {
                Ok(())
            } else {
                Err(row.to_owned())
            }
        },
    )
    .await;
    let text = text_of(&page).await.expect("the page");
    assert!(row_of(&text, "order-service").contains(">no<"), "{text}");
    view.stop().await;
    drop(frozen);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_frozen_then_gone_for_a_minute_then_back_empty_and_the_view_goes_on() {
    let mut redis = PrivateRedis::start().await;
    let conn = RedisConnection::connect_for_commands(&redis.url())
        .await
        .expect("connects");
    xadd(
        &conn,
        "order-events",
        &[("event_type", "OrderCreated"), ("order_id", "before")],
    )
    .await;
    let view = view_of(&redis).await;
    page_showing(&view, "before").await;

    // Every page is answered within a second however long Redis stays silent or away.
    let page = format!("http://{}/", view.addr);
    let quick = reqwest::Client::builder()
        .timeout(Duration::from_secs(1))
        .build()
        .expect("a client");
    let answers_throughout = |length: Duration| {
        let (quick, page) = (quick.clone(), page.clone());
        async move {
            let until = Instant::now() + length;
            let mut told = false;
            while Instant::now() < until {
                let text = quick
                    .get(&page)
                    .send()
                    .await
                    .and_then(reqwest::Response::error_for_status)
                    .expect("the page answers within a second");
                told |= text
                    .text()
                    .await
                    .expect("a page")
                    .contains("Redis cannot be read");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            told
        }
    };
    redis.freeze();
    assert!(
        answers_throughout(Duration::from_secs(20)).await,
        "the page says Redis cannot be read while it is frozen"
    );
    redis.thaw();
    redis.kill();
    assert!(
        answers_throughout(Duration::from_secs(60)).await,
        "the page says Redis cannot be read while it is away"
    );

    redis.restart().await;
    let conn = RedisConnection::connect_for_commands(&redis.url())
        .await
        .expect("connects again");
    xadd(
        &conn,
        "order-events",
        &[("event_type", "OrderCreated"), ("order_id", "after")],
    )
    .await;
    page_showing(&view, "after").await;
    eventually("the error to clear", Duration::from_secs(10), || async {
        let text = text_of(&page).await?;
        if text.contains("Redis cannot be read") {
            Err(text)
        } else {
            Ok(())
        }
    })
    .await;
    view.stop().await;
}
