//! The process around a service: its `main` (settings, telemetry, start, run until a
//! signal) and the signals that stop it.

use std::future::Future;
use std::process::ExitCode;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use super::RunningService;
use crate::settings::ServiceSettings;

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(e) => {
                    error!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the service");
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// The whole `main` of a service: parse settings (exit 2 on bad ones), set up logs and
/// traces, start, run until SIGINT/SIGTERM, shut down. Exit code 1 when it cannot start
/// or a part of it stopped on its own.
pub async fn run_main<S, F, Fut>(service: &'static str, start: F) -> ExitCode
where
    S: ServiceSettings,
    F: FnOnce(S, CancellationToken) -> Fut,
    Fut: Future<Output = anyhow::Result<RunningService>>,
{
    let settings: S = crate::settings::parse_or_exit(service);
    let _telemetry = crate::telemetry::init(&crate::telemetry::TelemetryConfig {
        service_name: service,
        log_format: settings.common().log_format,
        print_logs: true,
        summary_interval: Some(Duration::from_millis(
            settings.common().log_summary_interval_ms,
        )),
        otlp_endpoint: settings
            .common()
            .otel_exporter_otlp_endpoint
            .as_ref()
            .map(|e| e.expose().to_owned())
            .filter(|e| !e.is_empty()),
    });
    info!(?settings, "{service} starting");
    let shutdown = CancellationToken::new();
    let running = match start(settings, shutdown.clone()).await {
        Ok(running) => running,
        Err(e) => {
            error!("{service} cannot start: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let stop = shutdown.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        info!("shutdown requested");
        stop.cancel();
    });
    match running.stopped().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{service} failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}
