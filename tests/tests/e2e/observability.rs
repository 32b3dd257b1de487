//! Observability across both services (SPEC §8): one trace from `POST /orders` through
//! the payment to the status update, the metrics an order leaves behind, request ids.

use std::time::Duration;

use e2e::{assert_invariants, order_body};
use events::Envelope;
use events::streams::{ORDER_EVENTS, PAYMENT_EVENTS};
use service_runtime::telemetry::trace_id;
use testkit::{Spawned, TestContext, eventually};

fn decoded(entries: Vec<(String, Vec<(String, String)>)>) -> Vec<Envelope> {
    entries
        .into_iter()
        .filter_map(|(_, f)| {
            Envelope::from_fields(f.iter().map(|(k, v)| (k.as_str(), v.as_bytes()))).ok()
        })
        .collect()
}

/// The last event on a logical stream, once there is one.
async fn last_on(ctx: &TestContext, logical: &str) -> Envelope {
    eventually(
        &format!("an event on {logical}"),
        Duration::from_secs(10),
        || async {
            decoded(ctx.entries(logical).await)
                .pop()
                .ok_or_else(|| "none yet".to_owned())
        },
    )
    .await
}

async fn start(ctx: &TestContext) -> (Spawned, Spawned) {
    let orders = ctx.spawn("order-service", &[], order_service::start).await;
    let payments = ctx
        .spawn("payment-service", &[], payment_service::start)
        .await;
    (orders, payments)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_runs_from_the_post_through_the_payment() {
    let ctx = TestContext::new();
    let (orders, payments) = start(&ctx).await;
    let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let response = orders
        .http
        .post(orders.url("/orders"))
        .header(
            "traceparent",
            format!("00-{caller_trace}-00f067aa0ba902b7-01"),
        )
        .json(&order_body(1))
        .send()
        .await
        .expect("answers");
    assert_eq!(response.status(), 201);

    let created = last_on(&ctx, ORDER_EVENTS).await;
    let outcome = last_on(&ctx, PAYMENT_EVENTS).await;
    let created_trace = created.traceparent.as_deref().and_then(trace_id);
    assert_eq!(
        created_trace,
        Some(caller_trace),
        "the POST span continued the caller's trace into OrderCreated"
    );
    assert_eq!(
        outcome.traceparent.as_deref().and_then(trace_id),
        Some(caller_trace),
        "payment-service handled OrderCreated in the same trace and stamped PaymentCompleted with it"
    );
    assert_ne!(
        created.traceparent, outcome.traceparent,
        "each hop is its own span of the trace"
    );
    assert_invariants(&orders.pool, &payments.pool, Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_without_trace_context_starts_one_that_the_payment_continues() {
    let ctx = TestContext::new();
    let (orders, _payments) = start(&ctx).await;
    let response = orders
        .http
        .post(orders.url("/orders"))
        .json(&order_body(2))
        .send()
        .await
        .expect("answers");
    assert_eq!(response.status(), 201);
    let created = last_on(&ctx, ORDER_EVENTS).await;
    let started = created
        .traceparent
        .as_deref()
        .and_then(trace_id)
        .expect("the POST span has a trace")
        .to_owned();
    let outcome = last_on(&ctx, PAYMENT_EVENTS).await;
    assert_eq!(
        outcome.traceparent.as_deref().and_then(trace_id),
        Some(started.as_str())
    );
}

/// The value of the sample of `metric` whose labels include all of `labels`.
fn sample(text: &str, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (name_and_labels, value) = line.rsplit_once(' ')?;
            let (name, rest) = name_and_labels
                .split_once('{')
                .unwrap_or((name_and_labels, ""));
            let matches = name == metric
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
            if matches { value.parse().ok() } else { None }
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completed_order_shows_in_the_metrics() {
    let ctx = TestContext::new();
    let (orders, payments) = start(&ctx).await;
    let response = orders
        .http
        .post(orders.url("/orders"))
        .json(&order_body(3))
        .send()
        .await
        .expect("answers");
    assert_eq!(response.status(), 201);
    assert_invariants(&orders.pool, &payments.pool, Duration::from_secs(10)).await;

    let order_events = ctx.stream(ORDER_EVENTS);
    let payment_events = ctx.stream(PAYMENT_EVENTS);
    let text = eventually(
        "the metrics to show the order",
        Duration::from_secs(15),
        || async {
            let text = orders
                .http
                .get(orders.url("/metrics"))
                .send()
                .await
                .map_err(|e| e.to_string())?
                .text()
                .await
                .map_err(|e| e.to_string())?;
            let wanted: [(&str, Vec<(&str, &str)>); 6] = [
                (
                    "http_requests_total",
                    vec![("route", "/orders"), ("method", "POST"), ("status", "201")],
                ),
                (
                    "events_published_total",
                    vec![
                        ("stream", order_events.as_str()),
                        ("event_type", "OrderCreated"),
                    ],
                ),
                (
                    "events_consumed_total",
                    vec![
                        ("stream", order_events.as_str()),
                        ("event_type", "OrderCreated"),
                        ("result", "applied"),
                    ],
                ),
                (
                    "events_published_total",
                    vec![
                        ("stream", payment_events.as_str()),
                        ("event_type", "PaymentCompleted"),
                    ],
                ),
                (
                    "events_consumed_total",
                    vec![
                        ("stream", payment_events.as_str()),
                        ("event_type", "PaymentCompleted"),
                        ("result", "applied"),
                    ],
                ),
                (
                    "consumer_group_lag",
                    vec![
                        ("stream", payment_events.as_str()),
                        ("group", "order-service"),
                    ],
                ),
            ];
            for (metric, labels) in &wanted {
                if sample(&text, metric, labels).is_none() {
                    return Err(format!("no {metric}{labels:?}"));
                }
            }
            Ok(text)
        },
    )
    .await;
    assert!(
        sample(
            &text,
            "order_time_to_final_seconds_count",
            &[("status", "PAID")]
        )
        .is_some_and(|n| n >= 1.0)
    );
    assert!(
        sample(
            &text,
            "http_request_duration_seconds_count",
            &[("route", "/orders"), ("status", "201")]
        )
        .is_some_and(|n| n >= 1.0)
    );
    for gauge in ["outbox_backlog", "outbox_oldest_unpublished_age_seconds"] {
        assert!(sample(&text, gauge, &[]).is_some(), "{gauge} is exported");
    }
}

#[tokio::test]
async fn requests_carry_a_request_id() {
    let ctx = TestContext::new();
    let orders = ctx.spawn("order-service", &[], order_service::start).await;
    let response = orders
        .http
        .get(orders.url("/health/live"))
        .send()
        .await
        .expect("answers");
    let generated = response.headers()["x-request-id"]
        .to_str()
        .expect("ascii")
        .to_owned();
    assert_eq!(generated.len(), 36, "a UUID: {generated}");
    let response = orders
        .http
        .get(orders.url("/orders/nope"))
        .header("x-request-id", "caller-42")
        .send()
        .await
        .expect("answers");
    assert_eq!(
        response.headers()["x-request-id"],
        "caller-42",
        "the caller's id is kept, on errors too"
    );
}

/// With `OTEL_EXPORTER_OTLP_ENDPOINT` set, the real binary exports its spans over
/// OTLP/HTTP: a stand-in collector receives them (at the latest when SIGTERM flushes),
/// in the caller's trace, which the event carries on as it does without an exporter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_are_exported_over_otlp_when_an_endpoint_is_set() {
    use std::sync::{Arc, Mutex};

    let caller_trace = "0af7651916cd43dd8448eb211c80319c";
    let caller_trace_bytes: Vec<u8> = (0..32)
        .step_by(2)
        .map(|i| u8::from_str_radix(&caller_trace[i..i + 2], 16).expect("hex"))
        .collect();
    let received = Arc::new(Mutex::new(Vec::<Vec<u8>>::new()));
    let collector = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post({
            let received = received.clone();
            move |body: axum::body::Bytes| async move {
                if !body.is_empty() {
                    received.lock().expect("not poisoned").push(body.to_vec());
                }
                (
                    [("content-type", "application/x-protobuf")],
                    Vec::<u8>::new(),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binds");
    let collector_addr = listener.local_addr().expect("an address");
    tokio::spawn(async move { axum::serve(listener, collector).await });

    let ctx = TestContext::new();
    let env = vec![
        ("DATABASE_URL", ctx.database().await),
        ("REDIS_URL", ctx.redis_url().to_owned()),
        ("STREAM_NAMESPACE", ctx.namespace().to_owned()),
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("http://{collector_addr}"),
        ),
    ];
    let mut process = e2e::start_process(env!("CARGO_BIN_EXE_chaos-order-service"), &env);
    e2e::ready(&mut process).await;
    let response = reqwest::Client::new()
        .post(format!("{}/orders", process.base_url))
        .header(
            "traceparent",
            format!("00-{caller_trace}-b7ad6b7169203331-01"),
        )
        .json(&order_body(4))
        .send()
        .await
        .expect("answers");
    assert_eq!(response.status(), 201);
    let created = last_on(&ctx, ORDER_EVENTS).await;
    assert_eq!(
        created.traceparent.as_deref().and_then(trace_id),
        Some(caller_trace),
        "OrderCreated carries the caller's trace"
    );
    e2e::terminate(&mut process, Duration::from_secs(15)).await;
    let received = received.lock().expect("not poisoned");
    assert!(!received.is_empty(), "the collector received no spans");
    assert!(
        received
            .iter()
            .any(|body| body.windows(16).any(|w| w == caller_trace_bytes)),
        "no exported span is in the caller's trace"
    );
}
