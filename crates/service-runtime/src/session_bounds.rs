//! The bounds a service sets on its own Postgres sessions (SPEC §4.9), so that no
//! transaction, lock wait or statement of a process that froze holds the others back for
//! longer than they allow, on any server whatever its configuration (applied in
//! [`service`](crate::service) when the pool connects).

use std::time::Duration;

/// Bounds a service sets on each of its own Postgres sessions (SPEC §4.9), so that they
/// hold on any server whatever its configuration: no transaction, lock wait or statement
/// of a process that froze (a pause, a VM stall, a half-open connection) can hold the
/// others back for longer than these.
#[derive(Debug, Clone, clap::Args)]
pub struct DatabaseBounds {
    /// Longest a statement may run (`statement_timeout`), in ms.
    #[arg(long, env = "DB_STATEMENT_TIMEOUT_MS", default_value_t = 5_000, value_parser = clap::value_parser!(u64).range(100..=3_600_000))]
    pub db_statement_timeout_ms: u64,
    /// Longest a statement waits for a lock (`lock_timeout`), in ms; then the event is
    /// retried in place, the HTTP request answered 503.
    #[arg(long, env = "DB_LOCK_TIMEOUT_MS", default_value_t = 2_000, value_parser = clap::value_parser!(u64).range(10..=3_600_000))]
    pub db_lock_timeout_ms: u64,
    /// Longest a transaction may sit idle between statements
    /// (`idle_in_transaction_session_timeout`), in ms: a process frozen inside one loses
    /// its session, and its locks, after this. Above the 5 s a Redis command may take,
    /// since the relay keeps its claim open across its `XADD`s.
    #[arg(long, env = "DB_IDLE_IN_TRANSACTION_TIMEOUT_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(100..=3_600_000))]
    pub db_idle_in_transaction_timeout_ms: u64,
}

impl DatabaseBounds {
    /// `DB_STATEMENT_TIMEOUT_MS`.
    pub fn statement_timeout(&self) -> Duration {
        Duration::from_millis(self.db_statement_timeout_ms)
    }

    /// `DB_LOCK_TIMEOUT_MS`.
    pub fn lock_timeout(&self) -> Duration {
        Duration::from_millis(self.db_lock_timeout_ms)
    }

    /// `DB_IDLE_IN_TRANSACTION_TIMEOUT_MS`.
    pub fn idle_in_transaction_timeout(&self) -> Duration {
        Duration::from_millis(self.db_idle_in_transaction_timeout_ms)
    }

    /// How long a lock held by another session can last at most: until that session's
    /// statement ends, plus until its idle transaction is ended by the server. An event
    /// that loses to contention is retried in place (no delivery spent) for this long.
    pub fn longest_lock_hold(&self) -> Duration {
        self.statement_timeout() + self.idle_in_transaction_timeout() + self.lock_timeout()
    }

    /// How long one transaction may take as the process sees it: its statements and the
    /// gaps between them are each bounded by the server, so one still running after
    /// this is on a server or a path that stopped answering.
    pub fn transaction_deadline(&self) -> Duration {
        2 * self.longest_lock_hold()
    }

    /// Refuses bounds that contradict each other or the rest of the service.
    pub(crate) fn check(&self, request_timeout_ms: u64) -> Result<(), String> {
        if self.db_lock_timeout_ms >= self.db_statement_timeout_ms {
            return Err(format!(
                "DB_LOCK_TIMEOUT_MS ({}) must be below DB_STATEMENT_TIMEOUT_MS ({}): a lock \
                 wait should end as contention, retried, not as a failed statement",
                self.db_lock_timeout_ms, self.db_statement_timeout_ms
            ));
        }
        if self.db_statement_timeout_ms >= request_timeout_ms {
            return Err(format!(
                "DB_STATEMENT_TIMEOUT_MS ({}) must be below REQUEST_TIMEOUT_MS \
                 ({request_timeout_ms}): a request's statement ends before the request does",
                self.db_statement_timeout_ms
            ));
        }
        let redis_ms = crate::redis_conn::COMMAND_TIMEOUT.as_millis() as u64;
        if self.db_idle_in_transaction_timeout_ms <= redis_ms {
            return Err(format!(
                "DB_IDLE_IN_TRANSACTION_TIMEOUT_MS ({}) must exceed the {redis_ms} ms a Redis \
                 command may take: the relay keeps its claim open across its XADDs",
                self.db_idle_in_transaction_timeout_ms
            ));
        }
        Ok(())
    }
}
