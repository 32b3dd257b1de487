//! What signing and verifying one event costs (SPEC §4.9):
//! `cargo run --release -p events --example sign_verify` prints the time per event of
//! encoding an `OrderCreated` unsigned, encoding and signing it, verifying it alone, and
//! verifying it in batches of 50 (a consumer verifies each batch it reads at once), and
//! the same with batch signatures (`SIGNATURE_SCOPE=batch`: 16 orders written by one
//! statement share a signature), each the median of 15 runs of 2000 events.

use std::sync::Arc;
use std::time::{Duration, Instant};

use events::{
    Currency, Envelope, Event, EventSigner, EventWriter, OrderCreated, OrderItem, Producer,
    SchemaVersion, SignatureScope, VerifyingKeys,
};

const EVENTS: u32 = 2000;

/// The median time per event of `work` done `EVENTS` times, over 15 runs.
fn per_event(mut work: impl FnMut()) -> Duration {
    let mut runs: Vec<Duration> = (0..15)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..EVENTS {
                work();
            }
            start.elapsed() / EVENTS
        })
        .collect();
    runs.sort();
    runs[runs.len() / 2]
}

fn main() {
    let (private, public) = EventSigner::generate_pem().expect("a key");
    let signer = Arc::new(EventSigner::from_pem(&private).expect("reads"));
    let keys = VerifyingKeys::from_pem(&public).expect("reads");
    let order = Envelope::new(
        Producer::OrderService,
        Event::OrderCreated(OrderCreated {
            order_id: uuid::Uuid::now_v7(),
            customer_id: "ana".into(),
            items: (0..3)
                .map(|n| OrderItem {
                    sku: format!("sku-{n}"),
                    quantity: 2,
                    unit_price_cents: 1250,
                })
                .collect(),
            total_cents: 7500,
            currency: Currency::parse("EUR").expect("valid"),
            pay_by: Some(time::OffsetDateTime::now_utc()),
        }),
    );
    let unsigned = EventWriter::unsigned(SchemaVersion::V2);
    let signing = EventWriter::new(SchemaVersion::V2, Some(signer));
    let signed = signing.fields(&order);
    let encode = per_event(|| {
        std::hint::black_box(unsigned.fields(&order));
    });
    let sign = per_event(|| {
        std::hint::black_box(signing.fields(&order));
    });
    let verify = per_event(|| {
        keys.verify(std::hint::black_box(&signed))
            .expect("verifies");
    });
    let batch: Vec<_> = (0..50)
        .map(|_| {
            let mut copy = order.clone();
            copy.event_id = uuid::Uuid::now_v7();
            signing.fields(&copy)
        })
        .collect();
    let batch: Vec<&[(&'static str, String)]> = batch.iter().map(Vec::as_slice).collect();
    let mut n = 0;
    let batched = per_event(|| {
        if n % batch.len() == 0 {
            let verdicts = keys.verify_all(std::hint::black_box(&batch));
            assert!(verdicts.iter().all(Result::is_ok), "verifies");
        }
        n += 1;
    });
    let tree_signing = signing.clone().with_scope(SignatureScope::Batch);
    let statement: Vec<Envelope> = (0..16)
        .map(|_| {
            let mut copy = order.clone();
            copy.event_id = uuid::Uuid::now_v7();
            copy
        })
        .collect();
    let mut n = 0;
    let tree_signed = per_event(|| {
        if n % statement.len() == 0 {
            std::hint::black_box(tree_signing.fields_all(&statement));
        }
        n += 1;
    });
    let trees: Vec<_> = (0..3)
        .flat_map(|_| tree_signing.fields_all(&statement))
        .collect();
    let trees: Vec<&[(&'static str, String)]> = trees.iter().map(Vec::as_slice).collect();
    let mut n = 0;
    let tree_verified = per_event(|| {
        if n % trees.len() == 0 {
            let verdicts = keys.verify_all(std::hint::black_box(&trees));
            assert!(verdicts.iter().all(Result::is_ok), "verifies");
        }
        n += 1;
    });
    println!("per OrderCreated (3 lines), median of 15 runs of {EVENTS}:");
    println!(
        "  encode, unsigned   {:>7.1} µs",
        encode.as_secs_f64() * 1e6
    );
    println!("  encode and sign    {:>7.1} µs", sign.as_secs_f64() * 1e6);
    println!(
        "  verify             {:>7.1} µs",
        verify.as_secs_f64() * 1e6
    );
    println!(
        "  verify, batch of {} {:>6.1} µs",
        batch.len(),
        batched.as_secs_f64() * 1e6
    );
    println!(
        "  encode and sign, batch signatures of {}      {:>6.1} µs",
        statement.len(),
        tree_signed.as_secs_f64() * 1e6
    );
    println!(
        "  verify, batch of {} under {} batch signatures {:>6.1} µs",
        trees.len(),
        trees.len() / statement.len(),
        tree_verified.as_secs_f64() * 1e6
    );
}
