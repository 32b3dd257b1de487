//! payment-service HTTP API (SPEC §6.2): payments, accounts, and deposits (admin). Each
//! route is registered with its OpenAPI operation, so the served document cannot drift
//! from the router.

use std::collections::BTreeMap;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use service_runtime::idempotency;
use service_runtime::problem::responses::{DatabaseDown, JsonBody, NotAUuid, Unauthorized};
use service_runtime::problem::{Json, Path, Problem};
use sqlx::PgPool;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use events::text::check_identifier;

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
pub fn router(state: AppState) -> OpenApiRouter {
    OpenApiRouter::new()
        .routes(routes!(list_payments))
        .routes(routes!(get_payment))
        .routes(routes!(get_account))
        .with_state(state)
}

/// The routes that need the admin token.
pub fn admin_router(state: AppState) -> OpenApiRouter {
    OpenApiRouter::new()
        .routes(routes!(deposit))
        .with_state(state)
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct PaymentsQuery {
    /// The order whose payments to list (required).
    order_id: Option<Uuid>,
}

/// The payments of an order: none, or one (refunded or not).
#[utoipa::path(get, path = "/payments", tag = "payments", params(PaymentsQuery),
    responses(
        (status = 200, body = Vec<Payment>),
        (status = 400, body = Problem, content_type = "application/problem+json", description = "order_id missing or not a UUID"),
        DatabaseDown,
    ))]
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

/// One payment.
#[utoipa::path(get, path = "/payments/{id}", tag = "payments",
    params(("id" = Uuid, Path, description = "Payment id")),
    responses(
        (status = 200, body = Payment),
        NotAUuid,
        (status = 404, body = Problem, content_type = "application/problem+json", description = "No such payment"),
        DatabaseDown,
    ))]
async fn get_payment(
    State(state): State<AppState>,
    Path(id): Path<Uuid>,
) -> Result<Json<Payment>, Problem> {
    db::find_payment(&state.pool, id)
        .await?
        .map(Json)
        .ok_or_else(|| Problem::not_found("payment"))
}

/// A customer's account; one not opened yet shows the initial credit and no currency.
#[utoipa::path(get, path = "/accounts/{customer_id}", tag = "accounts",
    params(("customer_id" = String, Path, description = "Customer id")),
    responses(
        (status = 200, body = Account),
        (status = 400, body = Problem, content_type = "application/problem+json", description = "Not a valid customer id"),
        DatabaseDown,
    ))]
async fn get_account(
    State(state): State<AppState>,
    Path(customer_id): Path<String>,
) -> Result<Json<Account>, Problem> {
    if let Err(message) = check_identifier(&customer_id) {
        return Err(Problem::new(
            StatusCode::BAD_REQUEST,
            "invalid-path",
            format!("customer_id {message}"),
        ));
    }
    let account = db::find_account(&state.pool, &customer_id).await?;
    Ok(Json(account.unwrap_or(Account {
        customer_id,
        balance_cents: state.initial_credit_cents,
        currency: None,
    })))
}

/// The body of a deposit.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
struct DepositRequest {
    #[schema(minimum = 1, maximum = 1000000000000_i64)]
    amount_cents: i64,
}

/// The largest single deposit, in minor units.
pub const MAX_DEPOSIT_CENTS: i64 = 1_000_000_000_000;

impl From<DepositError> for Problem {
    fn from(error: DepositError) -> Self {
        match error {
            DepositError::BalanceOutOfRange => Problem::validation(BTreeMap::from([(
                "amount_cents".to_owned(),
                vec![error.to_string()],
            )])),
            DepositError::KeyReused => idempotency::key_reused(),
            DepositError::Database(e) => e.into(),
        }
    }
}

/// Adds funds to a customer's account (admin).
#[utoipa::path(post, path = "/accounts/{customer_id}/deposits", tag = "accounts", request_body = DepositRequest,
    security(("admin_token" = [])),
    params(("customer_id" = String, Path, description = "Customer id, 1 to 64 characters"),
        ("Idempotency-Key" = Option<String>, Header, description = "1 to 255 visible ASCII characters; makes the request safe to retry")),
    responses(
        (status = 200, body = Account, description = "The account after the deposit (or, replayed, as it stands)"),
        (status = 400, body = Problem, content_type = "application/problem+json", description = "Malformed JSON or Idempotency-Key"),
        Unauthorized,
        JsonBody,
        (status = 422, body = Problem, content_type = "application/problem+json", description = "Invalid amount or customer id, the balance would pass its ceiling, or the key was used with another request"),
        DatabaseDown,
    ))]
async fn deposit(
    State(state): State<AppState>,
    Path(customer_id): Path<String>,
    headers: HeaderMap,
    Json(request): Json<DepositRequest>,
) -> Result<Response, Problem> {
    let key = idempotency::idempotency_key(&headers)?;
    let mut errors = BTreeMap::new();
    if !(1..=MAX_DEPOSIT_CENTS).contains(&request.amount_cents) {
        errors.insert(
            "amount_cents".to_owned(),
            vec![format!("must be 1 to {MAX_DEPOSIT_CENTS}")],
        );
    }
    if let Err(message) = check_identifier(&customer_id) {
        errors.insert("customer_id".to_owned(), vec![message]);
    }
    if !errors.is_empty() {
        return Err(Problem::validation(errors));
    }
    let deposited = accounts::deposit(
        &state.pool,
        &customer_id,
        request.amount_cents,
        state.initial_credit_cents,
        key,
    )
    .await?;
    let mut response = Json(deposited.account).into_response();
    if deposited.replayed {
        idempotency::mark_replayed(response.headers_mut());
    }
    Ok(response)
}
