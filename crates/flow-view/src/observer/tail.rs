//! Following a stream without a group: the newest entries first, then each new one as it
//! comes, each added to the timeline of the order it names. Once caught up, at most one
//! pass per [`PACE`]: a pass costs Redis and the view a few calls however few entries it
//! brings, and the relays tick the stream on every batch they publish (hundreds a second
//! under load), so waking on each tick made the view cost the flow more than anything it
//! shows is worth (docs/performance.md, 2026-12-04).
//!
//! A pass reads at most [`MOST_PER_PASS`] entries more than one page: when more came
//! since the last, it reads the newest and skips the rest, and the page says so. Each
//! entry costs Redis and the view the same whether the page will show it or not, and at
//! thousands of orders a second reading every one cost the flow about a tenth of its rate
//! for orders the window drops at once (docs/performance.md, 2026-12-05, later).

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use service_runtime::RedisConnection;
use service_runtime::functions::{ObserveFrom, Observed, observe, stream_ends};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use super::{Flow, MAX_ENTRY_BYTES, Shared, View, entry_id_order};
use crate::window::{Step, clip};

/// Entries read per call.
const READ_COUNT: usize = 64;
/// The most of the newest entries a pass reads once a page did not bring all that came.
const MOST_PER_PASS: usize = 256;
/// How long a wait for a stream's next tick blocks.
const BLOCK: Duration = Duration::from_secs(2);
/// The least time from one pass over the stream to the next once it is caught up: what
/// the page lags behind the flow at most, on top of Redis.
const PACE: Duration = Duration::from_millis(250);
/// The pause after Redis could not be read.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// Follows `flow`'s stream: the newest `initial` entries first, then each new one as it
/// comes (woken by the stream's ticks, never blocking on the stream itself, and at least
/// every `BLOCK`), from its start again when the stream was recreated (Redis restarted
/// empty). Every wait is bounded: a Redis away or frozen is retried every second.
pub async fn tail(
    shared: Arc<Shared>,
    mut commands: RedisConnection,
    mut blocking: RedisConnection,
    flow: Flow,
    initial: usize,
    stop: CancellationToken,
) {
    // The last entry read; `None` before the first read.
    let mut last: Option<String> = None;
    let mut tick = "0-0".to_owned();
    while !stop.is_cancelled() {
        let pass_started = Instant::now();
        match read_after(&mut commands, &flow, last.as_deref(), initial).await {
            Ok(Pass {
                entries,
                skipped,
                newest,
            }) => {
                if let Some(entry) = entries.last() {
                    last = Some(entry.id().to_owned());
                }
                let seen = last.get_or_insert_with(|| "-".to_owned());
                if recreated(seen, newest.as_deref()) {
                    *seen = "-".to_owned();
                }
                if !entries.is_empty() {
                    let mut view = shared.view();
                    for entry in &entries {
                        record(&mut view, &flow, entry);
                    }
                    if let Some(stream) = view.stream_mut(flow.logical).filter(|_| skipped) {
                        stream.skips += 1;
                    }
                    view.redis_error = None;
                    drop(view);
                    shared.changed();
                }
            }
            Err(e) => {
                shared.redis_failed(&flow.key, &e);
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(RETRY_AFTER) => continue,
                }
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            woken = next_tick(&mut blocking, &flow.ticks, &tick) => match woken {
                Ok(Some(id)) => tick = id,
                Ok(None) => {}
                Err(e) => shared.redis_failed(&flow.ticks, &e),
            },
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep_until(pass_started + PACE) => {}
        }
    }
}

/// What a pass read.
struct Pass {
    /// The entries read, oldest first.
    entries: Vec<Observed>,
    /// Whether the pass stopped at [`MOST_PER_PASS`] before the entries it had read, so
    /// that some between them may be left unread.
    skipped: bool,
    /// The id of the stream's newest entry (`None`: empty or gone).
    newest: Option<String>,
}

/// The entries after `last` (the newest `initial` before the first read): a page of
/// them, and if more came, the newest [`MOST_PER_PASS`] of the rest.
async fn read_after(
    redis: &mut RedisConnection,
    flow: &Flow,
    last: Option<&str>,
    initial: usize,
) -> redis::RedisResult<Pass> {
    let (entries, skipped) = match last {
        Some(id) => {
            let from = ObserveFrom::After(id.to_owned());
            let mut entries = observe(redis, &flow.key, &from, READ_COUNT, MAX_ENTRY_BYTES).await?;
            let mut skipped = false;
            if let Some(read) = entries.last().filter(|_| entries.len() == READ_COUNT) {
                let (newest, gap) = newest_after(redis, flow, read.id()).await?;
                entries.extend(newest);
                skipped = gap;
            }
            (entries, skipped)
        }
        None => {
            let from = ObserveFrom::Newest;
            let mut newest = observe(redis, &flow.key, &from, initial, MAX_ENTRY_BYTES).await?;
            newest.reverse();
            (newest, false)
        }
    };
    let ends = stream_ends(redis, &flow.key).await?;
    Ok(Pass {
        entries,
        skipped,
        newest: ends.map(|(_, newest)| newest),
    })
}

/// The entries after `read`, oldest first, read from the newest back: all of them, or the
/// newest [`MOST_PER_PASS`] (and `true`: older ones may be left).
async fn newest_after(
    redis: &mut RedisConnection,
    flow: &Flow,
    read: &str,
) -> redis::RedisResult<(Vec<Observed>, bool)> {
    let mut newest: Vec<Observed> = Vec::new();
    let mut from = ObserveFrom::Newest;
    loop {
        let page = observe(redis, &flow.key, &from, READ_COUNT, MAX_ENTRY_BYTES).await?;
        let before = newest.len();
        newest.extend(page.into_iter().take_while(|e| entry_id_less(read, e.id())));
        let reached_read = newest.len() - before < READ_COUNT;
        if reached_read || newest.len() >= MOST_PER_PASS {
            newest.reverse();
            return Ok((newest, !reached_read));
        }
        if let Some(oldest) = newest.last() {
            from = ObserveFrom::Before(oldest.id().to_owned());
        }
    }
}

/// Waits at most [`BLOCK`] for a tick after `after`; the newest tick's id if one came.
async fn next_tick(
    redis: &mut RedisConnection,
    ticks: &str,
    after: &str,
) -> redis::RedisResult<Option<String>> {
    type Reply = Option<Vec<(String, Vec<(String, redis::Value)>)>>;
    let reply: Reply = redis::cmd("XREAD")
        .arg("BLOCK")
        .arg(BLOCK.as_millis() as u64)
        .arg("STREAMS")
        .arg(ticks)
        .arg(after)
        .query_async(redis)
        .await?;
    Ok(reply
        .and_then(|streams| streams.into_iter().next())
        .and_then(|(_, entries)| entries.into_iter().last())
        .map(|(id, _)| id))
}

/// Whether a stream whose newest entry is `newest` cannot be the one in which `seen` was
/// read: it is gone or empty, or its newest entry is older (Redis restarted empty).
fn recreated(seen: &str, newest: Option<&str>) -> bool {
    seen != "-" && newest.is_none_or(|newest| entry_id_less(newest, seen))
}

/// Whether stream entry id `a` is older than `b`.
fn entry_id_less(a: &str, b: &str) -> bool {
    entry_id_order(a) < entry_id_order(b)
}

/// Adds what one entry says to the timeline of the order it names.
fn record(view: &mut View, flow: &Flow, entry: &Observed) {
    let fields = match entry {
        Observed::Entry { fields, .. } => fields,
        Observed::Oversized { .. } => {
            if let Some(stream) = view.stream_mut(flow.logical) {
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
    fn a_stream_gone_or_behind_what_was_read_is_read_from_its_start() {
        assert!(recreated("5-0", None), "gone");
        assert!(recreated("5-0", Some("4-9")), "restarted, older ids");
        assert!(!recreated("5-0", Some("5-0")), "the same stream");
        assert!(!recreated("-", None), "nothing read yet");
    }
}
