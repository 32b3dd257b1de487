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
    #[command(flatten)]
    pub common: CommonSettings,
}
