//! The runtime's integration tests, in one test binary (one link step): the HTTP
//! middleware and server (slow clients), the Redis connections (one node and a cluster),
//! and the stream runtime (replicas' reading turns included) and its retention against
//! real Postgres and Redis.

mod functions;
mod http;
mod partition_keys;
mod read_turns;
mod redis_connections;
mod relay_plan;
mod retention;
mod runtime;
mod slow_clients;
