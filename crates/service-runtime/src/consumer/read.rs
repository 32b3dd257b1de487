//! Reading a batch, bounded whatever the stream holds (SPEC §4.9): `XREADGROUP` runs
//! inside Redis (`bounded_read` of [`crate::functions`]), which stops at a byte budget and
//! hands an entry over `MAX_ENTRY_BYTES` over as its id and size only; with nothing to read, the consumer
//! blocks on the stream's ticks ([`StreamKeys::ticks`](crate::keys::StreamKeys::ticks)),
//! never on the stream, whose next entry might be huge.

use super::{ConsumeError, Consumer, EventHandler, ReadFrom};
use crate::functions::BOUNDED_READ;
use crate::stream_reply::{RawEntry, parse_entries};

/// The one field an entry over `MAX_ENTRY_BYTES` is delivered with: its size in bytes.
pub(super) const OVERSIZED_FIELD: &str = "__oversized__";

/// A read brings at most about this many times `MAX_ENTRY_BYTES` (it stops once past, and
/// reads 16 entries at a time): 16 MiB with the default limit.
const READ_BUDGET_ENTRIES: usize = 48;

impl<H: EventHandler> Consumer<H> {
    /// Reads the next entries: this consumer's own pending ones, or new ones, waiting up to
    /// `BLOCK` for a producer's tick when there are none. Entries over `MAX_ENTRY_BYTES`
    /// come back as their id and size only ([`read_bounded`](Self::read_bounded)).
    pub(super) async fn read(&self, from: ReadFrom) -> Result<Vec<RawEntry>, ConsumeError> {
        let (tick, entries) = self.read_bounded(from).await?;
        if from == ReadFrom::OwnPending || !entries.is_empty() {
            return Ok(entries);
        }
        // Nothing new: block on the ticks (tiny entries the relay adds after publishing),
        // never on the stream, whose next entry might be huge; then read once more (an
        // entry a foreign writer added without a tick is found after at most `BLOCK`).
        let _woken: redis::Value = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(1)
            .arg("BLOCK")
            .arg(self.config.block.as_millis() as u64)
            .arg("STREAMS")
            .arg(&self.ticks_key)
            .arg(&tick)
            .query_async(&mut self.redis.reader.clone())
            .await?;
        Ok(self.read_bounded(from).await?.1)
    }

    /// One bounded `XREADGROUP` (SPEC §4.9), run inside Redis (`bounded_read` of [`crate::functions`]): at most
    /// `READ_COUNT` entries and about [`READ_BUDGET_ENTRIES`] × `MAX_ENTRY_BYTES` bytes; an
    /// entry over `MAX_ENTRY_BYTES` is delivered as its id with one field,
    /// [`OVERSIZED_FIELD`], its size, so the service never holds it. Also returns the id of
    /// the stream's last tick, to block on from there.
    async fn read_bounded(&self, from: ReadFrom) -> Result<(String, Vec<RawEntry>), ConsumeError> {
        let reply: redis::Value = BOUNDED_READ
            .on(&[&self.stream_key, &self.ticks_key])
            .arg(self.config.group)
            .arg(&self.config.consumer)
            .arg(self.config.read_count)
            .arg(match from {
                ReadFrom::New => ">",
                ReadFrom::OwnPending => "0",
            })
            .arg(self.config.max_entry_bytes)
            .arg(
                self.config
                    .max_entry_bytes
                    .saturating_mul(READ_BUDGET_ENTRIES),
            )
            .invoke(&mut self.redis.commands.clone())
            .await?;
        match reply {
            redis::Value::Array(mut parts) if parts.len() == 2 => {
                let entries = parse_entries(parts.pop().unwrap_or(redis::Value::Nil))
                    .map_err(ConsumeError::Reply)?;
                let tick = match parts.pop() {
                    Some(redis::Value::BulkString(id)) => String::from_utf8_lossy(&id).into_owned(),
                    other => {
                        return Err(ConsumeError::Reply(format!(
                            "unexpected tick id: {other:?}"
                        )));
                    }
                };
                Ok((tick, entries))
            }
            other => Err(ConsumeError::Reply(format!(
                "unexpected bounded read reply: {other:?}"
            ))),
        }
    }
}
