//! Redis connections: one for blocking reads, one for everything else, to one node or to
//! a Redis Cluster.
//!
//! redis-rs gives every command a response timeout, which would cut a
//! `XREADGROUP ... BLOCK` short and leave the connection stuck behind the still-blocked
//! read (CRATES.md trap 1). So blocking reads get their own connection with a timeout
//! longer than `BLOCK`, and `XACK`/`XADD`/`XGROUP` go over a second one. The same holds
//! for a cluster: its client multiplexes one connection per node, so the reader is a
//! second cluster client of its own.
//!
//! `redis://` and `rediss://` connect to one node with a [`ConnectionManager`], which
//! reconnects by itself after Redis restarts. `redis+cluster://h1:p1,h2:p2` (and
//! `rediss+cluster://`) connect to a cluster through those seed nodes with redis-rs's
//! cluster client, which routes each command to the master of its key's slot and follows
//! `MOVED`, `ASK` and failovers. Every command the runtime sends names one key, or keys
//! of one slot (a stream and its dead letters share a hash tag, see [`StreamKeys`](crate::StreamKeys)).

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::io::tcp::TcpSettings;
use redis::io::tcp::socket2::TcpKeepalive;
use redis::{Cmd, IntoConnectionInfo, Pipeline, RedisFuture, Value};

/// How long an ordinary command may take before it counts as failed.
pub(crate) const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);
/// Extra time a blocking read gets beyond its own `BLOCK`.
const BLOCK_GRACE: Duration = Duration::from_secs(5);
/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The URL schemes of a Redis Cluster, and the node scheme each stands for.
const CLUSTER_SCHEMES: [(&str, &str); 2] =
    [("redis+cluster", "redis"), ("rediss+cluster", "rediss")];

/// A connection to one Redis node or to a Redis Cluster; clones share it.
#[derive(Clone)]
pub enum RedisConnection {
    /// One Redis server.
    Node(ConnectionManager),
    /// A Redis Cluster.
    Cluster(ClusterConnection),
}

impl RedisConnection {
    /// Connects to the Redis (or cluster) at `url`; each command may take up to
    /// `response_timeout`.
    pub async fn connect(url: &str, response_timeout: Duration) -> redis::RedisResult<Self> {
        match cluster_nodes(url) {
            Some(nodes) => {
                let nodes = nodes.map_err(|e| invalid_url(&e))?;
                let client = ClusterClient::builder(nodes)
                    .tcp_settings(tcp_settings())
                    .connection_timeout(CONNECT_TIMEOUT)
                    .response_timeout(response_timeout)
                    .build()?;
                Ok(Self::Cluster(client.get_async_connection().await?))
            }
            None => {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(CONNECT_TIMEOUT))
                    .set_response_timeout(Some(response_timeout))
                    .set_max_delay(Duration::from_secs(2));
                let info = url.into_connection_info()?.set_tcp_settings(tcp_settings());
                let client = redis::Client::open(info)?;
                Ok(Self::Node(
                    client.get_connection_manager_with_config(config).await?,
                ))
            }
        }
    }

    /// A connection for short commands (`COMMAND_TIMEOUT`), as a test or a tool needs.
    pub async fn connect_for_commands(url: &str) -> redis::RedisResult<Self> {
        Self::connect(url, COMMAND_TIMEOUT).await
    }
}

impl ConnectionLike for RedisConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Node(node) => node.req_packed_command(cmd),
            Self::Cluster(cluster) => cluster.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Node(node) => node.req_packed_commands(pipeline, offset, count),
            Self::Cluster(cluster) => cluster.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Node(node) => node.get_db(),
            Self::Cluster(cluster) => cluster.get_db(),
        }
    }
}

/// TCP keepalive on every Redis socket (SPEC §4.9), so that a peer that vanished without
/// closing the connection (a host gone, a half-open path) is noticed by the socket even
/// where no command is waiting on it.
fn tcp_settings() -> TcpSettings {
    use crate::service::{TCP_KEEPALIVE_COUNT, TCP_KEEPALIVE_IDLE_S, TCP_KEEPALIVE_INTERVAL_S};
    let keepalive = TcpKeepalive::new()
        .with_time(Duration::from_secs(TCP_KEEPALIVE_IDLE_S))
        .with_interval(Duration::from_secs(TCP_KEEPALIVE_INTERVAL_S))
        .with_retries(TCP_KEEPALIVE_COUNT);
    TcpSettings::default().set_keepalive(keepalive)
}

/// The two connections a service uses.
#[derive(Clone)]
pub struct RedisConnections {
    /// For short commands: `XADD`, `XACK`, `XGROUP`, `PING`.
    pub commands: RedisConnection,
    /// Only for `XREADGROUP ... BLOCK`.
    pub reader: RedisConnection,
}

impl RedisConnections {
    /// Connects both; `block` is the longest `BLOCK` the reader will send.
    pub async fn connect(url: &str, block: Duration) -> redis::RedisResult<Self> {
        Ok(Self {
            commands: RedisConnection::connect(url, COMMAND_TIMEOUT).await?,
            reader: RedisConnection::connect(url, block + BLOCK_GRACE).await?,
        })
    }
}

fn invalid_url(reason: &str) -> redis::RedisError {
    redis::RedisError::from((
        redis::ErrorKind::InvalidClientConfig,
        "invalid Redis Cluster URL",
        reason.to_owned(),
    ))
}

/// The seed nodes of a cluster URL, each as a single-node URL with the same credentials,
/// path and query: `redis+cluster://u:p@h1:1,h2:2/0` gives `redis://u:p@h1:1/0` and
/// `redis://u:p@h2:2/0`. `None` if `url` is not a cluster URL; `Some(Err)` if it is one
/// without a usable node.
pub fn cluster_nodes(url: &str) -> Option<Result<Vec<String>, String>> {
    let (scheme, rest) = url.split_once("://")?;
    let (_, node_scheme) = CLUSTER_SCHEMES.iter().find(|(s, _)| *s == scheme)?;
    let (before_query, query) = match rest.split_once('?') {
        Some((before, query)) => (before, format!("?{query}")),
        None => (rest, String::new()),
    };
    let (user_info, hosts_and_path) = match before_query.rfind('@') {
        Some(at) => (&before_query[..=at], &before_query[at + 1..]),
        None => ("", before_query),
    };
    let (hosts, path) = match hosts_and_path.find('/') {
        Some(slash) => hosts_and_path.split_at(slash),
        None => (hosts_and_path, ""),
    };
    let nodes: Vec<String> = hosts
        .split(',')
        .map(str::trim)
        .filter(|host| !host.is_empty())
        .map(|host| format!("{node_scheme}://{user_info}{host}{path}{query}"))
        .collect();
    if nodes.is_empty() {
        return Some(Err(
            "names no node: expected redis+cluster://host:port,host:port".into(),
        ));
    }
    if let Some(bad) = nodes.iter().find(|n| redis::parse_redis_url(n).is_none()) {
        let host = bad.rsplit_once('@').map_or(bad.as_str(), |(_, host)| host);
        let host = host.split(['/', '?']).next().unwrap_or_default();
        return Some(Err(format!("a node is not a valid address: {host}")));
    }
    Some(Ok(nodes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_url_is_not_a_cluster() {
        assert!(cluster_nodes("redis://127.0.0.1:6379").is_none());
        assert!(cluster_nodes("rediss://u:p@h:6380/0").is_none());
    }

    #[test]
    fn each_seed_node_gets_the_credentials_path_and_query() {
        let nodes = cluster_nodes("redis+cluster://svc:pw@a:7000,b:7001/0?protocol=resp3")
            .expect("a cluster URL")
            .expect("valid");
        assert_eq!(
            nodes,
            [
                "redis://svc:pw@a:7000/0?protocol=resp3",
                "redis://svc:pw@b:7001/0?protocol=resp3"
            ]
        );
        let tls = cluster_nodes("rediss+cluster://c:7002")
            .expect("cluster")
            .expect("valid");
        assert_eq!(tls, ["rediss://c:7002"]);
    }

    #[test]
    fn a_cluster_url_without_a_usable_node_is_refused() {
        for url in [
            "redis+cluster://",
            "redis+cluster://,,",
            "redis+cluster://u:secret@a:x",
            "redis+cluster://a:7000,b:notaport",
        ] {
            let error = cluster_nodes(url).expect("a cluster URL").expect_err(url);
            assert!(!error.contains("secret"), "{error}");
        }
    }
}
