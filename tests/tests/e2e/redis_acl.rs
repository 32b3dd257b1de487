//! Least-privilege Redis: a real `redis-server` started with the ACL file the compose
//! file ships (`deploy/redis/users.acl`), each service connecting with the credentials
//! the compose file gives it. Both run their whole flow (a charge, a decline, a cancel
//! and its refund) as their own users, with the Redis Functions library loaded by the
//! `functions` user as compose's `redis-functions` does, and shipping-service (compose's
//! `shipping` profile) follows the same flow as a third group; neither service user may
//! write or trim the other's stream, run Lua of its own (`EVAL`, `SCRIPT LOAD`, `FUNCTION
//! LOAD`) or what no service needs (`FLUSHALL`, `KEYS`, `CONFIG`), and shipping-service's
//! may write neither stream nor touch another group's dead letters, parked events or turn.

use std::time::Duration;

use e2e::{
    Outcome, TRIM_HARD, assert_invariants, compose, final_order, order_of, post, repo_file, text,
    trimmed_to_their_last_entry,
};
use events::streams::{ORDER_EVENTS, PAYMENT_EVENTS};
use serde_json::json;
use service_runtime::functions::LIBRARY_NAME;
use testkit::{ClusterOptions, PrivateRedis, RedisCluster, TestContext, eventually};
use uuid::Uuid;

/// `(user, password)` of `REDIS_URL` as docker-compose.yml gives it to `service`.
fn redis_user_of(service: &str) -> (String, String) {
    let url = text(&compose()["services"][service]["environment"]["REDIS_URL"]);
    let user_info = url
        .strip_prefix("redis://")
        .and_then(|rest| rest.split_once('@'))
        .map(|(user_info, _)| user_info.to_owned())
        .unwrap_or_else(|| panic!("{service}'s REDIS_URL names a user: {url}"));
    let (user, password) = user_info.split_once(':').expect("user:password");
    (user.to_owned(), password.to_owned())
}

/// The operator's credentials, from the Redis health check of docker-compose.yml.
fn operator() -> (String, String) {
    let check: Vec<String> = compose()["services"]["redis"]["healthcheck"]["test"]
        .as_sequence()
        .expect("a health check")
        .iter()
        .map(text)
        .collect();
    let after = |flag: &str| {
        check
            .iter()
            .skip_while(|arg| *arg != flag)
            .nth(1)
            .cloned()
            .unwrap_or_else(|| panic!("the health check passes {flag}: {check:?}"))
    };
    (after("--user"), after("--pass"))
}

/// Asserts that `user` is refused (`NOPERM`) every one of `commands`.
async fn refused_all(redis: &PrivateRedis, user: &(String, String), commands: &[&[&str]]) {
    for command in commands {
        assert_eq!(
            as_user(redis, user, command).await,
            Err("NOPERM".into()),
            "{} may not run {command:?}",
            user.0
        );
    }
}

/// What a command as `user` answers: `Ok` or the error code (e.g. `NOPERM`).
async fn as_user(
    redis: &PrivateRedis,
    (user, password): &(String, String),
    command: &[&str],
) -> Result<(), String> {
    let client = redis::Client::open(redis.url_as(user, password)).expect("a URL");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("the user may connect");
    let mut cmd = redis::cmd(command[0]);
    for arg in &command[1..] {
        cmd.arg(*arg);
    }
    cmd.query_async::<redis::Value>(&mut conn)
        .await
        .map(|_| ())
        .map_err(|e| e.code().unwrap_or("other").to_owned())
}

/// Loads the library as compose's `redis-functions` user, runs both services as their
/// compose users (`url_as` makes a URL of a user and password) through a charge, a
/// decline and a cancel with its refund, and sees each producer trim its stream.
async fn runs_the_flow_as_the_compose_users(
    ctx: &TestContext,
    url_as: impl Fn((String, String)) -> String,
) {
    let loader = url_as(redis_user_of("redis-functions"));
    let mut loader = service_runtime::RedisConnection::connect_for_commands(&loader)
        .await
        .expect("the loader connects");
    service_runtime::functions::load(&mut loader)
        .await
        .expect("the functions user loads the library");
    // Retention trims hard and often, so its function runs as each user too.
    let (order_url, payment_url, shipping_url) = (
        url_as(redis_user_of("order-service")),
        url_as(redis_user_of("payment-service")),
        url_as(redis_user_of("shipping-service")),
    );
    let orders = ctx
        .spawn(
            "order-service",
            &[&["--redis-url", order_url.as_str()][..], TRIM_HARD].concat(),
            order_service::start,
        )
        .await;
    let payments = ctx
        .spawn(
            "payment-service",
            &[&["--redis-url", payment_url.as_str()][..], TRIM_HARD].concat(),
            payment_service::start,
        )
        .await;
    let shipping = ctx
        .spawn(
            "shipping-service",
            &["--redis-url", shipping_url.as_str()],
            shipping_service::start,
        )
        .await;

    let (_, paid) = post(&orders, "/orders", &order_of("uma", 4200)).await;
    let paid = paid["id"].as_str().expect("id").to_owned();
    assert_eq!(final_order(&orders, &paid).await["status"], "PAID");
    let (_, declined) = post(&orders, "/orders", &order_of("uma", 1_000_000)).await;
    let declined = final_order(&orders, declined["id"].as_str().expect("id")).await;
    assert_eq!(declined["status"], "PAYMENT_FAILED");
    let (status, _) = post(&orders, &format!("/orders/{paid}/cancel"), &json!({})).await;
    assert_eq!(status, 200);
    let outcome = assert_invariants(&orders.pool, &payments.pool, Duration::from_secs(15)).await;
    assert_eq!(
        outcome,
        Outcome {
            paid: 0,
            payment_failed: 1,
            cancelled: 1
        }
    );
    let (_, account) = payments.get_json("/accounts/uma").await;
    assert_eq!(account["balance_cents"], 100_000, "refunded");
    // shipping-service followed it too: prepared, then cancelled with the refund.
    let path = format!("/shipments/{paid}");
    eventually(
        "the shipment cancelled",
        Duration::from_secs(15),
        || async {
            match shipping.get_json(&path).await {
                (200, shipment) if shipment["status"] == "CANCELLED" => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    let shipment: Option<Uuid> =
        sqlx::query_scalar("SELECT payment_id FROM shipments WHERE order_id = $1::uuid")
            .bind(&paid)
            .fetch_one(&shipping.pool)
            .await
            .expect("the shipment");
    assert!(shipment.is_some(), "it was prepared for the payment first");
    // Trimmed by each producer, as its own user.
    trimmed_to_their_last_entry(ctx).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_service_runs_its_flow_as_its_own_redis_user_and_no_more() {
    let acl = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/redis/users.acl");
    assert!(repo_file("deploy/redis/users.acl").contains("user default off"));
    let (op_user, op_password) = operator();
    let redis = PrivateRedis::start_with(
        &["--aclfile", acl.to_str().expect("a UTF-8 path")],
        Some((&op_user, &op_password)),
    )
    .await;
    let ctx = TestContext::unnamespaced(&redis.url());
    let url_as = |(user, password): (String, String)| redis.url_as(&user, &password);
    runs_the_flow_as_the_compose_users(&ctx, url_as).await;

    let order_user = redis_user_of("order-service");
    let payment_user = redis_user_of("payment-service");
    for (user, other_stream) in [(&order_user, PAYMENT_EVENTS), (&payment_user, ORDER_EVENTS)] {
        refused_all(
            &redis,
            user,
            &[
                // The other's stream: not written, not trimmed (it only reads it).
                &["XADD", other_stream, "*", "forged", "1"],
                &["XTRIM", other_stream, "MAXLEN", "0"],
                &["FLUSHALL"],
                &["KEYS", "*"],
                &["CONFIG", "GET", "maxmemory"],
                &["EVAL", "while true do end", "0"],
                &["EVAL", "return 1", "1", other_stream],
                &["SCRIPT", "LOAD", "return 1"],
                &[
                    "FUNCTION",
                    "LOAD",
                    "#!lua name=mine\nredis.register_function('f', function() end)",
                ],
                &[
                    "FUNCTION",
                    "DELETE",
                    service_runtime::functions::LIBRARY_NAME,
                ],
                &["FUNCTION", "FLUSH"],
            ],
        )
        .await;
    }
    let shipping_user = redis_user_of("shipping-service");
    refused_all(
        &redis,
        &shipping_user,
        &[
            // It only reads: no stream is written or trimmed by it.
            &["XADD", ORDER_EVENTS, "*", "forged", "1"],
            &["XADD", PAYMENT_EVENTS, "*", "forged", "1"],
            &["XTRIM", ORDER_EVENTS, "MAXLEN", "0"],
            &["XDEL", PAYMENT_EVENTS, "0-1"],
            // Another group's dead letters, parked events and turn are not its own.
            &["XADD", "{order-events}:dlq:payment-service", "*", "f", "1"],
            &["XDEL", "{payment-events}:dlq:order-service", "0-1"],
            &["HSET", "{order-events}:parked:payment-service", "f", "1"],
            &["SET", "{payment-events}:turn:order-service", "me"],
            &["EVAL", "return 1", "0"],
            &["FUNCTION", "FLUSH"],
        ],
    )
    .await;
    let functions_user = redis_user_of("redis-functions");
    refused_all(
        &redis,
        &functions_user,
        &[
            &["XADD", ORDER_EVENTS, "*", "forged", "1"],
            &["EVAL", "return 1", "0"],
            &["FUNCTION", "FLUSH"],
        ],
    )
    .await;
    // The flow view's user reads the streams through the library, writes nothing.
    let viewer = redis_user_of("flow-view");
    let mut seen =
        service_runtime::RedisConnection::connect_for_commands(&redis.url_as(&viewer.0, &viewer.1))
            .await
            .expect("flow-view connects");
    let observed = service_runtime::functions::observe(
        &mut seen,
        ORDER_EVENTS,
        &service_runtime::functions::ObserveFrom::Newest,
        1,
        1024,
    )
    .await
    .expect("flow-view reads order-events");
    assert_eq!(observed.len(), 1);
    let length = |redis: service_runtime::RedisConnection| async move {
        redis::cmd("XLEN")
            .arg(ORDER_EVENTS)
            .query_async::<u64>(&mut redis.clone())
            .await
            .expect("XLEN")
    };
    let before = length(seen.clone()).await;
    refused_all(
        &redis,
        &viewer,
        &[
            &["XADD", ORDER_EVENTS, "*", "forged", "1"],
            &["XACK", ORDER_EVENTS, "payment-service", "0-1"],
            &["XGROUP", "CREATE", ORDER_EVENTS, "mine", "$"],
            &[
                "XREADGROUP",
                "GROUP",
                "payment-service",
                "me",
                "STREAMS",
                ORDER_EVENTS,
                ">",
            ],
            &["XTRIM", ORDER_EVENTS, "MAXLEN", "0"],
            &["XDEL", ORDER_EVENTS, "0-1"],
            &["DEL", ORDER_EVENTS],
            &["EVAL", "return 1", "0"],
            &["FUNCTION", "FLUSH"],
        ],
    )
    .await;
    let trimmed = redis::cmd("FCALL")
        .arg("streams_v1_trim_stream")
        .arg(1)
        .arg(ORDER_EVENTS)
        .arg(0)
        .query_async::<redis::Value>(&mut seen.clone())
        .await;
    assert!(
        trimmed.is_err(),
        "a function runs with the caller's rights: {trimmed:?}"
    );
    assert_eq!(length(seen).await, before, "nothing of order-events went");

    let client = redis::Client::open(format!(
        "redis://127.0.0.1:{}",
        redis.url().rsplit(':').next().expect("a port")
    ))
    .expect("a URL");
    let mut anonymous = client
        .get_multiplexed_async_connection()
        .await
        .expect("connects");
    let refused: Result<String, _> = redis::cmd("PING").query_async(&mut anonymous).await;
    assert!(refused.is_err(), "the default user is off");
}

/// The same users on a Redis Cluster: every node reads the shipped ACL file; the library
/// is loaded into every master; the services find their keys' nodes as their own users.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_service_runs_its_flow_as_its_own_redis_user_on_a_cluster() {
    let acl = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/redis/users.acl");
    let (op_user, op_password) = operator();
    let cluster = RedisCluster::start_with(ClusterOptions {
        password: Some(&op_password),
        acl: Some((&acl, &op_user)),
        ..ClusterOptions::default()
    })
    .await;
    let ctx = TestContext::unnamespaced(&cluster.url());
    let url_as = |(user, password): (String, String)| cluster.url_as(&user, &password);
    runs_the_flow_as_the_compose_users(&ctx, url_as).await;
    for port in cluster.master_ports().await {
        let libraries: Vec<redis::Value> = cluster
            .command(port, &["FUNCTION", "LIST", "LIBRARYNAME", LIBRARY_NAME])
            .await;
        assert_eq!(libraries.len(), 1, "the library is on the master on {port}");
    }
}
