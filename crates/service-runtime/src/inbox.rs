//! Inbox (SPEC §4.2): idempotent consumption.
//!
//! Streams deliver at least once: an entry is redelivered after a crash before `XACK`,
//! reclaimed from a dead consumer, or re-published after a broker loss. The consumer
//! calls [`record`] in the same transaction as the event's effect; the primary key on
//! `event_id` makes the second attempt a no-op, so the effect happens exactly once.

use events::Envelope;
use sqlx::PgConnection;

/// Records that `envelope` is being applied. Returns `false` when it was applied before,
/// in which case the caller must skip the effect (the transaction still commits).
#[tracing::instrument(level = "debug", skip_all, fields(event_id = %envelope.event_id))]
pub async fn record(conn: &mut PgConnection, envelope: &Envelope) -> sqlx::Result<bool> {
    let inserted = sqlx::query(
        "INSERT INTO inbox (event_id, event_type, order_id) VALUES ($1, $2, $3)
         ON CONFLICT (event_id) DO NOTHING",
    )
    .bind(envelope.event_id)
    .bind(envelope.event_type().as_str())
    .bind(envelope.order_id)
    .execute(conn)
    .await?
    .rows_affected();
    Ok(inserted == 1)
}
