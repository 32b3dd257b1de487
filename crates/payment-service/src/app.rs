//! Wiring: payment-service is its routes plus the order-events handler on top of the
//! shared service shell. `main` and the tests both start it through [`start`].

use events::streams::{ORDER_EVENTS, PAYMENT_EVENTS, PAYMENT_SERVICE_GROUP};
use service_runtime::service::{self, Infrastructure, RunningService, ServiceParts, Subscription};
use tokio_util::sync::CancellationToken;

use crate::db::MIGRATOR;
use crate::http::{self, AppState};
use crate::order_events::OrderEvents;
use crate::settings::Settings;

/// Connects, migrates, and starts HTTP, the outbox relay and the `order-events`
/// consumer; they run until `shutdown` fires.
pub async fn start(
    settings: Settings,
    shutdown: CancellationToken,
) -> anyhow::Result<RunningService> {
    let infra = Infrastructure::connect(&settings.common, &MIGRATOR).await?;
    let state = AppState {
        pool: infra.pool.clone(),
        initial_credit_cents: settings.initial_credit_cents,
    };
    let parts = ServiceParts {
        name: "payment-service",
        description: "Charges customers' accounts for the orders of order-events, and refunds them.",
        http_addr: settings.http_addr,
        routes: http::router(state.clone()),
        admin_routes: http::admin_router(state),
        jobs: Vec::new(),
        migrator: &MIGRATOR,
        consumes: &[Subscription {
            stream: ORDER_EVENTS,
            group: PAYMENT_SERVICE_GROUP,
        }],
        publishes: &[PAYMENT_EVENTS],
        handler: OrderEvents {
            initial_credit_cents: settings.initial_credit_cents,
            writer: infra
                .signatures
                .writer(settings.common.write_schema_version),
        },
        awaiting_answer: None,
    };
    service::start(infra, &settings.common, parts, shutdown).await
}

/// The whole `main` of the `payment-service` binary: settings from the environment, run until
/// SIGINT or SIGTERM. Exit code 0 after a clean stop, 1 when it cannot start or fails,
/// 2 on bad settings.
pub async fn run() -> std::process::ExitCode {
    service::run_main::<Settings, _, _>("payment-service", start).await
}
