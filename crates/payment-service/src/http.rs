//! payment-service HTTP API (SPEC §6.2): payments and accounts, read-only here.

use axum::Router;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use serde::{Deserialize, Serialize};
use service_runtime::problem::{Json, Path, Problem};
use sqlx::PgPool;
use uuid::Uuid;

use crate::db::{self, Payment};

/// What handlers share.
#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    /// Shown for accounts not opened yet.
    pub initial_credit_cents: i64,
}

/// The payment and account routes.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/payments", get(list_payments))
        .route("/payments/{id}", get(get_payment))
        .route("/accounts/{customer_id}", get(get_account))
        .with_state(state)
}

#[derive(Debug, Deserialize)]
struct PaymentsQuery {
    order_id: Option<Uuid>,
}

/// `GET /payments?order_id=`: the order's payments (none or one).
async fn list_payments(
    State(state): State<AppState>,
    query: Result<Query<PaymentsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<Payment>>, Problem> {
    let Query(query) = query?;
    let order_id = query.order_id.ok_or_else(|| {
        Problem::new(
            StatusCode::BAD_REQUEST,
            "invalid-query",
            "the query parameter order_id is required",
        )
    })?;
    Ok(Json(db::payments_of_order(&state.pool, order_id).await?))
}

/// `GET /payments/{id}`.
async fn get_payment(
    State(state): State<AppState>,
    Path(id): Path<Uuid>,
) -> Result<Json<Payment>, Problem> {
    db::find_payment(&state.pool, id)
        .await?
        .map(Json)
        .ok_or_else(|| Problem::not_found("payment"))
}

#[derive(Debug, Serialize)]
struct AccountView {
    customer_id: String,
    balance_cents: i64,
    /// `null` until the first order sets it.
    currency: Option<String>,
}

/// `GET /accounts/{customer_id}`: an account not opened yet shows the initial credit.
async fn get_account(
    State(state): State<AppState>,
    Path(customer_id): Path<String>,
) -> Result<Json<AccountView>, Problem> {
    let view = match db::find_account(&state.pool, &customer_id).await? {
        Some(account) => AccountView {
            customer_id: account.customer_id,
            balance_cents: account.balance_cents,
            currency: Some(account.currency),
        },
        None => AccountView {
            customer_id,
            balance_cents: state.initial_credit_cents,
            currency: None,
        },
    };
    Ok(Json(view))
}
