//! The payment deadline (SPEC §3.4, §5.1): `OrderCreated` carries `pay_by` when written as
//! schema version 2; an order still `PENDING` at its deadline fails with
//! `payment_expired`, is asked about no more, and its payment is cancelled, so a charge
//! that raced the deadline is refunded.

use std::time::Duration;

use events::streams::ORDER_EVENTS;
use events::{Envelope, Event, PaymentRefunded, Producer};
use serde_json::Value;
use testkit::{Spawned, TestContext};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use uuid::Uuid;

use crate::support::{
    alice_order, completed, eur, let_the_reconciler_run, order_when, place, publish,
};

/// The events of order `id` on `order-events`, with the schema version they were
/// written as.
async fn events_of(ctx: &TestContext, id: Uuid) -> Vec<(String, Event)> {
    ctx.entries(ORDER_EVENTS)
        .await
        .into_iter()
        .filter_map(|(_, fields)| {
            let version = fields
                .iter()
                .find(|(k, _)| k == "schema_version")
                .map(|(_, v)| v.clone())?;
            let e = Envelope::from_fields(fields.iter().map(|(k, v)| (k.as_str(), v.as_bytes())));
            e.ok()
                .filter(|e| e.order_id == id)
                .map(|e| (version, e.event))
        })
        .collect()
}

async fn spawn_with(ctx: &TestContext, args: &[&str]) -> Spawned {
    ctx.spawn("order-service", args, order_service::start).await
}

#[tokio::test]
async fn order_created_carries_the_deadline_when_written_as_version_2() {
    let ctx = TestContext::new();
    let app = spawn_with(
        &ctx,
        &[
            "--write-schema-version",
            "2",
            "--payment-deadline-ms",
            "60000",
        ],
    )
    .await;
    let placed_at = OffsetDateTime::now_utc();
    let (order, id) = place(&app, &alice_order()).await;
    let pay_by = order["pay_by"]
        .as_str()
        .and_then(|t| OffsetDateTime::parse(t, &Rfc3339).ok())
        .expect("the order shows its deadline");
    let ahead = pay_by - placed_at;
    assert!(
        ahead > time::Duration::seconds(55) && ahead < time::Duration::seconds(65),
        "{ahead}"
    );
    let sent = testkit::eventually("OrderCreated published", Duration::from_secs(5), || async {
        match events_of(&ctx, id).await.pop() {
            Some(found) => Ok(found),
            None => Err("nothing yet".to_owned()),
        }
    })
    .await;
    let (version, Event::OrderCreated(created)) = sent else {
        panic!("an OrderCreated: {sent:?}");
    };
    assert_eq!(version, "2");
    assert_eq!(
        created.pay_by,
        Some(pay_by),
        "the event's deadline is the order's"
    );
}

#[tokio::test]
async fn an_order_unpaid_at_its_deadline_fails_expired_and_its_payment_is_cancelled() {
    let ctx = TestContext::new();
    let app = spawn_with(
        &ctx,
        &[
            "--payment-deadline-ms",
            "1000",
            "--pending-republish-after-ms",
            "200",
        ],
    )
    .await;
    let (_, id) = place(&app, &alice_order()).await;
    let expired = order_when(&app, id, "the order to expire", |o| {
        o["status"] == "PAYMENT_FAILED"
    })
    .await;
    assert_eq!(expired["failure_reason"], "payment_expired");
    let cancelled = testkit::eventually(
        "the expired order's payment cancelled",
        Duration::from_secs(5),
        || async {
            let events = events_of(&ctx, id).await;
            let cancellations: Vec<_> = events
                .iter()
                .filter_map(|(version, e)| match e {
                    Event::OrderCancelled(c) => Some((version.clone(), c.reason.clone())),
                    _ => None,
                })
                .collect();
            if cancellations.is_empty() {
                Err(format!("{events:?}"))
            } else {
                Ok(cancellations)
            }
        },
    )
    .await;
    assert_eq!(
        cancelled[0],
        ("1".to_owned(), "payment_expired".to_owned()),
        "written as the default version"
    );

    // A charge that raced the deadline: recorded, the order stays failed, and the refund
    // payment-service answers the cancellation with confirms it.
    let payment_id = Uuid::now_v7();
    publish(&ctx, &completed(id, payment_id, 2800)).await;
    let refund = Envelope::new(
        Producer::PaymentService,
        Event::PaymentRefunded(PaymentRefunded {
            payment_id,
            order_id: id,
            customer_id: "alice".into(),
            amount_cents: 2800,
            currency: eur(),
        }),
    );
    publish(&ctx, &refund).await;
    let settled = order_when(&app, id, "the refund recorded", |o| {
        o["cancellation_confirmed_at"].is_string()
    })
    .await;
    assert_eq!(settled["status"], "PAYMENT_FAILED", "never paid");
    assert_eq!(settled["payment_id"], Value::String(payment_id.to_string()));
    assert!(settled["refunded_at"].is_string());

    // Final: its OrderCreated is asked no more (several reconciler rounds), nor its
    // cancellation, now confirmed.
    let asked = events_of(&ctx, id).await.len();
    let_the_reconciler_run().await;
    assert_eq!(events_of(&ctx, id).await.len(), asked);
}

/// A charge decided after the deadline (by a payment-service reading schema version 1,
/// which does not carry it) never pays the order: it expires, and its payment is
/// cancelled, so the charge is refunded.
#[tokio::test]
async fn a_charge_decided_after_the_deadline_does_not_pay_the_order() {
    let ctx = TestContext::new();
    let app = spawn_with(&ctx, &["--payment-deadline-ms", "60000"]).await;
    let (order, id) = place(&app, &alice_order()).await;
    let pay_by = order["pay_by"]
        .as_str()
        .and_then(|t| OffsetDateTime::parse(t, &Rfc3339).ok())
        .expect("a deadline");
    let mut late = completed(id, Uuid::now_v7(), 2800);
    late.occurred_at = pay_by + time::Duration::milliseconds(1);
    publish(&ctx, &late).await;
    let expired = order_when(&app, id, "the order to expire", |o| {
        o["status"] != "PENDING"
    })
    .await;
    assert_eq!(
        (&expired["status"], &expired["failure_reason"]),
        (
            &Value::from("PAYMENT_FAILED"),
            &Value::from("payment_expired")
        )
    );
    testkit::eventually(
        "the late charge's cancellation",
        Duration::from_secs(5),
        || async {
            let events = events_of(&ctx, id).await;
            if events.iter().any(
                |(_, e)| matches!(e, Event::OrderCancelled(c) if c.reason == "payment_expired"),
            ) {
                Ok(())
            } else {
                Err(format!("{events:?}"))
            }
        },
    )
    .await;
}
