//! Retention: every store the runtime writes is bounded, and nothing unfinished is lost
//! to it (SPEC §4.6, §7).
//!
//! | store | bounded by | never removes |
//! |---|---|---|
//! | the consumed stream | `XTRIM MINID` to the oldest of: every group's oldest pending entry, every group's last-delivered id, now − `STREAM_RETENTION_MS` | an entry any group on the stream has not acknowledged, or not yet read |
//! | its dead-letter stream | age: `DLQ_RETENTION_HOURS` | — (dead letters are for inspection) |
//! | the group's consumers | `XGROUP DELCONSUMER` of names idle over `CONSUMER_IDLE_DELETE_MS` | a consumer with pending entries, or this one |
//! | `inbox` | age: `INBOX_RETENTION_HOURS` (longer than an event can be re-published) | — |
//! | `outbox` | age since published: `OUTBOX_RETENTION_HOURS` ([`outbox::sweep_published`]) | an unpublished row, or a question whose answer has not arrived |
//!
//! The stream decisions run as Lua scripts, so reading the groups' positions and trimming
//! are one atomic step: no group can read or fall behind in between. They need nothing
//! newer than Redis 7.0. Rows are deleted in small batches, so pruning never holds many
//! locks or one long transaction.
//!
//! [`outbox::sweep_published`]: crate::outbox::sweep_published

use std::time::Duration;

use crate::redis_conn::RedisConnection;
use sqlx::PgPool;

use crate::observability::{CONSUMERS_DELETED, ROWS_PRUNED, STREAM_ENTRIES_TRIMMED, STREAM_LENGTH};

/// Trims `KEYS[1]` below the oldest entry any of its groups still needs, and below now −
/// `ARGV[2]` ms, if the group `ARGV[1]` exists; returns how many entries went.
const TRIM_STREAM: &str = r#"
local ok, groups = pcall(redis.call, 'XINFO', 'GROUPS', KEYS[1])
if not ok then return 0 end
local min_id, min_ms, min_seq
local function consider(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  ms, seq = tonumber(ms), tonumber(seq)
  if min_id == nil or ms < min_ms or (ms == min_ms and seq < min_seq) then
    min_id, min_ms, min_seq = id, ms, seq
  end
end
local own = false
for _, group in ipairs(groups) do
  local info = {}
  for i = 1, #group, 2 do info[group[i]] = group[i + 1] end
  if info['name'] == ARGV[1] then own = true end
  consider(info['last-delivered-id'])
  if info['pending'] > 0 then
    consider(redis.call('XPENDING', KEYS[1], info['name'])[2])
  end
end
if not own then return 0 end
local now = redis.call('TIME')
local cutoff = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) - tonumber(ARGV[2])
if cutoff < 0 then cutoff = 0 end
consider(string.format('%.0f-0', cutoff))
return redis.call('XTRIM', KEYS[1], 'MINID', min_id)
"#;

/// Removes from group `ARGV[1]` of `KEYS[1]` every consumer idle more than `ARGV[2]` ms
/// with nothing pending, except `ARGV[3]`; returns how many.
const DELETE_IDLE_CONSUMERS: &str = r#"
local ok, consumers = pcall(redis.call, 'XINFO', 'CONSUMERS', KEYS[1], ARGV[1])
if not ok then return 0 end
local deleted = 0
for _, consumer in ipairs(consumers) do
  local info = {}
  for i = 1, #consumer, 2 do info[consumer[i]] = consumer[i + 1] end
  if info['name'] ~= ARGV[3] and info['pending'] == 0 and info['idle'] > tonumber(ARGV[2]) then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], info['name'])
    deleted = deleted + 1
  end
end
return deleted
"#;

/// Rows deleted per statement.
const PRUNE_BATCH: i64 = 1000;

/// Trims `stream` (when `group` exists on it) to what its groups still need and what is
/// younger than `retention`. Returns how many entries were trimmed.
pub async fn trim_stream(
    redis: &RedisConnection,
    stream: &str,
    group: &str,
    retention: Duration,
) -> redis::RedisResult<u64> {
    let trimmed: u64 = redis::Script::new(TRIM_STREAM)
        .key(stream)
        .arg(group)
        .arg(retention.as_millis() as u64)
        .invoke_async(&mut redis.clone())
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
    let deleted: u64 = redis::Script::new(DELETE_IDLE_CONSUMERS)
        .key(stream)
        .arg(group)
        .arg(idle.as_millis() as u64)
        .arg(keep)
        .invoke_async(&mut redis.clone())
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
