//! Consumers of one group take turns reading new entries: a replica waits while another
//! applies a short batch, and then reads all that arrived meanwhile as one batch; a full
//! read passes the turn at once; a turn whose holder died expires. Each test has a Redis
//! of its own, so that the one client blocked in it is the replica under test.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use events::Envelope;
use service_runtime::consumer::ConsumerConfig;
use service_runtime::liveness::Liveness;
use service_runtime::outbox::{OutboxRow, RelayQueue};
use service_runtime::redis_conn::RedisConnections;
use service_runtime::{Consumer, EventHandler, HandleError, StreamKeys};
use sqlx::{PgConnection, PgPool};
use testkit::{PrivateRedis, TestContext, eventually};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::runtime::{GROUP, STREAM, database, event};

/// Records the size of every batch it is given, then waits until the gate is open.
#[derive(Clone)]
struct GatedHandler {
    batches: Arc<Mutex<Vec<usize>>>,
    gate: watch::Sender<bool>,
}

impl GatedHandler {
    fn closed() -> Self {
        Self {
            batches: Arc::default(),
            gate: watch::Sender::new(false),
        }
    }

    fn open(&self) {
        self.gate.send_replace(true);
    }

    fn batches(&self) -> Vec<usize> {
        self.batches
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl EventHandler for GatedHandler {
    async fn handle(
        &self,
        _tx: &mut PgConnection,
        events: &[&Envelope],
    ) -> Result<Vec<OutboxRow>, HandleError> {
        self.batches
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(events.len());
        let mut gate = self.gate.subscribe();
        let _ = gate.wait_for(|open| *open).await;
        Ok(Vec::new())
    }
}

/// A consumer group on a Redis of the test's own, its database, and one handler for all
/// its replicas.
struct Group {
    ctx: TestContext,
    pool: PgPool,
    handler: GatedHandler,
    /// Last, so it outlives the context, which cleans up in it when dropped.
    _redis: PrivateRedis,
}

impl Group {
    async fn new() -> Self {
        let redis = PrivateRedis::start().await;
        let ctx = TestContext::with_redis(&redis.url());
        let pool = database(&ctx).await;
        Self {
            ctx,
            pool,
            handler: GatedHandler::closed(),
            _redis: redis,
        }
    }

    async fn replica(
        &self,
        name: &str,
        read_count: usize,
        block: Duration,
    ) -> Arc<Consumer<GatedHandler>> {
        Arc::new(self.consumer(name, read_count, block).await)
    }

    async fn consumer(
        &self,
        name: &str,
        read_count: usize,
        block: Duration,
    ) -> Consumer<GatedHandler> {
        let redis = RedisConnections::connect(self.ctx.redis_url(), block)
            .await
            .expect("redis");
        let config = ConsumerConfig {
            stream: STREAM,
            group: GROUP,
            consumer: name.into(),
            read_count,
            block,
            max_deliveries: 5,
            claim_min_idle: Duration::from_secs(60),
            parallelism: 1,
            max_entry_bytes: 262_144,
            contention_budget: Duration::from_secs(10),
            transaction_deadline: Duration::from_secs(30),
        };
        let consumer = Consumer::new(
            self.pool.clone(),
            redis,
            &StreamKeys::new(self.ctx.namespace()),
            config,
            self.handler.clone(),
            RelayQueue::default(),
        );
        consumer.ensure_group().await.expect("group");
        consumer
    }

    fn turn(&self) -> String {
        StreamKeys::new(self.ctx.namespace()).read_turn(STREAM, GROUP)
    }

    /// Sets the turn as a replica named `holder` would have taken it.
    async fn turn_taken_by(&self, holder: &str, expiry_ms: u64) {
        let _: () = redis::cmd("SET")
            .arg(self.turn())
            .arg(holder)
            .arg("PX")
            .arg(expiry_ms)
            .query_async(&mut self.ctx.redis().await)
            .await
            .expect("SET");
    }

    async fn publish(&self, n: usize) {
        for _ in 0..n {
            self.ctx.xadd(STREAM, &event().to_fields()).await;
        }
    }
}

/// Waits until exactly one client is blocked in a command (`BLPOP`, `XREADGROUP ...
/// BLOCK`) on the test's Redis: the replica under test, waiting.
async fn one_client_blocked(ctx: &TestContext, what: &str) {
    eventually(what, Duration::from_secs(5), || async {
        let info: String = redis::cmd("INFO")
            .arg("clients")
            .query_async(&mut ctx.redis().await)
            .await
            .map_err(|e| e.to_string())?;
        match info
            .lines()
            .find_map(|line| line.strip_prefix("blocked_clients:"))
            .map(str::trim)
        {
            Some("1") => Ok(()),
            _ => Err(info),
        }
    })
    .await;
}

#[tokio::test]
async fn a_replica_waits_while_another_applies_a_short_batch_and_then_reads_all_that_arrived() {
    let group = Group::new().await;
    let (ctx, handler) = (&group.ctx, &group.handler);
    let block = Duration::from_secs(5);
    let a = group.replica("a", 10, block).await;
    let b = group.replica("b", 10, block).await;

    group.publish(1).await;
    let first = tokio::spawn({
        let a = a.clone();
        async move { a.consume_once().await }
    });
    eventually("a to apply its batch", Duration::from_secs(5), || async {
        let batches = handler.batches();
        if batches == [1] {
            Ok(())
        } else {
            Err(format!("{batches:?}"))
        }
    })
    .await;
    let second = tokio::spawn({
        let b = b.clone();
        async move { b.consume_once().await }
    });
    one_client_blocked(ctx, "b to wait").await;
    group.publish(3).await;
    handler.open();

    let first = first.await.expect("joins").expect("a consumes");
    let second = second.await.expect("joins").expect("b consumes");
    assert_eq!(first.applied, 1, "{first:?}");
    assert_eq!(
        second.applied, 3,
        "b read what arrived while a applied its batch, as one batch: {second:?}"
    );
    assert_eq!(handler.batches(), [1, 3]);
    assert_eq!(ctx.group_backlog(STREAM, GROUP).await, Some((0, 0)));
}

#[tokio::test]
async fn a_full_read_passes_the_turn_at_once_and_replicas_apply_a_backlog_side_by_side() {
    let group = Group::new().await;
    let handler = &group.handler;
    // A turn kept would only expire after BLOCK + 1 s: longer than the wait below.
    let block = Duration::from_secs(5);
    let a = group.replica("a", 2, block).await;
    let b = group.replica("b", 2, block).await;
    group.publish(4).await;

    let consuming: Vec<_> = [a, b]
        .into_iter()
        .map(|replica| tokio::spawn(async move { replica.consume_once().await }))
        .collect();
    eventually(
        "both replicas to apply a full batch at once",
        Duration::from_secs(3),
        || async {
            let batches = handler.batches();
            if batches == [2, 2] {
                Ok(())
            } else {
                Err(format!("{batches:?}"))
            }
        },
    )
    .await;
    handler.open();
    for consumed in consuming {
        let report = consumed.await.expect("joins").expect("consumes");
        assert_eq!(report.applied, 2, "{report:?}");
    }
    assert_eq!(group.ctx.group_backlog(STREAM, GROUP).await, Some((0, 0)));
}

#[tokio::test]
async fn the_turn_of_a_replica_that_died_expires_and_another_reads() {
    let group = Group::new().await;
    group.handler.open();
    let b = group.replica("b", 10, Duration::from_millis(200)).await;
    group.turn_taken_by("dead", 1500).await;
    group.publish(1).await;

    let waited = b.consume_once().await.expect("consumes");
    assert_eq!(
        waited.delivered, 0,
        "the turn is the dead replica's: {waited:?}"
    );
    let read = eventually(
        "the dead replica's turn to expire",
        Duration::from_secs(10),
        || async {
            match b.consume_once().await {
                Ok(report) if report.delivered > 0 => Ok(report),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    assert_eq!(read.applied, 1, "{read:?}");
}

#[tokio::test]
async fn a_replica_restarted_under_its_name_takes_back_the_turn_it_held() {
    let group = Group::new().await;
    group.handler.open();
    let a = group.replica("a", 10, Duration::from_millis(200)).await;
    group.turn_taken_by("a", 60_000).await;
    group.publish(1).await;

    let report = a.consume_once().await.expect("consumes");
    assert_eq!(report.applied, 1, "{report:?}");
    let holder: Option<String> = redis::cmd("GET")
        .arg(group.turn())
        .query_async(&mut group.ctx.redis().await)
        .await
        .expect("GET");
    assert_eq!(holder, None, "a short batch acked: the turn was passed on");
}

#[tokio::test]
async fn the_wake_up_list_holds_one_token_at_most_and_expires() {
    let group = Group::new().await;
    let a = group.replica("a", 10, Duration::from_millis(100)).await;
    for _ in 0..5 {
        let report = a.consume_once().await.expect("consumes");
        assert_eq!(report.delivered, 0, "nothing to read: {report:?}");
    }

    let wake = format!("{}:wake", group.turn());
    let mut conn = group.ctx.redis().await;
    let tokens: u64 = redis::cmd("LLEN")
        .arg(&wake)
        .query_async(&mut conn)
        .await
        .expect("LLEN");
    assert_eq!(tokens, 1, "five turns passed, nobody waiting: one token");
    let expires_in: i64 = redis::cmd("PTTL")
        .arg(&wake)
        .query_async(&mut conn)
        .await
        .expect("PTTL");
    assert!(
        (1..=1100).contains(&expires_in),
        "the list expires with the turn (BLOCK + 1 s): {expires_in} ms"
    );
}

#[tokio::test]
async fn a_replica_handed_the_turn_after_shutdown_began_stops_without_reading() {
    let group = Group::new().await;
    group.handler.open();
    let block = Duration::from_secs(5);
    let b = group.replica("b", 10, block).await;
    group.turn_taken_by("a", 60_000).await;
    let shutdown = CancellationToken::new();
    let running = tokio::spawn({
        let (b, shutdown) = (b.clone(), shutdown.clone());
        async move { b.run(shutdown).await }
    });
    one_client_blocked(&group.ctx, "b to wait for the turn").await;

    shutdown.cancel();
    // a passes the turn, as its script does: b wakes with the turn in hand.
    let turn = group.turn();
    let _: () = redis::pipe()
        .cmd("DEL")
        .arg(&turn)
        .cmd("LPUSH")
        .arg(format!("{turn}:wake"))
        .arg(1)
        .query_async(&mut group.ctx.redis().await)
        .await
        .expect("passes");
    tokio::time::timeout(Duration::from_secs(2), running)
        .await
        .expect("b stops without a read of up to BLOCK (5 s)")
        .expect("joins");
}

/// `/health/live`'s source (SPEC §4.9): a consumer stuck inside a batch (its handler never
/// returns) is reported stalled once silent past the bound, and live again once it comes
/// round; an idle one, blocking in reads that return empty, never is.
#[tokio::test]
async fn a_stuck_consumer_turns_liveness_red_and_an_idle_one_keeps_it_green() {
    let group = Group::new().await;
    let stall = Duration::from_millis(600);
    let liveness = Liveness::new(stall);
    let block = Duration::from_millis(100);
    let consumer = Arc::new(
        group
            .consumer("c1", 10, block)
            .await
            .with_heartbeat(liveness.watch("consumer")),
    );
    let shutdown = CancellationToken::new();
    let running = tokio::spawn({
        let (consumer, shutdown) = (consumer.clone(), shutdown.clone());
        async move { consumer.run(shutdown).await }
    });

    // Idle: several times the bound, green throughout.
    let idle_until = tokio::time::Instant::now() + 3 * stall;
    while tokio::time::Instant::now() < idle_until {
        assert!(liveness.stalled().is_empty(), "an idle consumer is live");
        tokio::time::sleep(Duration::from_millis(50)).await; // sampling the idle period
    }

    group.publish(1).await;
    eventually(
        "the stuck consumer to be reported",
        Duration::from_secs(10),
        || async {
            match liveness.stalled().as_slice() {
                [(name, silent)] if name == "consumer" && *silent > stall => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    assert_eq!(group.handler.batches(), [1], "stuck inside the batch");

    group.handler.open();
    eventually(
        "the consumer to be live again",
        Duration::from_secs(10),
        || async {
            match liveness.stalled().as_slice() {
                [] => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    shutdown.cancel();
    running.await.expect("stopped");
}
