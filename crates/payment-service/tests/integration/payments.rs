//! payment-service against real Postgres and Redis: charging, declining, redelivery,
//! entries left pending by a crashed consumer, cancellations in either order, accounts.

use std::time::Duration;

use events::streams::{ORDER_EVENTS, PAYMENT_EVENTS, PAYMENT_SERVICE_GROUP};
use events::{
    Currency, Envelope, Event, FailureReason, OrderCancelled, OrderCreated, OrderItem, Producer,
    SchemaVersion,
};
use serde_json::{Value, json};
use testkit::{ADMIN_TOKEN, Spawned, TestContext, eventually};
use uuid::Uuid;

pub(crate) async fn spawn(ctx: &TestContext, extra: &[&str]) -> Spawned {
    ctx.spawn("payment-service", extra, payment_service::start)
        .await
}

pub(crate) fn created(customer: &str, total_cents: i64) -> Envelope {
    let order_id = Uuid::now_v7();
    Envelope::new(
        Producer::OrderService,
        Event::OrderCreated(OrderCreated {
            order_id,
            customer_id: customer.into(),
            items: vec![OrderItem {
                sku: "sku".into(),
                quantity: 1,
                unit_price_cents: total_cents,
            }],
            total_cents,
            currency: Currency::parse("EUR").expect("valid"),
            pay_by: Some(time::OffsetDateTime::now_utc() + time::Duration::hours(1)),
        }),
    )
}

pub(crate) fn cancelled(order: &Envelope, customer: &str) -> Envelope {
    Envelope::new(
        Producer::OrderService,
        Event::OrderCancelled(OrderCancelled {
            order_id: order.order_id,
            customer_id: customer.into(),
            reason: "customer request".into(),
        }),
    )
}

/// The decoded events on `payment-events`.
pub(crate) async fn outcomes(ctx: &TestContext) -> Vec<Envelope> {
    ctx.entries(PAYMENT_EVENTS)
        .await
        .into_iter()
        .map(|(_, fields)| {
            Envelope::from_fields(fields.iter().map(|(k, v)| (k.as_str(), v.as_bytes())))
                .expect("decodes")
        })
        .collect()
}

pub(crate) async fn wait_for_outcomes(ctx: &TestContext, n: usize) -> Vec<Envelope> {
    eventually(
        &format!("{n} outcomes on payment-events"),
        Duration::from_secs(5),
        || async {
            let found = outcomes(ctx).await;
            if found.len() >= n {
                Ok(found)
            } else {
                Err(format!("{} outcomes", found.len()))
            }
        },
    )
    .await
}

pub(crate) async fn balance(app: &Spawned, customer: &str) -> i64 {
    let (status, account) = app.get_json(&format!("/accounts/{customer}")).await;
    assert_eq!(status, 200, "{account}");
    account["balance_cents"].as_i64().expect("balance")
}

pub(crate) async fn payments(app: &Spawned, order: &Envelope) -> Vec<Value> {
    let (status, list) = app
        .get_json(&format!("/payments?order_id={}", order.order_id))
        .await;
    assert_eq!(status, 200, "{list}");
    list.as_array().cloned().expect("a list")
}

#[tokio::test]
async fn an_order_is_charged_and_answered_with_payment_completed() {
    let ctx = TestContext::new();
    let app = spawn(&ctx, &[]).await;
    let order = created("bob", 2500);
    ctx.xadd(ORDER_EVENTS, &order.to_fields()).await;

    let outcome = wait_for_outcomes(&ctx, 1).await.remove(0);
    let Event::PaymentCompleted(paid) = &outcome.event else {
        panic!("not PaymentCompleted: {outcome:?}")
    };
    assert_eq!(
        (paid.order_id, paid.amount_cents, paid.customer_id.as_str()),
        (order.order_id, 2500, "bob")
    );
    assert_eq!(outcome.producer, Producer::PaymentService);
    assert_eq!(balance(&app, "bob").await, 100_000 - 2500);

    let listed = payments(&app, &order).await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["id"], json!(paid.payment_id.to_string()));
    let (status, payment) = app
        .get_json(&format!("/payments/{}", paid.payment_id))
        .await;
    assert_eq!((status, &payment["status"]), (200, &json!("COMPLETED")));
    let (status, _) = app.get_json(&format!("/payments/{}", Uuid::now_v7())).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn a_redelivered_event_has_no_second_effect() {
    let ctx = TestContext::new();
    let app = spawn(&ctx, &[]).await;
    let order = created("carol", 1000);
    // The same event twice (as after a relay crash between XADD and commit, or a
    // re-publish after broker loss): two entries, one event_id.
    ctx.xadd(ORDER_EVENTS, &order.to_fields()).await;
    ctx.xadd(ORDER_EVENTS, &order.to_fields()).await;
    ctx.drained(ORDER_EVENTS, PAYMENT_SERVICE_GROUP).await;

    assert_eq!(payments(&app, &order).await.len(), 1);
    assert_eq!(balance(&app, "carol").await, 100_000 - 1000, "debited once");
    // The repeat may be answered with the recorded outcome again (if it had gone out
    // already): the same event, never a second one.
    let published = wait_for_outcomes(&ctx, 1).await;
    let distinct: std::collections::HashSet<_> = published.iter().map(|e| e.event_id).collect();
    assert_eq!(
        distinct.len(),
        1,
        "one PaymentCompleted, re-published: {published:?}"
    );
    let inbox: i64 = sqlx::query_scalar("SELECT count(*) FROM inbox WHERE event_id = $1")
        .bind(order.event_id)
        .fetch_one(&app.pool)
        .await
        .expect("count");
    assert_eq!(inbox, 1);
}

#[tokio::test]
async fn entries_a_crashed_consumer_left_pending_are_finished_on_restart() {
    let ctx = TestContext::new();
    let first = spawn(&ctx, &["--consumer-name", "payments-0"]).await;
    let database_url = first.database_url.clone();
    first.stop().await.expect("clean stop");

    // A consumer named payments-0 reads an entry and dies before acking it.
    let order = created("dave", 700);
    ctx.xadd(ORDER_EVENTS, &order.to_fields()).await;
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg(PAYMENT_SERVICE_GROUP)
        .arg("payments-0")
        .arg("COUNT")
        .arg(10)
        .arg("STREAMS")
        .arg(ctx.stream(ORDER_EVENTS))
        .arg(">")
        .query_async(&mut ctx.redis().await)
        .await
        .expect("read");
    assert_eq!(
        ctx.group_backlog(ORDER_EVENTS, PAYMENT_SERVICE_GROUP).await,
        Some((1, 0)),
        "delivered, not acked"
    );

    let restarted = ctx
        .spawn_on(
            "payment-service",
            &database_url,
            &["--consumer-name", "payments-0"],
            payment_service::start,
        )
        .await;
    ctx.drained(ORDER_EVENTS, PAYMENT_SERVICE_GROUP).await;
    assert_eq!(payments(&restarted, &order).await.len(), 1);
    assert_eq!(balance(&restarted, "dave").await, 100_000 - 700);
}

#[tokio::test]
async fn an_order_over_the_balance_is_declined_and_charges_nothing() {
    let ctx = TestContext::new();
    let app = spawn(&ctx, &["--initial-credit-cents", "1000"]).await;
    let order = created("erin", 1001);
    ctx.xadd(ORDER_EVENTS, &order.to_fields()).await;

    let outcome = wait_for_outcomes(&ctx, 1).await.remove(0);
    let Event::PaymentFailed(failed) = &outcome.event else {
        panic!("not PaymentFailed: {outcome:?}")
    };
    assert_eq!(
        (failed.order_id, failed.reason.as_str()),
        (order.order_id, "insufficient_funds")
    );
    assert_eq!(balance(&app, "erin").await, 1000);
    assert!(payments(&app, &order).await.is_empty());
}

#[tokio::test]
async fn a_cancellation_seen_first_means_the_order_is_never_charged() {
    let ctx = TestContext::new();
    let app = spawn(&ctx, &[]).await;
    let order = created("fay", 500);
    ctx.xadd(ORDER_EVENTS, &cancelled(&order, "fay").to_fields())
        .await;
    ctx.xadd(ORDER_EVENTS, &order.to_fields()).await;

    let outcomes = wait_for_outcomes(&ctx, 2).await;
    let Event::PaymentCancelled(settled) = &outcomes[0].event else {
        panic!("the cancellation is answered first: {outcomes:?}")
    };
    assert_eq!(settled.order_id, order.order_id);
    let Event::PaymentFailed(failed) = &outcomes[1].event else {
        panic!("not PaymentFailed: {outcomes:?}")
    };
    assert_eq!(failed.reason.as_str(), "order_cancelled");
    assert!(payments(&app, &order).await.is_empty());
    assert_eq!(balance(&app, "fay").await, 100_000);
}

#[tokio::test]
async fn every_cancellation_is_answered_once_and_a_repeat_gets_the_same_answer() {
    let ctx = TestContext::new();
    let app = spawn(&ctx, &[]).await;
    let unseen = created("hal", 100);
    let paid = created("hal", 4200);
    let declined = created("hal", 1_000_000);
    for order in [&paid, &declined] {
        ctx.xadd(ORDER_EVENTS, &order.to_fields()).await;
    }
    wait_for_outcomes(&ctx, 2).await;
    let cancels: Vec<Envelope> = [&unseen, &paid, &declined]
        .iter()
        .map(|order| cancelled(order, "hal"))
        .collect();
    for cancel in &cancels {
        ctx.xadd(ORDER_EVENTS, &cancel.to_fields()).await;
    }
    let answers: Vec<Envelope> = wait_for_outcomes(&ctx, 5).await.split_off(2);
    let kinds: Vec<(uuid::Uuid, &str)> = answers
        .iter()
        .map(|a| (a.order_id, a.event_type().as_str()))
        .collect();
    assert_eq!(
        kinds,
        [
            (unseen.order_id, "PaymentCancelled"),
            (paid.order_id, "PaymentRefunded"),
            (declined.order_id, "PaymentCancelled"),
        ],
        "one answer per cancellation: refunded, or nothing was or will be charged"
    );
    assert_eq!(balance(&app, "hal").await, 100_000);

    // order-service did not hear the answers and asks again, same events.
    for cancel in &cancels {
        ctx.xadd(ORDER_EVENTS, &cancel.to_fields()).await;
    }
    let again: Vec<Envelope> = wait_for_outcomes(&ctx, 8).await.split_off(5);
    let ids = |events: &[Envelope]| {
        let mut ids: Vec<uuid::Uuid> = events.iter().map(|e| e.event_id).collect();
        ids.sort();
        ids
    };
    assert_eq!(
        ids(&again),
        ids(&answers),
        "the recorded answers, same event_ids"
    );
    assert_eq!(balance(&app, "hal").await, 100_000, "no second refund");
    assert_eq!(payments(&app, &paid).await[0]["status"], "REFUNDED");
}

#[tokio::test]
async fn a_cancellation_after_payment_is_refunded() {
    let ctx = TestContext::new();
    let app = spawn(&ctx, &[]).await;
    let order = created("gus", 4200);
    ctx.xadd(ORDER_EVENTS, &order.to_fields()).await;
    wait_for_outcomes(&ctx, 1).await;
    assert_eq!(balance(&app, "gus").await, 100_000 - 4200);

    ctx.xadd(ORDER_EVENTS, &cancelled(&order, "gus").to_fields())
        .await;
    let outcome = wait_for_outcomes(&ctx, 2).await.remove(1);
    let Event::PaymentRefunded(refund) = &outcome.event else {
        panic!("not PaymentRefunded: {outcome:?}")
    };
    assert_eq!(
        (refund.order_id, refund.amount_cents),
        (order.order_id, 4200)
    );
    assert_eq!(balance(&app, "gus").await, 100_000);
    assert_eq!(payments(&app, &order).await[0]["status"], "REFUNDED");
}

#[tokio::test]
async fn events_published_before_the_group_existed_are_processed() {
    let ctx = TestContext::new();
    let order = created("hal", 300);
    ctx.xadd(ORDER_EVENTS, &order.to_fields()).await;
    assert_eq!(
        ctx.group_backlog(ORDER_EVENTS, PAYMENT_SERVICE_GROUP).await,
        None,
        "no group yet"
    );

    let app = spawn(&ctx, &[]).await;
    ctx.drained(ORDER_EVENTS, PAYMENT_SERVICE_GROUP).await;
    assert_eq!(payments(&app, &order).await.len(), 1);
}

#[tokio::test]
async fn an_unused_account_shows_the_initial_credit() {
    let ctx = TestContext::new();
    let app = spawn(&ctx, &["--initial-credit-cents", "5000"]).await;
    let (status, account) = app.get_json("/accounts/nobody-yet").await;
    assert_eq!(status, 200);
    assert_eq!(
        account,
        json!({"customer_id": "nobody-yet", "balance_cents": 5000, "currency": null})
    );
}

#[tokio::test]
async fn deposits_add_funds_behind_the_admin_token() {
    let ctx = TestContext::new();
    let app = spawn(
        &ctx,
        &[
            "--admin-token",
            ADMIN_TOKEN,
            "--initial-credit-cents",
            "1000",
        ],
    )
    .await;
    let url = app.url("/accounts/ivy/deposits");
    let response = app
        .http
        .post(&url)
        .json(&json!({"amount_cents": 500}))
        .send()
        .await
        .expect("answers");
    assert_eq!(response.status(), 401);
    let deposit = |body: Value| {
        app.http
            .post(&url)
            .bearer_auth(ADMIN_TOKEN)
            .json(&body)
            .send()
    };

    let response = deposit(json!({"amount_cents": 500}))
        .await
        .expect("answers");
    assert_eq!(response.status(), 200);
    let account: Value = response.json().await.expect("JSON");
    assert_eq!(
        account,
        json!({"customer_id": "ivy", "balance_cents": 1500, "currency": null})
    );
    assert_eq!(balance(&app, "ivy").await, 1500);

    for bad in [
        json!({"amount_cents": 0}),
        json!({"amount_cents": -5}),
        json!({"amount_cents": 1_000_000_000_001_i64}),
    ] {
        let response = deposit(bad.clone()).await.expect("answers");
        assert_eq!(response.status(), 422, "{bad}");
    }
    for _ in 0..999 {
        if deposit(json!({"amount_cents": 1_000_000_000_000_i64}))
            .await
            .expect("answers")
            .status()
            == 422
        {
            break;
        }
    }
    let response = deposit(json!({"amount_cents": 1_000_000_000_000_i64}))
        .await
        .expect("answers");
    assert_eq!(
        response.status(),
        422,
        "the balance has a ceiling, and hitting it is no 500"
    );
}

#[tokio::test]
async fn a_deposit_retried_with_its_idempotency_key_credits_once() {
    let ctx = TestContext::new();
    let app = spawn(&ctx, &["--admin-token", ADMIN_TOKEN]).await;
    let url = app.url("/accounts/jon/deposits");
    let deposit = |key: &str, amount: i64| {
        app.http
            .post(&url)
            .bearer_auth(ADMIN_TOKEN)
            .header("idempotency-key", key)
            .json(&json!({ "amount_cents": amount }))
            .send()
    };

    // The first answer was lost (a 503 past the deadline, say): retried, concurrently too.
    let attempts = futures::future::join_all((0..4).map(|_| deposit("top-up-1", 700))).await;
    let mut replayed = 0;
    for attempt in attempts {
        let response = attempt.expect("answers");
        assert_eq!(response.status(), 200);
        replayed += usize::from(response.headers().contains_key("idempotent-replayed"));
    }
    assert_eq!(replayed, 3, "one deposit made, three replayed");
    assert_eq!(balance(&app, "jon").await, 100_700, "credited once");

    let other = deposit("top-up-1", 900).await.expect("answers");
    assert_eq!(other.status(), 422, "the key was used with another amount");
    let bad_key = deposit("", 900).await.expect("answers");
    assert_eq!(bad_key.status(), 400);
    let next = deposit("top-up-2", 300).await.expect("answers");
    assert_eq!(next.status(), 200);
    assert_eq!(balance(&app, "jon").await, 101_000);
    let deposits: i64 = sqlx::query_scalar("SELECT count(*) FROM deposits")
        .fetch_one(&app.pool)
        .await
        .expect("count");
    assert_eq!(deposits, 2);
}

#[tokio::test]
async fn deposits_do_not_exist_without_an_admin_token() {
    let ctx = TestContext::new();
    let app = spawn(&ctx, &[]).await;
    let response = app
        .http
        .post(app.url("/accounts/ivy/deposits"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"amount_cents": 500}))
        .send()
        .await
        .expect("answers");
    assert_eq!(response.status(), 404);
}

/// SPEC §4.9: a question asked again is answered from payment-service's own record of
/// what it did (the saga row, the payment), not from its outbox: whatever
/// `OUTBOX_RETENTION_HOURS` is, the sweeper may have deleted the answer long ago.
#[tokio::test]
async fn a_question_asked_after_the_outbox_forgot_the_answer_gets_the_same_answer() {
    let ctx = TestContext::new();
    let app = spawn(&ctx, &["--initial-credit-cents", "10000"]).await;
    let paid = created("ida", 4200);
    let declined = created("ida", 1_000_000);
    let refunded = created("ida", 300);
    let cancelled_first = created("ida", 500);
    let questions = [
        paid.clone(),
        declined.clone(),
        refunded.clone(),
        cancelled(&refunded, "ida"),
        cancelled(&cancelled_first, "ida"),
        cancelled_first.clone(),
        cancelled(&declined, "ida"),
    ];
    for question in &questions {
        ctx.xadd(ORDER_EVENTS, &question.to_fields()).await;
    }
    let answers = wait_for_outcomes(&ctx, questions.len()).await;
    let balance_after = balance(&app, "ida").await;
    assert_eq!(balance_after, 10_000 - 4200);

    // The answers are long gone from the outbox (the sweeper's work, at any retention).
    sqlx::query("DELETE FROM outbox")
        .execute(&app.pool)
        .await
        .expect("outbox emptied");
    let same = |again: &[Envelope]| {
        let key = |e: &Envelope| (e.event_id, e.event.clone());
        let mut again: Vec<_> = again.iter().map(key).collect();
        let mut first: Vec<_> = answers.iter().map(key).collect();
        again.sort_by_key(|(id, _)| *id);
        first.sort_by_key(|(id, _)| *id);
        assert_eq!(
            again, first,
            "the recorded answers, same event_ids and content"
        );
    };
    // order-service did not hear them and asks again: the same events (the inbox
    // remembers them), then, once the inbox forgot them too, the same events again.
    for question in &questions {
        ctx.xadd(ORDER_EVENTS, &question.to_fields()).await;
    }
    same(&wait_for_outcomes(&ctx, 2 * questions.len()).await[questions.len()..]);
    sqlx::query("DELETE FROM inbox")
        .execute(&app.pool)
        .await
        .expect("inbox emptied");
    for question in &questions {
        ctx.xadd(ORDER_EVENTS, &question.to_fields()).await;
    }
    same(&wait_for_outcomes(&ctx, 3 * questions.len()).await[2 * questions.len()..]);
    assert_eq!(
        balance(&app, "ida").await,
        balance_after,
        "nothing moved twice"
    );
    assert_eq!(payments(&app, &paid).await[0]["status"], "COMPLETED");
    assert_eq!(payments(&app, &refunded).await[0]["status"], "REFUNDED");
}

/// SPEC §3.4: a version-2 `OrderCreated` carries its payment deadline, and nothing is
/// charged after it (`PaymentFailed(payment_expired)`); a later cancellation of it is
/// confirmed with nothing to refund. Version 1 has no deadline: such an order is charged.
#[tokio::test]
async fn nothing_is_charged_after_the_payment_deadline() {
    let ctx = TestContext::new();
    let app = spawn(&ctx, &[]).await;
    let mut late = created("gus", 700);
    if let Event::OrderCreated(order) = &mut late.event {
        order.pay_by = Some(time::OffsetDateTime::now_utc() - time::Duration::seconds(1));
    }
    ctx.xadd(ORDER_EVENTS, &late.to_fields_as(SchemaVersion::V2))
        .await;
    let declined = wait_for_outcomes(&ctx, 1).await.remove(0);
    let Event::PaymentFailed(failed) = &declined.event else {
        panic!("not PaymentFailed: {declined:?}")
    };
    assert_eq!(failed.reason, FailureReason::PaymentExpired);
    assert!(payments(&app, &late).await.is_empty());
    assert_eq!(balance(&app, "gus").await, 100_000, "not charged");
    let answers_version = ctx.entries(PAYMENT_EVENTS).await[0]
        .1
        .iter()
        .find(|(k, _)| k == "schema_version")
        .map(|(_, v)| v.clone());
    assert_eq!(
        answers_version.as_deref(),
        Some("1"),
        "answers are written as the default version"
    );

    ctx.xadd(ORDER_EVENTS, &cancelled(&late, "gus").to_fields())
        .await;
    let confirmed = wait_for_outcomes(&ctx, 2).await.remove(1);
    assert!(
        matches!(confirmed.event, Event::PaymentCancelled(_)),
        "{confirmed:?}"
    );

    let mut undated = created("gus", 700);
    if let Event::OrderCreated(order) = &mut undated.event {
        order.pay_by = Some(time::OffsetDateTime::now_utc() - time::Duration::seconds(1));
    }
    ctx.xadd(ORDER_EVENTS, &undated.to_fields_as(SchemaVersion::V1))
        .await;
    let charged = wait_for_outcomes(&ctx, 3).await.remove(2);
    assert!(
        matches!(charged.event, Event::PaymentCompleted(_)),
        "version 1 carries no deadline: {charged:?}"
    );
    assert_eq!(balance(&app, "gus").await, 100_000 - 700);
}
