//! Capped exponential backoff for loops that retry a dependency (Redis, Postgres).

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::observability::RETRIES;

/// Doubles from 50 ms up to 5 s, each wait ±25 % at random (so replicas that failed
/// together do not retry in step); reset after a success. Each wait counts as a retry of
/// its loop (`retries_total{loop}`).
#[derive(Debug)]
pub(crate) struct Backoff {
    next: Duration,
    retrying: &'static str,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(50);
    const MAX: Duration = Duration::from_secs(5);

    /// The backoff of the loop named `retrying` (a metric label).
    pub(crate) fn new(retrying: &'static str) -> Self {
        Self {
            next: Self::FIRST,
            retrying,
        }
    }

    pub(crate) fn reset(&mut self) {
        self.next = Self::FIRST;
    }

    /// Sleeps for the next delay, or less if `shutdown` fires. Returns false on shutdown.
    pub(crate) async fn wait(&mut self, shutdown: &CancellationToken) -> bool {
        metrics::counter!(RETRIES, "loop" => self.retrying).increment(1);
        let delay = jittered(self.next);
        self.next = (self.next * 2).min(Self::MAX);
        tokio::select! {
            () = shutdown.cancelled() => false,
            () = tokio::time::sleep(delay) => true,
        }
    }
}

/// `delay` × a random factor in [0.75, 1.25).
fn jittered(delay: Duration) -> Duration {
    let random = (uuid::Uuid::new_v4().as_u128() % 1_000) as f64 / 1_000.0;
    delay.mul_f64(0.75 + random / 2.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_are_jittered_around_the_doubling_delay() {
        let waits: Vec<Duration> = (0..50).map(|_| jittered(Duration::from_secs(4))).collect();
        assert!(
            waits
                .iter()
                .all(|w| (Duration::from_secs(3)..Duration::from_secs(5)).contains(w))
        );
        assert!(waits.iter().any(|w| *w != waits[0]), "not all the same");
    }
}
