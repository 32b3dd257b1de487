//! Periodic jobs: the service's own (the order reconciler) and the runtime's (the outbox
//! sweeper, the gauges), each run every so often until shutdown.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::Infrastructure;
use crate::observability::{self, GAUGE_REFRESH};
use crate::outbox::{self, AwaitingAnswer};
use crate::settings::CommonSettings;

/// How often the outbox sweeper looks for rows past their retention.
const SWEEP_INTERVAL: Duration = Duration::from_secs(600);

type JobFuture = Pin<Box<dyn Future<Output = anyhow::Result<u64>> + Send>>;

/// A job run every `every` until shutdown (the outbox sweeper, the order reconciler).
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

/// The jobs every service runs: the outbox sweeper and the gauges of the outbox and of
/// the consumer group on `consumes`.
pub(super) fn runtime_jobs(
    infra: &Infrastructure,
    settings: &CommonSettings,
    consumes: &str,
    group: &'static str,
    awaiting: Option<AwaitingAnswer>,
) -> [PeriodicJob; 3] {
    let (pool, retention) = (infra.pool.clone(), settings.outbox_retention());
    let sweeper = PeriodicJob::new("outbox sweeper", SWEEP_INTERVAL, move || {
        let pool = pool.clone();
        async move { Ok(outbox::sweep_published(&pool, retention, awaiting).await?) }
    });
    let pool = infra.pool.clone();
    let outbox_gauges = PeriodicJob::new("outbox gauges", GAUGE_REFRESH, move || {
        let pool = pool.clone();
        async move { observability::refresh_outbox_gauges(&pool).await }
    });
    let (redis, stream, group) = (
        infra.redis.commands.clone(),
        infra.keys.stream(consumes),
        group,
    );
    let group_gauges = PeriodicJob::new("consumer group gauges", GAUGE_REFRESH, move || {
        let (redis, stream) = (redis.clone(), stream.clone());
        async move { observability::refresh_group_gauges(redis, &stream, group).await }
    });
    [sweeper, outbox_gauges, group_gauges]
}
