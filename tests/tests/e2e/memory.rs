//! Memory a burst took is given back once the burst is over (the process's resident set
//! does not stay at its high-water mark).

use std::time::Duration;

use e2e::{place_orders, ready, start_process};
use testkit::{TestContext, eventually};

/// The resident set of process `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS:")
}

/// A size line (`VmRSS:`, `VmHWM:`) of process `pid`'s status, in KiB.
fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("the process's status")
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|kib| kib.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in kB")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_a_burst_of_requests_took_is_given_back_once_it_is_over() {
    let ctx = TestContext::new();
    let env = [
        ("DATABASE_URL", ctx.database().await),
        ("REDIS_URL", ctx.redis_url().to_owned()),
        ("STREAM_NAMESPACE", ctx.namespace().to_owned()),
    ];
    let mut orders = start_process(env!("CARGO_BIN_EXE_chaos-order-service"), &env);
    ready(&mut orders).await;
    let pid = orders.child.id();
    // Warm up: connections, prepared statements and buffers of ordinary load.
    assert_eq!(place_orders(&orders.base_url, 50, 4).await.failed, 0);
    let before = rss_kib(pid);

    // A burst: 400 requests at once, each on a connection of its own, all closed after.
    let burst = place_orders(&orders.base_url, 1200, 400).await;
    assert_eq!(burst.failed, 0, "every order of the burst is placed");
    let peak = rss_kib(pid);
    assert!(
        peak > before + 8 * 1024,
        "the burst should take memory to give back: {before} KiB before, {peak} KiB after"
    );

    let back = before + (peak - before) / 2;
    eventually(
        "at least half of what the burst took given back",
        Duration::from_secs(30),
        || async {
            match rss_kib(pid) {
                now if now <= back => Ok(()),
                now => Err(format!(
                    "{now} KiB resident ({before} before the burst, {peak} after it)"
                )),
            }
        },
    )
    .await;
    orders.child.kill().expect("SIGKILL");
    orders.child.wait().expect("reaped");
}

/// SPEC §4.9: request headers are capped, so `HTTP_MAX_CONNECTIONS` clients that each send
/// a huge unfinished header (390 kB, which hyper's default buffer would take whole) keep
/// order-service's peak resident set well under its 128 MiB limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_sending_huge_headers_keep_memory_far_under_the_limit() {
    use tokio::io::AsyncWriteExt;

    const CONNECTIONS: usize = 1024;
    let ctx = TestContext::new();
    let env = [
        ("DATABASE_URL", ctx.database().await),
        ("REDIS_URL", ctx.redis_url().to_owned()),
        ("STREAM_NAMESPACE", ctx.namespace().to_owned()),
        ("HTTP_MAX_CONNECTIONS", CONNECTIONS.to_string()),
        ("HTTP_HEADER_READ_TIMEOUT_MS", "60000".to_owned()),
    ];
    let mut orders = start_process(env!("CARGO_BIN_EXE_chaos-order-service"), &env);
    ready(&mut orders).await;
    let pid = orders.child.id();
    let addr = orders.base_url.trim_start_matches("http://").to_owned();

    let header = format!(
        "GET /health/live HTTP/1.1\r\nhost: test\r\nx-big: {}",
        "a".repeat(390_000)
    );
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..CONNECTIONS {
        let (addr, header) = (addr.clone(), header.clone());
        clients.spawn(async move {
            let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
            // Cut off at the cap, the rest of the write fails: that is the point.
            let _ = stream.write_all(header.as_bytes()).await;
            Some(stream)
        });
    }
    let held: Vec<_> = clients.join_all().await.into_iter().flatten().collect();
    assert!(
        held.len() > CONNECTIONS * 9 / 10,
        "{} connected",
        held.len()
    );
    let peak_mib = status_kib(pid, "VmHWM:") / 1024;
    assert!(
        peak_mib < 64,
        "peak resident set {peak_mib} MiB with {CONNECTIONS} clients sending huge headers"
    );
    drop(held);
    drop(orders);
}

/// SPEC §4.9: an entry over `MAX_ENTRY_BYTES` is dead-lettered by its id without being
/// loaded into the service. Three copies of a real `OrderCreated`, each with one extra
/// 40 MB field, sit in `order-events`: payment-service dead-letters them, its peak resident
/// set stays under 64 MiB (half its deployment's limit), and the orders around them are
/// paid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_entries_are_dead_lettered_unread_and_memory_stays_bounded() {
    use events::streams::ORDER_EVENTS;

    let ctx = TestContext::new();
    let orders_db = ctx.database().await;
    let payments_db = ctx.database().await;
    let env = |db: &str| {
        [
            ("DATABASE_URL", db.to_owned()),
            ("REDIS_URL", ctx.redis_url().to_owned()),
            ("STREAM_NAMESPACE", ctx.namespace().to_owned()),
            ("READ_BLOCK_MS", "200".to_owned()),
        ]
    };
    let mut orders = start_process(env!("CARGO_BIN_EXE_chaos-order-service"), &env(&orders_db));
    ready(&mut orders).await;
    assert_eq!(place_orders(&orders.base_url, 1, 1).await.failed, 0);
    // The relay publishes after the commit that answered the POST: wait for the entry.
    let (_, genuine) = eventually(
        "the order's OrderCreated published",
        Duration::from_secs(10),
        || async {
            let mut entries = ctx.entries(ORDER_EVENTS).await;
            match entries.is_empty() {
                true => Err("order-events is empty".to_owned()),
                false => Ok(entries.remove(0)),
            }
        },
    )
    .await;
    let padding = "x".repeat(40 * 1024 * 1024);
    for _ in 0..3 {
        let mut fields: Vec<(&str, &[u8])> = genuine
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_bytes()))
            .collect();
        fields.push(("padding", padding.as_bytes()));
        ctx.xadd(ORDER_EVENTS, &fields).await;
    }
    drop(padding);

    let mut payments = start_process(
        env!("CARGO_BIN_EXE_chaos-payment-service"),
        &env(&payments_db),
    );
    ready(&mut payments).await;
    let placed = place_orders(&orders.base_url, 20, 4).await;
    assert_eq!(placed.failed, 0);
    let (orders_pool, payments_pool) = (
        sqlx::PgPool::connect(&orders_db).await.expect("db"),
        sqlx::PgPool::connect(&payments_db).await.expect("db"),
    );
    let outcome =
        e2e::assert_invariants(&orders_pool, &payments_pool, Duration::from_secs(60)).await;
    assert_eq!(outcome.paid, 21, "every order paid");
    let dead = eventually(
        "the huge entries dead-lettered",
        Duration::from_secs(30),
        || async {
            match ctx.dead_letters(ORDER_EVENTS).await {
                dead if dead.len() >= 3 => Ok(dead),
                dead => Err(format!("{} dead letters", dead.len())),
            }
        },
    )
    .await;
    assert_eq!(dead.len(), 3);
    for (_, fields) in &dead {
        let error = fields
            .iter()
            .find(|(name, _)| name == service_runtime::dead_letters::fields::ERROR);
        assert!(
            error.is_some_and(|(_, e)| e.contains("MAX_ENTRY_BYTES")),
            "{error:?}"
        );
        assert!(
            fields.iter().all(|(_, value)| value.len() < 64 * 1024),
            "no copy of the 40 MB"
        );
    }
    let peak_mib = status_kib(payments.child.id(), "VmHWM:") / 1024;
    assert!(peak_mib < 64, "payment-service peaked at {peak_mib} MiB");
}
