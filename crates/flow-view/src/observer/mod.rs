//! What the view reads, and only reads: the streams without a consumer group (so it can
//! never slow, change or hold back the flow, and trimming ignores it), the groups'
//! positions and pending entries, the dead letters, and the services' public HTTP APIs
//! and `/metrics`. Never a database; never a write to Redis.
//!
//! One reader per concern, each a loop that fills the shared [`View`] and bounds every
//! wait, so a frozen or absent Redis or service only leaves its part of the page stale:
//! [`tail`] follows a stream, `broker` reads the groups and dead letters, `services`
//! reads the services' figures and orders' states.

mod broker;
mod services;
mod tail;

use std::sync::{Arc, Mutex, MutexGuard};

use events::streams::{ORDER_EVENTS, PAYMENT_EVENTS};
use service_runtime::StreamKeys;
use tokio::sync::watch;
use tracing::warn;

use crate::window::{Window, clip};

pub use broker::{ConsumerState, DeadLetter, GroupState, StreamState, watch_broker};
pub use services::{ServiceState, watch_services};
pub use tail::tail;

/// The most bytes of one entry the view reads; a bigger one is shown by its size.
const MAX_ENTRY_BYTES: usize = 64 * 1024;

/// A stream entry id (`<ms>-<seq>`) as what it sorts by; a part that is not a number
/// counts as 0.
fn entry_id_order(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
}

/// A stream of the flow and its keys.
#[derive(Debug, Clone)]
pub struct Flow {
    pub logical: &'static str,
    pub key: String,
    pub ticks: String,
    /// The keys of the namespace, for the dead letters of each group found on it.
    pub keys: StreamKeys,
}

/// The two streams of the order/payment flow under `keys`' namespace.
pub fn flows(keys: &StreamKeys) -> Vec<Flow> {
    [ORDER_EVENTS, PAYMENT_EVENTS]
        .into_iter()
        .map(|logical| Flow {
            logical,
            key: keys.stream(logical),
            ticks: keys.ticks(logical),
            keys: keys.clone(),
        })
        .collect()
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

impl View {
    /// The state of the stream named `logical`.
    fn stream_mut(&mut self, logical: &str) -> Option<&mut StreamState> {
        self.streams.iter_mut().find(|s| s.name == logical)
    }
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
            .map(|name| ServiceState::new(name))
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

    /// Notes that Redis could not be read (shown on the page until a read succeeds).
    fn redis_failed(&self, key: &str, e: &redis::RedisError) {
        warn!(key, error = %e, "cannot read Redis");
        self.view().redis_error = Some(clip(&e.to_string()));
        self.changed();
    }
}

/// Records an order placed through the page, before its `OrderCreated` is read.
pub fn note_placed(shared: &Shared, order_id: &str, status: &str) {
    let mut view = shared.view();
    view.window
        .order(order_id)
        .status
        .get_or_insert_with(|| clip(status));
    drop(view);
    shared.changed();
}
