//! The SPEC §4.8 invariants, checked on both databases once the system is quiet.

use std::collections::HashMap;
use std::time::Duration;

use sqlx::PgPool;
use testkit::eventually;
use uuid::Uuid;

use crate::load::INITIAL_CREDIT;

/// `(id, order_id, customer_id, amount_cents, status, created at (Unix ms))` of a payment.
type PaymentRow = (Uuid, Uuid, String, i64, String, i64);
/// `(id, customer_id, total_cents, status, payment_id, cancellation confirmed, expired,
/// pay_by (Unix ms))` of an order.
type OrderRow = (
    Uuid,
    String,
    i64,
    String,
    Option<Uuid>,
    bool,
    bool,
    Option<i64>,
);

/// How the orders ended.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    pub paid: usize,
    pub payment_failed: usize,
    pub cancelled: usize,
}

/// Waits (up to `timeout`) until the system is quiet and consistent, and fails with
/// what was wrong last if it never is. The SPEC §4.8 invariants, checked against both
/// databases: every order final, every cancellation confirmed by payment-service (a
/// user's, or that of an order expired unpaid); at most one payment per order, a
/// standing one exactly for each `PAID` order and for its total, and none made after its
/// order's payment deadline; each balance equal to the initial credit plus deposits less
/// the totals of its `PAID` orders; no payment for an unknown order.
pub async fn assert_invariants(
    orders_db: &PgPool,
    payments_db: &PgPool,
    timeout: Duration,
) -> Outcome {
    eventually("the SPEC §4.8 invariants to hold", timeout, || {
        check_invariants(orders_db, payments_db)
    })
    .await
}

/// One check of the invariants; `Err` says what does not hold (yet).
pub async fn check_invariants(orders_db: &PgPool, payments_db: &PgPool) -> Result<Outcome, String> {
    let db = |e: sqlx::Error| e.to_string();
    let orders: Vec<OrderRow> = sqlx::query_as(
        "SELECT o.id, o.customer_id, o.total_cents, o.status, o.payment_id,
                o.cancellation_confirmed_at IS NOT NULL,
                COALESCE(o.failure_reason = 'payment_expired', false),
                (extract(epoch FROM d.pay_by) * 1000)::bigint
         FROM orders o LEFT JOIN order_deadlines d ON d.order_id = o.id",
    )
    .fetch_all(orders_db)
    .await
    .map_err(db)?;
    let payments: Vec<PaymentRow> = sqlx::query_as(
        "SELECT id, order_id, customer_id, amount_cents, status,
                    (extract(epoch FROM created_at) * 1000)::bigint
             FROM payments",
    )
    .fetch_all(payments_db)
    .await
    .map_err(db)?;
    let balances: HashMap<String, i64> =
        sqlx::query_as("SELECT customer_id, balance_cents FROM accounts")
            .fetch_all(payments_db)
            .await
            .map_err(db)?
            .into_iter()
            .collect();
    let deposits: HashMap<String, i64> = sqlx::query_as(
        "SELECT customer_id, sum(amount_cents)::bigint FROM deposits GROUP BY customer_id",
    )
    .fetch_all(payments_db)
    .await
    .map_err(db)?
    .into_iter()
    .collect();

    let mut payments_by_order: HashMap<Uuid, Vec<&PaymentRow>> = HashMap::new();
    for payment in &payments {
        payments_by_order
            .entry(payment.1)
            .or_default()
            .push(payment);
    }
    let known: std::collections::HashSet<Uuid> = orders.iter().map(|o| o.0).collect();
    if let Some(unknown) = payments_by_order.keys().find(|id| !known.contains(id)) {
        return Err(format!(
            "a payment for {unknown}, which order-service does not know"
        ));
    }

    let mut outcome = Outcome::default();
    let mut spent: HashMap<&str, i64> = HashMap::new();
    for (id, customer, total, status, payment_id, confirmed, expired, pay_by) in &orders {
        let charges = payments_by_order.get(id).map_or(&[][..], Vec::as_slice);
        if charges.len() > 1 {
            return Err(format!("order {id} has {} payments", charges.len()));
        }
        let standing = charges.iter().find(|p| p.4 == "COMPLETED");
        if let (Some(payment), Some(pay_by)) = (standing, pay_by)
            && payment.5 > *pay_by
        {
            return Err(format!(
                "order {id} was charged {} ms after its deadline, and the charge stands",
                payment.5 - pay_by
            ));
        }
        if *expired && !confirmed {
            return Err(format!(
                "the cancellation of expired order {id} is not confirmed by payment-service yet"
            ));
        }
        match (status.as_str(), standing) {
            ("PAID", Some(payment)) => {
                if payment.3 != *total || Some(payment.0) != *payment_id {
                    return Err(format!(
                        "order {id} (total {total}, payment {payment_id:?}) has payment {payment:?}"
                    ));
                }
                outcome.paid += 1;
                *spent.entry(customer).or_default() += total;
            }
            ("PAID", None) => return Err(format!("PAID order {id} has no standing payment")),
            ("PENDING", _) => return Err(format!("order {id} is still PENDING")),
            (other, Some(_)) => return Err(format!("{other} order {id} has a standing charge")),
            ("PAYMENT_FAILED", None) => outcome.payment_failed += 1,
            ("CANCELLED", None) if *confirmed => outcome.cancelled += 1,
            ("CANCELLED", None) => {
                return Err(format!(
                    "the cancellation of order {id} is not confirmed by payment-service yet"
                ));
            }
            (other, None) => return Err(format!("order {id} is {other}")),
        }
    }
    for (customer, balance) in &balances {
        let expected = INITIAL_CREDIT + deposits.get(customer).copied().unwrap_or(0)
            - spent.get(customer.as_str()).copied().unwrap_or(0);
        if *balance != expected {
            return Err(format!(
                "{customer} has {balance}, expected {expected} (initial + deposits - paid orders)"
            ));
        }
    }
    if let Some(customer) = spent.keys().find(|c| !balances.contains_key(**c)) {
        return Err(format!("{customer} paid without an account"));
    }
    Ok(outcome)
}
