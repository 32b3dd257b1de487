//! The soak: while a fixed rate is held for a duration, one line per window (a minute
//! by default) of what must stay flat under held load: completed orders/s and the p99 of
//! created -> final in that window, each watched service's RSS, Redis's `used_memory`,
//! and the lengths of both streams (bounded by the retention jobs).

use std::time::Duration;

use events::streams::{ORDER_EVENTS, PAYMENT_EVENTS};
use serde::Serialize;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::report::rss_mib;

/// What one window measured.
#[derive(Debug, Clone, Serialize)]
pub struct Window {
    /// Seconds since the soak began, at the window's end.
    pub at_seconds: u64,
    pub completed_per_second: f64,
    pub created_to_final_p99_ms: f64,
    /// RSS of each watched process, in MiB.
    pub rss_mib: Vec<(String, Option<f64>)>,
    pub redis_used_memory_mib: Option<f64>,
    /// `XLEN` of each stream.
    pub stream_lengths: Vec<(String, Option<u64>)>,
}

/// Where the soak looks.
struct Probes {
    pub orders: PgPool,
    pub redis: Option<redis::aio::MultiplexedConnection>,
    /// Keys of the streams to measure.
    pub streams: Vec<String>,
    pub watch: Vec<(String, u32)>,
}

/// Starts sampling, every `every`, the order database `orders`, the Redis at `redis_url`
/// (both streams of `namespace`) and the `watch`ed processes; cancel the token to stop
/// and collect the windows.
pub async fn start(
    orders: &PgPool,
    redis_url: &str,
    namespace: &str,
    watch: &[(String, u32)],
    every: Duration,
) -> (CancellationToken, tokio::task::JoinHandle<Vec<Window>>) {
    let redis = match redis::Client::open(redis_url) {
        Ok(client) => client.get_multiplexed_async_connection().await.ok(),
        Err(_) => None,
    };
    let keys = service_runtime::StreamKeys::new(namespace.to_owned());
    let probes = Probes {
        orders: orders.clone(),
        redis,
        streams: [ORDER_EVENTS, PAYMENT_EVENTS]
            .into_iter()
            .map(|s| keys.stream(s))
            .collect(),
        watch: watch.to_vec(),
    };
    let stop = CancellationToken::new();
    let windows = tokio::spawn(sample(probes, every, stop.clone()));
    (stop, windows)
}

/// Samples every `every` until `stop`, printing each window as it closes.
async fn sample(probes: Probes, every: Duration, stop: CancellationToken) -> Vec<Window> {
    let started = tokio::time::Instant::now();
    let mut windows = Vec::new();
    let mut ticks = tokio::time::interval_at(started + every, every);
    println!(
        "{:>6} {:>12} {:>10} {:>24} {:>10} {:>22}",
        "at s", "completed/s", "p99 ms", "RSS MiB", "Redis MiB", "stream lengths"
    );
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = ticks.tick() => {}
        }
        match window(&probes, started.elapsed(), every).await {
            Ok(window) => {
                print(&window);
                windows.push(window);
            }
            Err(e) => eprintln!("soak: a window could not be measured: {e}"),
        }
    }
    windows
}

async fn window(probes: &Probes, at: Duration, every: Duration) -> anyhow::Result<Window> {
    let (completed, p99): (i64, Option<f64>) = sqlx::query_as(
        "SELECT count(*),
                percentile_cont(0.99) WITHIN GROUP (
                    ORDER BY extract(epoch FROM updated_at - created_at) * 1000)
         FROM orders
         WHERE status <> 'PENDING' AND updated_at > now() - make_interval(secs => $1)",
    )
    .bind(every.as_secs_f64())
    .fetch_one(&probes.orders)
    .await?;
    let mut redis_memory = None;
    let mut stream_lengths = Vec::new();
    if let Some(redis) = &probes.redis {
        let info: String = redis::cmd("INFO")
            .arg("memory")
            .query_async(&mut redis.clone())
            .await?;
        redis_memory = info
            .lines()
            .find_map(|l| l.strip_prefix("used_memory:"))
            .and_then(|bytes| bytes.trim().parse::<f64>().ok())
            .map(|bytes| bytes / 1024.0 / 1024.0);
        for stream in &probes.streams {
            let length: Option<u64> = redis::cmd("XLEN")
                .arg(stream)
                .query_async(&mut redis.clone())
                .await
                .ok();
            stream_lengths.push((stream.clone(), length));
        }
    }
    Ok(Window {
        at_seconds: at.as_secs(),
        completed_per_second: completed as f64 / every.as_secs_f64(),
        created_to_final_p99_ms: p99.unwrap_or(0.0),
        rss_mib: probes
            .watch
            .iter()
            .map(|(name, pid)| (name.clone(), rss_mib(*pid)))
            .collect(),
        redis_used_memory_mib: redis_memory,
        stream_lengths,
    })
}

fn print(window: &Window) {
    let mib = |m: Option<f64>| m.map_or("?".to_owned(), |m| format!("{m:.1}"));
    let rss: Vec<String> = window.rss_mib.iter().map(|(_, m)| mib(*m)).collect();
    let lengths: Vec<String> = window
        .stream_lengths
        .iter()
        .map(|(_, n)| n.map_or("?".to_owned(), |n| n.to_string()))
        .collect();
    println!(
        "{:>6} {:>12.1} {:>10.1} {:>24} {:>10} {:>22}",
        window.at_seconds,
        window.completed_per_second,
        window.created_to_final_p99_ms,
        rss.join(" / "),
        mib(window.redis_used_memory_mib),
        lengths.join(" / ")
    );
}
