//! Outbox relay (SPEC §4.1): publishes committed outbox rows to their streams.
//!
//! [`OutboxRelay::relay_once`] locks a batch of unpublished rows (`FOR UPDATE SKIP
//! LOCKED`, so several replicas share the work without publishing a row twice at once),
//! `XADD`s them in one pipeline, marks them published and commits (without waiting for
//! the disk: a lost mark only means a repeat). If Redis fails the
//! transaction rolls back and the rows stay unpublished; if the commit fails after the
//! `XADD`, the rows are published again later with the same `event_id`, which consumers'
//! inboxes absorb. Either way an event is published at least once and applied once.
//!
//! [`OutboxRelay::run`] wakes on `NOTIFY outbox` (sent by a trigger on insert), with a
//! periodic poll as the safety net for notifications lost while reconnecting.

use std::time::Duration;

use futures::FutureExt;
use sqlx::postgres::PgListener;
use sqlx::{PgPool, Row};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::backoff::Backoff;
use crate::keys::StreamKeys;
use crate::observability::EVENTS_PUBLISHED;
use crate::outbox::NOTIFY_CHANNEL;
use redis::aio::ConnectionManager;

/// Why a relay pass published nothing. The rows stay unpublished and are retried.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
}

/// Publishes one service's outbox.
pub struct OutboxRelay {
    pool: PgPool,
    redis: ConnectionManager,
    keys: StreamKeys,
    batch_size: i64,
    poll_interval: Duration,
}

impl OutboxRelay {
    /// A relay publishing up to `batch_size` rows per pass, polling every
    /// `poll_interval` when no notification arrives.
    pub fn new(
        pool: PgPool,
        redis: ConnectionManager,
        keys: StreamKeys,
        batch_size: usize,
        poll_interval: Duration,
    ) -> Self {
        Self {
            pool,
            redis,
            keys,
            batch_size: i64::try_from(batch_size).unwrap_or(i64::MAX),
            poll_interval,
        }
    }

    /// Publishes one batch of unpublished rows, oldest first. Returns how many.
    #[tracing::instrument(skip_all, level = "debug")]
    pub async fn relay_once(&self) -> Result<usize, RelayError> {
        // Marking rows published need not wait for the disk: if a crash loses the mark,
        // the rows are published again and consumers' inboxes absorb the repeat. (The
        // rows themselves were committed durably by the transaction that made them.)
        let mut tx = self
            .pool
            .begin_with("BEGIN; SET LOCAL synchronous_commit TO OFF")
            .await?;
        let rows = sqlx::query(
            "SELECT id, stream, event_type, fields FROM outbox
             WHERE published_at IS NULL
             ORDER BY id
             LIMIT $1
             FOR UPDATE SKIP LOCKED",
        )
        .bind(self.batch_size)
        .fetch_all(&mut *tx)
        .await?;
        if rows.is_empty() {
            return Ok(0);
        }
        let mut pipe = redis::pipe();
        let mut ids = Vec::with_capacity(rows.len());
        let mut published = Vec::with_capacity(rows.len());
        for row in &rows {
            let stream: &str = row.try_get("stream")?;
            published.push((
                self.keys.stream(stream),
                row.try_get::<String, _>("event_type")?,
            ));
            let fields: Vec<String> = row.try_get("fields")?;
            pipe.cmd("XADD")
                .arg(self.keys.stream(stream))
                .arg("*")
                .arg(fields)
                .ignore();
            ids.push(row.try_get::<i64, _>("id")?);
        }
        pipe.exec_async(&mut self.redis.clone()).await?;
        sqlx::query("UPDATE outbox SET published_at = now() WHERE id = ANY($1)")
            .bind(&ids)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        for (stream, event_type) in published {
            metrics::counter!(EVENTS_PUBLISHED, "stream" => stream, "event_type" => event_type)
                .increment(1);
        }
        debug!(published = ids.len(), "outbox rows published");
        Ok(ids.len())
    }

    /// Publishes until `shutdown`, then makes one last pass to flush what is committed.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut backoff = Backoff::new();
        let mut listener: Option<PgListener> = None;
        loop {
            if let Err(e) = self.drain().await {
                warn!(error = %e, "outbox relay failed; retrying");
                if !backoff.wait(&shutdown).await {
                    break;
                }
                continue;
            }
            backoff.reset();
            if shutdown.is_cancelled() {
                break;
            }
            if listener.is_none() {
                listener = self.listen().await;
            }
            let lost_listener = tokio::select! {
                () = shutdown.cancelled() => false,
                () = tokio::time::sleep(self.poll_interval) => false,
                notified = wait_for_notification(listener.as_mut()) => notified.is_err(),
            };
            if lost_listener {
                listener = None;
            }
        }
        match self.drain().await {
            Ok(()) => info!("outbox relay stopped"),
            Err(e) => {
                warn!(error = %e, "outbox relay stopped without flushing; rows stay for the next start")
            }
        }
    }

    /// Publishes batches until a short one shows the outbox is empty.
    async fn drain(&self) -> Result<(), RelayError> {
        while self.relay_once().await? as i64 == self.batch_size {}
        Ok(())
    }

    async fn listen(&self) -> Option<PgListener> {
        let listener = async {
            let mut listener = PgListener::connect_with(&self.pool).await?;
            listener.listen(NOTIFY_CHANNEL).await?;
            Ok::<_, sqlx::Error>(listener)
        };
        match listener.await {
            Ok(listener) => Some(listener),
            Err(e) => {
                warn!(error = %e, "cannot LISTEN for outbox inserts; polling until it can");
                None
            }
        }
    }
}

/// Waits for the next `NOTIFY outbox`, then swallows every other one that has arrived
/// (one pass serves them all: each insert notifies, and a pass per notification would
/// trail behind a busy outbox long after it is empty). Never returns without a listener.
async fn wait_for_notification(listener: Option<&mut PgListener>) -> Result<(), sqlx::Error> {
    let Some(listener) = listener else {
        return std::future::pending().await;
    };
    listener.recv().await?;
    // `try_recv` is cancel-safe (a message is read whole or not at all), so polling it
    // once and dropping it when nothing more has arrived loses nothing.
    while let Some(Some(_)) = listener.try_recv().now_or_never().transpose()? {}
    Ok(())
}
