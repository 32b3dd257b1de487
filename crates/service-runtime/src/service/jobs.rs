//! Periodic jobs: the service's own (order-service's reconciler, say) and the runtime's (retention,
//! the gauges), each run every so often until shutdown.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::Infrastructure;
use crate::memory;
use crate::observability::{self, GAUGE_REFRESH};
use crate::outbox::{self, AwaitingAnswer};
use crate::retention;
use crate::settings::CommonSettings;

/// How often the database's stores (outbox, inbox, a service's own) are pruned.
pub const PRUNE_INTERVAL: Duration = Duration::from_secs(600);

type JobFuture = Pin<Box<dyn Future<Output = anyhow::Result<u64>> + Send>>;

/// A job run every `every` until shutdown (the outbox sweeper, a service's reconciler).
/// Each run returns how many things it did, logged when not zero.
pub struct PeriodicJob {
    pub(super) name: &'static str,
    every: Duration,
    run: Box<dyn FnMut() -> JobFuture + Send>,
}

impl PeriodicJob {
    /// A job named `name` that calls `run` every `every`, first right at start.
    pub fn new<F, Fut>(name: &'static str, every: Duration, mut run: F) -> Self
    where
        F: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = anyhow::Result<u64>> + Send + 'static,
    {
        Self {
            name,
            every,
            run: Box::new(move || Box::pin(run())),
        }
    }

    pub(super) async fn run_until(mut self, shutdown: CancellationToken) {
        let mut ticks = tokio::time::interval(self.every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = ticks.tick() => match (self.run)().await {
                    Ok(0) => {}
                    Ok(done) => info!(job = self.name, done, "periodic job did work"),
                    Err(e) => warn!(job = self.name, error = format!("{e:#}"), "periodic job failed; next run retries"),
                },
            }
        }
    }
}

/// A stream a service consumes, as the jobs that watch and trim it need it.
pub(super) struct Consumed {
    /// Key of the stream.
    pub stream: String,
    /// Key of its dead-letter stream.
    pub dead_letters: String,
    pub group: &'static str,
    /// This process's consumer name.
    pub consumer: String,
}

/// The jobs every service runs: retention (the outbox sweeper, the inbox pruner, the
/// stream trimmer), the gauges of the outbox and of the consumer group, and returning
/// freed memory to the system.
pub(super) fn runtime_jobs(
    infra: &Infrastructure,
    settings: &CommonSettings,
    consumed: Vec<Consumed>,
    published: Vec<String>,
    awaiting: Option<AwaitingAnswer>,
) -> Vec<PeriodicJob> {
    let (pool, retention) = (infra.pool.clone(), settings.outbox_retention());
    let sweeper = PeriodicJob::new("outbox sweeper", PRUNE_INTERVAL, move || {
        let pool = pool.clone();
        async move { Ok(outbox::sweep_published(&pool, retention, awaiting).await?) }
    });
    let (pool, retention) = (infra.pool.clone(), settings.retention.inbox_retention());
    let inbox_pruner = PeriodicJob::new("inbox pruner", PRUNE_INTERVAL, move || {
        let pool = pool.clone();
        async move { Ok(retention::prune_inbox(&pool, retention).await?) }
    });
    let pool = infra.pool.clone();
    let outbox_gauges = PeriodicJob::new("outbox gauges", GAUGE_REFRESH, move || {
        let pool = pool.clone();
        async move { observability::refresh_outbox_gauges(&pool).await }
    });
    let consumed = std::sync::Arc::new(consumed);
    let (redis, groups) = (infra.redis.commands.clone(), consumed.clone());
    let group_gauges = PeriodicJob::new("consumer group gauges", GAUGE_REFRESH, move || {
        let (redis, groups) = (redis.clone(), groups.clone());
        async move {
            for c in groups.iter() {
                observability::refresh_group_gauges(redis.clone(), &c.stream, c.group).await?;
            }
            Ok(0)
        }
    });
    let (redis, limits) = (infra.redis.commands.clone(), settings.retention.clone());
    let published = std::sync::Arc::new(published);
    let trimmer = PeriodicJob::new("stream trimmer", limits.stream_trim_interval(), move || {
        let (redis, limits, consumed) = (redis.clone(), limits.clone(), consumed.clone());
        let published = published.clone();
        async move {
            let mut trimmed = 0;
            for stream in published.iter() {
                trimmed +=
                    retention::trim_stream(&redis, stream, limits.stream_retention()).await?;
            }
            for c in consumed.iter() {
                trimmed += retention::trim_dead_letters(
                    &redis,
                    &c.dead_letters,
                    limits.dead_letter_retention(),
                )
                .await?;
                let idle = limits.consumer_idle_delete();
                trimmed +=
                    retention::delete_idle_consumers(&redis, &c.stream, c.group, idle, &c.consumer)
                        .await?;
                retention::measure_streams(&redis, &[&c.stream, &c.dead_letters]).await?;
            }
            Ok(trimmed)
        }
    });
    let memory = PeriodicJob::new("memory release", memory::RELEASE_INTERVAL, || async {
        memory::release_free();
        Ok(0)
    });
    vec![
        sweeper,
        inbox_pruner,
        trimmer,
        outbox_gauges,
        group_gauges,
        memory,
    ]
}
