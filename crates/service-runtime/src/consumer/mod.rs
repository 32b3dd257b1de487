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
//! Here: the handler contract, the settings and the run loop. A batch from read to ack
//! is in `batch.rs` (what each entry needs decided in `plan.rs`), the database side of it
//! in `apply.rs`, reading in `read.rs`, reclaiming in `reclaim.rs`, the reading turn in
//! `turn.rs`, parked events in `park.rs`, and dead letters in [`crate::dead_letters`].

mod apply;
mod batch;
mod park;
mod plan;
mod read;
mod reclaim;
mod turn;

use std::future::Future;
use std::time::Duration;

use events::{Envelope, VerifyingKeys};
use futures::future::BoxFuture;
use redis::RedisError;
use sqlx::{PgConnection, PgPool};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::backoff::Backoff;
use crate::dead_letters::DeadLetterStream;
use crate::keys::StreamKeys;
use crate::liveness::Heartbeat;
use crate::outbox::{OutboxRow, RelayQueue};
use crate::redis_conn::RedisConnections;
use crate::signatures::SignatureMode;
use crate::stream_reply::RawEntry;
use turn::ReadTurn;

/// What a service does with events. Called inside the transaction that also records the
/// events in the inbox; whatever it writes on `tx` commits together with those records.
pub trait EventHandler: Send + Sync + 'static {
    /// Applies `events`, all seen for the first time, in stream order, and returns the
    /// outbox rows it wrote or re-armed ([`outbox::enqueue_all`](crate::outbox::enqueue_all),
    /// [`outbox::republish`](crate::outbox::republish)): the consumer hands them to the
    /// relay once the transaction committed. Never called
    /// twice for one `event_id` with both committing. Meant to be set-based: a few
    /// statements for the whole slice, not a round trip per event.
    ///
    /// An error undoes the whole slice; the consumer then applies its events one at a
    /// time (slices of one), so that only the failing one is held back. Each event's
    /// `traceparent` is that of the span consuming it: an event published in answer
    /// should carry it on (see [`Envelope::caused_by`]).
    fn handle(
        &self,
        tx: &mut PgConnection,
        events: &[&Envelope],
    ) -> impl Future<Output = Result<Vec<OutboxRow>, HandleError>> + Send;

    /// Events with the same key are applied in stream order, in one transaction; events
    /// with different keys may be applied concurrently. Choose a key under which two
    /// events never lock the same rows (the default, the order, suits handlers that only
    /// touch their order's rows).
    fn partition_key(&self, envelope: &Envelope) -> String {
        envelope.order_id.to_string()
    }

    /// Called instead of [`handle`](Self::handle) when the inbox shows the event was
    /// applied before (a redelivery or a re-publish), in the same transaction as the
    /// batch's new events (after `handle`), so an error undoes the batch and it is redone
    /// one event at a time, as for `handle`. The default does nothing; a service may re-publish what it answered back then, for a
    /// producer that lost the answer (SPEC §4.6), returning the rows it re-armed.
    fn on_duplicate(
        &self,
        _tx: &mut PgConnection,
        _envelope: &Envelope,
    ) -> impl Future<Output = Result<Vec<OutboxRow>, HandleError>> + Send {
        async { Ok(Vec::new()) }
    }
}

/// One handler shared by the consumers of several streams.
impl<H: EventHandler> EventHandler for std::sync::Arc<H> {
    fn handle(
        &self,
        tx: &mut PgConnection,
        events: &[&Envelope],
    ) -> impl Future<Output = Result<Vec<OutboxRow>, HandleError>> + Send {
        self.as_ref().handle(tx, events)
    }

    fn partition_key(&self, envelope: &Envelope) -> String {
        self.as_ref().partition_key(envelope)
    }

    fn on_duplicate(
        &self,
        tx: &mut PgConnection,
        envelope: &Envelope,
    ) -> impl Future<Output = Result<Vec<OutboxRow>, HandleError>> + Send {
        self.as_ref().on_duplicate(tx, envelope)
    }
}

/// Why a handler did not apply an event.
#[derive(Debug, thiserror::Error)]
pub enum HandleError {
    /// The database failed: transient, the entry is retried.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// The event can never be applied (e.g. a type this consumer does not expect on this
    /// stream): it is dead-lettered.
    #[error("rejected: {0}")]
    Rejected(String),
}

/// Why a read or an ack failed. Entries are never lost by it: what was not acked stays
/// pending.
#[derive(Debug, thiserror::Error)]
pub enum ConsumeError {
    /// Redis failed or refused the command.
    #[error("redis: {0}")]
    Redis(#[from] RedisError),
    /// Redis answered something the consumer cannot read.
    #[error("unexpected reply: {0}")]
    Reply(String),
}

impl ConsumeError {
    /// The group (or the whole stream) is gone: Redis restarted empty or was flushed.
    pub fn is_missing_group(&self) -> bool {
        matches!(self, Self::Redis(e) if e.code() == Some("NOGROUP"))
    }
}

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

/// Which stream a consumer reads, as whom, and how much at once.
#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    /// Logical stream name, e.g. `order-events`.
    pub stream: &'static str,
    /// The consumer group it reads as.
    pub group: &'static str,
    /// Unique within the group (SPEC §3.1).
    pub consumer: String,
    /// `COUNT` of each read.
    pub read_count: usize,
    /// `BLOCK` of each read; also bounds how long shutdown waits for the read.
    pub block: Duration,
    /// An entry delivered more often than this is dead-lettered instead of retried.
    pub max_deliveries: u64,
    /// Entries idle this long in another consumer's pending list are reclaimed.
    pub claim_min_idle: Duration,
    /// How many transactions (and connections) a batch is spread over at most.
    pub parallelism: usize,
    /// An entry larger than this (its fields' bytes) is dead-lettered by its id, never
    /// loaded into the service (SPEC §4.9).
    pub max_entry_bytes: usize,
    /// How long an event that loses to contention is retried in place, without spending
    /// a delivery: the longest another session can hold a lock
    /// ([`DatabaseBounds::longest_lock_hold`](crate::settings::DatabaseBounds::longest_lock_hold)).
    pub contention_budget: Duration,
    /// How long one batch transaction may take, as this process sees it, before it is
    /// abandoned as an outage: the server ends a session that stops answering, but a
    /// server that stops answering (a half-open connection) is noticed only by this.
    pub transaction_deadline: Duration,
}

/// Counts of what one batch did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BatchReport {
    /// Entries read.
    pub delivered: usize,
    /// Events whose effect committed now.
    pub applied: usize,
    /// Events already in the inbox: acked without a second effect.
    pub duplicates: usize,
    /// Unknown event types and entries deleted while pending: acked and skipped.
    pub skipped: usize,
    /// Copied to the dead-letter stream and acked.
    pub dead_lettered: usize,
    /// Of a newer schema version than this build reads: parked and acked.
    pub parked: usize,
    /// Not acked because of a transient failure: they stay pending.
    pub retry_later: usize,
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

/// What a consumer accepts as signed (SPEC §4.9): the producer's verifying keys, and what
/// becomes of an entry they do not verify ([`SignatureMode`]).
#[derive(Debug, Clone)]
pub struct Verification {
    /// What becomes of an entry the keys do not verify.
    pub mode: SignatureMode,
    /// The producers' verifying keys.
    pub keys: VerifyingKeys,
}

impl Verification {
    /// Nothing verified.
    pub fn off() -> Self {
        Self {
            mode: SignatureMode::Off,
            keys: VerifyingKeys::default(),
        }
    }
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
