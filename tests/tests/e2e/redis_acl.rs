//! Least-privilege Redis: a real `redis-server` started with the ACL file the compose
//! file ships (`deploy/redis/users.acl`), each service connecting with the credentials
//! the compose file gives it. Both run their whole flow (a charge, a decline, a cancel
//! and its refund) as their own users, and neither user may write the other's stream or
//! run what no service needs (`FLUSHALL`, `KEYS`, `CONFIG`).

use std::time::Duration;

use e2e::{Outcome, assert_invariants};
use events::streams::{ORDER_EVENTS, PAYMENT_EVENTS};
use serde_json::json;
use testkit::{PrivateRedis, TestContext};

use crate::flows::{final_order, order_of, post};
use crate::packaging::{compose, repo_file, text};
use crate::retention::{TRIM_HARD, trimmed_to_their_last_entry};

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

/// The `--redis-url` of `service`: its own user on the private Redis.
fn redis_url_of(redis: &PrivateRedis, service: &str) -> String {
    let (user, password) = redis_user_of(service);
    redis.url_as(&user, &password)
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
    // Retention trims hard and often, so its script runs as each user too.
    let (order_url, payment_url) = (
        redis_url_of(&redis, "order-service"),
        redis_url_of(&redis, "payment-service"),
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
    // Trimmed by each consumer, as its own user.
    trimmed_to_their_last_entry(&ctx).await;

    let order_user = redis_user_of("order-service");
    let payment_user = redis_user_of("payment-service");
    assert_eq!(
        as_user(
            &redis,
            &order_user,
            &["XADD", PAYMENT_EVENTS, "*", "forged", "1"]
        )
        .await,
        Err("NOPERM".into()),
        "order-service may not write payment-events"
    );
    assert_eq!(
        as_user(
            &redis,
            &payment_user,
            &["XADD", ORDER_EVENTS, "*", "forged", "1"]
        )
        .await,
        Err("NOPERM".into()),
        "payment-service may not write order-events"
    );
    for user in [&order_user, &payment_user] {
        for command in [
            &["FLUSHALL"][..],
            &["KEYS", "*"],
            &["CONFIG", "GET", "maxmemory"],
        ] {
            assert_eq!(
                as_user(&redis, user, command).await,
                Err("NOPERM".into()),
                "{} may not run {command:?}",
                user.0
            );
        }
    }
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
