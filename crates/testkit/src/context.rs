//! One test's slice of the backends: its own stream namespace on Redis and fresh
//! databases on demand, dropped and deleted when the context is dropped.

use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use events::streams::{ORDER_SERVICE_GROUP, PAYMENT_EVENTS, PAYMENT_SERVICE_GROUP};
use service_runtime::{RedisConnection, StreamKeys};
use sqlx::{Connection, Executor, PgConnection};
use uuid::Uuid;

use crate::backends::{backends, with_database};
use crate::waiting::eventually;

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

    /// A new context on another Redis (a [`PrivateRedis`](crate::PrivateRedis) that a test may wipe or kill).
    pub fn with_redis(redis_url: &str) -> Self {
        init_test_logging();
        Self {
            namespace: format!("test-{}", Uuid::new_v4().simple()),
            redis_url: redis_url.to_owned(),
            databases: Mutex::new(Vec::new()),
        }
    }

    /// A context without a stream namespace (`STREAM_NAMESPACE` empty), for a private
    /// Redis whose configuration names the keys as a deployment does (an ACL file).
    pub fn unnamespaced(redis_url: &str) -> Self {
        let mut context = Self::with_redis(redis_url);
        context.namespace.clear();
        context
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
        StreamKeys::new(self.namespace.as_str()).stream(logical)
    }

    /// The key of the dead letters of the group that consumes a logical stream in these
    /// tests (payment-service on `order-events`, order-service on `payment-events`).
    pub fn dead_letter_stream(&self, logical: &str) -> String {
        self.dead_letter_stream_of(logical, usual_group(logical))
    }

    /// The key of the dead letters `group` wrote for a logical stream.
    pub fn dead_letter_stream_of(&self, logical: &str, group: &str) -> String {
        StreamKeys::new(self.namespace.as_str()).dead_letter(logical, group)
    }

    /// A Redis connection for the test's own commands (to one node or to a cluster, as
    /// the services connect).
    pub async fn redis(&self) -> RedisConnection {
        RedisConnection::connect_for_commands(self.redis_url())
            .await
            .expect("Redis is reachable")
    }

    /// `XADD`s fields to a logical stream of this test (a test may write anything, poison
    /// included), signed with the key of the stream's producer as that service signs
    /// (see [`sign_as_producer`](crate::signing::sign_as_producer)). Returns the entry id.
    pub async fn xadd<V: AsRef<[u8]>>(&self, logical: &str, fields: &[(&str, V)]) -> String {
        let mut signed: Vec<(String, Vec<u8>)> = fields
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.as_ref().to_vec()))
            .collect();
        crate::signing::sign_as_producer(logical, &mut signed);
        self.xadd_to(&self.stream(logical), &signed).await
    }

    /// `XADD`s `fields` to a logical stream as they are, unsigned: what anyone with
    /// write access to Redis, but without the producer's key, can write.
    pub async fn xadd_unsigned<K: AsRef<str>, V: AsRef<[u8]>>(
        &self,
        logical: &str,
        fields: &[(K, V)],
    ) -> String {
        self.xadd_to(&self.stream(logical), fields).await
    }

    /// `XADD`s fields to the dead letters of a logical stream, signed as [`xadd`](Self::xadd)
    /// signs them. Returns the entry id.
    pub async fn xadd_dead_letter<V: AsRef<[u8]>>(
        &self,
        logical: &str,
        fields: &[(&str, V)],
    ) -> String {
        let mut signed: Vec<(String, Vec<u8>)> = fields
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.as_ref().to_vec()))
            .collect();
        crate::signing::sign_as_producer(logical, &mut signed);
        self.xadd_to(&self.dead_letter_stream(logical), &signed)
            .await
    }

    async fn xadd_to<K: AsRef<str>, V: AsRef<[u8]>>(&self, key: &str, fields: &[(K, V)]) -> String {
        let mut cmd = redis::cmd("XADD");
        cmd.arg(key).arg("*");
        for (name, value) in fields {
            cmd.arg(name.as_ref()).arg(value.as_ref());
        }
        cmd.query_async(&mut self.redis().await)
            .await
            .expect("XADD works")
    }

    /// Every entry of a logical stream: id and fields (values as lossy UTF-8).
    pub async fn entries(&self, logical: &str) -> Vec<(String, Vec<(String, String)>)> {
        self.entries_at(&self.stream(logical)).await
    }

    /// Every dead letter of a logical stream's usual group ([`dead_letter_stream`](Self::dead_letter_stream)).
    pub async fn dead_letters(&self, logical: &str) -> Vec<(String, Vec<(String, String)>)> {
        self.entries_at(&self.dead_letter_stream(logical)).await
    }

    /// Every dead letter `group` wrote for a logical stream.
    pub async fn dead_letters_of(
        &self,
        logical: &str,
        group: &str,
    ) -> Vec<(String, Vec<(String, String)>)> {
        self.entries_at(&self.dead_letter_stream_of(logical, group))
            .await
    }

    async fn entries_at(&self, key: &str) -> Vec<(String, Vec<(String, String)>)> {
        type RawEntry = (String, Vec<(Vec<u8>, Vec<u8>)>);
        let raw: Vec<RawEntry> = redis::cmd("XRANGE")
            .arg(key)
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
        let groups = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(self.stream(logical))
            .query_async(&mut self.redis().await)
            .await
            .unwrap_or_default();
        backlog_of(groups, group)
    }

    /// How many entries of a logical stream `group` no longer needs (read and acked) are
    /// still in it: its length less the group's pending and lag, read in one `MULTI` so
    /// that a group reading in between cannot skew it. `None` if there is no group or
    /// its lag is unknown.
    pub async fn held_beyond(&self, logical: &str, group: &str) -> Option<u64> {
        let key = self.stream(logical);
        let (length, groups): (u64, Vec<GroupInfo>) = redis::pipe()
            .atomic()
            .cmd("XLEN")
            .arg(&key)
            .cmd("XINFO")
            .arg("GROUPS")
            .arg(&key)
            .query_async(&mut self.redis().await)
            .await
            .ok()?;
        match backlog_of(groups, group)? {
            (_, u64::MAX) => None,
            (pending, lag) => Some(length.saturating_sub(pending + lag)),
        }
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
    /// Redis and namespace, small pools, short reads: flag and value pairs.
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

/// The group that consumes `logical` in most tests.
fn usual_group(logical: &str) -> &'static str {
    match logical {
        PAYMENT_EVENTS => ORDER_SERVICE_GROUP,
        _ => PAYMENT_SERVICE_GROUP,
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
        // The streams (`ns:…`) and their dead letters (`{ns:…}:dlq:<group>`).
        let patterns = [
            format!("{}:*", self.namespace),
            format!("{{{}:*", self.namespace),
        ];
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
                if let Ok(mut redis) = RedisConnection::connect_for_commands(&redis_url).await {
                    for pattern in patterns {
                        let keys: Vec<String> = redis::cmd("KEYS")
                            .arg(&pattern)
                            .query_async(&mut redis)
                            .await
                            .unwrap_or_default();
                        for key in keys {
                            let _: Result<(), _> =
                                redis::cmd("DEL").arg(key).query_async(&mut redis).await;
                        }
                    }
                }
            });
        });
        let _ = cleanup.join();
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
            summary_interval: None,
        })
    });
}

/// One group as `XINFO GROUPS` describes it.
type GroupInfo = std::collections::HashMap<String, redis::Value>;

/// `group`'s pending and lag among `groups` (`u64::MAX` for a lag Redis cannot tell).
fn backlog_of(groups: Vec<GroupInfo>, group: &str) -> Option<(u64, u64)> {
    let found = groups.into_iter().find(
        |g| matches!(g.get("name"), Some(redis::Value::BulkString(n)) if n == group.as_bytes()),
    )?;
    let number = |key: &str| match found.get(key) {
        Some(redis::Value::Int(n)) => u64::try_from(*n).unwrap_or(0),
        _ => u64::MAX,
    };
    Some((number("pending"), number("lag")))
}
