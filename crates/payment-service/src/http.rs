//! payment-service HTTP API (SPEC §6.2): payments, accounts, and deposits (admin).

use axum::Router;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use serde::Deserialize;
use service_runtime::problem::{Json, Path, Problem};
use sqlx::PgPool;
use uuid::Uuid;

use crate::accounts::{self, DepositError};
use crate::db::{self, Account, Payment};

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

/// The routes that need the admin token.
pub fn admin_router(state: AppState) -> Router {
    Router::new()
        .route("/accounts/{customer_id}/deposits", post(deposit))
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

/// `GET /accounts/{customer_id}`: an account not opened yet shows the initial credit
/// and no currency.
async fn get_account(
    State(state): State<AppState>,
    Path(customer_id): Path<String>,
) -> Result<Json<Account>, Problem> {
    let account = db::find_account(&state.pool, &customer_id).await?;
    Ok(Json(account.unwrap_or(Account {
        customer_id,
        balance_cents: state.initial_credit_cents,
        currency: None,
    })))
}

/// The body of a deposit.
#[derive(Debug, Deserialize)]
struct DepositRequest {
    amount_cents: i64,
}

/// The largest single deposit, in minor units.
pub const MAX_DEPOSIT_CENTS: i64 = 1_000_000_000_000;

impl From<DepositError> for Problem {
    fn from(error: DepositError) -> Self {
        match error {
            DepositError::BalanceOutOfRange => {
                let mut errors = std::collections::BTreeMap::new();
                errors.insert("amount_cents".to_owned(), vec![error.to_string()]);
                Problem::validation(errors)
            }
            DepositError::Database(e) => e.into(),
        }
    }
}

/// `POST /accounts/{customer_id}/deposits` (admin): adds funds, answers the account.
async fn deposit(
    State(state): State<AppState>,
    Path(customer_id): Path<String>,
    Json(request): Json<DepositRequest>,
) -> Result<Json<Account>, Problem> {
    let mut errors = std::collections::BTreeMap::new();
    if !(1..=MAX_DEPOSIT_CENTS).contains(&request.amount_cents) {
        errors.insert(
            "amount_cents".to_owned(),
            vec![format!("must be 1 to {MAX_DEPOSIT_CENTS}")],
        );
    }
    let chars = customer_id.chars().count();
    if chars == 0 || chars > 64 || customer_id.trim().is_empty() {
        errors.insert(
            "customer_id".to_owned(),
            vec!["must be 1 to 64 characters, not blank".to_owned()],
        );
    }
    if !errors.is_empty() {
        return Err(Problem::validation(errors));
    }
    let account = accounts::deposit(
        &state.pool,
        &customer_id,
        request.amount_cents,
        state.initial_credit_cents,
    )
    .await?;
    Ok(Json(account))
}
