//! Cross-service tests, in one test binary (one link step): both services against real
//! Postgres and Redis, in-process and as real processes.

mod chaos;
mod cluster;
mod deadline;
mod flows;
mod gray_failures;
mod happy_path;
mod memory;
mod observability;
mod openapi;
mod outages;
mod packaging;
mod recovery;
mod redis_acl;
mod retention;
mod rolling_upgrade;
mod shipping;
mod signatures;
