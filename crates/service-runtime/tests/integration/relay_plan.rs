//! The relay's poll stays cheap however many published rows the outbox keeps: counted in
//! buffers from the statement's own plan (`EXPLAIN (ANALYZE, BUFFERS)`), a count that
//! holds on a noisy box, where a time would not.

use service_runtime::relay::CLAIM_UNPUBLISHED;
use sqlx::PgPool;
use testkit::TestContext;

use crate::runtime::database;

/// Published rows kept: about a week of retention at a quiet rate, or minutes at a busy one.
const PUBLISHED: i64 = 100_000;
/// Rows a writer committed and never handed over, old enough for the poll to claim.
const LEFT_UNPUBLISHED: i64 = 10;

/// Buffers the claim touched (shared hits and reads, the whole plan's), and rows claimed.
async fn claim_cost(pool: &PgPool) -> (i64, i64) {
    let mut tx = pool.begin().await.expect("begins");
    let plan: serde_json::Value = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {CLAIM_UNPUBLISHED}"
    )))
    .bind(100_i64)
    .bind(3.0_f64)
    .fetch_one(&mut *tx)
    .await
    .expect("explains");
    tx.rollback().await.expect("rolls back");
    let top = &plan[0]["Plan"];
    let count = |key: &str| {
        top[key]
            .as_i64()
            .unwrap_or_else(|| panic!("{key} in {top}"))
    };
    (
        count("Shared Hit Blocks") + count("Shared Read Blocks"),
        count("Actual Rows"),
    )
}

#[tokio::test]
async fn the_poll_touches_a_bounded_number_of_buffers_however_large_the_outbox() {
    let ctx = TestContext::new();
    let pool = database(&ctx).await;
    // Rows of entry-sized fields, made a day ago.
    sqlx::query(
        "INSERT INTO outbox (event_id, stream, event_type, order_id, fields, created_at)
         SELECT gen_random_uuid(), 'order-events', 'OrderCreated', gen_random_uuid(),
                ARRAY['payload', repeat('x', 600)], now() - interval '1 day'
         FROM generate_series(1, $1)",
    )
    .bind(PUBLISHED + LEFT_UNPUBLISHED)
    .execute(&pool)
    .await
    .expect("fills the outbox");
    // As under load: every row had its entry, and the entries went faster than the
    // statistics and vacuum followed, so the planner believes many rows wait (the soak
    // that found a plan walking the outbox by age ran under exactly that). The ten newest
    // rows are left unpublished, queued a minute ago.
    for statement in [
        "ALTER TABLE outbox_pending SET (autovacuum_enabled = off)",
        "INSERT INTO outbox_pending (event_id, queued_at)
         SELECT event_id, now() - interval '1 minute' FROM outbox",
        "ANALYZE outbox, outbox_pending",
        "DELETE FROM outbox_pending
         WHERE event_id NOT IN (SELECT event_id FROM outbox ORDER BY id DESC LIMIT 10)",
    ] {
        sqlx::query(statement)
            .execute(&pool)
            .await
            .expect(statement);
    }
    claim_cost(&pool).await; // the first pass after the churn marks the dead entries
    let (buffers, claimed) = claim_cost(&pool).await;
    assert_eq!(
        claimed, LEFT_UNPUBLISHED,
        "every row left unpublished is claimed"
    );
    // What may be read: the entries' table (its size is what waited at the busiest, not
    // what was ever published), and for each claimed row its entry, its outbox row by
    // `event_id` (index and heap) and its lock. A plan walking the outbox reads its index
    // and heap for every published row (the soak's statement, put back: 310,426 buffers).
    let pending_pages: i64 = sqlx::query_scalar(
        "SELECT pg_relation_size('outbox_pending') / current_setting('block_size')::bigint",
    )
    .fetch_one(&pool)
    .await
    .expect("sizes");
    assert!(
        buffers < pending_pages + 20 * LEFT_UNPUBLISHED,
        "the claim touched {buffers} buffers (the entries' table has {pending_pages} pages) \
         of an outbox of {PUBLISHED} published rows"
    );
}
