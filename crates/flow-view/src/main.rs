//! `flow-view`: serves the live view of the flow until SIGINT or SIGTERM (see the crate's
//! docs). Exit code 2 on bad settings, 1 when it cannot start.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use flow_view::{Settings, start};
use service_runtime::service::shutdown_signal;
use service_runtime::settings::LogFormat;
use service_runtime::telemetry::{TelemetryConfig, init};

#[tokio::main]
async fn main() -> ExitCode {
    let settings = match Settings::try_parse() {
        Ok(settings) => settings,
        Err(e) if e.use_stderr() => {
            let _ = e.print();
            return ExitCode::from(2);
        }
        Err(e) => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
    };
    let _telemetry = init(&TelemetryConfig {
        service_name: "flow-view",
        log_format: match std::env::var("LOG_FORMAT").as_deref() {
            Ok("json") => LogFormat::Json,
            _ => LogFormat::Pretty,
        },
        print_logs: true,
        otlp_endpoint: None,
        summary_interval: Some(Duration::from_secs(60)),
    });
    match start(settings).await {
        Ok(view) => {
            tracing::info!(addr = %view.addr, "flow view serving");
            shutdown_signal().await;
            view.stop().await;
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!(error = %e, "flow view cannot start");
            ExitCode::FAILURE
        }
    }
}
