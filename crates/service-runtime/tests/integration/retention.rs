//! Retention against a real Redis and Postgres: every store is bounded, and nothing any
//! consumer group has not finished is removed.

use std::time::Duration;

use service_runtime::schema::RUNTIME_MIGRATOR;
use service_runtime::{RedisConnection, retention};
use sqlx::PgPool;
use testkit::{RedisCluster, TestContext, eventually};
use uuid::Uuid;

const OWN: &str = "payment-service";
const OTHER: &str = "analytics";

async fn redis(ctx: &TestContext) -> RedisConnection {
    ctx.redis().await
}

async fn cmd<T: redis::FromRedisValue>(redis: &RedisConnection, args: &[&str]) -> T {
    redis::cmd(args[0])
        .arg(&args[1..])
        .query_async(&mut redis.clone())
        .await
        .unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

/// `XREADGROUP` of up to `count` new entries as `consumer`; returns their ids.
async fn read(
    redis: &RedisConnection,
    stream: &str,
    group: &str,
    consumer: &str,
    count: usize,
) -> Vec<String> {
    let reply: redis::streams::StreamReadReply = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg(group)
        .arg(consumer)
        .arg("COUNT")
        .arg(count)
        .arg("STREAMS")
        .arg(stream)
        .arg(">")
        .query_async(&mut redis.clone())
        .await
        .expect("XREADGROUP");
    reply
        .keys
        .into_iter()
        .flat_map(|k| k.ids)
        .map(|e| e.id)
        .collect()
}

async fn ack(redis: &RedisConnection, stream: &str, group: &str, ids: &[String]) {
    let _: u64 = redis::cmd("XACK")
        .arg(stream)
        .arg(group)
        .arg(ids)
        .query_async(&mut redis.clone())
        .await
        .expect("XACK");
}

async fn ids(redis: &RedisConnection, stream: &str) -> Vec<String> {
    let entries: redis::streams::StreamRangeReply = cmd(redis, &["XRANGE", stream, "-", "+"]).await;
    entries.ids.into_iter().map(|e| e.id).collect()
}

#[tokio::test]
async fn a_trim_never_removes_what_a_group_has_not_acknowledged() {
    trims_keeping_what_a_group_has_not_acknowledged(&TestContext::new()).await;
}

async fn trims_keeping_what_a_group_has_not_acknowledged(ctx: &TestContext) {
    let redis = redis(ctx).await;
    let stream = ctx.stream("order-events");
    // Ids far in the past, so that the trims below (no retention) are bounded by the
    // groups alone, whatever the clock: with ids of now, a trim in the same millisecond
    // as the `XADD`s would keep what the groups are past.
    let mut added = Vec::new();
    for i in 0..10 {
        let id = format!("1-{}", i + 1);
        added.push(cmd::<String>(&redis, &["XADD", &stream, &id, "n", &i.to_string()]).await);
    }
    // Trimmed by its producer, which is in no group.
    let trim = || retention::trim_stream(&redis, &stream, Duration::ZERO);
    assert_eq!(
        trim().await.expect("trims"),
        0,
        "no group yet, so no reader can be told apart from one to come: untouched"
    );

    for group in [OWN, OTHER] {
        let _: () = cmd(&redis, &["XGROUP", "CREATE", &stream, group, "0"]).await;
    }
    // Our group: a consumer read all ten, acked six, and died holding four.
    let held = read(&redis, &stream, OWN, "dead-consumer", 10).await;
    ack(&redis, &stream, OWN, &held[..6]).await;
    // A slower group (analytics, say) has read and acked three.
    let slow = read(&redis, &stream, OTHER, "reader", 3).await;
    ack(&redis, &stream, OTHER, &slow).await;

    assert_eq!(
        trim().await.expect("trims"),
        2,
        "only what both groups are past"
    );
    assert_eq!(ids(&redis, &stream).await, added[2..]);

    let rest = read(&redis, &stream, OTHER, "reader", 10).await;
    ack(&redis, &stream, OTHER, &rest).await;
    assert_eq!(trim().await.expect("trims"), 4);
    assert_eq!(
        ids(&redis, &stream).await,
        added[6..],
        "the dead consumer's pending entries stay"
    );
    let kept = retention::trim_stream(&redis, &stream, Duration::from_secs(3600));
    assert_eq!(
        kept.await.expect("trims"),
        0,
        "all of it is younger than the retention"
    );

    ack(&redis, &stream, OWN, &held[6..]).await;
    assert_eq!(trim().await.expect("trims"), 3);
    assert_eq!(
        ids(&redis, &stream).await,
        added[9..],
        "everything read and acknowledged by every group is gone but the last delivered"
    );
    let more: String = cmd(&redis, &["XADD", &stream, "*", "n", "10"]).await;
    assert_eq!(
        trim().await.expect("trims"),
        0,
        "an entry no group has read stays"
    );
    assert_eq!(ids(&redis, &stream).await, [added[9].clone(), more]);
}

#[tokio::test]
async fn dead_letters_are_trimmed_by_age() {
    trims_dead_letters_by_age(&TestContext::new()).await;
}

async fn trims_dead_letters_by_age(ctx: &TestContext) {
    let redis = redis(ctx).await;
    let key = ctx.dead_letter_stream("order-events");
    let _: String = cmd(&redis, &["XADD", &key, "1000-0", "old", "letter"]).await;
    let recent: String = cmd(&redis, &["XADD", &key, "*", "new", "letter"]).await;
    let trimmed = retention::trim_dead_letters(&redis, &key, Duration::from_secs(3600)).await;
    assert_eq!(trimmed.expect("trims"), 1);
    assert_eq!(ids(&redis, &key).await, [recent]);
}

#[tokio::test]
async fn idle_consumers_with_nothing_pending_are_removed() {
    removes_idle_consumers_with_nothing_pending(&TestContext::new()).await;
}

async fn removes_idle_consumers_with_nothing_pending(ctx: &TestContext) {
    let redis = redis(ctx).await;
    let stream = ctx.stream("order-events");
    let _: () = cmd(&redis, &["XGROUP", "CREATE", &stream, OWN, "0", "MKSTREAM"]).await;
    for n in ["1", "2", "3"] {
        let _: String = cmd(&redis, &["XADD", &stream, "*", "n", n]).await;
    }
    read(&redis, &stream, OWN, "crashed-with-work", 1).await; // one pending, never acked
    let done = read(&redis, &stream, OWN, "restarted-long-ago", 1).await;
    ack(&redis, &stream, OWN, &done).await; // finished its work, then went away
    read(&redis, &stream, OWN, "me", 1).await;

    let deleted = eventually(
        "the idle consumer removed",
        Duration::from_secs(5),
        || async {
            match retention::delete_idle_consumers(
                &redis,
                &stream,
                OWN,
                Duration::from_millis(50),
                "me",
            )
            .await
            {
                Ok(0) => Err("none yet".to_owned()),
                Ok(n) => Ok(n),
                Err(e) => Err(e.to_string()),
            }
        },
    )
    .await;
    assert_eq!(deleted, 1);
    let consumers: Vec<std::collections::HashMap<String, redis::Value>> =
        cmd(&redis, &["XINFO", "CONSUMERS", &stream, OWN]).await;
    let mut names: Vec<String> = consumers
        .iter()
        .filter_map(|c| match c.get("name") {
            Some(redis::Value::BulkString(name)) => {
                Some(String::from_utf8_lossy(name).into_owned())
            }
            _ => None,
        })
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["crashed-with-work", "me"],
        "a consumer holding entries, and this one, stay"
    );
}

#[tokio::test]
async fn the_stream_retention_works_on_a_redis_cluster() {
    let cluster = RedisCluster::start().await;
    let on_the_cluster = || TestContext::with_redis(&cluster.url());
    trims_keeping_what_a_group_has_not_acknowledged(&on_the_cluster()).await;
    trims_dead_letters_by_age(&on_the_cluster()).await;
    removes_idle_consumers_with_nothing_pending(&on_the_cluster()).await;
}

#[tokio::test]
async fn the_inbox_is_pruned_by_age_in_batches() {
    let ctx = TestContext::new();
    let pool = PgPool::connect(&ctx.database().await)
        .await
        .expect("connects");
    RUNTIME_MIGRATOR.run(&pool).await.expect("migrates");
    sqlx::query(
        "INSERT INTO inbox (event_id, event_type, order_id, received_at)
         SELECT gen_random_uuid(), 'OrderCreated', gen_random_uuid(),
                now() - make_interval(hours => CASE WHEN n <= 2500 THEN 400 ELSE 1 END)
         FROM generate_series(1, 2600) AS n",
    )
    .execute(&pool)
    .await
    .expect("rows");
    let recent = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO inbox (event_id, event_type, order_id) VALUES ($1, 'OrderCreated', $1)",
    )
    .bind(recent)
    .execute(&pool)
    .await
    .expect("a row");

    let pruned = retention::prune_inbox(&pool, Duration::from_secs(336 * 3600)).await;
    assert_eq!(pruned.expect("prunes"), 2500, "over several batches");
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM inbox")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(left, 101, "what is younger than the retention stays");
}
