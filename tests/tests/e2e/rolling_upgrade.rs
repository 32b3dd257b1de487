//! A real rolling upgrade across schema versions (SPEC §3.4), under continuous load: the
//! binaries of the previous release (`tests/previous-release`: the build this one
//! replaces, written with schema version 1 here; built once by
//! `scripts/previous-release.sh` and cached) and the current ones, replica by replica, in
//! one consumer group per service, on databases the current build migrates further, as
//! the README's "Upgrading" runbook says:
//!
//! 1. both services on the previous release;
//! 2. the readers upgraded: each service rolled to the current build, still writing 1;
//! 3. the writers switched: each rolled again, writing 2 (`WRITE_SCHEMA_VERSION=2`) and
//!    signing in batches (`SIGNATURE_SCOPE=batch`, which the previous release cannot
//!    verify);
//! 4. payment-service rolled back: the writers switched back to 1 and to one signature
//!    per entry first, the version-2 entries drained from `order-events`, then payment-service rolled to the previous
//!    release.
//!
//! Each roll starts the new replica, waits until it is ready, and only then stops the
//! old one (SIGTERM), so replicas of two builds share a group for a while. Throughout: no
//! dead letter, nothing parked (the runbook's order never hands a replica a version it
//! cannot read), and in the end every order final and the §4.8 invariants, the deadline
//! rule with them.

use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use e2e::{Process, assert_invariants, order_body, ready, start_process, terminate};
use events::streams::{ORDER_EVENTS, ORDER_SERVICE_GROUP, PAYMENT_EVENTS, PAYMENT_SERVICE_GROUP};
use service_runtime::StreamKeys;
use sqlx::PgPool;
use testkit::{TestContext, eventually};

/// The folder holding the previous release's `order-service` and `payment-service`,
/// built (once) by the script.
fn previous_release() -> String {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../scripts/previous-release.sh"
    );
    let built = Command::new(script)
        .output()
        .expect("scripts/previous-release.sh runs");
    assert!(
        built.status.success(),
        "cannot build the previous release: {}",
        String::from_utf8_lossy(&built.stderr)
    );
    String::from_utf8_lossy(&built.stdout).trim().to_owned()
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Service {
    Orders,
    Payments,
}

/// A build: the previous release, or the current one writing a schema version.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Build {
    Previous,
    Current { writes: u32 },
}

struct Rollout {
    ctx: TestContext,
    orders_db: String,
    payments_db: String,
    previous: String,
    orders: Process,
    payments: Process,
    /// Where the load sends orders: the order-service replicas that are up.
    targets: Arc<Mutex<Vec<String>>>,
    started: usize,
}

impl Rollout {
    async fn start() -> Self {
        let ctx = TestContext::new();
        let (orders_db, payments_db) = (ctx.database().await, ctx.database().await);
        let previous = previous_release();
        let mut rollout = Self {
            orders: spawn(
                &ctx,
                &previous,
                Service::Orders,
                Build::Previous,
                &orders_db,
                0,
            ),
            payments: spawn(
                &ctx,
                &previous,
                Service::Payments,
                Build::Previous,
                &payments_db,
                1,
            ),
            ctx,
            orders_db,
            payments_db,
            previous,
            targets: Arc::default(),
            started: 2,
        };
        ready(&mut rollout.orders).await;
        ready(&mut rollout.payments).await;
        let first = rollout.orders.base_url.clone();
        rollout.targets_are(&[&first]);
        rollout
    }

    fn targets_are(&mut self, urls: &[&str]) {
        *self.targets.lock().expect("targets") = urls.iter().map(|u| u.to_string()).collect();
    }

    /// Replaces `service`'s replica by one of `build`: the new one up and ready first,
    /// then the old one stopped.
    async fn roll(&mut self, service: Service, build: Build) {
        let db = match service {
            Service::Orders => self.orders_db.clone(),
            Service::Payments => self.payments_db.clone(),
        };
        let mut next = spawn(&self.ctx, &self.previous, service, build, &db, self.started);
        self.started += 1;
        ready(&mut next).await;
        let mut old = match service {
            Service::Orders => {
                let (old_url, new_url) = (self.orders.base_url.clone(), next.base_url.clone());
                self.targets_are(&[&old_url, &new_url]);
                let mut rounds = tokio::time::interval(Duration::from_millis(500));
                for _ in 0..3 {
                    rounds.tick().await; // the scenario: both replicas take orders a while
                }
                self.targets_are(&[&new_url]);
                std::mem::replace(&mut self.orders, next)
            }
            Service::Payments => std::mem::replace(&mut self.payments, next),
        };
        terminate(&mut old, Duration::from_secs(15)).await;
    }

    /// Waits until order-service's outbox holds no unpublished row committed as version
    /// 2: a replica stopped between its commit and its publish leaves its rows to the
    /// next one's relay, which sends them as stored (the runbook's `outbox_backlog`).
    async fn no_version_2_left_to_publish(&self) {
        let pool = PgPool::connect(&self.orders_db).await.expect("db");
        eventually(
            "order-service to publish every version-2 row",
            Duration::from_secs(30),
            || async {
                let left: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM outbox_pending p JOIN outbox o USING (event_id)
                     WHERE o.fields[array_position(o.fields, 'schema_version') + 1] = '2'",
                )
                .fetch_one(&pool)
                .await
                .map_err(|e| e.to_string())?;
                if left == 0 {
                    Ok(())
                } else {
                    Err(format!("{left} rows"))
                }
            },
        )
        .await;
    }

    /// No dead letter on either stream, nothing parked by either group.
    async fn nothing_dead_lettered_or_parked(&self, when: &str) {
        for stream in [ORDER_EVENTS, PAYMENT_EVENTS] {
            let dead = self.ctx.dead_letters(stream).await;
            assert!(
                dead.is_empty(),
                "{when}: dead letters on {stream}: {dead:?}"
            );
        }
        let keys = StreamKeys::new(self.ctx.namespace());
        for (stream, group) in [
            (ORDER_EVENTS, PAYMENT_SERVICE_GROUP),
            (PAYMENT_EVENTS, ORDER_SERVICE_GROUP),
        ] {
            let parked: u64 = redis::cmd("HLEN")
                .arg(keys.parked(stream, group))
                .query_async(&mut self.ctx.redis().await)
                .await
                .expect("HLEN");
            assert_eq!(parked, 0, "{when}: parked by {group}");
        }
    }
}

fn spawn(
    ctx: &TestContext,
    previous: &str,
    service: Service,
    build: Build,
    db: &str,
    n: usize,
) -> Process {
    let name = match service {
        Service::Orders => "order-service",
        Service::Payments => "payment-service",
    };
    let (binary, writes) = match (build, service) {
        (Build::Previous, _) => (format!("{previous}/{name}"), 1),
        (Build::Current { writes }, Service::Orders) => {
            (env!("CARGO_BIN_EXE_chaos-order-service").to_owned(), writes)
        }
        (Build::Current { writes }, Service::Payments) => (
            env!("CARGO_BIN_EXE_chaos-payment-service").to_owned(),
            writes,
        ),
    };
    start_process(
        &binary,
        &[
            ("DATABASE_URL", db.to_owned()),
            ("REDIS_URL", ctx.redis_url().to_owned()),
            ("STREAM_NAMESPACE", ctx.namespace().to_owned()),
            ("CONSUMER_NAME", format!("{name}-{n}")),
            ("DATABASE_MAX_CONNECTIONS", "4".to_owned()),
            ("READ_BLOCK_MS", "200".to_owned()),
            ("CLAIM_MIN_IDLE_MS", "1000".to_owned()),
            ("PENDING_REPUBLISH_AFTER_MS", "3000".to_owned()),
            ("SHUTDOWN_TIMEOUT_MS", "5000".to_owned()),
            // The version it writes (the previous release is given 1), and batch
            // signatures with version 2: both switched once every reader reads them.
            ("WRITE_SCHEMA_VERSION", writes.to_string()),
            (
                "SIGNATURE_SCOPE",
                if writes >= 2 { "batch" } else { "entry" }.to_owned(),
            ),
            // Consumers report unsigned entries rather than refuse them (the first step
            // of turning signatures on, SPEC §4.9): a replica may meet what an unsigned
            // build wrote.
            ("SIGNATURES", "report".to_owned()),
        ],
    )
}

/// Orders placed at a steady pace until `stop`, on whichever replicas are `targets`.
fn steady_load(
    targets: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    accepted: Arc<AtomicUsize>,
) -> tokio::task::JoinHandle<usize> {
    tokio::spawn(async move {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .expect("a client");
        let mut pace = tokio::time::interval(Duration::from_millis(40));
        let mut refused = 0;
        let mut n = 0;
        while !stop.load(Ordering::SeqCst) {
            pace.tick().await;
            let url = {
                let targets = targets.lock().expect("targets");
                targets[n % targets.len()].clone()
            };
            match http
                .post(format!("{url}/orders"))
                .json(&order_body(n))
                .send()
                .await
            {
                Ok(response) if response.status() == 201 => {
                    accepted.fetch_add(1, Ordering::SeqCst);
                }
                _ => refused += 1,
            }
            n += 1;
        }
        refused
    })
}

/// Waits until `n` more orders than `from` were accepted: the load runs through a phase.
async fn through_phase(accepted: &AtomicUsize, from: usize, n: usize, phase: &str) {
    eventually(phase, Duration::from_secs(30), || async {
        let now = accepted.load(Ordering::SeqCst);
        if now >= from + n {
            Ok(now)
        } else {
            Err(format!("{} of {n} orders", now - from))
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_upgrade_to_schema_version_2_and_a_rollback_lose_and_park_nothing() {
    let mut rollout = Rollout::start().await;
    let (stop_load, accepted) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicUsize::new(0)),
    );
    let load = steady_load(rollout.targets.clone(), stop_load.clone(), accepted.clone());

    let from = accepted.load(Ordering::SeqCst);
    through_phase(&accepted, from, 50, "the previous release under load").await;

    // 2. The readers: every replica on the current build, still writing version 1.
    rollout
        .roll(Service::Payments, Build::Current { writes: 1 })
        .await;
    rollout
        .roll(Service::Orders, Build::Current { writes: 1 })
        .await;
    let from = accepted.load(Ordering::SeqCst);
    through_phase(&accepted, from, 50, "the readers upgraded").await;
    rollout
        .nothing_dead_lettered_or_parked("readers upgraded")
        .await;

    // 3. The writers: version 2, now that every reader reads it.
    rollout
        .roll(Service::Orders, Build::Current { writes: 2 })
        .await;
    rollout
        .roll(Service::Payments, Build::Current { writes: 2 })
        .await;
    let from = accepted.load(Ordering::SeqCst);
    through_phase(&accepted, from, 50, "the writers switched").await;
    rollout
        .nothing_dead_lettered_or_parked("writers switched")
        .await;

    // 4. payment-service rolled back: writers back to 1, the version-2 rows of
    //    order-service's outbox published and consumed, then the previous release.
    rollout
        .roll(Service::Orders, Build::Current { writes: 1 })
        .await;
    rollout
        .roll(Service::Payments, Build::Current { writes: 1 })
        .await;
    rollout.no_version_2_left_to_publish().await;
    rollout
        .ctx
        .drained(ORDER_EVENTS, PAYMENT_SERVICE_GROUP)
        .await;
    rollout.roll(Service::Payments, Build::Previous).await;
    let from = accepted.load(Ordering::SeqCst);
    through_phase(&accepted, from, 50, "payment-service rolled back").await;

    stop_load.store(true, Ordering::SeqCst);
    let refused = load.await.expect("the load ran");
    let (orders_db, payments_db) = (
        PgPool::connect(&rollout.orders_db).await.expect("db"),
        PgPool::connect(&rollout.payments_db).await.expect("db"),
    );
    let outcome = assert_invariants(&orders_db, &payments_db, Duration::from_secs(60)).await;
    let placed = accepted.load(Ordering::SeqCst);
    assert_eq!(
        outcome.paid + outcome.payment_failed + outcome.cancelled,
        placed,
        "every accepted order final ({refused} requests refused during the rolls)"
    );
    assert!(outcome.paid > 0, "{outcome:?}");
    rollout.nothing_dead_lettered_or_parked("at the end").await;
    let versions: std::collections::BTreeSet<String> = rollout
        .ctx
        .entries(ORDER_EVENTS)
        .await
        .into_iter()
        .filter_map(|(_, fields)| {
            fields
                .into_iter()
                .find_map(|(k, v)| (k == "schema_version").then_some(v))
        })
        .collect();
    assert_eq!(
        versions,
        ["1".to_owned(), "2".to_owned()].into(),
        "both versions really went through"
    );
}
