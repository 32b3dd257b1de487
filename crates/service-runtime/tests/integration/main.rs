//! The runtime's integration tests, in one test binary (one link step): the HTTP
//! middleware, and the stream runtime against real Postgres and Redis.

mod http;
mod runtime;
