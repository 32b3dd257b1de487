//! Retention: every store the runtime writes is bounded, and nothing unfinished is lost
//! to it (SPEC §4.6, §7).
//!
//! | store | bounded by | never removes |
//! |---|---|---|
//! | the streams it publishes | by their producer: `XTRIM MINID` to the oldest of: every group's oldest pending entry, every group's last-delivered id, now − `STREAM_RETENTION_MS`; nothing while the stream has no group | an entry any group on the stream has not acknowledged, or not yet read |
//! | its dead-letter stream | age: `DLQ_RETENTION_HOURS` | — (dead letters are for inspection) |
//! | the group's consumers | `XGROUP DELCONSUMER` of names idle over `CONSUMER_IDLE_DELETE_MS` | a consumer with pending entries, or this one |
//! | `inbox` | age: `INBOX_RETENTION_HOURS` (longer than an event can be re-published) | — |
//! | `outbox` | age since published: `OUTBOX_RETENTION_HOURS` ([`outbox::sweep_published`]) | an unpublished row, or a question whose answer has not arrived |
//!
//! A stream is trimmed by the service that writes it, so that a consumer needs no right to
//! delete entries from a stream it only reads. The stream decisions run inside Redis
//! ([`crate::functions`]), so reading the groups' positions and trimming are one atomic
//! step: no group can read or fall behind in between. They need nothing newer than Redis
//! 7.0. Rows are deleted in small batches, so pruning never holds many
//! locks or one long transaction.
//!
//! [`outbox::sweep_published`]: crate::outbox::sweep_published

use std::time::Duration;

use crate::functions::{DELETE_IDLE_CONSUMERS, TRIM_STREAM};
use crate::redis_conn::RedisConnection;
use sqlx::PgPool;

use crate::observability::{CONSUMERS_DELETED, ROWS_PRUNED, STREAM_ENTRIES_TRIMMED, STREAM_LENGTH};

/// Rows deleted per statement.
const PRUNE_BATCH: i64 = 1000;

/// Trims `stream` to what its groups still need and what is younger than `retention`;
/// a stream without a group is left alone. Returns how many entries were trimmed.
pub async fn trim_stream(
    redis: &RedisConnection,
    stream: &str,
    retention: Duration,
) -> redis::RedisResult<u64> {
    let trimmed: u64 = TRIM_STREAM
        .on(&[stream])
        .arg(retention.as_millis() as u64)
        .invoke(&mut redis.clone())
        .await?;
    metrics::counter!(STREAM_ENTRIES_TRIMMED, "stream" => stream.to_owned()).increment(trimmed);
    Ok(trimmed)
}

/// Trims the dead letters in `key` older than `retention`. Returns how many.
pub async fn trim_dead_letters(
    redis: &RedisConnection,
    key: &str,
    retention: Duration,
) -> redis::RedisResult<u64> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let cutoff = now.saturating_sub(retention).as_millis();
    let trimmed: u64 = redis::cmd("XTRIM")
        .arg(key)
        .arg("MINID")
        .arg(format!("{cutoff}-0"))
        .query_async(&mut redis.clone())
        .await?;
    metrics::counter!(STREAM_ENTRIES_TRIMMED, "stream" => key.to_owned()).increment(trimmed);
    Ok(trimmed)
}

/// Removes the consumers of `group` on `stream` idle longer than `idle` with nothing
/// pending, except `keep` (the caller). Returns how many.
pub async fn delete_idle_consumers(
    redis: &RedisConnection,
    stream: &str,
    group: &str,
    idle: Duration,
    keep: &str,
) -> redis::RedisResult<u64> {
    let deleted: u64 = DELETE_IDLE_CONSUMERS
        .on(&[stream])
        .arg(group)
        .arg(idle.as_millis() as u64)
        .arg(keep)
        .invoke(&mut redis.clone())
        .await?;
    metrics::counter!(CONSUMERS_DELETED, "stream" => stream.to_owned()).increment(deleted);
    Ok(deleted)
}

/// Sets the length gauge of each of `streams`.
pub async fn measure_streams(redis: &RedisConnection, streams: &[&str]) -> redis::RedisResult<()> {
    for stream in streams {
        let length: u64 = redis::cmd("XLEN")
            .arg(*stream)
            .query_async(&mut redis.clone())
            .await?;
        metrics::gauge!(STREAM_LENGTH, "stream" => (*stream).to_owned()).set(length as f64);
    }
    Ok(())
}

/// Deletes the inbox rows older than `retention`. Returns how many.
pub async fn prune_inbox(pool: &PgPool, retention: Duration) -> sqlx::Result<u64> {
    prune(
        pool,
        "inbox",
        "DELETE FROM inbox WHERE ctid = ANY(ARRAY(
             SELECT ctid FROM inbox WHERE received_at < now() - make_interval(secs => $1)
             LIMIT $2))",
        retention,
    )
    .await
}

/// Runs `statement` until it deletes fewer than a batch, and counts the rows under
/// `table`. The statement deletes at most `$2` rows older than `$1` seconds; it is the
/// caller's code, never built from input.
pub async fn prune(
    pool: &PgPool,
    table: &'static str,
    statement: &str,
    older_than: Duration,
) -> sqlx::Result<u64> {
    let mut deleted = 0;
    loop {
        let batch = sqlx::query(sqlx::AssertSqlSafe(statement))
            .bind(older_than.as_secs_f64())
            .bind(PRUNE_BATCH)
            .execute(pool)
            .await?
            .rows_affected();
        deleted += batch;
        if batch < PRUNE_BATCH as u64 {
            metrics::counter!(ROWS_PRUNED, "table" => table).increment(deleted);
            return Ok(deleted);
        }
    }
}
