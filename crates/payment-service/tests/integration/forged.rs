//! Forged order events (the security read of the consumers): anyone who can `XADD` to
//! `order-events` can write an entry that decodes. An order no honest order-service
//! writes (signed by another producer, a total that is not the sum of its lines or out
//! of range, an identifier the API refuses), or an event naming another customer than
//! its order's, moves no money, is answered by nothing, and ends in the dead-letter
//! stream.

use events::streams::{ORDER_EVENTS, PAYMENT_SERVICE_GROUP};
use events::{Envelope, Event};
use serde_json::{Value, json};
use testkit::TestContext;

use crate::payments::{balance, cancelled, created, outcomes, payments, spawn, wait_for_outcomes};

/// The fields of `envelope`, its JSON payload changed by `edit`, other fields by `fields`.
fn forge(
    envelope: &Envelope,
    edit: impl Fn(&mut Value),
    fields: &[(&str, &str)],
) -> Vec<(&'static str, String)> {
    let mut out = envelope.to_fields();
    for (k, v) in &mut out {
        if *k == "payload" {
            let mut payload: Value = serde_json::from_str(v).expect("JSON payload");
            edit(&mut payload);
            *v = payload.to_string();
        } else if let Some((_, value)) = fields.iter().find(|(name, _)| name == k) {
            *v = (*value).to_owned();
        }
    }
    out
}

#[tokio::test]
async fn forged_order_events_move_no_money_and_are_dead_lettered() {
    let ctx = TestContext::new();
    let app = spawn(&ctx, &[]).await;
    let genuine = created("ivy", 4200);
    ctx.xadd(ORDER_EVENTS, &genuine.to_fields()).await;
    wait_for_outcomes(&ctx, 1).await;
    assert_eq!(balance(&app, "ivy").await, 100_000 - 4200);

    let forged = [
        // A total that is not the sum of its lines: charge 50000 for a 1-cent item.
        forge(
            &created("ivy", 1),
            |p| p["total_cents"] = json!(50_000),
            &[],
        ),
        // A negative order: would credit the account.
        forge(
            &created("ivy", 1),
            |p| {
                p["total_cents"] = json!(-50_000);
                p["items"][0]["unit_price_cents"] = json!(-50_000);
            },
            &[],
        ),
        // i64::MIN: overflows any arithmetic on it.
        forge(
            &created("ivy", 1),
            |p| {
                p["total_cents"] = json!(i64::MIN);
                p["items"][0]["unit_price_cents"] = json!(i64::MIN);
            },
            &[],
        ),
        // Over the SPEC §6.1 cap on a line.
        forge(
            &created("ivy", 1),
            |p| {
                p["total_cents"] = json!(200_000_000);
                p["items"][0]["unit_price_cents"] = json!(200_000_000);
            },
            &[],
        ),
        // An identifier the API refuses.
        forge(
            &created("ivy", 1),
            |p| p["customer_id"] = json!("i\u{0}vy"),
            &[],
        ),
        // Signed by the service that never writes orders.
        forge(
            &created("ivy", 10),
            |_| {},
            &[("producer", "payment-service")],
        ),
        // The genuine order again, for another customer: must not charge them.
        forge(
            &created("ivy", 4200),
            |p| {
                p["order_id"] = json!(genuine.order_id);
                p["customer_id"] = json!("mallory");
            },
            &[("order_id", &genuine.order_id.to_string())],
        ),
        // A cancellation of ivy's paid order naming someone else.
        cancelled(&genuine, "mallory").to_fields(),
    ];
    for fields in &forged {
        ctx.xadd(ORDER_EVENTS, fields).await;
    }
    ctx.drained(ORDER_EVENTS, PAYMENT_SERVICE_GROUP).await;

    assert_eq!(balance(&app, "ivy").await, 100_000 - 4200, "no money moved");
    assert_eq!(balance(&app, "mallory").await, 100_000, "no money moved");
    assert_eq!(payments(&app, &genuine).await.len(), 1);
    assert_eq!(payments(&app, &genuine).await[0]["status"], "COMPLETED");
    let answered: Vec<_> = outcomes(&ctx).await;
    assert_eq!(
        answered.len(),
        1,
        "only the genuine order is answered: {answered:?}"
    );
    assert!(matches!(answered[0].event, Event::PaymentCompleted(_)));
    let dead = ctx.dead_letters(ORDER_EVENTS).await;
    assert_eq!(
        dead.len(),
        forged.len(),
        "every forged entry is dead-lettered"
    );
}

#[tokio::test]
async fn an_order_created_after_a_cancellation_naming_another_customer_is_still_answered() {
    let ctx = TestContext::new();
    let app = spawn(&ctx, &[]).await;
    let order = created("jan", 700);
    // The cancellation opens the order's saga row, naming someone else: whichever is
    // forged, no money moves, and the order is answered rather than dead-lettered.
    ctx.xadd(ORDER_EVENTS, &cancelled(&order, "mallory").to_fields())
        .await;
    ctx.xadd(ORDER_EVENTS, &order.to_fields()).await;
    let answers = wait_for_outcomes(&ctx, 2).await;
    assert!(
        answers.iter().any(|a| matches!(&a.event,
            Event::PaymentFailed(failed) if failed.order_id == order.order_id
                && failed.reason == events::FailureReason::OrderCancelled)),
        "{answers:?}"
    );
    assert_eq!(balance(&app, "jan").await, 100_000, "nothing charged");
    assert!(ctx.dead_letters(ORDER_EVENTS).await.is_empty());
}

/// SPEC §4.9: events are authenticated. A cancellation of a paid order that is
/// consistent in every field (its order, its customer), which no content check could
/// tell from a real one, refunds nothing unless order-service signed it: unsigned, or
/// signed with payment-service's own key (a compromised payment-service cannot forge
/// order-service's events), it is dead-lettered as forged, and the money stays charged.
#[tokio::test]
async fn a_consistent_cancellation_not_signed_by_order_service_refunds_nothing() {
    let ctx = TestContext::new();
    let app = spawn(&ctx, &[]).await;
    let order = created("kai", 900);
    ctx.xadd(ORDER_EVENTS, &order.to_fields()).await;
    wait_for_outcomes(&ctx, 1).await;
    assert_eq!(balance(&app, "kai").await, 100_000 - 900, "charged");

    let cancel = cancelled(&order, "kai");
    ctx.xadd_unsigned(ORDER_EVENTS, &cancel.to_fields()).await;
    let mut wrong_key: Vec<(String, Vec<u8>)> = cancel
        .to_fields()
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.into_bytes()))
        .collect();
    testkit::signing::sign_with("payment-service", &mut wrong_key);
    ctx.xadd_unsigned(ORDER_EVENTS, &wrong_key).await;
    ctx.drained(ORDER_EVENTS, PAYMENT_SERVICE_GROUP).await;

    assert_eq!(balance(&app, "kai").await, 100_000 - 900, "no refund");
    assert_eq!(outcomes(&ctx).await.len(), 1, "nothing answered");
    assert_eq!(payments(&app, &order).await[0]["status"], "COMPLETED");
    let dead = ctx.dead_letters(ORDER_EVENTS).await;
    assert_eq!(dead.len(), 2, "{dead:?}");
    assert!(
        dead.iter()
            .all(|(_, fields)| fields.iter().any(|(k, v)| k == "dlq:error"
                && (v.contains("not signed") || v.contains("not one this service accepts"))))
    );

    // Signed by order-service, the same cancellation refunds.
    ctx.xadd(ORDER_EVENTS, &cancel.to_fields()).await;
    wait_for_outcomes(&ctx, 2).await;
    assert_eq!(balance(&app, "kai").await, 100_000, "refunded");
}

/// SPEC §4.9 with batch signatures: the entries of one order-service statement share a
/// signature over a hash tree. Each still stands alone: a genuine entry's signature and
/// path put on another order, or given its
/// neighbour's path, moves no money and is dead-lettered as forged, while the untouched
/// entries of the same batch are charged.
#[tokio::test]
async fn an_entry_of_a_batch_signature_changed_or_given_another_path_is_forged() {
    let ctx = TestContext::new();
    let app = spawn(&ctx, &[]).await;
    let orders: Vec<Envelope> = [300, 400, 500, 600]
        .map(|cents| created("lea", cents))
        .into();
    let mut batch: Vec<Vec<(String, Vec<u8>)>> = orders
        .iter()
        .map(|order| {
            order
                .to_fields()
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.into_bytes()))
                .collect()
        })
        .collect();
    testkit::signing::sign_batch_with("order-service", &mut batch);
    let field = |entry: &[(String, Vec<u8>)], name: &str| {
        entry
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .expect("the field")
    };
    // The third's signature and path, put on an order of 50000 of its own.
    let mut moved: Vec<(String, Vec<u8>)> = created("lea", 50_000)
        .to_fields()
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.into_bytes()))
        .collect();
    for name in ["key_id", "signature", "signature_proof"] {
        moved.push((name.to_owned(), field(&batch[2], name)));
    }
    batch[2] = moved;
    // The fourth, given the second's path.
    let path = field(&batch[1], "signature_proof");
    for (k, v) in &mut batch[3] {
        if k == "signature_proof" {
            *v = path.clone();
        }
    }
    for entry in &batch {
        ctx.xadd_unsigned(ORDER_EVENTS, entry).await;
    }
    ctx.drained(ORDER_EVENTS, PAYMENT_SERVICE_GROUP).await;

    assert_eq!(
        balance(&app, "lea").await,
        100_000 - 300 - 400,
        "the untouched two"
    );
    assert_eq!(outcomes(&ctx).await.len(), 2, "only they are answered");
    let dead = ctx.dead_letters(ORDER_EVENTS).await;
    assert_eq!(dead.len(), 2, "{dead:?}");
    assert!(
        dead.iter().all(|(_, fields)| fields
            .iter()
            .any(|(k, v)| k == "dlq:error" && v.contains("does not match the entry"))),
        "{dead:?}"
    );
}
