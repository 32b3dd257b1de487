//! A runtime for services that talk through Redis Streams: each service brings its
//! settings, its tables, one [`EventHandler`] and its HTTP routes, and [`service::start`]
//! runs them with everything below. `examples/shipping-service` is a whole service in
//! under 200 lines; order-service and payment-service are two more.
//!
//! | pattern | where | guarantee |
//! |---|---|---|
//! | transactional outbox | [`outbox`] | a state change and its event commit together or not at all |
//! | outbox relay | [`relay`] | every committed event reaches its stream at least once |
//! | inbox | `inbox.rs` | an event applied once has no second effect |
//! | consumer loop | [`consumer`] | an entry is acked only after its effect committed |
//! | dead letters | [`dead_letters`] | one bad entry never blocks the others, and can be replayed |
//! | stream keys | [`StreamKeys`] | every Redis key in one place |
//! | their tables | [`schema`] | the outbox and inbox migration, shipped once |
//! | retention | [`retention`] | every store bounded, nothing unfinished removed |
//!
//! What a service uses: [`service`] (start, run, shut down, periodic jobs), [`settings`],
//! [`outbox`] (to write events with a change), [`problem`] (HTTP errors),
//! [`idempotency`] (`Idempotency-Key`), [`schema`], and the metric names of
//! [`observability`]. The loops themselves ([`consumer`], [`relay`], [`liveness`],
//! [`redis_conn`], [`request`], [`http_server`]) are public for tools and for a shell of
//! one's own (the runtime's tests drive them one by one); the rest (the admin API,
//! health, the inbox, keys, signatures, memory) is wired by [`service::start`] and not
//! exported.

#![warn(missing_docs)]

mod admin;
mod backoff;
pub mod consumer;
mod database;
pub mod dead_letters;
pub mod functions;
mod health;
pub mod http_server;
pub mod idempotency;
mod inbox;
mod keys;
pub mod liveness;
mod log_summary;
mod memory;
pub mod observability;
pub mod outbox;
pub mod problem;
pub mod redis_conn;
pub mod relay;
pub mod request;
pub mod retention;
pub mod schema;
mod secret_url;
pub mod service;
mod session_bounds;
pub mod settings;
mod signatures;
mod stream_reply;
pub mod telemetry;

pub use consumer::{Consumer, EventHandler, HandleError};
pub use keys::StreamKeys;
pub use redis_conn::RedisConnection;
pub use relay::OutboxRelay;
pub use signatures::{SignatureMode, Signatures};
