//! `flow-view`: a live page of the order/payment flow and the broker state behind it
//! (entry ids, which consumer holds what, delivery counts, lag, dead letters), for a
//! person watching the flow. An observer, never a participant: see [`observer`].
//!
//! - `GET /`: the page; `GET /events`: its live parts as server-sent events.
//! - `POST /orders` (a form) and `POST /orders/{id}/cancel`: passed to order-service, so
//!   the page needs nothing else.

pub mod observer;
pub mod page;
pub mod window;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Form, Path, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use futures::Stream;
use service_runtime::http_server::{HttpLimits, serve};
use service_runtime::settings::{SecretUrl, redis_url};
use service_runtime::{RedisConnection, StreamKeys};
use time::OffsetDateTime;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use observer::Shared;
use window::Window;

/// The view's settings (flags or environment).
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "flow-view", about = "A live view of the order/payment flow")]
pub struct Settings {
    /// Where the page is served.
    #[arg(long, env = "HTTP_ADDR", default_value = "127.0.0.1:8090")]
    pub http_addr: SocketAddr,
    /// Redis, as a user that may only read (`flow-view` in deploy/redis/users.acl).
    #[arg(long, env = "REDIS_URL", value_parser = redis_url)]
    pub redis_url: SecretUrl,
    #[arg(
        long,
        env = "ORDER_SERVICE_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    pub order_service_url: String,
    #[arg(
        long,
        env = "PAYMENT_SERVICE_URL",
        default_value = "http://127.0.0.1:8081"
    )]
    pub payment_service_url: String,
    /// Recent orders kept in memory (the oldest is dropped).
    #[arg(long, env = "ORDERS_KEPT", default_value_t = 500,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub orders_kept: u32,
    /// How often the groups, dead letters and the services' figures are read.
    #[arg(long, env = "REFRESH_MS", default_value_t = 500,
          value_parser = clap::value_parser!(u64).range(100..=60_000))]
    pub refresh_ms: u64,
    /// The services' `STREAM_NAMESPACE`.
    #[arg(long, env = "STREAM_NAMESPACE", default_value = "")]
    pub stream_namespace: String,
}

/// The running view.
pub struct FlowView {
    pub addr: SocketAddr,
    pub shared: Arc<Shared>,
    stop: CancellationToken,
    tasks: JoinSet<()>,
}

impl FlowView {
    /// Stops reading and serving; waits for both.
    pub async fn stop(mut self) {
        self.stop.cancel();
        while self.tasks.join_next().await.is_some() {}
    }
}

#[derive(Clone)]
struct App {
    shared: Arc<Shared>,
    http: reqwest::Client,
    order_service: String,
    refresh: Duration,
    stop: CancellationToken,
}

/// Connects, starts the readers and serves the page.
pub async fn start(settings: Settings) -> anyhow::Result<FlowView> {
    let url = settings.redis_url.expose();
    let commands = RedisConnection::connect_for_commands(url).await?;
    let keys = StreamKeys::new(settings.stream_namespace.clone());
    let flows = observer::flows(&keys);
    let kept = settings.orders_kept as usize;
    let shared = Shared::new(
        Window::new(kept),
        &flows,
        &["order-service", "payment-service"],
    );
    let refresh = Duration::from_millis(settings.refresh_ms);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()?;
    let stop = CancellationToken::new();
    let mut tasks = JoinSet::new();
    for flow in flows.clone() {
        let blocking = RedisConnection::connect(url, Duration::from_secs(5)).await?;
        tasks.spawn(observer::tail(
            shared.clone(),
            commands.clone(),
            blocking,
            flow,
            kept.min(64),
            stop.clone(),
        ));
    }
    tasks.spawn(observer::watch_broker(
        shared.clone(),
        commands.clone(),
        flows,
        refresh,
        stop.clone(),
    ));
    let base = |u: &str| u.trim_end_matches('/').to_owned();
    tasks.spawn(observer::watch_services(
        shared.clone(),
        http.clone(),
        (
            base(&settings.order_service_url),
            base(&settings.payment_service_url),
        ),
        refresh.max(Duration::from_secs(1)),
        stop.clone(),
    ));
    let app = App {
        shared: shared.clone(),
        http,
        order_service: base(&settings.order_service_url),
        refresh,
        stop: stop.clone(),
    };
    let listener = TcpListener::bind(settings.http_addr).await?;
    let addr = listener.local_addr()?;
    let limits = HttpLimits {
        header_read_timeout: Duration::from_secs(10),
        max_connections: 64,
        max_header_bytes: 16 * 1024,
    };
    tasks.spawn(serve(listener, router(app), limits, stop.clone()));
    Ok(FlowView {
        addr,
        shared,
        stop,
        tasks,
    })
}

fn router(app: App) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/events", get(live))
        .route("/health", get(|| async { "ok" }))
        .route("/orders", post(place))
        .route("/orders/{id}/cancel", post(cancel))
        .with_state(app)
}

async fn index(State(app): State<App>) -> Html<String> {
    let view = app.shared.view();
    Html(page::page(&view, OffsetDateTime::now_utc()).into_string())
}

/// The live parts: both fragments at once, then again after each change (at most once
/// per refresh), until the page goes or the view stops.
async fn live(State(app): State<App>) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let changes = app.shared.subscribe();
    let stream = futures::stream::unfold(
        (app, changes, true),
        |(app, mut changes, first)| async move {
            if !first {
                tokio::select! {
                    () = app.stop.cancelled() => return None,
                    changed = changes.changed() => changed.ok()?,
                }
                tokio::select! {
                    () = app.stop.cancelled() => return None,
                    () = tokio::time::sleep(app.refresh) => {}
                }
                changes.borrow_and_update();
            }
            let (orders, broker) = {
                let view = app.shared.view();
                let now = OffsetDateTime::now_utc();
                (
                    page::orders(&view, now).into_string(),
                    page::broker(&view).into_string(),
                )
            };
            let events = vec![
                Ok(Event::default().event("orders").data(orders)),
                Ok(Event::default().event("broker").data(broker)),
            ];
            Some((futures::stream::iter(events), (app, changes, false)))
        },
    );
    Sse::new(futures::StreamExt::flatten(stream)).keep_alive(KeepAlive::default())
}

/// The place-order form.
#[derive(Debug, serde::Deserialize)]
struct PlaceForm {
    customer_id: String,
    sku: String,
    quantity: u32,
    unit_price_cents: u64,
}

async fn place(State(app): State<App>, Form(form): Form<PlaceForm>) -> Response {
    let body = serde_json::json!({
        "customer_id": form.customer_id,
        "currency": "EUR",
        "items": [{"sku": form.sku, "quantity": form.quantity, "unit_price_cents": form.unit_price_cents}],
    });
    let url = format!("{}/orders", app.order_service);
    match app.http.post(url).json(&body).send().await {
        Ok(answer) if answer.status().is_success() => {
            if let Ok(order) = answer.json::<serde_json::Value>().await
                && let (Some(id), Some(status)) = (order["id"].as_str(), order["status"].as_str())
            {
                observer::note_placed(&app.shared, id, status);
            }
            Redirect::to("/").into_response()
        }
        Ok(answer) => refused(answer).await,
        Err(e) => unreachable_service(&e),
    }
}

async fn cancel(State(app): State<App>, Path(id): Path<String>) -> Response {
    let Ok(id) = uuid::Uuid::parse_str(&id) else {
        return (StatusCode::NOT_FOUND, "no such order").into_response();
    };
    let url = format!("{}/orders/{id}/cancel", app.order_service);
    match app.http.post(url).send().await {
        Ok(answer) if answer.status().is_success() => Redirect::to("/").into_response(),
        Ok(answer) => refused(answer).await,
        Err(e) => unreachable_service(&e),
    }
}

/// order-service's refusal, shown as it said it (escaped), with a way back.
async fn refused(answer: reqwest::Response) -> Response {
    let status = answer.status();
    let detail = answer.text().await.unwrap_or_default();
    let body = maud::html! {
        p { "order-service answered " (status.as_u16()) ": " code { (window::clip(&detail)) } }
        p { a href="/" { "back" } }
    };
    (
        StatusCode::from_u16(status.as_u16()).unwrap_or(StatusCode::BAD_GATEWAY),
        Html(body.into_string()),
    )
        .into_response()
}

fn unreachable_service(e: &reqwest::Error) -> Response {
    let body = maud::html! {
        p { "order-service cannot be reached: " (e.to_string()) }
        p { a href="/" { "back" } }
    };
    (StatusCode::BAD_GATEWAY, Html(body.into_string())).into_response()
}
