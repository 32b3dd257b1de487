//! payment-service's integration tests against real Postgres and Redis, in one test
//! binary (one link step): the service end to end, forged events, and its handler under
//! every interleaving.

mod forged;
mod payments;
mod races;
mod upgrade;
