//! `loadgen`: the benchmark of the whole system against the limit of its box.
//!
//! The system is measured against what this box's Postgres commits alone: one order's
//! write, the design's writes one order at a time, and the same writes batched, the
//! limit of this design on this box ([`reference`](mod@reference)). In one run, `loadgen`:
//!
//! 1. places `--orders` orders against a running order-service, `--concurrency` at a
//!    time or at a fixed `--rate`, and times each `POST /orders`;
//! 2. waits until every accepted order is final, and reads created -> final latencies
//!    from the order database;
//! 3. runs pgbench with each reference at the same concurrency against the same Postgres
//!    (a scratch database each), for the reference rates;
//! 4. reports memory and idle CPU of the service processes it is told to watch, and what
//!    Postgres did per order ([`postgres_counts`]: WAL records and bytes, commits, CPU);
//! 5. prints the figures, writes them as JSON, and draws the latency CDFs as SVG.
//!
//! With `--duration`, it is a soak: `--rate` held that long, and a line per
//! `--report-every` of what must stay flat (see [`soak`]).

mod client;
mod plot;
mod postgres_counts;
mod reference;
mod report;
mod soak;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::Parser;
use hyper::StatusCode;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

use report::{Figures, Percentiles};

/// Benchmark the order/payment services against pgbench on the same Postgres.
#[derive(Debug, Parser)]
#[command(name = "loadgen", version)]
struct Args {
    /// Base URL of order-service.
    #[arg(long, env = "ORDER_URL", default_value = "http://127.0.0.1:8080")]
    order_url: String,
    /// order-service's database, to read when orders became final.
    #[arg(
        long,
        env = "ORDERS_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/orders"
    )]
    orders_database_url: String,
    /// A database on the same server where a scratch database for pgbench may be made.
    #[arg(
        long,
        env = "REFERENCE_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    reference_database_url: String,
    /// How many orders to place.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    orders: u64,
    /// Requests in flight at once (closed loop); also pgbench's client count.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=1000))]
    concurrency: u64,
    /// Place orders at this fixed rate per second instead (open loop).
    #[arg(long)]
    rate: Option<f64>,
    /// A soak: hold `--rate` for this many seconds (the order count follows), reporting
    /// every `--report-every`.
    #[arg(long, requires = "rate", value_parser = clap::value_parser!(u64).range(1..=86_400))]
    duration: Option<u64>,
    /// Seconds per soak window.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=3600))]
    report_every: u64,
    /// Redis, for the soak's memory and stream lengths.
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
    /// The services' `STREAM_NAMESPACE`, to find their streams.
    #[arg(long, env = "STREAM_NAMESPACE", default_value = "")]
    stream_namespace: String,
    /// How long pgbench runs; 0 skips the reference.
    #[arg(long, default_value_t = 10)]
    pgbench_seconds: u64,
    /// Service processes to report on, as `name=pid`.
    #[arg(long = "watch", value_parser = parse_watch)]
    watch: Vec<(String, u32)>,
    /// How long to wait for every order to be final.
    #[arg(long, default_value_t = 300)]
    settle_seconds: u64,
    /// Where to write the figures as JSON.
    #[arg(long, default_value = "target/bench/bench.json")]
    json: PathBuf,
    /// Where to draw the latency CDFs.
    #[arg(long, default_value = "target/bench/latency.svg")]
    plot: PathBuf,
    /// Hide the progress bars.
    #[arg(long)]
    quiet: bool,
}

fn parse_watch(value: &str) -> Result<(String, u32), String> {
    let (name, pid) = value.split_once('=').ok_or("expected name=pid")?;
    Ok((
        name.to_owned(),
        pid.parse().map_err(|e| format!("pid: {e}"))?,
    ))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    // Its own CPU too: the load generator shares the box with what it measures.
    args.watch.push(("loadgen".to_owned(), std::process::id()));
    if let (Some(duration), Some(rate)) = (args.duration, args.rate) {
        args.orders = (rate * duration as f64).ceil().max(1.0) as u64;
    }
    let pool = PgPool::connect(&args.orders_database_url)
        .await
        .context("cannot connect to the order database")?;
    let run = Uuid::new_v4().simple().to_string()[..8].to_owned();

    let soaking = match args.duration {
        Some(_) => Some(
            soak::start(
                &pool,
                &args.redis_url,
                &args.stream_namespace,
                &args.watch,
                Duration::from_secs(args.report_every),
            )
            .await,
        ),
        None => None,
    };
    postgres_counts::checkpoint(&pool).await;
    let cpu_before = report::cpu_now(&args.watch);
    let counts_before = postgres_counts::sample(&pool).await?;
    let placed = place(&args, &run).await?;
    if placed.accepted.is_empty() {
        bail!(
            "no order was accepted ({} failed): is order-service up at {}?",
            placed.failed,
            args.order_url
        );
    }
    let settled = settle(&args, &pool, &placed.accepted).await?;
    let cpu_loaded = report::cpu_now(&args.watch);
    let counts_after = postgres_counts::sample_after_load(&pool).await?;
    let soak = match soaking {
        Some((stop, windows)) => {
            stop.cancel();
            windows.await?
        }
        None => Vec::new(),
    };

    let mut references = Vec::new();
    let random_page_cost = reference::random_page_cost(&pool).await?;
    if args.pgbench_seconds > 0 {
        for reference in &reference::REFERENCES {
            let rate = reference::orders_per_second(
                reference,
                &args.reference_database_url,
                random_page_cost,
                args.concurrency,
                args.pgbench_seconds,
            )
            .await?;
            references.push(report::ReferenceRate {
                name: reference.name,
                what: reference.what,
                orders_per_second: rate,
                ratio: settled.completed_per_second / rate,
            });
        }
    }
    let processes = report::watch_processes(
        &args.watch,
        &cpu_before,
        &cpu_loaded,
        placed.accepted.len() as u64,
    )
    .await;

    let figures = Figures {
        orders: args.orders,
        concurrency: args.concurrency,
        rate: args.rate,
        accepted: placed.accepted.len() as u64,
        failed: placed.failed,
        accepted_per_second: placed.accepted.len() as f64 / placed.elapsed.as_secs_f64(),
        completed_per_second: settled.completed_per_second,
        post_latency_ms: Percentiles::of(&placed.latencies_ms),
        created_to_final_ms: Percentiles::of(&settled.latencies_ms),
        final_statuses: settled.statuses,
        references,
        random_page_cost,
        postgres_per_order: counts_before.per_order(&counts_after, placed.accepted.len() as u64),
        processes,
        soak,
    };
    figures.print();
    write(&args.json, &serde_json::to_string_pretty(&json!(figures))?)?;
    write(
        &args.plot,
        &plot::latency_cdfs(&placed.latencies_ms, &settled.latencies_ms),
    )?;
    println!(
        "figures: {}   plot: {}",
        args.json.display(),
        args.plot.display()
    );
    Ok(())
}

fn write(path: &PathBuf, content: &str) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, content).with_context(|| format!("cannot write {}", path.display()))
}

fn bar(len: u64, what: &str, quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    let style = ProgressStyle::with_template("{msg:>9} [{bar:40}] {pos}/{len} {per_sec} eta {eta}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    bar.set_style(style);
    bar.set_message(what.to_owned());
    bar
}

struct Placed {
    accepted: Vec<Uuid>,
    failed: u64,
    latencies_ms: Vec<f64>,
    elapsed: Duration,
}

/// A small order (1 to 4 EUR) from one of `customers` customers of this run. With a
/// customer per 200 orders (50 at least), each with the default credit of 1000 EUR,
/// every order can be paid.
fn order_body(run: &str, n: u64, customers: u64) -> Bytes {
    json!({
        "customer_id": format!("bench-{run}-{}", n % customers),
        "currency": "EUR",
        "items": [{"sku": "bench", "quantity": 1, "unit_price_cents": 100 + n % 300}],
    })
    .to_string()
    .into()
}

/// How long a `POST /orders` may take before it counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// What loadgen reads of a `201 Created` order: its id (the rest is skipped unread).
#[derive(serde::Deserialize)]
struct Created {
    id: Uuid,
}

/// Places the orders, closed loop (`concurrency` workers) or open loop (`rate`).
async fn place(args: &Args, run: &str) -> anyhow::Result<Placed> {
    let orders = Arc::new(client::Orders::new(&args.order_url)?);
    let progress = bar(args.orders, "placing", args.quiet);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let (run, placing) = (run.to_owned(), progress.clone());
    let customers = (args.orders / 200).max(50);
    let one = move |n: u64| {
        let (orders, body, progress) = (
            orders.clone(),
            order_body(&run, n, customers),
            placing.clone(),
        );
        async move {
            let sent = Instant::now();
            let result = tokio::time::timeout(REQUEST_TIMEOUT, orders.post(body)).await;
            let latency = sent.elapsed().as_secs_f64() * 1000.0;
            progress.inc(1);
            match result {
                Ok(Ok((StatusCode::CREATED, answer))) => {
                    let order: Created = serde_json::from_slice(&answer).ok()?;
                    Some((order.id, latency))
                }
                _ => None,
            }
        }
    };
    let mut outcomes = Vec::with_capacity(args.orders as usize);
    match args.rate {
        Some(rate) if rate > 0.0 => {
            let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut tasks = tokio::task::JoinSet::new();
            for n in 0..args.orders {
                ticks.tick().await;
                tasks.spawn(one(n));
                // A finished task keeps its whole future's memory until it is joined:
                // joined as they finish, a soak holds only the requests in flight.
                while let Some(done) = tasks.try_join_next() {
                    outcomes.push(done?);
                }
            }
            outcomes.extend(tasks.join_all().await);
        }
        _ => {
            let mut tasks = tokio::task::JoinSet::new();
            for _ in 0..args.concurrency {
                let (next, one, orders) = (next.clone(), one.clone(), args.orders);
                tasks.spawn(async move {
                    let mut mine = Vec::new();
                    loop {
                        let n = next.fetch_add(1, Ordering::SeqCst) as u64;
                        if n >= orders {
                            return mine;
                        }
                        mine.push(one(n).await);
                    }
                });
            }
            for mine in tasks.join_all().await {
                outcomes.extend(mine);
            }
        }
    }
    let elapsed = started.elapsed();
    progress.finish();
    let failed = outcomes.iter().filter(|o| o.is_none()).count() as u64;
    let (accepted, latencies_ms) = outcomes.into_iter().flatten().unzip();
    Ok(Placed {
        accepted,
        failed,
        latencies_ms,
        elapsed,
    })
}

struct Settled {
    completed_per_second: f64,
    latencies_ms: Vec<f64>,
    statuses: std::collections::BTreeMap<String, u64>,
}

/// Waits until every accepted order is final; reads their timings from the database.
async fn settle(args: &Args, pool: &PgPool, accepted: &[Uuid]) -> anyhow::Result<Settled> {
    let progress = bar(accepted.len() as u64, "final", args.quiet);
    let deadline = Instant::now() + Duration::from_secs(args.settle_seconds);
    loop {
        let done: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM orders WHERE id = ANY($1) AND status <> 'PENDING'",
        )
        .bind(accepted)
        .fetch_one(pool)
        .await?;
        progress.set_position(done as u64);
        if done as usize == accepted.len() {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "{} of {} orders still PENDING after {}s",
                accepted.len() as i64 - done,
                accepted.len(),
                args.settle_seconds
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await; // polling interval of a progress display
    }
    progress.finish();
    let rows: Vec<(String, time::OffsetDateTime, time::OffsetDateTime)> =
        sqlx::query_as("SELECT status, created_at, updated_at FROM orders WHERE id = ANY($1)")
            .bind(accepted)
            .fetch_all(pool)
            .await?;
    let first = rows.iter().map(|r| r.1).min().context("no rows")?;
    let last = rows.iter().map(|r| r.2).max().context("no rows")?;
    let mut statuses = std::collections::BTreeMap::new();
    for (status, _, _) in &rows {
        *statuses.entry(status.clone()).or_insert(0) += 1;
    }
    Ok(Settled {
        completed_per_second: rows.len() as f64 / (last - first).as_seconds_f64().max(1e-3),
        latencies_ms: rows
            .iter()
            .map(|(_, created, updated)| (*updated - *created).as_seconds_f64() * 1000.0)
            .collect(),
        statuses,
    })
}
