//! The references: what this box's one Postgres commits with no Redis, no HTTP and no
//! service in the way, run by pgbench against a scratch database on the same server, at
//! the same concurrency as the system, one prepared statement per write, over a
//! plain-text connection unless the URL or `PGSSLMODE` asks for TLS (the services' own
//! rule). Three of them ([`REFERENCES`]):
//!
//! - **one order's write**: order-service's create statement (the order and its outbox
//!   row, one commit), on the services' own schema: the one durable write every order
//!   needs;
//! - **the design's writes, one order at a time**: every write the saga makes for an
//!   order that is paid, on a minimal schema with the tables and keys they need: (1) the
//!   order and its outbox row; (2) the inbox row, the account's debit, the payment, the
//!   saga row and the answer's outbox row; (3) the inbox row and the order's status;
//!   each one statement and commit;
//! - **the same writes batched**: 16 orders per statement and commit (ids derived from a
//!   batch number; the accounts locked in order first, as payment-service does), the
//!   limit of this design's writes on this box.
//!
//! Each is reported in orders per second, and the system's rate as a ratio to each.

use std::process::Command;

use anyhow::{Context, bail};
use sqlx::{Connection, Executor, PgConnection};

const DATABASE: &str = "loadgen_reference";

/// What pgbench runs, on which schema, and how many orders one run of its script writes.
#[derive(Debug, Clone, Copy)]
pub struct Reference {
    /// Its name in the figures.
    pub name: &'static str,
    /// What it is, in one line.
    pub what: &'static str,
    schema: Schema,
    script: &'static str,
    orders_per_script: u64,
}

#[derive(Debug, Clone, Copy)]
enum Schema {
    /// order-service's migrations and the runtime's: the real tables and indexes.
    OrderService,
    /// [`MINIMAL_SCHEMA`].
    Minimal,
}

/// The references, the one the headline ratio is to last.
pub const REFERENCES: [Reference; 3] = [
    Reference {
        name: "one order's write",
        what: "order + outbox row, one statement and commit, order-service's schema",
        schema: Schema::OrderService,
        script: ORDER_WRITE,
        orders_per_script: 1,
    },
    Reference {
        name: "design's writes, unbatched",
        what: "(1) order + outbox; (2) inbox + debit + payment + saga row + outbox; (3) inbox + status; a commit each",
        schema: Schema::Minimal,
        script: DESIGN_WRITES,
        orders_per_script: 1,
    },
    Reference {
        name: "design's writes, batched",
        what: "the same writes, 16 orders per statement and commit, accounts locked in order",
        schema: Schema::Minimal,
        script: DESIGN_WRITES_BATCHED,
        orders_per_script: 16,
    },
];

/// An outbox row's field list, as long as a real one.
macro_rules! fields {
    () => {
        "ARRAY['event_id', '01a20500-0000-7000-8000-000000000000', 'event_type', 'OrderCreated', 'schema_version', '1',
              'order_id', '01a20500-0000-7000-8000-000000000001', 'occurred_at', '2026-11-22T20:00:00.000000000Z',
              'producer', 'order-service', 'traceparent', '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01',
              'payload', '{\"order_id\":\"01a20500-0000-7000-8000-000000000001\",\"customer_id\":\"bench-1\",\"items\":[{\"sku\":\"bench\",\"quantity\":1,\"unit_price_cents\":100}],\"total_cents\":100,\"currency\":\"EUR\"}']"
    };
}

/// One order's statement, as order-service writes it (`db::insert_orders_with_events`
/// with one order; time-ordered ids like its UUID v7), prepared once per client. Each
/// client writes one order per statement and commit: order-service groups orders placed
/// at the same moment into one statement, the reference does not.
const ORDER_WRITE: &str = concat!(
    r#"
\set n random(1, 1000000000)
WITH placed AS (
INSERT INTO orders (id, customer_id, items, total_cents, currency)
VALUES ((lpad(to_hex((extract(epoch FROM clock_timestamp()) * 1000)::bigint), 12, '0') || substr(md5(random()::text), 1, 20))::uuid,
        'bench-' || (:n % 50), '[{"sku": "bench", "quantity": 1, "unit_price_cents": 100}]', 100, 'EUR')
RETURNING *), queued AS (
INSERT INTO outbox (event_id, stream, event_type, order_id, fields)
VALUES ((lpad(to_hex((extract(epoch FROM clock_timestamp()) * 1000)::bigint), 12, '0') || substr(md5(random()::text), 1, 20))::uuid,
        'order-events', 'OrderCreated', md5(random()::text)::uuid, "#,
    fields!(),
    r#"))
SELECT * FROM placed;
"#
);

/// The tables and keys the design's writes need: the two services' tables in one
/// database (one server's WAL either way), 50 accounts.
const MINIMAL_SCHEMA: &str = "
CREATE TABLE orders (id uuid PRIMARY KEY, customer_id text NOT NULL, items jsonb NOT NULL,
    total_cents bigint NOT NULL, currency text NOT NULL, status text NOT NULL DEFAULT 'PENDING',
    payment_id uuid, created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE outbox (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id uuid NOT NULL UNIQUE, stream text NOT NULL, event_type text NOT NULL,
    order_id uuid NOT NULL, fields text[] NOT NULL, created_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE inbox (event_id uuid PRIMARY KEY, event_type text NOT NULL, order_id uuid NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE accounts (customer_id text PRIMARY KEY, balance_cents bigint NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE payments (id uuid PRIMARY KEY, order_id uuid NOT NULL UNIQUE,
    customer_id text NOT NULL, amount_cents bigint NOT NULL, currency text NOT NULL,
    status text NOT NULL, created_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE order_payments (order_id uuid PRIMARY KEY, state text NOT NULL, payment_id uuid,
    updated_at timestamptz NOT NULL DEFAULT now());
INSERT INTO accounts (customer_id, balance_cents)
    SELECT 'bench-' || n, 1000000000000000 FROM generate_series(0, 49) AS n;
";

/// One paid order's writes, each statement its own commit; ids derived from `:n`.
const DESIGN_WRITES: &str = concat!(
    r#"
\set n random(1, 9000000000000000000)
\set c random(0, 49)
WITH o AS (
    INSERT INTO orders (id, customer_id, items, total_cents, currency)
    VALUES (md5(:n || 'o')::uuid, 'bench-' || :c, '[{"sku": "bench", "quantity": 1, "unit_price_cents": 100}]', 100, 'EUR'))
INSERT INTO outbox (event_id, stream, event_type, order_id, fields)
VALUES (md5(:n || 'c')::uuid, 'order-events', 'OrderCreated', md5(:n || 'o')::uuid, "#,
    fields!(),
    r#");
WITH i AS (
    INSERT INTO inbox (event_id, event_type, order_id) VALUES (md5(:n || 'c')::uuid, 'OrderCreated', md5(:n || 'o')::uuid)
), a AS (
    UPDATE accounts SET balance_cents = balance_cents - 100, updated_at = now() WHERE customer_id = 'bench-' || :c
), p AS (
    INSERT INTO payments (id, order_id, customer_id, amount_cents, currency, status)
    VALUES (md5(:n || 'p')::uuid, md5(:n || 'o')::uuid, 'bench-' || :c, 100, 'EUR', 'COMPLETED')
), s AS (
    INSERT INTO order_payments (order_id, state, payment_id) VALUES (md5(:n || 'o')::uuid, 'CHARGED', md5(:n || 'p')::uuid))
INSERT INTO outbox (event_id, stream, event_type, order_id, fields)
VALUES (md5(:n || 'r')::uuid, 'payment-events', 'PaymentCompleted', md5(:n || 'o')::uuid, "#,
    fields!(),
    r#");
WITH i AS (
    INSERT INTO inbox (event_id, event_type, order_id) VALUES (md5(:n || 'r')::uuid, 'PaymentCompleted', md5(:n || 'o')::uuid))
UPDATE orders SET status = 'PAID', payment_id = md5(:n || 'p')::uuid, updated_at = now() WHERE id = md5(:n || 'o')::uuid;
"#
);

/// The same writes for 16 orders per statement and commit: batch `:b`, order `n` of it,
/// customers `:c + n` (mod 50), locked in order before the batch is charged.
const DESIGN_WRITES_BATCHED: &str = concat!(
    r#"
\set b random(1, 9000000000000000000)
\set c random(0, 49)
WITH g AS (SELECT n, md5(:b || '-' || n || 'o')::uuid AS id, 'bench-' || ((:c + n) % 50) AS customer FROM generate_series(0, 15) AS n),
o AS (
    INSERT INTO orders (id, customer_id, items, total_cents, currency)
    SELECT id, customer, '[{"sku": "bench", "quantity": 1, "unit_price_cents": 100}]', 100, 'EUR' FROM g)
INSERT INTO outbox (event_id, stream, event_type, order_id, fields)
SELECT md5(:b || '-' || n || 'c')::uuid, 'order-events', 'OrderCreated', id, "#,
    fields!(),
    r#" FROM g;
BEGIN;
SELECT count(*) FROM (SELECT 1 FROM accounts WHERE customer_id IN
    (SELECT 'bench-' || ((:c + n) % 50) FROM generate_series(0, 15) AS n)
    ORDER BY customer_id FOR UPDATE) AS locked;
WITH g AS (SELECT n, md5(:b || '-' || n || 'o')::uuid AS id, 'bench-' || ((:c + n) % 50) AS customer FROM generate_series(0, 15) AS n),
i AS (
    INSERT INTO inbox (event_id, event_type, order_id) SELECT md5(:b || '-' || n || 'c')::uuid, 'OrderCreated', id FROM g
), a AS (
    UPDATE accounts a SET balance_cents = a.balance_cents - t.total, updated_at = now()
    FROM (SELECT customer, 100 * count(*) AS total FROM g GROUP BY customer) AS t WHERE a.customer_id = t.customer
), p AS (
    INSERT INTO payments (id, order_id, customer_id, amount_cents, currency, status)
    SELECT md5(:b || '-' || n || 'p')::uuid, id, customer, 100, 'EUR', 'COMPLETED' FROM g
), s AS (
    INSERT INTO order_payments (order_id, state, payment_id) SELECT id, 'CHARGED', md5(:b || '-' || n || 'p')::uuid FROM g)
INSERT INTO outbox (event_id, stream, event_type, order_id, fields)
SELECT md5(:b || '-' || n || 'r')::uuid, 'payment-events', 'PaymentCompleted', id, "#,
    fields!(),
    r#" FROM g;
COMMIT;
WITH g AS (SELECT n, md5(:b || '-' || n || 'o')::uuid AS id FROM generate_series(0, 15) AS n),
i AS (
    INSERT INTO inbox (event_id, event_type, order_id) SELECT md5(:b || '-' || n || 'r')::uuid, 'PaymentCompleted', id FROM g)
UPDATE orders o SET status = 'PAID', payment_id = md5(:b || '-' || g.n || 'p')::uuid, updated_at = now()
FROM g WHERE o.id = g.id;
"#
);

/// The planner's cost of a random page read in `system`'s database: what the references
/// are planned with too, so that no side is planned for a disk the other is not.
pub async fn random_page_cost(system: &sqlx::PgPool) -> anyhow::Result<f64> {
    let cost: String = sqlx::query_scalar("SHOW random_page_cost")
        .fetch_one(system)
        .await?;
    cost.parse()
        .with_context(|| format!("random_page_cost {cost:?}"))
}

/// Runs `reference` with pgbench for `seconds` with `clients` clients, in a scratch
/// database made for it (planned with `random_page_cost`, and checkpointed) and dropped
/// after; returns the orders it wrote per second.
pub async fn orders_per_second(
    reference: &Reference,
    admin_url: &str,
    random_page_cost: f64,
    clients: u64,
    seconds: u64,
) -> anyhow::Result<f64> {
    let mut admin = PgConnection::connect(admin_url)
        .await
        .context("cannot connect for the reference")?;
    let drop = format!("DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)");
    admin.execute(drop.as_str().into_sql()).await?;
    admin
        .execute(format!("CREATE DATABASE {DATABASE}").as_str().into_sql())
        .await?;
    let planner = format!("ALTER DATABASE {DATABASE} SET random_page_cost = {random_page_cost}");
    admin.execute(planner.as_str().into_sql()).await?;
    let url = with_database(admin_url, DATABASE);
    let pool = sqlx::PgPool::connect(&url).await?;
    match reference.schema {
        Schema::OrderService => {
            service_runtime::schema::with_runtime(&sqlx::migrate!("../../migrations/order"))
                .run(&pool)
                .await?;
        }
        Schema::Minimal => {
            sqlx::raw_sql(MINIMAL_SCHEMA).execute(&pool).await?;
        }
    }
    // As the system's run does: no reference pays for the dirty pages of the phase before.
    crate::postgres_counts::checkpoint(&pool).await;
    pool.close().await;

    let script = std::env::temp_dir().join(format!("loadgen-{}.sql", std::process::id()));
    std::fs::write(&script, reference.script)?;
    println!(
        "pgbench: {}, {clients} clients, {seconds} s",
        reference.name
    );
    let mut pgbench = Command::new("pgbench");
    if !service_runtime::service::postgres_tls_asked(admin_url) {
        pgbench.env("PGSSLMODE", "disable");
    }
    let output = pgbench
        .args([
            "-n",
            "-M",
            "prepared",
            "-c",
            &clients.to_string(),
            "-j",
            &clients.min(2).to_string(),
            "-T",
            &seconds.to_string(),
        ])
        .arg("-f")
        .arg(&script)
        .arg(&url)
        .output()
        .context("cannot run pgbench (Debian: postgresql-client or postgresql)")?;
    let _ = std::fs::remove_file(&script);
    let _ = admin.execute(drop.as_str().into_sql()).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "pgbench failed: {}{}",
            stdout,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let tps: f64 = stdout
        .lines()
        .find_map(|line| {
            line.strip_prefix("tps = ")?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .with_context(|| format!("no tps in pgbench's output: {stdout}"))?;
    Ok(tps * reference.orders_per_script as f64)
}

trait IntoSql {
    fn into_sql(self) -> sqlx::AssertSqlSafe<String>;
}

impl IntoSql for &str {
    /// Statements built from the constant database name and numbers only.
    fn into_sql(self) -> sqlx::AssertSqlSafe<String> {
        sqlx::AssertSqlSafe(self.to_owned())
    }
}

/// `url` with its database replaced by `name`.
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let host = base[scheme_end..].split('/').next().unwrap_or_default();
    let mut out = format!("{}{host}/{name}", &base[..scheme_end]);
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    out
}
