//! The service shell: connect, migrate, then run the HTTP server, the outbox relay and
//! the consumer side by side until shutdown (SPEC §4.7, §9).
//!
//! Shutdown is a [`CancellationToken`] passed in, never a global, so tests run several
//! services in one process. On shutdown the HTTP server stops accepting and finishes its
//! requests, the consumer finishes and acks its batch, the relay flushes; all within
//! `SHUTDOWN_TIMEOUT_MS`, after which what is left is abandoned (nothing is lost: it is
//! still pending in Redis or unpublished in the outbox).

mod infrastructure;
mod jobs;
mod process;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::extract::DefaultBodyLimit;
use axum::middleware;
use axum::routing::get;
use sqlx::migrate::Migrator;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};
use utoipa::openapi::OpenApi;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa_axum::router::OpenApiRouter;

pub use infrastructure::{Infrastructure, postgres_tls_asked};
pub(crate) use infrastructure::{
    TCP_KEEPALIVE_COUNT, TCP_KEEPALIVE_IDLE_S, TCP_KEEPALIVE_INTERVAL_S,
};
use jobs::Consumed;
pub use jobs::{PRUNE_INTERVAL, PeriodicJob};
pub use process::{run_main, shutdown_signal};

use crate::admin;
use crate::consumer::{Consumer, ConsumerConfig, EventHandler, Verification};
use crate::dead_letters::DeadLetterStream;
use crate::health::{self, Readiness};
use crate::http_server;
use crate::liveness::Liveness;
use crate::observability;
use crate::outbox::AwaitingAnswer;
use crate::problem::{self, BODY_LIMIT_BYTES};
use crate::relay::OutboxRelay;
use crate::request;
use crate::settings::CommonSettings;

/// How often the relay claims rows nobody handed over (the safety net only).
const RELAY_POLL_INTERVAL: Duration = Duration::from_secs(1);
/// How long a committed row is left to the process that wrote it before any relay claims
/// it: far above the time a handed-over row takes to be published and marked.
const RELAY_CLAIM_AFTER: Duration = Duration::from_secs(3);
/// Outbox rows per relay pass.
const RELAY_BATCH_SIZE: usize = 500;

/// A stream a service reads, as a consumer group of its own there: every group reads
/// every entry of the stream once, whatever other groups read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subscription {
    /// Logical stream name.
    pub stream: &'static str,
    /// The service's consumer group on it.
    pub group: &'static str,
}

/// What a service brings to the shell.
pub struct ServiceParts<H> {
    /// The service's name, the title of its OpenAPI document.
    pub name: &'static str,
    /// One sentence of what it does, the description of its OpenAPI document.
    pub description: &'static str,
    /// Where HTTP listens; port 0 picks a free one.
    pub http_addr: SocketAddr,
    /// The service's own routes with their OpenAPI operations, state applied.
    pub routes: OpenApiRouter,
    /// Routes that need the admin token (besides the dead-letter ones every service has).
    pub admin_routes: OpenApiRouter,
    /// The service's own periodic jobs (the outbox sweeper is added by the shell).
    pub jobs: Vec<PeriodicJob>,
    /// The migrations readiness checks for.
    pub migrator: &'static Migrator,
    /// The streams the service consumes: one consumer each, all handing their events to
    /// `handler`.
    pub consumes: &'static [Subscription],
    /// Logical streams the service publishes: it trims them (`retention`).
    pub publishes: &'static [&'static str],
    /// What it does with each event.
    pub handler: H,
    /// Which of its outbox rows still wait for an answer: kept by the sweeper.
    pub awaiting_answer: Option<AwaitingAnswer>,
}

/// Completes a service's OpenAPI document: title, version, the admin token scheme.
fn document(name: &str, description: &str, mut openapi: OpenApi) -> OpenApi {
    openapi.info.title = name.to_owned();
    openapi.info.version = env!("CARGO_PKG_VERSION").to_owned();
    openapi.info.description = Some(description.to_owned());
    openapi
        .components
        .get_or_insert_with(Default::default)
        .add_security_scheme(
            admin::SECURITY_SCHEME,
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    openapi
}

/// A started service.
pub struct RunningService {
    addr: SocketAddr,
    shutdown: CancellationToken,
    shutdown_timeout: Duration,
    tasks: JoinSet<&'static str>,
}

/// Binds the listener and starts the HTTP server, the relay and the consumer.
pub async fn start<H: EventHandler>(
    infra: Infrastructure,
    settings: &CommonSettings,
    parts: ServiceParts<H>,
    shutdown: CancellationToken,
) -> anyhow::Result<RunningService> {
    observability::recorder();
    infra
        .signatures
        .check_bound(parts.consumes.len())
        .map_err(anyhow::Error::msg)?;
    let listener = TcpListener::bind(parts.http_addr)
        .await
        .with_context(|| format!("cannot listen on {}", parts.http_addr))?;
    let addr = listener.local_addr()?;

    let readiness = Readiness {
        pool: infra.pool.clone(),
        redis: infra.redis.commands.clone(),
        migrator: parts.migrator,
        signatures: infra.signatures.mode,
    };
    let liveness = Liveness::new(settings.liveness_stall());
    let consumer_name = settings.stream.consumer_name();
    let handler = Arc::new(parts.handler);
    let consumers: Vec<(Subscription, Arc<Consumer<Arc<H>>>)> = parts
        .consumes
        .iter()
        .map(|&subscription| {
            let heartbeat = match parts.consumes {
                [_] => "consumer".to_owned(),
                _ => format!("consumer of {}", subscription.stream),
            };
            let config = ConsumerConfig {
                stream: subscription.stream,
                group: subscription.group,
                consumer: consumer_name.clone(),
                read_count: settings.stream.read_count as usize,
                block: Duration::from_millis(settings.stream.read_block_ms),
                max_deliveries: settings.stream.max_deliveries,
                claim_min_idle: Duration::from_millis(settings.stream.claim_min_idle_ms),
                parallelism: settings.stream.consumer_parallelism as usize,
                max_entry_bytes: settings.stream.max_entry_bytes as usize,
                contention_budget: settings.database_bounds.longest_lock_hold(),
                transaction_deadline: settings.database_bounds.transaction_deadline(),
            };
            let consumer = Consumer::new(
                infra.pool.clone(),
                infra.redis.clone(),
                &infra.keys,
                config,
                handler.clone(),
                infra.relay_queue.clone(),
            )
            .with_heartbeat(liveness.watch(heartbeat))
            .with_verification(Verification {
                mode: infra.signatures.mode,
                keys: infra.signatures.verifying().clone(),
            });
            (subscription, Arc::new(consumer))
        })
        .collect();

    let dead_letters = consumers
        .iter()
        .map(|(subscription, consumer)| admin::DeadLetters {
            stream: subscription.stream,
            dead_letters: DeadLetterStream::new(
                infra.redis.commands.clone(),
                &infra.keys,
                subscription.stream,
                subscription.group,
            ),
            consumer: consumer.clone(),
        })
        .collect();
    let (routes, openapi) = OpenApiRouter::new()
        .merge(parts.routes)
        .merge(admin::router(
            dead_letters,
            parts.admin_routes,
            settings.admin_token(),
        ))
        .merge(health::router(readiness, liveness.clone()))
        .merge(observability::router())
        .split_for_parts();
    let openapi = Arc::new(document(parts.name, parts.description, openapi));
    let app = routes
        .route(
            "/openapi.json",
            get(move || async move { axum::Json(openapi.as_ref().clone()) }),
        )
        .route("/asyncapi.json", get(asyncapi))
        .fallback(problem::route_not_found)
        .layer(DefaultBodyLimit::max(BODY_LIMIT_BYTES))
        .layer(middleware::from_fn_with_state(
            settings.request_timeout(),
            request::http_telemetry,
        ));

    let relay = OutboxRelay::new(
        infra.pool.clone(),
        infra.redis.commands.clone(),
        infra.keys.clone(),
        RELAY_BATCH_SIZE,
        (RELAY_POLL_INTERVAL, RELAY_CLAIM_AFTER),
        infra.relay_queue.clone(),
    )
    .with_heartbeat(liveness.watch("relay"));
    let mut tasks = JoinSet::new();
    let (stop, limits) = (shutdown.clone(), settings.http_limits());
    tasks.spawn(async move {
        http_server::serve(listener, app, limits, stop).await;
        "http server"
    });
    let stop = shutdown.clone();
    tasks.spawn(async move {
        relay.run(stop).await;
        "outbox relay"
    });
    let consumed = consumers
        .iter()
        .map(|(subscription, _)| Consumed {
            stream: infra.keys.stream(subscription.stream),
            dead_letters: infra
                .keys
                .dead_letter(subscription.stream, subscription.group),
            group: subscription.group,
            consumer: consumer_name.clone(),
        })
        .collect();
    for (_, consumer) in consumers {
        let stop = shutdown.clone();
        tasks.spawn(async move {
            consumer.run(stop).await;
            "consumer"
        });
    }
    let published = parts
        .publishes
        .iter()
        .map(|s| infra.keys.stream(s))
        .collect();
    let runtime_jobs =
        jobs::runtime_jobs(&infra, settings, consumed, published, parts.awaiting_answer);
    for job in parts.jobs.into_iter().chain(runtime_jobs) {
        let (stop, name) = (shutdown.clone(), job.name);
        tasks.spawn(async move {
            job.run_until(stop).await;
            name
        });
    }
    let streams: Vec<String> = parts
        .consumes
        .iter()
        .map(|s| infra.keys.stream(s.stream))
        .collect();
    info!(%addr, consumer = %consumer_name, ?streams, "service started");
    Ok(RunningService {
        addr,
        shutdown,
        shutdown_timeout: settings.shutdown_timeout(),
        tasks,
    })
}

impl RunningService {
    /// The address HTTP listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Waits until the service has stopped: after `shutdown` fires, or after one of its
    /// tasks ended on its own (then the others are told to stop too, and the result is an
    /// error so the process exits non-zero and gets restarted). Tasks still running
    /// `SHUTDOWN_TIMEOUT_MS` after shutdown began are abandoned.
    pub async fn stopped(mut self) -> anyhow::Result<()> {
        let mut failed = None;
        tokio::select! {
            biased;
            () = self.shutdown.cancelled() => {}
            ended = self.tasks.join_next() => {
                let task = ended.map(|r| r.unwrap_or("a task (panicked)"));
                if !self.shutdown.is_cancelled() {
                    error!(task, "stopped unexpectedly; shutting the service down");
                    failed = task;
                    self.shutdown.cancel();
                }
            }
        }
        let drained = tokio::time::timeout(self.shutdown_timeout, async {
            while let Some(ended) = self.tasks.join_next().await {
                info!(task = ended.unwrap_or("a task (panicked)"), "stopped");
            }
        })
        .await;
        if drained.is_err() {
            error!(timeout = ?self.shutdown_timeout, "shutdown timed out; abandoning unfinished work (it is retried elsewhere)");
            self.tasks.abort_all();
        }
        match failed {
            Some(task) => anyhow::bail!("{task} stopped unexpectedly"),
            None => Ok(()),
        }
    }
}

/// `GET /asyncapi.json`: the event contract both services share (SPEC §3.4), as
/// committed in the `events` crate.
async fn asyncapi() -> impl axum::response::IntoResponse {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        events::contract::ASYNCAPI_JSON,
    )
}
