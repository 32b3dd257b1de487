//! TLS to both backends, with certificates the test generates: the service binary runs
//! against a PostgreSQL with `ssl = on` (`sslmode=verify-full`, `sslrootcert=`) and a
//! Redis on its TLS port (`rediss://`, the authority from `SSL_CERT_FILE`), serves an
//! order end to end over both, and refuses to start when it cannot verify either; and the
//! same against a Redis Cluster speaking TLS (`rediss+cluster://`).

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use events::streams::ORDER_EVENTS;
use service_runtime::RedisConnection;
use sqlx::Connection;
use testkit::{
    ClusterOptions, RedisCluster, TestCertificates, TestContext, TlsPostgres, TlsRedis, eventually,
    free_port,
};

use crate::support::alice_order;

/// The order-service binary, killed when dropped.
struct Service(Child);

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The order-service binary on `port` with these backends, trusting the authority in
/// `ca` (the system store, as rustls reads it: for Redis, and for Postgres besides its
/// `sslrootcert`).
fn order_service(port: u16, database_url: &str, redis_url: &str, ca: &str) -> Service {
    let child = Command::new(env!("CARGO_BIN_EXE_order-service"))
        .env_clear()
        .envs(testkit::signing::signing_env("order-service"))
        .env("DATABASE_URL", database_url)
        .env("REDIS_URL", redis_url)
        .env("SSL_CERT_FILE", ca)
        .env("HTTP_ADDR", format!("127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the binary runs");
    Service(child)
}

fn verify_full(postgres: &TlsPostgres, ca: &str) -> String {
    format!("{}?sslmode=verify-full&sslrootcert={ca}", postgres.url())
}

/// Waits for `service` to exit on its own, and returns whether it failed.
async fn exits_failing(mut service: Service) -> bool {
    eventually("the service to give up", Duration::from_secs(20), || {
        let exited = service.0.try_wait();
        async move {
            match exited {
                Ok(Some(status)) => Ok(!status.success()),
                other => Err(format!("{other:?}")),
            }
        }
    })
    .await
}

/// Waits until the service on `port` is ready, and places an order there.
async fn ready_and_ordered(port: u16) {
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    eventually(
        "the service to be ready",
        Duration::from_secs(30),
        || async {
            match http.get(format!("{base}/health/ready")).send().await {
                Ok(r) if r.status() == 200 => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    let placed = http
        .post(format!("{base}/orders"))
        .json(&alice_order())
        .send()
        .await
        .expect("answers");
    assert_eq!(placed.status(), 201);
}

/// Waits until the one `OrderCreated` is on the stream, read over the plain port at
/// `url`; returns that connection for the test's further checks.
async fn order_created_published(url: &str) -> RedisConnection {
    let plain = RedisConnection::connect_for_commands(url)
        .await
        .expect("connects");
    eventually(
        "OrderCreated published over TLS",
        Duration::from_secs(10),
        || {
            let mut plain = plain.clone();
            async move {
                match redis::cmd("XLEN")
                    .arg(ORDER_EVENTS)
                    .query_async::<u64>(&mut plain)
                    .await
                {
                    Ok(1) => Ok(()),
                    other => Err(format!("{other:?}")),
                }
            }
        },
    )
    .await;
    plain
}

#[tokio::test]
async fn the_service_speaks_tls_to_postgres_and_redis_and_verifies_them() {
    let certs = TestCertificates::generate();
    let ca = certs.ca.to_str().expect("a UTF-8 path").to_owned();
    let postgres = TlsPostgres::start(&certs).await;
    let redis = TlsRedis::start(&certs).await;
    let port = free_port();
    let service = order_service(port, &verify_full(&postgres, &ca), &redis.tls_url(), &ca);
    ready_and_ordered(port).await;

    let mut plain = order_created_published(&redis.plain_url()).await;
    let clients: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(&mut plain)
        .await
        .expect("CLIENT LIST");
    let tls_port = format!("laddr=127.0.0.1:{}", redis.tls_port);
    assert!(
        clients.lines().filter(|c| c.contains(&tls_port)).count() >= 2,
        "the service's Redis connections came in on the TLS port: {clients}"
    );
    let mut check = sqlx::PgConnection::connect(&format!("{}?sslmode=disable", postgres.url()))
        .await
        .expect("connects");
    let encrypted: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_ssl JOIN pg_stat_activity USING (pid)
         WHERE ssl AND backend_type = 'client backend'",
    )
    .fetch_one(&mut check)
    .await
    .expect("pg_stat_ssl");
    assert!(encrypted >= 1, "the service's Postgres connections are TLS");
    drop(service);

    // Trusting only an authority that did not sign the servers' certificates: Postgres
    // (connected first) is refused; with Postgres trusted through its sslrootcert alone,
    // Redis is.
    let stranger = TestCertificates::generate();
    let stranger = stranger.ca.to_str().expect("a UTF-8 path").to_owned();
    let untrusted = verify_full(&postgres, &stranger);
    let service = order_service(free_port(), &untrusted, &redis.tls_url(), &stranger);
    assert!(exits_failing(service).await, "Postgres unverified");
    let trusted = verify_full(&postgres, &ca);
    let service = order_service(free_port(), &trusted, &redis.tls_url(), &stranger);
    assert!(exits_failing(service).await, "Redis unverified");
}

#[tokio::test]
async fn the_service_speaks_tls_to_a_redis_cluster_and_verifies_it() {
    let certs = TestCertificates::generate();
    let ca = certs.ca.to_str().expect("a UTF-8 path").to_owned();
    let cluster = RedisCluster::start_with(ClusterOptions {
        tls: Some(&certs),
        ..ClusterOptions::default()
    })
    .await;
    let ctx = TestContext::new(); // owns the database: dropping it drops the database
    let database = ctx.database().await;
    let port = free_port();
    let service = order_service(port, &database, &cluster.tls_url(), &ca);
    ready_and_ordered(port).await;

    let mut plain = order_created_published(&cluster.url()).await;
    let master = cluster.master_of(ORDER_EVENTS).await;
    let clients: String = cluster.command(master, &["CLIENT", "LIST"]).await;
    let tls_port = cluster.tls_port(master).expect("a TLS port");
    assert!(
        clients.contains(&format!("laddr=127.0.0.1:{tls_port}")),
        "the service reached the stream's master on its TLS port: {clients}"
    );
    let _: u64 = redis::cmd("XLEN")
        .arg(ORDER_EVENTS)
        .query_async(&mut plain)
        .await
        .expect("the plain port still answers the test");
    drop(service);

    let stranger = TestCertificates::generate();
    let stranger = stranger.ca.to_str().expect("a UTF-8 path").to_owned();
    let service = order_service(free_port(), &database, &cluster.tls_url(), &stranger);
    assert!(exits_failing(service).await, "the cluster unverified");
}
