//! Wiring: order-service is its routes plus the payment-events handler on top of the
//! shared service shell. `main` and the tests both start it through [`start`].

use std::sync::Arc;
use std::time::Duration;

use events::streams::{ORDER_EVENTS, ORDER_SERVICE_GROUP, PAYMENT_EVENTS};

use service_runtime::service::{
    self, Infrastructure, PRUNE_INTERVAL, PeriodicJob, RunningService, ServiceParts, Subscription,
};
use tokio_util::sync::CancellationToken;
use utoipa_axum::router::OpenApiRouter;

use crate::db::{self, MIGRATOR};
use crate::http::{self, AppState};
use crate::orders;
use crate::payment_events::PaymentEvents;
use crate::placing::{Placing, Terms};
use crate::settings::Settings;

/// How often the expirer looks for orders past their payment deadline: an order expires
/// at most this late.
const EXPIRE_INTERVAL: Duration = Duration::from_secs(1);

/// Connects, migrates, and starts HTTP, the outbox relay, the `payment-events`
/// consumer, the reconciler and the expirer; they run until `shutdown` fires.
pub async fn start(
    settings: Settings,
    shutdown: CancellationToken,
) -> anyhow::Result<RunningService> {
    let infra = Infrastructure::connect(&settings.common, &MIGRATOR).await?;
    let writer = infra
        .signatures
        .writer(settings.common.write_schema_version);
    let terms = Terms {
        payment_deadline: Duration::from_millis(settings.payment_deadline_ms),
        writer: writer.clone(),
    };
    let routes = http::router(AppState {
        pool: infra.pool.clone(),
        relay: infra.relay_queue.clone(),
        placing: Placing::start(infra.pool.clone(), infra.relay_queue.clone(), terms),
        writer: writer.clone(),
    });
    let after = Duration::from_millis(settings.pending_republish_after_ms);
    let reconciler = Arc::new(orders::Reconciler::new(
        infra.pool.clone(),
        infra.redis.commands.clone(),
        infra.relay_queue.clone(),
        infra.keys.stream(ORDER_EVENTS),
        (
            after,
            Duration::from_millis(settings.pending_republish_max_ms),
        ),
        writer.clone(),
    ));
    let reconciler = PeriodicJob::new("reconciler", reconciler.round_interval(), move || {
        let reconciler = reconciler.clone();
        async move { reconciler.run_once().await }
    });
    let (pool, relay, expiring) = (
        infra.pool.clone(),
        infra.relay_queue.clone(),
        writer.clone(),
    );
    let expirer = PeriodicJob::new("expirer", EXPIRE_INTERVAL, move || {
        let (pool, relay, writer) = (pool.clone(), relay.clone(), expiring.clone());
        async move { orders::expire_unpaid(&pool, &relay, &writer).await }
    });
    let (pool, keys) = (
        infra.pool.clone(),
        Duration::from_secs(settings.idempotency_key_retention_hours * 3600),
    );
    let key_pruner = PeriodicJob::new("idempotency key pruner", PRUNE_INTERVAL, move || {
        let pool = pool.clone();
        async move { Ok(db::prune_idempotency_keys(&pool, keys).await?) }
    });
    let parts = ServiceParts {
        name: "order-service",
        description: "Takes orders over HTTP and follows each to its end through payment-events.",
        http_addr: settings.http_addr,
        routes,
        admin_routes: OpenApiRouter::new(),
        jobs: vec![reconciler, expirer, key_pruner],
        migrator: &MIGRATOR,
        consumes: &[Subscription {
            stream: PAYMENT_EVENTS,
            group: ORDER_SERVICE_GROUP,
        }],
        publishes: &[ORDER_EVENTS],
        handler: PaymentEvents { writer },
        awaiting_answer: Some(orders::AWAITING_ANSWER),
    };
    service::start(infra, &settings.common, parts, shutdown).await
}

/// The whole `main` of the `order-service` binary: settings from the environment, run until
/// SIGINT or SIGTERM. Exit code 0 after a clean stop, 1 when it cannot start or fails,
/// 2 on bad settings.
pub async fn run() -> std::process::ExitCode {
    service::run_main::<Settings, _, _>("order-service", start).await
}
