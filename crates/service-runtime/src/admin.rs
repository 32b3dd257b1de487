//! The admin API (SPEC §6.4): dead letters of the streams this service consumes, listed
//! and replayed, plus whatever admin routes the service adds. Every route
//! needs `Authorization: Bearer $ADMIN_TOKEN` (the scheme in any case), compared by digest
//! in constant time; with no
//! `ADMIN_TOKEN` configured the routes do not exist (404), so nothing is open by default.

use std::sync::Arc;

use axum::extract::{Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::consumer::Replay;
use crate::dead_letters::{DeadLetter, DeadLetterStream, ReplayError, Replayed};
use crate::problem::responses::{RedisDown, Unauthorized};
use crate::problem::{Json, Path, Problem, route_not_found};
use crate::settings::Secret;

/// Name of the admin bearer-token scheme in the OpenAPI document.
pub const SECURITY_SCHEME: &str = "admin_token";

/// The dead letters of one consumed stream, and the consumer that replays them.
#[derive(Clone)]
pub(crate) struct DeadLetters {
    /// The logical stream they came from.
    pub stream: &'static str,
    pub dead_letters: DeadLetterStream,
    pub consumer: Arc<dyn Replay>,
}

/// The dead letters of every consumed stream, the first one's by default.
#[derive(Clone)]
struct Consumed(Arc<Vec<DeadLetters>>);

impl Consumed {
    /// The dead letters of `stream`, or of the first consumed stream if none is named.
    fn of(&self, stream: Option<&str>) -> Result<&DeadLetters, Problem> {
        let found = match stream {
            None => self.0.first(),
            Some(name) => self.0.iter().find(|d| d.stream == name),
        };
        found.ok_or_else(|| Problem::not_found("consumed stream"))
    }
}

/// Puts `admin_routes` and the dead-letter routes behind the admin token.
pub(crate) fn router(
    dead_letters: Vec<DeadLetters>,
    admin_routes: OpenApiRouter,
    token: Option<Secret>,
) -> OpenApiRouter {
    let state = Consumed(Arc::new(dead_letters));
    OpenApiRouter::new()
        .routes(routes!(list_dead_letters))
        .routes(routes!(replay_dead_letter))
        .with_state(state)
        .merge(admin_routes)
        .route_layer(middleware::from_fn_with_state(token, require_admin))
}

async fn require_admin(
    State(token): State<Option<Secret>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(token) = token else {
        return route_not_found().await.into_response();
    };
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(bearer_token);
    match presented {
        Some(presented) if token_matches(presented, &token) => next.run(request).await,
        _ => {
            let mut response = Problem::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "a valid admin bearer token is required",
            )
            .into_response();
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            response
        }
    }
}

/// The token of an `Authorization` value of the Bearer scheme, whose name is
/// case-insensitive (RFC 9110 §11.1).
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim_start();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Compares the SHA-256 digests of the two, without an early exit: the time taken says
/// nothing about the token, not even its length.
fn token_matches(presented: &str, token: &Secret) -> bool {
    let (presented, expected) = (Sha256::digest(presented), Sha256::digest(token.expose()));
    presented
        .iter()
        .zip(expected.iter())
        .fold(0u8, |diff, (x, y)| diff | (x ^ y))
        == 0
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// At most this many (default 100, at most 1000).
    limit: Option<usize>,
    /// Which consumed stream (logical name); the first the service consumes if absent.
    stream: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct StreamQuery {
    /// Which consumed stream (logical name); the first the service consumes if absent.
    stream: Option<String>,
}

fn redis_problem(error: redis::RedisError) -> Problem {
    tracing::warn!(%error, "admin: Redis failed");
    Problem::unavailable("Redis is unavailable")
}

/// Dead letters of a stream this service consumes, oldest first.
#[utoipa::path(get, path = "/admin/dlq", tag = "admin", params(ListQuery), security(("admin_token" = [])),
    responses(
        (status = 200, body = Vec<DeadLetter>),
        Unauthorized,
        (status = 404, body = Problem, content_type = "application/problem+json", description = "Not a stream this service consumes"),
        RedisDown,
    ))]
async fn list_dead_letters(
    State(consumed): State<Consumed>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<DeadLetter>>, Problem> {
    let Query(query) = query?;
    let dead = consumed.of(query.stream.as_deref())?;
    let limit = query.limit.unwrap_or(100).clamp(1, 1000);
    Ok(Json(
        dead.dead_letters.list(limit).await.map_err(redis_problem)?,
    ))
}

/// Hands a dead letter's original entry to this service's consumer, as if just delivered,
/// and removes the dead letter once it is settled: `applied`, `duplicate` (the event
/// keeps its `event_id`, so something applied meanwhile has no second effect), `skipped`,
/// or `dead_lettered` again with the new error. Nothing is written to the stream.
#[utoipa::path(post, path = "/admin/dlq/{entry_id}/replay", tag = "admin", security(("admin_token" = [])),
    params(("entry_id" = String, Path, description = "Id of the dead letter, e.g. 1700000000000-0"), StreamQuery),
    responses(
        (status = 200, body = Replayed),
        (status = 400, body = Problem, content_type = "application/problem+json", description = "Not an entry id"),
        Unauthorized,
        (status = 404, body = Problem, content_type = "application/problem+json", description = "No such dead letter, or not a stream this service consumes"),
        (status = 409, body = Problem, content_type = "application/problem+json", description = "Not a dead letter written by this service"),
        (status = 503, body = Problem, content_type = "application/problem+json", description = "Redis or the database is unavailable; the dead letter is kept"),
    ))]
async fn replay_dead_letter(
    State(consumed): State<Consumed>,
    Path(entry_id): Path<String>,
    query: Result<Query<StreamQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Replayed>, Problem> {
    let Query(query) = query?;
    let dead = consumed.of(query.stream.as_deref())?;
    let valid_id = entry_id.split_once('-').is_some_and(|(ms, seq)| {
        !ms.is_empty()
            && !seq.is_empty()
            && ms.bytes().chain(seq.bytes()).all(|b| b.is_ascii_digit())
    });
    if !valid_id {
        return Err(Problem::new(
            StatusCode::BAD_REQUEST,
            "invalid-path",
            "entry ids look like 1700000000000-0",
        ));
    }
    match dead
        .dead_letters
        .replay(&entry_id, dead.consumer.as_ref())
        .await
    {
        Ok(replayed) => Ok(Json(replayed)),
        Err(ReplayError::NotFound) => Err(Problem::not_found("dead letter")),
        Err(e @ ReplayError::NotReplayable) => Err(Problem::new(
            StatusCode::CONFLICT,
            "not-replayable",
            e.to_string(),
        )),
        Err(ReplayError::Redis(e)) => Err(redis_problem(e)),
        Err(e @ (ReplayError::Unfinished | ReplayError::Consume(_))) => {
            tracing::warn!(error = %e, "admin: replay not finished");
            Err(Problem::unavailable(
                "the event could not be applied now; the dead letter is kept",
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scheme_is_case_insensitive() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer abc"), Some("abc"));
        assert_eq!(bearer_token("BEARER  abc"), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearer"), None);
        assert_eq!(bearer_token("Bearer "), None);
    }

    #[test]
    fn compares_tokens() {
        let token = crate::settings::admin_token("0123456789abcdef").expect("a token");
        assert!(token_matches("0123456789abcdef", &token));
        assert!(!token_matches("0123456789abcdeg", &token));
        assert!(!token_matches("0123456789abcdef0", &token));
        assert!(!token_matches("", &token));
    }
}
