//! The committed contract (`crates/events/contract/`, SPEC §3.4) against the code: the
//! AsyncAPI document and every payload schema are what `events::contract` generates
//! (run with `UPDATE_CONTRACT=1` to rewrite them after a change), and every golden
//! sample of every version, committed once and never rewritten, still decodes.

use std::path::{Path, PathBuf};

use events::contract::{asyncapi, payload_schema_file, to_file_text};
use events::{
    Currency, Envelope, Event, EventType, FailureReason, OrderCancelled, OrderCreated, OrderItem,
    PaymentCancelled, PaymentCompleted, PaymentFailed, PaymentRefunded, SchemaVersion,
};
use time::macros::datetime;
use uuid::Uuid;

fn contract_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("contract")
}

fn schema_path(event_type: EventType, version: SchemaVersion) -> PathBuf {
    contract_dir().join(format!("schemas/v{version}/{event_type}.schema.json"))
}

fn sample_path(event_type: EventType, version: SchemaVersion) -> PathBuf {
    contract_dir().join(format!("samples/v{version}/{event_type}.json"))
}

/// The committed file at `path` is `expected`, or (with `UPDATE_CONTRACT=1`) becomes it.
fn check_committed(path: &Path, expected: &str) -> Result<(), String> {
    if std::env::var_os("UPDATE_CONTRACT").is_some() {
        std::fs::create_dir_all(path.parent().expect("a folder")).expect("creates");
        std::fs::write(path, expected).expect("writes");
        return Ok(());
    }
    match std::fs::read_to_string(path) {
        Ok(committed) if committed == expected => Ok(()),
        Ok(_) => Err(format!("{} differs from the code", path.display())),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

#[test]
fn the_committed_contract_is_what_the_code_generates() {
    let mut drift = Vec::new();
    let document = contract_dir().join("asyncapi.json");
    drift.extend(check_committed(&document, &to_file_text(&asyncapi())).err());
    for version in SchemaVersion::ALL {
        for event_type in EventType::ALL {
            let schema = to_file_text(&payload_schema_file(event_type, version));
            drift.extend(check_committed(&schema_path(event_type, version), &schema).err());
        }
    }
    assert!(
        drift.is_empty(),
        "the contract drifted from the code (UPDATE_CONTRACT=1 cargo test -p events --test contract \
         rewrites it; commit the change, and bump the schema version if a reader must understand it):\n{}",
        drift.join("\n")
    );
    assert_eq!(
        events::contract::ASYNCAPI_JSON,
        to_file_text(&asyncapi()),
        "the served document is the committed one (rebuild after UPDATE_CONTRACT)"
    );
}

/// One event of each type, fixed, as the golden samples hold them.
fn golden_events() -> Vec<Envelope> {
    let order_id = Uuid::parse_str("01937a2e-5c00-7000-8000-000000000001").expect("uuid");
    let payment_id = Uuid::parse_str("01937a2e-5c00-7000-8000-000000000002").expect("uuid");
    let eur = Currency::parse("EUR").expect("valid");
    let customer_id = "ana".to_owned();
    let bodies = [
        Event::OrderCreated(OrderCreated {
            order_id,
            customer_id: customer_id.clone(),
            items: vec![OrderItem {
                sku: "book".into(),
                quantity: 2,
                unit_price_cents: 1250,
            }],
            total_cents: 2500,
            currency: eur,
            pay_by: Some(datetime!(2026-12-02 16:15:00 UTC)),
        }),
        Event::OrderCancelled(OrderCancelled {
            order_id,
            customer_id: customer_id.clone(),
            reason: "customer_request".into(),
        }),
        Event::PaymentCompleted(PaymentCompleted {
            payment_id,
            order_id,
            customer_id: customer_id.clone(),
            amount_cents: 2500,
            currency: eur,
        }),
        Event::PaymentFailed(PaymentFailed {
            order_id,
            customer_id: customer_id.clone(),
            amount_cents: 2500,
            currency: eur,
            reason: FailureReason::InsufficientFunds,
        }),
        Event::PaymentRefunded(PaymentRefunded {
            payment_id,
            order_id,
            customer_id: customer_id.clone(),
            amount_cents: 2500,
            currency: eur,
        }),
        Event::PaymentCancelled(PaymentCancelled {
            order_id,
            customer_id,
        }),
    ];
    bodies
        .into_iter()
        .enumerate()
        .map(|(n, event)| Envelope {
            event_id: Uuid::parse_str(&format!("01937a2e-5c00-7000-8000-0000000001{n:02}"))
                .expect("uuid"),
            order_id,
            occurred_at: datetime!(2026-12-02 16:00:00 UTC),
            producer: event.event_type().producer(),
            traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
            event,
        })
        .collect()
}

/// A sample file: the entry's fields, in order, as `[name, value]` pairs.
fn read_sample(path: &Path) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// SPEC §3.4: every build reads every version it claims to, checked on entries an older
/// build really wrote. A sample is written once, when its version is new (with
/// `UPDATE_CONTRACT=1`), and never rewritten: it is what that version's producers wrote.
#[test]
fn every_golden_sample_of_every_version_decodes() {
    for version in SchemaVersion::ALL {
        for envelope in golden_events() {
            let path = sample_path(envelope.event_type(), version);
            if std::env::var_os("UPDATE_CONTRACT").is_some() && !path.exists() {
                let fields: Vec<(&str, String)> = envelope.to_fields_as(version);
                std::fs::create_dir_all(path.parent().expect("a folder")).expect("creates");
                let text = serde_json::to_string_pretty(&fields).expect("json") + "\n";
                std::fs::write(&path, text).expect("writes");
            }
            let sample = read_sample(&path);
            let decoded =
                Envelope::from_fields(sample.iter().map(|(k, v)| (k.as_str(), v.as_bytes())))
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let mut expected = envelope.clone();
            if let (Event::OrderCreated(order), SchemaVersion::V1) = (&mut expected.event, version)
            {
                order.pay_by = None; // upcast: version 1 has no deadline
            }
            assert_eq!(decoded, expected, "{}", path.display());
        }
    }
}
