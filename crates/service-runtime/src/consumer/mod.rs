//! The consumer loop: `XREADGROUP` a batch → decode → apply the batch in one transaction
//! (inbox records of all its events in one statement, then the handler's effects of the
//! new ones, set-based) → commit → `XACK` the batch (SPEC §4.2, §4.4). A few statements
//! and one commit per batch rather than per event is what lets the consumers keep up with
//! the rate at which events are published.
//!
//! Guarantees kept here:
//! - an entry is acked only after the transaction holding its effect and its inbox row
//!   committed, so a crash at any point leaves it pending and it is delivered again;
//! - a redelivered event finds its inbox row and has no second effect;
//! - an entry that cannot be decoded, or that its handler rejects, is copied to the
//!   dead-letter stream and acked: one bad entry never blocks the ones behind it;
//! - an unknown `event_type` is acked and skipped (tolerant reader);
//! - an event of a newer `schema_version` than this build reads is parked (one copy per
//!   `event_id`) and acked, never dead-lettered, and applied from there by a consumer of a
//!   build that reads it (`park.rs`);
//! - an event that fails undoes only itself: the batch is redone one event at a time, a
//!   savepoint each, and the rest of it commits;
//! - while the database is unreachable (or the event lost a deadlock) nothing of it is
//!   acked: it is retried in place with backoff (not redelivered, so an outage does not
//!   use up its deliveries);
//! - an event that fails otherwise stays pending and is read again from this consumer's
//!   pending list; failing on its `MAX_DELIVERIES`th delivery (or arriving past it, after
//!   crash loops) sends it to the dead-letter stream;
//! - entries left pending by a consumer that died are reclaimed (`XAUTOCLAIM`) by any live
//!   one once idle longer than `CLAIM_MIN_IDLE_MS`, and processed like its own;
//! - a group that vanished (`NOGROUP`, e.g. Redis restarted empty) is created again;
//! - what a read brings into the service is bounded whatever the stream holds (SPEC §4.9):
//!   the `XREADGROUP` runs inside Redis, in a script that stops at a byte budget and
//!   hands an entry over `MAX_ENTRY_BYTES` over as its id and size, dead-lettered unread;
//!   with nothing to read, a consumer blocks on the stream's ticks (one tiny entry the
//!   relay adds after each batch), never on the stream;
//! - no lock of a frozen replica stalls it: contention is retried in place (no delivery
//!   spent) for as long as a session of the service can hold a lock, and a batch
//!   transaction has a deadline of its own (see [`crate::settings::DatabaseBounds`]).
//!
//! Replicas of a service take turns reading new entries (`turn.rs`), so that a second one
//! does not split the batches one would read whole.
//!
//! Here: the run loop. The handler contract is in `handler.rs`, the settings and a
//! batch's report in `config.rs`. A batch from read to ack
//! is in `batch.rs` (what each entry needs decided in `plan.rs`), the database side of it
//! in `apply.rs`, reading in `read.rs`, reclaiming in `reclaim.rs`, the reading turn in
//! `turn.rs`, parked events in `park.rs`, and dead letters in [`crate::dead_letters`].

mod apply;
mod batch;
mod config;
mod handler;
mod park;
mod plan;
mod read;
mod reclaim;
mod turn;

use std::time::Duration;

use futures::future::BoxFuture;
use redis::RedisError;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::backoff::Backoff;
use crate::dead_letters::DeadLetterStream;
use crate::keys::StreamKeys;
use crate::liveness::Heartbeat;
use crate::outbox::RelayQueue;
use crate::redis_conn::RedisConnections;
use crate::stream_reply::RawEntry;
pub use config::{BatchReport, ConsumerConfig, Verification};
pub use handler::{ConsumeError, EventHandler, HandleError};
use turn::ReadTurn;

/// Where a consumer reads in the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadFrom {
    /// Entries never delivered to the group (`>`), blocking up to `BLOCK`.
    New,
    /// This consumer's own pending entries (`0`): ones it failed to finish.
    OwnPending,
}

/// An entry handed to the consumer outside the stream: a dead letter an operator
/// replays ([`crate::dead_letters`]). Object-safe, so the admin API holds any service's
/// consumer.
pub(crate) trait Replay: Send + Sync {
    /// Processes `entry` as if it had just been delivered for the first time: applied
    /// (or found a duplicate) and acked, or dead-lettered again; not retried in place.
    fn replay(&self, entry: RawEntry) -> BoxFuture<'_, Result<BatchReport, ConsumeError>>;
}

impl<H: EventHandler> Replay for Consumer<H> {
    fn replay(&self, entry: RawEntry) -> BoxFuture<'_, Result<BatchReport, ConsumeError>> {
        Box::pin(async move {
            self.process(std::slice::from_ref(&entry), ReadFrom::New, None)
                .await
        })
    }
}

/// A consumer of one stream in one group.
pub struct Consumer<H> {
    pool: PgPool,
    redis: RedisConnections,
    config: ConsumerConfig,
    stream_key: String,
    /// The stream's ticks, which a consumer with nothing to read blocks on.
    ticks_key: String,
    /// The group's parked events (see [`park`]).
    parked_key: String,
    dead_letters: DeadLetterStream,
    handler: H,
    relay: RelayQueue,
    turn: ReadTurn,
    heartbeat: Heartbeat,
    /// Which signatures it accepts, and what it does with an entry that has none of them.
    verification: Verification,
}

impl<H: EventHandler> Consumer<H> {
    /// A consumer of `config.stream` as `config.group`, applying its events with
    /// `handler` on `pool` and handing the rows they wrote to `relay`. Verifies nothing
    /// and beats no watched heartbeat until told to ([`with_verification`](Self::with_verification),
    /// [`with_heartbeat`](Self::with_heartbeat)).
    pub fn new(
        pool: PgPool,
        redis: RedisConnections,
        keys: &StreamKeys,
        config: ConsumerConfig,
        handler: H,
        relay: RelayQueue,
    ) -> Self {
        Self {
            relay,
            turn: ReadTurn::new(
                keys.read_turn(config.stream, config.group),
                config.consumer.clone(),
                config.block,
            ),
            stream_key: keys.stream(config.stream),
            ticks_key: keys.ticks(config.stream),
            parked_key: keys.parked(config.stream, config.group),
            dead_letters: DeadLetterStream::new(
                redis.commands.clone(),
                keys,
                config.stream,
                config.group,
            ),
            pool,
            redis,
            config,
            handler,
            heartbeat: Heartbeat::unwatched("consumer"),
            verification: Verification::off(),
        }
    }

    /// Verifies every entry's signature as `verification` says.
    pub fn with_verification(mut self, verification: Verification) -> Self {
        self.verification = verification;
        self
    }

    /// Beats `heartbeat` every time the loop comes round (see [`crate::liveness`]).
    pub fn with_heartbeat(mut self, heartbeat: Heartbeat) -> Self {
        self.heartbeat = heartbeat;
        self
    }

    /// `XGROUP CREATE <stream> <group> 0 MKSTREAM`: from id 0, so events published before
    /// the group existed are still processed. An existing group is fine.
    pub async fn ensure_group(&self) -> Result<(), ConsumeError> {
        let created: Result<(), RedisError> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&self.stream_key)
            .arg(self.config.group)
            .arg("0")
            .arg("MKSTREAM")
            .exec_async(&mut self.redis.commands.clone())
            .await;
        match created {
            Err(e) if e.code() != Some("BUSYGROUP") => Err(e.into()),
            _ => Ok(()),
        }
    }

    /// Reads the next batch of new entries (blocking up to `BLOCK`) and processes it.
    pub async fn consume_once(&self) -> Result<BatchReport, ConsumeError> {
        self.consume(ReadFrom::New, None).await
    }

    /// Re-reads and processes this consumer's own pending entries: those a previous
    /// attempt could not finish, or that a process with the same consumer name left.
    pub async fn consume_own_pending_once(&self) -> Result<BatchReport, ConsumeError> {
        self.consume(ReadFrom::OwnPending, None).await
    }

    /// Runs until `shutdown`: first its own pending entries, then new ones. A read in
    /// progress is let finish (at most `BLOCK`) and its entries are processed and acked
    /// before returning, so nothing delivered is left half done.
    pub async fn run(&self, shutdown: CancellationToken) {
        let mut backoff = Backoff::new("consumer");
        let mut from = ReadFrom::OwnPending;
        let mut group_ready = false;
        let reclaim_every = (self.config.claim_min_idle / 2)
            .clamp(Duration::from_millis(50), Duration::from_secs(30));
        let mut next_reclaim = tokio::time::Instant::now();
        while !shutdown.is_cancelled() {
            self.heartbeat.beat();
            if !group_ready {
                match self.ensure_group().await {
                    Ok(()) => group_ready = true,
                    Err(e) => {
                        warn!(stream = %self.stream_key, error = %e, "cannot create consumer group; retrying");
                        backoff.wait(&shutdown).await;
                        continue;
                    }
                }
            }
            if tokio::time::Instant::now() >= next_reclaim {
                next_reclaim = tokio::time::Instant::now() + reclaim_every;
                if let Err(e) = self.unpark(&shutdown).await {
                    warn!(stream = %self.stream_key, error = %e, "putting parked events back failed");
                }
                match self.reclaim_stuck_entries().await {
                    Ok(0) => {}
                    Ok(_) => from = ReadFrom::OwnPending,
                    Err(e) if e.is_missing_group() => group_ready = false,
                    Err(e) => {
                        warn!(stream = %self.stream_key, error = %e, "reclaiming stuck entries failed")
                    }
                }
            }
            match self.consume(from, Some(&shutdown)).await {
                Ok(report) if report.retry_later > 0 => {
                    from = ReadFrom::OwnPending;
                    backoff.wait(&shutdown).await;
                }
                Ok(report) => {
                    backoff.reset();
                    if from == ReadFrom::OwnPending && report.delivered == 0 {
                        from = ReadFrom::New;
                    }
                }
                Err(e) if e.is_missing_group() => {
                    warn!(stream = %self.stream_key, group = self.config.group, "consumer group is gone (Redis lost its data?); creating it again");
                    group_ready = false;
                }
                Err(e) => {
                    warn!(stream = %self.stream_key, error = %e, "stream read failed; retrying");
                    from = ReadFrom::OwnPending;
                    backoff.wait(&shutdown).await;
                }
            }
        }
        info!(stream = %self.stream_key, consumer = %self.config.consumer, "consumer stopped");
    }
}
