//! order-service settings (SPEC §7): the common ones plus its own.

use std::net::SocketAddr;

use service_runtime::settings::{CommonSettings, ServiceSettings};

/// Every setting of order-service; env vars or the matching flags.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "order-service",
    version,
    about = "Takes orders and follows their payment over Redis Streams"
)]
pub struct Settings {
    /// Address the HTTP API listens on.
    #[arg(long, env = "HTTP_ADDR", default_value = "0.0.0.0:8080")]
    pub http_addr: SocketAddr,
    /// An order still `PENDING` this long (ms) after its `OrderCreated` was published has
    /// it published again (same `event_id`): repairs a broker that lost it (SPEC §4.6).
    /// It is asked only once its last copy was delivered (never while that copy still
    /// waits in the stream), and each further time waits twice as long, with jitter.
    #[arg(long, env = "PENDING_REPUBLISH_AFTER_MS", default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(100..=86_400_000))]
    pub pending_republish_after_ms: u64,
    /// The longest wait (ms) between two repeats of one question.
    #[arg(long, env = "PENDING_REPUBLISH_MAX_MS", default_value_t = 600_000, value_parser = clap::value_parser!(u64).range(100..=86_400_000))]
    pub pending_republish_max_ms: u64,
    /// How long (ms) after it is placed an order may be paid: `OrderCreated` carries the
    /// deadline (`pay_by`, schema version 2), payment-service charges nothing after it,
    /// and an order still `PENDING` then fails with `payment_expired` (its payment
    /// cancelled, so a charge that raced the deadline is refunded).
    #[arg(long, env = "PAYMENT_DEADLINE_MS", default_value_t = 900_000, value_parser = clap::value_parser!(u64).range(1_000..=604_800_000))]
    pub payment_deadline_ms: u64,
    /// `Idempotency-Key`s are kept this long (hours): a retry within it gets the first
    /// order back.
    #[arg(long, env = "IDEMPOTENCY_KEY_RETENTION_HOURS", default_value_t = 24, value_parser = clap::value_parser!(u64).range(1..=87_600))]
    pub idempotency_key_retention_hours: u64,
    #[command(flatten)]
    pub common: CommonSettings,
}

impl ServiceSettings for Settings {
    fn common(&self) -> &CommonSettings {
        &self.common
    }

    fn check(&self) -> Result<(), String> {
        self.common.check()?;
        let outbox_ms = self.common.outbox_retention_hours.saturating_mul(3_600_000);
        if self.pending_republish_after_ms >= outbox_ms {
            return Err(format!(
                "PENDING_REPUBLISH_AFTER_MS ({}) must be shorter than OUTBOX_RETENTION_HOURS \
                 ({} h): a question is asked again while its answer can still be re-published",
                self.pending_republish_after_ms, self.common.outbox_retention_hours
            ));
        }
        if self.pending_republish_max_ms < self.pending_republish_after_ms {
            return Err(format!(
                "PENDING_REPUBLISH_MAX_MS ({}) must be at least PENDING_REPUBLISH_AFTER_MS ({})",
                self.pending_republish_max_ms, self.pending_republish_after_ms
            ));
        }
        Ok(())
    }
}
