//! The consumer loop: `XREADGROUP` → decode → handle in one transaction with the inbox →
//! commit → `XACK` (SPEC §4.2, §4.4).
//!
//! Guarantees kept here:
//! - an entry is acked only after the transaction holding its effect and its inbox row
//!   committed, so a crash at any point leaves it pending and it is delivered again;
//! - a redelivered event finds its inbox row and has no second effect;
//! - an entry that cannot be decoded, or that its handler rejects, is copied to the
//!   dead-letter stream and acked: one bad entry never blocks the ones behind it;
//! - an unknown `event_type` is acked and skipped (tolerant reader);
//! - while the database is unreachable nothing is acked: the entry in hand is retried in
//!   place with backoff (not redelivered, so an outage does not use up its deliveries);
//! - an entry whose transaction fails otherwise stays pending and is read again from this
//!   consumer's pending list; failing on its `MAX_DELIVERIES`th delivery (or arriving
//!   past it, after crash loops) sends it to the dead-letter stream;
//! - entries left pending by a consumer that died are reclaimed (`XAUTOCLAIM`) by any live
//!   one once idle longer than `CLAIM_MIN_IDLE_MS`, and processed like its own;
//! - a group that vanished (`NOGROUP`, e.g. Redis restarted empty) is created again.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use events::Envelope;
use redis::RedisError;
use sqlx::{PgConnection, PgPool};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, field, info, info_span, warn};

use crate::backoff::Backoff;
use crate::keys::{StreamKeys, dead_letter_fields};
use crate::observability::{
    ENTRIES_RECLAIMED, EVENTS_CONSUMED, EVENTS_DEAD_LETTERED, EVENTS_FAILED, EVENTS_SKIPPED,
};
use crate::redis_conn::RedisConnections;
use crate::stream_reply::{RawEntry, parse_autoclaim_reply, parse_read_reply};
use crate::{database, inbox, telemetry};

/// What a service does with one event. Called inside the transaction that also records
/// the event in the inbox; whatever it writes on `tx` commits together with that record.
pub trait EventHandler: Send + Sync + 'static {
    /// Applies `envelope`. Never called twice for one `event_id` with both committing.
    fn handle(
        &self,
        tx: &mut PgConnection,
        envelope: &Envelope,
    ) -> impl Future<Output = Result<(), HandleError>> + Send;

    /// Called instead of [`handle`](Self::handle) when the inbox shows the event was
    /// applied before (a redelivery or a re-publish), in a transaction of its own. The
    /// default does nothing; a service may re-publish what it answered back then, for a
    /// producer that lost the answer (SPEC §4.6).
    fn on_duplicate(
        &self,
        _tx: &mut PgConnection,
        _envelope: &Envelope,
    ) -> impl Future<Output = Result<(), HandleError>> + Send {
        async { Ok(()) }
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
    #[error("redis: {0}")]
    Redis(#[from] RedisError),
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

/// Which stream a consumer reads, as whom, and how much at once.
#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    /// Logical stream name, e.g. `order-events`.
    pub stream: &'static str,
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
    /// Not acked because of a transient failure: they stay pending.
    pub retry_later: usize,
}

enum Outcome {
    Applied,
    Duplicate,
    Skipped,
    DeadLettered,
    /// The transaction failed; redeliver later.
    RetryLater,
    /// The database could not be reached; nothing is wrong with the entry.
    DatabaseUnavailable,
}

/// A consumer of one stream in one group.
pub struct Consumer<H> {
    pool: PgPool,
    redis: RedisConnections,
    config: ConsumerConfig,
    stream_key: String,
    dead_letter_key: String,
    handler: H,
}

impl<H: EventHandler> Consumer<H> {
    pub fn new(
        pool: PgPool,
        redis: RedisConnections,
        keys: &StreamKeys,
        config: ConsumerConfig,
        handler: H,
    ) -> Self {
        Self {
            stream_key: keys.stream(config.stream),
            dead_letter_key: keys.dead_letter(config.stream),
            pool,
            redis,
            config,
            handler,
        }
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

    /// Moves entries idle longer than `CLAIM_MIN_IDLE_MS` in any consumer of the group to
    /// this one (`XAUTOCLAIM ... JUSTID`), to be processed from its own pending list.
    /// Returns how many were claimed.
    pub async fn reclaim_stuck_entries(&self) -> Result<usize, ConsumeError> {
        /// Bounds one reclaim pass; the rest waits for the next.
        const MAX_ROUNDS: usize = 10;
        let mut cursor = "0-0".to_owned();
        let mut claimed = 0;
        for _ in 0..MAX_ROUNDS {
            let reply: redis::Value = redis::cmd("XAUTOCLAIM")
                .arg(&self.stream_key)
                .arg(self.config.group)
                .arg(&self.config.consumer)
                .arg(self.config.claim_min_idle.as_millis() as u64)
                .arg(&cursor)
                .arg("COUNT")
                .arg(self.config.read_count)
                .arg("JUSTID")
                .query_async(&mut self.redis.commands.clone())
                .await?;
            let (next, ids) = parse_autoclaim_reply(reply).map_err(ConsumeError::Reply)?;
            claimed += ids;
            if next == "0-0" {
                break;
            }
            cursor = next;
        }
        if claimed > 0 {
            metrics::counter!(ENTRIES_RECLAIMED, "stream" => self.stream_key.clone())
                .increment(claimed as u64);
            info!(stream = %self.stream_key, claimed, "reclaimed entries of a consumer that stopped answering");
        }
        Ok(claimed)
    }

    /// Runs until `shutdown`: first its own pending entries, then new ones. A read in
    /// progress is let finish (at most `BLOCK`) and its entries are processed and acked
    /// before returning, so nothing delivered is left half done.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut backoff = Backoff::new();
        let mut from = ReadFrom::OwnPending;
        let mut group_ready = false;
        let reclaim_every = (self.config.claim_min_idle / 2)
            .clamp(Duration::from_millis(50), Duration::from_secs(30));
        let mut next_reclaim = tokio::time::Instant::now();
        while !shutdown.is_cancelled() {
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

    /// Reads a batch and processes it. With `retry_until`, an entry that meets an
    /// unreachable database is retried in place with backoff until the database answers
    /// or `retry_until` fires (then it and the rest of the batch stay pending).
    async fn consume(
        &self,
        from: ReadFrom,
        retry_until: Option<&CancellationToken>,
    ) -> Result<BatchReport, ConsumeError> {
        let entries = self.read(from).await?;
        let mut report = BatchReport {
            delivered: entries.len(),
            ..BatchReport::default()
        };
        let delivery_counts = match from {
            ReadFrom::New => HashMap::new(),
            ReadFrom::OwnPending => self.delivery_counts(&entries).await?,
        };
        let mut acks = Vec::with_capacity(entries.len());
        let mut backoff = Backoff::new();
        for entry in &entries {
            let deliveries = delivery_counts.get(&entry.id).copied().unwrap_or(1);
            let mut outcome = self.process(entry, deliveries).await;
            if let Some(shutdown) = retry_until {
                while matches!(outcome, Outcome::DatabaseUnavailable)
                    && backoff.wait(shutdown).await
                {
                    outcome = self.process(entry, deliveries).await;
                }
            }
            match outcome {
                Outcome::Applied => report.applied += 1,
                Outcome::Duplicate => report.duplicates += 1,
                Outcome::Skipped => report.skipped += 1,
                Outcome::DeadLettered => report.dead_lettered += 1,
                Outcome::RetryLater | Outcome::DatabaseUnavailable => report.retry_later += 1,
            }
            if !matches!(outcome, Outcome::RetryLater | Outcome::DatabaseUnavailable) {
                acks.push(entry.id.as_str());
            }
        }
        if !acks.is_empty() {
            redis::cmd("XACK")
                .arg(&self.stream_key)
                .arg(self.config.group)
                .arg(&acks)
                .exec_async(&mut self.redis.commands.clone())
                .await?;
        }
        Ok(report)
    }

    async fn read(&self, from: ReadFrom) -> Result<Vec<RawEntry>, ConsumeError> {
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(self.config.group)
            .arg(&self.config.consumer)
            .arg("COUNT")
            .arg(self.config.read_count);
        if from == ReadFrom::New {
            cmd.arg("BLOCK").arg(self.config.block.as_millis() as u64);
        }
        let id = match from {
            ReadFrom::New => ">",
            ReadFrom::OwnPending => "0",
        };
        cmd.arg("STREAMS").arg(&self.stream_key).arg(id);
        let reply: redis::Value = cmd.query_async(&mut self.redis.reader.clone()).await?;
        parse_read_reply(reply).map_err(ConsumeError::Reply)
    }

    /// How often each of `entries` (this consumer's pending ones) has been delivered,
    /// counting the read that just returned them.
    async fn delivery_counts(
        &self,
        entries: &[RawEntry],
    ) -> Result<HashMap<String, u64>, ConsumeError> {
        let (Some(first), Some(last)) = (entries.first(), entries.last()) else {
            return Ok(HashMap::new());
        };
        let pending: Vec<(String, String, u64, u64)> = redis::cmd("XPENDING")
            .arg(&self.stream_key)
            .arg(self.config.group)
            .arg(&first.id)
            .arg(&last.id)
            .arg(entries.len())
            .arg(&self.config.consumer)
            .query_async(&mut self.redis.commands.clone())
            .await?;
        Ok(pending
            .into_iter()
            .map(|(id, _, _, count)| (id, count))
            .collect())
    }

    /// Everything that happens to one entry short of its ack. The entry is decoded
    /// first, so that its span can continue the producer's trace before it is entered.
    async fn process(&self, entry: &RawEntry, deliveries: u64) -> Outcome {
        let stream = self.stream_key.as_str();
        let decoded = entry.fields.as_ref().map(|fields| {
            Envelope::from_fields(fields.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
        });
        let span = info_span!("consume", stream, entry_id = %entry.id,
            event_type = field::Empty, event_id = field::Empty, order_id = field::Empty);
        if let Some(Ok(envelope)) = &decoded {
            span.record("event_type", envelope.event_type().as_str());
            span.record("event_id", field::display(envelope.event_id));
            span.record("order_id", field::display(envelope.order_id));
            if let Some(traceparent) = &envelope.traceparent {
                telemetry::continue_trace(&span, traceparent);
            }
        }
        async {
            let (Some(fields), Some(decoded)) = (&entry.fields, decoded) else {
                debug!("entry was deleted from the stream while pending; acking");
                metrics::counter!(EVENTS_SKIPPED, "stream" => stream.to_owned(), "reason" => "deleted").increment(1);
                return Outcome::Skipped;
            };
            let envelope = match decoded {
                Ok(envelope) => envelope,
                Err(e) if e.is_unknown_event_type() => {
                    info!(error = %e, "skipping an event type this version does not know");
                    metrics::counter!(EVENTS_SKIPPED, "stream" => stream.to_owned(), "reason" => "unknown_type")
                        .increment(1);
                    return Outcome::Skipped;
                }
                Err(e) => return self.dead_letter(entry, fields, deliveries, &e.to_string()).await,
            };
            let max = self.config.max_deliveries;
            if deliveries > max {
                // Only reached when a consumer died while handling it (a crash loop).
                let error = format!("delivered {deliveries} times, more than MAX_DELIVERIES={max}");
                return self.dead_letter(entry, fields, deliveries, &error).await;
            }
            let event_type = envelope.event_type().as_str();
            let consumed = |result: &'static str| {
                metrics::counter!(EVENTS_CONSUMED, "stream" => stream.to_owned(), "event_type" => event_type, "result" => result)
                    .increment(1);
            };
            let outcome = match self.apply(&envelope).await {
                Ok(true) => {
                    consumed("applied");
                    return Outcome::Applied;
                }
                Ok(false) => {
                    debug!("already applied; acking without a second effect");
                    consumed("duplicate");
                    return Outcome::Duplicate;
                }
                Err(HandleError::Rejected(reason)) => {
                    return self.dead_letter(entry, fields, deliveries, &reason).await;
                }
                Err(HandleError::Database(e)) if database::is_unavailable(&e) => {
                    warn!(error = %e, "the database is unreachable; the event waits");
                    Outcome::DatabaseUnavailable
                }
                Err(e) if deliveries >= max => {
                    let error = format!("failed on delivery {deliveries} of MAX_DELIVERIES={max}: {e}");
                    return self.dead_letter(entry, fields, deliveries, &error).await;
                }
                Err(e) => {
                    warn!(error = %e, deliveries, "could not apply the event; it stays pending for a retry");
                    Outcome::RetryLater
                }
            };
            metrics::counter!(EVENTS_FAILED, "stream" => stream.to_owned(), "event_type" => event_type).increment(1);
            outcome
        }
        .instrument(span)
        .await
    }

    /// The transaction: inbox record, then the effect (or the duplicate hook), then
    /// commit. `Ok(false)` when the inbox already had the event.
    async fn apply(&self, envelope: &Envelope) -> Result<bool, HandleError> {
        let mut tx = self.pool.begin().await?;
        let first_time = inbox::record(&mut tx, envelope).await?;
        if first_time {
            self.handler.handle(&mut tx, envelope).await?;
        } else {
            self.handler.on_duplicate(&mut tx, envelope).await?;
        }
        tx.commit().await?;
        Ok(first_time)
    }

    /// Copies an entry that can never be processed to the dead-letter stream, with why.
    /// Only when that copy is written does the caller ack the original.
    async fn dead_letter(
        &self,
        entry: &RawEntry,
        fields: &[(String, Vec<u8>)],
        deliveries: u64,
        error: &str,
    ) -> Outcome {
        warn!(error, deliveries, "dead-lettering the entry");
        let mut cmd = redis::cmd("XADD");
        cmd.arg(&self.dead_letter_key)
            .arg("*")
            .arg(dead_letter_fields::ORIGINAL_ID)
            .arg(&entry.id)
            .arg(dead_letter_fields::SOURCE_STREAM)
            .arg(&self.stream_key)
            .arg(dead_letter_fields::GROUP)
            .arg(self.config.group)
            .arg(dead_letter_fields::CONSUMER)
            .arg(&self.config.consumer)
            .arg(dead_letter_fields::DELIVERY_COUNT)
            .arg(deliveries)
            .arg(dead_letter_fields::ERROR)
            .arg(error);
        for (name, value) in fields {
            cmd.arg(name).arg(value.as_slice());
        }
        match cmd.exec_async(&mut self.redis.commands.clone()).await {
            Ok(()) => {
                metrics::counter!(EVENTS_DEAD_LETTERED, "stream" => self.stream_key.clone())
                    .increment(1);
                Outcome::DeadLettered
            }
            Err(e) => {
                warn!(error = %e, "could not write the dead letter; the entry stays pending");
                Outcome::RetryLater
            }
        }
    }
}
