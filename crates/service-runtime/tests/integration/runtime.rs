//! The stream runtime against real Postgres and Redis, through its deterministic hooks
//! (`consume_once`, `relay_once`): inbox dedupe, ack only after commit, retry of
//! transient failures, the relay (rows handed over in process, rows claimed by its poll),
//! two relays, and a vanished group.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use events::{Currency, Envelope, Event, EventWriter, OrderCreated, Producer, SchemaVersion};
use service_runtime::consumer::ConsumerConfig;
use service_runtime::outbox::{OutboxRow, Reask, RelayQueue};
use service_runtime::redis_conn::RedisConnections;
use service_runtime::{Consumer, EventHandler, HandleError, OutboxRelay, StreamKeys, outbox};
use sqlx::{PgConnection, PgPool};
use testkit::{PrivateRedis, TestContext, eventually};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// The outbox and inbox tables: the runtime's own migrations.
use service_runtime::schema::RUNTIME_MIGRATOR as MIGRATOR;

pub(super) const STREAM: &str = "order-events";
/// Where [`CountingHandler`] publishes an answer to each event it applies.
const ANSWERS: &str = "payment-events";
pub(super) const GROUP: &str = "test-group";

/// Counts how often each event's effect committed and publishes an answer to each (a copy
/// with its own id, on [`ANSWERS`]); fails while `failing` is set, and always for the
/// event id in `poisoned`.
#[derive(Clone, Default)]
struct CountingHandler {
    failing: Arc<AtomicBool>,
    poisoned: Arc<std::sync::Mutex<Option<Uuid>>>,
}

impl EventHandler for CountingHandler {
    async fn handle(
        &self,
        tx: &mut PgConnection,
        events: &[&Envelope],
    ) -> Result<Vec<OutboxRow>, HandleError> {
        let poisoned = *self.poisoned.lock().unwrap_or_else(|e| e.into_inner());
        if self.failing.load(Ordering::SeqCst)
            || events.iter().any(|e| Some(e.event_id) == poisoned)
        {
            sqlx::query("SELECT * FROM no_such_table")
                .execute(&mut *tx)
                .await?;
        }
        for envelope in events {
            sqlx::query(
                "INSERT INTO effects (event_id, n) VALUES ($1, 1)
                 ON CONFLICT (event_id) DO UPDATE SET n = effects.n + 1",
            )
            .bind(envelope.event_id)
            .execute(&mut *tx)
            .await?;
        }
        let answers: Vec<Envelope> = events
            .iter()
            .map(|e| Envelope {
                event_id: Uuid::now_v7(),
                ..(*e).clone()
            })
            .collect();
        Ok(outbox::enqueue_all(
            tx,
            ANSWERS,
            &EventWriter::unsigned(SchemaVersion::NEWEST),
            &answers,
        )
        .await?)
    }
}

pub(super) async fn database(ctx: &TestContext) -> PgPool {
    let pool = PgPool::connect(&ctx.database().await)
        .await
        .expect("connects");
    MIGRATOR.run(&pool).await.expect("migrates");
    sqlx::query("CREATE TABLE effects (event_id UUID PRIMARY KEY, n INT NOT NULL)")
        .execute(&pool)
        .await
        .expect("creates");
    pool
}

async fn consumer(
    ctx: &TestContext,
    pool: &PgPool,
    handler: CountingHandler,
) -> Consumer<CountingHandler> {
    consumer_handing_to(ctx, pool, handler, &RelayQueue::default()).await
}

async fn consumer_handing_to(
    ctx: &TestContext,
    pool: &PgPool,
    handler: CountingHandler,
    queue: &RelayQueue,
) -> Consumer<CountingHandler> {
    let redis = RedisConnections::connect(ctx.redis_url(), Duration::from_millis(100))
        .await
        .expect("redis");
    let config = ConsumerConfig {
        stream: STREAM,
        group: GROUP,
        consumer: "c1".into(),
        read_count: 10,
        block: Duration::from_millis(100),
        max_deliveries: 5,
        claim_min_idle: Duration::from_millis(200),
        parallelism: 2,
        max_entry_bytes: 262_144,
        contention_budget: Duration::from_secs(10),
        transaction_deadline: Duration::from_secs(30),
    };
    let consumer = Consumer::new(
        pool.clone(),
        redis,
        &StreamKeys::new(ctx.namespace()),
        config,
        handler,
        queue.clone(),
    );
    consumer.ensure_group().await.expect("group");
    consumer
}

pub(super) fn event() -> Envelope {
    Envelope::new(
        Producer::OrderService,
        Event::OrderCreated(OrderCreated {
            order_id: Uuid::now_v7(),
            customer_id: "c".into(),
            items: vec![events::OrderItem {
                sku: "s".into(),
                quantity: 1,
                unit_price_cents: 0,
            }],
            total_cents: 0,
            currency: Currency::parse("EUR").expect("valid"),
            pay_by: Some(time::OffsetDateTime::now_utc() + time::Duration::hours(1)),
        }),
    )
}

async fn effects(pool: &PgPool) -> Vec<(Uuid, i32)> {
    sqlx::query_as("SELECT event_id, n FROM effects ORDER BY event_id")
        .fetch_all(pool)
        .await
        .expect("effects")
}

#[tokio::test]
async fn the_inbox_gives_a_redelivered_event_no_second_effect() {
    let ctx = TestContext::new();
    let pool = database(&ctx).await;
    let consumer = consumer(&ctx, &pool, CountingHandler::default()).await;
    let (once, twice) = (event(), event());
    ctx.xadd(STREAM, &twice.to_fields()).await;
    ctx.xadd(STREAM, &once.to_fields()).await;
    ctx.xadd(STREAM, &twice.to_fields()).await;

    let report = consumer.consume_once().await.expect("consumes");
    assert_eq!(
        (report.delivered, report.applied, report.duplicates),
        (3, 2, 1),
        "{report:?}"
    );
    let mut expected = vec![(once.event_id, 1), (twice.event_id, 1)];
    expected.sort();
    assert_eq!(effects(&pool).await, expected);
    assert_eq!(
        ctx.group_backlog(STREAM, GROUP).await,
        Some((0, 0)),
        "all acked"
    );
}

#[tokio::test]
async fn a_failed_effect_is_not_acked_and_is_retried_from_the_pending_list() {
    let ctx = TestContext::new();
    let pool = database(&ctx).await;
    let handler = CountingHandler::default();
    let consumer = consumer(&ctx, &pool, handler.clone()).await;
    let e = event();
    ctx.xadd(STREAM, &e.to_fields()).await;

    handler.failing.store(true, Ordering::SeqCst);
    let report = consumer.consume_once().await.expect("consumes");
    assert_eq!(report.retry_later, 1, "{report:?}");
    assert_eq!(
        ctx.group_backlog(STREAM, GROUP).await,
        Some((1, 0)),
        "still pending"
    );
    assert!(
        effects(&pool).await.is_empty(),
        "the failed transaction left nothing"
    );
    let inbox: i64 = sqlx::query_scalar("SELECT count(*) FROM inbox")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(inbox, 0, "the inbox row rolled back with the effect");

    handler.failing.store(false, Ordering::SeqCst);
    let report = consumer.consume_own_pending_once().await.expect("consumes");
    assert_eq!(report.applied, 1, "{report:?}");
    assert_eq!(effects(&pool).await, vec![(e.event_id, 1)]);
    assert_eq!(ctx.group_backlog(STREAM, GROUP).await, Some((0, 0)));
}

#[tokio::test]
async fn an_entry_failing_its_last_allowed_delivery_is_dead_lettered() {
    let ctx = TestContext::new();
    let pool = database(&ctx).await;
    let handler = CountingHandler::default();
    let consumer = consumer(&ctx, &pool, handler.clone()).await;
    ctx.xadd(STREAM, &event().to_fields()).await;
    handler.failing.store(true, Ordering::SeqCst);

    let mut report = consumer.consume_once().await.expect("consumes");
    for _ in 2..=4 {
        assert_eq!(report.retry_later, 1, "{report:?}");
        report = consumer.consume_own_pending_once().await.expect("consumes");
    }
    assert_eq!(
        report.retry_later, 1,
        "the 4th failure is retried: {report:?}"
    );
    let report = consumer.consume_own_pending_once().await.expect("consumes");
    assert_eq!(
        report.dead_lettered, 1,
        "failing the 5th delivery (MAX_DELIVERIES=5) dead-letters: {report:?}"
    );
    let dead = ctx.dead_letters_of(STREAM, GROUP).await;
    let count = dead[0]
        .1
        .iter()
        .find(|(k, _)| k == "dlq:delivery_count")
        .map(|(_, v)| v.as_str());
    assert_eq!(count, Some("5"));
    assert_eq!(ctx.group_backlog(STREAM, GROUP).await, Some((0, 0)));
}

/// A relay that claims every unpublished row (none is left to its writer).
async fn relay(ctx: &TestContext, pool: &PgPool, poll: Duration) -> OutboxRelay {
    relay_with(ctx, pool, (poll, Duration::ZERO), &RelayQueue::default()).await
}

/// A relay handed rows by `queue` whose poll claims rows unpublished for a second.
async fn claiming_relay(ctx: &TestContext, pool: &PgPool, queue: &RelayQueue) -> OutboxRelay {
    let second = Duration::from_secs(1);
    relay_with(ctx, pool, (second, second), queue).await
}

/// The most rows a test relay's poll claims per pass.
const RELAY_BATCH: usize = 50;

async fn relay_with(
    ctx: &TestContext,
    pool: &PgPool,
    (poll, claim_after): (Duration, Duration),
    queue: &RelayQueue,
) -> OutboxRelay {
    let redis = RedisConnections::connect(ctx.redis_url(), Duration::from_secs(1))
        .await
        .expect("redis");
    OutboxRelay::new(
        pool.clone(),
        redis.commands,
        StreamKeys::new(ctx.namespace()),
        RELAY_BATCH,
        (poll, claim_after),
        queue.clone(),
    )
}

/// Commits `envelope`'s outbox row; returns the row, for a relay queue.
async fn enqueue(pool: &PgPool, envelope: &Envelope) -> Vec<OutboxRow> {
    let mut tx = pool.begin().await.expect("begins");
    let rows = outbox::enqueue(
        &mut tx,
        STREAM,
        &EventWriter::unsigned(SchemaVersion::NEWEST),
        envelope,
    )
    .await
    .expect("enqueues");
    tx.commit().await.expect("commits");
    rows
}

async fn unpublished(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM outbox_pending")
        .fetch_one(pool)
        .await
        .expect("counts")
}

/// Waits (up to `within`) until every outbox row is marked published.
async fn all_marked(pool: &PgPool, within: Duration) {
    eventually("every row marked published", within, || async {
        match unpublished(pool).await {
            0 => Ok(()),
            n => Err(format!("{n} unpublished")),
        }
    })
    .await;
}

/// How many entries `ctx`'s stream holds, within `deadline`, once it holds `n`.
async fn published(ctx: &TestContext, n: usize, what: &str, deadline: Duration) {
    eventually(what, deadline, || async {
        match ctx.entries(STREAM).await.len() {
            found if found == n => Ok(()),
            found => Err(format!("{found} entries")),
        }
    })
    .await;
}

/// Claims rows until `n` went (a pass fails while Redis, just restarted, refuses it; a
/// row is not claimed while younger than the relay's claim).
async fn claimed(relay: &OutboxRelay, n: usize) {
    let claimed = std::cell::Cell::new(0);
    eventually(
        "the relay to claim the rows",
        Duration::from_secs(10),
        || async {
            claimed.set(claimed.get() + relay.relay_once().await.map_err(|e| e.to_string())?);
            match claimed.get() {
                done if done == n => Ok(()),
                so_far => Err(format!("{so_far} claimed")),
            }
        },
    )
    .await;
}

/// Claims the `n` rows once Redis is back ([`claimed`]) and waits for them on the stream.
async fn claimed_once_redis_is_back(ctx: &TestContext, relay: &OutboxRelay, n: usize) {
    claimed(relay, n).await;
    published(ctx, n, "the rows on the stream", Duration::from_secs(3)).await;
}

#[tokio::test]
async fn the_relay_publishes_what_its_process_hands_over_without_claiming_it() {
    let ctx = TestContext::new();
    let pool = database(&ctx).await;
    let queue = RelayQueue::default();
    let hour = Duration::from_secs(3600);
    // Neither a poll nor a claim within the test: only the hand-over can publish.
    let handing = relay_with(&ctx, &pool, (hour, hour), &queue).await;
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(handing.run(shutdown.clone()));

    queue.hand_over(enqueue(&pool, &event()).await);
    published(
        &ctx,
        1,
        "the handed-over row on the stream",
        Duration::from_secs(3),
    )
    .await;
    // Rows handed over while it is busy or before it waits are not lost either.
    for _ in 0..3 {
        queue.hand_over(enqueue(&pool, &event()).await);
    }
    published(
        &ctx,
        4,
        "every handed-over row on the stream",
        Duration::from_secs(3),
    )
    .await;
    all_marked(&pool, Duration::from_secs(3)).await;
    shutdown.cancel();
    running.await.expect("relay stops");

    // Marked, so a relay that claims everything finds nothing to publish again.
    let claiming = relay(&ctx, &pool, hour).await;
    assert_eq!(claiming.relay_once().await.expect("relays"), 0);
}

#[tokio::test]
async fn the_relay_leaves_young_rows_to_their_writer_and_polls_for_the_rest() {
    let ctx = TestContext::new();
    let pool = database(&ctx).await;
    let claim_after = Duration::from_secs(3);
    // Committed by a process that died before handing it over.
    enqueue(&pool, &event()).await;
    let relay = relay_with(
        &ctx,
        &pool,
        (Duration::from_millis(100), claim_after),
        &RelayQueue::default(),
    )
    .await;
    assert_eq!(
        relay.relay_once().await.expect("relays"),
        0,
        "a row younger than claim_after is its writer's to publish"
    );
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(relay.run(shutdown.clone()));
    published(
        &ctx,
        1,
        "the row found by the poll",
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(unpublished(&pool).await, 0);
    shutdown.cancel();
    running.await.expect("relay stops");
}

#[tokio::test]
async fn handed_over_rows_redis_refused_are_published_by_the_poll_once_it_is_back() {
    let mut redis = PrivateRedis::start().await;
    let ctx = TestContext::with_redis(&redis.url());
    let pool = database(&ctx).await;
    let queue = RelayQueue::default();
    let relay = claiming_relay(&ctx, &pool, &queue).await;
    for _ in 0..3 {
        queue.hand_over(enqueue(&pool, &event()).await);
    }

    redis.kill();
    assert!(
        relay.publish_handed_over().await.is_err(),
        "no Redis, no publish"
    );
    assert_eq!(unpublished(&pool).await, 3, "nothing marked");
    redis.restart().await;
    assert_eq!(
        relay.publish_handed_over().await.expect("publishes"),
        0,
        "the refused rows left memory"
    );
    claimed_once_redis_is_back(&ctx, &relay, 3).await;
}

/// SPEC §4.9, an outage of minutes: rows keep committing and being handed over while Redis
/// is gone for two minutes; the relay neither stops nor stalls (every row is on the
/// stream soon after Redis is back: at least once, as §4.1 promises) and leaves nothing
/// unmarked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_rides_out_a_redis_outage_of_two_minutes_and_publishes_every_row() {
    const OUTAGE: Duration = Duration::from_secs(120);
    let mut redis = PrivateRedis::start().await;
    let ctx = TestContext::with_redis(&redis.url());
    let pool = database(&ctx).await;
    let queue = RelayQueue::default();
    let relay = relay_with(
        &ctx,
        &pool,
        (Duration::from_millis(200), Duration::from_secs(1)),
        &queue,
    )
    .await;
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(relay.run(shutdown.clone()));

    redis.kill();
    let (ends, mut pace) = (
        tokio::time::Instant::now() + OUTAGE,
        tokio::time::interval(Duration::from_millis(100)),
    );
    let mut committed = 0;
    while tokio::time::Instant::now() < ends {
        pace.tick().await;
        queue.hand_over(enqueue(&pool, &event()).await);
        committed += 1;
    }
    assert!(
        !running.is_finished(),
        "the relay stopped during the outage"
    );
    assert_eq!(unpublished(&pool).await, committed as i64, "nothing marked");

    redis.restart().await;
    eventually(
        "every row of the outage on the stream",
        Duration::from_secs(30),
        || async {
            let entries = ctx.entries(STREAM).await;
            let distinct: std::collections::HashSet<&str> = entries
                .iter()
                .flat_map(|(_, fields)| fields.iter())
                .filter(|(name, _)| name == "event_id")
                .map(|(_, id)| id.as_str())
                .collect();
            match distinct.len() {
                n if n == committed => Ok(()),
                n => Err(format!(
                    "{n} of {committed} rows ({} entries)",
                    entries.len()
                )),
            }
        },
    )
    .await;
    all_marked(&pool, Duration::from_secs(10)).await;
    let entries = ctx.entries(STREAM).await.len();
    assert!(
        entries <= committed + RELAY_BATCH,
        "{entries} entries for {committed} rows: a repeat only of what a failed pass may \
         have written"
    );
    shutdown.cancel();
    running.await.expect("relay stops");
}

/// The two ways in never race for a row: a row handed over longer ago than half of
/// `claim_after` (its relay was busy, or Redis was down: after an outage the queue holds
/// what was handed over during the last retry's wait, up to `QUEUE_LIMIT` rows) is the
/// poll's, so whichever runs first, it reaches the stream once (SPEC §4.9: at most about
/// 1.5 entries per event after an outage of any length).
#[tokio::test]
async fn a_row_handed_over_longer_ago_than_its_claim_is_published_once() {
    let ctx = TestContext::new();
    let pool = database(&ctx).await;
    let claim_after = Duration::from_millis(400);
    let queue = RelayQueue::default();
    let relay = relay_with(
        &ctx,
        &pool,
        (Duration::from_secs(3600), claim_after),
        &queue,
    )
    .await;
    let hand_over_aged = |n: usize| {
        let (pool, queue) = (pool.clone(), queue.clone());
        async move {
            for _ in 0..n {
                queue.hand_over(enqueue(&pool, &event()).await);
            }
            eventually("the rows claimable", Duration::from_secs(5), || async {
                match claimable(&pool, claim_after).await {
                    found if found == n as i64 => Ok(()),
                    found => Err(format!("{found} claimable")),
                }
            })
            .await;
        }
    };

    // The poll first, then the hand-over.
    hand_over_aged(10).await;
    assert_eq!(relay.relay_once().await.expect("relays"), 10);
    assert_eq!(
        relay.publish_handed_over().await.expect("publishes"),
        0,
        "rows the poll may claim are not published from memory as well"
    );
    // The hand-over first, then the poll.
    hand_over_aged(10).await;
    assert_eq!(
        relay.publish_handed_over().await.expect("publishes"),
        0,
        "rows the poll may claim are left to it"
    );
    assert_eq!(relay.relay_once().await.expect("relays"), 10);

    published(
        &ctx,
        20,
        "every row on the stream once",
        Duration::from_secs(3),
    )
    .await;
    assert_eq!(unpublished(&pool).await, 0);
}

/// How many outbox rows have waited longer than `claim_after` (the poll may claim them).
async fn claimable(pool: &PgPool, claim_after: Duration) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM outbox_pending
         WHERE queued_at < now() - make_interval(secs => $1)",
    )
    .bind(claim_after.as_secs_f64())
    .fetch_one(pool)
    .await
    .expect("counts")
}

#[tokio::test]
async fn the_marks_of_several_hand_overs_are_written_together() {
    let ctx = TestContext::new();
    let pool = database(&ctx).await;
    let queue = RelayQueue::default();
    let relay = claiming_relay(&ctx, &pool, &queue).await;
    for _ in 0..3 {
        queue.hand_over(enqueue(&pool, &event()).await);
        assert_eq!(relay.publish_handed_over().await.expect("publishes"), 1);
    }
    published(
        &ctx,
        3,
        "each hand-over on the stream at once",
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(unpublished(&pool).await, 3, "no mark written per hand-over");
    assert_eq!(
        relay.mark_published().await.expect("marks"),
        3,
        "one statement"
    );
    assert_eq!(unpublished(&pool).await, 0);
    assert_eq!(
        relay.mark_published().await.expect("marks"),
        0,
        "nothing twice"
    );
}

#[tokio::test]
async fn the_relay_queue_and_its_waiting_marks_are_bounded_and_the_rest_is_polled() {
    let ctx = TestContext::new();
    let pool = database(&ctx).await;
    let queue = RelayQueue::default();
    let relay = claiming_relay(&ctx, &pool, &queue).await;
    let sent: Vec<Envelope> = (0..outbox::QUEUE_LIMIT + 50).map(|_| event()).collect();
    let mut tx = pool.begin().await.expect("begins");
    let rows = outbox::enqueue_all(
        &mut tx,
        STREAM,
        &EventWriter::unsigned(SchemaVersion::NEWEST),
        &sent,
    )
    .await
    .expect("enqueues");
    tx.commit().await.expect("commits");
    queue.hand_over(rows);

    assert_eq!(
        relay.publish_handed_over().await.expect("publishes"),
        outbox::QUEUE_LIMIT,
        "memory holds at most QUEUE_LIMIT rows"
    );
    assert_eq!(
        unpublished(&pool).await,
        50,
        "as many marks waiting as the queue holds rows are written with the publish (memory \
         stays bounded however fast rows come); the rest wait in the table"
    );
    assert_eq!(
        relay.mark_published().await.expect("marks"),
        0,
        "no mark left waiting"
    );
    claimed(&relay, 50).await;
    published(
        &ctx,
        sent.len(),
        "every row on the stream, once",
        Duration::from_secs(5),
    )
    .await;
}

#[tokio::test]
async fn only_the_answers_of_events_that_committed_go_to_the_relay() {
    let ctx = TestContext::new();
    let pool = database(&ctx).await;
    let queue = RelayQueue::default();
    let handler = CountingHandler::default();
    let consumer = consumer_handing_to(&ctx, &pool, handler.clone(), &queue).await;
    let (good, poisoned, other) = (event(), event(), event());
    *handler.poisoned.lock().expect("lock") = Some(poisoned.event_id);
    for e in [&good, &poisoned, &other] {
        ctx.xadd(STREAM, &e.to_fields()).await;
    }
    let report = consumer.consume_once().await.expect("consumes");
    assert_eq!(report.applied, 2, "{report:?}");

    let hour = Duration::from_secs(3600);
    let relay = relay_with(&ctx, &pool, (hour, hour), &queue).await;
    assert_eq!(
        relay.publish_handed_over().await.expect("publishes"),
        2,
        "the answers of the two events that committed, not of the one rolled back"
    );
    let mut answered: Vec<String> = ctx
        .entries(ANSWERS)
        .await
        .into_iter()
        .filter_map(|(_, f)| f.into_iter().find(|(k, _)| k == "order_id").map(|(_, v)| v))
        .collect();
    answered.sort();
    let mut expected = vec![good.order_id.to_string(), other.order_id.to_string()];
    expected.sort();
    assert_eq!(answered, expected);
}

#[tokio::test]
async fn two_relays_publish_every_row_exactly_once() {
    let ctx = TestContext::new();
    let pool = database(&ctx).await;
    let sent: Vec<Envelope> = (0..300).map(|_| event()).collect();
    for envelope in &sent {
        enqueue(&pool, envelope).await;
    }
    let (a, b) = (
        relay(&ctx, &pool, Duration::from_secs(1)).await,
        relay(&ctx, &pool, Duration::from_secs(1)).await,
    );
    let drain = |relay: OutboxRelay| async move {
        let mut total = 0;
        loop {
            match relay.relay_once().await.expect("relays") {
                0 => return total,
                n => total += n,
            }
        }
    };
    let (by_a, by_b) = tokio::join!(drain(a), drain(b));
    assert_eq!(by_a + by_b, 300);

    let mut published: Vec<String> = ctx
        .entries(STREAM)
        .await
        .into_iter()
        .filter_map(|(_, f)| f.into_iter().find(|(k, _)| k == "event_id").map(|(_, v)| v))
        .collect();
    published.sort();
    let mut expected: Vec<String> = sent.iter().map(|e| e.event_id.to_string()).collect();
    expected.sort();
    assert_eq!(published, expected, "each event exactly once");
}

#[tokio::test]
async fn a_relay_that_cannot_publish_marks_nothing_and_publishes_once_redis_is_back() {
    let mut redis = PrivateRedis::start().await;
    let ctx = TestContext::with_redis(&redis.url());
    let pool = database(&ctx).await;
    let relay = relay(&ctx, &pool, Duration::from_secs(1)).await;
    for _ in 0..3 {
        enqueue(&pool, &event()).await;
    }

    redis.kill();
    assert!(relay.relay_once().await.is_err(), "no Redis, no publish");
    assert_eq!(
        unpublished(&pool).await,
        3,
        "a row is marked only once its XADD answered"
    );

    redis.restart().await;
    claimed_once_redis_is_back(&ctx, &relay, 3).await;
}

#[tokio::test]
async fn a_consumer_recreates_its_group_when_redis_loses_it() {
    let ctx = TestContext::new();
    let pool = database(&ctx).await;
    let consumer = consumer(&ctx, &pool, CountingHandler::default()).await;
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    let running = tokio::spawn(async move { consumer.run(stop).await });
    ctx.xadd(STREAM, &event().to_fields()).await;
    ctx.drained(STREAM, GROUP).await;

    let _: () = redis::cmd("DEL")
        .arg(ctx.stream(STREAM))
        .query_async(&mut ctx.redis().await)
        .await
        .expect("DEL");
    let after = event();
    ctx.xadd(STREAM, &after.to_fields()).await;
    eventually(
        "the event after the loss to be applied",
        Duration::from_secs(10),
        || async {
            let seen = effects(&pool).await;
            if seen.iter().any(|(id, _)| *id == after.event_id) {
                Ok(())
            } else {
                Err(format!("{seen:?}"))
            }
        },
    )
    .await;
    shutdown.cancel();
    running.await.expect("consumer stops");
}

#[tokio::test]
async fn entries_of_a_dead_consumer_are_reclaimed_once_idle_long_enough() {
    let ctx = TestContext::new();
    let pool = database(&ctx).await;
    let consumer = consumer(&ctx, &pool, CountingHandler::default()).await;
    let e = event();
    ctx.xadd(STREAM, &e.to_fields()).await;
    // Another consumer of the group reads the entry and dies before acking it.
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg(GROUP)
        .arg("victim")
        .arg("STREAMS")
        .arg(ctx.stream(STREAM))
        .arg(">")
        .query_async(&mut ctx.redis().await)
        .await
        .expect("read");

    assert_eq!(
        consumer.reclaim_stuck_entries().await.expect("claims"),
        0,
        "not idle long enough yet: not stolen"
    );
    let claimed = eventually(
        "the entry to pass CLAIM_MIN_IDLE_MS",
        Duration::from_secs(5),
        || async {
            match consumer.reclaim_stuck_entries().await {
                Ok(0) => Err("nothing claimed".to_owned()),
                Ok(n) => Ok(n),
                Err(e) => Err(e.to_string()),
            }
        },
    )
    .await;
    assert_eq!(claimed, 1);
    let report = consumer.consume_own_pending_once().await.expect("consumes");
    assert_eq!(report.applied, 1, "{report:?}");
    assert_eq!(effects(&pool).await, vec![(e.event_id, 1)]);
    assert_eq!(ctx.group_backlog(STREAM, GROUP).await, Some((0, 0)));
}

#[tokio::test]
async fn the_sweeper_deletes_published_rows_past_retention_and_keeps_the_rest() {
    let ctx = TestContext::new();
    let pool = database(&ctx).await;
    let (published, waiting) = (event(), event());
    enqueue(&pool, &published).await;
    assert_eq!(
        relay(&ctx, &pool, Duration::from_secs(1))
            .await
            .relay_once()
            .await
            .expect("relays"),
        1
    );
    enqueue(&pool, &waiting).await;

    assert_eq!(
        outbox::sweep_published(&pool, Duration::from_secs(3600), None)
            .await
            .expect("sweeps"),
        0,
        "within retention"
    );
    assert_eq!(
        outbox::sweep_published(&pool, Duration::ZERO, None)
            .await
            .expect("sweeps"),
        1
    );
    let left: Vec<Uuid> = sqlx::query_scalar("SELECT event_id FROM outbox")
        .fetch_all(&pool)
        .await
        .expect("rows");
    assert_eq!(
        left,
        vec![waiting.event_id],
        "the unpublished row stays whatever its age"
    );
}

/// SPEC §4.9, turning signing on: an event committed unsigned (before the service had a
/// key) and asked again afterwards goes out signed with the key, so a consumer that
/// requires signatures accepts the repeat; the same event, same `event_id`.
#[tokio::test]
async fn a_row_committed_unsigned_is_asked_again_signed() {
    let ctx = TestContext::new();
    let pool = database(&ctx).await;
    let question = event();
    enqueue(&pool, &question).await;
    let relay = relay(&ctx, &pool, Duration::from_secs(1)).await;
    assert_eq!(relay.relay_once().await.expect("relays"), 1);

    let (private, public) = events::EventSigner::generate_pem().expect("a key");
    let signer = events::EventSigner::from_pem(&private).expect("reads");
    let key_id = signer.key_id().to_owned();
    let writer = EventWriter::new(SchemaVersion::NEWEST, Some(std::sync::Arc::new(signer)));
    let mut tx = pool.begin().await.expect("begins");
    let again = outbox::republish(
        &mut tx,
        &[question.order_id.to_string()],
        None,
        &Reask::every(Duration::ZERO),
        &writer,
    )
    .await
    .expect("re-arms");
    tx.commit().await.expect("commits");
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].key_id(), Some(key_id.as_str()));
    assert_eq!(relay.relay_once().await.expect("relays"), 1);

    let keys = events::VerifyingKeys::from_pem(&public).expect("reads");
    let sent = ctx.entries(STREAM).await;
    let verdicts: Vec<bool> = sent
        .iter()
        .map(|(_, fields)| keys.verify(fields).is_ok())
        .collect();
    assert_eq!(verdicts, [false, true], "first unsigned, then signed");
    let ids: Vec<&str> = sent
        .iter()
        .filter_map(|(_, f)| {
            f.iter()
                .find(|(k, _)| k == "event_id")
                .map(|(_, v)| v.as_str())
        })
        .collect();
    assert_eq!(ids[0], ids[1], "the same event");
}

/// SPEC §4.9, a rollback of batch signatures: events committed signed as one batch and
/// asked again after `SIGNATURE_SCOPE` was switched back to `entry` go out signed each on
/// its own, without a path, so a reader rolled back to a release before batch signatures
/// verifies the repeats; the same events, same `event_id`s.
#[tokio::test]
async fn rows_signed_as_a_batch_are_asked_again_signed_each_alone() {
    let ctx = TestContext::new();
    let pool = database(&ctx).await;
    let (private, public) = events::EventSigner::generate_pem().expect("a key");
    let signer = Arc::new(events::EventSigner::from_pem(&private).expect("reads"));
    let writer = EventWriter::new(SchemaVersion::NEWEST, Some(signer));
    let questions = [event(), event()];
    let mut tx = pool.begin().await.expect("begins");
    let batch_writer = writer.clone().with_scope(events::SignatureScope::Batch);
    let rows = outbox::enqueue_all(&mut tx, STREAM, &batch_writer, &questions)
        .await
        .expect("enqueues");
    tx.commit().await.expect("commits");
    let has_path = |fields: &[String]| fields.iter().any(|f| f == "signature_proof");
    assert!(rows.iter().all(|row| has_path(&row.fields)));
    let relay = relay(&ctx, &pool, Duration::from_secs(1)).await;
    assert_eq!(relay.relay_once().await.expect("relays"), 2);

    let mut tx = pool.begin().await.expect("begins");
    let order_ids: Vec<String> = questions.iter().map(|q| q.order_id.to_string()).collect();
    let again = outbox::republish(
        &mut tx,
        &order_ids,
        None,
        &Reask::every(Duration::ZERO),
        &writer,
    )
    .await
    .expect("re-arms");
    tx.commit().await.expect("commits");
    assert_eq!(again.len(), 2);
    assert!(
        again.iter().all(|row| !has_path(&row.fields)),
        "signed alone"
    );
    assert_eq!(relay.relay_once().await.expect("relays"), 2);

    let keys = events::VerifyingKeys::from_pem(&public).expect("reads");
    let sent = ctx.entries(STREAM).await;
    assert_eq!(sent.len(), 4);
    for (_, fields) in &sent[2..] {
        assert!(
            !fields.iter().any(|(k, _)| k == "signature_proof"),
            "{fields:?}"
        );
        assert_eq!(keys.verify(fields), Ok(()));
    }
    let ids = |entries: &[(String, Vec<(String, String)>)]| -> std::collections::BTreeSet<String> {
        entries
            .iter()
            .filter_map(|(_, f)| {
                f.iter()
                    .find(|(k, _)| k == "event_id")
                    .map(|(_, v)| v.clone())
            })
            .collect()
    };
    assert_eq!(ids(&sent[..2]), ids(&sent[2..]), "the same events");
}

/// SPEC §3.4, a rollback: an event committed as version 2 and asked again after the
/// service was switched back to writing version 1 goes out as version 1 (its `pay_by`
/// dropped, as version 1 has none), so a reader rolled back to a build of version 1 reads
/// it; the same event, same `event_id`.
#[tokio::test]
async fn a_row_of_a_newer_version_is_asked_again_as_the_version_written_now() {
    let ctx = TestContext::new();
    let pool = database(&ctx).await;
    let question = event();
    enqueue(&pool, &question).await;
    let relay = relay(&ctx, &pool, Duration::from_secs(1)).await;
    assert_eq!(relay.relay_once().await.expect("relays"), 1);

    let mut tx = pool.begin().await.expect("begins");
    let again = outbox::republish(
        &mut tx,
        &[question.order_id.to_string()],
        None,
        &Reask::every(Duration::ZERO),
        &EventWriter::unsigned(SchemaVersion::V1),
    )
    .await
    .expect("re-arms");
    tx.commit().await.expect("commits");
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].schema_version(), Some(1));
    assert_eq!(relay.relay_once().await.expect("relays"), 1);

    let sent: Vec<(u32, Envelope)> = ctx
        .entries(STREAM)
        .await
        .into_iter()
        .map(|(_, fields)| {
            let version = fields
                .iter()
                .find(|(k, _)| k == "schema_version")
                .and_then(|(_, v)| v.parse().ok())
                .expect("a version");
            let envelope =
                Envelope::from_fields(fields.iter().map(|(k, v)| (k.as_str(), v.as_bytes())))
                    .expect("decodes");
            (version, envelope)
        })
        .collect();
    assert_eq!(
        sent.iter()
            .map(|(v, e)| (*v, e.event_id))
            .collect::<Vec<_>>(),
        [(2, question.event_id), (1, question.event_id)]
    );
    let Event::OrderCreated(repeat) = &sent[1].1.event else {
        panic!("an OrderCreated");
    };
    assert_eq!(repeat.pay_by, None, "version 1 has no deadline");
    let stored: Vec<String> = sqlx::query_scalar("SELECT fields FROM outbox")
        .fetch_one(&pool)
        .await
        .expect("the row");
    assert!(
        stored
            .windows(2)
            .any(|p| p[0] == "schema_version" && p[1] == "1"),
        "rewritten in the table, for the relay's poll: {stored:?}"
    );
}

#[tokio::test]
async fn republishing_rearms_published_rows_once_and_leaves_waiting_rows_to_the_relay() {
    let ctx = TestContext::new();
    let pool = database(&ctx).await;
    let (published, waiting) = (event(), event());
    enqueue(&pool, &published).await;
    let relay = relay(&ctx, &pool, Duration::from_secs(1)).await;
    assert_eq!(relay.relay_once().await.expect("relays"), 1);
    enqueue(&pool, &waiting).await;
    let orders = [published.order_id.to_string(), waiting.order_id.to_string()];

    let mut tx = pool.begin().await.expect("begins");
    let rearmed = outbox::republish(
        &mut tx,
        &orders,
        None,
        &Reask::every(Duration::ZERO),
        &EventWriter::unsigned(SchemaVersion::NEWEST),
    )
    .await
    .expect("re-arms");
    let again = outbox::republish(
        &mut tx,
        &orders,
        None,
        &Reask::every(Duration::ZERO),
        &EventWriter::unsigned(SchemaVersion::NEWEST),
    )
    .await
    .expect("re-arms");
    tx.commit().await.expect("commits");
    let ids = |rows: &[OutboxRow]| rows.iter().map(|r| r.event_id).collect::<Vec<_>>();
    assert_eq!(
        ids(&rearmed),
        vec![published.event_id],
        "only the published row"
    );
    assert_eq!(ids(&again), Vec::<Uuid>::new(), "a re-armed row waits once");
    assert_eq!(unpublished(&pool).await, 2);

    let mut tx = pool.begin().await.expect("begins");
    let too_young = outbox::republish(
        &mut tx,
        &orders,
        None,
        &Reask::every(Duration::from_secs(3600)),
        &EventWriter::unsigned(SchemaVersion::NEWEST),
    )
    .await
    .expect("re-arms");
    tx.rollback().await.expect("rolls back");
    assert!(too_young.is_empty(), "made less than an hour ago");

    assert_eq!(relay.relay_once().await.expect("relays"), 2);
    assert_eq!(unpublished(&pool).await, 0);
    let sent: Vec<String> = ctx
        .entries(STREAM)
        .await
        .into_iter()
        .filter_map(|(_, fields)| {
            fields
                .into_iter()
                .find_map(|(name, value)| (name == "event_id").then_some(value))
        })
        .collect();
    assert_eq!(
        sent,
        [published.event_id, published.event_id, waiting.event_id].map(|id| id.to_string()),
        "the same event again, then the one that waited"
    );

    // Made two hours ago: due once an hour, so re-published now, and not again within the hour.
    sqlx::query(
        "UPDATE outbox SET created_at = now() - interval '2 hours', rearmed_at = NULL, next_rearm_at = NULL",
    )
        .execute(&pool)
        .await
        .expect("ages the rows");
    let hourly = || async {
        let mut tx = pool.begin().await.expect("begins");
        let rows = outbox::republish(
            &mut tx,
            &orders,
            None,
            &Reask::every(Duration::from_secs(3600)),
            &EventWriter::unsigned(SchemaVersion::NEWEST),
        )
        .await
        .expect("re-arms");
        tx.commit().await.expect("commits");
        assert_eq!(relay.relay_once().await.expect("relays"), rows.len());
        rows.len()
    };
    assert_eq!(hourly().await, 2, "both are due");
    assert_eq!(hourly().await, 0, "both were queued again just now");
}

/// SPEC §4.9: a question is not asked again while its last copy waits undelivered in
/// the stream; once delivered and still unanswered it is, and each repeat then waits twice
/// as long as the one before (±25 % jitter), up to the cap.
#[tokio::test]
async fn a_question_waits_while_its_copy_is_queued_and_backs_off_once_delivered() {
    let ctx = TestContext::new();
    let pool = database(&ctx).await;
    let mut redis = ctx.redis().await;
    let stream = ctx.stream(STREAM);
    // An older entry, so the stream began well before the question was made.
    let old_ms = time::OffsetDateTime::now_utc().unix_timestamp() * 1000 - 10_000;
    let _: String = redis::cmd("XADD")
        .arg(&stream)
        .arg(format!("{old_ms}-0"))
        .arg("filler")
        .arg("1")
        .query_async(&mut redis)
        .await
        .expect("XADD");
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&stream)
        .arg(GROUP)
        .arg("0")
        .query_async(&mut redis)
        .await
        .expect("group");
    let question = event();
    enqueue(&pool, &question).await;
    assert_eq!(
        relay(&ctx, &pool, Duration::from_secs(1))
            .await
            .relay_once()
            .await
            .expect("relays"),
        1
    );
    // Due by age: made 300 ms ago, asked again after 200 ms.
    sqlx::query("UPDATE outbox SET created_at = now() - interval '300 milliseconds'")
        .execute(&pool)
        .await
        .expect("aged");
    let ask = |reask: Reask| {
        let pool = pool.clone();
        async move {
            let mut tx = pool.begin().await.expect("begins");
            let rows = outbox::republish(
                &mut tx,
                &[question.order_id.to_string()],
                None,
                &reask,
                &EventWriter::unsigned(SchemaVersion::NEWEST),
            )
            .await
            .expect("re-arms");
            tx.commit().await.expect("commits");
            sqlx::query("DELETE FROM outbox_pending")
                .execute(&pool)
                .await
                .expect("as if published");
            rows.len()
        }
    };
    let reask = |still_queued| Reask {
        after: Duration::from_millis(200),
        backoff_cap: Duration::from_millis(500),
        still_queued,
        looks_every: Duration::from_millis(100),
    };
    let window = |redis: service_runtime::RedisConnection| {
        let stream = stream.clone();
        async move {
            outbox::still_queued(&mut redis.clone(), &stream, GROUP)
                .await
                .expect("XINFO")
        }
    };

    let queued = window(redis.clone()).await;
    assert!(queued.is_some(), "the stream has entries");
    assert_eq!(ask(reask(queued)).await, 0, "its copy waits undelivered");

    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg(GROUP)
        .arg("c")
        .arg("STREAMS")
        .arg(&stream)
        .arg(">")
        .query_async(&mut redis)
        .await
        .expect("delivered");
    // Delivered, unanswered: asked again now; then the waits double up to the cap.
    sqlx::query("UPDATE outbox SET next_rearm_at = now()")
        .execute(&pool)
        .await
        .expect("due");
    for (rearm, (low, high)) in [(0.15, 0.25), (0.3, 0.5), (0.375, 0.625), (0.375, 0.625)]
        .into_iter()
        .enumerate()
    {
        let delivered = window(redis.clone()).await;
        assert_eq!(ask(reask(delivered)).await, 1, "repeat {rearm}");
        let wait: f64 = sqlx::query_scalar(
            "SELECT EXTRACT(EPOCH FROM next_rearm_at - rearmed_at)::float8 FROM outbox",
        )
        .fetch_one(&pool)
        .await
        .expect("schedule");
        assert!(
            (low..=high).contains(&wait),
            "repeat {rearm} waits {wait} s"
        );
        assert_eq!(ask(reask(delivered)).await, 0, "not due yet");
        sqlx::query("UPDATE outbox SET next_rearm_at = now()")
            .execute(&pool)
            .await
            .expect("due");
    }
}

#[tokio::test]
async fn one_failing_event_rolls_back_only_itself_and_the_rest_of_the_batch_commits() {
    let ctx = TestContext::new();
    let pool = database(&ctx).await;
    let handler = CountingHandler::default();
    let consumer = consumer(&ctx, &pool, handler.clone()).await;
    let (before, bad, after) = (event(), event(), event());
    *handler.poisoned.lock().unwrap_or_else(|e| e.into_inner()) = Some(bad.event_id);
    for e in [&before, &bad, &after] {
        ctx.xadd(STREAM, &e.to_fields()).await;
    }

    let report = consumer.consume_once().await.expect("consumes");
    assert_eq!(
        (report.delivered, report.applied, report.retry_later),
        (3, 2, 1),
        "{report:?}"
    );
    let mut expected = vec![(before.event_id, 1), (after.event_id, 1)];
    expected.sort();
    assert_eq!(
        effects(&pool).await,
        expected,
        "the others committed, in one transaction"
    );
    let inbox: Vec<Uuid> = sqlx::query_scalar("SELECT event_id FROM inbox")
        .fetch_all(&pool)
        .await
        .expect("inbox");
    assert!(
        !inbox.contains(&bad.event_id),
        "the failed event left no inbox row"
    );
    assert_eq!(
        ctx.group_backlog(STREAM, GROUP).await,
        Some((1, 0)),
        "only the failed one stays pending"
    );
}

/// The key of the test group's parked events.
fn parked_key(ctx: &TestContext) -> String {
    format!("{{{}}}:parked:{GROUP}", ctx.stream(STREAM))
}

async fn parked(ctx: &TestContext) -> u64 {
    redis::cmd("HLEN")
        .arg(parked_key(ctx))
        .query_async(&mut ctx.redis().await)
        .await
        .expect("HLEN")
}

/// `envelope`'s fields, as a build writing schema `version` would write them.
fn written_as(envelope: &Envelope, version: &str) -> Vec<(&'static str, String)> {
    let mut fields = envelope.to_fields();
    for (name, value) in &mut fields {
        if *name == "schema_version" {
            *value = version.to_owned();
        }
    }
    fields
}

/// SPEC §3.4: an event of a newer schema_version than this build reads (a rolling
/// upgrade under way) is not applied, not a failed delivery and not dead-lettered: it is
/// parked, one copy however often it comes, and acked; the rest of the batch flows.
#[tokio::test]
async fn an_event_of_a_newer_schema_version_is_parked_once_not_dead_lettered() {
    let ctx = TestContext::new();
    let pool = database(&ctx).await;
    let consumer = consumer(&ctx, &pool, CountingHandler::default()).await;
    let (newer, current) = (event(), event());
    for _ in 0..3 {
        ctx.xadd(STREAM, &written_as(&newer, "3")).await;
    }
    ctx.xadd(STREAM, &current.to_fields()).await;

    let report = consumer.consume_once().await.expect("consumes");
    assert_eq!(
        (
            report.parked,
            report.applied,
            report.dead_lettered,
            report.retry_later
        ),
        (3, 1, 0, 0),
        "{report:?}"
    );
    assert_eq!(effects(&pool).await, vec![(current.event_id, 1)]);
    assert_eq!(
        ctx.group_backlog(STREAM, GROUP).await,
        Some((0, 0)),
        "all acked"
    );
    assert!(ctx.dead_letters_of(STREAM, GROUP).await.is_empty());
    assert_eq!(parked(&ctx).await, 1, "one copy per event_id");

    // This build cannot read it: it stays parked, however often the consumer comes round.
    let applied = consumer
        .unpark(&CancellationToken::new())
        .await
        .expect("unparks");
    assert_eq!((applied, parked(&ctx).await), (0, 1));
}

/// SPEC §3.4: what replicas of an older build parked, a build that reads its version
/// applies straight from the parked hash (the inbox absorbing what it applied before),
/// and deletes it from there once applied.
#[tokio::test]
async fn parked_events_a_build_reads_are_applied_from_the_hash_and_removed() {
    let ctx = TestContext::new();
    let pool = database(&ctx).await;
    let handler = CountingHandler::default();
    let consumer = consumer(&ctx, &pool, handler.clone()).await;
    let (readable, failing, newer) = (event(), event(), event());
    let mut redis = ctx.redis().await;
    for (envelope, version) in [(&readable, "1"), (&failing, "2"), (&newer, "3")] {
        let fields: Vec<String> = written_as(envelope, version)
            .into_iter()
            .flat_map(|(name, value)| [name.to_owned(), value])
            .collect();
        // As a replica of a build that did not read it left it.
        let parked = serde_json::json!({ "id": "1-1", "fields": fields });
        let _: () = redis::cmd("HSET")
            .arg(parked_key(&ctx))
            .arg(envelope.event_id.to_string())
            .arg(parked.to_string())
            .query_async(&mut redis)
            .await
            .expect("HSET");
    }
    *handler.poisoned.lock().expect("lock") = Some(failing.event_id);

    let applied = consumer
        .unpark(&CancellationToken::new())
        .await
        .expect("unparks");
    assert_eq!(applied, 1);
    assert_eq!(effects(&pool).await, vec![(readable.event_id, 1)]);
    assert_eq!(
        parked(&ctx).await,
        2,
        "the one that failed waits for the next round, the one it cannot read still waits"
    );

    *handler.poisoned.lock().expect("lock") = None;
    let again = consumer
        .unpark(&CancellationToken::new())
        .await
        .expect("unparks");
    assert_eq!(again, 1);
    let mut expected = vec![(readable.event_id, 1), (failing.event_id, 1)];
    expected.sort();
    assert_eq!(effects(&pool).await, expected, "each applied once");
    assert_eq!(parked(&ctx).await, 1);
}
