//! Every store stays bounded under load without losing anything unfinished: with the
//! streams trimmed as far as their groups allow, every order still ends final and exact.

use std::time::Duration;

use e2e::{
    QUIET, TRIM_HARD, assert_invariants, both_services, place_orders, trimmed_to_their_last_entry,
};
use events::streams::{ORDER_EVENTS, PAYMENT_SERVICE_GROUP};
use testkit::TestContext;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_stay_bounded_under_load_and_every_order_still_ends_exact() {
    let ctx = TestContext::new();
    let (orders, payments) = both_services(&ctx, TRIM_HARD).await;
    // What the stream holds beyond what its group still needs (not yet delivered, or
    // pending): trimming keeps it to about a batch plus what flows between two trims,
    // however long the load runs; untrimmed it would end near every order placed.
    let mut most_left = 0;
    let load = tokio::spawn({
        let url = orders.url("");
        async move { place_orders(&url, 400, 8).await }
    });
    let mut samples = tokio::time::interval(Duration::from_millis(10));
    while !load.is_finished() {
        samples.tick().await;
        if let Some(left) = ctx.held_beyond(ORDER_EVENTS, PAYMENT_SERVICE_GROUP).await {
            most_left = most_left.max(left);
        }
    }
    let placed = load.await.expect("load ran");
    let outcome = assert_invariants(&orders.pool, &payments.pool, QUIET).await;
    assert_eq!(outcome.paid + outcome.payment_failed, placed.accepted.len());
    assert!(
        most_left < placed.accepted.len() as u64 / 2,
        "order-events was trimmed while the load ran: at most {most_left} entries read \
         and acknowledged were still in it"
    );
    trimmed_to_their_last_entry(&ctx).await;
}
