//! Every query of the payment database, one function each. Functions that take a
//! `&mut PgConnection` run inside the caller's transaction.

use serde::Serialize;
use sqlx::{PgConnection, PgPool};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::domain::OrderPaymentState;

/// A customer's account, as stored and as `GET /accounts/{customer_id}` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Account {
    pub customer_id: String,
    pub balance_cents: i64,
    /// `None` until the first order sets it.
    pub currency: Option<String>,
}

/// A charge of one order, as stored and as `GET /payments/{id}` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Payment {
    pub id: Uuid,
    pub order_id: Uuid,
    pub customer_id: String,
    pub amount_cents: i64,
    pub currency: String,
    pub status: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub refunded_at: Option<OffsetDateTime>,
}

/// The saga state of one order on this side.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct OrderPayment {
    #[sqlx(try_from = "String")]
    pub state: OrderPaymentState,
    pub payment_id: Option<Uuid>,
}

/// Claims the order's saga row, inserting it as `NEW` if the order was never seen, and
/// locks it until the transaction ends: every handler of one order is serialised here.
/// Returns what was decided so far (`None` for a new order).
#[tracing::instrument(level = "debug", skip_all, fields(order_id = %order_id))]
pub async fn claim_order(
    conn: &mut PgConnection,
    order_id: Uuid,
    customer_id: &str,
) -> sqlx::Result<Option<OrderPayment>> {
    let (state, payment_id): (String, Option<Uuid>) = sqlx::query_as(
        "INSERT INTO order_payments (order_id, customer_id, state) VALUES ($1, $2, 'NEW')
         ON CONFLICT (order_id) DO UPDATE SET order_id = EXCLUDED.order_id
         RETURNING state, payment_id",
    )
    .bind(order_id)
    .bind(customer_id)
    .fetch_one(conn)
    .await?;
    if state == "NEW" {
        return Ok(None);
    }
    let state = OrderPaymentState::try_from(state).map_err(|e| sqlx::Error::Decode(e.into()))?;
    Ok(Some(OrderPayment { state, payment_id }))
}

/// Records the saga state of `order_id`.
pub async fn set_order_payment(
    conn: &mut PgConnection,
    order_id: Uuid,
    customer_id: &str,
    state: OrderPaymentState,
    payment_id: Option<Uuid>,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO order_payments (order_id, customer_id, state, payment_id) VALUES ($1, $2, $3, $4)
         ON CONFLICT (order_id) DO UPDATE
         SET state = EXCLUDED.state, payment_id = COALESCE(EXCLUDED.payment_id, order_payments.payment_id),
             updated_at = now()",
    )
    .bind(order_id)
    .bind(customer_id)
    .bind(state.as_str())
    .bind(payment_id)
    .execute(conn)
    .await?;
    Ok(())
}

/// The customer's account, opened with `initial_credit_cents` if it does not exist yet,
/// its currency set to `currency` if it had none, and locked for the rest of the
/// transaction.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn open_and_lock_account(
    conn: &mut PgConnection,
    customer_id: &str,
    initial_credit_cents: i64,
    currency: &str,
) -> sqlx::Result<Account> {
    // DO UPDATE rather than DO NOTHING: it locks and returns the row in one round trip
    // whether it was just created or not.
    sqlx::query_as(
        "INSERT INTO accounts (customer_id, balance_cents, currency) VALUES ($1, $2, $3)
         ON CONFLICT (customer_id) DO UPDATE SET currency = COALESCE(accounts.currency, EXCLUDED.currency)
         RETURNING customer_id, balance_cents, currency",
    )
    .bind(customer_id)
    .bind(initial_credit_cents)
    .bind(currency)
    .fetch_one(conn)
    .await
}

/// Adds `delta_cents` (negative to debit) to the balance.
pub async fn adjust_balance(
    conn: &mut PgConnection,
    customer_id: &str,
    delta_cents: i64,
) -> sqlx::Result<()> {
    sqlx::query("UPDATE accounts SET balance_cents = balance_cents + $2, updated_at = now() WHERE customer_id = $1")
        .bind(customer_id)
        .bind(delta_cents)
        .execute(conn)
        .await?;
    Ok(())
}

/// Charges the order in one statement: records the payment, debits the account, and
/// marks the order `PAID` with it. The account must be locked (see
/// [`open_and_lock_account`]) and hold enough.
#[tracing::instrument(level = "debug", skip_all, fields(order_id = %order_id))]
pub async fn charge(
    conn: &mut PgConnection,
    payment_id: Uuid,
    order_id: Uuid,
    customer_id: &str,
    amount_cents: i64,
    currency: &str,
) -> sqlx::Result<()> {
    sqlx::query(
        "WITH payment AS (
             INSERT INTO payments (id, order_id, customer_id, amount_cents, currency)
             VALUES ($1, $2, $3, $4, $5)
         ), debit AS (
             UPDATE accounts SET balance_cents = balance_cents - $4, updated_at = now()
             WHERE customer_id = $3
         )
         UPDATE order_payments SET state = 'PAID', payment_id = $1, updated_at = now()
         WHERE order_id = $2",
    )
    .bind(payment_id)
    .bind(order_id)
    .bind(customer_id)
    .bind(amount_cents)
    .bind(currency)
    .execute(conn)
    .await?;
    Ok(())
}

/// Marks a completed payment refunded and returns it.
pub async fn refund_payment(conn: &mut PgConnection, id: Uuid) -> sqlx::Result<Payment> {
    sqlx::query_as(
        "UPDATE payments SET status = 'REFUNDED', refunded_at = now() WHERE id = $1 AND status = 'COMPLETED'
         RETURNING *",
    )
    .bind(id)
    .fetch_one(conn)
    .await
}

/// The payment with id `id`, if any.
pub async fn find_payment(pool: &PgPool, id: Uuid) -> sqlx::Result<Option<Payment>> {
    sqlx::query_as("SELECT * FROM payments WHERE id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await
}

/// The payments of an order (at most one, by constraint).
pub async fn payments_of_order(pool: &PgPool, order_id: Uuid) -> sqlx::Result<Vec<Payment>> {
    sqlx::query_as("SELECT * FROM payments WHERE order_id = $1 ORDER BY created_at")
        .bind(order_id)
        .fetch_all(pool)
        .await
}

/// The customer's account, if it was opened.
pub async fn find_account(pool: &PgPool, customer_id: &str) -> sqlx::Result<Option<Account>> {
    sqlx::query_as(
        "SELECT customer_id, balance_cents, currency FROM accounts WHERE customer_id = $1",
    )
    .bind(customer_id)
    .fetch_optional(pool)
    .await
}

/// Marks the published outcomes of `order_id` for re-publishing (same `event_id`s).
/// Returns how many.
pub async fn rearm_outcomes(conn: &mut PgConnection, order_id: Uuid) -> sqlx::Result<u64> {
    let rearmed = sqlx::query(
        "UPDATE outbox SET published_at = NULL WHERE order_id = $1 AND published_at IS NOT NULL",
    )
    .bind(order_id)
    .execute(conn)
    .await?;
    Ok(rearmed.rows_affected())
}

/// Adds a deposit to the customer's account (opened with `initial_credit_cents` if new)
/// and returns the account.
pub async fn deposit(
    conn: &mut PgConnection,
    customer_id: &str,
    amount_cents: i64,
    initial_credit_cents: i64,
) -> sqlx::Result<Account> {
    let account = sqlx::query_as(
        "INSERT INTO accounts (customer_id, balance_cents) VALUES ($1, $2 + $3)
         ON CONFLICT (customer_id) DO UPDATE
         SET balance_cents = accounts.balance_cents + $3, updated_at = now()
         RETURNING customer_id, balance_cents, currency",
    )
    .bind(customer_id)
    .bind(initial_credit_cents)
    .bind(amount_cents)
    .fetch_one(&mut *conn)
    .await?;
    sqlx::query("INSERT INTO deposits (id, customer_id, amount_cents) VALUES ($1, $2, $3)")
        .bind(Uuid::now_v7())
        .bind(customer_id)
        .bind(amount_cents)
        .execute(conn)
        .await?;
    Ok(account)
}
