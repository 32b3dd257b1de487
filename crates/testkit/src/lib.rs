//! Test harness: real Postgres and real Redis, isolated per test.
//!
//! - Backends come from `DATABASE_URL` and `REDIS_URL` when set (CI sets them); otherwise
//!   Postgres 16 and Redis 7.2 containers are started once per test process with
//!   testcontainers (needs Docker).
//! - Each [`TestContext`] has its own stream namespace and creates fresh databases on
//!   demand; dropping it drops those databases and deletes the namespace's keys.
//! - [`eventually`] waits for a condition with a deadline, never a fixed sleep, and fails
//!   with the last thing it saw.
//! - Traces are made as in production; logs stay silent unless `TEST_LOG=1`.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use service_runtime::service::RunningService;
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, Executor, PgConnection, PgPool};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// The admin token test services are started with when a test needs the admin API.
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

/// Where the shared servers are.
#[derive(Debug, Clone)]
pub struct Backends {
    /// A database on the server that may create others (`postgres`, say).
    pub database_url: String,
    pub redis_url: String,
}

static BACKENDS: OnceLock<Backends> = OnceLock::new();

/// The servers of this test process: from the environment, or containers.
pub fn backends() -> &'static Backends {
    BACKENDS.get_or_init(
        || match (std::env::var("DATABASE_URL"), std::env::var("REDIS_URL")) {
            (Ok(database_url), Ok(redis_url)) => Backends {
                database_url,
                redis_url,
            },
            _ => containers::start(),
        },
    )
}

/// Containers for machines without `DATABASE_URL`/`REDIS_URL`. Kept for the whole test
/// process (statics are never dropped).
mod containers {
    use std::sync::OnceLock;

    use testcontainers_modules::postgres::Postgres;
    use testcontainers_modules::redis::Redis;
    use testcontainers_modules::testcontainers::runners::SyncRunner;
    use testcontainers_modules::testcontainers::{Container, ImageExt};

    use super::Backends;

    static RUNNING: OnceLock<(Container<Postgres>, Container<Redis>)> = OnceLock::new();

    pub(super) fn start() -> Backends {
        // The sync runner has its own runtime: start it off any async test's runtime.
        let started = std::thread::spawn(|| {
            let postgres = Postgres::default().with_tag("16-alpine").start()?;
            let redis = Redis::default().with_tag("7.2-alpine").start()?;
            let backends = Backends {
                database_url: format!(
                    "postgres://postgres:postgres@{}:{}/postgres",
                    postgres.get_host()?,
                    postgres.get_host_port_ipv4(5432)?
                ),
                redis_url: format!(
                    "redis://{}:{}",
                    redis.get_host()?,
                    redis.get_host_port_ipv4(6379)?
                ),
            };
            let _ = RUNNING.set((postgres, redis));
            Ok::<_, testcontainers_modules::testcontainers::TestcontainersError>(backends)
        })
        .join();
        match started {
            Ok(Ok(backends)) => backends,
            Ok(Err(e)) => panic!(
                "DATABASE_URL and REDIS_URL are not set and containers could not start ({e}); \
                 set them to a Postgres and a Redis, or run with Docker available"
            ),
            Err(_) => panic!("starting test containers panicked"),
        }
    }
}

/// One test's slice of the backends.
pub struct TestContext {
    namespace: String,
    redis_url: String,
    databases: Mutex<Vec<String>>,
}

impl Default for TestContext {
    fn default() -> Self {
        Self::new()
    }
}

impl TestContext {
    /// A new context with a unique stream namespace on the shared Redis.
    pub fn new() -> Self {
        Self::with_redis(&backends().redis_url)
    }

    /// A new context on another Redis (a [`PrivateRedis`] that a test may wipe or kill).
    pub fn with_redis(redis_url: &str) -> Self {
        init_test_logging();
        Self {
            namespace: format!("test-{}", Uuid::new_v4().simple()),
            redis_url: redis_url.to_owned(),
            databases: Mutex::new(Vec::new()),
        }
    }

    /// The stream namespace of this test (`STREAM_NAMESPACE`).
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The Redis URL.
    pub fn redis_url(&self) -> &str {
        &self.redis_url
    }

    /// The key of a logical stream in this test's namespace.
    pub fn stream(&self, logical: &str) -> String {
        format!("{}:{logical}", self.namespace)
    }

    /// A Redis connection for the test's own commands.
    pub async fn redis(&self) -> redis::aio::MultiplexedConnection {
        let client = redis::Client::open(self.redis_url()).expect("REDIS_URL is a Redis URL");
        client
            .get_multiplexed_async_connection()
            .await
            .expect("Redis is reachable")
    }

    /// `XADD`s raw fields to a logical stream of this test (a test may write anything,
    /// poison included). Returns the entry id.
    pub async fn xadd<V: AsRef<[u8]>>(&self, logical: &str, fields: &[(&str, V)]) -> String {
        let mut cmd = redis::cmd("XADD");
        cmd.arg(self.stream(logical)).arg("*");
        for (name, value) in fields {
            cmd.arg(*name).arg(value.as_ref());
        }
        cmd.query_async(&mut self.redis().await)
            .await
            .expect("XADD works")
    }

    /// Every entry of a logical stream: id and fields (values as lossy UTF-8).
    pub async fn entries(&self, logical: &str) -> Vec<(String, Vec<(String, String)>)> {
        type RawEntry = (String, Vec<(Vec<u8>, Vec<u8>)>);
        let raw: Vec<RawEntry> = redis::cmd("XRANGE")
            .arg(self.stream(logical))
            .arg("-")
            .arg("+")
            .query_async(&mut self.redis().await)
            .await
            .expect("XRANGE works");
        raw.into_iter()
            .map(|(id, fields)| {
                let fields = fields
                    .into_iter()
                    .map(|(k, v)| {
                        (
                            String::from_utf8_lossy(&k).into_owned(),
                            String::from_utf8_lossy(&v).into_owned(),
                        )
                    })
                    .collect();
                (id, fields)
            })
            .collect()
    }

    /// How many entries of a logical stream `group` has read but not acked, and how many
    /// it has not read yet (`XINFO GROUPS` pending and lag); `None` if there is no group.
    pub async fn group_backlog(&self, logical: &str, group: &str) -> Option<(u64, u64)> {
        let groups: Vec<std::collections::HashMap<String, redis::Value>> = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(self.stream(logical))
            .query_async(&mut self.redis().await)
            .await
            .unwrap_or_default();
        let found = groups.into_iter().find(
            |g| matches!(g.get("name"), Some(redis::Value::BulkString(n)) if n == group.as_bytes()),
        )?;
        let number = |key: &str| match found.get(key) {
            Some(redis::Value::Int(n)) => u64::try_from(*n).unwrap_or(0),
            _ => u64::MAX,
        };
        Some((number("pending"), number("lag")))
    }

    /// Waits until `group` has read and acked every entry of the logical stream.
    pub async fn drained(&self, logical: &str, group: &str) {
        eventually(
            &format!("{group} to finish {logical}"),
            Duration::from_secs(10),
            || async {
                match self.group_backlog(logical, group).await {
                    Some((0, 0)) => Ok(()),
                    other => Err(format!("(pending, lag) = {other:?}")),
                }
            },
        )
        .await;
    }

    /// Creates an empty database, dropped with the context, and returns its URL.
    pub async fn database(&self) -> String {
        let name = format!("test_{}", Uuid::new_v4().simple());
        let admin_url = &backends().database_url;
        let mut admin = PgConnection::connect(admin_url)
            .await
            .expect("Postgres is reachable");
        admin
            .execute(format!(r#"CREATE DATABASE "{name}""#).as_str().into_sql())
            .await
            .expect("can create a test database");
        self.databases
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(name.clone());
        with_database(admin_url, &name)
    }

    /// Arguments every service started by a test gets: free port, the test's database,
    /// Redis and namespace, small pools, short reads.
    pub fn service_args(&self, database_url: &str) -> Vec<String> {
        [
            "--http-addr",
            "127.0.0.1:0",
            "--database-url",
            database_url,
            "--redis-url",
            self.redis_url(),
            "--stream-namespace",
            &self.namespace,
            "--database-max-connections",
            "6",
            "--read-block-ms",
            "200",
            "--shutdown-timeout-ms",
            "5000",
        ]
        .map(str::to_owned)
        .to_vec()
    }
}

impl TestContext {
    /// Starts a service in-process on a fresh database, the way `main` does: settings
    /// parsed from [`service_args`](Self::service_args) plus `extra_args`, then `start`.
    pub async fn spawn<S, F, Fut>(&self, name: &str, extra_args: &[&str], start: F) -> Spawned
    where
        S: clap::Parser,
        F: FnOnce(S, CancellationToken) -> Fut,
        Fut: Future<Output = anyhow::Result<RunningService>>,
    {
        let database_url = self.database().await;
        self.spawn_on(name, &database_url, extra_args, start).await
    }

    /// Like [`spawn`](Self::spawn), on an existing database (a restart, or a replica).
    pub async fn spawn_on<S, F, Fut>(
        &self,
        name: &str,
        database_url: &str,
        extra_args: &[&str],
        start: F,
    ) -> Spawned
    where
        S: clap::Parser,
        F: FnOnce(S, CancellationToken) -> Fut,
        Fut: Future<Output = anyhow::Result<RunningService>>,
    {
        let args = std::iter::once(name.to_owned())
            .chain(self.service_args(database_url))
            .chain(extra_args.iter().map(|a| (*a).to_owned()));
        let settings =
            S::try_parse_from(args).unwrap_or_else(|e| panic!("test settings are invalid: {e}"));
        let shutdown = CancellationToken::new();
        let running = start(settings, shutdown.clone())
            .await
            .unwrap_or_else(|e| panic!("{name} did not start: {e:#}"));
        let pool = PgPoolOptions::new()
            .max_connections(2)
            .connect(database_url)
            .await
            .expect("the test database is reachable");
        Spawned {
            addr: running.addr(),
            database_url: database_url.to_owned(),
            pool,
            http: reqwest::Client::new(),
            shutdown,
            running: Some(running),
        }
    }
}

/// A service running in the test process.
pub struct Spawned {
    pub addr: SocketAddr,
    pub database_url: String,
    /// The test's own pool on the service's database, for checking what it wrote.
    pub pool: PgPool,
    pub http: reqwest::Client,
    shutdown: CancellationToken,
    running: Option<RunningService>,
}

impl Spawned {
    /// `http://addr{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// GETs `path` and returns the status and the JSON body (`null` if not JSON).
    pub async fn get_json(&self, path: &str) -> (u16, serde_json::Value) {
        let response = self
            .http
            .get(self.url(path))
            .send()
            .await
            .expect("the service answers");
        let status = response.status().as_u16();
        (
            status,
            response.json().await.unwrap_or(serde_json::Value::Null),
        )
    }

    /// Crashes the service: every task is aborted where it stands, nothing is flushed or
    /// acked, as with `kill -9` (connections close as the process's would).
    pub fn kill(mut self) {
        drop(self.running.take());
    }

    /// Shuts the service down as SIGTERM would and waits until it has stopped.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        match self.running.take() {
            Some(running) => running.stopped().await,
            None => Ok(()),
        }
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Builds a statement from a runtime string (test-only DDL with generated names).
trait IntoSql {
    fn into_sql(self) -> sqlx::AssertSqlSafe<String>;
}

impl IntoSql for &str {
    fn into_sql(self) -> sqlx::AssertSqlSafe<String> {
        sqlx::AssertSqlSafe(self.to_owned())
    }
}

impl Drop for TestContext {
    /// Drops the test's databases and deletes its keys. Runs on its own thread and
    /// runtime, since `Drop` cannot await.
    fn drop(&mut self) {
        let databases = std::mem::take(self.databases.get_mut().unwrap_or_else(|e| e.into_inner()));
        let pattern = format!("{}:*", self.namespace);
        let redis_url = self.redis_url.clone();
        let cleanup = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async move {
                if let Ok(mut admin) = PgConnection::connect(&backends().database_url).await {
                    for name in databases {
                        let drop = format!(r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#);
                        let _ = admin.execute(drop.as_str().into_sql()).await;
                    }
                }
                if let Ok(client) = redis::Client::open(redis_url.as_str())
                    && let Ok(mut redis) = client.get_multiplexed_async_connection().await
                {
                    let keys: Vec<String> = redis::cmd("KEYS")
                        .arg(&pattern)
                        .query_async(&mut redis)
                        .await
                        .unwrap_or_default();
                    if !keys.is_empty() {
                        let _: Result<(), _> =
                            redis::cmd("DEL").arg(&keys).query_async(&mut redis).await;
                    }
                }
            });
        });
        let _ = cleanup.join();
    }
}

/// `url` with its database name replaced by `name`.
pub fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let host_and_path = &base[scheme_end..];
    let host = host_and_path.split('/').next().unwrap_or_default();
    let mut out = format!("{}{host}/{name}", &base[..scheme_end]);
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    out
}

/// Polls `probe` every 20 ms until it returns `Ok`, for at most `timeout`; then panics
/// with `what` and the last `Err` it returned (what was seen instead).
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match probe().await {
            Ok(value) => return value,
            Err(seen) if tokio::time::Instant::now() >= deadline => {
                panic!("timed out after {timeout:?} waiting for {what}; last saw: {seen}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// Installs the services' telemetry once per test process: traces are made and
/// propagated as in production; log lines are printed only with `TEST_LOG=1`.
fn init_test_logging() {
    static TELEMETRY: OnceLock<service_runtime::telemetry::Telemetry> = OnceLock::new();
    TELEMETRY.get_or_init(|| {
        service_runtime::telemetry::init(&service_runtime::telemetry::TelemetryConfig {
            service_name: "tests",
            log_format: service_runtime::settings::LogFormat::Pretty,
            print_logs: std::env::var_os("TEST_LOG").is_some(),
            otlp_endpoint: None,
        })
    });
}

/// A free TCP port on 127.0.0.1 (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("a free port")
}

/// A Redis server of one test's own, for what must not touch the shared one: `FLUSHALL`,
/// restarts, outages (CRATES.md trap 8). No persistence: a restart comes back empty.
pub struct PrivateRedis {
    port: u16,
    server: Option<std::process::Child>,
}

impl PrivateRedis {
    /// Starts `redis-server` on a free port and waits until it answers.
    pub async fn start() -> Self {
        let mut redis = Self {
            port: free_port(),
            server: None,
        };
        redis.restart().await;
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server at once (`SIGKILL`): clients see their connections drop.
    pub fn kill(&mut self) {
        if let Some(mut server) = self.server.take() {
            let _ = server.kill();
            let _ = server.wait();
        }
    }

    /// Starts it again, empty, on the same port.
    pub async fn restart(&mut self) {
        self.kill();
        let server = std::process::Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("redis-server is installed");
        self.server = Some(server);
        let url = self.url();
        eventually(
            "the private Redis to answer",
            Duration::from_secs(10),
            || async {
                let client = redis::Client::open(url.as_str()).map_err(|e| e.to_string())?;
                let mut conn = client
                    .get_multiplexed_async_connection()
                    .await
                    .map_err(|e| e.to_string())?;
                redis::cmd("PING")
                    .query_async::<String>(&mut conn)
                    .await
                    .map_err(|e| e.to_string())
            },
        )
        .await;
    }

    /// `FLUSHALL`: every stream and group is gone, as after a restart without persistence.
    pub async fn flush_all(&self) {
        let client = redis::Client::open(self.url()).expect("valid URL");
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .expect("reachable");
        let _: () = redis::cmd("FLUSHALL")
            .query_async(&mut conn)
            .await
            .expect("FLUSHALL");
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A TCP proxy in front of a server, to cut one service off from it (an outage only that
/// service sees) and restore it. Cutting closes every open connection and refuses new
/// ones until restored.
pub struct FaultProxy {
    pub addr: SocketAddr,
    up: tokio::sync::watch::Sender<bool>,
    accepting: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    /// A proxy on a free port forwarding to `upstream` (`host:port`).
    pub async fn start(upstream: String) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binds");
        let addr = listener.local_addr().expect("has an address");
        let (up, _) = tokio::sync::watch::channel(true);
        let watch = up.clone();
        let accepting = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !*watch.borrow() {
                    continue;
                }
                let (mut cut, upstream) = (watch.subscribe(), upstream.clone());
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(&upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut.wait_for(|up| !*up) => {}
                    }
                });
            }
        });
        Self {
            addr,
            up,
            accepting,
        }
    }

    /// Drops every connection through the proxy and refuses new ones.
    pub fn cut(&self) {
        self.up.send_replace(false);
    }

    /// Lets connections through again.
    pub fn restore(&self) {
        self.up.send_replace(true);
    }

    /// `url` pointed at this proxy instead of its own host and port.
    pub fn url_through(&self, url: &str) -> String {
        let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(authority_end);
        let userinfo = authority.rfind('@').map_or("", |at| &authority[..=at]);
        format!("{scheme}://{userinfo}{}{path}", self.addr)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.cut();
        self.accepting.abort();
    }
}

/// The `host:port` of a URL (port defaulting to `default_port`).
pub fn host_port(url: &str, default_port: u16) -> String {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = &rest[..rest.find(['/', '?']).unwrap_or(rest.len())];
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    if host
        .rsplit_once(':')
        .is_some_and(|(_, port)| port.parse::<u16>().is_ok())
    {
        host.to_owned()
    } else {
        format!("{host}:{default_port}")
    }
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn finds_host_and_port() {
        assert_eq!(super::host_port("postgres://u:p@h:5433/db", 5432), "h:5433");
        assert_eq!(super::host_port("postgres://h/db", 5432), "h:5432");
        assert_eq!(
            super::host_port("redis://127.0.0.1:6379", 6379),
            "127.0.0.1:6379"
        );
    }

    #[test]
    fn replaces_the_database_name() {
        assert_eq!(
            with_database("postgres://u:p@h:5432/postgres", "x"),
            "postgres://u:p@h:5432/x"
        );
        assert_eq!(with_database("postgres://h", "x"), "postgres://h/x");
        assert_eq!(
            with_database("postgres://h/db?sslmode=disable", "x"),
            "postgres://h/x?sslmode=disable"
        );
    }
}
