//! Starts the tests' private Redis Cluster (three masters, three replicas, see
//! `testkit::cluster`) for a benchmark or a manual try, prints its `redis+cluster://` URL
//! on one line, and stops it on SIGTERM or Ctrl-C.
//!
//!   cargo run -p testkit --bin redis-cluster

use testkit::RedisCluster;
use tokio::signal::unix::{SignalKind, signal};

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let cluster = RedisCluster::start().await;
    println!("{}", cluster.url());
    let mut terminate = signal(SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
    drop(cluster);
    Ok(())
}
