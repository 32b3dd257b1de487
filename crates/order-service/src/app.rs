//! Wiring: order-service is its routes plus the payment-events handler on top of the
//! shared service shell. `main` and the tests both start it through [`start`].

use events::streams::{ORDER_SERVICE_GROUP, PAYMENT_EVENTS};
use service_runtime::service::{self, Infrastructure, RunningService, ServiceParts};
use tokio_util::sync::CancellationToken;

use crate::http::{self, AppState};
use crate::payment_events::PaymentEvents;
use crate::{MIGRATOR, Settings};

/// Connects, migrates, and starts HTTP, the outbox relay and the `payment-events`
/// consumer; they run until `shutdown` fires.
pub async fn start(
    settings: Settings,
    shutdown: CancellationToken,
) -> anyhow::Result<RunningService> {
    let infra = Infrastructure::connect(&settings.common, &MIGRATOR).await?;
    let routes = http::router(AppState {
        pool: infra.pool.clone(),
    });
    let parts = ServiceParts {
        http_addr: settings.http_addr,
        routes,
        migrator: &MIGRATOR,
        consumes: PAYMENT_EVENTS,
        group: ORDER_SERVICE_GROUP,
        handler: PaymentEvents,
    };
    service::start(infra, &settings.common, parts, shutdown).await
}
