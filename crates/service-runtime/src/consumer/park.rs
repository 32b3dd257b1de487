//! Events written by a newer build than this one reads (a `schema_version` above
//! [`SchemaVersion::NEWEST`], SPEC §3.4: a rolling upgrade under way). Such an event is not
//! applied, not counted as a failed delivery and never dead-lettered: it is parked in
//! `{<stream>}:parked:<group>` ([`StreamKeys::parked`](crate::keys::StreamKeys::parked)),
//! a hash by `event_id` holding the entry's id and fields, so however often it is
//! published again one copy waits; then the entry is acked.
//!
//! Every time a consumer comes round to reclaim, it applies the parked events of the
//! versions it reads, straight from the hash, as a batch of its own (the inbox absorbs
//! any it applied before), and deletes them from the hash once the batch is finished. So
//! once a replica of the newer build runs, what the older ones parked flows; nothing is
//! written back to the stream, so a consumer needs no right to write the stream it reads.
//! `events_parked_total`, `events_unparked_total` and the `events_parked` gauge show what
//! waits and what came through; each park is logged with its version.

use std::collections::HashMap;

use events::SchemaVersion;
use events::fields::SCHEMA_VERSION as SCHEMA_VERSION_FIELD;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use uuid::Uuid;

use super::batch::Outcome;
use super::{ConsumeError, Consumer, EventHandler};
use crate::database::Failure;
use crate::observability::{EVENTS_PARKED, EVENTS_PARKED_NOW, EVENTS_UNPARKED};
use crate::stream_reply::RawEntry;

/// The most parked events one round applies (one `HSCAN` step); the rest wait for the
/// next round.
const UNPARK_MAX: usize = 100;

/// A parked entry, as the hash holds it.
#[derive(Debug, Serialize, Deserialize)]
struct ParkedEntry {
    id: String,
    /// Name, value, name, value... (every field of an event is text, SPEC §3.2).
    fields: Vec<String>,
}

impl ParkedEntry {
    fn schema_version(&self) -> Option<u32> {
        self.fields
            .chunks(2)
            .find(|pair| pair[0] == SCHEMA_VERSION_FIELD)
            .and_then(|pair| pair.get(1)?.parse().ok())
    }

    fn into_raw(self) -> RawEntry {
        let mut pairs = self.fields.into_iter();
        let mut fields = Vec::new();
        while let (Some(name), Some(value)) = (pairs.next(), pairs.next()) {
            fields.push((name, value.into_bytes()));
        }
        RawEntry {
            id: self.id,
            fields: Some(fields),
        }
    }
}

impl<H: EventHandler> Consumer<H> {
    /// Parks `entry`, the event `event_id` of schema `version`, newer than this build
    /// reads. Only once it is parked is the entry acked.
    pub(super) async fn park(&self, entry: &RawEntry, version: u32, event_id: Uuid) -> Outcome {
        let fields: Option<Vec<String>> = entry
            .fields
            .iter()
            .flatten()
            .flat_map(|(name, value)| [Some(name.clone()), String::from_utf8(value.clone()).ok()])
            .collect();
        let Some(fields) = fields else {
            warn!(%event_id, "an event of a newer schema_version with a field that is not text; it stays pending");
            return Outcome::Unfinished(Failure::Other);
        };
        let parked = ParkedEntry {
            id: entry.id.clone(),
            fields,
        };
        let written: redis::RedisResult<()> = match serde_json::to_string(&parked) {
            Ok(value) => {
                redis::cmd("HSET")
                    .arg(&self.parked_key)
                    .arg(event_id.to_string())
                    .arg(value)
                    .exec_async(&mut self.redis.commands.clone())
                    .await
            }
            Err(e) => Err(redis::RedisError::from(std::io::Error::other(e))),
        };
        match written {
            Ok(()) => {
                warn!(%event_id, schema_version = version, reads = SchemaVersion::NEWEST.get(),
                    "an event of a newer schema_version than this build reads; parked until a replica that reads it runs");
                metrics::counter!(EVENTS_PARKED, "stream" => self.stream_key.clone(), "schema_version" => version.to_string())
                    .increment(1);
                Outcome::Parked
            }
            Err(e) => {
                warn!(%event_id, error = %e, "could not park the event; it stays pending");
                Outcome::Unfinished(Failure::Other)
            }
        }
    }

    /// Applies the parked events this build reads, as one batch, and deletes from the hash
    /// each one finished (applied, or dead-lettered if its handler refused it); one left to
    /// retry stays, for the next round. Returns how many were finished; measures what
    /// stays parked.
    pub async fn unpark(&self, shutdown: &CancellationToken) -> Result<usize, ConsumeError> {
        let mut redis = self.redis.commands.clone();
        let (_, found): (u64, HashMap<String, String>) = redis::cmd("HSCAN")
            .arg(&self.parked_key)
            .arg(0)
            .arg("COUNT")
            .arg(UNPARK_MAX)
            .query_async(&mut redis)
            .await?;
        let (mut event_ids, mut entries) = (Vec::new(), Vec::new());
        for (event_id, value) in found.into_iter().take(UNPARK_MAX) {
            let Ok(parked) = serde_json::from_str::<ParkedEntry>(&value) else {
                continue;
            };
            if parked
                .schema_version()
                .is_some_and(|v| v <= SchemaVersion::NEWEST.get())
            {
                event_ids.push(event_id);
                entries.push(parked.into_raw());
            }
        }
        let mut applied = 0;
        if !entries.is_empty() {
            let (_, finished) = self
                .process_each(&entries, super::ReadFrom::New, Some(shutdown))
                .await?;
            let done: Vec<&String> = event_ids
                .iter()
                .zip(finished)
                .filter_map(|(event_id, finished)| finished.then_some(event_id))
                .collect();
            if !done.is_empty() {
                redis::cmd("HDEL")
                    .arg(&self.parked_key)
                    .arg(&done)
                    .exec_async(&mut redis)
                    .await?;
                applied = done.len();
                metrics::counter!(EVENTS_UNPARKED, "stream" => self.stream_key.clone())
                    .increment(applied as u64);
                info!(stream = %self.stream_key, applied, "parked events this build reads were applied");
            }
        }
        let waiting: u64 = redis::cmd("HLEN")
            .arg(&self.parked_key)
            .query_async(&mut redis)
            .await?;
        metrics::gauge!(EVENTS_PARKED_NOW, "stream" => self.stream_key.clone()).set(waiting as f64);
        Ok(applied)
    }
}
