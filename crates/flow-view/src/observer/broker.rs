//! The broker state behind the flow: each stream's length, its groups (lag, pending,
//! consumers), the entries consumers hold (marked on the orders' timelines) and the
//! newest dead letters.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use service_runtime::RedisConnection;
use service_runtime::dead_letters::fields as dlq;
use service_runtime::functions::{ObserveFrom, Observed, observe};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use super::{Flow, MAX_ENTRY_BYTES, Shared, entry_id_order};
use crate::window::{Step, Window, clip};

/// Pending entries looked at per group and round; consumers and dead letters shown.
const PENDING_SHOWN: usize = 50;
const CONSUMERS_SHOWN: usize = 32;
const DEAD_LETTERS_SHOWN: usize = 5;

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
    /// Passes that stopped at the newest entries a pass reads and may have left older
    /// ones unread (more had come), since it started.
    pub skips: u64,
}

/// An entry a consumer holds: `XPENDING`'s extended form.
struct Pending {
    id: String,
    consumer: String,
    idle_ms: u64,
    deliveries: u64,
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
                    if let Some(stream) = view.stream_mut(flow.logical) {
                        *stream = StreamState {
                            oversized_seen: stream.oversized_seen,
                            skips: stream.skips,
                            ..state
                        };
                    }
                    view.redis_error = None;
                    drop(view);
                    shared.changed();
                }
                Err(e) => shared.redis_failed(&flow.key, &e),
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
    }
}

/// Marks on its order's timeline that a consumer holds the entry (the view sees only
/// the entries pending when it looks).
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

/// A text field of an `XINFO` reply.
fn text(info: &HashMap<String, redis::Value>, key: &str) -> String {
    match info.get(key) {
        Some(redis::Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
        Some(redis::Value::SimpleString(s)) => s.clone(),
        _ => String::new(),
    }
}

/// A number field of an `XINFO` reply (`None` if Redis gives none, as lag can be).
fn number(info: &HashMap<String, redis::Value>, key: &str) -> Option<u64> {
    match info.get(key) {
        Some(redis::Value::Int(n)) => u64::try_from(*n).ok(),
        _ => None,
    }
}

async fn read_stream_state(
    redis: &mut RedisConnection,
    flow: &Flow,
) -> redis::RedisResult<(StreamState, Vec<Pending>)> {
    let length: u64 = redis::cmd("XLEN").arg(&flow.key).query_async(redis).await?;
    let groups: redis::RedisResult<Vec<HashMap<String, redis::Value>>> = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(&flow.key)
        .query_async(redis)
        .await;
    let groups = match groups {
        Ok(groups) => groups,
        // XINFO GROUPS fails on a stream that does not exist (yet).
        Err(_) if length == 0 => Vec::new(),
        Err(e) => return Err(e),
    };
    let mut state = StreamState {
        name: flow.logical.to_owned(),
        length,
        ..StreamState::default()
    };
    let mut pending_entries = Vec::new();
    let mut recent_dead_letters = Vec::new();
    for group in groups {
        let name = text(&group, "name");
        let dead_letters = flow.keys.dead_letter(flow.logical, &name);
        let count: u64 = redis::cmd("XLEN")
            .arg(&dead_letters)
            .query_async(redis)
            .await?;
        state.dead_letters += count;
        if count > 0 {
            let recent = observe(
                redis,
                &dead_letters,
                &ObserveFrom::Newest,
                DEAD_LETTERS_SHOWN,
                MAX_ENTRY_BYTES,
            )
            .await?;
            recent_dead_letters.extend(recent.iter().map(dead_letter));
        }
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
            lag: number(&group, "lag"),
            pending: number(&group, "pending").unwrap_or(0),
            last_delivered: text(&group, "last-delivered-id"),
            consumers: consumers
                .iter()
                .take(CONSUMERS_SHOWN)
                .map(|c| ConsumerState {
                    name: clip(&text(c, "name")),
                    pending: number(c, "pending").unwrap_or(0),
                    idle_ms: number(c, "idle").unwrap_or(0),
                })
                .collect(),
        });
    }
    // The newest of every group's, newest first.
    recent_dead_letters.sort_by_key(|letter| std::cmp::Reverse(entry_id_order(&letter.id)));
    recent_dead_letters.truncate(DEAD_LETTERS_SHOWN);
    state.recent_dead_letters = recent_dead_letters;
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
