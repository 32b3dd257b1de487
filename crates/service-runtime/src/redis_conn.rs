//! Redis connections: one for blocking reads, one for everything else.
//!
//! redis-rs gives every command a response timeout, which would cut a
//! `XREADGROUP ... BLOCK` short and leave the connection stuck behind the still-blocked
//! read (CRATES.md trap 1). So blocking reads get their own connection with a timeout
//! longer than `BLOCK`, and `XACK`/`XADD`/`XGROUP` go over a second one. Both are
//! [`ConnectionManager`]s: they reconnect by themselves after Redis restarts.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

/// How long an ordinary command may take before it counts as failed.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);
/// Extra time a blocking read gets beyond its own `BLOCK`.
const BLOCK_GRACE: Duration = Duration::from_secs(5);

/// The two connections a service uses.
#[derive(Clone)]
pub struct RedisConnections {
    /// For short commands: `XADD`, `XACK`, `XGROUP`, `PING`.
    pub commands: ConnectionManager,
    /// Only for `XREADGROUP ... BLOCK`.
    pub reader: ConnectionManager,
}

impl RedisConnections {
    /// Connects both; `block` is the longest `BLOCK` the reader will send.
    pub async fn connect(url: &str, block: Duration) -> redis::RedisResult<Self> {
        let client = redis::Client::open(url)?;
        let config = |timeout| {
            ConnectionManagerConfig::new()
                .set_connection_timeout(Some(Duration::from_secs(5)))
                .set_response_timeout(Some(timeout))
                .set_max_delay(Duration::from_secs(2))
        };
        let commands = client
            .get_connection_manager_with_config(config(COMMAND_TIMEOUT))
            .await?;
        let reader = client
            .get_connection_manager_with_config(config(block + BLOCK_GRACE))
            .await?;
        Ok(Self { commands, reader })
    }
}
