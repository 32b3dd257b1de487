//! Outbox relay (SPEC §4.1): publishes committed outbox rows to their streams.
//!
//! Two ways in, one guarantee (every committed row is published at least once; consumers'
//! inboxes absorb a repeat):
//! - **Handed over** ([`RelayQueue`]): the code that committed rows gives them to its own
//!   process's relay, which `XADD`s them at once, without reading them back, then marks
//!   them published. This is the normal path, and costs the event no round trip to
//!   Postgres before its `XADD`.
//! - **Claimed** ([`OutboxRelay::relay_once`]), the safety net: every poll the relay
//!   locks and marks, in one statement (`FOR UPDATE SKIP LOCKED`, so replicas share the
//!   work), unpublished rows older than `claim_after`, `XADD`s them in one pipeline, and
//!   commits the marks only then. Those are rows whose writer died before handing them
//!   over, or whose publish or mark failed.
//!
//! The two never race for a row: a handed-over row is published from memory only while
//! younger than half of `claim_after` (and marked within [`MARK_EVERY`] of its publish),
//! and claimed only once older than `claim_after`. A row that waited in memory longer (its
//! relay was busy, or Redis was down: after an outage the queue holds what was handed over
//! during the last retry's wait) is left to the poll, so it is published once, not by both
//! (SPEC §4.9: at most about 1.5 entries per event after an outage). A repeat then comes
//! only from a publish or a mark whose outcome was lost (a timeout, a crash).
//!
//! A row is marked published by deleting its entry in `outbox_pending` (see
//! [`crate::outbox`]). If Redis fails, the rows stay unpublished and the poll retries
//! them; a lost mark only means a repeat. So handed-over rows are marked together, at
//! most [`MARK_EVERY`] after their publish, in one statement for every hand-over
//! published meanwhile: under moderate load a hand-over holds a few rows, and a mark per
//! hand-over was a statement for every two or three orders. Marks waiting in memory are
//! bounded: once as many wait as the queue may hold rows, they are written at once.

use std::sync::Mutex;
use std::time::Duration;

use sqlx::{PgPool, Row};
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::backoff::Backoff;
use crate::keys::StreamKeys;
use crate::liveness::Heartbeat;
use crate::observability::EVENTS_PUBLISHED;
use crate::outbox::{QUEUE_LIMIT, RelayQueue};
use crate::redis_conn::RedisConnection;

/// How long the mark of a published handed-over row may wait for the marks of those
/// published after it ([`OutboxRelay::mark_published`]); far below the poll's
/// `claim_after`, so the poll does not take a row whose mark is on its way.
pub const MARK_EVERY: Duration = Duration::from_millis(100);

/// Why a relay pass published nothing. The rows stay unpublished and are retried.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("database: {0}")]
    /// The outbox could not be read or marked.
    Database(#[from] sqlx::Error),
    #[error("redis: {0}")]
    /// An entry could not be added.
    Redis(#[from] redis::RedisError),
}

/// The poll's claim: up to `$1` rows unpublished for more than `$2` seconds, locked (others'
/// skipped) and marked in one statement, found by their `outbox_pending` entries alone, so
/// its cost does not grow with the published rows the outbox keeps (a plan that walked the
/// outbox by age once did: `the_poll_touches_a_bounded_number_of_buffers_however_large_the_outbox`).
pub const CLAIM_UNPUBLISHED: &str = "
    DELETE FROM outbox_pending p USING outbox o
    WHERE o.event_id = p.event_id
      AND p.event_id IN (SELECT event_id FROM outbox_pending
                         WHERE queued_at < now() - make_interval(secs => $2)
                         ORDER BY event_id
                         LIMIT $1
                         FOR UPDATE SKIP LOCKED)
    RETURNING o.id, o.stream, o.event_type, o.fields";

/// Publishes one service's outbox.
pub struct OutboxRelay {
    pool: PgPool,
    redis: RedisConnection,
    keys: StreamKeys,
    batch_size: i64,
    poll_interval: Duration,
    claim_after: Duration,
    queue: RelayQueue,
    /// The event ids of handed-over rows published and not marked yet.
    unmarked: Mutex<Vec<uuid::Uuid>>,
    heartbeat: Heartbeat,
}

impl OutboxRelay {
    /// A relay publishing the rows handed to `queue`, and every `poll_interval` claiming
    /// up to `batch_size` rows per pass among those unpublished for longer than
    /// `claim_after`.
    pub fn new(
        pool: PgPool,
        redis: RedisConnection,
        keys: StreamKeys,
        batch_size: usize,
        (poll_interval, claim_after): (Duration, Duration),
        queue: RelayQueue,
    ) -> Self {
        Self {
            pool,
            redis,
            keys,
            batch_size: i64::try_from(batch_size).unwrap_or(i64::MAX),
            poll_interval,
            claim_after,
            queue,
            unmarked: Mutex::default(),
            heartbeat: Heartbeat::unwatched("relay"),
        }
    }

    /// Beats `heartbeat` after every pass (see [`crate::liveness`]).
    pub fn with_heartbeat(mut self, heartbeat: Heartbeat) -> Self {
        self.heartbeat = heartbeat;
        self
    }

    /// Publishes the rows handed over since the last call; [`mark_published`](Self::mark_published)
    /// marks them, or this call does once as many marks wait as the queue may hold rows
    /// ([`QUEUE_LIMIT`]), so what waits in memory stays bounded however fast rows come.
    /// Returns how many rows. Rows handed over more than half of `claim_after` ago are
    /// left to the poll (module docs); if Redis fails the rows are dropped from memory,
    /// still unpublished in the table, for the poll too.
    pub async fn publish_handed_over(&self) -> Result<usize, RelayError> {
        let rows = self.queue.take_younger_than(self.claim_after / 2);
        if rows.is_empty() {
            return Ok(0);
        }
        let mut pipe = redis::pipe();
        for row in &rows {
            pipe.cmd("XADD")
                .arg(self.keys.stream(&row.stream))
                .arg("*")
                .arg(&row.fields)
                .ignore();
        }
        self.tick(&mut pipe, rows.iter().map(|row| row.stream.as_str()));
        pipe.exec_async(&mut self.redis.clone()).await?;
        self.count_published(rows.iter().map(|row| (row.stream.as_str(), row.event_type)));
        let waiting = {
            let mut unmarked = self.lock_unmarked();
            unmarked.extend(rows.iter().map(|row| row.event_id));
            unmarked.len()
        };
        debug!(published = rows.len(), "handed-over outbox rows published");
        if waiting >= QUEUE_LIMIT {
            self.mark_published().await?;
        }
        Ok(rows.len())
    }

    /// Marks the handed-over rows published since the last call, in one statement.
    /// Returns how many. If it fails the marks are dropped: those rows are published
    /// again by the poll (a repeat their consumers' inboxes absorb).
    pub async fn mark_published(&self) -> Result<usize, RelayError> {
        let event_ids = std::mem::take(&mut *self.lock_unmarked());
        if event_ids.is_empty() {
            return Ok(0);
        }
        // The mark need not wait for the disk (a mark lost in a crash only means a repeat),
        // and the relay publishes nothing new while it waits: `synchronous_commit` off for
        // this statement's own transaction.
        sqlx::query(
            "WITH no_wait AS (SELECT set_config('synchronous_commit', 'off', true))
             DELETE FROM outbox_pending
             WHERE event_id = ANY($1) AND EXISTS (SELECT FROM no_wait)",
        )
        .bind(&event_ids)
        .execute(&self.pool)
        .await?;
        Ok(event_ids.len())
    }

    fn lock_unmarked(&self) -> std::sync::MutexGuard<'_, Vec<uuid::Uuid>> {
        self.unmarked.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Claims one batch of rows unpublished for longer than `claim_after`, oldest first,
    /// and publishes them. Returns how many.
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
        let rows = sqlx::query(CLAIM_UNPUBLISHED)
            .bind(self.batch_size)
            .bind(self.claim_after.as_secs_f64())
            .fetch_all(&mut *tx)
            .await?;
        if rows.is_empty() {
            return Ok(0);
        }
        // `RETURNING` keeps no order: publish oldest first, as the rows were committed.
        let mut rows = rows
            .iter()
            .map(|row| {
                Ok((
                    row.try_get::<i64, _>("id")?,
                    row.try_get::<&str, _>("stream")?,
                    row.try_get::<&str, _>("event_type")?,
                    row.try_get::<Vec<String>, _>("fields")?,
                ))
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
        rows.sort_by_key(|(id, ..)| *id);
        let mut pipe = redis::pipe();
        for (_, stream, _, fields) in &rows {
            pipe.cmd("XADD")
                .arg(self.keys.stream(stream))
                .arg("*")
                .arg(fields)
                .ignore();
        }
        self.tick(&mut pipe, rows.iter().map(|(_, stream, ..)| *stream));
        pipe.exec_async(&mut self.redis.clone()).await?;
        tx.commit().await?;
        self.count_published(
            rows.iter()
                .map(|(_, stream, event_type, _)| (*stream, *event_type)),
        );
        debug!(published = rows.len(), "outbox rows claimed and published");
        Ok(rows.len())
    }

    /// Adds one tick per stream written (`XADD <ticks> MAXLEN 1`), after its entries in the
    /// same pipeline: what wakes the stream's consumers ([`StreamKeys::ticks`]).
    fn tick<'a>(&self, pipe: &mut redis::Pipeline, streams: impl Iterator<Item = &'a str>) {
        let mut ticked: Vec<&str> = Vec::new();
        for stream in streams {
            if !ticked.contains(&stream) {
                ticked.push(stream);
                pipe.cmd("XADD")
                    .arg(self.keys.ticks(stream))
                    .arg("MAXLEN")
                    .arg(1)
                    .arg("*")
                    .arg("t")
                    .arg(1)
                    .ignore();
            }
        }
    }

    /// Counts published events by stream and type (one update per pair, not per event).
    fn count_published<'a>(&self, published: impl Iterator<Item = (&'a str, &'a str)>) {
        let mut counts: Vec<((&str, &str), u64)> = Vec::new();
        for pair in published {
            match counts.iter_mut().find(|(seen, _)| *seen == pair) {
                Some((_, n)) => *n += 1,
                None => counts.push((pair, 1)),
            }
        }
        for ((stream, event_type), n) in counts {
            metrics::counter!(EVENTS_PUBLISHED, "stream" => self.keys.stream(stream), "event_type" => event_type.to_owned())
                .increment(n);
        }
    }

    /// Publishes until `shutdown`: handed-over rows as they come (marked within
    /// [`MARK_EVERY`]), claimed rows every `poll_interval`. Then publishes and marks what
    /// is handed over, and what is claimable, once more.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut backoff = Backoff::new("relay");
        let mut poll = tokio::time::interval(self.poll_interval);
        poll.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // Armed by a publish, so an idle relay has no timer running.
        let mut marks_due = std::pin::pin!(tokio::time::sleep(Duration::ZERO));
        let mut marks_armed = false;
        loop {
            let pass = tokio::select! {
                () = shutdown.cancelled() => break,
                () = self.queue.ready() => match self.publish_handed_over().await {
                    Ok(0) => Ok(()),
                    Ok(_) => {
                        if !marks_armed {
                            marks_due.as_mut().reset(tokio::time::Instant::now() + MARK_EVERY);
                            marks_armed = true;
                        }
                        Ok(())
                    }
                    Err(e) => Err(e),
                },
                () = &mut marks_due, if marks_armed => {
                    marks_armed = false;
                    self.mark_published().await.map(drop)
                }
                _ = poll.tick() => self.drain().await,
            };
            self.heartbeat.beat();
            match pass {
                Ok(()) => backoff.reset(),
                Err(e) => {
                    warn!(error = %e, "outbox relay failed; unpublished rows are retried");
                    if !backoff.wait(&shutdown).await {
                        break;
                    }
                }
            }
        }
        match self.flush().await {
            Ok(()) => info!("outbox relay stopped"),
            Err(e) => {
                warn!(error = %e, "outbox relay stopped without flushing; rows stay for the next start")
            }
        }
    }

    /// Publishes and marks what is handed over, then drains what is claimable.
    async fn flush(&self) -> Result<(), RelayError> {
        self.publish_handed_over().await?;
        self.mark_published().await?;
        self.drain().await
    }

    /// Publishes batches until a short one shows the outbox is empty.
    async fn drain(&self) -> Result<(), RelayError> {
        while self.relay_once().await? as i64 == self.batch_size {
            self.heartbeat.beat();
        }
        Ok(())
    }
}
