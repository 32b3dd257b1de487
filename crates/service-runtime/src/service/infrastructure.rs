//! Connecting a service: its Postgres pool (migrated) and its Redis connections.

use std::time::Duration;

use anyhow::Context;
use sqlx::PgPool;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgSslMode};

use crate::keys::StreamKeys;
use crate::outbox::RelayQueue;
use crate::redis_conn::RedisConnections;
use crate::settings::CommonSettings;

/// The connections a service runs on, made and migrated.
#[derive(Clone)]
pub struct Infrastructure {
    pub pool: PgPool,
    pub redis: RedisConnections,
    pub keys: StreamKeys,
    /// The service's relay queue: the code that commits outbox rows hands them over after
    /// the commit.
    pub relay_queue: RelayQueue,
}

impl Infrastructure {
    /// Connects to Postgres and Redis and applies `migrator`.
    pub async fn connect(
        settings: &CommonSettings,
        migrator: &'static Migrator,
    ) -> anyhow::Result<Self> {
        let options = connect_options(settings.database_url.expose())
            .with_context(|| format!("invalid DATABASE_URL {}", settings.database_url))?;
        let pool = PgPoolOptions::new()
            .max_connections(settings.database_max_connections)
            .acquire_timeout(Duration::from_secs(3))
            .connect_with(options)
            .await
            .with_context(|| format!("cannot connect to Postgres at {}", settings.database_url))?;
        migrator
            .run(&pool)
            .await
            .context("cannot apply database migrations")?;
        let block = Duration::from_millis(settings.stream.read_block_ms);
        let redis = RedisConnections::connect(settings.redis_url.expose(), block)
            .await
            .with_context(|| format!("cannot connect to Redis at {}", settings.redis_url))?;
        Ok(Self {
            pool,
            redis,
            keys: StreamKeys::new(settings.stream.stream_namespace.clone()),
            relay_queue: RelayQueue::default(),
        })
    }
}

/// The connection options of `url`. TLS is used when asked for (`sslmode=require`,
/// `verify-ca` or `verify-full` in the URL, or `PGSSLMODE`); a URL that says nothing
/// connects in plain text, as before TLS support was built in, rather than libpq's
/// `prefer`, which encrypts without verifying the server (so protects from nothing an
/// attacker on the path cannot undo) and, measured here with sqlx 0.9, multiplied the
/// latency of every consumed batch several times over a loopback.
fn connect_options(url: &str) -> Result<PgConnectOptions, sqlx::Error> {
    let options: PgConnectOptions = url.parse()?;
    Ok(if postgres_tls_asked(url) {
        options
    } else {
        options.ssl_mode(PgSslMode::Disable)
    })
}

/// Whether a service connects to the Postgres of `url` over TLS: only when the URL or
/// `PGSSLMODE` names an `sslmode`.
pub fn postgres_tls_asked(url: &str) -> bool {
    let in_url = url
        .split_once('?')
        .is_some_and(|(_, query)| query.split('&').any(|p| p.starts_with("sslmode=")));
    in_url || std::env::var_os("PGSSLMODE").is_some()
}

#[cfg(test)]
mod tests {
    use sqlx::ConnectOptions;

    use super::*;

    #[test]
    fn tls_only_when_asked_for() {
        let plain = connect_options("postgres://u@db/x").expect("valid");
        assert!(plain.to_url_lossy().as_str().contains("sslmode=disable"));
        let password = connect_options("postgres://u:sslmode=x@db/x").expect("valid");
        assert!(password.to_url_lossy().as_str().contains("sslmode=disable"));
        let asked = connect_options("postgres://u@db/x?sslmode=verify-full").expect("valid");
        assert!(
            asked
                .to_url_lossy()
                .as_str()
                .contains("sslmode=verify-full")
        );
    }
}
