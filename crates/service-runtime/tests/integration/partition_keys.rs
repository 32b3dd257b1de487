//! Outbox and inbox rows carry a partition key of the service's choosing (runtime
//! migration 1006). A database of the schema before it migrates without loss: its rows
//! keep every column, and are still found by their order; rows written after it are
//! found by their own key, whatever it is. A row keyed by its order stores no key
//! (migration 1007): its order's index entry is the only one it needs.

use std::time::Duration;

use events::{EventWriter, SchemaVersion};
use service_runtime::outbox::{self, BindOutboxRows, OutboxRow, Reask};
use service_runtime::schema::RUNTIME_MIGRATOR;
use sqlx::PgPool;
use sqlx::migrate::Migrator;
use testkit::TestContext;

use crate::runtime::event;

/// The first runtime migration that stores partition keys.
const PARTITION_KEYS: i64 = 1006;

/// Publishes again, as due now, the events of partition `keys`; returns their ids.
async fn republished(pool: &PgPool, keys: &[String]) -> Vec<OutboxRow> {
    let mut tx = pool.begin().await.expect("begins");
    let rows = outbox::republish(
        &mut tx,
        keys,
        None,
        &Reask::every(Duration::ZERO),
        &EventWriter::unsigned(SchemaVersion::NEWEST),
    )
    .await
    .expect("re-arms");
    tx.commit().await.expect("commits");
    rows
}

#[tokio::test]
async fn a_database_from_before_partition_keys_migrates_without_loss() {
    let ctx = TestContext::new();
    let pool = PgPool::connect(&ctx.database().await)
        .await
        .expect("connects");
    let before = Migrator::with_migrations(
        RUNTIME_MIGRATOR
            .iter()
            .filter(|m| m.version < PARTITION_KEYS)
            .cloned()
            .collect(),
    );
    before.run(&pool).await.expect("the schema before");

    // Written as the previous release writes them: an event published, one still
    // waiting for the relay, and the inbox record of one applied.
    let writer = EventWriter::unsigned(SchemaVersion::NEWEST);
    let (published, waiting) = (event(), event());
    let rows: Vec<OutboxRow> = [&published, &waiting]
        .into_iter()
        .map(|e| OutboxRow::new("order-events", &writer, e))
        .collect();
    for row in &rows {
        sqlx::query(
            "INSERT INTO outbox (event_id, stream, event_type, order_id, fields)
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(row.event_id)
        .bind(&row.stream)
        .bind(row.event_type)
        .bind(row.order_id)
        .bind(&row.fields)
        .execute(&pool)
        .await
        .expect("an outbox row of the previous release");
    }
    sqlx::query("INSERT INTO outbox_pending (event_id) VALUES ($1)")
        .bind(waiting.event_id)
        .execute(&pool)
        .await
        .expect("waiting");
    let applied = event();
    sqlx::query("INSERT INTO inbox (event_id, event_type, order_id) VALUES ($1, $2, $3)")
        .bind(applied.event_id)
        .bind(applied.event_type().as_str())
        .bind(applied.order_id)
        .execute(&pool)
        .await
        .expect("an inbox row of the previous release");
    let snapshot = "SELECT event_id, stream, event_type, order_id, fields, created_at FROM outbox
                    ORDER BY id";
    type Stored = (
        uuid::Uuid,
        String,
        String,
        uuid::Uuid,
        Vec<String>,
        time::OffsetDateTime,
    );
    let stored: Vec<Stored> = sqlx::query_as(snapshot)
        .fetch_all(&pool)
        .await
        .expect("rows");

    RUNTIME_MIGRATOR.run(&pool).await.expect("migrates");

    let migrated: Vec<Stored> = sqlx::query_as(snapshot)
        .fetch_all(&pool)
        .await
        .expect("rows");
    assert_eq!(migrated, stored, "every outbox row as it was");
    let pending: Vec<uuid::Uuid> = sqlx::query_scalar("SELECT event_id FROM outbox_pending")
        .fetch_all(&pool)
        .await
        .expect("pending");
    assert_eq!(pending, [waiting.event_id], "still waiting for the relay");
    let inbox: Vec<(uuid::Uuid, uuid::Uuid)> =
        sqlx::query_as("SELECT event_id, order_id FROM inbox")
            .fetch_all(&pool)
            .await
            .expect("inbox");
    assert_eq!(
        inbox,
        [(applied.event_id, applied.order_id)],
        "the inbox kept"
    );

    // The published row, keyless, is still found by its order (the waiting one is not
    // repeated: the relay sends it anyway).
    let again = republished(
        &pool,
        &[published.order_id.to_string(), waiting.order_id.to_string()],
    )
    .await;
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].event_id, published.event_id);
    assert_eq!(again[0].partition_key, published.order_id.to_string());
    assert_eq!(again[0].fields, rows[0].fields, "byte for byte");

    // A row written now under a key of the service's own is found by that key, not by
    // its order.
    let shipment = event();
    let keyed = OutboxRow::new("shipping-events", &writer, &shipment).keyed_by("shipment-7");
    sqlx::query(concat!(
        "WITH ",
        service_runtime::queue_outbox_rows!(),
        "done AS (SELECT 1) SELECT 1"
    ))
    .bind_outbox_rows(&[&keyed])
    .execute(&pool)
    .await
    .expect("queued");
    sqlx::query("DELETE FROM outbox_pending WHERE event_id = $1")
        .bind(shipment.event_id)
        .execute(&pool)
        .await
        .expect("published");
    assert!(
        republished(&pool, &[shipment.order_id.to_string()])
            .await
            .is_empty(),
        "not its order's any more"
    );
    let again = republished(&pool, &["shipment-7".to_owned()]).await;
    assert_eq!(
        again.iter().map(|r| r.event_id).collect::<Vec<_>>(),
        [shipment.event_id]
    );
    assert_eq!(again[0].partition_key, "shipment-7");
}

/// Migration 1007: a row keyed by its own order (every row the two services write)
/// stores no partition key, so the partial index `outbox_partition` holds only rows keyed
/// otherwise; both are found by their key.
#[tokio::test]
async fn a_row_keyed_by_its_order_stores_no_key_and_is_found_by_its_order() {
    let ctx = TestContext::new();
    let pool = crate::runtime::database(&ctx).await;
    let writer = EventWriter::unsigned(SchemaVersion::NEWEST);
    let (by_order, shipment) = (event(), event());
    let rows = [
        OutboxRow::new("order-events", &writer, &by_order),
        OutboxRow::new("shipping-events", &writer, &shipment).keyed_by("shipment-8"),
    ];
    let mut tx = pool.begin().await.expect("begins");
    sqlx::query(concat!(
        "WITH ",
        service_runtime::queue_outbox_rows!(),
        "done AS (SELECT 1) SELECT 1"
    ))
    .bind_outbox_rows(&rows.iter().collect::<Vec<_>>())
    .execute(&mut *tx)
    .await
    .expect("queued");
    sqlx::query("DELETE FROM outbox_pending")
        .execute(&mut *tx)
        .await
        .expect("published");
    tx.commit().await.expect("commits");
    let stored: Vec<(uuid::Uuid, Option<String>)> =
        sqlx::query_as("SELECT event_id, partition_key FROM outbox ORDER BY id")
            .fetch_all(&pool)
            .await
            .expect("rows");
    assert_eq!(
        stored,
        [
            (by_order.event_id, None),
            (shipment.event_id, Some("shipment-8".to_owned()))
        ]
    );
    let indexed: String =
        sqlx::query_scalar("SELECT pg_get_indexdef('outbox_partition'::regclass)")
            .fetch_one(&pool)
            .await
            .expect("the index");
    assert!(
        indexed.ends_with("WHERE (partition_key IS NOT NULL)"),
        "{indexed}"
    );
    let again = republished(&pool, &[by_order.order_id.to_string()]).await;
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].event_id, by_order.event_id);
    assert_eq!(again[0].partition_key, by_order.order_id.to_string());
    let again = republished(&pool, &["shipment-8".to_owned()]).await;
    assert_eq!(
        again.iter().map(|r| r.event_id).collect::<Vec<_>>(),
        [shipment.event_id]
    );
}

/// Migration 1008: the rows of one statement carry field lists of any lengths and any
/// text (each in a composite of its own, not a rectangular array), stored byte for byte.
#[tokio::test]
async fn field_lists_of_any_length_and_text_are_stored_byte_for_byte() {
    let ctx = TestContext::new();
    let pool = crate::runtime::database(&ctx).await;
    let writer = EventWriter::unsigned(SchemaVersion::NEWEST);
    let awkward = [
        "",
        "NULL",
        "a \"quoted\", {braced} \\ value",
        "line\nbreak\ttab",
        "ünïcödé ✓",
    ];
    let mut rows: Vec<OutboxRow> = (0..3)
        .map(|_| OutboxRow::new("order-events", &writer, &event()))
        .collect();
    rows[0].fields = Vec::new();
    rows[1].fields = awkward.iter().map(|s| (*s).to_owned()).collect();
    rows[2]
        .fields
        .extend(awkward.iter().map(|s| (*s).to_owned()));
    sqlx::query(concat!(
        "WITH ",
        service_runtime::queue_outbox_rows!(),
        "done AS (SELECT 1) SELECT 1"
    ))
    .bind_outbox_rows(&rows.iter().collect::<Vec<_>>())
    .execute(&pool)
    .await
    .expect("queued");
    let stored: Vec<Vec<String>> = sqlx::query_scalar("SELECT fields FROM outbox ORDER BY id")
        .fetch_all(&pool)
        .await
        .expect("rows");
    assert_eq!(
        stored,
        rows.iter().map(|r| r.fields.clone()).collect::<Vec<_>>()
    );
}
