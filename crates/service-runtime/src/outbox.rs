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

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use events::{Envelope, EventType};
use sqlx::{PgConnection, Postgres, QueryBuilder, Row};
use tokio::sync::Notify;
use uuid::Uuid;

/// The most committed rows waiting in memory for the relay. Past it, rows are left to the
/// relay's poll (they are in the table either way): memory stays bounded while Redis is
/// down and writers keep committing.
pub const QUEUE_LIMIT: usize = 10_000;

/// This process's line to its relay. After committing a transaction that added or
/// re-armed outbox rows, [`hand_over`](Self::hand_over) them: the relay publishes them
/// without reading them back. It never blocks. Rows never handed over (their writer died
/// first) or that could not be published are found by the relay's poll.
#[derive(Debug, Clone, Default)]
pub struct RelayQueue(Arc<QueueInner>);

#[derive(Debug, Default)]
struct QueueInner {
    rows: Mutex<Vec<OutboxRow>>,
    ready: Notify,
}

impl RelayQueue {
    /// Gives the relay `rows`, committed: call it after the commit, never before (a row
    /// of a transaction that rolled back must never be published).
    pub fn hand_over(&self, rows: Vec<OutboxRow>) {
        if rows.is_empty() {
            return;
        }
        {
            let mut queued = self.0.rows.lock().unwrap_or_else(|e| e.into_inner());
            let room = QUEUE_LIMIT.saturating_sub(queued.len());
            queued.extend(rows.into_iter().take(room));
        }
        self.0.ready.notify_one();
    }

    /// Takes every row handed over so far.
    pub(crate) fn take(&self) -> Vec<OutboxRow> {
        std::mem::take(&mut *self.0.rows.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Waits until rows are handed over (or returns at once for rows handed over while
    /// nobody waited).
    pub(crate) async fn ready(&self) {
        self.0.ready.notified().await;
    }
}

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

    /// Appends the two common table expressions that queue `rows`, in the order given:
    /// `outbox_rows AS (INSERT INTO outbox ...)` and `outbox_waiting AS (INSERT INTO
    /// outbox_pending ...)`, joined by a comma, to follow `WITH` or another expression's
    /// comma. For a service that writes its rows in the same statement as its change.
    pub fn push_queue_all(rows: &[&OutboxRow], query: &mut QueryBuilder<Postgres>) {
        query.push("outbox_rows AS (");
        Self::push_insert(rows, query);
        query.push("), outbox_waiting AS (INSERT INTO outbox_pending (event_id) SELECT unnest(");
        query
            .push_bind(rows.iter().map(|r| r.event_id).collect::<Vec<_>>())
            .push("::uuid[]))");
    }

    /// Appends `INSERT INTO outbox ... SELECT` of `rows`, in the order given.
    fn push_insert(rows: &[&OutboxRow], query: &mut QueryBuilder<Postgres>) {
        // A field list per row: Postgres arrays of arrays must be rectangular, so each list
        // travels as a JSON array and becomes a `text[]` again in the statement.
        let fields: Vec<serde_json::Value> =
            rows.iter().map(|r| serde_json::json!(r.fields)).collect();
        query.push(
            "INSERT INTO outbox (event_id, stream, event_type, order_id, fields)
             SELECT event_id, stream, event_type, order_id,
                    ARRAY(SELECT jsonb_array_elements_text(fields))
             FROM unnest(",
        );
        query
            .push_bind(rows.iter().map(|r| r.event_id).collect::<Vec<_>>())
            .push("::uuid[], ")
            .push_bind(rows.iter().map(|r| r.stream.clone()).collect::<Vec<_>>())
            .push("::text[], ")
            .push_bind(rows.iter().map(|r| r.event_type).collect::<Vec<_>>())
            .push("::text[], ")
            .push_bind(rows.iter().map(|r| r.order_id).collect::<Vec<_>>())
            .push("::uuid[], ")
            .push_bind(fields)
            .push(
                "::jsonb[]) WITH ORDINALITY AS t(event_id, stream, event_type, order_id, fields, n)
             ORDER BY n",
            );
    }

    /// The row as `SELECT event_id, stream, event_type, order_id, fields` returns it.
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
        })
    }
}

/// Adds `envelope` to the outbox, to be published on the logical stream `stream`.
/// Call it on the transaction that makes the change the event describes, and hand the
/// row it returns to the [`RelayQueue`] once that transaction committed. (A service may
/// instead write the [`OutboxRow`] in the same statement as its change.)
pub async fn enqueue(
    conn: &mut PgConnection,
    stream: &str,
    envelope: &Envelope,
) -> sqlx::Result<Vec<OutboxRow>> {
    enqueue_all(conn, stream, std::slice::from_ref(envelope)).await
}

/// Adds `envelopes` to the outbox in one statement, to be published on the logical stream
/// `stream`, in the order given, and returns their rows for the [`RelayQueue`]. Call it on
/// the transaction that makes the changes the events describe. Each envelope should carry
/// the trace context it continues.
#[tracing::instrument(level = "debug", skip_all, fields(events = envelopes.len()))]
pub async fn enqueue_all(
    conn: &mut PgConnection,
    stream: &str,
    envelopes: &[Envelope],
) -> sqlx::Result<Vec<OutboxRow>> {
    if envelopes.is_empty() {
        return Ok(Vec::new());
    }
    let rows: Vec<OutboxRow> = envelopes
        .iter()
        .map(|e| OutboxRow::new(stream, e))
        .collect();
    let mut query = QueryBuilder::new("WITH ");
    OutboxRow::push_queue_all(&rows.iter().collect::<Vec<_>>(), &mut query);
    query.push(" SELECT 1");
    query.build().execute(conn).await?;
    Ok(rows)
}

/// When an event may be published again (SPEC §4.9: re-asking is bounded whatever the
/// outage).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reask {
    /// The first repeat comes this long after the event was made; each later one waits
    /// twice as long as the one before (with ±25 % jitter, so that the orders of one
    /// burst do not ask again in step), up to `backoff_cap`.
    pub after: Duration,
    pub backoff_cap: Duration,
    /// Copies made in this window are still in the stream, not yet delivered to the
    /// group that answers ([`StillQueued`]): they are not repeated, and the wait for
    /// their answer starts over.
    pub still_queued: Option<StillQueued>,
}

impl Reask {
    /// Every repeat `after` the last one, whether or not the last copy was delivered.
    pub fn every(after: Duration) -> Self {
        Self {
            after,
            backoff_cap: after,
            still_queued: None,
        }
    }
}

/// The window of time in which a copy of an event, made then, is still in the stream and
/// not yet delivered to the group that reads it: after the later of the stream's oldest
/// entry and the group's last delivered one, up to the stream's newest entry
/// ([`still_queued`] reads it from Redis). A copy made outside
/// it was delivered, or lost with the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StillQueued {
    pub after: time::OffsetDateTime,
    pub until: time::OffsetDateTime,
}

/// How far apart the clocks of Postgres (when a row was made) and Redis (an entry's id)
/// may be, as far as [`StillQueued`] goes.
const CLOCK_SKEW: Duration = Duration::from_secs(1);

/// The ids of a stream's oldest and newest entries (none if it is empty or gone), without
/// sending their fields: an entry may be huge (SPEC §4.9).
static STREAM_ENDS: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
local first = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)
if #first == 0 then return {} end
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
return {first[1][1], last[1][1]}
",
    )
});

/// Reads from Redis the [`StillQueued`] window of `stream` for `group`: `None` when the
/// stream is gone or empty (nothing of it can be waiting there).
pub async fn still_queued(
    redis: &mut crate::RedisConnection,
    stream: &str,
    group: &str,
) -> redis::RedisResult<Option<StillQueued>> {
    let ends: Vec<String> = STREAM_ENDS.key(stream).invoke_async(redis).await?;
    let [first, last] = ends.as_slice() else {
        return Ok(None);
    };
    let groups: Vec<HashMap<String, redis::Value>> = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(stream)
        .query_async(redis)
        .await?;
    let delivered = groups
        .iter()
        .find(
            |g| matches!(g.get("name"), Some(redis::Value::BulkString(n)) if n == group.as_bytes()),
        )
        .and_then(|g| match g.get("last-delivered-id") {
            Some(redis::Value::BulkString(id)) => std::str::from_utf8(id).ok().map(entry_ms),
            _ => None,
        })
        .unwrap_or(0);
    let at = |ms: u64| {
        time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
            .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
    };
    Ok(Some(StillQueued {
        after: at(entry_ms(first).max(delivered)) + CLOCK_SKEW,
        until: at(entry_ms(last)) + CLOCK_SKEW,
    }))
}

/// The milliseconds of a stream entry id (`<ms>-<seq>`).
fn entry_ms(id: &str) -> u64 {
    id.split('-')
        .next()
        .and_then(|ms| ms.parse().ok())
        .unwrap_or(0)
}

/// Publishes again, with the same `event_id`s, the events of `order_ids` no longer
/// waiting for the relay that are due by `reask`: all of them, or only those of
/// `event_types`. Returns their rows, oldest first, for the [`RelayQueue`] once the
/// transaction committed. A consumer's inbox absorbs the repeat; a producer uses this to
/// repair a broker that lost an event, or to answer a question asked again (SPEC §4.6).
///
/// Each row keeps its own schedule (`rearms`, `next_rearm_at`). A row whose last copy is
/// still queued is not repeated, and its schedule starts over at `reask.after` from now
/// whenever it is seen queued: so the wait for an answer is counted from about when the
/// copy was delivered, not from when it was made (after a long outage, a backlog the
/// answering service is draining is not asked again).
#[tracing::instrument(level = "debug", skip_all, fields(orders = order_ids.len()))]
pub async fn republish(
    conn: &mut PgConnection,
    order_ids: &[Uuid],
    event_types: Option<&[EventType]>,
    reask: &Reask,
) -> sqlx::Result<Vec<OutboxRow>> {
    if order_ids.is_empty() {
        return Ok(Vec::new());
    }
    let types: Option<Vec<&str>> = event_types.map(|t| t.iter().map(|t| t.as_str()).collect());
    let (queued_after, queued_until) = reask.still_queued.map(|q| (q.after, q.until)).unzip();
    // A row still pending is skipped (`DO NOTHING`): the relay publishes it anyway.
    let rearmed = sqlx::query(
        "WITH asked AS (
             SELECT event_id, COALESCE(rearmed_at, created_at) AS last_copy,
                    COALESCE(next_rearm_at,
                             COALESCE(rearmed_at, created_at) + make_interval(secs => $3))
                        <= now() AS due
             FROM outbox
             WHERE order_id = ANY($1)
               AND ($2::text[] IS NULL OR event_type = ANY($2))
         ), queued AS (
             SELECT event_id FROM asked WHERE last_copy > $5 AND last_copy <= $6
         ), put_off AS (
             UPDATE outbox SET next_rearm_at = now() + make_interval(secs => $3)
             WHERE event_id IN (SELECT event_id FROM queued)
         ), rearmed AS (
             INSERT INTO outbox_pending (event_id)
             SELECT event_id FROM asked
             WHERE due AND event_id NOT IN (SELECT event_id FROM queued)
             ON CONFLICT DO NOTHING
             RETURNING event_id
         ), stamped AS (
             UPDATE outbox SET rearmed_at = now(), rearms = rearms + 1,
                 next_rearm_at = now() + make_interval(secs =>
                     least($4, $3 * power(2, least(rearms, 30))) * (0.75 + random() * 0.5))
             WHERE event_id IN (SELECT event_id FROM rearmed)
         )
         SELECT o.event_id, o.stream, o.event_type, o.order_id, o.fields
         FROM outbox o JOIN rearmed USING (event_id)
         ORDER BY o.id",
    )
    .bind(order_ids)
    .bind(types)
    .bind(reask.after.as_secs_f64())
    .bind(reask.backoff_cap.as_secs_f64())
    .bind(queued_after)
    .bind(queued_until)
    .fetch_all(conn)
    .await?;
    rearmed.iter().map(OutboxRow::from_row).collect()
}

/// Publishes again `envelopes`, answers a service rebuilt from its own record of what it
/// did, with the `event_id`s they were first published under (SPEC §4.6, §4.9): so a
/// question asked again is answered whatever the outbox's retention. Where the outbox
/// still holds an event, that row goes out again as it was committed, byte for byte;
/// where the sweeper deleted it, the rebuilt one takes its place. An event already waiting
/// for the relay is not queued twice. Returns the rows queued, in the order given, for
/// the [`RelayQueue`] once the transaction committed.
#[tracing::instrument(level = "debug", skip_all, fields(events = envelopes.len()))]
pub async fn enqueue_again(
    conn: &mut PgConnection,
    stream: &str,
    envelopes: &[Envelope],
) -> sqlx::Result<Vec<OutboxRow>> {
    let mut seen = HashSet::new();
    let rows: Vec<OutboxRow> = envelopes
        .iter()
        .filter(|e| seen.insert(e.event_id))
        .map(|e| OutboxRow::new(stream, e))
        .collect();
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let mut query = QueryBuilder::new("WITH stored AS (");
    OutboxRow::push_insert(&rows.iter().collect::<Vec<_>>(), &mut query);
    // `DO UPDATE` rather than `DO NOTHING`, so the stored row is returned as it stands.
    query.push(
        " ON CONFLICT (event_id) DO UPDATE SET rearmed_at = now()
         RETURNING id, event_id, stream, event_type, order_id, fields
     ), queued AS (
         INSERT INTO outbox_pending (event_id) SELECT event_id FROM stored
         ON CONFLICT DO NOTHING
         RETURNING event_id
     )
     SELECT s.event_id, s.stream, s.event_type, s.order_id, s.fields
     FROM stored s JOIN queued USING (event_id)",
    );
    let mut queued = query
        .build()
        .fetch_all(conn)
        .await?
        .iter()
        .map(OutboxRow::from_row)
        .collect::<sqlx::Result<Vec<_>>>()?;
    let position: HashMap<Uuid, usize> = rows
        .iter()
        .enumerate()
        .map(|(n, r)| (r.event_id, n))
        .collect();
    queued.sort_by_key(|row| position.get(&row.event_id).copied());
    Ok(queued)
}

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
