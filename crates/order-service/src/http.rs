//! order-service HTTP API (SPEC §6.1). Handlers extract, validate into domain types, and
//! call one use case; every error is a problem+json document. Each route is registered
//! with its OpenAPI operation, so the served document cannot drift from the router.

use axum::extract::State;
use axum::extract::rejection::QueryRejection;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use events::EventWriter;
use serde::{Deserialize, Serialize};
use service_runtime::idempotency;
use service_runtime::problem::responses::{DatabaseDown, JsonBody, NotAUuid};
use service_runtime::problem::{Json, Path, Problem};
use sqlx::PgPool;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::db::{self, OrderFilter};
use crate::domain::{NewOrder, Order, OrderRequest, OrderStatus};
use crate::orders::{self, CancelError};
use crate::placing::{PlaceError, Placing};
use service_runtime::outbox::RelayQueue;

/// Page size of `GET /orders` when none is asked for, and the most it gives.
pub const DEFAULT_PAGE: i64 = 20;
pub const MAX_PAGE: i64 = 100;

/// What handlers share.
#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    /// Handed the event of a cancellation once it committed.
    pub relay: RelayQueue,
    pub placing: Placing,
    /// How a cancellation's event is written.
    pub writer: EventWriter,
}

/// The order routes.
pub fn router(state: AppState) -> OpenApiRouter {
    OpenApiRouter::new()
        .routes(routes!(create_order, list_orders))
        .routes(routes!(get_order))
        .routes(routes!(cancel_order))
        .with_state(state)
}

impl From<PlaceError> for Problem {
    fn from(error: PlaceError) -> Self {
        match error {
            PlaceError::KeyReused => idempotency::key_reused(),
            PlaceError::Database(e) => e.into(),
        }
    }
}

impl From<CancelError> for Problem {
    fn from(error: CancelError) -> Self {
        match error {
            CancelError::NotFound => Problem::not_found("order"),
            CancelError::Conflict(_) => {
                Problem::new(StatusCode::CONFLICT, "conflict", error.to_string())
            }
            CancelError::Database(e) => e.into(),
        }
    }
}

/// Places an order: `PENDING` until payment-service answers. A repeat with the same
/// `Idempotency-Key` and body gets the same order back (`Idempotent-Replayed: true`).
#[utoipa::path(post, path = "/orders", tag = "orders", request_body = OrderRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "1 to 255 visible ASCII characters; makes the request safe to retry")),
    responses(
        (status = 201, body = Order, description = "Placed (or replayed)",
         headers(("Location" = String, description = "/orders/{id}"))),
        (status = 400, body = Problem, content_type = "application/problem+json", description = "Malformed JSON or Idempotency-Key"),
        JsonBody,
        (status = 422, body = Problem, content_type = "application/problem+json", description = "Invalid fields, or the key was used with another body"),
        DatabaseDown,
    ))]
async fn create_order(
    State(state): State<AppState>,
    headers: HeaderMap,
    Json(request): Json<OrderRequest>,
) -> Result<Response, Problem> {
    let key = idempotency::idempotency_key(&headers)?;
    let order = NewOrder::try_from(request).map_err(Problem::validation)?;
    let placed = state.placing.place(order, key).await?;
    let location = format!("/orders/{}", placed.order.id);
    let mut response = (
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(placed.order),
    )
        .into_response();
    if placed.replayed {
        idempotency::mark_replayed(response.headers_mut());
    }
    Ok(response)
}

/// One order.
#[utoipa::path(get, path = "/orders/{id}", tag = "orders",
    params(("id" = Uuid, Path, description = "Order id")),
    responses(
        (status = 200, body = Order),
        NotAUuid,
        (status = 404, body = Problem, content_type = "application/problem+json", description = "No such order"),
        DatabaseDown,
    ))]
async fn get_order(
    State(state): State<AppState>,
    Path(id): Path<Uuid>,
) -> Result<Json<Order>, Problem> {
    db::find_order(&state.pool, id)
        .await?
        .map(Json)
        .ok_or_else(|| Problem::not_found("order"))
}

/// Cancels a `PENDING` or `PAID` order (a paid one is refunded by payment-service).
#[utoipa::path(post, path = "/orders/{id}/cancel", tag = "orders",
    params(("id" = Uuid, Path, description = "Order id")),
    responses(
        (status = 200, body = Order, description = "Cancelled"),
        NotAUuid,
        (status = 404, body = Problem, content_type = "application/problem+json", description = "No such order"),
        (status = 409, body = Problem, content_type = "application/problem+json", description = "Already PAYMENT_FAILED or CANCELLED"),
        DatabaseDown,
    ))]
async fn cancel_order(
    State(state): State<AppState>,
    Path(id): Path<Uuid>,
) -> Result<Json<Order>, Problem> {
    Ok(Json(
        orders::cancel_order(&state.pool, &state.relay, &state.writer, id).await?,
    ))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// Only this customer's orders.
    customer_id: Option<String>,
    /// Only orders in this status: PENDING, PAID, PAYMENT_FAILED or CANCELLED.
    status: Option<String>,
    /// Page size: 20 by default, at most 100.
    #[param(minimum = 1)]
    limit: Option<i64>,
    /// The `next_after` of the previous page.
    after: Option<Uuid>,
}

/// A page of orders and the cursor of the next one.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct OrderPage {
    orders: Vec<Order>,
    /// Pass as `after` for the next page; `null` on the last page.
    next_after: Option<Uuid>,
}

/// Orders, oldest first, keyset-paginated by id, so a page is stable while orders are
/// added.
#[utoipa::path(get, path = "/orders", tag = "orders", params(ListQuery),
    responses(
        (status = 200, body = OrderPage),
        (status = 400, body = Problem, content_type = "application/problem+json", description = "An invalid parameter"),
        DatabaseDown,
    ))]
async fn list_orders(
    State(state): State<AppState>,
    query: Result<axum::extract::Query<ListQuery>, QueryRejection>,
) -> Result<Json<OrderPage>, Problem> {
    let axum::extract::Query(query) = query?;
    let status = match query.status.as_deref() {
        None => None,
        Some(text) => Some(OrderStatus::parse(text).ok_or_else(|| {
            Problem::new(
                StatusCode::BAD_REQUEST,
                "invalid-query",
                format!("unknown status {text:?}"),
            )
        })?),
    };
    let limit = match query.limit {
        None => DEFAULT_PAGE,
        Some(limit) if limit >= 1 => limit.min(MAX_PAGE),
        Some(_) => {
            return Err(Problem::new(
                StatusCode::BAD_REQUEST,
                "invalid-query",
                "limit must be at least 1",
            ));
        }
    };
    let filter = OrderFilter {
        customer_id: query.customer_id,
        status,
        after: query.after,
        limit,
    };
    let orders = db::list_orders(&state.pool, &filter).await?;
    let next_after = (orders.len() as i64 == limit)
        .then(|| orders.last().map(|o| o.id))
        .flatten();
    Ok(Json(OrderPage { orders, next_after }))
}
