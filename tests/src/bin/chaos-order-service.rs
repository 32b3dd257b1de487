//! order-service as a process the chaos tests can SIGKILL: the product's own entry
//! point, [`order_service::app::run`].

#[tokio::main]
async fn main() -> std::process::ExitCode {
    order_service::app::run().await
}
