//! The runtime's Redis connections, to one node and to a Redis Cluster: a blocking read
//! longer than an ordinary command may take comes back empty, not as a timeout (CRATES.md
//! trap 1), and commands sent meanwhile are not stuck behind it; a cluster asking for a
//! password is reached with the one in `redis+cluster://:password@…`.

use std::time::{Duration, Instant};

use service_runtime::redis_conn::RedisConnections;
use testkit::{ClusterOptions, RedisCluster, TestContext};

/// Longer than the 5 s an ordinary command may take.
const BLOCK: Duration = Duration::from_millis(6000);

async fn a_long_blocking_read_waits_it_out(ctx: &TestContext) {
    let redis = RedisConnections::connect(ctx.redis_url(), BLOCK)
        .await
        .expect("connects");
    let stream = ctx.stream("blocking");
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&stream)
        .arg("group")
        .arg("$")
        .arg("MKSTREAM")
        .query_async(&mut redis.commands.clone())
        .await
        .expect("XGROUP CREATE");
    let started = Instant::now();
    let read = tokio::spawn({
        let (mut reader, stream) = (redis.reader.clone(), stream.clone());
        async move {
            redis::cmd("XREADGROUP")
                .arg("GROUP")
                .arg("group")
                .arg("me")
                .arg("BLOCK")
                .arg(BLOCK.as_millis() as u64)
                .arg("STREAMS")
                .arg(&stream)
                .arg(">")
                .query_async::<redis::Value>(&mut reader)
                .await
        }
    });
    // Commands meanwhile go through at once, on the other connection.
    let length: u64 = redis::cmd("XLEN")
        .arg(&stream)
        .query_async(&mut redis.commands.clone())
        .await
        .expect("XLEN while a read blocks");
    assert_eq!(length, 0);
    assert!(started.elapsed() < Duration::from_secs(2), "XLEN waited");

    let reply = read.await.expect("the read ran");
    assert!(
        matches!(reply, Ok(redis::Value::Nil)),
        "an empty read after BLOCK, not an error: {reply:?}"
    );
    assert!(started.elapsed() >= BLOCK, "the read blocked for BLOCK");
}

#[tokio::test]
async fn a_blocking_read_longer_than_a_command_may_take_comes_back_empty_on_one_node() {
    a_long_blocking_read_waits_it_out(&TestContext::new()).await;
}

#[tokio::test]
async fn a_blocking_read_longer_than_a_command_may_take_comes_back_empty_on_a_cluster() {
    let cluster = RedisCluster::start().await;
    a_long_blocking_read_waits_it_out(&TestContext::with_redis(&cluster.url())).await;
}

#[tokio::test]
async fn a_cluster_asking_for_a_password_is_reached_with_the_one_in_the_url() {
    let cluster = RedisCluster::start_with(ClusterOptions {
        password: Some("cluster-s3cret"),
        ..ClusterOptions::default()
    })
    .await;
    let ctx = TestContext::with_redis(&cluster.url());
    let redis = RedisConnections::connect(ctx.redis_url(), BLOCK)
        .await
        .expect("connects with the password");
    let stream = ctx.stream("guarded");
    let _: String = redis::cmd("XADD")
        .arg(&stream)
        .arg("*")
        .arg("n")
        .arg(1)
        .query_async(&mut redis.commands.clone())
        .await
        .expect("XADD with the password");

    let refused = match RedisConnections::connect(&cluster.url_without_password(), BLOCK).await {
        Err(e) => e.to_string(),
        Ok(without) => redis::cmd("XLEN")
            .arg(&stream)
            .query_async::<u64>(&mut without.commands.clone())
            .await
            .expect_err("refused without the password")
            .to_string(),
    };
    assert!(
        refused.contains("NOAUTH") || refused.to_lowercase().contains("auth"),
        "{refused}"
    );
}
