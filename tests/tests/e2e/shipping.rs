//! A third service joins the flow without changing the other two: shipping-service
//! (`examples/shipping-service`) reads `payment-events` and `order-events` as a group of
//! its own. Every entry is read by both groups of each stream, once each; the producers'
//! trimming waits for the slower group; and every paid, uncancelled order has one
//! shipment, every other order none being prepared (beside the §4.8 invariants).

use std::collections::{BTreeMap, BTreeSet};

use e2e::{QUIET, TRIM_HARD, assert_invariants, both_services, place_orders};
use events::streams::{ORDER_EVENTS, ORDER_SERVICE_GROUP, PAYMENT_EVENTS, PAYMENT_SERVICE_GROUP};
use shipping_service::GROUP as SHIPPING;
use sqlx::PgPool;
use testkit::{Spawned, TestContext};
use uuid::Uuid;

/// Each order's status and payment, as order-service has it.
async fn orders_of(orders: &PgPool) -> BTreeMap<Uuid, (String, Option<Uuid>)> {
    sqlx::query_as::<_, (Uuid, String, Option<Uuid>)>("SELECT id, status, payment_id FROM orders")
        .fetch_all(orders)
        .await
        .expect("orders")
        .into_iter()
        .map(|(id, status, payment)| (id, (status, payment)))
        .collect()
}

/// The event ids in `db`'s outbox (what it published) or inbox (what it applied).
async fn event_ids(db: &PgPool, table: &str) -> BTreeSet<Uuid> {
    let query = match table {
        "outbox" => "SELECT event_id FROM outbox",
        _ => "SELECT event_id FROM inbox",
    };
    sqlx::query_scalar(query)
        .fetch_all(db)
        .await
        .expect("event ids")
        .into_iter()
        .collect()
}

/// Cancels every third of `placed`: some still pending (never charged), some paid
/// (refunded); an order already decided otherwise answers 409, which is fine.
async fn cancel_every_third(orders: &Spawned, placed: &[serde_json::Value]) {
    for order in placed.iter().step_by(3) {
        let id = order["id"].as_str().expect("an id");
        let url = orders.url(&format!("/orders/{id}/cancel"));
        let status = orders
            .http
            .post(url)
            .send()
            .await
            .expect("answers")
            .status();
        assert!(
            [200, 409].contains(&status.as_u16()),
            "cancel {id}: {status}"
        );
    }
}

/// shipping-service on the database `url` (a restart keeps it).
async fn shipping_on(ctx: &TestContext, url: &str) -> Spawned {
    ctx.spawn_on("shipping-service", url, &[], shipping_service::start)
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_third_service_reads_every_entry_once_and_ships_every_paid_uncancelled_order() {
    let ctx = TestContext::new();
    let (orders, payments) = both_services(&ctx, TRIM_HARD).await;
    let shipping_db = ctx.database().await;
    let shipping = shipping_on(&ctx, &shipping_db).await;

    let first = place_orders(&orders.url(""), 90, 8).await;
    assert_eq!(first.failed, 0);
    cancel_every_third(&orders, &first.accepted).await;
    assert_invariants(&orders.pool, &payments.pool, QUIET).await;

    // The slower group: shipping-service is down while the flow goes on and both
    // producers trim as hard as they may (every 50 ms, no retention).
    shipping
        .stop()
        .await
        .expect("shipping-service stops cleanly");
    let second = place_orders(&orders.url(""), 60, 8).await;
    assert_eq!(second.failed, 0);
    cancel_every_third(&orders, &second.accepted).await;
    assert_invariants(&orders.pool, &payments.pool, QUIET).await;
    ctx.drained(PAYMENT_EVENTS, ORDER_SERVICE_GROUP).await;
    ctx.drained(ORDER_EVENTS, PAYMENT_SERVICE_GROUP).await;
    for stream in [PAYMENT_EVENTS, ORDER_EVENTS] {
        let (_, unread) = ctx
            .group_backlog(stream, SHIPPING)
            .await
            .expect("its group");
        assert!(unread > 0, "shipping-service has {stream} entries to read");
        // What it read last stays as the trim's bound; nothing before it, nothing after.
        let held = ctx.held_beyond(stream, SHIPPING).await;
        assert!(
            matches!(held, Some(0 | 1)),
            "{stream} is trimmed to what shipping-service has not read, no further: {held:?}"
        );
    }

    let shipping = shipping_on(&ctx, &shipping_db).await;
    for stream in [PAYMENT_EVENTS, ORDER_EVENTS] {
        ctx.drained(stream, SHIPPING).await;
    }

    // Every event reached both of its readers: shipping-service applied every event
    // either producer published, and the other service every event of its stream.
    let from_orders = event_ids(&orders.pool, "outbox").await;
    let from_payments = event_ids(&payments.pool, "outbox").await;
    let shipped_from: BTreeSet<Uuid> = event_ids(&shipping.pool, "inbox").await;
    assert_eq!(
        shipped_from,
        from_orders.union(&from_payments).copied().collect(),
        "shipping-service applied every event of both streams"
    );
    assert_eq!(event_ids(&payments.pool, "inbox").await, from_orders);
    assert_eq!(event_ids(&orders.pool, "inbox").await, from_payments);
    // Each under the partition key its service chose: the order, but payment-service's
    // inbox, which partitions by customer (a customer's account is locked by one batch).
    let keyed = |sql: &'static str, db: &PgPool| {
        let db = db.clone();
        async move {
            sqlx::query_scalar::<_, i64>(sql)
                .fetch_one(&db)
                .await
                .expect("counts")
        }
    };
    let by_order = "SELECT count(*) FROM outbox WHERE coalesce(partition_key, order_id::text) <> order_id::text";
    let inbox_by_order =
        "SELECT count(*) FROM inbox WHERE partition_key IS DISTINCT FROM order_id::text";
    for db in [&orders.pool, &payments.pool, &shipping.pool] {
        assert_eq!(
            keyed(by_order, db).await,
            0,
            "outbox rows keyed by their order"
        );
    }
    for db in [&orders.pool, &shipping.pool] {
        assert_eq!(
            keyed(inbox_by_order, db).await,
            0,
            "inbox rows keyed by their order"
        );
    }
    let by_customer = "SELECT count(*) FROM inbox WHERE partition_key <> ALL('{ana,ben,cho,dev}')";
    assert_eq!(
        keyed(by_customer, &payments.pool).await,
        0,
        "keyed by customer"
    );
    // ... once: no group was handed an entry twice, none is left pending.
    for stream in [PAYMENT_EVENTS, ORDER_EVENTS] {
        for group in [SHIPPING, ORDER_SERVICE_GROUP, PAYMENT_SERVICE_GROUP] {
            if let Some((pending, unread)) = ctx.group_backlog(stream, group).await {
                assert_eq!((pending, unread), (0, 0), "{group} on {stream}");
            }
        }
    }

    // One shipment per paid, uncancelled order; none being prepared for any other.
    let shipments: BTreeMap<Uuid, (String, Option<Uuid>)> =
        sqlx::query_as::<_, (Uuid, String, Option<Uuid>)>(
            "SELECT order_id, status, payment_id FROM shipments",
        )
        .fetch_all(&shipping.pool)
        .await
        .expect("shipments")
        .into_iter()
        .map(|(order, status, payment)| (order, (status, payment)))
        .collect();
    let all = orders_of(&orders.pool).await;
    assert_eq!(all.len(), 150);
    let mut paid = 0;
    for (id, (status, payment)) in &all {
        let shipment = shipments.get(id).map(|(s, p)| (s.as_str(), *p));
        match status.as_str() {
            "PAID" => {
                paid += 1;
                assert_eq!(shipment, Some(("PREPARING", *payment)), "paid order {id}");
            }
            _ => assert!(
                !matches!(shipment, Some(("PREPARING", _))),
                "{status} order {id} has a shipment being prepared"
            ),
        }
    }
    assert!(paid >= 50, "most orders are paid ({paid})");
    assert!(
        shipments.keys().all(|id| all.contains_key(id)),
        "no shipment of an order that does not exist"
    );

    for service in [orders, payments, shipping] {
        service.stop().await.expect("stops cleanly");
    }
}

/// One stream's trouble never stalls the service's other stream (SPEC §4.9): a valid but
/// huge copy of a `PaymentCompleted` (an 8 MiB extra field, signed as payment-service signs)
/// sits in `payment-events`. shipping-service dead-letters it by its id, unread, in its
/// own group's dead letters, and keeps shipping the orders around it from both streams.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_entry_on_one_stream_stalls_neither_of_a_service_s_consumers() {
    let ctx = TestContext::new();
    let (orders, payments) = both_services(&ctx, &[]).await;
    let shipping = shipping_on(&ctx, &ctx.database().await).await;
    assert_eq!(place_orders(&orders.url(""), 1, 1).await.failed, 0);
    assert_invariants(&orders.pool, &payments.pool, QUIET).await;
    let (_, paid) = ctx
        .entries(PAYMENT_EVENTS)
        .await
        .into_iter()
        .find(|(_, f)| {
            f.iter()
                .any(|(k, v)| k == "event_type" && v == "PaymentCompleted")
        })
        .expect("a PaymentCompleted");
    let padding = "x".repeat(8 * 1024 * 1024);
    let mut huge: Vec<(&str, &[u8])> = paid
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_bytes()))
        .collect();
    huge.push(("padding", padding.as_bytes()));
    ctx.xadd(PAYMENT_EVENTS, &huge).await;

    let placed = place_orders(&orders.url(""), 30, 4).await;
    assert_eq!(placed.failed, 0);
    let cancelled = &placed.accepted[..5];
    cancel_every_third(&orders, cancelled).await;
    assert_invariants(&orders.pool, &payments.pool, QUIET).await;
    for stream in [PAYMENT_EVENTS, ORDER_EVENTS] {
        ctx.drained(stream, SHIPPING).await;
    }
    let dead = ctx.dead_letters_of(PAYMENT_EVENTS, SHIPPING).await;
    assert_eq!(dead.len(), 1, "the huge entry, dead-lettered once");
    let error = dead[0]
        .1
        .iter()
        .find(|(k, _)| k == service_runtime::dead_letters::fields::ERROR)
        .map(|(_, e)| e.clone())
        .unwrap_or_default();
    assert!(error.contains("MAX_ENTRY_BYTES"), "{error}");
    assert!(
        dead[0].1.iter().all(|(_, v)| v.len() < 64 * 1024),
        "no copy of the 8 MiB"
    );
    let all = orders_of(&orders.pool).await;
    let preparing: BTreeSet<Uuid> =
        sqlx::query_scalar("SELECT order_id FROM shipments WHERE status = 'PREPARING'")
            .fetch_all(&shipping.pool)
            .await
            .expect("shipments")
            .into_iter()
            .collect();
    let paid_orders: BTreeSet<Uuid> = all
        .iter()
        .filter(|(_, (status, _))| status == "PAID")
        .map(|(id, _)| *id)
        .collect();
    assert_eq!(
        preparing, paid_orders,
        "a shipment for each paid order, no other"
    );
    assert!(all.values().any(|(status, _)| status == "CANCELLED"));
    for service in [orders, payments, shipping] {
        service.stop().await.expect("stops cleanly");
    }
}

/// A payment outcome, as payment-service would write it, for a new order.
fn payment_completed() -> events::Envelope {
    events::Envelope::new(
        events::Producer::PaymentService,
        events::Event::PaymentCompleted(events::PaymentCompleted {
            payment_id: Uuid::now_v7(),
            order_id: Uuid::now_v7(),
            customer_id: "uma".into(),
            amount_cents: 1200,
            currency: events::Currency::parse("EUR").expect("valid"),
        }),
    )
}

/// SPEC §4.9 for a consumer of two producers: shipping-service holds both services'
/// public keys, each bound to its producer (`Producer:` lines). A consistent
/// `PaymentCompleted` signed with order-service's key, a good signature of a key it
/// accepts, ships nothing and is dead-lettered as forged; the genuine one beside it ships.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payment_outcome_signed_with_the_order_service_key_ships_nothing() {
    let ctx = TestContext::new();
    let shipping = shipping_on(&ctx, &ctx.database().await).await;
    let (forged, genuine) = (payment_completed(), payment_completed());
    let mut signed_by_orders: Vec<(String, Vec<u8>)> = forged
        .to_fields()
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.into_bytes()))
        .collect();
    testkit::signing::sign_with("order-service", &mut signed_by_orders);
    ctx.xadd_unsigned(PAYMENT_EVENTS, &signed_by_orders).await;
    ctx.xadd(PAYMENT_EVENTS, &genuine.to_fields()).await;
    ctx.drained(PAYMENT_EVENTS, SHIPPING).await;

    let shipped: Vec<Uuid> = sqlx::query_scalar("SELECT order_id FROM shipments")
        .fetch_all(&shipping.pool)
        .await
        .expect("shipments");
    assert_eq!(
        shipped,
        [genuine.order_id],
        "only the genuine outcome ships"
    );
    let dead = ctx.dead_letters_of(PAYMENT_EVENTS, SHIPPING).await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert!(
        dead[0]
            .1
            .iter()
            .any(|(k, v)| k == service_runtime::dead_letters::fields::ERROR
                && v.contains("but the entry names producer")),
        "{dead:?}"
    );
    shipping.stop().await.expect("stops cleanly");
}
