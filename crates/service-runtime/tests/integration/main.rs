//! The runtime's integration tests, in one test binary (one link step): the HTTP
//! middleware and server (slow clients), and the stream runtime and its retention
//! against real Postgres and Redis.

mod http;
mod retention;
mod runtime;
mod slow_clients;
