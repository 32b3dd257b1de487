//! payment-service as a process the chaos tests can SIGKILL: the product's own entry
//! point, [`payment_service::app::run`].

#[tokio::main]
async fn main() -> std::process::ExitCode {
    payment_service::app::run().await
}
