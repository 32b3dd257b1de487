//! order-service's integration tests against real Postgres and Redis, in one test binary
//! (one link step): the order flows, forged outcomes and the service's plumbing.

mod flows;
mod forged;
mod orders;
mod support;
