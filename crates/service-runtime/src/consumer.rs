//! The consumer loop: `XREADGROUP` a batch → decode → apply the batch in one transaction
//! (inbox records of all its events in one statement, then the handler's effects of the
//! new ones, set-based) → commit → `XACK` the batch (SPEC §4.2, §4.4). A few statements
//! and one commit per batch rather than per event is what lets the consumers keep up with
//! the rate at which orders are created.
//!
//! Guarantees kept here:
//! - an entry is acked only after the transaction holding its effect and its inbox row
//!   committed, so a crash at any point leaves it pending and it is delivered again;
//! - a redelivered event finds its inbox row and has no second effect;
//! - an entry that cannot be decoded, or that its handler rejects, is copied to the
//!   dead-letter stream and acked: one bad entry never blocks the ones behind it;
//! - an unknown `event_type` is acked and skipped (tolerant reader);
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
//! - a group that vanished (`NOGROUP`, e.g. Redis restarted empty) is created again.

use std::collections::HashMap;
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::time::Duration;

use events::Envelope;
use redis::RedisError;
use sqlx::{PgConnection, PgPool};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::backoff::Backoff;
use crate::keys::{StreamKeys, dead_letter_fields};
use crate::observability::{
    ENTRIES_RECLAIMED, EVENTS_CONSUMED, EVENTS_DEAD_LETTERED, EVENTS_FAILED, EVENTS_SKIPPED,
};
use crate::redis_conn::RedisConnections;
use crate::stream_reply::{RawEntry, parse_autoclaim_reply, parse_read_reply};
use crate::{database, inbox, telemetry};

/// What a service does with events. Called inside the transaction that also records the
/// events in the inbox; whatever it writes on `tx` commits together with those records.
pub trait EventHandler: Send + Sync + 'static {
    /// Applies `events`, all seen for the first time, in stream order. Never called
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
    ) -> impl Future<Output = Result<(), HandleError>> + Send;

    /// Events with the same key are applied in stream order, in one transaction; events
    /// with different keys may be applied concurrently. Choose a key under which two
    /// events never lock the same rows (the default, the order, suits handlers that only
    /// touch their order's rows).
    fn partition_key(&self, envelope: &Envelope) -> String {
        envelope.order_id.to_string()
    }

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
    /// How many transactions (and connections) a batch is spread over at most.
    pub parallelism: usize,
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
    /// Not finished: left pending, to be delivered again.
    RetryLater,
}

/// What to do with an entry, decided before touching the database.
enum Plan {
    /// Ack without handling (deleted while pending, or an unknown event type).
    Skip,
    /// Can never be handled: dead-letter with this error.
    DeadLetter(String),
    /// Handle it, in this span.
    Apply(Box<Envelope>, tracing::Span),
}

/// What applying one event of a batch came to.
enum EventResult {
    /// Committed: its effect (`first_time`) or, for a duplicate, the duplicate hook.
    Done { first_time: bool },
    /// Its own failure; nothing of it committed.
    Failed(HandleError),
    /// Its group's transaction failed as a whole; nothing of it committed.
    GroupFailed { transient: bool },
}

/// Per event of a group: whether it was applied for the first time, or why it failed.
type EventResults = Vec<Result<bool, HandleError>>;

/// An event of the batch waiting to be applied.
struct Pending {
    /// Its place in the batch.
    index: usize,
    envelope: Box<Envelope>,
    span: tracing::Span,
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

    /// Reads a batch and processes it: every event that can be applied is applied in
    /// one transaction (redone one event at a time, a savepoint each, if any fails, so
    /// a failing event undoes only itself), then everything finished is acked at once.
    /// With `retry_until`, events that met a transient database failure are retried in
    /// place with backoff until they commit or `retry_until` fires (then they stay
    /// pending).
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
        let deliveries = |entry: &RawEntry| delivery_counts.get(&entry.id).copied().unwrap_or(1);

        let mut outcomes: Vec<Option<Outcome>> = Vec::with_capacity(entries.len());
        let mut to_apply = Vec::new();
        for (i, entry) in entries.iter().enumerate() {
            match self.plan(entry, deliveries(entry)) {
                Plan::Skip => outcomes.push(Some(Outcome::Skipped)),
                Plan::DeadLetter(error) => {
                    outcomes.push(Some(
                        self.dead_letter(entry, deliveries(entry), &error).await,
                    ));
                }
                Plan::Apply(envelope, span) => {
                    outcomes.push(None);
                    to_apply.push(Pending {
                        index: i,
                        envelope,
                        span,
                    });
                }
            }
        }

        let mut backoff = Backoff::new();
        while !to_apply.is_empty() {
            let results = self.apply_batch(&to_apply).await;
            let mut again = Vec::new();
            for (pending, result) in to_apply.into_iter().zip(results) {
                let entry = &entries[pending.index];
                let span = pending.span.clone();
                match self
                    .settle(entry, deliveries(entry), &pending.envelope, result)
                    .instrument(span)
                    .await
                {
                    Some(outcome) => outcomes[pending.index] = Some(outcome),
                    None => again.push(pending),
                }
            }
            to_apply = again;
            if to_apply.is_empty() {
                break;
            }
            let retry = match retry_until {
                Some(shutdown) => backoff.wait(shutdown).await,
                None => false,
            };
            if !retry {
                for pending in to_apply.drain(..) {
                    outcomes[pending.index] = Some(Outcome::RetryLater);
                }
            }
        }

        let mut acks = Vec::with_capacity(entries.len());
        for (entry, outcome) in entries.iter().zip(outcomes) {
            match outcome.unwrap_or(Outcome::RetryLater) {
                Outcome::Applied => report.applied += 1,
                Outcome::Duplicate => report.duplicates += 1,
                Outcome::Skipped => report.skipped += 1,
                Outcome::DeadLettered => report.dead_lettered += 1,
                Outcome::RetryLater => {
                    report.retry_later += 1;
                    continue;
                }
            }
            acks.push(entry.id.as_str());
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

    /// What an event's result means for its entry; `None` when it should be tried again
    /// in place (a transient database failure).
    async fn settle(
        &self,
        entry: &RawEntry,
        deliveries: u64,
        envelope: &Envelope,
        result: EventResult,
    ) -> Option<Outcome> {
        let event_type = envelope.event_type().as_str();
        let max = self.config.max_deliveries;
        Some(match result {
            EventResult::GroupFailed { transient: true } => return None,
            EventResult::GroupFailed { transient: false } => Outcome::RetryLater,
            EventResult::Done { first_time: true } => {
                self.count_consumed(event_type, "applied");
                Outcome::Applied
            }
            EventResult::Done { first_time: false } => {
                debug!("already applied; acking without a second effect");
                self.count_consumed(event_type, "duplicate");
                Outcome::Duplicate
            }
            EventResult::Failed(HandleError::Rejected(reason)) => {
                self.dead_letter(entry, deliveries, &reason).await
            }
            EventResult::Failed(HandleError::Database(e)) if database::is_transient(&e) => {
                warn!(error = %e, "the database could not take the event now; it waits");
                self.count_failed(event_type);
                return None;
            }
            EventResult::Failed(e) if deliveries >= max => {
                let error = format!("failed on delivery {deliveries} of MAX_DELIVERIES={max}: {e}");
                self.dead_letter(entry, deliveries, &error).await
            }
            EventResult::Failed(e) => {
                warn!(error = %e, deliveries, "could not apply the event; it stays pending for a retry");
                self.count_failed(event_type);
                Outcome::RetryLater
            }
        })
    }

    /// Decides what to do with an entry before touching the database. An event gets a
    /// span that continues its producer's trace.
    fn plan(&self, entry: &RawEntry, deliveries: u64) -> Plan {
        let stream = self.stream_key.as_str();
        let skip = |reason: &'static str| {
            metrics::counter!(EVENTS_SKIPPED, "stream" => stream.to_owned(), "reason" => reason)
                .increment(1);
            Plan::Skip
        };
        let Some(fields) = &entry.fields else {
            debug!(entry_id = %entry.id, "entry was deleted from the stream while pending; acking");
            return skip("deleted");
        };
        let mut envelope = match Envelope::from_fields(
            fields.iter().map(|(k, v)| (k.as_str(), v.as_slice())),
        ) {
            Ok(envelope) => envelope,
            Err(e) if e.is_unknown_event_type() => {
                info!(entry_id = %entry.id, error = %e, "skipping an event type this version does not know");
                return skip("unknown_type");
            }
            Err(e) => return Plan::DeadLetter(e.to_string()),
        };
        let max = self.config.max_deliveries;
        if deliveries > max {
            // Only reached when a consumer died while handling it (a crash loop).
            return Plan::DeadLetter(format!(
                "delivered {deliveries} times, more than MAX_DELIVERIES={max}"
            ));
        }
        let span = info_span!("consume", stream, entry_id = %entry.id,
            event_type = envelope.event_type().as_str(), event_id = %envelope.event_id, order_id = %envelope.order_id);
        if let Some(traceparent) = &envelope.traceparent {
            telemetry::continue_trace(&span, traceparent);
        }
        // Handlers see the consuming span's context, for the events they publish in answer.
        envelope.traceparent = telemetry::traceparent_of(&span).or(envelope.traceparent);
        Plan::Apply(Box::new(envelope), span)
    }

    /// Applies a batch: split by [`EventHandler::partition_key`] into at most
    /// `parallelism` groups, each applied in one transaction of its own, concurrently.
    /// Results come back in the order of `batch`.
    async fn apply_batch(&self, batch: &[Pending]) -> Vec<EventResult> {
        let groups = self.config.parallelism.clamp(1, batch.len().max(1));
        let mut members: Vec<Vec<usize>> = vec![Vec::new(); groups];
        for (i, pending) in batch.iter().enumerate() {
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            self.handler
                .partition_key(&pending.envelope)
                .hash(&mut hasher);
            members[(hasher.finish() % groups as u64) as usize].push(i);
        }
        let applied =
            futures::future::join_all(members.iter().filter(|m| !m.is_empty()).map(|m| {
                let group: Vec<&Pending> = m.iter().map(|&i| &batch[i]).collect();
                async move { (m, self.apply_group(&group).await) }
            }))
            .await;
        let mut results: Vec<Option<EventResult>> = (0..batch.len()).map(|_| None).collect();
        for (indices, group_results) in applied {
            for (&i, result) in indices.iter().zip(group_results) {
                results[i] = Some(result);
            }
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or(EventResult::GroupFailed { transient: true }))
            .collect()
    }

    /// One group in one transaction. Tried as a whole first; if it fails, the whole
    /// transaction is rolled back and the group redone one event at a time, a savepoint
    /// each, so the failure undoes only itself and the others commit.
    async fn apply_group(&self, group: &[&Pending]) -> Vec<EventResult> {
        let attempt = match self.try_whole(group).await {
            Ok(None) => self.try_one_by_one(group).await,
            Ok(Some(results)) => Ok(results),
            Err(e) => Err(e),
        };
        match attempt {
            Ok(results) => results
                .into_iter()
                .map(|result| match result {
                    Ok(first_time) => EventResult::Done { first_time },
                    Err(e) => EventResult::Failed(e),
                })
                .collect(),
            Err(e) => {
                warn!(error = %e, events = group.len(), "a batch transaction failed; nothing of it committed");
                let transient = database::is_transient(&e);
                group
                    .iter()
                    .map(|_| EventResult::GroupFailed { transient })
                    .collect()
            }
        }
    }

    /// Applies `group` in one transaction, or nothing of it (`Ok(None)`) if any event
    /// fails.
    async fn try_whole(&self, group: &[&Pending]) -> Result<Option<EventResults>, sqlx::Error> {
        let envelopes: Vec<&Envelope> = group.iter().map(|p| &*p.envelope).collect();
        let mut tx = self.begin().await?;
        let span = info_span!("consume_batch", events = group.len());
        for pending in group {
            span.follows_from(&pending.span);
        }
        match self.apply(&mut tx, &envelopes).instrument(span).await {
            Ok(first_time) => {
                tx.commit().await?;
                Ok(Some(first_time.into_iter().map(Ok).collect()))
            }
            Err(e) => {
                debug!(error = %e, "an event of the batch failed; applying them one by one");
                tx.rollback().await?;
                Ok(None)
            }
        }
    }

    /// Applies `group` in one transaction, each event in a savepoint of its own.
    async fn try_one_by_one(&self, group: &[&Pending]) -> Result<EventResults, sqlx::Error> {
        let mut tx = self.begin().await?;
        let mut results = Vec::with_capacity(group.len());
        for pending in group {
            let result = async {
                sqlx::query("SAVEPOINT event").execute(&mut *tx).await?;
                let result = self
                    .apply(&mut tx, &[&*pending.envelope])
                    .await
                    .map(|first_time| first_time.first().copied().unwrap_or(false));
                if result.is_err() {
                    sqlx::query("ROLLBACK TO SAVEPOINT event")
                        .execute(&mut *tx)
                        .await?;
                }
                sqlx::query("RELEASE SAVEPOINT event")
                    .execute(&mut *tx)
                    .await?;
                Ok::<_, sqlx::Error>(result)
            }
            .instrument(pending.span.clone())
            .await?;
            results.push(result);
        }
        tx.commit().await?;
        Ok(results)
    }

    /// Begins a batch transaction. Its statements are planned for their arguments each
    /// time: batch sizes vary, and a generic plan, which Postgres otherwise caches per
    /// connection after five executions, is made for the table sizes of that moment
    /// (made while tables are nearly empty, on a fresh start, it would scan them whole
    /// for ever after).
    async fn begin(&self) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, sqlx::Error> {
        self.pool
            .begin_with("BEGIN; SET LOCAL plan_cache_mode TO force_custom_plan")
            .await
    }

    /// Inbox records, then the effects of the events seen for the first time and the
    /// duplicate hook of the others. Returns which were seen for the first time.
    async fn apply(
        &self,
        conn: &mut PgConnection,
        envelopes: &[&Envelope],
    ) -> Result<Vec<bool>, HandleError> {
        let first_time = inbox::record(conn, envelopes).await?;
        let (fresh, repeated): (Vec<_>, Vec<_>) = envelopes
            .iter()
            .zip(&first_time)
            .partition(|(_, first)| **first);
        if !fresh.is_empty() {
            let fresh: Vec<&Envelope> = fresh.into_iter().map(|(e, _)| *e).collect();
            self.handler.handle(conn, &fresh).await?;
        }
        for (envelope, _) in repeated {
            self.handler.on_duplicate(conn, envelope).await?;
        }
        Ok(first_time)
    }

    fn count_consumed(&self, event_type: &'static str, result: &'static str) {
        metrics::counter!(EVENTS_CONSUMED, "stream" => self.stream_key.clone(), "event_type" => event_type, "result" => result)
            .increment(1);
    }

    fn count_failed(&self, event_type: &'static str) {
        metrics::counter!(EVENTS_FAILED, "stream" => self.stream_key.clone(), "event_type" => event_type).increment(1);
    }

    /// Copies an entry that can never be processed to the dead-letter stream, with why.
    /// Only when that copy is written does the caller ack the original.
    async fn dead_letter(&self, entry: &RawEntry, deliveries: u64, error: &str) -> Outcome {
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
        for (name, value) in entry.fields.iter().flatten() {
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
