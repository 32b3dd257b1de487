//! Transactional outbox (SPEC §4.1): the only way a service emits an event.
//!
//! A service never writes its database and then `XADD`s separately: a crash between the
//! two would lose the event or publish one for a change that never committed. Instead it
//! calls [`enqueue`] inside the transaction of the state change; the row commits or rolls
//! back with it, and the [relay](crate::relay) publishes it afterwards. A statement-level
//! trigger (see the migrations) sends `NOTIFY outbox` so the relay wakes at once.
//!
//! The row stores the finished field list of the stream entry, so what the relay writes,
//! and re-writes after a broker loss, is byte-for-byte the event that was committed. A
//! service may also write the [`OutboxRow`] in the very statement that makes its change
//! (one statement is atomic on its own), saving the round trips of a transaction.

use events::Envelope;
use sqlx::PgConnection;
use uuid::Uuid;

/// The `LISTEN`/`NOTIFY` channel the outbox trigger signals on each insert.
pub const NOTIFY_CHANNEL: &str = "outbox";

/// The values of one outbox row: the columns of `INSERT INTO outbox (event_id, stream,
/// event_type, order_id, fields)`, in that order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRow {
    pub event_id: Uuid,
    pub stream: String,
    pub event_type: &'static str,
    pub order_id: Uuid,
    /// The stream entry's field list: name, value, name, value...
    pub fields: Vec<String>,
}

impl OutboxRow {
    /// The row for `envelope` on the logical stream `stream`. An event without a
    /// `traceparent` gets the current span's, so its consumer continues the trace.
    pub fn new(stream: &str, envelope: &Envelope) -> Self {
        let mut envelope = envelope.clone();
        if envelope.traceparent.is_none() {
            envelope.traceparent = crate::telemetry::current_traceparent();
        }
        Self {
            event_id: envelope.event_id,
            stream: stream.to_owned(),
            event_type: envelope.event_type().as_str(),
            order_id: envelope.order_id,
            fields: envelope
                .to_fields()
                .into_iter()
                .flat_map(|(name, value)| [name.to_owned(), value])
                .collect(),
        }
    }
}

/// Adds `envelope` to the outbox, to be published on the logical stream `stream`.
/// Call it on the transaction that makes the change the event describes. (A service may
/// instead write the [`OutboxRow`] in the same statement as its change.)
#[tracing::instrument(level = "debug", skip_all, fields(event_id = %envelope.event_id, event_type = %envelope.event_type()))]
pub async fn enqueue(
    conn: &mut PgConnection,
    stream: &str,
    envelope: &Envelope,
) -> sqlx::Result<()> {
    let row = OutboxRow::new(stream, envelope);
    sqlx::query(
        "INSERT INTO outbox (event_id, stream, event_type, order_id, fields)
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(row.event_id)
    .bind(row.stream)
    .bind(row.event_type)
    .bind(row.order_id)
    .bind(row.fields)
    .execute(conn)
    .await?;
    Ok(())
}

/// Wakes the relay after rows were re-armed (`published_at = NULL`) rather than inserted:
/// the insert trigger does not fire for those. Delivered at commit.
pub async fn wake_relay(conn: &mut PgConnection) -> sqlx::Result<()> {
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(NOTIFY_CHANNEL)
        .execute(conn)
        .await?;
    Ok(())
}

/// Deletes rows published more than `retention` ago; keeps every unpublished row.
/// Published rows are kept that long so a broker loss can be repaired by re-publishing.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn sweep_published(
    pool: &sqlx::PgPool,
    retention: std::time::Duration,
) -> sqlx::Result<u64> {
    let deleted =
        sqlx::query("DELETE FROM outbox WHERE published_at < now() - make_interval(secs => $1)")
            .bind(retention.as_secs_f64())
            .execute(pool)
            .await?;
    Ok(deleted.rows_affected())
}
