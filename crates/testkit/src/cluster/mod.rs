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

use crate::ports::{cluster_port, free_port};
use crate::tls::TestCertificates;

mod changes;
mod topology;

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

/// A private Redis Cluster, stopped on drop.
pub struct RedisCluster {
    dir: PathBuf,
    nodes: Vec<Node>,
    /// The password every node asks for (`requirepass`), if any.
    password: Option<String>,
    /// With an ACL file: every node reads it, and the test connects as this user (with
    /// `password`), which the nodes also replicate as.
    acl: Option<(String, String)>,
    /// With TLS: the certificate, key and authority files every node uses.
    tls: Option<[String; 3]>,
}

/// How a test cluster is secured; the default is neither password nor TLS.
#[derive(Default)]
pub struct ClusterOptions<'a> {
    /// Every node asks for this password (`requirepass`, and `masterauth` for replication).
    pub password: Option<&'a str>,
    /// Every node reads its users from this ACL file (`--aclfile`); the test, the cluster's
    /// creation and replication use its user `.1` (allowed everything) with `password`.
    pub acl: Option<(&'a std::path::Path, &'a str)>,
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
            acl: options
                .acl
                .map(|(file, user)| (path(file), user.to_owned())),
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
            .args(cluster.acl.iter().flat_map(|(_, user)| ["--user", user]))
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
            .args(match (&self.acl, &self.password) {
                (Some((file, user)), Some(p)) => {
                    vec!["--aclfile", file, "--masteruser", user, "--masterauth", p]
                }
                (Some((file, _)), None) => vec!["--aclfile", file],
                (None, Some(p)) => vec!["--requirepass", p, "--masterauth", p],
                (None, None) => vec![],
            })
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

    /// `redis+cluster://` with three of the nodes as seeds, as the ACL user `name`.
    pub fn url_as(&self, name: &str, password: &str) -> String {
        self.url_without_password()
            .replacen("://", &format!("://{name}:{password}@"), 1)
    }

    /// The same URL without the password.
    pub fn url_without_password(&self) -> String {
        self.url().replace(&self.credentials(), "")
    }

    pub(super) fn credentials(&self) -> String {
        let user = self.acl.as_ref().map_or("", |(_, user)| user);
        self.password
            .as_ref()
            .map_or_else(String::new, |p| format!("{user}:{p}@"))
    }

    pub(super) fn node_url(&self, port: u16) -> String {
        format!("redis://{}127.0.0.1:{port}", self.credentials())
    }

    pub(super) fn is_live(&self, port: u16) -> bool {
        self.nodes
            .iter()
            .any(|n| n.port == port && n.server.is_some())
    }

    pub(super) fn live_port(&self) -> u16 {
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

    pub(super) async fn try_command<T: redis::FromRedisValue>(
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
