//! Connecting a service: its Postgres pool (migrated) and its Redis connections.

use std::time::Duration;

use anyhow::Context;
use sqlx::PgPool;
use sqlx::migrate::Migrator;
use sqlx::postgres::PgPoolOptions;

use crate::keys::StreamKeys;
use crate::outbox::RelayWaker;
use crate::redis_conn::RedisConnections;
use crate::settings::CommonSettings;

/// The connections a service runs on, made and migrated.
#[derive(Clone)]
pub struct Infrastructure {
    pub pool: PgPool,
    pub redis: RedisConnections,
    pub keys: StreamKeys,
    /// Wakes the service's relay: the code that commits outbox rows wakes it after the
    /// commit.
    pub relay_waker: RelayWaker,
}

impl Infrastructure {
    /// Connects to Postgres and Redis and applies `migrator`.
    pub async fn connect(
        settings: &CommonSettings,
        migrator: &'static Migrator,
    ) -> anyhow::Result<Self> {
        let pool = PgPoolOptions::new()
            .max_connections(settings.database_max_connections)
            .acquire_timeout(Duration::from_secs(3))
            .connect(settings.database_url.expose())
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
            relay_waker: RelayWaker::default(),
        })
    }
}
