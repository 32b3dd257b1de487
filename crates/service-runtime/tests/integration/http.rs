//! The HTTP middleware on a router of its own (no database): a request past its deadline
//! gets a 503 problem with `Retry-After`, and every answer carries a request id.

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::middleware;
use axum::routing::get;
use service_runtime::request::{REQUEST_ID, http_telemetry};
use tower::ServiceExt;

fn app() -> Router {
    Router::new()
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                "late"
            }),
        )
        .route("/fast", get(|| async { "ok" }))
        .layer(middleware::from_fn_with_state(
            Duration::from_millis(100),
            http_telemetry,
        ))
}

#[tokio::test]
async fn a_request_past_its_deadline_is_a_503_problem() {
    let response = app()
        .oneshot(Request::get("/slow").body(Body::empty()).expect("request"))
        .await
        .expect("answers");
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    assert!(response.headers().contains_key("retry-after"));
    assert!(response.headers().contains_key(REQUEST_ID));
}

#[tokio::test]
async fn a_request_within_its_deadline_is_answered() {
    let request = Request::get("/fast")
        .header(REQUEST_ID, "given-1")
        .body(Body::empty())
        .expect("request");
    let response = app().oneshot(request).await.expect("answers");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()[REQUEST_ID], "given-1");
}

#[tokio::test]
async fn invented_methods_do_not_grow_the_metrics() {
    let recorder = service_runtime::observability::recorder().expect("the recorder");
    let series = || {
        recorder
            .render()
            .lines()
            .filter(|line| line.starts_with("http_requests_total{") && line.contains("/fast"))
            .count()
    };
    let before = series();
    for n in 0..500 {
        let request = Request::builder()
            .method(format!("X{n}").as_str())
            .uri("/fast")
            .body(Body::empty())
            .expect("request");
        app().oneshot(request).await.expect("answers");
    }
    let after = series();
    assert!(
        after <= before + 2,
        "500 invented methods made {} series",
        after - before
    );
    assert!(
        recorder.render().contains(r#"method="OTHER""#),
        "they are counted as OTHER"
    );
}
