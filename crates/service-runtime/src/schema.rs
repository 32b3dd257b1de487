//! The runtime's own tables, shipped once: the outbox and the inbox (SPEC §4.1, §4.2)
//! are migration 1 of every service's database, and a service's own migrations follow
//! it in one history (`_sqlx_migrations`).

use sqlx::migrate::Migrator;

/// The runtime's migrations (`migrations/runtime`): the outbox and the inbox.
pub static RUNTIME_MIGRATOR: Migrator = sqlx::migrate!("../../migrations/runtime");

/// One migrator for a service's database: the runtime's migrations, then `service`'s
/// (which must number from 2).
pub fn with_runtime(service: &Migrator) -> Migrator {
    Migrator::with_migrations(
        RUNTIME_MIGRATOR
            .iter()
            .chain(service.iter())
            .cloned()
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_runtime_comes_first_and_versions_stay_unique() {
        static SERVICE: Migrator = sqlx::migrate!("../../migrations/order");
        let combined = with_runtime(&SERVICE);
        let versions: Vec<i64> = combined.iter().map(|m| m.version).collect();
        assert_eq!(versions.first(), Some(&1));
        let mut unique = versions.clone();
        unique.dedup();
        assert_eq!(unique, versions);
        assert_eq!(versions.len(), 1 + SERVICE.iter().count());
    }
}
