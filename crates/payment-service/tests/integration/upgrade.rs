//! Upgrading a payment database settled by an older version: the saga rows learn the
//! answers they gave (migration 0006), from the outbox where it still holds them, so a
//! question asked again after the upgrade gets the answer it got before (SPEC §4.9).

use events::streams::PAYMENT_EVENTS;
use events::{
    Currency, Envelope, Event, EventWriter, FailureReason, PaymentCancelled, PaymentFailed,
    Producer, SchemaVersion,
};
use payment_service::db::MIGRATOR;
use payment_service::order_events::OrderEvents;
use service_runtime::EventHandler;
use service_runtime::outbox;
use sqlx::PgPool;
use sqlx::migrate::Migrator;
use testkit::TestContext;
use uuid::Uuid;

use crate::payments::{cancelled, created};

/// The migration under test.
const RECORDED_ANSWERS: i64 = 6;

type Recorded = (Option<Uuid>, Option<Uuid>, Option<String>);

async fn recorded(pool: &PgPool, order_id: Uuid) -> Recorded {
    sqlx::query_as(
        "SELECT created_answer_id, cancelled_answer_id, decline_reason
         FROM order_payments WHERE order_id = $1",
    )
    .bind(order_id)
    .fetch_one(pool)
    .await
    .expect("saga row")
}

#[tokio::test]
async fn an_upgraded_database_answers_again_what_it_answered_before() {
    let ctx = TestContext::new();
    let pool = PgPool::connect(&ctx.database().await)
        .await
        .expect("connects");
    let before = Migrator::with_migrations(
        MIGRATOR
            .iter()
            .filter(|m| m.version < RECORDED_ANSWERS || m.version > 1000)
            .cloned()
            .collect(),
    );
    before.run(&pool).await.expect("the older schema");

    // What an older version left: a decline whose answer the outbox still holds, a
    // decline and a cancellation whose answers were swept long ago.
    let declined = created("ivy", 900);
    let swept = created("ivy", 800);
    let cancelled_first = created("ivy", 700);
    let mut tx = pool.begin().await.expect("begins");
    sqlx::query(
        "INSERT INTO order_payments (order_id, customer_id, state)
         VALUES ($1, 'ivy', 'DECLINED'), ($2, 'ivy', 'DECLINED'), ($3, 'ivy', 'CANCELLED')",
    )
    .bind(declined.order_id)
    .bind(swept.order_id)
    .bind(cancelled_first.order_id)
    .execute(&mut *tx)
    .await
    .expect("saga rows");
    let answer = Envelope::caused_by(
        &declined,
        Producer::PaymentService,
        Event::PaymentFailed(PaymentFailed {
            order_id: declined.order_id,
            customer_id: "ivy".into(),
            amount_cents: 900,
            currency: Currency::parse("EUR").expect("valid"),
            reason: FailureReason::CurrencyMismatch,
        }),
    );
    outbox::enqueue(
        &mut tx,
        PAYMENT_EVENTS,
        &EventWriter::unsigned(SchemaVersion::NEWEST),
        &answer,
    )
    .await
    .expect("the old answer");
    tx.commit().await.expect("commits");

    MIGRATOR.run(&pool).await.expect("upgrades");
    assert_eq!(
        recorded(&pool, declined.order_id).await,
        (
            Some(answer.event_id),
            None,
            Some("currency_mismatch".into())
        ),
        "learnt from the outbox"
    );
    let (created_answer, cancelled_answer, reason) = recorded(&pool, swept.order_id).await;
    assert!(created_answer.is_some() && cancelled_answer.is_none());
    assert_eq!(
        reason.as_deref(),
        Some("unrecorded"),
        "and says it was not kept"
    );
    let (created_answer, cancelled_answer, _) = recorded(&pool, cancelled_first.order_id).await;
    assert!(created_answer.is_none() && cancelled_answer.is_some());

    // Asked again after the upgrade: the answers given before.
    sqlx::query("DELETE FROM outbox_pending")
        .execute(&pool)
        .await
        .expect("published");
    let asked = [declined.clone(), swept, cancelled(&cancelled_first, "ivy")];
    let mut tx = pool.begin().await.expect("begins");
    let rows = OrderEvents {
        initial_credit_cents: 0,
        writer: EventWriter::unsigned(SchemaVersion::NEWEST),
    }
    .handle(&mut tx, &asked.iter().collect::<Vec<_>>())
    .await
    .expect("answers again");
    tx.commit().await.expect("commits");
    let answers: Vec<Envelope> = rows
        .iter()
        .map(|row| {
            let pairs = row
                .fields
                .chunks(2)
                .map(|p| (p[0].as_str(), p[1].as_bytes()));
            Envelope::from_fields(pairs).expect("decodes")
        })
        .collect();
    assert_eq!(answers.len(), 3, "{answers:?}");
    assert_eq!(answers[0], answer, "the stored row, as committed");
    let Event::PaymentFailed(failed) = &answers[1].event else {
        panic!("not PaymentFailed: {answers:?}");
    };
    assert_eq!(failed.reason.as_str(), "unrecorded");
    assert_eq!(
        answers[2].event,
        Event::PaymentCancelled(PaymentCancelled {
            order_id: cancelled_first.order_id,
            customer_id: "ivy".into()
        })
    );
}

/// SPEC §3.4, a rollback: a build starts on a database that a newer build migrated
/// further, the newer migration unknown to it.
#[tokio::test]
async fn a_build_starts_on_a_database_a_newer_build_migrated_further() {
    let ctx = TestContext::new();
    let pool = PgPool::connect(&ctx.database().await)
        .await
        .expect("connects");
    let newer = sqlx::migrate::Migration::new(
        999,
        "a column of a newer build".into(),
        sqlx::migrate::MigrationType::Simple,
        sqlx::SqlStr::from_static("ALTER TABLE accounts ADD COLUMN from_a_newer_build INT"),
        false,
    );
    let newer_build = Migrator::with_migrations(MIGRATOR.iter().cloned().chain([newer]).collect());
    newer_build
        .run(&pool)
        .await
        .expect("the newer build's schema");
    MIGRATOR.run(&pool).await.expect("this build starts on it");
}
