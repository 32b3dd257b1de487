//! One batch, from read to ack: `XREADGROUP`, decide what each entry needs ([`Plan`]),
//! apply the events ([`apply`](super::apply)), settle each entry's [`Outcome`] (dead
//! letter, retry in place, leave pending), then one `XACK` for everything finished.

use std::collections::HashMap;

use events::Envelope;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, warn};

use super::plan::{DeadLetterCause, Plan};
use super::turn::Held;
use super::{BatchReport, ConsumeError, Consumer, EventHandler, HandleError, ReadFrom};
use crate::backoff::Backoff;
use crate::database::{self, Failure};
use crate::dead_letters::Verdict;
use crate::observability::{EVENTS_CONSUMED, EVENTS_DEAD_LETTERED, EVENTS_FAILED};
use crate::stream_reply::RawEntry;

/// What became of one entry of a batch: the one description every step uses, from the
/// transaction that applied it to the ack.
pub(super) enum Outcome {
    /// Its effect committed now, for the first time.
    Applied,
    /// It had been applied before (the inbox knew it): committed without a second effect.
    Duplicate,
    /// Acked without handling (deleted while pending, or an unknown event type).
    Skipped,
    /// Copied to the dead-letter stream.
    DeadLettered,
    /// Parked until a build that reads its schema version runs.
    Parked,
    /// Its handler failed on it; nothing of it committed. Settled into one of the others.
    Failed(HandleError),
    /// Nothing of it committed and it is not acked, because of this failure. An outage is
    /// waited out in place, contention retried in place a few times (neither spends a
    /// delivery); otherwise it stays pending, to be delivered again.
    Unfinished(Failure),
}

impl Outcome {
    /// A committed event: applied now, or a duplicate.
    pub(super) fn committed(first_time: bool) -> Self {
        if first_time {
            Self::Applied
        } else {
            Self::Duplicate
        }
    }
}

/// An event of the batch waiting to be applied.
pub(super) struct Pending {
    /// Its place in the batch.
    pub(super) index: usize,
    pub(super) envelope: Box<Envelope>,
    pub(super) span: tracing::Span,
    /// When it first lost to contention, if it has.
    contended_since: Option<tokio::time::Instant>,
}

impl Pending {
    /// Whether it may still be retried in place after losing to contention (a lock or
    /// statement timeout, a deadlock): for as long as another session can hold a lock
    /// ([`ConsumerConfig::contention_budget`](super::ConsumerConfig), derived from the
    /// bounds every session of the service runs with), so a lock of a frozen replica,
    /// released once the server ends its session, costs no delivery. Contention that
    /// outlasts it is counted against the event, so an event that can never commit ends
    /// dead-lettered instead of holding the consumer for ever.
    fn may_contend(&mut self, budget: std::time::Duration) -> bool {
        let since = *self
            .contended_since
            .get_or_insert_with(tokio::time::Instant::now);
        since.elapsed() < budget
    }
}

impl<H: EventHandler> Consumer<H> {
    /// Reads a batch and processes it: every event that can be applied is applied in
    /// one transaction (redone one event at a time, a savepoint each, if any fails, so
    /// a failing event undoes only itself), then everything finished is acked at once.
    /// With `retry_until`, events that met a transient database failure are retried in
    /// place with backoff until they commit or `retry_until` fires (then they stay
    /// pending).
    pub(super) async fn consume(
        &self,
        from: ReadFrom,
        retry_until: Option<&CancellationToken>,
    ) -> Result<BatchReport, ConsumeError> {
        // New entries are read in turn with the group's other consumers; a short read
        // keeps the turn until its batch is acked, a full one passes it at once.
        let mut held = match from {
            ReadFrom::New => match self.turn.take(&self.redis).await? {
                // Handed the turn after waiting for it while shutdown began: no read of
                // up to BLOCK more.
                Some(held) if retry_until.is_some_and(CancellationToken::is_cancelled) => {
                    self.turn.pass(&self.redis, held).await;
                    return Ok(BatchReport::default());
                }
                Some(held) => Some(held),
                None => return Ok(BatchReport::default()),
            },
            ReadFrom::OwnPending => None,
        };
        let read = self.read(from).await;
        if read
            .as_ref()
            .map_or(true, |e| e.is_empty() || e.len() >= self.config.read_count)
        {
            self.pass_turn(held.take()).await;
        }
        let entries = read?;
        if entries.is_empty() {
            return Ok(BatchReport::default());
        }
        // However long the batch takes (an outage waited out in place), its entries stay
        // this consumer's: no replica reclaims them and spends a delivery on them.
        let ids: Vec<&str> = entries.iter().map(|e| e.id.as_str()).collect();
        let processed = tokio::select! {
            processed = self.process(&entries, from, retry_until) => processed,
            never = self.keep_claimed_while_busy(&ids) => match never {},
        };
        self.pass_turn(held).await;
        processed
    }

    async fn pass_turn(&self, held: Option<Held>) {
        if let Some(held) = held {
            self.turn.pass(&self.redis, held).await;
        }
    }

    /// Applies and acks a batch that was read (see [`consume`](Self::consume)).
    pub(super) async fn process(
        &self,
        entries: &[RawEntry],
        from: ReadFrom,
        retry_until: Option<&CancellationToken>,
    ) -> Result<BatchReport, ConsumeError> {
        Ok(self.process_each(entries, from, retry_until).await?.0)
    }

    /// Like [`process`](Self::process), also telling of each entry whether it is finished
    /// (acked: nothing of it is left to retry).
    pub(super) async fn process_each(
        &self,
        entries: &[RawEntry],
        from: ReadFrom,
        retry_until: Option<&CancellationToken>,
    ) -> Result<(BatchReport, Vec<bool>), ConsumeError> {
        let delivery_counts = match from {
            ReadFrom::New => HashMap::new(),
            ReadFrom::OwnPending => self.delivery_counts(entries).await?,
        };
        let deliveries = |entry: &RawEntry| delivery_counts.get(&entry.id).copied().unwrap_or(1);

        let mut outcomes: Vec<Option<Outcome>> = Vec::with_capacity(entries.len());
        let mut to_apply = Vec::new();
        let verdicts = self.verdicts(entries);
        for (i, (entry, verdict)) in entries.iter().zip(verdicts).enumerate() {
            match self.plan(entry, deliveries(entry), verdict) {
                Plan::Skip => outcomes.push(Some(Outcome::Skipped)),
                Plan::DeadLetter(cause, error) => {
                    outcomes.push(Some(
                        self.dead_letter(entry, deliveries(entry), cause, &error)
                            .await,
                    ));
                }
                Plan::Park(event_id, version) => {
                    outcomes.push(Some(self.park(entry, version, event_id).await));
                }
                Plan::Apply(envelope, span) => {
                    outcomes.push(None);
                    to_apply.push(Pending {
                        index: i,
                        envelope,
                        span,
                        contended_since: None,
                    });
                }
            }
        }

        let mut backoff = Backoff::new("event_in_place");
        while !to_apply.is_empty() {
            let results = self.apply_batch(&to_apply).await;
            // An attempt ended (a retry in place is the loop doing its job).
            self.heartbeat.beat();
            let mut again = Vec::new();
            for (mut pending, result) in to_apply.into_iter().zip(results) {
                let entry = &entries[pending.index];
                let span = pending.span.clone();
                let may_contend = pending.may_contend(self.config.contention_budget);
                let settled = self.settle(
                    entry,
                    deliveries(entry),
                    &pending.envelope,
                    result,
                    may_contend,
                );
                match settled.instrument(span).await {
                    Outcome::Unfinished(Failure::Outage) => again.push(pending),
                    Outcome::Unfinished(Failure::Contention) => again.push(pending),
                    outcome => outcomes[pending.index] = Some(outcome),
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
                    outcomes[pending.index] = Some(Outcome::Unfinished(Failure::Other));
                }
            }
        }
        self.ack(entries, outcomes).await
    }

    /// Acks every finished entry in one `XACK` and counts what the batch came to; tells
    /// of each entry whether it was finished.
    async fn ack(
        &self,
        entries: &[RawEntry],
        outcomes: Vec<Option<Outcome>>,
    ) -> Result<(BatchReport, Vec<bool>), ConsumeError> {
        let mut report = BatchReport {
            delivered: entries.len(),
            ..BatchReport::default()
        };
        let mut acks = Vec::with_capacity(entries.len());
        let mut finished = Vec::with_capacity(entries.len());
        for (entry, outcome) in entries.iter().zip(outcomes) {
            match outcome {
                Some(Outcome::Applied) => report.applied += 1,
                Some(Outcome::Duplicate) => report.duplicates += 1,
                Some(Outcome::Skipped) => report.skipped += 1,
                Some(Outcome::DeadLettered) => report.dead_lettered += 1,
                Some(Outcome::Parked) => report.parked += 1,
                Some(Outcome::Failed(_) | Outcome::Unfinished(_)) | None => {
                    report.retry_later += 1;
                    finished.push(false);
                    continue;
                }
            }
            finished.push(true);
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
        Ok((report, finished))
    }

    /// What an event's outcome means for its entry: a failure becomes a dead letter, a
    /// retry in place (`Unfinished` by an outage, or by contention while `may_contend`)
    /// or an entry left pending.
    async fn settle(
        &self,
        entry: &RawEntry,
        deliveries: u64,
        envelope: &Envelope,
        outcome: Outcome,
        may_contend: bool,
    ) -> Outcome {
        let event_type = envelope.event_type().as_str();
        let max = self.config.max_deliveries;
        match outcome {
            Outcome::Applied => {
                self.count_consumed(event_type, "applied");
                Outcome::Applied
            }
            Outcome::Duplicate => {
                debug!("already applied; acking without a second effect");
                self.count_consumed(event_type, "duplicate");
                Outcome::Duplicate
            }
            Outcome::Failed(HandleError::Rejected(reason)) => {
                self.dead_letter(entry, deliveries, DeadLetterCause::Rejected, &reason)
                    .await
            }
            Outcome::Failed(HandleError::Database(e))
                if database::classify(&e) == Failure::Outage =>
            {
                warn!(error = %e, "the database is not working; the event waits in place");
                self.count_failed(event_type);
                Outcome::Unfinished(Failure::Outage)
            }
            Outcome::Failed(HandleError::Database(e))
                if may_contend && database::classify(&e) == Failure::Contention =>
            {
                warn!(error = %e, "the event lost to contention; it is retried in place");
                self.count_failed(event_type);
                Outcome::Unfinished(Failure::Contention)
            }
            Outcome::Failed(e) if deliveries >= max => {
                let error = format!("failed on delivery {deliveries} of MAX_DELIVERIES={max}: {e}");
                self.dead_letter(entry, deliveries, DeadLetterCause::Exhausted, &error)
                    .await
            }
            Outcome::Failed(e) => {
                warn!(error = %e, deliveries, "could not apply the event; it stays pending for a retry");
                self.count_failed(event_type);
                Outcome::Unfinished(Failure::Other)
            }
            Outcome::Unfinished(Failure::Contention) if !may_contend => {
                Outcome::Unfinished(Failure::Other)
            }
            other @ (Outcome::Skipped
            | Outcome::DeadLettered
            | Outcome::Parked
            | Outcome::Unfinished(_)) => other,
        }
    }

    fn count_consumed(&self, event_type: &'static str, result: &'static str) {
        metrics::counter!(EVENTS_CONSUMED, "stream" => self.stream_key.clone(), "event_type" => event_type, "result" => result)
            .increment(1);
    }

    fn count_failed(&self, event_type: &'static str) {
        metrics::counter!(EVENTS_FAILED, "stream" => self.stream_key.clone(), "event_type" => event_type).increment(1);
    }

    /// Copies an entry that can never be processed to the dead-letter stream, with why.
    /// Only when that copy is written is the original acked.
    async fn dead_letter(
        &self,
        entry: &RawEntry,
        deliveries: u64,
        cause: DeadLetterCause,
        error: &str,
    ) -> Outcome {
        warn!(
            error,
            deliveries,
            cause = cause.as_str(),
            "dead-lettering the entry"
        );
        let verdict = Verdict {
            group: self.config.group,
            consumer: &self.config.consumer,
            deliveries,
            error,
        };
        match self.dead_letters.write(entry, verdict).await {
            Ok(()) => {
                metrics::counter!(EVENTS_DEAD_LETTERED, "stream" => self.stream_key.clone(), "cause" => cause.as_str())
                    .increment(1);
                Outcome::DeadLettered
            }
            Err(e) => {
                warn!(error = %e, "could not write the dead letter; the entry stays pending");
                Outcome::Unfinished(Failure::Other)
            }
        }
    }
}
