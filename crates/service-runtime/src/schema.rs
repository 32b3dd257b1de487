//! The runtime's own tables, shipped once: the outbox and the inbox (SPEC §4.1, §4.2)
//! are migration 1 of every service's database, and a service's own migrations follow
//! it in one history (`_sqlx_migrations`). The runtime numbers its later migrations from
//! 1001, a service numbers its own from 2 to 1000, so the two never collide.
//!
//! A build starts on a database that a newer build migrated further (migrations it does
//! not know are ignored, not an error): a rollback of a rolling upgrade (SPEC §3.4) must
//! be able to start. So a migration only ever adds (a nullable column, a table, an
//! index) while a build that does not know it may still run; dropping what an older build
//! uses waits for a later release.

use sqlx::migrate::Migrator;

/// The runtime's migrations (`migrations/runtime`): the outbox and the inbox.
pub static RUNTIME_MIGRATOR: Migrator = sqlx::migrate!("../../migrations/runtime");

/// One migrator for a service's database: the runtime's migrations and `service`'s
/// (numbered 2 to 1000), in version order; migrations applied by a newer build are
/// ignored.
pub fn with_runtime(service: &Migrator) -> Migrator {
    let mut migrator = Migrator::with_migrations(
        RUNTIME_MIGRATOR
            .iter()
            .chain(service.iter())
            .cloned()
            .collect(),
    );
    migrator.set_ignore_missing(true);
    migrator
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_runtime_comes_first_and_versions_stay_unique() {
        static SERVICE: Migrator = sqlx::migrate!("../../migrations/order");
        static PAYMENT: Migrator = sqlx::migrate!("../../migrations/payment");
        for service in [&SERVICE, &PAYMENT] {
            assert!(service.iter().all(|m| (2..=1000).contains(&m.version)));
            let combined = with_runtime(service);
            let versions: Vec<i64> = combined.iter().map(|m| m.version).collect();
            assert_eq!(versions.first(), Some(&1));
            let mut unique = versions.clone();
            unique.dedup();
            assert_eq!(unique, versions);
            assert_eq!(
                versions.len(),
                RUNTIME_MIGRATOR.iter().count() + service.iter().count()
            );
        }
        assert!(
            RUNTIME_MIGRATOR
                .iter()
                .all(|m| m.version == 1 || m.version > 1000)
        );
    }
}
