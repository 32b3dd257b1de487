//! What the cross-service tests share, in one place: orders over HTTP ([`load`]), the
//! SPEC §4.8 invariants ([`invariants`]), the services in-process with the tests'
//! settings ([`services`]) or as processes ([`processes`]), and the repository's files
//! ([`repo`]). Test modules import from here, never from each other.

pub mod invariants;
pub mod load;
pub mod processes;
pub mod repo;
pub mod services;

pub use invariants::{Outcome, assert_invariants, check_invariants};
pub use load::{
    CUSTOMERS, INITIAL_CREDIT, Placed, cancel_all, final_order, order_body, order_of, place_orders,
    post,
};
pub use processes::{
    Frozen, Process, ready, sigterm, start_logging_process, start_process, terminate,
};
pub use repo::{compose, repo_file, text};
pub use services::{
    ORDER_ARGS, PAYMENT_ARGS, QUIET, TRIM_HARD, both_services, order_service, orders_at_least,
    payment_service, published, trimmed_to_their_last_entry,
};
