use std::process::ExitCode;

use payment_service::Settings;

#[tokio::main]
async fn main() -> ExitCode {
    service_runtime::service::run_main(
        "payment-service",
        |s: &Settings| s.common.log_format,
        payment_service::start,
    )
    .await
}
