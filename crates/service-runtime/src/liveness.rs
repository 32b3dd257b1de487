//! Liveness that tells the truth (SPEC §4.9): `/health/live` fails when a loop that must
//! make progress (the consumer, the relay) has not come round for longer than
//! `LIVENESS_STALL_MS`.
//!
//! Each such loop beats its [`Heartbeat`] every time it comes round: after a read (which
//! returns at least every `READ_BLOCK_MS`, with entries or without), after each attempt to
//! apply a batch (an outage waited out in place beats at every retry: that loop is doing
//! its job), after each relay pass. So an idle loop beats as often as a busy one, and only
//! a loop stuck inside one step — a statement or a command that never returns, a lock
//! never granted, a bug — falls silent. Every step has a bound of its own, so liveness
//! going red means something no bound caught: restarting the process is the cure.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

/// The process's clock for heartbeats.
static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

fn now_ms() -> u64 {
    EPOCH.elapsed().as_millis() as u64
}

/// One loop's last beat.
#[derive(Debug)]
struct Beat {
    name: String,
    last_ms: AtomicU64,
}

/// A loop's heartbeat; clones beat for the same loop.
#[derive(Debug, Clone)]
pub struct Heartbeat(Arc<Beat>);

impl Heartbeat {
    /// A heartbeat nobody watches (a loop run by a test or a tool).
    pub fn unwatched(name: impl Into<String>) -> Self {
        Self(Arc::new(Beat {
            name: name.into(),
            last_ms: AtomicU64::new(now_ms()),
        }))
    }

    /// The loop came round.
    pub fn beat(&self) {
        self.0.last_ms.store(now_ms(), Ordering::Relaxed);
    }

    fn silent_for(&self) -> Duration {
        Duration::from_millis(now_ms().saturating_sub(self.0.last_ms.load(Ordering::Relaxed)))
    }
}

/// The loops of a service that must make progress, and how long one may fall silent.
#[derive(Debug, Clone)]
pub struct Liveness {
    loops: Arc<Mutex<Vec<Heartbeat>>>,
    stall: Duration,
}

impl Liveness {
    /// Loops silent for longer than `stall` make the process not live.
    pub fn new(stall: Duration) -> Self {
        Self {
            loops: Arc::default(),
            stall,
        }
    }

    /// The heartbeat of a loop named `name`, watched from now on.
    pub fn watch(&self, name: impl Into<String>) -> Heartbeat {
        let heartbeat = Heartbeat::unwatched(name);
        self.loops
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(heartbeat.clone());
        heartbeat
    }

    /// The loops silent for longer than the stall bound, with how long.
    pub fn stalled(&self) -> Vec<(String, Duration)> {
        self.loops
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|h| (h.0.name.clone(), h.silent_for()))
            .filter(|(_, silent)| *silent > self.stall)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loop_silent_past_the_bound_is_stalled_and_a_beat_clears_it() {
        let liveness = Liveness::new(Duration::from_millis(30));
        let consumer = liveness.watch("consumer");
        let relay = liveness.watch("relay");
        assert!(liveness.stalled().is_empty());
        std::thread::sleep(Duration::from_millis(60)); // the silence under test
        relay.beat();
        let stalled: Vec<String> = liveness.stalled().into_iter().map(|(n, _)| n).collect();
        assert_eq!(stalled, ["consumer"]);
        consumer.beat();
        assert!(liveness.stalled().is_empty());
    }
}
