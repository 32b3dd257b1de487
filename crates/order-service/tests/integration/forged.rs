//! Forged payment outcomes (SPEC §4.4, the security read of the consumers): anyone who
//! can `XADD` to `payment-events` can write an entry that decodes. Whatever it claims,
//! an outcome that no honest payment-service writes, or that contradicts the order,
//! changes nothing and ends in the dead-letter stream, and the flow goes on.

use events::streams::{ORDER_SERVICE_GROUP, PAYMENT_EVENTS};
use events::{
    Currency, Envelope, Event, FailureReason, PaymentCompleted, PaymentFailed, PaymentRefunded,
    Producer,
};
use testkit::{Spawned, TestContext};
use uuid::Uuid;

use crate::support::{alice_order, completed, eur, order_when, place, publish, spawn};

/// alice's order totals 2800 EUR.
const TOTAL: i64 = 2800;

fn paid(order_id: Uuid, customer_id: &str, amount_cents: i64, currency: &str) -> Envelope {
    Envelope::new(
        Producer::PaymentService,
        Event::PaymentCompleted(PaymentCompleted {
            payment_id: Uuid::now_v7(),
            order_id,
            customer_id: customer_id.into(),
            amount_cents,
            currency: Currency::parse(currency).expect("valid"),
        }),
    )
}

fn failed(order_id: Uuid, customer_id: &str) -> Envelope {
    Envelope::new(
        Producer::PaymentService,
        Event::PaymentFailed(PaymentFailed {
            order_id,
            customer_id: customer_id.into(),
            amount_cents: TOTAL,
            currency: eur(),
            reason: FailureReason::InsufficientFunds,
        }),
    )
}

/// The fields of `envelope` with `name` set to `value`.
fn with_field(envelope: &Envelope, name: &str, value: &str) -> Vec<(&'static str, String)> {
    let mut fields = envelope.to_fields();
    for (k, v) in &mut fields {
        if *k == name {
            *v = value.to_owned();
        }
    }
    fields
}

/// `events_dead_lettered_total` for this test's `payment-events` and `cause`.
async fn dead_lettered(app: &Spawned, ctx: &TestContext, cause: &str) -> u64 {
    let labels = [
        format!("stream=\"{}\"", ctx.stream(PAYMENT_EVENTS)),
        format!("cause=\"{cause}\""),
    ];
    app.metric("events_dead_lettered_total", &labels).await
}

#[tokio::test]
async fn forged_payment_outcomes_change_nothing_and_are_dead_lettered() {
    let ctx = TestContext::new();
    let app = spawn(&ctx).await;
    let (_, id) = place(&app, &alice_order()).await;

    // Contradicting the order: only order-service's own state can tell.
    let contradicting = [
        paid(id, "alice", 1, "EUR"),
        paid(id, "mallory", TOTAL, "EUR"),
        paid(id, "alice", TOTAL, "USD"),
        failed(id, "mallory"),
    ];
    for forged in &contradicting {
        publish(&ctx, forged).await;
    }
    // Implausible whatever the order: the wrong producer, an amount out of range.
    let mut implausible = vec![with_field(
        &failed(id, "alice"),
        "producer",
        "order-service",
    )];
    for cents in [-TOTAL, i64::MIN] {
        let payload = paid(id, "alice", TOTAL, "EUR")
            .to_fields()
            .into_iter()
            .find(|(k, _)| *k == "payload")
            .map(|(_, v)| {
                v.replace(
                    &format!("\"amount_cents\":{TOTAL}"),
                    &format!("\"amount_cents\":{cents}"),
                )
            })
            .expect("payload");
        implausible.push(with_field(
            &paid(id, "alice", TOTAL, "EUR"),
            "payload",
            &payload,
        ));
    }
    for fields in &implausible {
        ctx.xadd(PAYMENT_EVENTS, fields).await;
    }
    ctx.drained(PAYMENT_EVENTS, ORDER_SERVICE_GROUP).await;

    let (_, order) = app.get_json(&format!("/orders/{id}")).await;
    assert_eq!(order["status"], "PENDING", "{order}");
    assert_eq!(order["payment_id"], serde_json::Value::Null, "{order}");
    let dead = ctx.dead_letters(PAYMENT_EVENTS).await;
    assert_eq!(
        dead.len(),
        contradicting.len() + implausible.len(),
        "every forged entry is dead-lettered: {dead:?}"
    );
    assert_eq!(dead_lettered(&app, &ctx, "rejected").await, 4);
    assert_eq!(dead_lettered(&app, &ctx, "invalid_content").await, 3);

    // The genuine outcome behind them still applies.
    publish(&ctx, &completed(id, Uuid::now_v7(), TOTAL)).await;
    order_when(&app, id, "the genuine payment to apply", |o| {
        o["status"] == "PAID"
    })
    .await;
}

/// SPEC §4.9: events are authenticated. Outcomes that are consistent with the order, so
/// that no content check could tell, move nothing unless payment-service signed them:
/// an unsigned `PaymentCompleted` of the right amount, one signed by order-service's own
/// key (a compromised order-service cannot forge payment-service's events), and a
/// genuine signed `PaymentCompleted` of another order replayed with this order's id. Each
/// is dead-lettered as forged. A genuine answer to a question order-service never asked
/// (the refund of an order it did not cancel) is refused too, as an anomaly.
#[tokio::test]
async fn consistent_outcomes_not_signed_by_payment_service_move_nothing() {
    let ctx = TestContext::new();
    let app = spawn(&ctx).await;
    let (_, id) = place(&app, &alice_order()).await;
    let (_, other) = place(&app, &alice_order()).await;

    let consistent = completed(id, Uuid::now_v7(), TOTAL);
    ctx.xadd_unsigned(PAYMENT_EVENTS, &consistent.to_fields())
        .await;
    let mut signed_by_the_wrong_service: Vec<(String, Vec<u8>)> = consistent
        .to_fields()
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.into_bytes()))
        .collect();
    testkit::signing::sign_with("order-service", &mut signed_by_the_wrong_service);
    ctx.xadd_unsigned(PAYMENT_EVENTS, &signed_by_the_wrong_service)
        .await;
    // A genuine entry of the other order, its order id changed to this one's.
    let mut replayed: Vec<(String, Vec<u8>)> = completed(other, Uuid::now_v7(), TOTAL)
        .to_fields()
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.into_bytes()))
        .collect();
    testkit::signing::sign_with("payment-service", &mut replayed);
    for (name, value) in &mut replayed {
        if name == "order_id" || name == "payload" {
            *value = String::from_utf8_lossy(value)
                .replace(&other.to_string(), &id.to_string())
                .into_bytes();
        }
    }
    ctx.xadd_unsigned(PAYMENT_EVENTS, &replayed).await;

    // Genuine, but nobody asked: a refund of an order never cancelled.
    let refund = Envelope::new(
        Producer::PaymentService,
        Event::PaymentRefunded(PaymentRefunded {
            payment_id: Uuid::now_v7(),
            order_id: id,
            customer_id: "alice".into(),
            amount_cents: TOTAL,
            currency: eur(),
        }),
    );
    publish(&ctx, &refund).await;
    ctx.drained(PAYMENT_EVENTS, ORDER_SERVICE_GROUP).await;

    let (_, order) = app.get_json(&format!("/orders/{id}")).await;
    assert_eq!(order["status"], "PENDING", "{order}");
    assert_eq!(order["refunded_at"], serde_json::Value::Null, "{order}");
    assert_eq!(dead_lettered(&app, &ctx, "forged").await, 3);
    assert_eq!(
        dead_lettered(&app, &ctx, "rejected").await,
        1,
        "the refund nobody asked for"
    );
    let errors: Vec<String> = ctx
        .dead_letters(PAYMENT_EVENTS)
        .await
        .into_iter()
        .filter_map(|(_, f)| {
            f.into_iter()
                .find_map(|(k, v)| (k == "dlq:error").then_some(v))
        })
        .collect();
    assert!(
        errors.iter().any(|e| e.contains("not signed")),
        "{errors:?}"
    );
    assert!(
        errors
            .iter()
            .any(|e| e.contains("not one this service accepts")),
        "{errors:?}"
    );
    assert!(
        errors.iter().any(|e| e.contains("does not match")),
        "{errors:?}"
    );
    assert!(
        errors.iter().any(|e| e.contains("never asked")),
        "{errors:?}"
    );

    // The genuine, signed outcome still applies.
    publish(&ctx, &completed(id, Uuid::now_v7(), TOTAL)).await;
    order_when(&app, id, "the genuine payment to apply", |o| {
        o["status"] == "PAID"
    })
    .await;
}
