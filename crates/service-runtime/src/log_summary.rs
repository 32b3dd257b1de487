//! Logs stay readable under a sustained fault (SPEC §4.9): a warning or error repeated
//! from one place in the code (its cause) is printed the first time, then counted, and a
//! line per cause per interval says how many more came and shows the last of them.
//!
//! A cause is the callsite: the place in the code that logs, ours or a library's (`log`
//! records, e.g. redis-rs's reconnect messages, by their own target, file and line). So
//! two faults at once are both seen, each summarised on its own. Only what is printed is
//! summarised; traces and metrics see every event.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Metadata};
use tracing_subscriber::layer::{Context, Filter};

/// The target of the summary lines (never summarised themselves).
pub const SUMMARY_TARGET: &str = "log_summary";

/// The most causes tracked at once; past it, events of new causes are printed as they
/// come (the callsites of a program are few: this only bounds memory).
const MAX_CAUSES: usize = 1024;

/// Where a repeated line comes from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Cause {
    target: String,
    file: Option<String>,
    line: Option<u64>,
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.target)?;
        if let Some(file) = &self.file {
            write!(f, " {file}")?;
        }
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        Ok(())
    }
}

/// What was held back of one cause in its current window.
#[derive(Debug)]
struct Tally {
    since: Instant,
    level: Level,
    held_back: u64,
    last: String,
}

/// A due summary: `held_back` more lines of `cause` since the last one printed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub cause: String,
    pub level: Level,
    pub held_back: u64,
    pub last: String,
}

/// The per-layer filter that holds repeats back; [`flush_due`](Self::flush_due) prints
/// what it held. Clones share their tallies.
#[derive(Debug, Clone)]
pub struct Summarise {
    interval: Duration,
    tallies: Arc<Mutex<HashMap<Cause, Tally>>>,
}

impl Summarise {
    /// Prints a cause at most once per `interval`, plus its summary.
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            tallies: Arc::default(),
        }
    }

    /// Whether `event` is printed: the first of its cause in a window is, the rest are
    /// counted.
    fn admit(&self, event: &Event<'_>, now: Instant) -> bool {
        let metadata = event.metadata();
        if *metadata.level() > Level::WARN || metadata.target() == SUMMARY_TARGET {
            return true;
        }
        let mut seen = Seen::default();
        event.record(&mut seen);
        let cause = seen.cause(metadata);
        let mut tallies = self.tallies.lock().unwrap_or_else(|e| e.into_inner());
        let tracked = tallies.len();
        match tallies.get_mut(&cause) {
            Some(tally) => {
                tally.held_back += 1;
                tally.level = tally.level.min(*metadata.level());
                tally.last = seen.message;
                false
            }
            None => {
                if tracked < MAX_CAUSES {
                    tallies.insert(
                        cause,
                        Tally {
                            since: now,
                            level: *metadata.level(),
                            held_back: 0,
                            last: String::new(),
                        },
                    );
                }
                true
            }
        }
    }

    /// Takes the summaries whose window ended by `now`: a cause that held lines back
    /// starts a new window (still quiet), one that held none is forgotten (its next line
    /// is printed at once).
    pub fn take_due(&self, now: Instant) -> Vec<Summary> {
        let mut tallies = self.tallies.lock().unwrap_or_else(|e| e.into_inner());
        let mut due = Vec::new();
        tallies.retain(|cause, tally| {
            if now.duration_since(tally.since) < self.interval {
                return true;
            }
            if tally.held_back == 0 {
                return false;
            }
            due.push(Summary {
                cause: cause.to_string(),
                level: tally.level,
                held_back: std::mem::take(&mut tally.held_back),
                last: std::mem::take(&mut tally.last),
            });
            tally.since = now;
            true
        });
        due
    }

    /// Prints the summaries due by `now`, one line each.
    pub fn flush_due(&self, now: Instant) {
        let seconds = self.interval.as_secs_f64();
        for s in self.take_due(now) {
            let (cause, held_back, last) = (&s.cause, s.held_back, &s.last);
            let message = "repeated; held back in the last interval";
            if s.level == Level::ERROR {
                tracing::error!(target: SUMMARY_TARGET, %cause, held_back, seconds, %last, "{message}");
            } else {
                tracing::warn!(target: SUMMARY_TARGET, %cause, held_back, seconds, %last, "{message}");
            }
        }
    }

    /// Flushes due summaries every second, on a thread of its own, for the life of the
    /// process.
    pub fn spawn_flusher(&self) {
        let summarise = self.clone();
        let spawned = std::thread::Builder::new()
            .name("log-summary".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(Duration::from_secs(1));
                    summarise.flush_due(Instant::now());
                }
            });
        if let Err(e) = spawned {
            eprintln!("cannot start the log summary thread: {e}");
        }
    }
}

impl<S> Filter<S> for Summarise {
    fn enabled(&self, _metadata: &Metadata<'_>, _cx: &Context<'_, S>) -> bool {
        true
    }

    fn event_enabled(&self, event: &Event<'_>, _cx: &Context<'_, S>) -> bool {
        self.admit(event, Instant::now())
    }
}

/// An event's message, and the origin a `log` record carries in its fields.
#[derive(Debug, Default)]
struct Seen {
    message: String,
    log_target: Option<String>,
    log_file: Option<String>,
    log_line: Option<u64>,
}

impl Seen {
    fn cause(&self, metadata: &Metadata<'_>) -> Cause {
        match &self.log_target {
            Some(target) => Cause {
                target: target.clone(),
                file: self.log_file.clone(),
                line: self.log_line,
            },
            None => Cause {
                target: metadata.target().to_owned(),
                file: metadata.file().map(str::to_owned),
                line: metadata.line().map(u64::from),
            },
        }
    }
}

impl Visit for Seen {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "log.target" => self.log_target = Some(value.to_owned()),
            "log.file" => self.log_file = Some(value.to_owned()),
            _ => self.record_debug(field, &value),
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        match field.name() {
            "log.line" => self.log_line = Some(value),
            _ => self.record_debug(field, &value),
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name().starts_with("log.") {
            return;
        }
        if !self.message.is_empty() {
            self.message.push(' ');
        }
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            let _ = write!(self.message, "{}={value:?}", field.name());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use tracing_subscriber::Layer;
    use tracing_subscriber::fmt::MakeWriter;
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    /// The lines a test's subscriber printed.
    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl Write for Lines {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Lines {
        type Writer = Lines;
        fn make_writer(&'a self) -> Lines {
            self.clone()
        }
    }

    impl Lines {
        fn printed(&self) -> Vec<String> {
            String::from_utf8(self.0.lock().expect("lock").clone())
                .expect("utf-8")
                .lines()
                .map(str::to_owned)
                .collect()
        }
    }

    fn fail(n: u32) {
        tracing::warn!(attempt = n, "cannot reach redis");
    }

    #[test]
    fn repeats_of_one_cause_are_held_back_and_summarised_with_a_count() {
        let lines = Lines::default();
        let interval = Duration::from_secs(30);
        let summarise = Summarise::new(interval);
        let subscriber = tracing_subscriber::registry().with(
            tracing_subscriber::fmt::layer()
                .with_writer(lines.clone())
                .with_ansi(false)
                .with_filter(summarise.clone()),
        );
        let start = Instant::now();
        tracing::subscriber::with_default(subscriber, || {
            for n in 0..100 {
                fail(n);
            }
            tracing::error!("another cause");
            tracing::info!("information is never held back");
            tracing::info!("information is never held back");
            summarise.flush_due(start);
            assert_eq!(lines.printed().len(), 4, "{:?}", lines.printed());

            // A second more than the window, however long the events took to print.
            let first_due = start + interval + Duration::from_secs(1);
            summarise.flush_due(first_due);
            let printed = lines.printed();
            assert_eq!(
                printed.len(),
                5,
                "one summary, none for a cause that held nothing back: {printed:?}"
            );
            let summary = &printed[4];
            assert!(summary.contains("held_back=99"), "{summary}");
            assert!(
                summary.contains("attempt=99"),
                "the last held back: {summary}"
            );

            // The fault goes on: a line per interval; once it is over, the next line of
            // the cause is printed at once.
            fail(100);
            summarise.flush_due(first_due + interval);
            assert!(lines.printed()[5].contains("held_back=1"));
            summarise.flush_due(first_due + 2 * interval);
            fail(101);
            assert_eq!(lines.printed().len(), 7);
            assert!(lines.printed()[6].contains("attempt=101"));
        });
    }

    #[test]
    fn the_origin_of_a_log_record_is_its_cause() {
        let lines = Lines::default();
        let summarise = Summarise::new(Duration::from_secs(30));
        let subscriber = tracing_subscriber::registry().with(
            tracing_subscriber::fmt::layer()
                .with_writer(lines.clone())
                .with_filter(summarise.clone()),
        );
        tracing::subscriber::with_default(subscriber, || {
            for target in ["redis::cluster", "redis::cluster", "redis::aio"] {
                tracing::warn!(
                    log.target = target,
                    log.file = "x.rs",
                    log.line = 7u64,
                    "reconnecting"
                );
            }
        });
        assert_eq!(lines.printed().len(), 2, "{:?}", lines.printed());
    }
}
