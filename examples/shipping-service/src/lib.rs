//! shipping-service: a third service on the runtime, and how to add your own.
//!
//! It joins the flow without changing order-service or payment-service: it reads
//! `payment-events` and `order-events` as a consumer group of its own on each
//! (`shipping-service`), so every entry is read by it and by the group already there,
//! once each, without being copied; the producers keep trimming only what every group has
//! acknowledged. It keeps one shipment per order: prepared when the order is paid
//! (`PaymentCompleted`), cancelled when the order is cancelled or its payment refunded
//! (`OrderCancelled`, `PaymentRefunded`). The runtime gives it the rest: the inbox (a
//! redelivered event has no second effect), reclaiming entries of a replica that died,
//! dead letters with the admin API, signature checks, health, metrics and retention.
//!
//! What a service writes is this: its settings, its tables (a migration), one
//! [`EventHandler`] and its routes, handed to [`service::start`].

use std::net::SocketAddr;

use axum::extract::State;
use events::streams::{ORDER_EVENTS, PAYMENT_EVENTS};
use events::{Envelope, Event};
use serde::Serialize;
use service_runtime::problem::{Json, Path, Problem};
use service_runtime::service::{self, Infrastructure, RunningService, ServiceParts, Subscription};
use service_runtime::settings::{CommonSettings, ServiceSettings};
use service_runtime::{EventHandler, HandleError, outbox::OutboxRow};
use sqlx::migrate::Migrator;
use sqlx::{PgConnection, PgPool};
use std::sync::LazyLock;
use tokio_util::sync::CancellationToken;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

/// The consumer group of shipping-service, on both streams it reads.
pub const GROUP: &str = "shipping-service";

/// The streams it reads, each as its own group.
const CONSUMES: &[Subscription] = &[
    Subscription {
        stream: PAYMENT_EVENTS,
        group: GROUP,
    },
    Subscription {
        stream: ORDER_EVENTS,
        group: GROUP,
    },
];

/// The runtime's tables (outbox, inbox) and the shipments.
pub static MIGRATOR: LazyLock<Migrator> =
    LazyLock::new(|| service_runtime::schema::with_runtime(&sqlx::migrate!("./migrations")));

/// Every setting of shipping-service: the common ones (SPEC §7) and where it listens.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "shipping-service", version, about = "Ships paid orders")]
pub struct Settings {
    /// Address the HTTP API listens on.
    #[arg(long, env = "HTTP_ADDR", default_value = "0.0.0.0:8082")]
    pub http_addr: SocketAddr,
    #[command(flatten)]
    pub common: CommonSettings,
}

impl ServiceSettings for Settings {
    fn common(&self) -> &CommonSettings {
        &self.common
    }
}

/// What the events do to shipments. Runs inside the consumer's transaction, after the
/// inbox recorded the events: each applies once, and commits with its inbox row.
#[derive(Debug, Clone, Copy)]
pub struct Shipping;

impl EventHandler for Shipping {
    async fn handle(
        &self,
        tx: &mut PgConnection,
        events: &[&Envelope],
    ) -> Result<Vec<OutboxRow>, HandleError> {
        for envelope in events {
            match &envelope.event {
                // Paid: prepare its shipment, unless one exists (a cancellation may
                // have been heard first; it stays cancelled).
                Event::PaymentCompleted(paid) => {
                    sqlx::query(
                        "INSERT INTO shipments (order_id, customer_id, payment_id, status)
                         VALUES ($1, $2, $3, 'PREPARING')
                         ON CONFLICT (order_id) DO NOTHING",
                    )
                    .bind(paid.order_id)
                    .bind(&paid.customer_id)
                    .bind(paid.payment_id)
                    .execute(&mut *tx)
                    .await?;
                }
                Event::OrderCancelled(cancelled) => {
                    cancel(tx, cancelled.order_id, &cancelled.customer_id).await?;
                }
                Event::PaymentRefunded(refunded) => {
                    cancel(tx, refunded.order_id, &refunded.customer_id).await?;
                }
                // Nothing to ship: not paid (yet), or never.
                Event::OrderCreated(_) | Event::PaymentFailed(_) | Event::PaymentCancelled(_) => {}
            }
        }
        // It publishes nothing.
        Ok(Vec::new())
    }
}

/// Cancels the order's shipment, or records that there must be none.
async fn cancel(tx: &mut PgConnection, order_id: Uuid, customer_id: &str) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO shipments (order_id, customer_id, status, cancelled_at)
         VALUES ($1, $2, 'CANCELLED', now())
         ON CONFLICT (order_id) DO UPDATE
         SET status = 'CANCELLED', cancelled_at = coalesce(shipments.cancelled_at, now())",
    )
    .bind(order_id)
    .bind(customer_id)
    .execute(tx)
    .await
    .map(drop)
}

/// A shipment as the API shows it.
#[derive(Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Shipment {
    pub order_id: Uuid,
    pub customer_id: String,
    pub payment_id: Option<Uuid>,
    /// `PREPARING` or `CANCELLED`.
    pub status: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: time::OffsetDateTime,
}

/// The shipment of an order.
#[utoipa::path(get, path = "/shipments/{order_id}", tag = "shipments",
    params(("order_id" = Uuid, Path, description = "The order's id")),
    responses(
        (status = 200, body = Shipment),
        (status = 404, body = Problem, content_type = "application/problem+json", description = "No shipment for this order (not paid, or not yet heard of)"),
    ))]
async fn get_shipment(
    State(pool): State<PgPool>,
    Path(order_id): Path<Uuid>,
) -> Result<Json<Shipment>, Problem> {
    sqlx::query_as(
        "SELECT order_id, customer_id, payment_id, status, created_at
         FROM shipments WHERE order_id = $1",
    )
    .bind(order_id)
    .fetch_optional(&pool)
    .await?
    .map(Json)
    .ok_or_else(|| Problem::not_found("shipment"))
}

/// Connects, migrates, and starts HTTP, the relay and a consumer per stream; they run
/// until `shutdown` fires.
pub async fn start(
    settings: Settings,
    shutdown: CancellationToken,
) -> anyhow::Result<RunningService> {
    let infra = Infrastructure::connect(&settings.common, &MIGRATOR).await?;
    let parts = ServiceParts {
        name: "shipping-service",
        description: "Ships every paid order; cancels the shipment of a cancelled one.",
        http_addr: settings.http_addr,
        routes: OpenApiRouter::new()
            .routes(routes!(get_shipment))
            .with_state(infra.pool.clone()),
        admin_routes: OpenApiRouter::new(),
        jobs: Vec::new(),
        migrator: &MIGRATOR,
        consumes: CONSUMES,
        publishes: &[],
        handler: Shipping,
        awaiting_answer: None,
    };
    service::start(infra, &settings.common, parts, shutdown).await
}

/// The whole `main`: settings from the environment, run until SIGINT or SIGTERM.
pub async fn run() -> std::process::ExitCode {
    service::run_main::<Settings, _, _>("shipping-service", start).await
}
