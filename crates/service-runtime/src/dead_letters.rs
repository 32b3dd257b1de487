//! Dead letters (SPEC §4.4): where an entry goes that can never be processed, and how an
//! operator gets it back.
//!
//! An entry that cannot be decoded, that its handler rejects, or that failed its last
//! allowed delivery is copied to `<stream>:dlq` with why, and only then acked: one bad
//! entry never blocks the ones behind it, and nothing is lost. A dead letter holds the
//! runtime's own metadata fields (named in [`fields`], all under one prefix) followed by
//! the original entry's fields, so `redis-cli XRANGE` shows the whole story. Replaying
//! writes the original fields back as a new entry (same `event_id`: an event applied
//! meanwhile has no second effect) and removes the dead letter.

use std::collections::BTreeMap;

use redis::aio::ConnectionManager;
use serde::Serialize;

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
}

/// The dead-letter stream of one consumed stream.
#[derive(Clone)]
pub struct DeadLetterStream {
    redis: ConnectionManager,
    /// Key of the dead-letter stream, e.g. `ns:payment-events:dlq`.
    key: String,
}

/// Who gave up on an entry, and why.
#[derive(Debug, Clone, Copy)]
pub struct Verdict<'a> {
    /// Key of the stream the entry came from.
    pub source: &'a str,
    pub group: &'a str,
    pub consumer: &'a str,
    pub deliveries: u64,
    pub error: &'a str,
}

/// One dead letter as the admin API shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeadLetter {
    pub id: String,
    pub original_id: Option<String>,
    pub stream: Option<String>,
    pub group: Option<String>,
    pub consumer: Option<String>,
    pub delivery_count: Option<u64>,
    pub error: Option<String>,
    /// The original entry's fields.
    pub fields: BTreeMap<String, String>,
}

/// A replayed dead letter.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Replayed {
    pub id: String,
    pub stream: String,
    pub replayed_as: String,
}

/// Why a dead letter was not replayed.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("no such dead letter")]
    NotFound,
    #[error("the dead letter does not name its stream")]
    NotReplayable,
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
}

type RawFields = Vec<(Vec<u8>, Vec<u8>)>;

impl DeadLetterStream {
    /// The dead letters of the logical stream `consumed`.
    pub fn new(redis: ConnectionManager, keys: &StreamKeys, consumed: &str) -> Self {
        Self {
            redis,
            key: keys.dead_letter(consumed),
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
            .arg(verdict.source)
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

    /// Writes the original fields of dead letter `entry_id` back to its stream as a new
    /// entry, then removes the dead letter.
    pub async fn replay(&self, entry_id: &str) -> Result<Replayed, ReplayError> {
        let mut redis = self.redis.clone();
        let found: Vec<(String, RawFields)> = redis::cmd("XRANGE")
            .arg(&self.key)
            .arg(entry_id)
            .arg(entry_id)
            .query_async(&mut redis)
            .await?;
        let (_, raw) = found.into_iter().next().ok_or(ReplayError::NotFound)?;
        let mut source = None;
        let mut original = Vec::new();
        for (name, value) in raw {
            if name == fields::SOURCE_STREAM.as_bytes() {
                source = Some(String::from_utf8_lossy(&value).into_owned());
            } else if !name.starts_with(fields::PREFIX.as_bytes()) {
                original.push((name, value));
            }
        }
        let stream = source.ok_or(ReplayError::NotReplayable)?;
        let mut replay = redis::cmd("XADD");
        replay.arg(&stream).arg("*");
        for (name, value) in &original {
            replay.arg(name.as_slice()).arg(value.as_slice());
        }
        let replayed_as: String = replay.query_async(&mut redis).await?;
        let _: u64 = redis::cmd("XDEL")
            .arg(&self.key)
            .arg(entry_id)
            .query_async(&mut redis)
            .await?;
        tracing::info!(entry_id, %stream, replayed_as, "dead letter replayed");
        Ok(Replayed {
            id: entry_id.to_owned(),
            stream,
            replayed_as,
        })
    }
}

impl DeadLetter {
    fn from_entry(id: String, raw: RawFields) -> Self {
        let mut letter = Self {
            id,
            original_id: None,
            stream: None,
            group: None,
            consumer: None,
            delivery_count: None,
            error: None,
            fields: BTreeMap::new(),
        };
        for (name, value) in raw {
            let (name, value) = (
                String::from_utf8_lossy(&name).into_owned(),
                String::from_utf8_lossy(&value).into_owned(),
            );
            match name.as_str() {
                fields::ORIGINAL_ID => letter.original_id = Some(value),
                fields::SOURCE_STREAM => letter.stream = Some(value),
                fields::GROUP => letter.group = Some(value),
                fields::CONSUMER => letter.consumer = Some(value),
                fields::DELIVERY_COUNT => letter.delivery_count = value.parse().ok(),
                fields::ERROR => letter.error = Some(value),
                _ => {
                    letter.fields.insert(name, value);
                }
            }
        }
        letter
    }
}
