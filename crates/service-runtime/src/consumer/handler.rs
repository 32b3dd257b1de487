//! The handler contract: what a service does with the events it consumes, and how a
//! read, an ack or an event can fail.

use std::future::Future;

use events::Envelope;
use redis::RedisError;
use sqlx::PgConnection;

use crate::outbox::OutboxRow;

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
