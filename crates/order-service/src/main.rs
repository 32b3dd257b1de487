//! The `order-service` binary (see [`order_service::app::run`]).

#[tokio::main]
async fn main() -> std::process::ExitCode {
    order_service::app::run().await
}
