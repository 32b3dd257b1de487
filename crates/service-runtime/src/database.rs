//! Postgres failures that mean "unavailable" rather than "wrong": the connection broke,
//! the pool ran dry, or the server is shutting down or terminated the session. Callers
//! answer those with 503 or retry in place, never with a 500 or a dead letter.

/// True when `error` says the database could not be used at all, not that a statement
/// was refused.
pub fn is_unavailable(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        // SQLSTATE classes 08 (connection exception), 53 (insufficient resources, e.g.
        // too many connections) and 57 (operator intervention: shutdown, terminated).
        sqlx::Error::Database(e) => e.code().is_some_and(|code| {
            ["08", "53", "57"]
                .iter()
                .any(|class| code.starts_with(class))
        }),
        _ => false,
    }
}

/// True when trying again may well succeed: the database was unavailable, or the
/// transaction lost a deadlock or a serialization conflict (SQLSTATE class 40).
pub fn is_transient(error: &sqlx::Error) -> bool {
    is_unavailable(error)
        || matches!(error, sqlx::Error::Database(e) if e.code().is_some_and(|code| code.starts_with("40")))
}
