//! The OpenAPI documents (`GET /openapi.json`) match the running routers: every
//! documented operation is routed (not the 404 fallback, not 405) and answers with one of
//! the statuses it documents, and each service documents exactly the routes expected of
//! it (SPEC §6), so adding or dropping a route without its documentation fails here.

use std::collections::BTreeSet;

use serde_json::Value;
use testkit::{ADMIN_TOKEN, Spawned, TestContext};

async fn document(app: &Spawned) -> Value {
    let (status, doc) = app.get_json("/openapi.json").await;
    assert_eq!(status, 200);
    assert_eq!(
        doc["openapi"].as_str().map(|v| v.starts_with("3.")),
        Some(true),
        "{doc}"
    );
    doc
}

fn operations(doc: &Value) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("a path item").keys() {
            found.insert(format!("{} {path}", method.to_uppercase()));
        }
    }
    found
}

/// Calls every documented operation with plausible arguments and checks the answer is
/// routed and documented.
async fn every_operation_answers_as_documented(app: &Spawned, doc: &Value) {
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, operation) in item.as_object().expect("a path item") {
            let url = app.url(
                &path
                    .replace("{id}", &uuid::Uuid::now_v7().to_string())
                    .replace("{customer_id}", "alice")
                    .replace("{entry_id}", "1-0"),
            );
            let request = match method.as_str() {
                "get" => app.http.get(&url),
                "post" => app.http.post(&url).json(&serde_json::json!({})),
                other => panic!("unexpected method {other}"),
            };
            let response = request
                .bearer_auth(ADMIN_TOKEN)
                .send()
                .await
                .expect("answers");
            let status = response.status().as_u16();
            let body: Value = response.json().await.unwrap_or(Value::Null);
            assert_ne!(
                body["detail"], "no such route",
                "{method} {path} is documented but not routed"
            );
            assert_ne!(
                status, 405,
                "{method} {path} is documented but not routed for {method}"
            );
            let documented = operation["responses"].as_object().expect("responses");
            assert!(
                documented.contains_key(&status.to_string()),
                "{method} {path} answered {status}, documented {:?}",
                documented.keys()
            );
        }
    }
}

fn expected(operations: &[&str]) -> BTreeSet<String> {
    operations.iter().map(|s| (*s).to_owned()).collect()
}

const SHARED: [&str; 5] = [
    "GET /health/live",
    "GET /health/ready",
    "GET /metrics",
    "GET /admin/dlq",
    "POST /admin/dlq/{entry_id}/replay",
];

#[tokio::test]
async fn order_service_documents_exactly_its_routes() {
    let ctx = TestContext::new();
    let app = ctx
        .spawn(
            "order-service",
            &["--admin-token", ADMIN_TOKEN],
            order_service::start,
        )
        .await;
    let doc = document(&app).await;
    let mut want = expected(&SHARED);
    want.extend(expected(&[
        "POST /orders",
        "GET /orders",
        "GET /orders/{id}",
        "POST /orders/{id}/cancel",
    ]));
    assert_eq!(operations(&doc), want);
    assert_eq!(doc["info"]["title"], "order-service");
    assert!(doc["components"]["schemas"]["Problem"].is_object());
    assert!(doc["components"]["securitySchemes"]["admin_token"].is_object());
    every_operation_answers_as_documented(&app, &doc).await;
}

#[tokio::test]
async fn payment_service_documents_exactly_its_routes() {
    let ctx = TestContext::new();
    let app = ctx
        .spawn(
            "payment-service",
            &["--admin-token", ADMIN_TOKEN],
            payment_service::start,
        )
        .await;
    let doc = document(&app).await;
    let mut want = expected(&SHARED);
    want.extend(expected(&[
        "GET /payments",
        "GET /payments/{id}",
        "GET /accounts/{customer_id}",
        "POST /accounts/{customer_id}/deposits",
    ]));
    assert_eq!(operations(&doc), want);
    every_operation_answers_as_documented(&app, &doc).await;
}

/// SPEC §3.4: each service serves the event contract, the AsyncAPI document committed in
/// the `events` crate, at `GET /asyncapi.json`.
#[tokio::test]
async fn both_services_serve_the_event_contract() {
    let ctx = TestContext::new();
    let orders = ctx.spawn("order-service", &[], order_service::start).await;
    let payments = ctx
        .spawn("payment-service", &[], payment_service::start)
        .await;
    let committed: Value =
        serde_json::from_str(events::contract::ASYNCAPI_JSON).expect("the committed document");
    for app in [&orders, &payments] {
        let (status, served) = app.get_json("/asyncapi.json").await;
        assert_eq!(status, 200);
        assert_eq!(served, committed);
        assert_eq!(served["asyncapi"], "3.0.0");
        let channels: BTreeSet<&str> = served["channels"]
            .as_object()
            .expect("channels")
            .values()
            .filter_map(|c| c["address"].as_str())
            .collect();
        assert_eq!(channels, BTreeSet::from(["order-events", "payment-events"]));
    }
}
