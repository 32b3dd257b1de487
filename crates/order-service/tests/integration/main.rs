//! order-service's integration tests against real Postgres and Redis, in one test binary
//! (one link step): the order flows and the service's plumbing.

mod flows;
mod orders;
mod support;
