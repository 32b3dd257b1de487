//! order-service settings (SPEC §7): the common ones plus its own.

use std::net::SocketAddr;

use service_runtime::settings::CommonSettings;

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
    #[arg(long, env = "PENDING_REPUBLISH_AFTER_MS", default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(100..=86_400_000))]
    pub pending_republish_after_ms: u64,
    #[command(flatten)]
    pub common: CommonSettings,
}
