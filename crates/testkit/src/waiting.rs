//! Waiting for a condition with a deadline, never a fixed sleep.

use std::future::Future;
use std::time::Duration;

/// Polls `probe` every 20 ms until it returns `Ok`, for at most `timeout`; then panics
/// with `what` and the last `Err` it returned (what was seen instead).
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match probe().await {
            Ok(value) => return value,
            Err(seen) if tokio::time::Instant::now() >= deadline => {
                panic!("timed out after {timeout:?} waiting for {what}; last saw: {seen}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}
