//! The `shipping-service` binary (see [`shipping_service::run`]).

#[tokio::main]
async fn main() -> std::process::ExitCode {
    shipping_service::run().await
}
