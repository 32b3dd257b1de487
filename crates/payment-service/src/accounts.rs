//! Deposits (SPEC §6.2, admin): money an operator adds to a customer's account, recorded
//! in `deposits` in the same transaction as the new balance. An `Idempotency-Key` is
//! claimed in that transaction too, so a retried request credits once.

use sqlx::PgPool;

use crate::db::{self, Account};

/// Why a deposit was refused.
#[derive(Debug, thiserror::Error)]
pub enum DepositError {
    #[error("the balance would exceed its maximum")]
    BalanceOutOfRange,
    #[error("the idempotency key was used with another request")]
    KeyReused,
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

/// A deposit made, and whether an earlier request with the same key made it.
#[derive(Debug)]
pub struct Deposited {
    /// The account as it stands now.
    pub account: Account,
    pub replayed: bool,
}

/// Adds `amount_cents` to the account (opened with `initial_credit_cents` if new). With
/// `idempotency_key`, a repeat of the same request credits nothing and returns the
/// account as it stands.
pub async fn deposit(
    pool: &PgPool,
    customer_id: &str,
    amount_cents: i64,
    initial_credit_cents: i64,
    idempotency_key: Option<&str>,
) -> Result<Deposited, DepositError> {
    let mut tx = pool.begin().await?;
    db::open_account(&mut tx, customer_id, initial_credit_cents).await?;
    if !db::record_deposit(&mut tx, customer_id, amount_cents, idempotency_key).await? {
        let key = idempotency_key.unwrap_or_default();
        let first = db::find_deposit_by_key(&mut tx, key).await?;
        if first.as_ref().map(|(c, a)| (c.as_str(), *a)) != Some((customer_id, amount_cents)) {
            return Err(DepositError::KeyReused);
        }
        let account = db::find_account(&mut *tx, customer_id)
            .await?
            .ok_or(sqlx::Error::RowNotFound)?;
        return Ok(Deposited {
            account,
            replayed: true,
        });
    }
    let account = db::credit(&mut tx, customer_id, amount_cents).await?;
    tx.commit().await?;
    Ok(Deposited {
        account,
        replayed: false,
    })
}
