//! Transactional outbox (SPEC §4.1): the only way a service emits an event.
//!
//! A service never writes its database and then `XADD`s separately: a crash between the
//! two would lose the event or publish one for a change that never committed. Instead it
//! calls [`enqueue`] inside the transaction of the state change; the row commits or rolls
//! back with it. After the commit, the code that committed it hands the rows to its own
//! process's relay ([`RelayQueue`]), which publishes them at once, from memory, and then
//! marks them published. A row whose writer died before handing it over, or whose
//! publish failed, is still unpublished in the table: the relay's poll finds it there.
//!
//! What is unpublished is a table of its own, `outbox_pending` (one `event_id` per row
//! waiting), written in the same statement as the outbox rows; marking a row published
//! deletes its entry. The outbox rows themselves are never updated: an update of the
//! column that says "published" could not be HOT (the relay's index depends on it), so
//! it cost a whole new row version and an entry in every outbox index per event.
//! (No `NOTIFY` either: Postgres serialises the commits of every notifying transaction,
//! holding a global lock across them, so commits would no longer group.)
//!
//! The row stores the finished field list of the stream entry, so what the relay writes,
//! and re-writes after a broker loss, is byte-for-byte the event that was committed. A
//! service may also write the [`OutboxRow`] in the very statement that makes its change
//! (one statement is atomic on its own), saving the round trips of a transaction.

use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use events::{Envelope, EventType, EventWriter};
use sqlx::postgres::PgArguments;
use sqlx::query::{Query, QueryAs};
use sqlx::{PgConnection, Postgres, Row};
use tokio::sync::Notify;
use uuid::Uuid;

mod again;
pub use again::{Reask, StillQueued, enqueue_again, republish, still_queued};

/// The most committed rows waiting in memory for the relay. Past it, rows are left to the
/// relay's poll (they are in the table either way): memory stays bounded while Redis is
/// down and writers keep committing.
pub const QUEUE_LIMIT: usize = 10_000;

/// This process's line to its relay. After committing a transaction that added or
/// re-armed outbox rows, [`hand_over`](Self::hand_over) them: the relay publishes them
/// without reading them back. It never blocks. Rows never handed over (their writer died
/// first), that could not be published, or that waited in memory until the poll could
/// claim them (see [`crate::relay`]) are found by the relay's poll.
#[derive(Debug, Clone, Default)]
pub struct RelayQueue(Arc<QueueInner>);

#[derive(Debug, Default)]
struct QueueInner {
    /// Each row with the moment it was handed over.
    rows: Mutex<Vec<(Instant, OutboxRow)>>,
    ready: Notify,
}

impl RelayQueue {
    /// Gives the relay `rows`, committed: call it after the commit, never before (a row
    /// of a transaction that rolled back must never be published).
    pub fn hand_over(&self, rows: Vec<OutboxRow>) {
        if rows.is_empty() {
            return;
        }
        let now = Instant::now();
        {
            let mut queued = self.0.rows.lock().unwrap_or_else(|e| e.into_inner());
            let room = QUEUE_LIMIT.saturating_sub(queued.len());
            queued.extend(rows.into_iter().take(room).map(|row| (now, row)));
        }
        self.0.ready.notify_one();
    }

    /// Takes every row handed over so far: returns those handed over at most `max_age`
    /// ago and drops the older ones, which are the relay's poll's to publish by then
    /// (they are still unpublished in the table).
    pub(crate) fn take_younger_than(&self, max_age: Duration) -> Vec<OutboxRow> {
        let queued = std::mem::take(&mut *self.0.rows.lock().unwrap_or_else(|e| e.into_inner()));
        let now = Instant::now();
        queued
            .into_iter()
            .filter_map(|(handed_over, row)| {
                (now.saturating_duration_since(handed_over) <= max_age).then_some(row)
            })
            .collect()
    }

    /// Waits until rows are handed over (or returns at once for rows handed over while
    /// nobody waited).
    pub(crate) async fn ready(&self) {
        self.0.ready.notified().await;
    }
}

/// The values of one outbox row: the columns of `INSERT INTO outbox (event_id, stream,
/// event_type, order_id, fields, partition_key)`, in that order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRow {
    /// The event's id, the same on every publish.
    pub event_id: Uuid,
    /// The logical stream it goes to.
    pub stream: String,
    /// Its `event_type`.
    pub event_type: &'static str,
    /// The order it is about (the envelope's `order_id`).
    pub order_id: Uuid,
    /// The stream entry's field list: name, value, name, value...
    pub fields: Vec<String>,
    /// The key [`republish`] finds the row by, chosen by the service that writes it: the
    /// order id (as text) unless it says otherwise ([`keyed_by`](Self::keyed_by)).
    pub partition_key: String,
}

impl OutboxRow {
    /// The row for `envelope` on the logical stream `stream`, written by `writer` (the
    /// service's `WRITE_SCHEMA_VERSION` and signing key). An event without a
    /// `traceparent` gets the current span's, so its consumer continues the trace.
    pub fn new(stream: &str, writer: &EventWriter, envelope: &Envelope) -> Self {
        let mut rows = Self::new_all(stream, writer, std::slice::from_ref(envelope));
        rows.pop().expect("a row per envelope")
    }

    /// The rows for `envelopes`, which one statement writes, in order: as [`new`](Self::new)
    /// each, but signed as a batch if the writer's `SIGNATURE_SCOPE` says so.
    pub fn new_all(stream: &str, writer: &EventWriter, envelopes: &[Envelope]) -> Vec<Self> {
        let envelopes: Vec<Envelope> = envelopes.iter().cloned().map(traced).collect();
        writer
            .fields_all(&envelopes)
            .into_iter()
            .zip(&envelopes)
            .map(|(fields, envelope)| Self {
                event_id: envelope.event_id,
                stream: stream.to_owned(),
                event_type: envelope.event_type().as_str(),
                order_id: envelope.order_id,
                partition_key: envelope.order_id.to_string(),
                fields: flatten(fields),
            })
            .collect()
    }

    /// The row with `key` as its partition key instead of its order's id.
    pub fn keyed_by(mut self, key: impl Into<String>) -> Self {
        self.partition_key = key.into();
        self
    }

    /// The value of the row's field `name`.
    fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .chunks(2)
            .find(|pair| pair[0] == name)
            .and_then(|pair| pair.get(1).map(String::as_str))
    }

    /// The `schema_version` the row's event is written as.
    pub fn schema_version(&self) -> Option<u32> {
        self.field(events::fields::SCHEMA_VERSION)?.parse().ok()
    }

    /// The id of the key the row's event is signed with, if it is signed.
    pub fn key_id(&self) -> Option<&str> {
        self.field(events::fields::KEY_ID)
    }

    /// The event the row holds, read as a consumer would.
    pub fn envelope(&self) -> Result<Envelope, events::DecodeError> {
        Envelope::from_fields(
            self.fields
                .chunks(2)
                .map(|pair| (pair[0].as_str(), pair.get(1).map_or("", String::as_str))),
        )
    }

    /// The row as `SELECT event_id, stream, event_type, order_id, fields, partition_key`
    /// returns it; a row written before partition keys were stored is its order's, so
    /// the select says `coalesce(partition_key, order_id::text) AS partition_key`.
    fn from_row(row: &sqlx::postgres::PgRow) -> sqlx::Result<Self> {
        let event_type: &str = row.try_get("event_type")?;
        Ok(Self {
            event_id: row.try_get("event_id")?,
            stream: row.try_get("stream")?,
            event_type: EventType::from_str(event_type)
                .map_err(|e| sqlx::Error::Decode(e.into()))?
                .as_str(),
            order_id: row.try_get("order_id")?,
            fields: row.try_get("fields")?,
            partition_key: row.try_get("partition_key")?,
        })
    }
}

/// An entry's fields as an outbox row stores them: name, value, name, value...
fn flatten(fields: Vec<(&'static str, String)>) -> Vec<String> {
    fields
        .into_iter()
        .flat_map(|(name, value)| [name.to_owned(), value])
        .collect()
}

/// `envelope`, carrying the current span's trace context unless it has one: what an
/// event written later, by another task, continues (so its consumer continues the trace).
pub fn traced(mut envelope: Envelope) -> Envelope {
    if envelope.traceparent.is_none() {
        envelope.traceparent = crate::telemetry::current_traceparent();
    }
    envelope
}

/// Adds `envelope` to the outbox, to be published on the logical stream `stream` as
/// `writer` writes it.
/// Call it on the transaction that makes the change the event describes, and hand the
/// row it returns to the [`RelayQueue`] once that transaction committed. (A service may
/// instead write the [`OutboxRow`] in the same statement as its change.)
pub async fn enqueue(
    conn: &mut PgConnection,
    stream: &str,
    writer: &EventWriter,
    envelope: &Envelope,
) -> sqlx::Result<Vec<OutboxRow>> {
    enqueue_all(conn, stream, writer, std::slice::from_ref(envelope)).await
}

/// Adds `envelopes` to the outbox in one statement, to be published on the logical stream
/// `stream` as `writer` writes them, in the order given, and returns their rows for the [`RelayQueue`]. Call it on
/// the transaction that makes the changes the events describe. Each envelope should carry
/// the trace context it continues.
#[tracing::instrument(level = "debug", skip_all, fields(events = envelopes.len()))]
pub async fn enqueue_all(
    conn: &mut PgConnection,
    stream: &str,
    writer: &EventWriter,
    envelopes: &[Envelope],
) -> sqlx::Result<Vec<OutboxRow>> {
    if envelopes.is_empty() {
        return Ok(Vec::new());
    }
    let rows = OutboxRow::new_all(stream, writer, envelopes);
    const QUEUE: &str = concat!(
        "WITH outbox_rows AS (",
        crate::insert_outbox_rows!(),
        ") INSERT INTO outbox_pending (event_id) SELECT unnest($1::uuid[])"
    );
    sqlx::query(QUEUE)
        .bind_outbox_rows(&rows.iter().collect::<Vec<_>>())
        .execute(conn)
        .await?;
    Ok(rows)
}

/// `INSERT INTO outbox ... SELECT` of the rows bound as `$1` to `$6`
/// ([`BindOutboxRows::bind_outbox_rows`]), in the order given. A statement that uses it
/// numbers its own binds from `$7`.
#[macro_export]
macro_rules! insert_outbox_rows {
    () => {
        // A field list per row: Postgres arrays of arrays must be rectangular, so each
        // list travels in a composite of its own (`FieldList`, migration 1008), which
        // `unnest` expands into its one column, the `text[]`.
        // A row keyed by its order stores no key (migration 1007).
        "INSERT INTO outbox (event_id, stream, event_type, order_id, fields, partition_key)
         SELECT event_id, stream, event_type, order_id, fields,
                NULLIF(partition_key, order_id::text)
         FROM unnest($1::uuid[], $2::text[], $3::text[], $4::uuid[],
                     $5::outbox_field_list[], $6::text[])
              WITH ORDINALITY AS t(event_id, stream, event_type, order_id, fields, partition_key, n)
         ORDER BY n"
    };
}

/// The two common table expressions that queue the rows bound as `$1` to `$6`
/// (`outbox_rows`, `outbox_waiting`), each followed by a comma: for a service that writes
/// its rows in the very statement that makes its change,
/// `concat!("WITH ", queue_outbox_rows!(), "changed AS (...) ...")`, its own binds from `$7`.
/// No rows is fine: the two insert nothing.
#[macro_export]
macro_rules! queue_outbox_rows {
    () => {
        concat!(
            "outbox_rows AS (",
            $crate::insert_outbox_rows!(),
            "), outbox_waiting AS (
                 INSERT INTO outbox_pending (event_id) SELECT unnest($1::uuid[])
             ), "
        )
    };
}

/// Binds outbox rows as `$1` to `$6` of a statement written with [`queue_outbox_rows!`]
/// or [`insert_outbox_rows!`](crate::insert_outbox_rows): bind them first, then the
/// statement's own.
pub trait BindOutboxRows<'q> {
    /// The query with `rows` bound, in the order given.
    fn bind_outbox_rows(self, rows: &[&'q OutboxRow]) -> Self;
}

/// One row's field list as [`insert_outbox_rows!`] binds it: a composite
/// `outbox_field_list` (migration 1008) holding the `text[]`, sent in binary; an array
/// of them holds lists of any lengths, and `unnest` gives back each `text[]`. Encoded as
/// a record by sqlx's derive; its type named by hand (`derive(Type)` would also decode,
/// which a borrowed list cannot).
#[derive(sqlx::Encode)]
struct FieldList<'a> {
    list: &'a [String],
}

impl sqlx::Type<Postgres> for FieldList<'_> {
    fn type_info() -> sqlx::postgres::PgTypeInfo {
        sqlx::postgres::PgTypeInfo::with_name("outbox_field_list")
    }
}

impl sqlx::postgres::PgHasArrayType for FieldList<'_> {
    fn array_type_info() -> sqlx::postgres::PgTypeInfo {
        sqlx::postgres::PgTypeInfo::array_of("outbox_field_list")
    }
}

/// The columns of `rows`, as the six binds of [`insert_outbox_rows!`] take them.
type Columns<'a> = (
    Vec<Uuid>,
    Vec<&'a str>,
    Vec<&'static str>,
    Vec<Uuid>,
    Vec<FieldList<'a>>,
    Vec<&'a str>,
);

fn columns<'a>(rows: &[&'a OutboxRow]) -> Columns<'a> {
    (
        rows.iter().map(|r| r.event_id).collect(),
        rows.iter().map(|r| r.stream.as_str()).collect(),
        rows.iter().map(|r| r.event_type).collect(),
        rows.iter().map(|r| r.order_id).collect(),
        rows.iter().map(|r| FieldList { list: &r.fields }).collect(),
        rows.iter().map(|r| r.partition_key.as_str()).collect(),
    )
}

/// The same six binds for each kind of query (`bind` is each one's own, not a trait's).
macro_rules! impl_bind_outbox_rows {
    ($([$($generic:ident)?] $query:ty),+) => {$(
        impl<'q, $($generic)?> BindOutboxRows<'q> for $query {
            fn bind_outbox_rows(self, rows: &[&'q OutboxRow]) -> Self {
                let (ids, streams, types, orders, fields, keys) = columns(rows);
                self.bind(ids)
                    .bind(streams)
                    .bind(types)
                    .bind(orders)
                    .bind(fields)
                    .bind(keys)
            }
        }
    )+};
}

impl_bind_outbox_rows!(
    [] Query<'q, Postgres, PgArguments>,
    [O] QueryAs<'q, Postgres, O, PgArguments>
);

/// Which outbox rows still wait for their answer (SPEC §4.6): a SQL condition on an
/// `outbox` row, written in the service's code (never built from input). The sweeper keeps
/// such rows whatever their age, so the question can always be asked again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AwaitingAnswer(pub &'static str);

/// Deletes published rows made more than `retention` ago, in batches; keeps every row
/// still pending, and every row `awaiting` an answer. Published rows are kept that long
/// so a broker loss can be repaired by re-publishing. Returns how many were deleted.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn sweep_published(
    pool: &sqlx::PgPool,
    retention: Duration,
    awaiting: Option<AwaitingAnswer>,
) -> sqlx::Result<u64> {
    let keep = awaiting.map_or("false", |a| a.0);
    let statement = format!(
        "DELETE FROM outbox WHERE id = ANY(ARRAY(
             SELECT id FROM outbox
                 WHERE created_at < now() - make_interval(secs => $1)
                   AND NOT EXISTS (SELECT 1 FROM outbox_pending p
                                   WHERE p.event_id = outbox.event_id)
                   AND NOT ({keep})
             ORDER BY id LIMIT $2))"
    );
    crate::retention::prune(pool, "outbox", &statement, retention).await
}
