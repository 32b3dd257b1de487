//! Outbox relay (SPEC §4.1): publishes committed outbox rows to their streams.
//!
//! [`OutboxRelay::relay_once`] locks and marks a batch of unpublished rows in one
//! statement (`FOR UPDATE SKIP LOCKED`, so several replicas share the work without
//! publishing a row twice at once), `XADD`s them in one pipeline, and commits the marks
//! (without waiting for the disk: a lost mark only means a repeat). If Redis fails the
//! transaction rolls back and the rows stay unpublished; if the commit fails after the
//! `XADD`, the rows are published again later with the same `event_id`, which consumers'
//! inboxes absorb. Either way an event is published at least once and applied once.
//!
//! [`OutboxRelay::run`] wakes when its process committed rows ([`RelayWaker`]), with a
//! periodic poll as the safety net for rows no live process woke it for (their writer
//! died between commit and wake, or another replica's relay is gone).

use std::time::Duration;

use sqlx::{PgPool, Row};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::backoff::Backoff;
use crate::keys::StreamKeys;
use crate::observability::EVENTS_PUBLISHED;
use crate::outbox::RelayWaker;
use crate::redis_conn::RedisConnection;

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
    redis: RedisConnection,
    keys: StreamKeys,
    batch_size: i64,
    poll_interval: Duration,
    waker: RelayWaker,
}

impl OutboxRelay {
    /// A relay publishing up to `batch_size` rows per pass, woken by `waker`, polling
    /// every `poll_interval` when nobody wakes it.
    pub fn new(
        pool: PgPool,
        redis: RedisConnection,
        keys: StreamKeys,
        batch_size: usize,
        poll_interval: Duration,
        waker: RelayWaker,
    ) -> Self {
        Self {
            pool,
            redis,
            keys,
            batch_size: i64::try_from(batch_size).unwrap_or(i64::MAX),
            poll_interval,
            waker,
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
        // Claimed and marked in one statement; the mark commits only after the `XADD`s
        // answered, so a failed publish leaves the rows unpublished.
        let rows = sqlx::query(
            "UPDATE outbox SET published_at = now()
             WHERE id IN (SELECT id FROM outbox
                          WHERE published_at IS NULL
                          ORDER BY id
                          LIMIT $1
                          FOR UPDATE SKIP LOCKED)
             RETURNING id, stream, event_type, fields",
        )
        .bind(self.batch_size)
        .fetch_all(&mut *tx)
        .await?;
        if rows.is_empty() {
            return Ok(0);
        }
        // `RETURNING` keeps no order: publish oldest first, as the rows were committed.
        let mut rows = rows
            .into_iter()
            .map(|row| Ok((row.try_get::<i64, _>("id")?, row)))
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
        rows.sort_by_key(|(id, _)| *id);
        let mut pipe = redis::pipe();
        let mut published = Vec::with_capacity(rows.len());
        for (_, row) in &rows {
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
        }
        pipe.exec_async(&mut self.redis.clone()).await?;
        tx.commit().await?;
        for (stream, event_type) in published {
            metrics::counter!(EVENTS_PUBLISHED, "stream" => stream, "event_type" => event_type)
                .increment(1);
        }
        debug!(published = rows.len(), "outbox rows published");
        Ok(rows.len())
    }

    /// Publishes until `shutdown`, then makes one last pass to flush what is committed.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut backoff = Backoff::new();
        loop {
            if let Err(e) = self.drain().await {
                warn!(error = %e, "outbox relay failed; retrying");
                if !backoff.wait(&shutdown).await {
                    break;
                }
                continue;
            }
            backoff.reset();
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(self.poll_interval) => {}
                () = self.waker.woken() => {}
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
}
