//! Replicas of a service take turns reading new entries, so that a second replica does not
//! split the batches the first would have read whole.
//!
//! A batch costs the same few statements and one commit whatever its size, so how many
//! events a read returns decides what an event costs. With one consumer, a read takes
//! everything that arrived while the previous batch was being applied. With two that both
//! wait in `XREADGROUP ... BLOCK`, each new entry wakes one of them at once: batches of a
//! few events, several times the statements per event, on the same database.
//!
//! So the consumers of a group pass a turn around (a Redis key naming the holder, with an
//! expiry). Only the holder reads new entries. A short read means there is no backlog:
//! the holder keeps the turn until its batch is acked, and the next reader takes what
//! arrived meanwhile, as one consumer would. A full read (`COUNT` entries) means there is
//! a backlog: the holder passes the turn at once and the replicas apply batches side by
//! side. Passing the turn pushes a token on a wake-up list that waiting replicas block
//! on (`BLPOP`).
//!
//! The turn is only about batch sizes, never about correctness (the inbox and the row
//! locks are): a holder that died, or holds it longer than its expiry, only lets the
//! others read side by side for a while.

use std::time::Duration;

use tracing::warn;

use crate::functions::{PASS_TURN, TAKE_TURN};
use crate::redis_conn::RedisConnections;

/// How long the turn outlives a holder's blocking read: time to apply a short batch. A
/// holder that died delays the next read by at most `BLOCK` plus this.
const TURN_SLACK: Duration = Duration::from_secs(1);

/// The reading turn of one consumer in its group.
pub(super) struct ReadTurn {
    /// The turn: the holder's consumer name, with an expiry.
    key: String,
    /// Tokens pushed when the turn is passed, for waiting replicas to block on.
    wake: String,
    consumer: String,
    /// `BLOCK`: how long a read, and a wait for the turn, may block.
    block: Duration,
}

/// The turn, while this consumer holds it.
#[must_use = "a held turn is passed on with ReadTurn::pass"]
pub(super) struct Held(());

impl ReadTurn {
    pub(super) fn new(key: String, consumer: String, block: Duration) -> Self {
        Self {
            wake: format!("{key}:wake"),
            key,
            consumer,
            block,
        }
    }

    /// Takes the turn, waiting at most `BLOCK` for the holder to pass it. `None` if it
    /// was not passed in that time: the caller reads nothing this round.
    pub(super) async fn take(&self, redis: &RedisConnections) -> redis::RedisResult<Option<Held>> {
        if self.try_take(redis).await? {
            return Ok(Some(Held(())));
        }
        let _woken: Option<(String, String)> = redis::cmd("BLPOP")
            .arg(&self.wake)
            .arg(self.block.as_secs_f64())
            .query_async(&mut redis.reader.clone())
            .await?;
        Ok(self.try_take(redis).await?.then_some(Held(())))
    }

    async fn try_take(&self, redis: &RedisConnections) -> redis::RedisResult<bool> {
        TAKE_TURN
            .on(&[&self.key])
            .arg(&self.consumer)
            .arg(self.expiry())
            .invoke(&mut redis.commands.clone())
            .await
    }

    /// Passes the turn on. If that fails, the turn expires by itself.
    pub(super) async fn pass(&self, redis: &RedisConnections, held: Held) {
        let Held(()) = held;
        let passed: redis::RedisResult<()> = PASS_TURN
            .on(&[&self.key, &self.wake])
            .arg(&self.consumer)
            .arg(self.expiry())
            .invoke(&mut redis.commands.clone())
            .await;
        if let Err(e) = passed {
            warn!(key = %self.key, error = %e, "could not pass the reading turn; it expires by itself");
        }
    }

    /// Milliseconds the turn lasts unless passed.
    fn expiry(&self) -> u64 {
        (self.block + TURN_SLACK).as_millis() as u64
    }
}
