//! Every query of the payment database, one function each. Functions that take a
//! `&mut PgConnection` run inside the caller's transaction.

use std::collections::{BTreeMap, HashMap};
use std::sync::LazyLock;

use events::FailureReason;
use serde::Serialize;
use service_runtime::outbox::{BindOutboxRows, OutboxRow};
use sqlx::migrate::Migrator;
use sqlx::{PgConnection, PgPool};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::domain::{OrderPaymentState, PaymentStatus};

/// The payment database's migrations (the runtime's outbox and inbox, then
/// `migrations/payment`), embedded in the binary and run at start-up.
pub static MIGRATOR: LazyLock<Migrator> = LazyLock::new(|| {
    service_runtime::schema::with_runtime(&sqlx::migrate!("../../migrations/payment"))
});

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
    #[sqlx(try_from = "String")]
    pub status: PaymentStatus,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub refunded_at: Option<OffsetDateTime>,
}

/// The columns of a payment, as [`Payment`] reads them. Named, never `*`: a column that
/// a later release adds must not change what this release's prepared statements return,
/// or a replica of it still running during the rolling upgrade fails on every one
/// ("cached plan must not change result type").
macro_rules! payment_columns {
    () => {
        "id, order_id, customer_id, amount_cents, currency, status, created_at, refunded_at"
    };
}

/// The saga state of one order on this side, with the answers it gave (SPEC §4.9): a
/// question asked again is answered from them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderPayment {
    pub state: OrderPaymentState,
    pub payment_id: Option<Uuid>,
    /// The `event_id` of the answer to the order's `OrderCreated`, once one was given.
    pub created_answer: Option<Uuid>,
    /// The `event_id` of the answer to its cancellation, once one was given.
    pub cancelled_answer: Option<Uuid>,
    /// Why it was not charged, when the answer to its `OrderCreated` was `PaymentFailed`.
    pub decline_reason: Option<FailureReason>,
}

impl OrderPayment {
    /// An order just decided, with no answer recorded yet.
    pub fn new(state: OrderPaymentState) -> Self {
        Self {
            state,
            payment_id: None,
            created_answer: None,
            cancelled_answer: None,
            decline_reason: None,
        }
    }
}

/// A saga row as `claim_orders` reads it.
type SagaRow = (
    Uuid,
    String,
    String,
    Option<Uuid>,
    Option<Uuid>,
    Option<Uuid>,
    Option<String>,
);

/// The saga rows of a batch's orders, claimed and locked by [`claim_orders`].
#[derive(Debug, Default)]
pub struct ClaimedOrders {
    /// What was decided so far for each order (`None` for a new one).
    pub states: HashMap<Uuid, Option<OrderPayment>>,
    /// The customer each order belongs to: the one its first event named.
    pub customers: HashMap<Uuid, String>,
}

/// Claims the saga rows of `orders` (order id → customer), inserting each as `NEW` if the
/// order was never seen, and locks them until the transaction ends (in order-id order,
/// so transactions claiming several never deadlock): every handler of one order is
/// serialised here.
#[tracing::instrument(level = "debug", skip_all, fields(orders = orders.len()))]
pub async fn claim_orders(
    conn: &mut PgConnection,
    orders: &BTreeMap<Uuid, &str>,
) -> sqlx::Result<ClaimedOrders> {
    let rows: Vec<SagaRow> = sqlx::query_as(
        "INSERT INTO order_payments (order_id, customer_id, state)
         SELECT order_id, customer_id, 'NEW'
         FROM unnest($1::uuid[], $2::text[]) WITH ORDINALITY AS t(order_id, customer_id, n)
         ORDER BY n
         ON CONFLICT (order_id) DO UPDATE SET order_id = EXCLUDED.order_id
         RETURNING order_id, customer_id, state, payment_id,
                   created_answer_id, cancelled_answer_id, decline_reason",
    )
    .bind(orders.keys().copied().collect::<Vec<_>>())
    .bind(orders.values().copied().collect::<Vec<_>>())
    .fetch_all(conn)
    .await?;
    let mut claimed = ClaimedOrders::default();
    for (order_id, customer_id, state, payment_id, created, cancelled, reason) in rows {
        claimed.customers.insert(order_id, customer_id);
        let decided = if state == "NEW" {
            None
        } else {
            let state =
                OrderPaymentState::try_from(state).map_err(|e| sqlx::Error::Decode(e.into()))?;
            Some(OrderPayment {
                state,
                payment_id,
                created_answer: created,
                cancelled_answer: cancelled,
                decline_reason: reason.map(FailureReason::from),
            })
        };
        claimed.states.insert(order_id, decided);
    }
    Ok(claimed)
}

/// The accounts of `customers` (customer → currency of their first order here), each
/// opened with `initial_credit_cents` if it does not exist yet, its currency set if it
/// had none, and locked for the rest of the transaction (in customer order).
#[tracing::instrument(level = "debug", skip_all, fields(accounts = customers.len()))]
pub async fn open_and_lock_accounts(
    conn: &mut PgConnection,
    customers: &BTreeMap<&str, Option<&str>>,
    initial_credit_cents: i64,
) -> sqlx::Result<Vec<Account>> {
    // DO UPDATE rather than DO NOTHING: it locks and returns each row in the same
    // statement whether it was just created or not.
    sqlx::query_as(
        "INSERT INTO accounts (customer_id, balance_cents, currency)
         SELECT customer_id, $3, currency
         FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS t(customer_id, currency, n)
         ORDER BY n
         ON CONFLICT (customer_id) DO UPDATE SET currency = COALESCE(accounts.currency, EXCLUDED.currency)
         RETURNING customer_id, balance_cents, currency",
    )
    .bind(customers.keys().copied().collect::<Vec<_>>())
    .bind(customers.values().copied().collect::<Vec<_>>())
    .bind(initial_credit_cents)
    .fetch_all(conn)
    .await
}

/// The payments with these ids.
pub async fn payments_by_id(conn: &mut PgConnection, ids: &[Uuid]) -> sqlx::Result<Vec<Payment>> {
    sqlx::query_as(concat!(
        "SELECT ",
        payment_columns!(),
        " FROM payments WHERE id = ANY($1)"
    ))
    .bind(ids)
    .fetch_all(conn)
    .await
}

/// What a batch of order events decided, to be written in one statement.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settlement {
    /// Payments made now (`REFUNDED` if cancelled within the same batch).
    pub new_payments: Vec<NewPayment>,
    /// Earlier payments credited back now.
    pub refunded: Vec<Uuid>,
    /// What to add to each balance (negative: debit).
    pub balance_deltas: BTreeMap<String, i64>,
    /// The new saga state of each order the batch changed.
    pub orders: BTreeMap<Uuid, OrderPayment>,
}

/// A payment made by a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewPayment {
    pub id: Uuid,
    pub order_id: Uuid,
    pub customer_id: String,
    pub amount_cents: i64,
    pub currency: String,
    pub refunded: bool,
}

/// Writes `settlement` and its `answers` (outbox rows) in one statement: new payments,
/// refunds, balances, saga states and the events that tell them. The orders and accounts
/// must be locked ([`claim_orders`], [`open_and_lock_accounts`]).
#[tracing::instrument(level = "debug", skip_all, fields(orders = settlement.orders.len()))]
pub async fn settle(
    conn: &mut PgConnection,
    settlement: &Settlement,
    answers: &[OutboxRow],
) -> sqlx::Result<()> {
    /// The answers queued (`$1`-`$6`), the new payments (`$7`-`$12`), the refunds
    /// (`$13`), the balance changes (`$14`-`$15`) and the orders' new states
    /// (`$16`-`$21`), in one statement.
    const SETTLE: &str = concat!(
        "WITH ",
        service_runtime::queue_outbox_rows!(),
        "new_payments AS (
             INSERT INTO payments (id, order_id, customer_id, amount_cents, currency, status, refunded_at)
             SELECT id, order_id, customer_id, amount_cents, currency,
                    CASE WHEN refunded THEN 'REFUNDED' ELSE 'COMPLETED' END,
                    CASE WHEN refunded THEN now() END
             FROM unnest($7::uuid[], $8::uuid[], $9::text[], $10::bigint[], $11::text[], $12::bool[])
                  AS t(id, order_id, customer_id, amount_cents, currency, refunded)
         ), refunds AS (
             UPDATE payments SET status = 'REFUNDED', refunded_at = now()
             WHERE id = ANY($13) AND status = 'COMPLETED'
         ), balances AS (
             UPDATE accounts a SET balance_cents = a.balance_cents + t.delta, updated_at = now()
             FROM unnest($14::text[], $15::bigint[]) AS t(customer_id, delta)
             WHERE a.customer_id = t.customer_id
         )
         UPDATE order_payments o
         SET state = t.state, payment_id = t.payment_id, created_answer_id = t.created,
             cancelled_answer_id = t.cancelled, decline_reason = t.reason, updated_at = now()
         FROM unnest($16::uuid[], $17::text[], $18::uuid[], $19::uuid[], $20::uuid[], $21::text[])
              AS t(order_id, state, payment_id, created, cancelled, reason)
         WHERE o.order_id = t.order_id"
    );
    let payments = &settlement.new_payments;
    let (order_ids, orders): (Vec<Uuid>, Vec<&OrderPayment>) = settlement.orders.iter().unzip();
    let deltas = &settlement.balance_deltas;
    sqlx::query(SETTLE)
        .bind_outbox_rows(&answers.iter().collect::<Vec<_>>())
        .bind(payments.iter().map(|p| p.id).collect::<Vec<_>>())
        .bind(payments.iter().map(|p| p.order_id).collect::<Vec<_>>())
        .bind(
            payments
                .iter()
                .map(|p| p.customer_id.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(payments.iter().map(|p| p.amount_cents).collect::<Vec<_>>())
        .bind(
            payments
                .iter()
                .map(|p| p.currency.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(payments.iter().map(|p| p.refunded).collect::<Vec<_>>())
        .bind(&settlement.refunded)
        .bind(deltas.keys().map(String::as_str).collect::<Vec<_>>())
        .bind(deltas.values().copied().collect::<Vec<_>>())
        .bind(order_ids)
        .bind(orders.iter().map(|o| o.state.as_str()).collect::<Vec<_>>())
        .bind(orders.iter().map(|o| o.payment_id).collect::<Vec<_>>())
        .bind(orders.iter().map(|o| o.created_answer).collect::<Vec<_>>())
        .bind(
            orders
                .iter()
                .map(|o| o.cancelled_answer)
                .collect::<Vec<_>>(),
        )
        .bind(
            orders
                .iter()
                .map(|o| o.decline_reason.as_ref().map(FailureReason::as_str))
                .collect::<Vec<_>>(),
        )
        .execute(conn)
        .await?;
    Ok(())
}

/// The payment with id `id`, if any.
pub async fn find_payment(pool: &PgPool, id: Uuid) -> sqlx::Result<Option<Payment>> {
    sqlx::query_as(concat!(
        "SELECT ",
        payment_columns!(),
        " FROM payments WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(pool)
    .await
}

/// The payments of an order (at most one, by constraint).
pub async fn payments_of_order(pool: &PgPool, order_id: Uuid) -> sqlx::Result<Vec<Payment>> {
    sqlx::query_as(concat!(
        "SELECT ",
        payment_columns!(),
        " FROM payments WHERE order_id = $1 ORDER BY created_at"
    ))
    .bind(order_id)
    .fetch_all(pool)
    .await
}

/// The customer's account, if it was opened.
pub async fn find_account<'c>(
    conn: impl sqlx::PgExecutor<'c>,
    customer_id: &str,
) -> sqlx::Result<Option<Account>> {
    sqlx::query_as(
        "SELECT customer_id, balance_cents, currency FROM accounts WHERE customer_id = $1",
    )
    .bind(customer_id)
    .fetch_optional(conn)
    .await
}

/// Opens the customer's account with `initial_credit_cents` if it does not exist yet.
pub async fn open_account(
    conn: &mut PgConnection,
    customer_id: &str,
    initial_credit_cents: i64,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO accounts (customer_id, balance_cents) VALUES ($1, $2)
         ON CONFLICT (customer_id) DO NOTHING",
    )
    .bind(customer_id)
    .bind(initial_credit_cents)
    .execute(conn)
    .await?;
    Ok(())
}

/// Records a deposit, claiming `idempotency_key` if given. Returns false when the key was
/// claimed before (then [`find_deposit_by_key`] tells by what); a concurrent claim waits
/// for the first to commit or roll back.
pub async fn record_deposit(
    conn: &mut PgConnection,
    customer_id: &str,
    amount_cents: i64,
    idempotency_key: Option<&str>,
) -> sqlx::Result<bool> {
    let recorded = sqlx::query(
        "INSERT INTO deposits (id, customer_id, amount_cents, idempotency_key)
         VALUES ($1, $2, $3, $4)
         ON CONFLICT (idempotency_key) DO NOTHING",
    )
    .bind(Uuid::now_v7())
    .bind(customer_id)
    .bind(amount_cents)
    .bind(idempotency_key)
    .execute(conn)
    .await?;
    Ok(recorded.rows_affected() == 1)
}

/// The customer and amount of the deposit made with `idempotency_key`.
pub async fn find_deposit_by_key(
    conn: &mut PgConnection,
    idempotency_key: &str,
) -> sqlx::Result<Option<(String, i64)>> {
    sqlx::query_as("SELECT customer_id, amount_cents FROM deposits WHERE idempotency_key = $1")
        .bind(idempotency_key)
        .fetch_optional(conn)
        .await
}

/// Adds `amount_cents` to the (opened) account and returns it.
pub async fn credit(
    conn: &mut PgConnection,
    customer_id: &str,
    amount_cents: i64,
) -> sqlx::Result<Account> {
    sqlx::query_as(
        "UPDATE accounts SET balance_cents = balance_cents + $2, updated_at = now()
         WHERE customer_id = $1
         RETURNING customer_id, balance_cents, currency",
    )
    .bind(customer_id)
    .bind(amount_cents)
    .fetch_one(conn)
    .await
}
