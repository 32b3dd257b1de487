//! The view against a private `redis-server`: what it shows of entries, groups and dead
//! letters, that every value from a stream is escaped, and that it holds nothing back
//! (no group of its own, nothing pending, nothing written).

mod common;

use std::time::Duration;

use common::{page_showing, text_of, view_at, view_of, xadd};
use service_runtime::RedisConnection;
use testkit::{PrivateRedis, eventually};

/// Runs a command the test needs (a group, a read), panicking on an error.
async fn run(redis: &RedisConnection, args: &[&str]) -> redis::Value {
    redis::cmd(args[0])
        .arg(&args[1..])
        .query_async(&mut redis.clone())
        .await
        .unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

#[tokio::test]
async fn a_forged_entry_whose_fields_hold_markup_shows_as_text() {
    let redis = PrivateRedis::start().await;
    let conn = RedisConnection::connect_for_commands(&redis.url())
        .await
        .expect("connects");
    let view = view_of(&redis).await;
    xadd(
        &conn,
        "order-events",
        &[
            ("event_type", "<script>alert(1)</script>"),
            ("order_id", "<img src=x onerror=alert(2)>"),
        ],
    )
    .await;
    xadd(
        &conn,
        "order-events",
        &[
            ("event_type", "OrderCreated"),
            ("order_id", "o-1"),
            ("payload", r#"{"customer_id":"<b>eve</b>","total_cents":1}"#),
        ],
    )
    .await;

    // The later entry shown means the earlier one was read too (a stream is read in order).
    let page = page_showing(&view, "&lt;b&gt;eve&lt;/b&gt;").await;
    assert!(
        page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{page}"
    );
    assert!(
        page.contains("&lt;img src=x onerror=alert(2)&gt;"),
        "{page}"
    );
    for raw in ["<script>alert", "<img src=x", "<b>eve"] {
        assert!(!page.contains(raw), "{raw} reached the page unescaped");
    }
    // The live fragments are the same escaped HTML.
    let mut live = reqwest::get(format!("http://{}/events", view.addr))
        .await
        .expect("the live stream");
    let mut seen = String::new();
    while !seen.contains("event: broker") {
        let chunk = live.chunk().await.expect("reads").expect("a first event");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(seen.contains("&lt;script&gt;alert(1)"), "{seen}");
    assert!(!seen.contains("<script>alert"), "{seen}");
    view.stop().await;
}

#[tokio::test]
async fn it_shows_who_holds_an_entry_and_the_lag_and_holds_nothing_back() {
    let redis = PrivateRedis::start().await;
    let conn = RedisConnection::connect_for_commands(&redis.url())
        .await
        .expect("connects");
    let order = "01937a2e-5c00-7000-8000-000000000001";
    run(
        &conn,
        &[
            "XGROUP",
            "CREATE",
            "order-events",
            "payment-service",
            "$",
            "MKSTREAM",
        ],
    )
    .await;
    for _ in 0..3 {
        xadd(
            &conn,
            "order-events",
            &[
                ("event_type", "OrderCreated"),
                ("order_id", order),
                ("occurred_at", "2026-12-02T16:00:00Z"),
            ],
        )
        .await;
    }
    let view = view_of(&redis).await;
    // Three entries not yet delivered: lag 3.
    page_showing(&view, r#"<td class="lag">3</td>"#).await;

    run(
        &conn,
        &[
            "XREADGROUP",
            "GROUP",
            "payment-service",
            "payer-1",
            "COUNT",
            "1",
            "STREAMS",
            "order-events",
            ">",
        ],
    )
    .await;
    let page = page_showing(&view, "to payer-1, delivery 1").await;
    assert!(page.contains(r#"<td class="lag">2</td>"#), "{page}");
    assert!(page.contains(r#"<td class="pending">1</td>"#), "{page}");

    // Only the group the test made, one entry pending, nothing written by the view.
    let groups = run(&conn, &["XINFO", "GROUPS", "order-events"]).await;
    assert_eq!(
        format!("{groups:?}").matches("last-delivered-id").count(),
        1,
        "{groups:?}"
    );
    let length: u64 = redis::cmd("XLEN")
        .arg("order-events")
        .query_async(&mut conn.clone())
        .await
        .expect("XLEN");
    assert_eq!(length, 3);
    view.stop().await;
}

#[tokio::test]
async fn a_huge_entry_and_a_dead_letter_are_shown_not_read_whole() {
    let redis = PrivateRedis::start().await;
    let conn = RedisConnection::connect_for_commands(&redis.url())
        .await
        .expect("connects");
    let view = view_of(&redis).await;
    let huge = "x".repeat(8 * 1024 * 1024);
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg("order-events")
        .arg("payment-service")
        .arg("0")
        .arg("MKSTREAM")
        .query_async(&mut conn.clone())
        .await
        .expect("a group");
    xadd(
        &conn,
        "order-events",
        &[
            ("event_type", "OrderCreated"),
            ("order_id", "o"),
            ("pad", &huge),
        ],
    )
    .await;
    xadd(
        &conn,
        "{order-events}:dlq:payment-service",
        &[
            ("event_type", "OrderCreated"),
            ("order_id", "o-2"),
            (
                "dlq:error",
                "invalid event: total_cents does not match its lines",
            ),
        ],
    )
    .await;
    let page = page_showing(&view, "1 entries too big to show").await;
    assert!(
        !page.contains(&huge[..1000]),
        "the huge field is not on the page"
    );
    page_showing(&view, "total_cents does not match its lines").await;
    view.stop().await;
}

/// The calls of `command` Redis ran since its statistics were reset (those a function ran
/// included).
async fn calls_of(redis: &RedisConnection, command: &str) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut redis.clone())
        .await
        .expect("INFO");
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("cmdstat_{command}:calls=")))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn far_behind_it_reads_the_newest_entries_not_every_one_and_says_so() {
    let redis = PrivateRedis::start().await;
    let conn = RedisConnection::connect_for_commands(&redis.url())
        .await
        .expect("connects");
    let view = view_of(&redis).await;
    let order = |n: usize| format!("o-{n:05}");
    xadd(
        &conn,
        "order-events",
        &[("event_type", "OrderCreated"), ("order_id", &order(0))],
    )
    .await;
    page_showing(&view, &order(0)).await;

    // 5,000 entries at once: far more than a pass reads.
    run(&conn, &["CONFIG", "RESETSTAT"]).await;
    const BURST: usize = 5000;
    let mut pipe = redis::pipe();
    for n in 1..=BURST {
        pipe.cmd("XADD")
            .arg("order-events")
            .arg("*")
            .arg(&[("event_type", "OrderCreated"), ("order_id", &order(n))])
            .ignore();
    }
    pipe.query_async::<()>(&mut conn.clone())
        .await
        .expect("XADD");
    let page = page_showing(&view, &order(BURST)).await;

    // Every entry read would be 5,000 / 64 = 79 ranges at least.
    let ranges = calls_of(&conn, "xrange").await + calls_of(&conn, "xrevrange").await;
    assert!(ranges < 30, "{ranges} ranges read");
    assert!(page.contains("skipped to the newest"), "{page}");
    let newest: Vec<_> = (view.shared.view().window.newest(30))
        .map(|t| t.order_id.clone())
        .collect();
    let expected: Vec<_> = (BURST - 29..=BURST).rev().map(order).collect();
    assert_eq!(newest, expected, "the newest orders, none missing");
    view.stop().await;
}

/// The peak resident memory of process `pid`, in KiB (`VmHWM`).
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

/// The view as a real process, killed with the test.
struct Process(std::process::Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_100000_orders_the_view_holds_its_window_in_under_32_mib() {
    let redis = PrivateRedis::start().await;
    let conn = RedisConnection::connect_for_commands(&redis.url())
        .await
        .expect("connects");
    let port = testkit::free_port();
    let view = Process(
        std::process::Command::new(env!("CARGO_BIN_EXE_flow-view"))
            .env("REDIS_URL", redis.url())
            .env("HTTP_ADDR", format!("127.0.0.1:{port}"))
            .env("ORDER_SERVICE_URL", "http://127.0.0.1:9")
            .env("PAYMENT_SERVICE_URL", "http://127.0.0.1:9")
            .env("RUST_LOG", "error")
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("flow-view starts"),
    );
    let page = format!("http://127.0.0.1:{port}/");
    eventually("the view to serve", Duration::from_secs(20), || async {
        reqwest::get(&page)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    })
    .await;

    // Each order: its OrderCreated, then (once the view showed the last of those) its
    // PaymentCompleted, as the services write them.
    const ORDERS: usize = 100_000;
    let last = format!("01937a2e-5c00-7000-8000-{ORDERS:012}");
    let order_id = |n: usize| format!("01937a2e-5c00-7000-8000-{n:012}");
    for (stream, step) in [
        ("order-events", "OrderCreated"),
        ("payment-events", "PaymentCompleted"),
    ] {
        for chunk in (1..=ORDERS).collect::<Vec<_>>().chunks(1000) {
            let mut pipe = redis::pipe();
            for &n in chunk {
                let payload = format!(
                    r#"{{"order_id":"{}","customer_id":"c{}","items":[{{"sku":"book","quantity":2,"unit_price_cents":1250}}],"total_cents":2500,"currency":"EUR"}}"#,
                    order_id(n),
                    n % 100
                );
                pipe.cmd("XADD")
                    .arg(stream)
                    .arg("*")
                    .arg(&[
                        ("event_id", format!("{step}-{n}")),
                        ("event_type", step.to_owned()),
                        ("order_id", order_id(n)),
                        ("occurred_at", "2026-12-02T16:00:00Z".to_owned()),
                        ("payload", payload),
                    ])
                    .ignore();
            }
            pipe.query_async::<()>(&mut conn.clone())
                .await
                .expect("XADD");
        }
        eventually(
            &format!("the view to show the last order's {step}"),
            Duration::from_secs(120),
            || async {
                let text = text_of(&page).await?;
                let shown = text.matches(step).count();
                if text.contains(&last) && shown >= 30 {
                    Ok(())
                } else {
                    Err(format!("{shown} {step} shown"))
                }
            },
        )
        .await;
    }
    let peak = peak_rss_kib(view.0.id());
    eprintln!("flow-view peak RSS after {ORDERS} orders: {} KiB", peak);
    assert!(peak < 32 * 1024, "peak RSS {peak} KiB");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn it_reads_the_streams_of_a_redis_cluster() {
    let cluster = testkit::RedisCluster::start().await;
    let conn = RedisConnection::connect_for_commands(&cluster.url())
        .await
        .expect("connects");
    let order = "01937a2e-5c00-7000-8000-000000000009";
    run(
        &conn,
        &[
            "XGROUP",
            "CREATE",
            "payment-events",
            "order-service",
            "$",
            "MKSTREAM",
        ],
    )
    .await;
    xadd(
        &conn,
        "order-events",
        &[("event_type", "OrderCreated"), ("order_id", order)],
    )
    .await;
    xadd(
        &conn,
        "payment-events",
        &[("event_type", "PaymentCompleted"), ("order_id", order)],
    )
    .await;
    let view = view_at(&cluster.url()).await;
    // The streams are tailed and the groups read apart: wait for the groups' view.
    let page = page_showing(&view, r#"<td class="lag">1</td>"#).await;
    let page = if page.contains("PaymentCompleted") {
        page
    } else {
        page_showing(&view, "PaymentCompleted").await
    };
    assert!(page.contains("OrderCreated"), "{page}");
    view.stop().await;
}
