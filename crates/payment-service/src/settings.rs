//! payment-service settings (SPEC §7): the common ones plus its own.

use std::net::SocketAddr;

use service_runtime::settings::{CommonSettings, ServiceSettings};

/// Every setting of payment-service; env vars or the matching flags.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "payment-service",
    version,
    about = "Charges accounts for orders over Redis Streams"
)]
pub struct Settings {
    /// Address the HTTP API listens on.
    #[arg(long, env = "HTTP_ADDR", default_value = "0.0.0.0:8081")]
    pub http_addr: SocketAddr,
    /// Balance a customer's account opens with, in minor units.
    #[arg(long, env = "INITIAL_CREDIT_CENTS", default_value_t = 100_000, value_parser = clap::value_parser!(i64).range(0..=1_000_000_000_000))]
    pub initial_credit_cents: i64,
    #[command(flatten)]
    pub common: CommonSettings,
}

impl ServiceSettings for Settings {
    fn common(&self) -> &CommonSettings {
        &self.common
    }
}
