//! order-service business flows (SPEC §5.1, §6.1): cancellation, races between a
//! cancellation and payment outcomes, Idempotency-Key, and the paginated listing.

use std::collections::HashSet;
use std::time::Duration;

use events::streams::ORDER_EVENTS;
use events::{
    Envelope, Event, FailureReason, PaymentCancelled, PaymentFailed, PaymentRefunded, Producer,
};
use futures::future::join_all;
use order_service::orders;
use serde_json::{Value, json};
use service_runtime::outbox;
use testkit::{Spawned, TestContext, eventually};
use uuid::Uuid;

use crate::support::{
    alice_order, completed, count, eur, let_the_reconciler_run, order_when, place, publish, spawn,
};

async fn cancel(app: &Spawned, id: Uuid) -> (u16, Value) {
    let response = app
        .http
        .post(app.url(&format!("/orders/{id}/cancel")))
        .send()
        .await
        .expect("answers");
    let status = response.status().as_u16();
    (status, response.json().await.expect("JSON"))
}

#[tokio::test]
async fn cancelling_a_pending_order_publishes_order_cancelled() {
    let ctx = TestContext::new();
    let app = spawn(&ctx).await;
    let (_, id) = place(&app, &alice_order()).await;
    let (status, order) = cancel(&app, id).await;
    assert_eq!((status, &order["status"]), (200, &json!("CANCELLED")));

    let cancelled = eventually(
        "OrderCancelled on order-events",
        std::time::Duration::from_secs(5),
        || async {
            let found: Vec<Envelope> = ctx
                .entries(ORDER_EVENTS)
                .await
                .iter()
                .filter_map(|(_, f)| {
                    Envelope::from_fields(f.iter().map(|(k, v)| (k.as_str(), v.as_bytes()))).ok()
                })
                .filter(|e| matches!(e.event, Event::OrderCancelled(_)))
                .collect();
            if found.is_empty() {
                Err("none yet".to_owned())
            } else {
                Ok(found)
            }
        },
    )
    .await;
    assert_eq!(cancelled.len(), 1);
    assert_eq!(cancelled[0].order_id, id);
}

#[tokio::test]
async fn cancelling_a_final_order_is_a_conflict_and_an_unknown_one_not_found() {
    let ctx = TestContext::new();
    let app = spawn(&ctx).await;
    let (_, declined) = place(&app, &alice_order()).await;
    publish(
        &ctx,
        &Envelope::new(
            Producer::PaymentService,
            Event::PaymentFailed(PaymentFailed {
                order_id: declined,
                customer_id: "alice".into(),
                amount_cents: 2800,
                currency: eur(),
                reason: FailureReason::InsufficientFunds,
            }),
        ),
    )
    .await;
    order_when(&app, declined, "PAYMENT_FAILED", |o| {
        o["status"] == "PAYMENT_FAILED"
    })
    .await;
    let (status, problem) = cancel(&app, declined).await;
    assert_eq!(
        (status, &problem["status"]),
        (409, &json!(409)),
        "{problem}"
    );

    let (_, cancelled) = place(&app, &alice_order()).await;
    assert_eq!(cancel(&app, cancelled).await.0, 200);
    assert_eq!(cancel(&app, cancelled).await.0, 409, "cancelling twice");
    assert_eq!(cancel(&app, Uuid::now_v7()).await.0, 404);
    assert_eq!(
        count(&app, "cancellations").await,
        1,
        "only the successful cancel published"
    );
}

#[tokio::test]
async fn concurrent_cancellations_of_one_order_are_serialised() {
    let ctx = TestContext::new();
    let app = spawn(&ctx).await;
    let (_, id) = place(&app, &alice_order()).await;
    let attempts = (0..10).map(|_| cancel(&app, id));
    let statuses: Vec<u16> = join_all(attempts)
        .await
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 409).count(),
        9,
        "{statuses:?}"
    );
    assert_eq!(count(&app, "cancellations").await, 1);
}

#[tokio::test]
async fn a_payment_arriving_after_cancellation_leaves_the_order_cancelled() {
    let ctx = TestContext::new();
    let app = spawn(&ctx).await;
    let (_, id) = place(&app, &alice_order()).await;
    assert_eq!(cancel(&app, id).await.0, 200);
    let payment_id = Uuid::now_v7();
    publish(&ctx, &completed(id, payment_id, 2800)).await;
    let order = order_when(&app, id, "the late payment to be recorded", |o| {
        o["payment_id"] != Value::Null
    })
    .await;
    assert_eq!(
        order["status"], "CANCELLED",
        "a payment does not revive a cancelled order"
    );

    // payment-service saw the cancellation too and refunds; the order shows it.
    publish(
        &ctx,
        &Envelope::new(
            Producer::PaymentService,
            Event::PaymentRefunded(PaymentRefunded {
                payment_id,
                order_id: id,
                customer_id: "alice".into(),
                amount_cents: 2800,
                currency: eur(),
            }),
        ),
    )
    .await;
    let order = order_when(&app, id, "the refund to show", |o| {
        o["refunded_at"] != Value::Null
    })
    .await;
    assert_eq!(order["status"], "CANCELLED");
}

#[tokio::test]
async fn cancelling_a_paid_order_publishes_order_cancelled_for_the_refund() {
    let ctx = TestContext::new();
    let app = spawn(&ctx).await;
    let (_, id) = place(&app, &alice_order()).await;
    publish(&ctx, &completed(id, Uuid::now_v7(), 2800)).await;
    order_when(&app, id, "PAID", |o| o["status"] == "PAID").await;
    let (status, order) = cancel(&app, id).await;
    assert_eq!((status, &order["status"]), (200, &json!("CANCELLED")));
    assert_eq!(count(&app, "cancellations").await, 1);
}

fn with_key(app: &Spawned, key: &str, body: &Value) -> reqwest::RequestBuilder {
    app.http
        .post(app.url("/orders"))
        .header("Idempotency-Key", key)
        .json(body)
}

#[tokio::test]
async fn a_repeated_request_with_its_idempotency_key_gets_the_same_order() {
    let ctx = TestContext::new();
    let app = spawn(&ctx).await;
    let first = with_key(&app, "key-1", &alice_order())
        .send()
        .await
        .expect("answers");
    assert_eq!(first.status(), 201);
    let first: Value = first.json().await.expect("JSON");
    let again = with_key(&app, "key-1", &alice_order())
        .send()
        .await
        .expect("answers");
    assert_eq!(again.status(), 201);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    let again: Value = again.json().await.expect("JSON");
    assert_eq!(again["id"], first["id"]);
    assert_eq!(
        (count(&app, "orders").await, count(&app, "outbox").await),
        (1, 1),
        "no second order, no second event"
    );

    let mut other = alice_order();
    other["items"][0]["quantity"] = json!(3);
    let response = with_key(&app, "key-1", &other)
        .send()
        .await
        .expect("answers");
    assert_eq!(response.status(), 422, "same key, other body");
    for bad in ["", &"k".repeat(256), "with space"] {
        let response = with_key(&app, bad, &alice_order())
            .send()
            .await
            .expect("answers");
        assert_eq!(response.status(), 400, "key {bad:?}");
    }
    assert_eq!(count(&app, "orders").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_with_one_key_create_one_order() {
    let ctx = TestContext::new();
    let app = spawn(&ctx).await;
    let requests =
        (0..8).map(|_| async { with_key(&app, "same-key", &alice_order()).send().await });
    let responses = join_all(requests).await;
    let mut ids = HashSet::new();
    for response in responses {
        let response = response.expect("answers");
        assert_eq!(response.status(), 201);
        ids.insert(response.json::<Value>().await.expect("JSON")["id"].clone());
    }
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert_eq!(
        (count(&app, "orders").await, count(&app, "outbox").await),
        (1, 1)
    );
}

async fn page(app: &Spawned, query: &str) -> (u16, Value) {
    app.get_json(&format!("/orders?{query}")).await
}

#[tokio::test]
async fn orders_are_listed_in_stable_pages() {
    let ctx = TestContext::new();
    let app = spawn(&ctx).await;
    let mut placed = Vec::new();
    for i in 0..25 {
        let mut body = alice_order();
        body["customer_id"] = json!(if i % 5 == 0 { "bob" } else { "alice" });
        placed.push(place(&app, &body).await.1);
    }
    let alice: Vec<Uuid> = placed
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 5 != 0)
        .map(|(_, id)| *id)
        .collect();

    // Page through alice's orders, 7 at a time, while more orders arrive between pages.
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let query = match &after {
            Some(after) => format!("customer_id=alice&limit=7&after={after}"),
            None => "customer_id=alice&limit=7".to_owned(),
        };
        let (status, body) = page(&app, &query).await;
        assert_eq!(status, 200, "{body}");
        for order in body["orders"].as_array().expect("a list") {
            assert_eq!(order["customer_id"], "alice");
            seen.push(
                order["id"]
                    .as_str()
                    .and_then(|s| s.parse::<Uuid>().ok())
                    .expect("id"),
            );
        }
        match body["next_after"].as_str() {
            Some(next) => after = Some(next.to_owned()),
            None => break,
        }
        if seen.len() < 20 {
            place(&app, &alice_order()).await; // a concurrent insert
        }
    }
    assert_eq!(
        seen[..20],
        alice[..],
        "the orders that existed come first, in order, once each"
    );
    assert_eq!(
        seen.iter().collect::<HashSet<_>>().len(),
        seen.len(),
        "no order twice"
    );

    let (_, bobs) = page(&app, "customer_id=bob&status=PENDING").await;
    assert_eq!(bobs["orders"].as_array().map(Vec::len), Some(5));
    let (_, capped) = page(&app, "limit=1000").await;
    assert_eq!(
        capped["orders"].as_array().map(Vec::len),
        Some(25 + seen.len() - 20),
        "at most 100, all here"
    );
    for bad in ["status=SHIPPED", "limit=0", "limit=x", "after=not-a-uuid"] {
        let (status, problem) = page(&app, bad).await;
        assert_eq!((status, &problem["status"]), (400, &json!(400)), "{bad}");
    }
}

/// The `OrderCancelled` entries on `order-events` for `id`, as (entry id, event id).
async fn cancellations_of(ctx: &TestContext, id: Uuid) -> Vec<(String, Uuid)> {
    ctx.entries(ORDER_EVENTS)
        .await
        .into_iter()
        .filter_map(|(entry, f)| {
            let e = Envelope::from_fields(f.iter().map(|(k, v)| (k.as_str(), v.as_bytes())));
            e.ok()
                .filter(|e| matches!(e.event, Event::OrderCancelled(_)) && e.order_id == id)
                .map(|e| (entry, e.event_id))
        })
        .collect()
}

#[tokio::test]
async fn a_cancellation_is_sent_again_until_payment_service_confirms_it() {
    let ctx = TestContext::new();
    let app = ctx
        .spawn(
            "order-service",
            &["--pending-republish-after-ms", "200"],
            order_service::start,
        )
        .await;
    let (_, id) = place(&app, &alice_order()).await;
    let (status, order) = cancel(&app, id).await;
    assert_eq!(status, 200);
    assert_eq!(order["cancellation_confirmed_at"], Value::Null);

    // No answer: the same OrderCancelled (same event_id) goes out again and again.
    let asked = eventually(
        "OrderCancelled sent again",
        std::time::Duration::from_secs(5),
        || async {
            let sent = cancellations_of(&ctx, id).await;
            if sent.len() >= 2 {
                Ok(sent)
            } else {
                Err(format!("{sent:?}"))
            }
        },
    )
    .await;
    assert!(asked.iter().all(|(_, event_id)| *event_id == asked[0].1));

    let answer = Envelope::new(
        Producer::PaymentService,
        Event::PaymentCancelled(PaymentCancelled {
            order_id: id,
            customer_id: "alice".into(),
        }),
    );
    publish(&ctx, &answer).await;
    let confirmed = order_when(&app, id, "the cancellation to be confirmed", |o| {
        o["cancellation_confirmed_at"].is_string()
    })
    .await;
    assert_eq!(confirmed["status"], "CANCELLED");
    assert_eq!(confirmed["refunded_at"], Value::Null, "nothing was charged");

    // Confirmed: asked no more (within several reconciler rounds).
    let settled = cancellations_of(&ctx, id).await.len();
    let_the_reconciler_run().await;
    assert_eq!(cancellations_of(&ctx, id).await.len(), settled);
}

#[tokio::test]
async fn the_sweeper_keeps_every_question_whose_answer_has_not_arrived() {
    let ctx = TestContext::new();
    let app = spawn(&ctx).await;
    let (_, paid) = place(&app, &alice_order()).await;
    let (_, waiting) = place(&app, &alice_order()).await;
    let (_, cancelled) = place(&app, &alice_order()).await;
    publish(&ctx, &completed(paid, Uuid::now_v7(), 2800)).await;
    order_when(&app, paid, "PAID", |o| o["status"] == "PAID").await;
    cancel(&app, cancelled).await;
    eventually(
        "every event published",
        std::time::Duration::from_secs(5),
        || async {
            let unpublished: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox_pending")
                .fetch_one(&app.pool)
                .await
                .map_err(|e| e.to_string())?;
            if unpublished == 0 {
                Ok(())
            } else {
                Err(format!("{unpublished} unpublished"))
            }
        },
    )
    .await;

    let sweep =
        || outbox::sweep_published(&app.pool, Duration::ZERO, Some(orders::AWAITING_ANSWER));
    assert_eq!(
        sweep().await.expect("sweeps"),
        2,
        "the answered OrderCreated of paid and cancelled"
    );
    let left = || async {
        let mut rows: Vec<(Uuid, String)> =
            sqlx::query_as("SELECT order_id, event_type FROM outbox ORDER BY id")
                .fetch_all(&app.pool)
                .await
                .expect("rows");
        rows.sort();
        rows
    };
    let mut expected = vec![
        (waiting, "OrderCreated".to_owned()),
        (cancelled, "OrderCancelled".to_owned()),
    ];
    expected.sort();
    assert_eq!(
        left().await,
        expected,
        "unanswered questions are kept whatever their age"
    );

    publish(
        &ctx,
        &Envelope::new(
            Producer::PaymentService,
            Event::PaymentCancelled(PaymentCancelled {
                order_id: cancelled,
                customer_id: "alice".into(),
            }),
        ),
    )
    .await;
    order_when(&app, cancelled, "confirmed", |o| {
        o["cancellation_confirmed_at"].is_string()
    })
    .await;
    assert_eq!(
        sweep().await.expect("sweeps"),
        1,
        "the answered OrderCancelled"
    );
    assert_eq!(left().await, vec![(waiting, "OrderCreated".to_owned())]);
}

#[tokio::test]
async fn idempotency_keys_are_kept_for_their_retention_then_pruned() {
    let ctx = TestContext::new();
    let app = spawn(&ctx).await;
    let body = alice_order();
    let first = with_key(&app, "old-key", &body)
        .send()
        .await
        .expect("answers");
    assert_eq!(first.status(), 201);
    let kept = with_key(&app, "new-key", &body)
        .send()
        .await
        .expect("answers");
    assert_eq!(kept.status(), 201);
    sqlx::query("UPDATE idempotency_keys SET created_at = now() - interval '25 hours' WHERE key = 'old-key'")
        .execute(&app.pool)
        .await
        .expect("ages a key");

    // The service's own pruner may get there first (it runs at start-up too); either way
    // the old key goes and the new one stays.
    let pruned =
        order_service::db::prune_idempotency_keys(&app.pool, Duration::from_secs(24 * 3600));
    assert!(pruned.await.expect("prunes") <= 1);
    let left: Vec<String> = sqlx::query_scalar("SELECT key FROM idempotency_keys")
        .fetch_all(&app.pool)
        .await
        .expect("keys");
    assert_eq!(left, ["new-key"]);
}
