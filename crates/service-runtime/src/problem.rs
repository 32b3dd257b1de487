//! HTTP errors as `application/problem+json` (RFC 9457, SPEC §6), and extractors whose
//! rejections are problems too, so malformed input never gets a plain-text or HTML reply.

use std::collections::BTreeMap;

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// The largest request body either service reads (SPEC §6).
pub const BODY_LIMIT_BYTES: usize = 64 * 1024;

/// An RFC 9457 problem document.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Problem {
    /// What kind of problem: `/problems/<kind>`, a URI reference relative to the service
    /// that answered (RFC 9457 §3.1.1), so the runtime names no domain of its own.
    #[serde(rename = "type")]
    pub kind: String,
    /// The status's reason phrase.
    pub title: String,
    /// The HTTP status.
    pub status: u16,
    /// What went wrong, for a person.
    pub detail: String,
    /// Messages per invalid field, for validation errors.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    #[schema(required = false)]
    pub errors: BTreeMap<String, Vec<String>>,
    #[serde(skip)]
    #[schema(ignore)]
    retry_after_secs: Option<u32>,
}

impl Problem {
    /// A problem with `status`, a short `kind` slug (becomes `type`) and a detail.
    pub fn new(status: StatusCode, kind: &str, detail: impl Into<String>) -> Self {
        Self {
            kind: format!("/problems/{kind}"),
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            status: status.as_u16(),
            detail: detail.into(),
            errors: BTreeMap::new(),
            retry_after_secs: None,
        }
    }

    /// 422 with messages per field.
    pub fn validation(errors: BTreeMap<String, Vec<String>>) -> Self {
        Self {
            errors,
            ..Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation",
                "the request has invalid fields",
            )
        }
    }

    /// 404 for an id that does not exist.
    pub fn not_found(what: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not-found",
            format!("no such {what}"),
        )
    }

    /// 503 with `Retry-After`: a dependency is down, the request may succeed later.
    pub fn unavailable(detail: impl Into<String>) -> Self {
        Self {
            retry_after_secs: Some(5),
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", detail)
        }
    }

    /// 500 that says nothing about the cause; log the cause where it happened.
    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "an unexpected error occurred",
        )
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let retry_after = self.retry_after_secs;
        let mut response = (status, axum::Json(self)).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(secs) = retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

impl From<sqlx::Error> for Problem {
    /// A database failure: 503 when Postgres is not working or the attempt lost a
    /// conflict (trying again may succeed), an opaque 500 otherwise.
    /// The cause is logged here, once, and never sent.
    fn from(error: sqlx::Error) -> Self {
        let data_exception = matches!(&error, sqlx::Error::Database(e) if e.code().is_some_and(|c| c.starts_with("22")));
        if crate::database::is_transient(&error) {
            tracing::warn!(%error, "database unavailable");
            Self::unavailable("the database is unavailable")
        } else if data_exception {
            // SQLSTATE class 22: a value the database cannot store. Validation should
            // catch it first; this keeps it a client error all the same.
            tracing::warn!(%error, "database refused a value from the request");
            Self::new(
                StatusCode::BAD_REQUEST,
                "bad-request",
                "the request holds a value that cannot be stored",
            )
        } else {
            tracing::error!(%error, "database error");
            Self::internal()
        }
    }
}

impl From<JsonRejection> for Problem {
    fn from(rejection: JsonRejection) -> Self {
        let (status, kind) = match &rejection {
            JsonRejection::MissingJsonContentType(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported-media-type")
            }
            JsonRejection::JsonDataError(_) => (StatusCode::UNPROCESSABLE_ENTITY, "validation"),
            JsonRejection::JsonSyntaxError(_) => (StatusCode::BAD_REQUEST, "malformed-json"),
            _ if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                (StatusCode::PAYLOAD_TOO_LARGE, "body-too-large")
            }
            _ => (StatusCode::BAD_REQUEST, "bad-request"),
        };
        Self::new(status, kind, rejection.body_text())
    }
}

impl From<PathRejection> for Problem {
    fn from(rejection: PathRejection) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid-path",
            rejection.body_text(),
        )
    }
}

impl From<QueryRejection> for Problem {
    fn from(rejection: QueryRejection) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid-query",
            rejection.body_text(),
        )
    }
}

/// `axum::Json` whose rejections are problems (400, 413, 415, 422).
#[derive(Debug, axum::extract::FromRequest)]
#[from_request(via(axum::Json), rejection(Problem))]
pub struct Json<T>(pub T);

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// `axum::extract::Path` whose rejections are 400 problems (e.g. an id that is not a UUID).
#[derive(Debug, axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(Problem))]
pub struct Path<T>(pub T);

/// The media type of problem documents.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// Answers unknown routes with a 404 problem.
pub async fn route_not_found() -> Problem {
    Problem::new(StatusCode::NOT_FOUND, "not-found", "no such route")
}

/// The problem responses that many operations share, for their OpenAPI documents:
/// `responses((status = 200, body = Order), problem::responses::DatabaseDown)`. Answers
/// particular to one operation stay written out at the operation.
pub mod responses {
    use super::Problem;

    /// The database is down
    #[derive(utoipa::IntoResponses)]
    #[response(status = 503, content_type = "application/problem+json")]
    pub struct DatabaseDown(pub Problem);

    /// Redis is down
    #[derive(utoipa::IntoResponses)]
    #[response(status = 503, content_type = "application/problem+json")]
    pub struct RedisDown(pub Problem);

    /// No or a wrong admin token
    #[derive(utoipa::IntoResponses)]
    #[response(status = 401, content_type = "application/problem+json")]
    pub struct Unauthorized(pub Problem);

    /// Not a UUID
    #[derive(utoipa::IntoResponses)]
    #[response(status = 400, content_type = "application/problem+json")]
    pub struct NotAUuid(pub Problem);

    /// A JSON body that is too large or not JSON: 413 over 64 KiB, 415 not
    /// `application/json`.
    #[derive(utoipa::IntoResponses)]
    pub enum JsonBody {
        /// Body over 64 KiB
        #[response(status = 413, content_type = "application/problem+json")]
        TooLarge(Problem),
        /// Not application/json
        #[response(status = 415, content_type = "application/problem+json")]
        NotJson(Problem),
    }
}
