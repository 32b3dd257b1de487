//! What every HTTP request goes through, in one middleware: an `x-request-id` (the
//! caller's if it sent a sane one, a new UUID otherwise, echoed in the response), a span
//! carrying it (so every log line of the request has it) that continues the caller's
//! trace if it sent a `traceparent`, a deadline (`REQUEST_TIMEOUT_MS`, then 503), and the
//! request metrics by route and status.

use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tracing::{Instrument, debug, field, info_span, warn};

use crate::observability::{HTTP_DURATION, HTTP_REQUESTS};
use crate::problem::Problem;
use crate::telemetry::{self, TRACEPARENT};

/// The request id header.
pub const REQUEST_ID: &str = "x-request-id";

/// A caller's request id is kept if it is 1 to 128 visible ASCII characters.
fn acceptable_request_id(value: &str) -> bool {
    (1..=128).contains(&value.len()) && value.bytes().all(|b| b.is_ascii_graphic())
}

fn header(request: &Request, name: &str) -> Option<String> {
    request
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// The method as a metric label and span field: a standard method's name, or `OTHER`
/// (any token is a valid method, and a label per invented one would grow without bound).
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "OTHER",
    }
}

/// The middleware; its state is the request deadline.
pub async fn http_telemetry(
    State(timeout): State<Duration>,
    request: Request,
    next: Next,
) -> Response {
    let (caller_request_id, caller_traceparent) =
        (header(&request, REQUEST_ID), header(&request, TRACEPARENT));
    let request_id = caller_request_id
        .filter(|id| acceptable_request_id(id))
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned());
    let method = method_label(request.method());
    let span = info_span!("http_request", %method, %route, %request_id, status = field::Empty);
    if let Some(traceparent) = caller_traceparent {
        telemetry::continue_trace(&span, &traceparent);
    }

    let started = Instant::now();
    let mut response = async {
        match tokio::time::timeout(timeout, next.run(request)).await {
            Ok(response) => response,
            Err(_) => {
                warn!(?timeout, "request timed out");
                Problem::unavailable("the request took too long").into_response()
            }
        }
    }
    .instrument(span.clone())
    .await;

    let status = response.status().as_u16();
    span.record("status", status);
    let elapsed = started.elapsed().as_secs_f64();
    debug!(parent: &span, status, elapsed, "request done");
    let labels = [
        ("method", method.to_owned()),
        ("route", route),
        ("status", status.to_string()),
    ];
    metrics::counter!(HTTP_REQUESTS, &labels).increment(1);
    metrics::histogram!(HTTP_DURATION, &labels).record(elapsed);
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invented_methods_are_other() {
        assert_eq!(method_label(&Method::POST), "POST");
        let invented = Method::from_bytes(b"X12345").expect("a token");
        assert_eq!(method_label(&invented), "OTHER");
    }

    #[test]
    fn request_ids_are_bounded_and_visible() {
        assert!(acceptable_request_id("abc-123"));
        assert!(!acceptable_request_id(""));
        assert!(!acceptable_request_id("has space"));
        assert!(!acceptable_request_id(&"x".repeat(129)));
    }
}
