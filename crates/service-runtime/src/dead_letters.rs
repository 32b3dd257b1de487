//! Dead letters (SPEC §4.4): where an entry goes that can never be processed, and how an
//! operator gets it back.
//!
//! An entry that cannot be decoded, that its handler rejects, or that failed its last
//! allowed delivery is copied to its group's `{<stream>}:dlq:<group>` with why, and only then acked: one bad
//! entry never blocks the ones behind it, and nothing is lost. A dead letter holds the
//! runtime's own metadata, always the first [`fields::METADATA`] fields in that order,
//! followed by the original entry's fields, so `redis-cli XRANGE` shows the whole story.
//! The metadata is told apart by position, never by name: an entry that carries fields
//! named like it (forged, say) keeps them as its own.
//!
//! Replaying hands the original entry straight to the service's own consumer, as if it
//! had just been delivered (same `event_id`: an event applied meanwhile has no second
//! effect), and removes the dead letter once that is settled: applied, a duplicate,
//! skipped, or dead-lettered again with the new error. Nothing is written to any stream
//! but the dead letters, so a service needs no right to write the stream it consumes
//! (least-privilege Redis users), and nothing in a dead letter decides where it goes.

use std::collections::BTreeMap;

use crate::redis_conn::RedisConnection;
use serde::Serialize;

use crate::consumer::{ConsumeError, Replay};
use crate::keys::StreamKeys;
use crate::stream_reply::RawEntry;

/// Field names of a dead letter's own metadata, written before the original entry's
/// fields. Every one starts with [`PREFIX`](fields::PREFIX).
pub mod fields {
    /// What every metadata field name starts with; the original fields never do.
    pub const PREFIX: &str = "dlq:";
    /// Id of the entry in its source stream.
    pub const ORIGINAL_ID: &str = "dlq:original_id";
    /// Key of the source stream.
    pub const SOURCE_STREAM: &str = "dlq:stream";
    /// Consumer group that gave up on it.
    pub const GROUP: &str = "dlq:group";
    /// Consumer that dead-lettered it.
    pub const CONSUMER: &str = "dlq:consumer";
    /// How many times it had been delivered.
    pub const DELIVERY_COUNT: &str = "dlq:delivery_count";
    /// Why it could not be processed.
    pub const ERROR: &str = "dlq:error";
    /// The metadata fields, in the order every dead letter starts with.
    pub const METADATA: [&str; 6] = [
        ORIGINAL_ID,
        SOURCE_STREAM,
        GROUP,
        CONSUMER,
        DELIVERY_COUNT,
        ERROR,
    ];
}

/// The dead-letter stream of one consumed stream.
#[derive(Clone)]
pub struct DeadLetterStream {
    redis: RedisConnection,
    /// Key of the consumed stream, e.g. `ns:payment-events`: where entries come from.
    source: String,
    /// Key of the dead-letter stream, e.g. `{ns:payment-events}:dlq:order-service`.
    key: String,
}

/// Who gave up on an entry, and why.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Verdict<'a> {
    pub group: &'a str,
    pub consumer: &'a str,
    pub deliveries: u64,
    pub error: &'a str,
}

/// One dead letter as the admin API shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeadLetter {
    /// Its id in the dead-letter stream (what a replay names).
    pub id: String,
    /// The entry's id in the consumed stream.
    pub original_id: Option<String>,
    /// The key of the consumed stream.
    pub stream: Option<String>,
    /// The group that gave up on it.
    pub group: Option<String>,
    /// The consumer that gave up on it.
    pub consumer: Option<String>,
    /// How often it had been delivered.
    pub delivery_count: Option<u64>,
    /// Why it was given up on.
    pub error: Option<String>,
    /// The original entry's fields.
    pub fields: BTreeMap<String, String>,
}

/// A replayed dead letter, and what became of its entry.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Replayed {
    /// The dead letter's id (removed now).
    pub id: String,
    /// The entry's id in the consumed stream.
    pub original_id: String,
    /// `applied`, `duplicate` (applied before: no second effect), `skipped` (a type this
    /// version does not know) or `dead_lettered` (it failed again: a new dead letter
    /// holds the new error).
    pub outcome: &'static str,
}

/// Why a dead letter was not replayed.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// No dead letter has that id.
    #[error("no such dead letter")]
    NotFound,
    /// It lacks the metadata this runtime writes first.
    #[error("the entry is not a dead letter written by this service")]
    NotReplayable,
    /// The event could not be settled now; it is kept to be replayed later.
    #[error("the event could not be applied now (is the database down?); the dead letter is kept")]
    Unfinished,
    /// Redis failed.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// The consumer could not process it.
    #[error("{0}")]
    Consume(#[from] ConsumeError),
}

type RawFields = Vec<(Vec<u8>, Vec<u8>)>;

impl DeadLetterStream {
    /// The dead letters `group` wrote for the logical stream `consumed`.
    pub fn new(redis: RedisConnection, keys: &StreamKeys, consumed: &str, group: &str) -> Self {
        Self {
            redis,
            source: keys.stream(consumed),
            key: keys.dead_letter(consumed, group),
        }
    }

    /// Key of the dead-letter stream.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Copies `entry` here with `verdict`. The caller acks the original only once this
    /// returned `Ok`.
    pub(crate) async fn write(
        &self,
        entry: &RawEntry,
        verdict: Verdict<'_>,
    ) -> redis::RedisResult<()> {
        let mut cmd = redis::cmd("XADD");
        cmd.arg(&self.key)
            .arg("*")
            .arg(fields::ORIGINAL_ID)
            .arg(&entry.id)
            .arg(fields::SOURCE_STREAM)
            .arg(&self.source)
            .arg(fields::GROUP)
            .arg(verdict.group)
            .arg(fields::CONSUMER)
            .arg(verdict.consumer)
            .arg(fields::DELIVERY_COUNT)
            .arg(verdict.deliveries)
            .arg(fields::ERROR)
            .arg(verdict.error);
        for (name, value) in entry.fields.iter().flatten() {
            cmd.arg(name).arg(value.as_slice());
        }
        cmd.exec_async(&mut self.redis.clone()).await
    }

    /// Up to `limit` dead letters, oldest first.
    pub async fn list(&self, limit: usize) -> redis::RedisResult<Vec<DeadLetter>> {
        let entries: Vec<(String, RawFields)> = redis::cmd("XRANGE")
            .arg(&self.key)
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(limit)
            .query_async(&mut self.redis.clone())
            .await?;
        Ok(entries
            .into_iter()
            .map(|(id, raw)| DeadLetter::from_entry(id, raw))
            .collect())
    }

    /// Hands the original entry of dead letter `entry_id` to `consumer`, and removes the
    /// dead letter once the entry is settled (applied, a duplicate, skipped, or
    /// dead-lettered anew). An entry that could not be settled now keeps its dead letter.
    pub(crate) async fn replay(
        &self,
        entry_id: &str,
        consumer: &dyn Replay,
    ) -> Result<Replayed, ReplayError> {
        let mut redis = self.redis.clone();
        let found: Vec<(String, RawFields)> = redis::cmd("XRANGE")
            .arg(&self.key)
            .arg(entry_id)
            .arg(entry_id)
            .query_async(&mut redis)
            .await?;
        let (_, raw) = found.into_iter().next().ok_or(ReplayError::NotFound)?;
        let original_id = raw
            .first()
            .map(|(_, id)| String::from_utf8_lossy(id).into_owned());
        let (Some(original), Some(original_id)) = (original_fields(&raw), original_id) else {
            return Err(ReplayError::NotReplayable);
        };
        let fields = original
            .iter()
            .map(|(name, value)| (String::from_utf8_lossy(name).into_owned(), value.clone()))
            .collect();
        let entry = RawEntry {
            id: original_id.clone(),
            fields: Some(fields),
        };
        let report = consumer.replay(entry).await?;
        let outcome = match report {
            r if r.applied > 0 => "applied",
            r if r.duplicates > 0 => "duplicate",
            r if r.skipped > 0 => "skipped",
            r if r.dead_lettered > 0 => "dead_lettered",
            _ => return Err(ReplayError::Unfinished),
        };
        let _: u64 = redis::cmd("XDEL")
            .arg(&self.key)
            .arg(entry_id)
            .query_async(&mut redis)
            .await?;
        tracing::info!(entry_id, stream = %self.source, original_id, outcome, "dead letter replayed");
        Ok(Replayed {
            id: entry_id.to_owned(),
            original_id,
            outcome,
        })
    }
}

/// The original entry's fields of a dead letter: those after its metadata. `None` when
/// the entry does not start with the metadata fields in order.
fn original_fields(raw: &RawFields) -> Option<&[(Vec<u8>, Vec<u8>)]> {
    let starts_with_metadata = raw.len() >= fields::METADATA.len()
        && raw
            .iter()
            .zip(fields::METADATA)
            .all(|((name, _), expected)| name == expected.as_bytes());
    starts_with_metadata.then(|| &raw[fields::METADATA.len()..])
}

impl DeadLetter {
    fn from_entry(id: String, raw: RawFields) -> Self {
        let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
        let Some(original) = original_fields(&raw) else {
            // Not written by the runtime: shown as it is, all of it the entry's own.
            return Self {
                id,
                original_id: None,
                stream: None,
                group: None,
                consumer: None,
                delivery_count: None,
                error: None,
                fields: raw.iter().map(|(n, v)| (text(n), text(v))).collect(),
            };
        };
        let meta = |i: usize| Some(text(&raw[i].1));
        Self {
            id,
            original_id: meta(0),
            stream: meta(1),
            group: meta(2),
            consumer: meta(3),
            delivery_count: meta(4).and_then(|count| count.parse().ok()),
            error: meta(5),
            fields: original.iter().map(|(n, v)| (text(n), text(v))).collect(),
        }
    }
}
