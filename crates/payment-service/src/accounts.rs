//! Deposits (SPEC §6.2, admin): money an operator adds to a customer's account, recorded
//! in `deposits` in the same transaction as the new balance.

use sqlx::PgPool;

use crate::db::{self, Account};

/// Why a deposit was refused.
#[derive(Debug, thiserror::Error)]
pub enum DepositError {
    #[error("the balance would exceed its maximum")]
    BalanceOutOfRange,
    #[error(transparent)]
    Database(sqlx::Error),
}

impl From<sqlx::Error> for DepositError {
    fn from(error: sqlx::Error) -> Self {
        match &error {
            sqlx::Error::Database(e) if e.constraint() == Some("balance_in_range") => {
                Self::BalanceOutOfRange
            }
            _ => Self::Database(error),
        }
    }
}

/// Adds `amount_cents` to the account (opened with `initial_credit_cents` if new).
pub async fn deposit(
    pool: &PgPool,
    customer_id: &str,
    amount_cents: i64,
    initial_credit_cents: i64,
) -> Result<Account, DepositError> {
    let mut tx = pool.begin().await?;
    let account = db::deposit(&mut tx, customer_id, amount_cents, initial_credit_cents).await?;
    tx.commit().await?;
    Ok(account)
}
