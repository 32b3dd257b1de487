//! What the flow-view tests share: a view started in this process, and its page.

use std::time::Duration;

use clap::Parser;
use flow_view::{FlowView, Settings, start};
use service_runtime::RedisConnection;
use testkit::{PrivateRedis, eventually};

pub async fn view_of(redis: &PrivateRedis) -> FlowView {
    view_at(&redis.url()).await
}

pub async fn view_at(url: &str) -> FlowView {
    // Nothing listens there: the services are away.
    view_with_services(url, "http://127.0.0.1:9", "http://127.0.0.1:9").await
}

/// A view of the Redis at `url` and of the services at those URLs.
pub async fn view_with_services(url: &str, order_service: &str, payment_service: &str) -> FlowView {
    let settings = Settings::parse_from([
        "flow-view",
        "--http-addr",
        "127.0.0.1:0",
        "--redis-url",
        url,
        "--order-service-url",
        order_service,
        "--payment-service-url",
        payment_service,
        "--refresh-ms",
        "100",
    ]);
    start(settings).await.expect("the view starts")
}

/// What `url` answers, as text.
pub async fn text_of(url: &str) -> Result<String, String> {
    reqwest::get(url)
        .await
        .map_err(|e| e.to_string())?
        .text()
        .await
        .map_err(|e| e.to_string())
}

/// The page, once it shows `wanted`.
pub async fn page_showing(view: &FlowView, wanted: &str) -> String {
    let url = format!("http://{}/", view.addr);
    eventually(
        &format!("the page to show {wanted}"),
        Duration::from_secs(10),
        || async {
            let page = text_of(&url).await?;
            if page.contains(wanted) {
                Ok(page)
            } else {
                Err(page)
            }
        },
    )
    .await
}

/// Adds an entry of `fields` to `stream`, as a producer (or a forger) would.
pub async fn xadd(redis: &RedisConnection, stream: &str, fields: &[(&str, &str)]) {
    let _: String = redis::cmd("XADD")
        .arg(stream)
        .arg("*")
        .arg(fields)
        .query_async(&mut redis.clone())
        .await
        .unwrap_or_else(|e| panic!("XADD {stream}: {e}"));
}
