//! What the view reads, and only reads: the streams without a consumer group (so it can
//! never slow, change or hold back the flow, and trimming ignores it), the groups'
//! positions and pending entries, the dead letters, and the services' public HTTP APIs
//! and `/metrics`. Never a database; never a write to Redis.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use events::streams::{ORDER_EVENTS, ORDER_SERVICE_GROUP, PAYMENT_EVENTS, PAYMENT_SERVICE_GROUP};
use service_runtime::RedisConnection;
use service_runtime::StreamKeys;
use service_runtime::dead_letters::fields as dlq;
use service_runtime::functions::{ObserveFrom, Observed, observe, stream_ends};
use time::OffsetDateTime;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::window::{Step, Timeline, Window, clip};

/// The most bytes of one entry the view reads; a bigger one is shown by its size.
const MAX_ENTRY_BYTES: usize = 64 * 1024;
/// Entries read per call while catching up.
const READ_COUNT: usize = 64;
/// How long a wait for a stream's next tick blocks.
const BLOCK: Duration = Duration::from_secs(2);
/// Pending entries looked at per group and round, and dead letters shown per stream.
const PENDING_SHOWN: usize = 50;
const DEAD_LETTERS_SHOWN: usize = 5;
/// Orders whose state is asked of order-service per round.
const STATES_ASKED: usize = 20;

/// A stream and the group the flow expects on it (any other group is shown too).
#[derive(Debug, Clone)]
pub struct Flow {
    pub logical: &'static str,
    pub reader: &'static str,
    pub key: String,
    pub ticks: String,
    pub dead_letters: String,
}

/// The two streams of the order/payment flow under `keys`' namespace.
pub fn flows(keys: &StreamKeys) -> Vec<Flow> {
    [
        (ORDER_EVENTS, PAYMENT_SERVICE_GROUP),
        (PAYMENT_EVENTS, ORDER_SERVICE_GROUP),
    ]
    .into_iter()
    .map(|(logical, reader)| Flow {
        logical,
        reader,
        key: keys.stream(logical),
        ticks: keys.ticks(logical),
        dead_letters: keys.dead_letter(logical),
    })
    .collect()
}

/// A consumer of a group.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConsumerState {
    pub name: String,
    pub pending: u64,
    pub idle_ms: u64,
}

/// A consumer group on a stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupState {
    pub name: String,
    /// Entries not yet delivered to the group (`None`: Redis cannot tell).
    pub lag: Option<u64>,
    pub pending: u64,
    pub last_delivered: String,
    pub consumers: Vec<ConsumerState>,
}

/// A dead letter as the page shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeadLetter {
    pub id: String,
    pub event_type: String,
    pub order_id: String,
    pub error: String,
}

/// A stream, its groups and its dead letters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamState {
    pub name: String,
    pub length: u64,
    pub groups: Vec<GroupState>,
    pub dead_letters: u64,
    pub recent_dead_letters: Vec<DeadLetter>,
    /// Entries over the view's read limit, seen since it started.
    pub oversized_seen: u64,
}

/// A service as its `/metrics` shows it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServiceState {
    pub name: &'static str,
    pub up: bool,
    pub outbox_backlog: Option<f64>,
    pub published_per_s: Option<f64>,
    pub consumed_per_s: Option<f64>,
    last: Option<(Instant, f64, f64)>,
}

/// Everything the page shows.
#[derive(Debug)]
pub struct View {
    pub window: Window,
    pub streams: Vec<StreamState>,
    pub services: Vec<ServiceState>,
    /// Why Redis could not be read, while it cannot.
    pub redis_error: Option<String>,
}

/// The view, shared by the readers that fill it and the pages that show it; every change
/// bumps a counter the live pages wait on.
pub struct Shared {
    view: Mutex<View>,
    changed: watch::Sender<u64>,
}

impl Shared {
    pub fn new(window: Window, flows: &[Flow], services: &[&'static str]) -> Arc<Self> {
        let streams = flows
            .iter()
            .map(|f| StreamState {
                name: f.logical.to_owned(),
                ..StreamState::default()
            })
            .collect();
        let services = services
            .iter()
            .map(|name| ServiceState {
                name,
                ..ServiceState::default()
            })
            .collect();
        Arc::new(Self {
            view: Mutex::new(View {
                window,
                streams,
                services,
                redis_error: None,
            }),
            changed: watch::channel(0).0,
        })
    }

    /// The view, to read or change (a change is announced with [`Shared::changed`]).
    pub fn view(&self) -> MutexGuard<'_, View> {
        self.view.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Tells the live pages that the view changed.
    pub fn changed(&self) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Waits for changes.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
}

/// Follows `flow`'s stream: the newest entries first, then each new one as it comes
/// (woken by the stream's ticks, never blocking on the stream itself), starting over
/// when the stream was recreated (Redis restarted empty).
pub async fn tail(
    shared: Arc<Shared>,
    mut commands: RedisConnection,
    mut blocking: RedisConnection,
    flow: Flow,
    initial: usize,
    stop: CancellationToken,
) {
    let mut last: Option<String> = None;
    let mut tick = "0-0".to_owned();
    while !stop.is_cancelled() {
        let read = async {
            let from = last.clone().map_or(ObserveFrom::Newest, ObserveFrom::After);
            let count = if last.is_none() { initial } else { READ_COUNT };
            let mut entries =
                observe(&mut commands, &flow.key, &from, count, MAX_ENTRY_BYTES).await?;
            if from == ObserveFrom::Newest {
                entries.reverse();
            }
            let ends = stream_ends(&mut commands, &flow.key).await?;
            redis::RedisResult::Ok((entries, ends))
        };
        match read.await {
            Ok((entries, ends)) => {
                let caught_up = entries.len() < READ_COUNT;
                if let Some(newest) = entries.last() {
                    last = Some(newest.id().to_owned());
                } else if last.is_none() {
                    last = Some("-".to_owned());
                }
                // A stream whose newest entry is older than the last one read was
                // recreated: read it from its start.
                if let (Some(seen), Some((_, newest))) = (&last, &ends)
                    && seen != "-"
                    && entry_id_less(newest, seen)
                {
                    last = Some("-".to_owned());
                }
                if ends.is_none() && last.as_deref() != Some("-") {
                    last = Some("-".to_owned());
                }
                if !entries.is_empty() {
                    let mut view = shared.view();
                    for entry in &entries {
                        record(&mut view, &flow, entry);
                    }
                    view.redis_error = None;
                    drop(view);
                    shared.changed();
                }
                if !caught_up {
                    continue;
                }
            }
            Err(e) => {
                redis_failed(&shared, &flow.key, &e);
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        }
        let mut wait = redis::cmd("XREAD");
        wait.arg("BLOCK")
            .arg(BLOCK.as_millis() as u64)
            .arg("STREAMS")
            .arg(&flow.ticks)
            .arg(&tick);
        let woken =
            wait.query_async::<Option<Vec<(String, Vec<(String, redis::Value)>)>>>(&mut blocking);
        tokio::select! {
            () = stop.cancelled() => return,
            woken = woken => match woken {
                Ok(Some(streams)) => {
                    if let Some((id, _)) = streams.into_iter().next().and_then(|(_, e)| e.into_iter().last()) {
                        tick = id;
                    }
                }
                Ok(None) => {}
                Err(e) => redis_failed(&shared, &flow.ticks, &e),
            },
        }
    }
}

fn redis_failed(shared: &Shared, key: &str, e: &redis::RedisError) {
    warn!(key, error = %e, "cannot read Redis");
    shared.view().redis_error = Some(clip(&e.to_string()));
    shared.changed();
}

/// Whether stream entry id `a` is older than `b`.
fn entry_id_less(a: &str, b: &str) -> bool {
    let parse = |id: &str| {
        let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
        (
            ms.parse::<u64>().unwrap_or(0),
            seq.parse::<u64>().unwrap_or(0),
        )
    };
    parse(a) < parse(b)
}

/// Adds what one entry says to the timeline of the order it names.
fn record(view: &mut View, flow: &Flow, entry: &Observed) {
    let fields = match entry {
        Observed::Entry { fields, .. } => fields,
        Observed::Oversized { .. } => {
            if let Some(stream) = view.streams.iter_mut().find(|s| s.name == flow.logical) {
                stream.oversized_seen += 1;
            }
            return;
        }
    };
    let field = |name: &str| {
        fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let Some(order_id) = field("order_id") else {
        return;
    };
    let what = field("event_type").unwrap_or("(no event type)");
    let at = field("occurred_at")
        .and_then(|t| OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(OffsetDateTime::now_utc);
    let payload: serde_json::Value = field("payload")
        .and_then(|p| serde_json::from_str(p).ok())
        .unwrap_or_default();
    let timeline = view.window.order(order_id);
    if what == "OrderCreated" {
        timeline.placed_at.get_or_insert(at);
        if let Some(customer) = payload["customer_id"].as_str() {
            timeline.customer_id = clip(customer);
        }
        timeline.total_cents = payload["total_cents"].as_i64();
    }
    let detail = payload["reason"].as_str().map(clip).unwrap_or_default();
    timeline.add_step(Step {
        what: clip(what),
        entry_id: clip(entry.id()),
        detail,
        at,
    });
}

/// Reads every `every` the state of each flow's groups, pending entries and dead letters.
pub async fn watch_broker(
    shared: Arc<Shared>,
    mut redis: RedisConnection,
    flows: Vec<Flow>,
    every: Duration,
    stop: CancellationToken,
) {
    loop {
        for flow in &flows {
            match read_stream_state(&mut redis, flow).await {
                Ok((state, pending)) => {
                    let mut view = shared.view();
                    let now = OffsetDateTime::now_utc();
                    for p in pending {
                        mark_delivered(&mut view.window, &p, now);
                    }
                    if let Some(stream) = view.streams.iter_mut().find(|s| s.name == flow.logical) {
                        let oversized_seen = stream.oversized_seen;
                        *stream = StreamState {
                            oversized_seen,
                            ..state
                        };
                    }
                    drop(view);
                    shared.changed();
                }
                Err(e) => redis_failed(&shared, &flow.key, &e),
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
    }
}

/// An entry a consumer holds: `XPENDING`'s extended form.
struct Pending {
    id: String,
    consumer: String,
    idle_ms: u64,
    deliveries: u64,
}

fn mark_delivered(window: &mut Window, pending: &Pending, now: OffsetDateTime) {
    let Some(order_id) = window.order_of_entry(&pending.id) else {
        return;
    };
    if let Some(timeline) = window.get_mut(&order_id) {
        timeline.add_step(Step {
            what: "delivered".to_owned(),
            entry_id: pending.id.clone(),
            detail: format!(
                "to {}, delivery {}",
                clip(&pending.consumer),
                pending.deliveries
            ),
            at: now - Duration::from_millis(pending.idle_ms),
        });
    }
}

async fn read_stream_state(
    redis: &mut RedisConnection,
    flow: &Flow,
) -> redis::RedisResult<(StreamState, Vec<Pending>)> {
    let length: u64 = redis::cmd("XLEN").arg(&flow.key).query_async(redis).await?;
    let groups: Vec<HashMap<String, redis::Value>> = if length == 0 {
        // XINFO GROUPS fails on a stream that does not exist.
        redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(&flow.key)
            .query_async(redis)
            .await
            .unwrap_or_default()
    } else {
        redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(&flow.key)
            .query_async(redis)
            .await?
    };
    let mut state = StreamState {
        name: flow.logical.to_owned(),
        length,
        ..StreamState::default()
    };
    let mut pending_entries = Vec::new();
    for group in groups {
        let text = |k: &str| match group.get(k) {
            Some(redis::Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
            Some(redis::Value::SimpleString(s)) => s.clone(),
            _ => String::new(),
        };
        let number = |k: &str| match group.get(k) {
            Some(redis::Value::Int(n)) => u64::try_from(*n).ok(),
            _ => None,
        };
        let name = text("name");
        let consumers: Vec<HashMap<String, redis::Value>> = redis::cmd("XINFO")
            .arg("CONSUMERS")
            .arg(&flow.key)
            .arg(&name)
            .query_async(redis)
            .await?;
        let pending: Vec<(String, String, u64, u64)> = redis::cmd("XPENDING")
            .arg(&flow.key)
            .arg(&name)
            .arg("-")
            .arg("+")
            .arg(PENDING_SHOWN)
            .query_async(redis)
            .await?;
        pending_entries.extend(
            pending
                .into_iter()
                .map(|(id, consumer, idle_ms, deliveries)| Pending {
                    id,
                    consumer,
                    idle_ms,
                    deliveries,
                }),
        );
        state.groups.push(GroupState {
            name: clip(&name),
            lag: number("lag"),
            pending: number("pending").unwrap_or(0),
            last_delivered: text("last-delivered-id"),
            consumers: consumers
                .iter()
                .map(|c| ConsumerState {
                    name: match c.get("name") {
                        Some(redis::Value::BulkString(b)) => clip(&String::from_utf8_lossy(b)),
                        _ => String::new(),
                    },
                    pending: match c.get("pending") {
                        Some(redis::Value::Int(n)) => u64::try_from(*n).unwrap_or(0),
                        _ => 0,
                    },
                    idle_ms: match c.get("idle") {
                        Some(redis::Value::Int(n)) => u64::try_from(*n).unwrap_or(0),
                        _ => 0,
                    },
                })
                .collect(),
        });
    }
    state.dead_letters = redis::cmd("XLEN")
        .arg(&flow.dead_letters)
        .query_async(redis)
        .await?;
    if state.dead_letters > 0 {
        let recent = observe(
            redis,
            &flow.dead_letters,
            &ObserveFrom::Newest,
            DEAD_LETTERS_SHOWN,
            MAX_ENTRY_BYTES,
        )
        .await?;
        state.recent_dead_letters = recent.iter().map(dead_letter).collect();
    }
    Ok((state, pending_entries))
}

fn dead_letter(entry: &Observed) -> DeadLetter {
    let mut letter = DeadLetter {
        id: clip(entry.id()),
        ..DeadLetter::default()
    };
    match entry {
        Observed::Entry { fields, .. } => {
            for (name, value) in fields {
                match name.as_str() {
                    "event_type" => letter.event_type = clip(value),
                    "order_id" => letter.order_id = clip(value),
                    n if n == dlq::ERROR => letter.error = clip(value),
                    _ => {}
                }
            }
        }
        Observed::Oversized { bytes, .. } => letter.error = format!("{bytes} bytes, not read"),
    }
    letter
}

/// Reads every `every` each service's `/metrics` (outbox backlog, events published and
/// consumed per second) and asks order-service the state of orders not yet final.
pub async fn watch_services(
    shared: Arc<Shared>,
    http: reqwest::Client,
    urls: Vec<(&'static str, String)>,
    order_service: String,
    every: Duration,
    stop: CancellationToken,
) {
    loop {
        for (name, url) in &urls {
            let metrics = scrape(&http, url).await;
            let mut view = shared.view();
            if let Some(service) = view.services.iter_mut().find(|s| s.name == *name) {
                update_service(service, metrics);
            }
        }
        let unsettled = shared.view().window.unsettled(STATES_ASKED);
        for order_id in unsettled {
            if let Some((status, at)) = order_state(&http, &order_service, &order_id).await
                && let Some(timeline) = shared.view().window.get_mut(&order_id)
            {
                timeline.status = Some(clip(&status));
                timeline.status_at = at;
            }
        }
        shared.changed();
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
    }
}

/// The sums of the three figures in a Prometheus text page, if it could be read.
async fn scrape(http: &reqwest::Client, base: &str) -> Option<(f64, f64, f64)> {
    let page = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .ok()?
        .error_for_status()
        .ok()?
        .text()
        .await
        .ok()?;
    let sum = |metric: &str| -> f64 {
        page.lines()
            .filter(|l| {
                l.strip_prefix(metric)
                    .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    Some((
        sum("outbox_backlog"),
        sum("events_published_total"),
        sum("events_consumed_total"),
    ))
}

fn update_service(service: &mut ServiceState, metrics: Option<(f64, f64, f64)>) {
    let Some((backlog, published, consumed)) = metrics else {
        service.up = false;
        service.last = None;
        service.published_per_s = None;
        service.consumed_per_s = None;
        return;
    };
    let now = Instant::now();
    service.up = true;
    service.outbox_backlog = Some(backlog);
    if let Some((then, p0, c0)) = service.last {
        let seconds = now.duration_since(then).as_secs_f64().max(0.001);
        service.published_per_s = Some(((published - p0) / seconds).max(0.0));
        service.consumed_per_s = Some(((consumed - c0) / seconds).max(0.0));
    }
    service.last = Some((now, published, consumed));
}

/// The order's status and last change as order-service reports them.
async fn order_state(
    http: &reqwest::Client,
    base: &str,
    order_id: &str,
) -> Option<(String, Option<OffsetDateTime>)> {
    let id = uuid::Uuid::parse_str(order_id).ok()?;
    let order: serde_json::Value = http
        .get(format!("{base}/orders/{id}"))
        .send()
        .await
        .ok()?
        .error_for_status()
        .ok()?
        .json()
        .await
        .ok()?;
    let at = order["updated_at"].as_str().and_then(|t| {
        OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
    });
    Some((order["status"].as_str()?.to_owned(), at))
}

/// Records an order placed through the page, before its `OrderCreated` is read.
pub fn note_placed(shared: &Shared, order_id: &str, status: &str) {
    let mut view = shared.view();
    let timeline: &mut Timeline = view.window.order(order_id);
    timeline.status.get_or_insert_with(|| clip(status));
    drop(view);
    shared.changed();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_ids_compare_by_time_then_sequence() {
        assert!(entry_id_less("1-0", "2-0"));
        assert!(entry_id_less("2-1", "2-10"));
        assert!(!entry_id_less("10-0", "9-99"));
        assert!(!entry_id_less("3-3", "3-3"));
    }

    #[test]
    fn rates_come_from_two_scrapes_and_a_missing_one_means_down() {
        let mut service = ServiceState::default();
        update_service(&mut service, Some((3.0, 10.0, 5.0)));
        assert!(service.up);
        assert_eq!(service.outbox_backlog, Some(3.0));
        assert_eq!(service.published_per_s, None, "one scrape gives no rate");
        update_service(&mut service, Some((0.0, 20.0, 5.0)));
        assert!(service.published_per_s.is_some_and(|r| r > 0.0));
        assert_eq!(service.consumed_per_s, Some(0.0));
        update_service(&mut service, None);
        assert!(!service.up);
    }
}
