//! What the cross-service tests share: a load of orders over HTTP, and the check of the
//! SPEC §4.8 invariants on both databases once the system is quiet.

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use sqlx::PgPool;
use testkit::{eventually, free_port};
use uuid::Uuid;

/// Customers of the generated orders.
pub const CUSTOMERS: [&str; 4] = ["ana", "ben", "cho", "dev"];
/// `INITIAL_CREDIT_CENTS` the tests run with (the default).
pub const INITIAL_CREDIT: i64 = 100_000;

/// Order `n`: customer `n % 4`, 1-3 lines, small prices, so a few hundred orders per
/// customer fit in the initial credit and most are paid.
pub fn order_body(n: usize) -> Value {
    let customer = CUSTOMERS[n % CUSTOMERS.len()];
    let items: Vec<Value> = (0..=(n % 3))
        .map(|line| json!({"sku": format!("sku-{line}"), "quantity": 1 + (n + line) % 3, "unit_price_cents": 50 + (n + line) % 40}))
        .collect();
    json!({"customer_id": customer, "currency": "EUR", "items": items})
}

/// What a load run got back.
#[derive(Debug, Default)]
pub struct Placed {
    /// Orders answered 201.
    pub accepted: Vec<Value>,
    /// Requests that failed (service down, 503): not retried.
    pub failed: usize,
}

/// POSTs orders `0..n` to `base_url` with `concurrency` requests in flight.
pub async fn place_orders(base_url: &str, n: usize, concurrency: usize) -> Placed {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("a client");
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (http, next, url) = (http.clone(), next.clone(), format!("{base_url}/orders"));
        workers.spawn(async move {
            let mut placed = Placed::default();
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= n {
                    return placed;
                }
                match http.post(&url).json(&order_body(i)).send().await {
                    Ok(response) if response.status() == 201 => {
                        placed
                            .accepted
                            .push(response.json().await.expect("an order"));
                    }
                    _ => placed.failed += 1,
                }
            }
        });
    }
    let mut all = Placed::default();
    for placed in workers.join_all().await {
        all.accepted.extend(placed.accepted);
        all.failed += placed.failed;
    }
    all
}

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

/// A service binary running as a process of its own.
pub struct Process {
    pub child: Child,
    pub base_url: String,
}

impl Drop for Process {
    /// A process a test leaves behind (it failed half-way) dies with it.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `binary` with exactly `env` (plus a free `HTTP_ADDR`, `RUST_LOG=warn`, and the
/// event keys of the service it is, [`testkit::signing`], which `env` may override).
pub fn start_process(binary: &str, env: &[(&str, String)]) -> Process {
    spawn_process(binary, env, Stdio::null())
}

/// Like [`start_process`], its log lines (warnings and errors) written to `log`.
pub fn start_logging_process(binary: &str, env: &[(&str, String)], log: &std::fs::File) -> Process {
    spawn_process(binary, env, log.try_clone().expect("the log file").into())
}

fn spawn_process(binary: &str, env: &[(&str, String)], stdout: Stdio) -> Process {
    let port = free_port();
    let service = ["order-service", "payment-service"]
        .into_iter()
        .find(|service| binary.ends_with(service));
    let child = Command::new(binary)
        .env_clear()
        .envs(
            service
                .map(testkit::signing::signing_env)
                .unwrap_or_default(),
        )
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env("HTTP_ADDR", format!("127.0.0.1:{port}"))
        .env("RUST_LOG", "warn")
        .stdout(stdout)
        .stderr(Stdio::null())
        .spawn()
        .expect("the binary starts");
    Process {
        child,
        base_url: format!("http://127.0.0.1:{port}"),
    }
}

/// Waits until the process answers `/health/ready` with 200.
pub async fn ready(process: &Process) {
    let url = format!("{}/health/ready", process.base_url);
    eventually(
        "the process to be ready",
        Duration::from_secs(20),
        || async {
            match reqwest::get(&url).await {
                Ok(response) if response.status() == 200 => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
}

/// Sends SIGTERM and waits (up to `within`) for the process to exit; returns how it
/// exited.
pub async fn terminate(process: &mut Process, within: Duration) -> std::process::ExitStatus {
    sigterm(process);
    eventually("the process to exit", within, || {
        let status = process.child.try_wait();
        async move {
            match status {
                Ok(Some(status)) => Ok(status),
                other => Err(format!("{other:?}")),
            }
        }
    })
    .await
}

/// Sends SIGTERM.
pub fn sigterm(process: &Process) {
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(process.child.id().to_string())
        .status()
        .expect("kill runs");
    assert!(status.success());
}

/// A process stopped with `SIGSTOP` (a GC pause, a VM freeze, a half-open connection, as
/// the rest of the system sees it); resumed with `SIGCONT` when dropped.
pub struct Frozen {
    pid: u32,
}

impl Frozen {
    /// Freezes `process` now.
    pub fn now(process: &Process) -> Self {
        signal(process.child.id(), "STOP");
        Self {
            pid: process.child.id(),
        }
    }

    /// Freezes `process` at an instant when one of its Postgres sessions is inside an open
    /// transaction whose last statement matches the regular expression `statement` (so it
    /// holds that statement's locks), and checks that the transaction is still open once the
    /// process is stopped; retried until that happens (at most 30 s).
    pub async fn inside_transaction(process: &Process, db: &PgPool, statement: &str) -> Self {
        let pid = process.child.id();
        eventually(
            "to freeze the process inside a transaction",
            Duration::from_secs(30),
            || async {
                let ports = postgres_client_ports(pid);
                let open = open_transaction(db, &ports, statement).await?;
                let frozen = Self::now(process);
                // Stopped: is that transaction still open (same backend, same start)?
                match open_transaction(db, &ports, statement).await {
                    Ok(still) if still == open => Ok(frozen),
                    other => Err(format!("it ended before the stop took effect: {other:?}")),
                }
            },
        )
        .await
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        signal(self.pid, "CONT");
    }
}

fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill -{name} {pid}");
}

/// `(backend pid, transaction start)` of a session from one of `ports` inside a
/// transaction whose last statement matches `statement`.
async fn open_transaction(
    db: &PgPool,
    ports: &[i32],
    statement: &str,
) -> Result<(i32, String), String> {
    sqlx::query_as(
        "SELECT pid, xact_start::text FROM pg_stat_activity
          WHERE client_port = ANY($1) AND xact_start IS NOT NULL AND query ~* $2
          ORDER BY xact_start LIMIT 1",
    )
    .bind(ports)
    .bind(statement)
    .fetch_optional(db)
    .await
    .map_err(|e| e.to_string())?
    .ok_or_else(|| "no session of the process is inside such a transaction".to_owned())
}

/// The local ports of the process's TCP connections to Postgres (port 5432), from its file
/// descriptors' socket inodes and `/proc/net/tcp{,6}`.
fn postgres_client_ports(pid: u32) -> Vec<i32> {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|fds| {
            fds.flatten()
                .filter_map(|fd| std::fs::read_link(fd.path()).ok())
                .filter_map(|link| {
                    let link = link.to_string_lossy().into_owned();
                    let inode = link.strip_prefix("socket:[")?.strip_suffix(']')?;
                    Some(inode.to_owned())
                })
                .collect()
        })
        .unwrap_or_default();
    let mut ports = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(remote), Some(inode)) =
                (fields.get(1), fields.get(2), fields.get(9))
            else {
                continue;
            };
            let port = |address: &str| {
                address
                    .rsplit_once(':')
                    .and_then(|(_, hex)| i32::from_str_radix(hex, 16).ok())
            };
            if port(remote) == Some(5432) && inodes.iter().any(|i| i == inode) {
                ports.extend(port(local));
            }
        }
    }
    ports
}
