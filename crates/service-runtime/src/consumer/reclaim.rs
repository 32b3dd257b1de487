//! Entries stuck with a consumer that stopped answering (SPEC §4.3): any live consumer
//! moves entries idle longer than `CLAIM_MIN_IDLE_MS` to itself (`XAUTOCLAIM`) and
//! processes them from its own pending list, where each one's delivery count decides
//! whether it is retried or dead-lettered.

use std::collections::HashMap;
use std::time::Duration;

use tracing::{info, warn};

use super::{ConsumeError, Consumer, EventHandler};
use crate::observability::ENTRIES_RECLAIMED;
use crate::stream_reply::{RawEntry, parse_autoclaim_reply};

impl<H: EventHandler> Consumer<H> {
    /// Moves entries idle longer than `CLAIM_MIN_IDLE_MS` in any consumer of the group to
    /// this one (`XAUTOCLAIM ... JUSTID`), to be processed from its own pending list.
    /// Returns how many were claimed.
    pub async fn reclaim_stuck_entries(&self) -> Result<usize, ConsumeError> {
        /// Bounds one reclaim pass; the rest waits for the next.
        const MAX_ROUNDS: usize = 10;
        let mut cursor = "0-0".to_owned();
        let mut claimed = 0;
        for _ in 0..MAX_ROUNDS {
            let reply: redis::Value = redis::cmd("XAUTOCLAIM")
                .arg(&self.stream_key)
                .arg(self.config.group)
                .arg(&self.config.consumer)
                .arg(self.config.claim_min_idle.as_millis() as u64)
                .arg(&cursor)
                .arg("COUNT")
                .arg(self.config.read_count)
                .arg("JUSTID")
                .query_async(&mut self.redis.commands.clone())
                .await?;
            let (next, ids) = parse_autoclaim_reply(reply).map_err(ConsumeError::Reply)?;
            claimed += ids;
            if next == "0-0" {
                break;
            }
            cursor = next;
        }
        if claimed > 0 {
            metrics::counter!(ENTRIES_RECLAIMED, "stream" => self.stream_key.clone())
                .increment(claimed as u64);
            info!(stream = %self.stream_key, claimed, "reclaimed entries of a consumer that stopped answering");
        }
        Ok(claimed)
    }

    /// How often each of `entries` (this consumer's pending ones) has been delivered,
    /// counting the read that just returned them.
    pub(super) async fn delivery_counts(
        &self,
        entries: &[RawEntry],
    ) -> Result<HashMap<String, u64>, ConsumeError> {
        let (Some(first), Some(last)) = (entries.first(), entries.last()) else {
            return Ok(HashMap::new());
        };
        let pending: Vec<(String, String, u64, u64)> = redis::cmd("XPENDING")
            .arg(&self.stream_key)
            .arg(self.config.group)
            .arg(&first.id)
            .arg(&last.id)
            .arg(entries.len())
            .arg(&self.config.consumer)
            .query_async(&mut self.redis.commands.clone())
            .await?;
        Ok(pending
            .into_iter()
            .map(|(id, _, _, count)| (id, count))
            .collect())
    }

    /// Claims `ids` (this consumer's pending entries) again every third of
    /// `CLAIM_MIN_IDLE_MS`, without counting a delivery (`XCLAIM ... JUSTID`): their idle
    /// time starts over, so no replica takes them for a dead consumer's. Runs until
    /// dropped.
    pub(super) async fn keep_claimed_while_busy(&self, ids: &[&str]) -> std::convert::Infallible {
        let every = (self.config.claim_min_idle / 3).max(Duration::from_millis(10));
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        loop {
            ticks.tick().await;
            let claimed: Result<redis::Value, _> = redis::cmd("XCLAIM")
                .arg(&self.stream_key)
                .arg(self.config.group)
                .arg(&self.config.consumer)
                .arg(0)
                .arg(ids)
                .arg("JUSTID")
                .query_async(&mut self.redis.commands.clone())
                .await;
            if let Err(e) = claimed {
                warn!(error = %e, "could not keep the entries claimed; a replica may take them");
            }
        }
    }
}
