//! Publishing again (SPEC §4.6, §4.9): when a question may be asked again ([`Reask`],
//! with [`StillQueued`] read from Redis), re-arming stored rows ([`republish`]), and
//! queueing answers rebuilt from a service's own record ([`enqueue_again`]).

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use events::{Envelope, EventType, EventWriter, SignatureScope};
use sqlx::PgConnection;
use tracing::warn;
use uuid::Uuid;

use super::{BindOutboxRows, OutboxRow};

/// When an event may be published again (SPEC §4.9: re-asking is bounded whatever the
/// outage).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reask {
    /// The first repeat comes this long after the event was made; each later one waits
    /// twice as long as the one before (with ±25 % jitter, so that the orders of one
    /// burst do not ask again in step), up to `backoff_cap`.
    pub after: Duration,
    /// The longest wait between two re-asks of one row.
    pub backoff_cap: Duration,
    /// Copies made in this window are still in the stream, not yet delivered to the
    /// group that answers ([`StillQueued`]): they are not repeated, and the wait for
    /// their answer starts over.
    pub still_queued: Option<StillQueued>,
    /// How often the caller looks ([`republish`]). A copy seen still queued is put off
    /// `after` plus this, since it may be delivered just after the look: so it waits at
    /// least `after` from its delivery for its answer, however many it has to wait with.
    pub looks_every: Duration,
}

impl Reask {
    /// Every repeat `after` the last one, whether or not the last copy was delivered.
    pub fn every(after: Duration) -> Self {
        Self {
            after,
            backoff_cap: after,
            still_queued: None,
            looks_every: Duration::ZERO,
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
    /// Queued again no earlier than this.
    pub after: time::OffsetDateTime,
    /// And no later than this.
    pub until: time::OffsetDateTime,
}

/// How far apart the clocks of Postgres (when a row was made) and Redis (an entry's id)
/// may be, as far as [`StillQueued`] goes.
const CLOCK_SKEW: Duration = Duration::from_secs(1);

/// Reads from Redis the [`StillQueued`] window of `stream` for `group`: `None` when the
/// stream is gone or empty (nothing of it can be waiting there).
pub async fn still_queued(
    redis: &mut crate::RedisConnection,
    stream: &str,
    group: &str,
) -> redis::RedisResult<Option<StillQueued>> {
    let Some((first, last)) = crate::functions::stream_ends(redis, stream).await? else {
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
        after: at(entry_ms(&first).max(delivered)) + CLOCK_SKEW,
        until: at(entry_ms(&last)) + CLOCK_SKEW,
    }))
}

/// The milliseconds of a stream entry id (`<ms>-<seq>`).
fn entry_ms(id: &str) -> u64 {
    id.split('-')
        .next()
        .and_then(|ms| ms.parse().ok())
        .unwrap_or(0)
}

/// Publishes again, with the same `event_id`s, the events of partition `keys` (their
/// [`OutboxRow::partition_key`]: for order-service, its orders' ids) no longer
/// waiting for the relay that are due by `reask`: all of them, or only those of
/// `event_types`, each as `writer` would write it now where it differs (`written_as`).
/// Returns their rows,
/// oldest first, for the [`RelayQueue`](super::RelayQueue) once the
/// transaction committed. A consumer's inbox absorbs the repeat; a producer uses this to
/// repair a broker that lost an event, or to answer a question asked again (SPEC §4.6).
///
/// Each row keeps its own schedule (`rearms`, `next_rearm_at`). A row whose last copy is
/// still queued is not repeated, and its schedule starts over at `reask.after` (plus
/// `reask.looks_every`) from now whenever it is seen queued: so the wait for an answer is
/// counted from when the copy was delivered, not from when it was made (after a long outage, a backlog the
/// answering service is draining is not asked again).
#[tracing::instrument(level = "debug", skip_all, fields(keys = keys.len()))]
pub async fn republish(
    conn: &mut PgConnection,
    keys: &[String],
    event_types: Option<&[EventType]>,
    reask: &Reask,
    writer: &EventWriter,
) -> sqlx::Result<Vec<OutboxRow>> {
    if keys.is_empty() {
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
             -- A row keyed by its order stores no key (as rows written before keys were).
             WHERE (partition_key = ANY($1) OR (partition_key IS NULL AND order_id = ANY($8)))
               AND ($2::text[] IS NULL OR event_type = ANY($2))
         ), queued AS (
             SELECT event_id FROM asked WHERE last_copy > $5 AND last_copy <= $6
         ), put_off AS (
             UPDATE outbox SET next_rearm_at = now() + make_interval(secs => $3 + $7)
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
         SELECT o.event_id, o.stream, o.event_type, o.order_id, o.fields,
                coalesce(o.partition_key, o.order_id::text) AS partition_key
         FROM outbox o JOIN rearmed USING (event_id)
         ORDER BY o.id",
    )
    .bind(keys)
    .bind(types)
    .bind(reask.after.as_secs_f64())
    .bind(reask.backoff_cap.as_secs_f64())
    .bind(queued_after)
    .bind(queued_until)
    .bind(reask.looks_every.as_secs_f64())
    .bind(
        keys.iter()
            .filter_map(|k| Uuid::parse_str(k).ok())
            .collect::<Vec<_>>(),
    )
    .fetch_all(&mut *conn)
    .await?;
    let rows = rearmed
        .iter()
        .map(OutboxRow::from_row)
        .collect::<sqlx::Result<Vec<_>>>()?;
    written_as(conn, rows, writer).await
}

/// `rows` to publish again, rewritten where `writer` would write them differently now, in
/// the table too (so the relay's poll sends the same): a row stored as a newer schema
/// version than it writes (committed before `WRITE_SCHEMA_VERSION` was switched back,
/// SPEC §3.4: a reader rolled back reads its repeats), or not signed with its key
/// (committed before signing was turned on, or with a key rotated out since: consumers
/// that require signatures accept its repeats), or signed as a batch while it signs each
/// entry (`SIGNATURE_SCOPE` switched back to `entry`: a reader rolled back to a release
/// before batch signatures accepts its repeats). The rest go as they were committed, byte
/// for byte. Rare, so one statement per row rewritten.
async fn written_as(
    conn: &mut PgConnection,
    mut rows: Vec<OutboxRow>,
    writer: &EventWriter,
) -> sqlx::Result<Vec<OutboxRow>> {
    for row in &mut rows {
        let newer = row
            .schema_version()
            .is_some_and(|v| v > writer.version().get());
        let unsigned = writer.key_id().is_some_and(|key| row.key_id() != Some(key));
        let batch_signed = writer.key_id().is_some()
            && writer.scope() == SignatureScope::Entry
            && row.field(events::fields::SIGNATURE_PROOF).is_some();
        if !newer && !unsigned && !batch_signed {
            continue;
        }
        match row.envelope() {
            Ok(envelope) => {
                let version = row
                    .schema_version()
                    .and_then(|v| events::SchemaVersion::try_from(v).ok())
                    .map_or(writer.version(), |v| v.min(writer.version()));
                row.fields = super::flatten(writer.with_version(version).fields(&envelope));
                sqlx::query("UPDATE outbox SET fields = $2 WHERE event_id = $1")
                    .bind(row.event_id)
                    .bind(&row.fields)
                    .execute(&mut *conn)
                    .await?;
            }
            // Written by a build newer than this one (rolled back since): it goes as it is.
            Err(e) => warn!(event_id = %row.event_id, error = %e,
                "an outbox row this build cannot rewrite; published as stored"),
        }
    }
    Ok(rows)
}

/// Publishes again `envelopes`, answers a service rebuilt from its own record of what it
/// did, with the `event_id`s they were first published under (SPEC §4.6, §4.9): so a
/// question asked again is answered whatever the outbox's retention. Where the outbox
/// still holds an event, that row goes out again as it was committed, byte for byte (or
/// rewritten where `writer` writes it differently now: `written_as`); where the
/// sweeper deleted it, the rebuilt one takes its place. An event already waiting
/// for the relay is not queued twice. Returns the rows queued, in the order given, for
/// the [`RelayQueue`](super::RelayQueue) once the transaction committed.
#[tracing::instrument(level = "debug", skip_all, fields(events = envelopes.len()))]
pub async fn enqueue_again(
    conn: &mut PgConnection,
    stream: &str,
    writer: &EventWriter,
    envelopes: &[Envelope],
) -> sqlx::Result<Vec<OutboxRow>> {
    let mut seen = HashSet::new();
    let unique: Vec<Envelope> = envelopes
        .iter()
        .filter(|e| seen.insert(e.event_id))
        .cloned()
        .collect();
    let rows = OutboxRow::new_all(stream, writer, &unique);
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    // `DO UPDATE` rather than `DO NOTHING`, so the stored row is returned as it stands.
    const STORE_AND_QUEUE: &str = concat!(
        "WITH stored AS (",
        crate::insert_outbox_rows!(),
        " ON CONFLICT (event_id) DO UPDATE SET rearmed_at = now()
         RETURNING id, event_id, stream, event_type, order_id, fields,
                   coalesce(partition_key, order_id::text) AS partition_key
     ), queued AS (
         INSERT INTO outbox_pending (event_id) SELECT event_id FROM stored
         ON CONFLICT DO NOTHING
         RETURNING event_id
     )
     SELECT s.event_id, s.stream, s.event_type, s.order_id, s.fields, s.partition_key
     FROM stored s JOIN queued USING (event_id)"
    );
    let queued = sqlx::query(STORE_AND_QUEUE)
        .bind_outbox_rows(&rows.iter().collect::<Vec<_>>())
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(OutboxRow::from_row)
        .collect::<sqlx::Result<Vec<_>>>()?;
    let mut queued = written_as(conn, queued, writer).await?;
    let position: HashMap<Uuid, usize> = rows
        .iter()
        .enumerate()
        .map(|(n, r)| (r.event_id, n))
        .collect();
    queued.sort_by_key(|row| position.get(&row.event_id).copied());
    Ok(queued)
}
