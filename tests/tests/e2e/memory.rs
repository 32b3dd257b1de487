//! Memory a burst took is given back once the burst is over (the process's resident set
//! does not stay at its high-water mark).

use std::time::Duration;

use e2e::{place_orders, ready, start_process};
use testkit::{TestContext, eventually};

/// The resident set of process `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("the process's status")
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
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
    ready(&orders).await;
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
