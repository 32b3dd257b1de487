//! The `payment-service` binary (see [`payment_service::app::run`]).

#[tokio::main]
async fn main() -> std::process::ExitCode {
    payment_service::app::run().await
}
