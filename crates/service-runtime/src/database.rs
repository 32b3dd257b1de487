//! What a Postgres failure means, which decides whether anything is spent on it.
//!
//! - An **outage**: the database is not working at all (the connection broke, the pool ran
//!   dry, the server shuts down or terminated the session, it turned read-only in a
//!   failover). Nothing about the request or the event is wrong: HTTP answers 503 and the
//!   consumer waits in place, for as long as it lasts, spending no delivery.
//! - **Contention**: the database works, but this attempt lost (a deadlock, a
//!   serialization conflict, a lock or statement timeout, a cancelled statement). Trying
//!   again may well succeed: HTTP answers 503, and the consumer retries in place a few
//!   times; a conflict that outlasts those is counted against the event.
//! - Anything else is about the statement or the data: an error, never retried in place.

/// What a Postgres failure means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    Outage,
    Contention,
    Other,
}

/// Classifies `error`.
pub fn classify(error: &sqlx::Error) -> Failure {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => Failure::Outage,
        sqlx::Error::Database(e) => e.code().map_or(Failure::Other, |code| classify_code(&code)),
        _ => Failure::Other,
    }
}

fn classify_code(code: &str) -> Failure {
    match code {
        // query_canceled (a statement timeout, or an administrator), lock_not_available.
        "57014" | "55P03" => Failure::Contention,
        // read_only_sql_transaction: a failover left this session on a standby;
        // idle_in_transaction_session_timeout: the server ended this session while it sat
        // in a transaction (the process froze, SPEC §4.9); its work was undone.
        "25006" | "25P03" => Failure::Outage,
        // Classes 08 (connection exception), 53 (insufficient resources, e.g. too many
        // connections), 57 (operator intervention: shutdown, terminated session).
        _ if ["08", "53", "57"]
            .iter()
            .any(|class| code.starts_with(class)) =>
        {
            Failure::Outage
        }
        // Class 40: transaction rollback (deadlock, serialization failure).
        _ if code.starts_with("40") => Failure::Contention,
        _ => Failure::Other,
    }
}

/// True when trying again may well succeed: an outage or contention.
pub fn is_transient(error: &sqlx::Error) -> bool {
    classify(error) != Failure::Other
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstates_are_classified() {
        for code in ["08006", "53300", "57P01", "57P03", "25006", "25P03"] {
            assert_eq!(classify_code(code), Failure::Outage, "{code}");
        }
        for code in ["40001", "40P01", "55P03", "57014"] {
            assert_eq!(classify_code(code), Failure::Contention, "{code}");
        }
        for code in ["23505", "22003", "42P01", "P0001", "25P02"] {
            assert_eq!(classify_code(code), Failure::Other, "{code}");
        }
        assert_eq!(classify(&sqlx::Error::PoolTimedOut), Failure::Outage);
        assert_eq!(classify(&sqlx::Error::RowNotFound), Failure::Other);
    }
}
