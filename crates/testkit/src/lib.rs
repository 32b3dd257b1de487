//! Test harness: real Postgres and real Redis, isolated per test.
//!
//! [`backends`](mod@backends) finds the servers, [`context`] gives each test its slice of them,
//! [`spawned`] starts services in-process, [`waiting`] waits with a deadline,
//! [`faults`] breaks things for one test only, [`ports`] gives its servers ports no
//! outgoing connection takes, [`cluster`] gives one test a Redis Cluster
//! to fail over, kill and reshard, and [`tls`] gives one test servers that speak TLS with
//! certificates it generates. [`browser`] drives a headless `chromium` for tests of a
//! page.
//!
//! - Backends come from `DATABASE_URL` and `REDIS_URL` when set (CI sets them); otherwise
//!   Postgres 16 and Redis 7.2 containers are started once per test process with
//!   testcontainers (needs Docker).
//! - Each [`TestContext`] has its own stream namespace and creates fresh databases on
//!   demand; dropping it drops those databases and deletes the namespace's keys.
//! - [`eventually`] waits for a condition with a deadline, never a fixed sleep, and fails
//!   with the last thing it saw.
//! - Traces are made as in production; logs stay silent unless `TEST_LOG=1`.

pub mod backends;
pub mod browser;
pub mod cluster;
pub mod context;
pub mod faults;
pub mod ports;
pub mod signing;
pub mod spawned;
pub mod tls;
pub mod waiting;

pub use backends::{Backends, backends, with_database};
pub use cluster::{ClusterOptions, RedisCluster};
pub use context::TestContext;
pub use faults::{FaultProxy, PrivateRedis, host_port};
pub use ports::free_port;
pub use spawned::Spawned;
pub use tls::{TestCertificates, TlsPostgres, TlsRedis};
pub use waiting::eventually;

/// The admin token test services are started with when a test needs the admin API.
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";
