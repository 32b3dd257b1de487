//! The relay's poll stays cheap however many published rows the outbox keeps: counted in
//! buffers from the statement's own plan (`EXPLAIN (ANALYZE, BUFFERS)`), a count that
//! holds on a noisy box, where a time would not.

use service_runtime::relay::CLAIM_UNPUBLISHED;
use sqlx::PgPool;
use testkit::TestContext;

use crate::runtime::database;

/// Rows a writer committed and never handed over, old enough for the poll to claim (the
/// second statement below makes them).
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
    // The outbox as a busy hour leaves it: the published rows of the day, made a day ago;
    // rows a crashed writer left unpublished, a minute old; and a burst just committed,
    // waiting for its writers' relays (younger than the poll's 3 s), as many as were
    // published. Statistics fresh, no dead rows: the plan is the planner's own choice.
    for statement in [
        "INSERT INTO outbox (event_id, stream, event_type, order_id, fields, created_at)
         SELECT gen_random_uuid(), 'order-events', 'OrderCreated', gen_random_uuid(),
                ARRAY['payload', repeat('x', 600)], now() - interval '1 day'
         FROM generate_series(1, 100000)",
        "INSERT INTO outbox (event_id, stream, event_type, order_id, fields, created_at)
         SELECT gen_random_uuid(), 'order-events', 'OrderCreated', gen_random_uuid(),
                ARRAY['payload', repeat('x', 600)], now() - interval '1 minute'
         FROM generate_series(1, 10)",
        "INSERT INTO outbox_pending (event_id, queued_at)
         SELECT event_id, created_at FROM outbox WHERE created_at > now() - interval '1 hour'",
        "INSERT INTO outbox (event_id, stream, event_type, order_id, fields)
         SELECT gen_random_uuid(), 'order-events', 'OrderCreated', gen_random_uuid(),
                ARRAY['payload', repeat('x', 600)]
         FROM generate_series(1, 100000)",
        "INSERT INTO outbox_pending (event_id, queued_at)
         SELECT event_id, now() FROM outbox WHERE created_at > now() - interval '30 seconds'",
        "ANALYZE outbox, outbox_pending",
    ] {
        sqlx::query(statement)
            .execute(&pool)
            .await
            .expect(statement);
    }
    let (buffers, claimed) = claim_cost(&pool).await;
    assert_eq!(
        claimed, LEFT_UNPUBLISHED,
        "every row left unpublished is claimed, none of the burst"
    );
    // What may be read: the entries' table (its size is what waits, not what was ever
    // published), and for each claimed row its entry, its outbox row by `event_id` (index
    // and heap) and its lock. A plan walking the outbox by age reads its index and heap
    // row after row (the soak's statement, put back: 320,700 buffers).
    let pending_pages: i64 = sqlx::query_scalar(
        "SELECT pg_relation_size('outbox_pending') / current_setting('block_size')::bigint",
    )
    .fetch_one(&pool)
    .await
    .expect("sizes");
    assert!(
        buffers < pending_pages + 20 * LEFT_UNPUBLISHED,
        "the claim touched {buffers} buffers (the entries' table has {pending_pages} pages) \
         of an outbox of 100,000 published rows and 100,000 just committed"
    );
}
