//! Services started in the test process, the way `main` starts them, and handles to
//! query, crash or stop them.

use std::future::Future;
use std::net::SocketAddr;

use service_runtime::service::RunningService;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tokio_util::sync::CancellationToken;

use crate::context::TestContext;

impl TestContext {
    /// Starts a service in-process on a fresh database, the way `main` does: settings
    /// parsed from [`service_args`](Self::service_args), the service's event keys
    /// ([`signing_args`](crate::signing::signing_args)) and `extra_args` (a flag given
    /// there replaces the default one), then `start`.
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
        let mut defaults = self.service_args(database_url);
        defaults.extend(crate::signing::signing_args(name));
        let defaults = defaults
            .chunks(2)
            .filter(|flag_value| !extra_args.contains(&flag_value[0].as_str()))
            .flatten()
            .cloned();
        let args = std::iter::once(name.to_owned())
            .chain(defaults)
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
    /// The sum of the samples of counter `metric` on `GET /metrics` whose labels include
    /// every one of `labels` (each written `name="value"`).
    pub async fn metric(&self, metric: &str, labels: &[String]) -> u64 {
        let text = self
            .http
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("answers")
            .text()
            .await
            .expect("text");
        let prefix = format!("{metric}{{");
        text.lines()
            .filter(|l| l.starts_with(&prefix) && labels.iter().all(|label| l.contains(label)))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    }

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
