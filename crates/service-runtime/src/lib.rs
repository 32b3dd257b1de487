//! The shared plumbing of order-service and payment-service.
//!
//! Everything Redis-Streams-specific lives here, so each service supplies only its HTTP
//! routes and one [`EventHandler`]:
//!
//! | pattern | file | guarantee |
//! |---|---|---|
//! | transactional outbox | [`outbox`] | a state change and its event commit together or not at all |
//! | outbox relay | [`relay`] | every committed event reaches its stream at least once |
//! | inbox | [`inbox`] | an event applied once has no second effect |
//! | consumer loop | [`consumer`] | an entry is acked only after its effect committed |
//! | dead letters | [`dead_letters`] | one bad entry never blocks the others, and can be replayed |
//! | stream keys | [`keys`] | every Redis key in one place |
//! | their tables | [`schema`] | the outbox and inbox migration, shipped once |
//! | retention | [`retention`] | every store bounded, nothing unfinished removed |
//!
//! and the service shell around them: [`settings`], [`telemetry`], [`health`] and
//! [`liveness`],
//! [`problem`] (HTTP errors), [`admin`] (admin routes, admin token), [`memory`] (freed
//! memory back to the system), [`service`] (start, run, shut down, periodic jobs).

pub mod admin;
mod backoff;
pub mod consumer;
pub mod database;
pub mod dead_letters;
pub mod functions;
pub mod health;
pub mod http_server;
pub mod idempotency;
pub mod inbox;
pub mod keys;
pub mod liveness;
pub mod log_summary;
pub mod memory;
pub mod observability;
pub mod outbox;
pub mod problem;
pub mod redis_conn;
pub mod relay;
pub mod request;
pub mod retention;
pub mod schema;
pub mod secret_url;
pub mod service;
mod session_bounds;
pub mod settings;
pub mod signatures;
mod stream_reply;
pub mod telemetry;

pub use consumer::{Consumer, EventHandler, HandleError};
pub use keys::StreamKeys;
pub use redis_conn::RedisConnection;
pub use relay::OutboxRelay;
