//! Inbox (SPEC §4.2): idempotent consumption.
//!
//! Streams deliver at least once: an entry is redelivered after a crash before `XACK`,
//! reclaimed from a dead consumer, or re-published after a broker loss. The consumer
//! calls [`record`] in the same transaction as the events' effects; the primary key on
//! `event_id` makes the second attempt a no-op, so each effect happens exactly once.

use std::collections::HashSet;

use events::Envelope;
use sqlx::PgConnection;
use uuid::Uuid;

/// Records that `envelopes` are being applied, each under its partition key (`keys`, in
/// the same order: the consumer's [`EventHandler::partition_key`](crate::EventHandler::partition_key)), in one statement. Returns, for each, whether
/// this is its first time: `false` when it was applied before (or appears earlier in
/// `envelopes`), in which case the caller must skip its effect (the transaction still
/// commits).
#[tracing::instrument(level = "debug", skip_all, fields(events = envelopes.len()))]
pub async fn record(
    conn: &mut PgConnection,
    envelopes: &[&Envelope],
    keys: &[String],
) -> sqlx::Result<Vec<bool>> {
    let event_ids: Vec<Uuid> = envelopes.iter().map(|e| e.event_id).collect();
    let event_types: Vec<&str> = envelopes.iter().map(|e| e.event_type().as_str()).collect();
    let order_ids: Vec<Uuid> = envelopes.iter().map(|e| e.order_id).collect();
    let inserted: Vec<Uuid> = sqlx::query_scalar(
        "INSERT INTO inbox (event_id, event_type, order_id, partition_key)
         SELECT * FROM unnest($1::uuid[], $2::text[], $3::uuid[], $4::text[])
         ON CONFLICT (event_id) DO NOTHING
         RETURNING event_id",
    )
    .bind(&event_ids)
    .bind(&event_types)
    .bind(&order_ids)
    .bind(keys)
    .fetch_all(conn)
    .await?;
    let mut first_time: HashSet<Uuid> = inserted.into_iter().collect();
    Ok(event_ids.iter().map(|id| first_time.remove(id)).collect())
}
