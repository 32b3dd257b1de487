//! The reference: pgbench running order-service's create statement (insert the order
//! and its outbox row in one statement, durable commit) against the same Postgres, in a
//! scratch database migrated with order-service's own migrations and the runtime's (the
//! same tables and indexes; no trigger, no notification, no `outbox_pending` entry: the
//! one durable write every order needs). It is sent as order-service sends one order: one prepared statement,
//! over a plain-text connection unless the URL or `PGSSLMODE` asks for TLS (the services'
//! own rule). Its rate is what this box commits, one order per commit.

use std::process::Command;

use anyhow::{Context, bail};
use sqlx::{Connection, Executor, PgConnection};

const DATABASE: &str = "loadgen_reference";

/// One order's statement, as order-service writes it (`db::insert_orders_with_events`
/// with one order; time-ordered ids like its UUID v7), prepared once per client. Each
/// client writes one order per statement and commit: order-service groups orders placed
/// at the same moment into one statement, the reference does not.
const SCRIPT: &str = r#"
\set n random(1, 1000000000)
WITH placed AS (
INSERT INTO orders (id, customer_id, items, total_cents, currency)
VALUES ((lpad(to_hex((extract(epoch FROM clock_timestamp()) * 1000)::bigint), 12, '0') || substr(md5(random()::text), 1, 20))::uuid,
        'bench-' || (:n % 50), '[{"sku": "bench", "quantity": 1, "unit_price_cents": 100}]', 100, 'EUR')
RETURNING *), queued AS (
INSERT INTO outbox (event_id, stream, event_type, order_id, fields)
VALUES ((lpad(to_hex((extract(epoch FROM clock_timestamp()) * 1000)::bigint), 12, '0') || substr(md5(random()::text), 1, 20))::uuid,
        'order-events', 'OrderCreated', md5(random()::text)::uuid,
        ARRAY['event_id', '01a20500-0000-7000-8000-000000000000', 'event_type', 'OrderCreated', 'schema_version', '1',
              'order_id', '01a20500-0000-7000-8000-000000000001', 'occurred_at', '2026-11-22T20:00:00.000000000Z',
              'producer', 'order-service', 'traceparent', '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01',
              'payload', '{"order_id":"01a20500-0000-7000-8000-000000000001","customer_id":"bench-1","items":[{"sku":"bench","quantity":1,"unit_price_cents":100}],"total_cents":100,"currency":"EUR"}']))
SELECT * FROM placed;
"#;

/// Runs pgbench for `seconds` with `clients` clients; returns its transactions per second.
pub async fn pgbench_order_create(
    admin_url: &str,
    clients: u64,
    seconds: u64,
) -> anyhow::Result<f64> {
    let mut admin = PgConnection::connect(admin_url)
        .await
        .context("cannot connect for the reference")?;
    admin
        .execute(
            format!("DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
                .as_str()
                .into_sql(),
        )
        .await?;
    admin
        .execute(format!("CREATE DATABASE {DATABASE}").as_str().into_sql())
        .await?;
    let url = with_database(admin_url, DATABASE);
    let pool = sqlx::PgPool::connect(&url).await?;
    service_runtime::schema::with_runtime(&sqlx::migrate!("../../migrations/order"))
        .run(&pool)
        .await?;
    pool.close().await;

    let script = std::env::temp_dir().join(format!("loadgen-{}.sql", std::process::id()));
    std::fs::write(&script, SCRIPT)?;
    println!("pgbench: the order-create statement, {clients} clients, {seconds} s");
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
    let _ = admin
        .execute(
            format!("DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
                .as_str()
                .into_sql(),
        )
        .await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "pgbench failed: {}{}",
            stdout,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    stdout
        .lines()
        .find_map(|line| {
            line.strip_prefix("tps = ")?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .with_context(|| format!("no tps in pgbench's output: {stdout}"))
}

trait IntoSql {
    fn into_sql(self) -> sqlx::AssertSqlSafe<String>;
}

impl IntoSql for &str {
    /// Statements built from the constant database name only.
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
