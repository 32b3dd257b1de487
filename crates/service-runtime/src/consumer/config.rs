//! What a consumer is set up with (its stream, group, limits and signature checks), and
//! what one batch did.

use std::time::Duration;

use events::VerifyingKeys;

use crate::signatures::SignatureMode;

/// Which stream a consumer reads, as whom, and how much at once.
#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    /// Logical stream name, e.g. `order-events`.
    pub stream: &'static str,
    /// The consumer group it reads as.
    pub group: &'static str,
    /// Unique within the group (SPEC §3.1).
    pub consumer: String,
    /// `COUNT` of each read.
    pub read_count: usize,
    /// `BLOCK` of each read; also bounds how long shutdown waits for the read.
    pub block: Duration,
    /// An entry delivered more often than this is dead-lettered instead of retried.
    pub max_deliveries: u64,
    /// Entries idle this long in another consumer's pending list are reclaimed.
    pub claim_min_idle: Duration,
    /// How many transactions (and connections) a batch is spread over at most.
    pub parallelism: usize,
    /// An entry larger than this (its fields' bytes) is dead-lettered by its id, never
    /// loaded into the service (SPEC §4.9).
    pub max_entry_bytes: usize,
    /// How long an event that loses to contention is retried in place, without spending
    /// a delivery: the longest another session can hold a lock
    /// ([`DatabaseBounds::longest_lock_hold`](crate::settings::DatabaseBounds::longest_lock_hold)).
    pub contention_budget: Duration,
    /// How long one batch transaction may take, as this process sees it, before it is
    /// abandoned as an outage: the server ends a session that stops answering, but a
    /// server that stops answering (a half-open connection) is noticed only by this.
    pub transaction_deadline: Duration,
}

/// Counts of what one batch did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BatchReport {
    /// Entries read.
    pub delivered: usize,
    /// Events whose effect committed now.
    pub applied: usize,
    /// Events already in the inbox: acked without a second effect.
    pub duplicates: usize,
    /// Unknown event types and entries deleted while pending: acked and skipped.
    pub skipped: usize,
    /// Copied to the dead-letter stream and acked.
    pub dead_lettered: usize,
    /// Of a newer schema version than this build reads: parked and acked.
    pub parked: usize,
    /// Not acked because of a transient failure: they stay pending.
    pub retry_later: usize,
}

/// What a consumer accepts as signed (SPEC §4.9): the producer's verifying keys, and what
/// becomes of an entry they do not verify ([`SignatureMode`]).
#[derive(Debug, Clone)]
pub struct Verification {
    /// What becomes of an entry the keys do not verify.
    pub mode: SignatureMode,
    /// The producers' verifying keys.
    pub keys: VerifyingKeys,
}

impl Verification {
    /// Nothing verified.
    pub fn off() -> Self {
        Self {
            mode: SignatureMode::Off,
            keys: VerifyingKeys::default(),
        }
    }
}
