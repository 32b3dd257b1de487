//! order-service HTTP API (SPEC §6.1). Handlers extract, validate into domain types, and
//! call one function; every error is a problem+json document.

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use service_runtime::problem::{Json, Path, Problem};
use sqlx::PgPool;
use uuid::Uuid;

use crate::db;
use crate::domain::{NewOrder, OrderRequest};
use crate::orders;

/// What handlers share.
#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
}

/// The order routes.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/orders", post(create_order))
        .route("/orders/{id}", get(get_order))
        .with_state(state)
}

/// `POST /orders`: 201 with the order and its `Location`.
async fn create_order(
    State(state): State<AppState>,
    Json(request): Json<OrderRequest>,
) -> Result<Response, Problem> {
    let order = NewOrder::try_from(request).map_err(Problem::validation)?;
    let placed = orders::place_order(&state.pool, &order).await?;
    let location = format!("/orders/{}", placed.id);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(placed),
    )
        .into_response())
}

/// `GET /orders/{id}`.
async fn get_order(
    State(state): State<AppState>,
    Path(id): Path<Uuid>,
) -> Result<Json<db::Order>, Problem> {
    db::find_order(&state.pool, id)
        .await?
        .map(Json)
        .ok_or_else(|| Problem::not_found("order"))
}
