//! Applying a batch's events in the database: inbox records and the handler's effects in
//! one transaction per partition group; if any event fails, the group is redone one
//! event at a time, a savepoint each, so a failing event undoes only itself. The outbox
//! rows a transaction wrote go to the relay once it committed, only those of events that
//! committed.

use std::hash::{Hash, Hasher};

use events::Envelope;
use sqlx::PgConnection;
use tracing::{Instrument, debug, info_span, warn};

use super::batch::{Outcome, Pending};
use super::{Consumer, EventHandler, HandleError};
use crate::database::{self, Failure};
use crate::inbox;
use crate::outbox::OutboxRow;

/// `lock_timeout` of the one-by-one pass: long enough for the row locks of a live
/// transaction that is about to commit, short enough that a whole batch behind a lock held
/// for good fails in well under a second.
const ONE_BY_ONE_LOCK_TIMEOUT: &str = "50ms";

impl<H: EventHandler> Consumer<H> {
    /// Applies a batch: split by [`EventHandler::partition_key`] into at most
    /// `parallelism` groups, each applied in one transaction of its own, concurrently.
    /// Outcomes come back in the order of `batch`: `Applied`, `Duplicate`, `Failed` or
    /// `Unfinished`.
    pub(super) async fn apply_batch(&self, batch: &[Pending]) -> Vec<Outcome> {
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
        let mut outcomes: Vec<Option<Outcome>> = (0..batch.len()).map(|_| None).collect();
        for (indices, group_outcomes) in applied {
            for (&i, outcome) in indices.iter().zip(group_outcomes) {
                outcomes[i] = Some(outcome);
            }
        }
        outcomes
            .into_iter()
            .map(|o| o.unwrap_or(Outcome::Unfinished(Failure::Outage)))
            .collect()
    }

    /// One group in one transaction. Tried as a whole first; if it fails, the whole
    /// transaction is rolled back and the group redone one event at a time, a savepoint
    /// each, so the failure undoes only itself and the others commit.
    ///
    /// Each transaction has a deadline of its own (`transaction_deadline`): one that does
    /// not end by then is dropped (its connection with it) and its events wait as in an
    /// outage, since only a server, or a path to it, that stopped answering keeps a
    /// bounded session from ending.
    async fn apply_group(&self, group: &[&Pending]) -> Vec<Outcome> {
        let deadline = self.config.transaction_deadline;
        let attempt = match tokio::time::timeout(deadline, self.try_whole(group)).await {
            Ok(Ok(None)) => tokio::time::timeout(deadline, self.try_one_by_one(group))
                .await
                .map_err(|_| ()),
            Ok(Ok(Some(outcomes))) => Ok(Ok(outcomes)),
            Ok(Err(e)) => Ok(Err(e)),
            Err(_) => Err(()),
        };
        match attempt {
            Ok(Ok(outcomes)) => outcomes,
            Ok(Err(e)) => {
                warn!(error = %e, events = group.len(), "a batch transaction failed; nothing of it committed");
                let failure = database::classify(&e);
                group.iter().map(|_| Outcome::Unfinished(failure)).collect()
            }
            Err(()) => {
                warn!(
                    ?deadline,
                    events = group.len(),
                    "a batch transaction did not end in time; abandoned, it waits as in an outage"
                );
                group
                    .iter()
                    .map(|_| Outcome::Unfinished(Failure::Outage))
                    .collect()
            }
        }
    }

    /// Applies `group` in one transaction, or nothing of it (`Ok(None)`) if any event
    /// fails.
    async fn try_whole(&self, group: &[&Pending]) -> Result<Option<Vec<Outcome>>, sqlx::Error> {
        let envelopes: Vec<&Envelope> = group.iter().map(|p| &*p.envelope).collect();
        let mut tx = self.begin().await?;
        let span = info_span!("consume_batch", events = group.len());
        for pending in group {
            span.follows_from(&pending.span);
        }
        match self.apply(&mut tx, &envelopes).instrument(span).await {
            Ok((outcomes, outgoing)) => {
                tx.commit().await?;
                self.relay.hand_over(outgoing);
                Ok(Some(outcomes))
            }
            Err(e) => {
                debug!(error = %e, "an event of the batch failed; applying them one by one");
                tx.rollback().await?;
                Ok(None)
            }
        }
    }

    /// Applies `group` in one transaction, each event in a savepoint of its own.
    ///
    /// The whole group already failed, perhaps because a lock it needs is held (a frozen
    /// replica's open transaction): so here a lock wait ends at once
    /// ([`ONE_BY_ONE_LOCK_TIMEOUT`]), and an event behind such a lock fails alone, fast,
    /// instead of each one waiting the full `lock_timeout` in turn.
    async fn try_one_by_one(&self, group: &[&Pending]) -> Result<Vec<Outcome>, sqlx::Error> {
        let mut tx = self.begin().await?;
        sqlx::query("SELECT set_config('lock_timeout', $1, true)")
            .bind(ONE_BY_ONE_LOCK_TIMEOUT)
            .execute(&mut *tx)
            .await?;
        let mut outcomes = Vec::with_capacity(group.len());
        let mut outgoing = Vec::new();
        for pending in group {
            let outcome = async {
                sqlx::query("SAVEPOINT event").execute(&mut *tx).await?;
                let outcome = match self.apply(&mut tx, &[&*pending.envelope]).await {
                    Ok((mut one, rows)) => {
                        outgoing.extend(rows);
                        one.pop().unwrap_or(Outcome::Duplicate)
                    }
                    Err(e) => {
                        sqlx::query("ROLLBACK TO SAVEPOINT event")
                            .execute(&mut *tx)
                            .await?;
                        Outcome::Failed(e)
                    }
                };
                sqlx::query("RELEASE SAVEPOINT event")
                    .execute(&mut *tx)
                    .await?;
                Ok::<_, sqlx::Error>(outcome)
            }
            .instrument(pending.span.clone())
            .await?;
            outcomes.push(outcome);
        }
        tx.commit().await?;
        self.relay.hand_over(outgoing);
        Ok(outcomes)
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
    /// duplicate hook of the others. Returns `Applied` or `Duplicate` for each, and the
    /// outbox rows written, for the relay once the transaction commits.
    async fn apply(
        &self,
        conn: &mut PgConnection,
        envelopes: &[&Envelope],
    ) -> Result<(Vec<Outcome>, Vec<OutboxRow>), HandleError> {
        let keys: Vec<String> = envelopes
            .iter()
            .map(|e| self.handler.partition_key(e))
            .collect();
        let first_time = inbox::record(conn, envelopes, &keys).await?;
        let (fresh, repeated): (Vec<_>, Vec<_>) = envelopes
            .iter()
            .zip(&first_time)
            .partition(|(_, first)| **first);
        let mut outgoing = Vec::new();
        if !fresh.is_empty() {
            let fresh: Vec<&Envelope> = fresh.into_iter().map(|(e, _)| *e).collect();
            outgoing = self.handler.handle(conn, &fresh).await?;
        }
        for (envelope, _) in repeated {
            outgoing.extend(self.handler.on_duplicate(conn, envelope).await?);
        }
        let outcomes = first_time.into_iter().map(Outcome::committed).collect();
        Ok((outcomes, outgoing))
    }
}
