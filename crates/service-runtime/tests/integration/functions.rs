//! The runtime's Redis Functions library on a private `redis-server`: a Redis without it
//! (new, or restarted empty) gets it from the first call that needs it, when the caller
//! may load it; a caller that may only call it is told what loads it, and once the
//! loader ran, it works. Neither kind of user needs `EVAL`. The loader run with `--watch`
//! gives a Redis that lost the library (restarted empty) it back by itself.

use std::time::Duration;

use service_runtime::{RedisConnection, functions, retention};
use testkit::PrivateRedis;

async fn connect(url: &str) -> RedisConnection {
    RedisConnection::connect_for_commands(url)
        .await
        .expect("connects")
}

async fn run(redis: &RedisConnection, args: &[&str]) -> redis::RedisResult<redis::Value> {
    redis::cmd(args[0])
        .arg(&args[1..])
        .query_async(&mut redis.clone())
        .await
}

/// A stream with a group that has read and acknowledged both its entries: a trim leaves
/// the last delivered one. The entries' ids lie far in the past, so that a trim with no
/// retention cuts below the last delivered entry whatever the clock says: with ids of
/// now, a trim in the same millisecond as the `XADD`s kept both (it failed so in CI).
async fn a_stream_read_to_its_end(redis: &RedisConnection) {
    for id in ["1-1", "1-2"] {
        run(redis, &["XADD", "s", id, "n", "1"])
            .await
            .expect("XADD");
    }
    run(redis, &["XGROUP", "CREATE", "s", "g", "$"])
        .await
        .expect("XGROUP CREATE");
}

#[tokio::test]
async fn a_redis_without_the_library_gets_it_from_the_first_call_that_needs_it() {
    let redis = PrivateRedis::start().await;
    let conn = connect(&redis.url()).await;
    a_stream_read_to_its_end(&conn).await;
    run(&conn, &["FUNCTION", "FLUSH"])
        .await
        .expect("FUNCTION FLUSH");
    assert!(
        !functions::is_loaded(&mut conn.clone())
            .await
            .expect("FUNCTION LIST")
    );

    let trimmed = retention::trim_stream(&conn, "s", Duration::ZERO).await;
    assert_eq!(trimmed.expect("trims once loaded"), 1);
    assert!(
        functions::is_loaded(&mut conn.clone())
            .await
            .expect("FUNCTION LIST")
    );
}

#[tokio::test]
async fn a_user_that_may_only_call_the_library_is_told_what_loads_it() {
    let redis = PrivateRedis::start().await;
    let admin = connect(&redis.url()).await;
    a_stream_read_to_its_end(&admin).await;
    run(
        &admin,
        &[
            "ACL",
            "SETUSER",
            "svc",
            "on",
            ">svc-password",
            "resetkeys",
            "-@all",
            "+fcall",
            "+xinfo|groups",
            "+xpending",
            "+xtrim",
            "+time",
            "~s",
        ],
    )
    .await
    .expect("ACL SETUSER");
    let service = connect(&redis.url_as("svc", "svc-password")).await;

    let refused = retention::trim_stream(&service, "s", Duration::ZERO)
        .await
        .expect_err("the library is not there and svc may not load it");
    assert!(
        refused.to_string().contains("redis-functions"),
        "names the loader: {refused}"
    );
    let eval = run(&service, &["EVAL", "return 1", "0"]).await;
    assert_eq!(eval.expect_err("no EVAL").code(), Some("NOPERM"));

    functions::load(&mut admin.clone()).await.expect("loads");
    let trimmed = retention::trim_stream(&service, "s", Duration::ZERO).await;
    assert_eq!(trimmed.expect("calls what the loader loaded"), 1);
}

/// `redis-functions --check` as a health check: whether the library is in `url`'s Redis.
fn checks_loaded(url: &str) -> bool {
    std::process::Command::new(env!("CARGO_BIN_EXE_redis-functions"))
        .arg("--check")
        .env("REDIS_URL", url)
        .status()
        .expect("redis-functions runs")
        .success()
}

#[tokio::test]
async fn the_watching_loader_gives_a_redis_that_lost_the_library_it_back() {
    let redis = PrivateRedis::start().await;
    let admin = connect(&redis.url()).await;
    run(&admin, &["FUNCTION", "FLUSH"])
        .await
        .expect("FUNCTION FLUSH");
    assert!(!checks_loaded(&redis.url()), "--check fails without it");
    let mut watcher = Watcher(
        std::process::Command::new(env!("CARGO_BIN_EXE_redis-functions"))
            .args(["--watch", "100"])
            .env("REDIS_URL", redis.url())
            .spawn()
            .expect("redis-functions --watch starts"),
    );

    let loaded = || async {
        match functions::is_loaded(&mut admin.clone()).await {
            Ok(true) => Ok(()),
            seen => Err(format!("{seen:?}")),
        }
    };
    testkit::eventually("the library loaded", Duration::from_secs(10), loaded).await;
    assert!(checks_loaded(&redis.url()), "--check passes with it");
    // Redis loses it (restarted empty, a replaced node): it is back within the interval.
    run(&admin, &["FUNCTION", "FLUSH"])
        .await
        .expect("FUNCTION FLUSH");
    testkit::eventually("the library loaded again", Duration::from_secs(10), loaded).await;
    // Redis frozen for longer than a command may take: the loader keeps trying, and
    // once Redis answers again it loads what Redis lost meanwhile.
    redis.freeze();
    tokio::time::sleep(Duration::from_secs(8)).await; // the fault's length
    redis.thaw();
    run(&admin, &["FUNCTION", "FLUSH"])
        .await
        .expect("FUNCTION FLUSH");
    testkit::eventually(
        "the library loaded after the freeze",
        Duration::from_secs(20),
        loaded,
    )
    .await;
    assert!(
        std::process::Command::new("kill")
            .args(["-0", &watcher.0.id().to_string()])
            .status()
            .expect("kill")
            .success(),
        "the loader is still running"
    );

    std::process::Command::new("kill")
        .args(["-TERM", &watcher.0.id().to_string()])
        .status()
        .expect("kill");
    let status = testkit::eventually("it stops on SIGTERM", Duration::from_secs(10), || {
        let exited = watcher.0.try_wait();
        async move {
            match exited {
                Ok(Some(status)) => Ok(status),
                seen => Err(format!("{seen:?}")),
            }
        }
    })
    .await;
    assert!(status.success(), "{status}");
}

/// The watching loader, killed if the test ends before it stopped.
struct Watcher(std::process::Child);

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
