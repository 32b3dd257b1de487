//! order-service's integration tests against real Postgres and Redis, in one test binary
//! (one link step): the order flows, forged outcomes, the service's plumbing, and TLS to
//! both backends.

mod deadline;
mod flows;
mod forged;
mod orders;
mod placing;
mod support;
mod tls;
