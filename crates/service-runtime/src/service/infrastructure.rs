//! Connecting a service: its Postgres pool (migrated), its Redis connections, and its
//! event keys.

use std::time::Duration;

use anyhow::Context;
use sqlx::PgPool;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgSslMode};
use sqlx::{ConnectOptions, Connection};

use crate::keys::StreamKeys;
use crate::outbox::RelayQueue;
use crate::redis_conn::RedisConnections;
use crate::settings::CommonSettings;
use crate::signatures::{SignatureMode, Signatures};

/// The connections a service runs on, made and migrated.
#[derive(Clone)]
pub struct Infrastructure {
    /// The service's database, migrated.
    pub pool: PgPool,
    /// Its Redis connections (commands, and the blocking reads).
    pub redis: RedisConnections,
    /// Its stream keys, under `STREAM_NAMESPACE`.
    pub keys: StreamKeys,
    /// The service's relay queue: the code that commits outbox rows hands them over after
    /// the commit.
    pub relay_queue: RelayQueue,
    /// Its signing key and the verifying keys of the service it consumes from.
    pub signatures: Signatures,
}

impl Infrastructure {
    /// Connects to Postgres and Redis and applies `migrator`.
    pub async fn connect(
        settings: &CommonSettings,
        migrator: &'static Migrator,
    ) -> anyhow::Result<Self> {
        let signatures = settings.signatures().map_err(anyhow::Error::msg)?;
        match signatures.mode {
            SignatureMode::Off => tracing::warn!(
                "SIGNATURES=off: events are neither signed nor verified; anyone who can write \
                 to Redis can move money"
            ),
            mode => tracing::info!(
                signatures = mode.as_str(),
                signing_key = signatures.key_id().unwrap_or_default(),
                accepts = ?signatures.verifying().key_ids(),
                "events are signed; entries are verified"
            ),
        }
        let options = connect_options(settings.database_url.expose())
            .with_context(|| format!("invalid DATABASE_URL {}", settings.database_url))?;
        // Migrations run unbounded, on a connection of their own: building an index on a
        // large table may rightly take longer than any statement of the service.
        let mut migrating = options
            .clone()
            .application_name(&settings.stream.consumer_name())
            .connect()
            .await
            .with_context(|| format!("cannot connect to Postgres at {}", settings.database_url))?;
        migrator
            .run(&mut migrating)
            .await
            .context("cannot apply database migrations")?;
        let _ = migrating.close().await;
        let pool = PgPoolOptions::new()
            .max_connections(settings.database_max_connections)
            .acquire_timeout(Duration::from_secs(3))
            .connect_with(bounded(options, settings))
            .await
            .with_context(|| format!("cannot connect to Postgres at {}", settings.database_url))?;
        let block = Duration::from_millis(settings.stream.read_block_ms);
        let redis = RedisConnections::connect(settings.redis_url.expose(), block)
            .await
            .with_context(|| format!("cannot connect to Redis at {}", settings.redis_url))?;
        Ok(Self {
            pool,
            redis,
            keys: StreamKeys::new(settings.stream.stream_namespace.clone()),
            relay_queue: RelayQueue::default(),
            signatures,
        })
    }
}

/// Every session of the pool bounds its own statements, lock waits and idle transactions
/// (SPEC §4.9), and asks the server to probe its connection (server-side TCP keepalive:
/// sqlx sets none on its own sockets), so that a process that froze, or a peer that
/// vanished, holds no lock for longer than [`DatabaseBounds`](crate::settings::DatabaseBounds)
/// allow. `application_name` is the consumer name, so `pg_stat_activity` tells the
/// replicas apart.
fn bounded(options: PgConnectOptions, settings: &CommonSettings) -> PgConnectOptions {
    let bounds = &settings.database_bounds;
    let ms = |d: Duration| format!("{}ms", d.as_millis());
    options
        .application_name(&settings.stream.consumer_name())
        .options([
            ("statement_timeout", ms(bounds.statement_timeout())),
            ("lock_timeout", ms(bounds.lock_timeout())),
            (
                "idle_in_transaction_session_timeout",
                ms(bounds.idle_in_transaction_timeout()),
            ),
            ("tcp_keepalives_idle", TCP_KEEPALIVE_IDLE_S.to_string()),
            (
                "tcp_keepalives_interval",
                TCP_KEEPALIVE_INTERVAL_S.to_string(),
            ),
            ("tcp_keepalives_count", TCP_KEEPALIVE_COUNT.to_string()),
        ])
}

/// TCP keepalive of every connection (Postgres asks the server to probe; Redis probes
/// itself): a peer that vanished is noticed after idle + interval × count, 25 s.
pub(crate) const TCP_KEEPALIVE_IDLE_S: u64 = 10;
pub(crate) const TCP_KEEPALIVE_INTERVAL_S: u64 = 5;
pub(crate) const TCP_KEEPALIVE_COUNT: u32 = 3;

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
