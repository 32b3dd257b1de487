//! order-service against real Postgres and Redis: placing orders (outbox), bad input,
//! payment outcomes from the stream, poison entries, health and configuration.

use std::time::Duration;

use events::streams::{ORDER_EVENTS, ORDER_SERVICE_GROUP, PAYMENT_EVENTS};
use events::{Envelope, Event, FailureReason, PaymentCompleted, PaymentFailed, Producer};
use serde_json::{Value, json};
use testkit::{ADMIN_TOKEN, TestContext, eventually};
use uuid::Uuid;

use crate::support::{
    alice_order, completed, count, eur, order_when, place, spawn, spawn_with_admin,
};

fn field<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

#[tokio::test]
async fn placing_an_order_commits_it_with_its_event_and_the_relay_publishes_it() {
    let ctx = TestContext::new();
    let app = spawn(&ctx).await;

    let response = app
        .http
        .post(app.url("/orders"))
        .json(&alice_order())
        .send()
        .await
        .expect("answers");
    assert_eq!(response.status(), 201);
    let location = response.headers()["location"]
        .to_str()
        .expect("ascii")
        .to_owned();
    let order: Value = response.json().await.expect("JSON");
    let id = order["id"].as_str().expect("id");
    assert_eq!(location, format!("/orders/{id}"));
    assert_eq!(order["status"], "PENDING");
    assert_eq!(order["total_cents"], 2800, "computed by the server");

    let (status, fetched) = app.get_json(&location).await;
    assert_eq!((status, &fetched["customer_id"]), (200, &json!("alice")));
    assert_eq!(fetched, order, "the order answered is the order as stored");

    let (stored_type, stored_order): (String, Uuid) =
        sqlx::query_as("SELECT event_type, order_id FROM outbox")
            .fetch_one(&app.pool)
            .await
            .expect("one outbox row");
    assert_eq!(
        (stored_type.as_str(), stored_order.to_string().as_str()),
        ("OrderCreated", id)
    );

    let entries = eventually(
        "the relay to publish OrderCreated",
        Duration::from_secs(5),
        || async {
            let entries = ctx.entries(ORDER_EVENTS).await;
            if entries.is_empty() {
                Err("no entry".to_owned())
            } else {
                Ok(entries)
            }
        },
    )
    .await;
    assert_eq!(entries.len(), 1);
    let fields = &entries[0].1;
    for name in [
        "event_id",
        "event_type",
        "schema_version",
        "order_id",
        "occurred_at",
        "producer",
        "payload",
    ] {
        assert!(
            field(fields, name).is_some(),
            "entry lacks {name}: {fields:?}"
        );
    }
    let envelope = Envelope::from_fields(fields.iter().map(|(k, v)| (k.as_str(), v.as_bytes())))
        .expect("decodes");
    let Event::OrderCreated(created) = envelope.event else {
        panic!("not OrderCreated: {envelope:?}")
    };
    assert_eq!(created.order_id.to_string(), id);
    assert_eq!((created.total_cents, created.items.len()), (2800, 2));
    assert_eq!(envelope.producer, Producer::OrderService);

    // The relay marks the row after XADD answered: the entry can be seen before the mark.
    eventually(
        "the relay to mark what it published",
        Duration::from_secs(5),
        || async {
            let unpublished: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox_pending")
                .fetch_one(&app.pool)
                .await
                .expect("count");
            if unpublished == 0 {
                Ok(())
            } else {
                Err(format!("{unpublished} row(s) unmarked"))
            }
        },
    )
    .await;
}

#[tokio::test]
async fn bad_requests_get_problems_and_write_nothing() {
    let ctx = TestContext::new();
    let app = spawn(&ctx).await;
    let post = |body: String, content_type: Option<&'static str>| {
        let mut request = app.http.post(app.url("/orders")).body(body);
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        request.send()
    };
    let json = Some("application/json");
    let too_many_items = json!({"customer_id": "a", "currency": "EUR",
        "items": (0..101).map(|_| json!({"sku": "x", "quantity": 1, "unit_price_cents": 1})).collect::<Vec<_>>()});
    let over_total = json!({"customer_id": "a", "currency": "EUR",
        "items": (0..100).map(|_| json!({"sku": "x", "quantity": 10000, "unit_price_cents": 100_000_000})).collect::<Vec<_>>()});
    let cases: Vec<(String, Option<&'static str>, u16, &str)> = vec![
        ("{not json".into(), json, 400, "malformed JSON"),
        (alice_order().to_string(), None, 415, "no content type"),
        (alice_order().to_string(), Some("text/plain"), 415, "wrong content type"),
        (format!(r#"{{"customer_id":"{}","currency":"EUR","items":[]}}"#, "a".repeat(70 * 1024)), json, 413, "body over 64 KiB"),
        (json!({"customer_id": "a", "currency": "EUR"}).to_string(), json, 422, "missing items"),
        (json!({"customer_id": "a", "currency": "EUR", "items": [{"sku": "x", "quantity": "two", "unit_price_cents": 1}]}).to_string(), json, 422, "wrong type"),
        (json!({"customer_id": "", "currency": "eur", "items": []}).to_string(), json, 422, "invalid fields"),
        (json!({"customer_id": "a", "currency": "EUR", "items": [{"sku": "x", "quantity": 0, "unit_price_cents": -1}]}).to_string(), json, 422, "out of range"),
        (too_many_items.to_string(), json, 422, "101 items"),
        (over_total.to_string(), json, 422, "total over the maximum"),
    ];
    for (body, content_type, expected, what) in cases {
        let response = post(body, content_type).await.expect("answers");
        assert_eq!(response.status().as_u16(), expected, "{what}");
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json",
            "{what}"
        );
        let problem: Value = response.json().await.expect("problem JSON");
        assert_eq!(problem["status"], expected, "{what}: {problem}");
        for member in ["type", "title", "detail"] {
            assert!(
                problem[member].is_string(),
                "{what}: no {member} in {problem}"
            );
        }
    }
    let response = post(
        json!({"customer_id": "", "currency": "eur", "items": []}).to_string(),
        json,
    )
    .await
    .expect("answers");
    let problem: Value = response.json().await.expect("JSON");
    assert!(
        problem["errors"]["currency"].is_array() && problem["errors"]["customer_id"].is_array(),
        "{problem}"
    );

    assert_eq!(
        (count(&app, "orders").await, count(&app, "outbox").await),
        (0, 0),
        "nothing written"
    );
    assert!(
        ctx.entries(ORDER_EVENTS).await.is_empty(),
        "nothing published"
    );
}

#[tokio::test]
async fn unknown_and_malformed_ids_are_404_and_400() {
    let ctx = TestContext::new();
    let app = spawn(&ctx).await;
    let (status, problem) = app.get_json(&format!("/orders/{}", Uuid::now_v7())).await;
    assert_eq!((status, &problem["status"]), (404, &json!(404)));
    let (status, problem) = app.get_json("/orders/not-a-uuid").await;
    assert_eq!((status, &problem["status"]), (400, &json!(400)));
    let (status, _) = app.get_json("/no/such/route").await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn payment_outcomes_move_orders_to_paid_and_payment_failed() {
    let ctx = TestContext::new();
    let app = spawn(&ctx).await;
    let (_, paid_id) = place(&app, &alice_order()).await;
    let (_, declined_id) = place(&app, &alice_order()).await;
    let payment_id = Uuid::now_v7();

    let completed = completed(paid_id, payment_id, 2800);
    let failed = Envelope::new(
        Producer::PaymentService,
        Event::PaymentFailed(PaymentFailed {
            order_id: declined_id,
            customer_id: "alice".into(),
            amount_cents: 2800,
            currency: eur(),
            reason: FailureReason::InsufficientFunds,
        }),
    );
    ctx.xadd(PAYMENT_EVENTS, &completed.to_fields()).await;
    ctx.xadd(PAYMENT_EVENTS, &failed.to_fields()).await;

    let order = order_when(&app, paid_id, "the order to be PAID", |o| {
        o["status"] == "PAID"
    })
    .await;
    assert_eq!(order["payment_id"], json!(payment_id.to_string()));

    let order = order_when(&app, declined_id, "the order to be PAYMENT_FAILED", |o| {
        o["status"] == "PAYMENT_FAILED"
    })
    .await;
    assert_eq!(order["failure_reason"], "insufficient_funds");
    ctx.drained(PAYMENT_EVENTS, ORDER_SERVICE_GROUP).await;
}

#[tokio::test]
async fn poison_entries_are_dead_lettered_unknown_types_skipped_and_the_flow_goes_on() {
    let ctx = TestContext::new();
    let app = spawn(&ctx).await;
    let (_, order_id) = place(&app, &alice_order()).await;

    let garbage = ctx.xadd(PAYMENT_EVENTS, &[("hello", "world")]).await;
    let binary = ctx
        .xadd(PAYMENT_EVENTS, &[("event_type", &b"\xff\xfe"[..])])
        .await;
    let mut unknown = Envelope::new(
        Producer::PaymentService,
        Event::PaymentCompleted(PaymentCompleted {
            payment_id: Uuid::now_v7(),
            order_id,
            customer_id: "alice".into(),
            amount_cents: 1,
            currency: eur(),
        }),
    )
    .to_fields();
    unknown[1].1 = "PaymentDisputed".into();
    ctx.xadd(PAYMENT_EVENTS, &unknown).await;
    let misplaced = Envelope::new(
        Producer::OrderService,
        Event::OrderCancelled(events::OrderCancelled {
            order_id,
            customer_id: "alice".into(),
            reason: "test".into(),
        }),
    );
    let misplaced_id = ctx.xadd(PAYMENT_EVENTS, &misplaced.to_fields()).await;
    let payment_id = Uuid::now_v7();
    let good = completed(order_id, payment_id, 2800);
    ctx.xadd(PAYMENT_EVENTS, &good.to_fields()).await;

    order_when(
        &app,
        order_id,
        "the good entry behind the poison to be applied",
        |o| o["status"] == "PAID",
    )
    .await;
    ctx.drained(PAYMENT_EVENTS, ORDER_SERVICE_GROUP).await;

    let dead = ctx.dead_letters(PAYMENT_EVENTS).await;
    let originals: Vec<&str> = dead
        .iter()
        .filter_map(|(_, f)| field(f, "dlq:original_id"))
        .collect();
    assert_eq!(
        originals,
        [garbage.as_str(), binary.as_str(), misplaced_id.as_str()],
        "unknown types are not dead-lettered"
    );
    for (_, fields) in &dead {
        assert_eq!(field(fields, "dlq:group"), Some(ORDER_SERVICE_GROUP));
        assert_eq!(field(fields, "dlq:delivery_count"), Some("1"));
        assert_eq!(
            field(fields, "dlq:stream"),
            Some(ctx.stream(PAYMENT_EVENTS).as_str())
        );
        assert!(field(fields, "dlq:error").is_some_and(|e| !e.is_empty()));
    }
    assert_eq!(
        field(&dead[0].1, "hello"),
        Some("world"),
        "the original fields travel along"
    );
    // An order-service event on payment-events, signed with payment-service's key (what
    // `xadd` signs that stream with): refused before anything reads it, the key being
    // bound to another producer than the one the entry names.
    assert!(
        field(&dead[2].1, "dlq:error")
            .is_some_and(|e| e.contains("of payment-service, but the entry names producer")),
        "{:?}",
        field(&dead[2].1, "dlq:error")
    );
}

#[tokio::test]
async fn health_reports_each_dependency() {
    let ctx = TestContext::new();
    let app = spawn(&ctx).await;
    let (status, live) = app.get_json("/health/live").await;
    assert_eq!((status, &live["status"]), (200, &json!("live")));
    let (status, ready) = app.get_json("/health/ready").await;
    assert_eq!(status, 200, "{ready}");
    assert_eq!(
        ready["checks"],
        json!({"postgres": "ok", "redis": "ok", "migrations": "ok"})
    );
    assert_eq!(ready["signatures"], "require", "{ready}");
    let unsigned = ctx
        .spawn(
            "order-service",
            &["--signatures", "off"],
            order_service::start,
        )
        .await;
    let (_, ready_unsigned) = unsigned.get_json("/health/ready").await;
    assert_eq!(
        ready_unsigned["signatures"], "off",
        "said where an operator looks"
    );

    sqlx::query(
        "DELETE FROM _sqlx_migrations WHERE version = (SELECT max(version) FROM _sqlx_migrations)",
    )
    .execute(&app.pool)
    .await
    .expect("delete");
    let (status, ready) = app.get_json("/health/ready").await;
    assert_eq!(
        (status, &ready["checks"]["migrations"]),
        (503, &json!("pending")),
        "{ready}"
    );
}

#[tokio::test]
async fn shutdown_is_clean_and_prompt() {
    let ctx = TestContext::new();
    let app = spawn(&ctx).await;
    place(&app, &alice_order()).await;
    let stopped = tokio::time::timeout(Duration::from_secs(5), app.stop()).await;
    assert!(matches!(stopped, Ok(Ok(()))), "{stopped:?}");
}

/// The binary with its event keys and `env` (which may override them).
fn run_binary(env: &[(&str, &str)]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_order-service"))
        .env_clear()
        .envs(testkit::signing::signing_env("order-service"))
        .envs(env.iter().copied())
        .output()
        .expect("the binary runs")
}

#[test]
fn bad_configuration_is_one_line_and_exit_code_2() {
    let urls = [
        ("DATABASE_URL", "postgres://localhost/x"),
        ("REDIS_URL", "redis://localhost"),
    ];
    let cases: Vec<Vec<(&str, &str)>> = vec![
        vec![("REDIS_URL", "redis://localhost")],
        urls.iter().copied().chain([("READ_COUNT", "0")]).collect(),
        urls.iter()
            .copied()
            .chain([("HTTP_ADDR", "everywhere")])
            .collect(),
        urls.iter()
            .copied()
            .chain([("LOG_FORMAT", "xml")])
            .collect(),
        vec![
            ("DATABASE_URL", "mysql://localhost/x"),
            ("REDIS_URL", "redis://localhost"),
        ],
        // Each valid alone, unsafe together.
        urls.iter()
            .copied()
            .chain([
                ("INBOX_RETENTION_HOURS", "24"),
                ("OUTBOX_RETENTION_HOURS", "48"),
            ])
            .collect(),
        urls.iter()
            .copied()
            .chain([("CONSUMER_IDLE_DELETE_MS", "20000")])
            .collect(),
        urls.iter()
            .copied()
            .chain([
                ("OUTBOX_RETENTION_HOURS", "1"),
                ("PENDING_REPUBLISH_AFTER_MS", "3600000"),
            ])
            .collect(),
        urls.iter()
            .copied()
            .chain([("STREAM_TRIM_INTERVAL_MS", "soon")])
            .collect(),
        // Event keys: a file that is not there, a mode that does not exist.
        urls.iter()
            .copied()
            .chain([("SIGNING_KEY_FILE", "/nonexistent/order-service.key")])
            .collect(),
        urls.iter()
            .copied()
            .chain([("SIGNATURES", "sometimes")])
            .collect(),
    ];
    for env in cases {
        let output = run_binary(&env);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{env:?}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{env:?}: {stderr}");
        assert!(
            stderr.starts_with("order-service: configuration error:"),
            "{stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

#[tokio::test]
async fn dead_letters_are_listed_and_replayed_behind_the_admin_token() {
    let ctx = TestContext::new();
    let app = spawn_with_admin(&ctx).await;
    let (_, order_id) = place(&app, &alice_order()).await;
    // A PaymentCompleted that was given up on earlier (say, after MAX_DELIVERIES while a
    // bug was live), waiting in the dead-letter stream for an operator.
    let payment_id = Uuid::now_v7();
    let event = completed(order_id, payment_id, 2800);
    let source = ctx.stream(PAYMENT_EVENTS);
    let mut fields: Vec<(&str, String)> = vec![
        ("dlq:original_id", "1-0".into()),
        ("dlq:stream", source.clone()),
        ("dlq:group", ORDER_SERVICE_GROUP.into()),
        ("dlq:consumer", "gone".into()),
        ("dlq:delivery_count", "5".into()),
        ("dlq:error", "failed on delivery 5".into()),
    ];
    fields.extend(event.to_fields());
    let dead_id = ctx.xadd_dead_letter(PAYMENT_EVENTS, &fields).await;

    let admin = |request: reqwest::RequestBuilder| request.bearer_auth(ADMIN_TOKEN).send();
    let response = app
        .http
        .get(app.url("/admin/dlq"))
        .send()
        .await
        .expect("answers");
    assert_eq!(response.status(), 401, "no token");
    assert!(response.headers().contains_key("www-authenticate"));
    let response = app
        .http
        .get(app.url("/admin/dlq"))
        .bearer_auth("wrong-token-0123456789")
        .send()
        .await
        .expect("answers");
    assert_eq!(response.status(), 401, "wrong token");

    let listed: Value = admin(app.http.get(app.url("/admin/dlq")))
        .await
        .expect("answers")
        .json()
        .await
        .expect("JSON");
    assert_eq!(listed[0]["id"], json!(dead_id));
    assert_eq!(
        (&listed[0]["delivery_count"], &listed[0]["group"]),
        (&json!(5), &json!(ORDER_SERVICE_GROUP))
    );
    assert_eq!(listed[0]["fields"]["event_type"], "PaymentCompleted");

    let response = admin(app.http.post(app.url("/admin/dlq/not-an-id/replay")))
        .await
        .expect("answers");
    assert_eq!(response.status(), 400);
    let response = admin(app.http.post(app.url("/admin/dlq/1-1/replay")))
        .await
        .expect("answers");
    assert_eq!(response.status(), 404);
    let response = admin(
        app.http
            .post(app.url(&format!("/admin/dlq/{dead_id}/replay"))),
    )
    .await
    .expect("answers");
    assert_eq!(response.status(), 200);
    let replayed: Value = response.json().await.expect("JSON");
    assert_eq!(
        (&replayed["outcome"], &replayed["original_id"]),
        (&json!("applied"), &json!("1-0")),
        "{replayed}"
    );

    order_when(&app, order_id, "the replayed payment to be applied", |o| {
        o["status"] == "PAID"
    })
    .await;
    assert!(
        ctx.dead_letters(PAYMENT_EVENTS).await.is_empty(),
        "the dead letter is gone"
    );
}

#[tokio::test]
async fn admin_routes_do_not_exist_without_a_token() {
    let ctx = TestContext::new();
    let app = spawn(&ctx).await;
    let response = app
        .http
        .get(app.url("/admin/dlq"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("answers");
    assert_eq!(response.status(), 404);
}

#[tokio::test]
async fn the_bearer_scheme_is_case_insensitive() {
    let ctx = TestContext::new();
    let app = spawn_with_admin(&ctx).await;
    let status = |authorization: String| {
        let request = app.http.get(app.url("/admin/dlq"));
        async move {
            let response = request
                .header("authorization", authorization)
                .send()
                .await
                .expect("answers");
            response.status().as_u16()
        }
    };
    for scheme in ["Bearer", "bearer", "BEARER"] {
        assert_eq!(
            status(format!("{scheme} {ADMIN_TOKEN}")).await,
            200,
            "{scheme}"
        );
    }
    assert_eq!(status(format!("Basic {ADMIN_TOKEN}")).await, 401);
    assert_eq!(status(format!("Bearer {ADMIN_TOKEN}x")).await, 401);
    assert_eq!(status("Bearer".to_owned()).await, 401);
}

#[tokio::test]
async fn a_dead_letter_cannot_name_where_it_is_replayed() {
    let ctx = TestContext::new();
    let app = spawn_with_admin(&ctx).await;
    // A forged entry carrying fields named like a dead letter's own: it is poison (no
    // event), so it is dead-lettered, its own fields kept apart from the metadata.
    ctx.xadd(
        PAYMENT_EVENTS,
        &[
            ("dlq:stream", "elsewhere"),
            ("dlq:error", "forged"),
            ("event_type", "PaymentCompleted"),
        ],
    )
    .await;
    eventually(
        "the forged entry dead-lettered",
        Duration::from_secs(5),
        || async {
            match ctx.dead_letters(PAYMENT_EVENTS).await.len() {
                1 => Ok(()),
                n => Err(format!("{n} dead letters")),
            }
        },
    )
    .await;
    let admin = |request: reqwest::RequestBuilder| request.bearer_auth(ADMIN_TOKEN).send();
    let listed: Value = admin(app.http.get(app.url("/admin/dlq")))
        .await
        .expect("answers")
        .json()
        .await
        .expect("JSON");
    let letter = &listed[0];
    assert_eq!(
        letter["stream"],
        json!(ctx.stream(PAYMENT_EVENTS)),
        "{letter}"
    );
    assert_ne!(letter["error"], "forged", "{letter}");
    assert_eq!(
        letter["fields"]["dlq:stream"], "elsewhere",
        "the entry's own field"
    );

    let id = letter["id"].as_str().expect("an id");
    let in_stream = ctx.entries(PAYMENT_EVENTS).await.len();
    let replayed: Value = admin(app.http.post(app.url(&format!("/admin/dlq/{id}/replay"))))
        .await
        .expect("answers")
        .json()
        .await
        .expect("JSON");
    assert_eq!(
        replayed["outcome"], "dead_lettered",
        "the consumer got it again, and it is still poison: {replayed}"
    );
    assert_eq!(
        ctx.entries(PAYMENT_EVENTS).await.len(),
        in_stream,
        "a replay writes nothing to the stream"
    );
    let elsewhere: u64 = redis::cmd("EXISTS")
        .arg("elsewhere")
        .query_async(&mut ctx.redis().await)
        .await
        .expect("EXISTS");
    assert_eq!(elsewhere, 0, "nothing written to a key the entry named");
}

#[test]
fn secrets_never_reach_the_logs() {
    let output = run_binary(&[
        (
            "DATABASE_URL",
            "postgres://orders:pw-in-userinfo@127.0.0.1:1/orders?sslmode=disable&password=pw-in-query",
        ),
        ("REDIS_URL", "redis://:pw-of-redis@127.0.0.1:1"),
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "http://collector:pw-of-otlp@127.0.0.1:1",
        ),
        ("ADMIN_TOKEN", "admin-token-0123456789"),
    ]);
    assert_eq!(output.status.code(), Some(1), "it cannot connect");
    let logs = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(logs.contains("order-service starting"), "{logs}");
    for secret in [
        "pw-in-userinfo",
        "pw-in-query",
        "pw-of-redis",
        "pw-of-otlp",
        "admin-token-0123456789",
    ] {
        assert!(!logs.contains(secret), "{secret} logged: {logs}");
    }
}
