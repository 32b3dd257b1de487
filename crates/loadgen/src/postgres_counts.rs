//! What Postgres did per order, counted, not timed (issue #29: counts are stable on a
//! noisy box, times are not): WAL bytes (from `pg_current_wal_lsn`, exact), WAL records
//! (`pg_stat_wal`) and commits (`pg_stat_database`, every database of the server: the two
//! services' and loadgen's own polls), and the CPU of every `postgres` process.
//! Server-wide, so nothing else should use the server meanwhile.
//!
//! Each measured phase (the system, each reference) starts right after a `CHECKPOINT`
//! ([`checkpoint`]), so that none pays for another's dirty pages, and all pay alike for
//! the full-page images Postgres writes to the WAL after a checkpoint. Checkpoints during
//! the system's run are counted: one is a stall of the disk that shows in the tail.

use std::time::Duration;

use serde::Serialize;
use sqlx::PgPool;

use crate::report::cpu_seconds;

/// The server's counters at one moment.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    wal_bytes: f64,
    wal_records: f64,
    commits: f64,
    checkpoints: f64,
    cpu_seconds: f64,
}

/// Per order, between two samples.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct PerOrder {
    pub wal_bytes: f64,
    pub wal_records: f64,
    pub commits: f64,
    pub cpu_ms: f64,
    /// Checkpoints that began between the two samples (not per order).
    pub checkpoints: u64,
}

/// The counters now. Backends report their WAL records and commits when a transaction
/// ends, at most once a second: take the closing sample a moment after the load.
pub async fn sample(pool: &PgPool) -> sqlx::Result<Sample> {
    let (wal_bytes, wal_records, commits, checkpoints): (f64, f64, f64, f64) = sqlx::query_as(
        "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::float8,
                (SELECT wal_records FROM pg_stat_wal)::float8,
                (SELECT sum(xact_commit) FROM pg_stat_database)::float8,
                (SELECT checkpoints_timed + checkpoints_req FROM pg_stat_bgwriter)::float8",
    )
    .fetch_one(pool)
    .await?;
    Ok(Sample {
        wal_bytes,
        wal_records,
        commits,
        checkpoints,
        cpu_seconds: postgres_cpu_seconds(),
    })
}

/// A `CHECKPOINT`, before a measured phase. It needs a superuser (or `pg_checkpoint`);
/// refused, the phase runs anyway and the output says so.
pub async fn checkpoint(pool: &PgPool) {
    if let Err(e) = sqlx::query("CHECKPOINT").execute(pool).await {
        println!("no CHECKPOINT before the run ({e}): its figures may include another's");
    }
}

/// The closing sample: once the backends have reported what they did.
pub async fn sample_after_load(pool: &PgPool) -> sqlx::Result<Sample> {
    tokio::time::sleep(Duration::from_millis(1500)).await;
    sample(pool).await
}

impl Sample {
    /// What happened from `self` to `later`, per order of `orders`.
    pub fn per_order(&self, later: &Sample, orders: u64) -> PerOrder {
        let per = |a: f64, b: f64| (b - a) / orders.max(1) as f64;
        PerOrder {
            wal_bytes: per(self.wal_bytes, later.wal_bytes),
            wal_records: per(self.wal_records, later.wal_records),
            commits: per(self.commits, later.commits),
            cpu_ms: per(self.cpu_seconds, later.cpu_seconds) * 1000.0,
            checkpoints: (later.checkpoints - self.checkpoints).max(0.0) as u64,
        }
    }
}

/// User and system CPU seconds of every process named `postgres` on this machine (the
/// server, its backends and its background workers; Linux).
fn postgres_cpu_seconds() -> f64 {
    let Ok(processes) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    processes
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|name| name.trim() == "postgres")
        })
        .filter_map(cpu_seconds)
        .sum()
}
