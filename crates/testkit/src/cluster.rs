//! A Redis Cluster of one test's own: three masters and three replicas started from the
//! local `redis-server`, joined with `redis-cli --cluster create`, with a short
//! `cluster-node-timeout` so that a killed master's replica takes over within seconds.
//! The test can find the master of a key, fail it over gracefully, kill it, or move a
//! key's slot to another master. It may ask for a password, or speak TLS besides (on
//! clients' connections, its bus and replication): [`ClusterOptions`].

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use uuid::Uuid;

use crate::faults::free_port;
use crate::tls::TestCertificates;
use crate::waiting::eventually;

/// How long a node may be unreachable before the cluster counts it as failed (ms).
const NODE_TIMEOUT_MS: &str = "2000";
/// How long the cluster gets to settle after a change.
const SETTLE: Duration = Duration::from_secs(30);

/// One `redis-server` of the cluster.
struct Node {
    port: u16,
    /// Its TLS port, on a cluster started with certificates.
    tls_port: Option<u16>,
    server: Option<Child>,
}

/// A node's view of itself as `CLUSTER NODES` gives it.
#[derive(Debug, Clone)]
struct NodeLine {
    id: String,
    port: u16,
    master: bool,
    /// The id of its master, if it is a replica.
    master_id: Option<String>,
    failed: bool,
    /// Slot ranges it serves (masters only).
    slots: Vec<(u16, u16)>,
}

/// A private Redis Cluster, stopped on drop.
pub struct RedisCluster {
    dir: PathBuf,
    nodes: Vec<Node>,
    /// The password every node asks for (`requirepass`), if any.
    password: Option<String>,
    /// With TLS: the certificate, key and authority files every node uses.
    tls: Option<[String; 3]>,
}

/// How a test cluster is secured; the default is neither password nor TLS.
#[derive(Default)]
pub struct ClusterOptions<'a> {
    /// Every node asks for this password (`requirepass`, and `masterauth` for replication).
    pub password: Option<&'a str>,
    /// Every node also listens for TLS with these certificates, and the cluster bus and
    /// replication use TLS; clients need not present a certificate.
    pub tls: Option<&'a TestCertificates>,
}

impl RedisCluster {
    /// Starts six nodes (three masters, three replicas) and waits until the cluster is ok.
    pub async fn start() -> Self {
        Self::start_with(ClusterOptions::default()).await
    }

    /// Like [`start`](Self::start), secured as `options` say.
    pub async fn start_with(options: ClusterOptions<'_>) -> Self {
        let dir = std::env::temp_dir().join(format!("redis-cluster-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        let path = |p: &std::path::Path| p.to_string_lossy().into_owned();
        let mut cluster = Self {
            dir,
            nodes: vec![],
            password: options.password.map(str::to_owned),
            tls: options
                .tls
                .map(|certs| [path(&certs.cert), path(&certs.key), path(&certs.ca)]),
        };
        for _ in 0..6 {
            let port = cluster_port();
            let tls_port = cluster.tls.is_some().then(free_port);
            let server = cluster.spawn_node(port, tls_port);
            cluster.nodes.push(Node {
                port,
                tls_port,
                server: Some(server),
            });
        }
        for node in &cluster.nodes {
            crate::faults::answers(&cluster.node_url(node.port), "a cluster node").await;
        }
        let addresses: Vec<String> = cluster
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let created = Command::new("redis-cli")
            .args(
                cluster
                    .password
                    .iter()
                    .flat_map(|p| ["-a", p, "--no-auth-warning"]),
            )
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("redis-cli is installed");
        assert!(created.success(), "redis-cli --cluster create failed");
        cluster.settled().await;
        cluster
    }

    fn spawn_node(&self, port: u16, tls_port: Option<u16>) -> Child {
        let tls: Vec<String> = match (&self.tls, tls_port) {
            (Some([cert, key, ca]), Some(tls_port)) => [
                "--tls-port",
                &tls_port.to_string(),
                "--tls-cluster",
                "yes",
                "--tls-replication",
                "yes",
                "--tls-cert-file",
                cert,
                "--tls-key-file",
                key,
                "--tls-ca-cert-file",
                ca,
                "--tls-auth-clients",
                "no",
            ]
            .map(str::to_owned)
            .to_vec(),
            _ => vec![],
        };
        let config = self.dir.join(format!("nodes-{port}.conf"));
        Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--cluster-enabled", "yes"])
            .args(["--cluster-config-file", &config.to_string_lossy()])
            .args(["--cluster-node-timeout", NODE_TIMEOUT_MS])
            // A replica may take over however long its master has been gone.
            .args(["--cluster-replica-validity-factor", "0"])
            .args(["--save", "", "--appendonly", "no"])
            .args(["--dir", &self.dir.to_string_lossy()])
            .args(
                self.password
                    .iter()
                    .flat_map(|p| ["--requirepass", p, "--masterauth", p]),
            )
            .args(&tls)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed")
    }

    /// `redis+cluster://` with three of the nodes as seeds (and the password, if any).
    pub fn url(&self) -> String {
        let seeds: Vec<String> = self.nodes[..3]
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        format!("redis+cluster://{}{}", self.credentials(), seeds.join(","))
    }

    /// `rediss+cluster://` with the TLS ports of three of the nodes as seeds.
    pub fn tls_url(&self) -> String {
        let seeds: Vec<String> = self.nodes[..3]
            .iter()
            .filter_map(|n| n.tls_port)
            .map(|port| format!("127.0.0.1:{port}"))
            .collect();
        assert!(!seeds.is_empty(), "a cluster started without TLS");
        format!("rediss+cluster://{}{}", self.credentials(), seeds.join(","))
    }

    /// The TLS port of the node on `port`.
    pub fn tls_port(&self, port: u16) -> Option<u16> {
        self.nodes
            .iter()
            .find(|n| n.port == port)
            .and_then(|n| n.tls_port)
    }

    /// The same URL without the password.
    pub fn url_without_password(&self) -> String {
        self.url().replace(&self.credentials(), "")
    }

    fn credentials(&self) -> String {
        self.password
            .as_ref()
            .map_or_else(String::new, |p| format!(":{p}@"))
    }

    fn node_url(&self, port: u16) -> String {
        format!("redis://{}127.0.0.1:{port}", self.credentials())
    }

    /// The port of the master serving `key`'s slot now.
    pub async fn master_of(&self, key: &str) -> u16 {
        let slot = self.slot_of(key).await;
        let nodes = self.nodes_view().await;
        nodes
            .iter()
            .find(|n| n.master && !n.failed && serves(n, slot))
            .map(|n| n.port)
            .unwrap_or_else(|| panic!("no master serves slot {slot}: {nodes:?}"))
    }

    /// The port of a replica of the master on `master_port`.
    pub async fn replica_of(&self, master_port: u16) -> u16 {
        let nodes = self.nodes_view().await;
        let master = nodes
            .iter()
            .find(|n| n.port == master_port)
            .expect("a known master");
        nodes
            .iter()
            .find(|n| !n.failed && n.master_id.as_deref() == Some(&master.id))
            .map(|n| n.port)
            .unwrap_or_else(|| panic!("the master on {master_port} has no replica: {nodes:?}"))
    }

    /// `CLUSTER FAILOVER` on a replica of `key`'s master: the two swap roles with no
    /// write lost. Returns once the replica serves the slot.
    pub async fn fail_over(&self, key: &str) {
        let master = self.master_of(key).await;
        let replica = self.replica_of(master).await;
        let _: String = self.command(replica, &["CLUSTER", "FAILOVER"]).await;
        self.until_master_of(key, replica, "the replica to take over")
            .await;
        self.settled().await;
    }

    /// Kills `key`'s master with `SIGKILL` and waits until its replica has taken over
    /// (writes the master acknowledged but had not replicated are lost, as in
    /// production). Returns the killed node's port.
    pub async fn kill_master_of(&mut self, key: &str) -> u16 {
        let master = self.master_of(key).await;
        let replica = self.replica_of(master).await;
        if let Some(node) = self.nodes.iter_mut().find(|n| n.port == master)
            && let Some(mut server) = node.server.take()
        {
            let _ = server.kill();
            let _ = server.wait();
        }
        self.until_master_of(key, replica, "the replica to be promoted")
            .await;
        self.settled().await;
        master
    }

    /// Moves `key`'s slot, with its keys, to another master, the way `redis-cli --cluster
    /// reshard` does (`SETSLOT IMPORTING`/`MIGRATING`, `MIGRATE`, `SETSLOT NODE`): while
    /// it moves, clients are sent `ASK`, then `MOVED`. Returns the new master's port.
    pub async fn migrate_slot_of(&self, key: &str) -> u16 {
        let slot = self.slot_of(key).await.to_string();
        let nodes = self.nodes_view().await;
        let source_port = self.master_of(key).await;
        let source = nodes
            .iter()
            .find(|n| n.port == source_port)
            .expect("source");
        let target = nodes
            .iter()
            .find(|n| n.master && !n.failed && n.port != source_port)
            .expect("another master");
        let _: String = self
            .command(
                target.port,
                &["CLUSTER", "SETSLOT", &slot, "IMPORTING", &source.id],
            )
            .await;
        let _: String = self
            .command(
                source.port,
                &["CLUSTER", "SETSLOT", &slot, "MIGRATING", &target.id],
            )
            .await;
        loop {
            let keys: Vec<String> = self
                .command(source.port, &["CLUSTER", "GETKEYSINSLOT", &slot, "100"])
                .await;
            if keys.is_empty() {
                break;
            }
            let port = target.port.to_string();
            let mut migrate = vec!["MIGRATE", "127.0.0.1", &port, "", "0", "10000", "KEYS"];
            migrate.extend(keys.iter().map(String::as_str));
            let _: String = self.command(source.port, &migrate).await;
        }
        for node in nodes.iter().filter(|n| n.master && !n.failed) {
            let _: String = self
                .command(
                    node.port,
                    &["CLUSTER", "SETSLOT", &slot, "NODE", &target.id],
                )
                .await;
        }
        self.until_master_of(key, target.port, "the slot to move")
            .await;
        self.settled().await;
        target.port
    }

    /// Waits until every live node says `cluster_state:ok`, each live node is a master
    /// with slots or a replica, and all agree on the masters.
    async fn settled(&self) {
        eventually("the cluster to settle", SETTLE, || async {
            let mut views = vec![];
            for node in self.nodes.iter().filter(|n| n.server.is_some()) {
                let info: String = self
                    .try_command(node.port, &["CLUSTER", "INFO"])
                    .await
                    .map_err(|e| format!("{}: {e}", node.port))?;
                if !info.contains("cluster_state:ok") {
                    return Err(format!("{} is not ok yet", node.port));
                }
                let view = self.try_nodes_view(node.port).await?;
                if let Some(idle) = view
                    .iter()
                    .find(|n| n.master && n.slots.is_empty() && self.is_live(n.port))
                {
                    return Err(format!("{} is a master without slots yet", idle.port));
                }
                let mut masters: Vec<(u16, Vec<(u16, u16)>)> = view
                    .into_iter()
                    .filter(|n| n.master && !n.failed && !n.slots.is_empty())
                    .map(|n| (n.port, n.slots))
                    .collect();
                masters.sort();
                views.push(masters);
            }
            if views.windows(2).all(|pair| pair[0] == pair[1]) {
                Ok(())
            } else {
                Err(format!("the nodes disagree: {views:?}"))
            }
        })
        .await;
    }

    /// The hash slot of `key` (`CLUSTER KEYSLOT`).
    pub async fn slot_of(&self, key: &str) -> u16 {
        let slot: u16 = self
            .command(self.live_port(), &["CLUSTER", "KEYSLOT", key])
            .await;
        slot
    }

    /// Waits until `port` is the master of `key`'s slot.
    async fn until_master_of(&self, key: &str, port: u16, what: &str) {
        eventually(what, SETTLE, || async {
            match self.try_master_of(key).await {
                Some(master) if master == port => Ok(()),
                other => Err(format!("master is {other:?}")),
            }
        })
        .await;
    }

    async fn try_master_of(&self, key: &str) -> Option<u16> {
        let slot = self.slot_of(key).await;
        let nodes = self.try_nodes_view(self.live_port()).await.ok()?;
        nodes
            .iter()
            .find(|n| n.master && !n.failed && serves(n, slot))
            .map(|n| n.port)
    }

    async fn nodes_view(&self) -> Vec<NodeLine> {
        self.try_nodes_view(self.live_port())
            .await
            .expect("CLUSTER NODES")
    }

    async fn try_nodes_view(&self, port: u16) -> Result<Vec<NodeLine>, String> {
        let text: String = self
            .try_command(port, &["CLUSTER", "NODES"])
            .await
            .map_err(|e| e.to_string())?;
        Ok(text.lines().filter_map(parse_node_line).collect())
    }

    fn is_live(&self, port: u16) -> bool {
        self.nodes
            .iter()
            .any(|n| n.port == port && n.server.is_some())
    }

    fn live_port(&self) -> u16 {
        self.nodes
            .iter()
            .find(|n| n.server.is_some())
            .map(|n| n.port)
            .expect("a live node")
    }

    /// Runs a command on the node on `port` (over its plain port).
    pub async fn command<T: redis::FromRedisValue>(&self, port: u16, args: &[&str]) -> T {
        self.try_command(port, args)
            .await
            .unwrap_or_else(|e| panic!("{args:?} on {port}: {e}"))
    }

    async fn try_command<T: redis::FromRedisValue>(
        &self,
        port: u16,
        args: &[&str],
    ) -> redis::RedisResult<T> {
        let client = redis::Client::open(self.node_url(port))?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        let mut cmd = redis::cmd(args[0]);
        for arg in &args[1..] {
            cmd.arg(*arg);
        }
        cmd.query_async(&mut conn).await
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut server) = node.server.take() {
                let _ = server.kill();
                let _ = server.wait();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn serves(node: &NodeLine, slot: u16) -> bool {
    node.slots
        .iter()
        .any(|(from, to)| (*from..=*to).contains(&slot))
}

/// A free port whose cluster bus port (+10000) is free too (so below 55536).
fn cluster_port() -> u16 {
    loop {
        let port = free_port();
        if port < 55_536 && std::net::TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

/// One line of `CLUSTER NODES`:
/// `<id> <ip:port@bus> <flags> <master> <ping> <pong> <epoch> <link> <slot> ...`.
fn parse_node_line(line: &str) -> Option<NodeLine> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let address = fields.get(1)?;
    let port = address
        .split('@')
        .next()?
        .rsplit(':')
        .next()?
        .parse()
        .ok()?;
    let flags = fields.get(2)?;
    let slots = fields
        .iter()
        .skip(8)
        .filter(|s| !s.starts_with('['))
        .filter_map(|range| match range.split_once('-') {
            Some((from, to)) => Some((from.parse().ok()?, to.parse().ok()?)),
            None => range.parse().ok().map(|slot| (slot, slot)),
        })
        .collect();
    Some(NodeLine {
        id: (*fields.first()?).to_owned(),
        port,
        master: flags.contains("master"),
        master_id: Some(fields.get(3)?)
            .filter(|m| **m != "-")
            .map(|m| (*m).to_owned()),
        failed: flags.contains("fail") && !flags.contains("fail?"),
        slots,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_a_cluster_nodes_line() {
        let line =
            "07c3 127.0.0.1:30004@40004 myself,master - 0 0 4 connected 0-5460 6000 [7000->-abc]";
        let node = super::parse_node_line(line).expect("parses");
        assert_eq!((node.port, node.master, node.failed), (30004, true, false));
        assert_eq!(node.slots, [(0, 5460), (6000, 6000)]);
        assert_eq!(node.master_id, None);
        let replica = "9f1e 127.0.0.1:30005@40005 slave,fail 07c3 0 0 4 connected";
        let node = super::parse_node_line(replica).expect("parses");
        assert_eq!((node.master, node.failed), (false, true));
        assert_eq!(node.master_id.as_deref(), Some("07c3"));
    }
}
