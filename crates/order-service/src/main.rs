use std::process::ExitCode;

use order_service::Settings;

#[tokio::main]
async fn main() -> ExitCode {
    service_runtime::service::run_main(
        "order-service",
        |s: &Settings| s.common.log_format,
        order_service::start,
    )
    .await
}
