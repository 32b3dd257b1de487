//! Round trips of every event type through stream fields, and typed errors (never panics)
//! for unknown types and malformed fields.

use events::{
    Currency, DecodeError, Envelope, Event, EventType, FailureReason, OrderCancelled, OrderCreated,
    OrderItem, PaymentCancelled, PaymentCompleted, PaymentFailed, PaymentRefunded, Producer,
    SchemaVersion, fields,
};
use uuid::Uuid;

fn eur() -> Currency {
    Currency::parse("EUR").expect("valid")
}

fn one_of_each() -> Vec<Event> {
    let order_id = Uuid::now_v7();
    let customer_id = "alice".to_owned();
    vec![
        Event::OrderCreated(OrderCreated {
            order_id,
            customer_id: customer_id.clone(),
            items: vec![
                OrderItem {
                    sku: "book".into(),
                    quantity: 2,
                    unit_price_cents: 1250,
                },
                OrderItem {
                    sku: "pen".into(),
                    quantity: 1,
                    unit_price_cents: 0,
                },
            ],
            total_cents: 2500,
            currency: eur(),
            pay_by: Some(time::macros::datetime!(2026-12-02 16:30:00.250 UTC)),
        }),
        Event::OrderCancelled(OrderCancelled {
            order_id,
            customer_id: customer_id.clone(),
            reason: "changed my mind".into(),
        }),
        Event::PaymentCompleted(PaymentCompleted {
            payment_id: Uuid::now_v7(),
            order_id,
            customer_id: customer_id.clone(),
            amount_cents: 2500,
            currency: eur(),
        }),
        Event::PaymentFailed(PaymentFailed {
            order_id,
            customer_id: customer_id.clone(),
            amount_cents: 2500,
            currency: eur(),
            reason: FailureReason::InsufficientFunds,
        }),
        Event::PaymentRefunded(PaymentRefunded {
            payment_id: Uuid::now_v7(),
            order_id,
            customer_id: customer_id.clone(),
            amount_cents: 2500,
            currency: eur(),
        }),
        Event::PaymentCancelled(PaymentCancelled {
            order_id,
            customer_id,
        }),
    ]
}

/// Fields as Redis hands them back: owned names, byte values.
fn as_redis_returns(fields: &[(&'static str, String)]) -> Vec<(String, Vec<u8>)> {
    fields
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone().into_bytes()))
        .collect()
}

fn decode(fields: &[(&'static str, String)]) -> Result<Envelope, DecodeError> {
    Envelope::from_fields(as_redis_returns(fields))
}

fn valid_fields() -> Vec<(&'static str, String)> {
    Envelope::new(Producer::OrderService, one_of_each().remove(0)).to_fields()
}

fn with(
    mut fields: Vec<(&'static str, String)>,
    name: &str,
    value: &str,
) -> Vec<(&'static str, String)> {
    for (k, v) in &mut fields {
        if *k == name {
            *v = value.to_owned();
        }
    }
    fields
}

fn without(fields: Vec<(&'static str, String)>, name: &str) -> Vec<(&'static str, String)> {
    fields.into_iter().filter(|(k, _)| *k != name).collect()
}

#[test]
fn every_event_type_round_trips_with_and_without_traceparent() {
    let events = one_of_each();
    assert_eq!(
        events.iter().map(Event::event_type).collect::<Vec<_>>(),
        EventType::ALL,
        "the fixture covers every type"
    );
    for event in events {
        let producer = event.event_type().producer();
        let mut envelope = Envelope::new(producer, event);
        assert_eq!(decode(&envelope.to_fields()).expect("decodes"), envelope);
        envelope.traceparent =
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into());
        assert_eq!(decode(&envelope.to_fields()).expect("decodes"), envelope);
    }
}

/// SPEC §3.4: every version this build reads round-trips; written as version 1, an
/// `OrderCreated` has no deadline (version 1 has none), and reads back without one.
#[test]
fn every_event_type_round_trips_in_every_version_this_build_reads() {
    for version in SchemaVersion::ALL {
        for event in one_of_each() {
            let envelope = Envelope::new(event.event_type().producer(), event);
            let fields = envelope.to_fields_as(version);
            let version_field = fields.iter().find(|(k, _)| *k == fields::SCHEMA_VERSION);
            assert_eq!(
                version_field.map(|(_, v)| v.as_str()),
                Some(version.to_string().as_str())
            );
            let mut expected = envelope.clone();
            if let (Event::OrderCreated(order), SchemaVersion::V1) = (&mut expected.event, version)
            {
                order.pay_by = None;
                let payload = fields.iter().find(|(k, _)| *k == fields::PAYLOAD);
                assert!(
                    payload.is_some_and(|(_, p)| !p.contains("pay_by")),
                    "{payload:?}"
                );
            }
            assert_eq!(decode(&fields).expect("decodes"), expected, "v{version}");
        }
    }
}

/// Version 2 is the version whose `OrderCreated` has a deadline: one without is poison;
/// a `pay_by` in a version-1 payload is not part of version 1 and is not read.
#[test]
fn pay_by_is_required_in_version_2_and_not_read_from_version_1() {
    let order = one_of_each().remove(0);
    let envelope = Envelope::new(Producer::OrderService, order);
    let v2 = envelope.to_fields_as(SchemaVersion::V2);
    let payload = v2
        .iter()
        .find(|(k, _)| *k == fields::PAYLOAD)
        .map(|(_, p)| p.clone())
        .expect("a payload");
    assert!(
        payload.contains(r#""pay_by":"2026-12-02T16:30:00.25Z""#),
        "{payload}"
    );
    let mut value: serde_json::Value = serde_json::from_str(&payload).expect("json");
    value.as_object_mut().expect("object").remove("pay_by");
    let without_deadline = with(v2.clone(), fields::PAYLOAD, &value.to_string());
    let err = decode(&without_deadline).expect_err("v2 needs pay_by");
    assert!(
        matches!(
            err,
            DecodeError::InvalidPayload {
                event_type: EventType::OrderCreated,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("pay_by"), "{err}");

    let v1_with_deadline = with(v2, fields::SCHEMA_VERSION, "1");
    let Event::OrderCreated(read) = decode(&v1_with_deadline).expect("decodes").event else {
        panic!("an OrderCreated");
    };
    assert_eq!(read.pay_by, None);
}

#[test]
fn entries_carry_every_field_of_the_spec() {
    let mut envelope = Envelope::new(Producer::OrderService, one_of_each().remove(0));
    envelope.traceparent = Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into());
    let names: Vec<&str> = envelope.to_fields().iter().map(|(k, _)| *k).collect();
    assert_eq!(
        names,
        [
            fields::EVENT_ID,
            fields::EVENT_TYPE,
            fields::SCHEMA_VERSION,
            fields::ORDER_ID,
            fields::OCCURRED_AT,
            fields::PRODUCER,
            fields::TRACEPARENT,
            fields::PAYLOAD
        ]
    );
    let fields = envelope.to_fields();
    let value = |name: &str| {
        fields
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(value("schema_version"), Some("2"), "the newest by default");
    assert_eq!(value("producer"), Some("order-service"));
    assert_eq!(
        Uuid::parse_str(value("event_id").unwrap_or_default()).map(|u| u.get_version_num()),
        Ok(7)
    );
    assert!(
        value("occurred_at").is_some_and(|t| t.ends_with('Z')),
        "RFC 3339 UTC"
    );
}

#[test]
fn unknown_event_type_is_reported_as_such_even_when_the_rest_is_garbage() {
    let fields = with(valid_fields(), "event_type", "OrderShipped");
    let fields = with(fields, "payload", "not json");
    let err = decode(&fields).expect_err("unknown type");
    assert!(err.is_unknown_event_type(), "{err}");
    assert!(matches!(err, DecodeError::UnknownEventType(ref t) if t == "OrderShipped"));
}

#[test]
fn missing_fields_are_named() {
    for name in [
        "event_id",
        "event_type",
        "schema_version",
        "order_id",
        "occurred_at",
        "producer",
        "payload",
    ] {
        let err = decode(&without(valid_fields(), name)).expect_err(name);
        assert!(
            matches!(err, DecodeError::MissingField(n) if n == name),
            "{name}: {err}"
        );
        assert!(!err.is_unknown_event_type());
        assert!(
            !err.is_invalid_content(),
            "{name}: a missing field is not content"
        );
    }
}

#[test]
fn malformed_fields_are_typed_errors() {
    let cases: [(&str, &str); 7] = [
        ("event_id", "not-a-uuid"),
        ("order_id", "42"),
        ("occurred_at", "yesterday"),
        ("producer", "inventory-service"),
        ("schema_version", "one"),
        ("schema_version", "-1"),
        ("order_id", "0190b4b4-0000-7000-8000-000000000000"),
    ];
    for (name, value) in cases {
        let err = decode(&with(valid_fields(), name, value)).expect_err(value);
        assert!(
            matches!(err, DecodeError::InvalidField { field, .. } if field == name),
            "{name}={value}: {err}"
        );
    }
}

#[test]
fn a_newer_schema_version_is_told_apart_from_an_unsupported_one() {
    let fields = valid_fields();
    let event_id = fields
        .iter()
        .find(|(name, _)| *name == "event_id")
        .map(|(_, value)| uuid::Uuid::parse_str(value).expect("a uuid"))
        .expect("an event_id");
    let err = decode(&with(fields, "schema_version", "3")).expect_err("v3");
    assert_eq!(err.newer_schema_version(), Some((3, event_id)), "{err}");
    let err = decode(&with(valid_fields(), "schema_version", "0")).expect_err("v0");
    assert!(
        matches!(err, DecodeError::UnsupportedSchemaVersion(0)),
        "{err}"
    );
}

#[test]
fn bad_payloads_are_typed_errors() {
    for payload in [
        "",
        "not json",
        "[]",
        "{}",
        r#"{"order_id":"x"}"#,
        r#"{"order_id":"0190b4b4-0000-7000-8000-000000000000","customer_id":"a","items":[],"total_cents":1,"currency":"eur"}"#,
        r#"{"order_id":"0190b4b4-0000-7000-8000-000000000000","customer_id":"a","items":[{"sku":"x","quantity":-1,"unit_price_cents":1}],"total_cents":1,"currency":"EUR"}"#,
    ] {
        let err = decode(&with(valid_fields(), "payload", payload)).expect_err(payload);
        assert!(
            matches!(
                err,
                DecodeError::InvalidPayload {
                    event_type: EventType::OrderCreated,
                    ..
                }
            ),
            "{payload}: {err}"
        );
    }
}

#[test]
fn values_that_are_not_utf8_are_typed_errors() {
    let mut fields = as_redis_returns(&valid_fields());
    for (k, v) in &mut fields {
        if k == "event_id" {
            *v = vec![0xff, 0xfe];
        }
    }
    let err = Envelope::from_fields(fields).expect_err("bytes");
    assert!(
        matches!(
            err,
            DecodeError::InvalidField {
                field: "event_id",
                ..
            }
        ),
        "{err}"
    );
}

/// The `payload` field's value.
fn payload_of(fields: &[(&'static str, String)]) -> String {
    fields
        .iter()
        .find(|(k, _)| *k == "payload")
        .map(|(_, v)| v.clone())
        .expect("payload")
}

#[test]
fn payloads_ignore_fields_they_do_not_know() {
    let fields = valid_fields();
    let payload = payload_of(&fields);
    let extended = payload.replacen('{', r#"{"gift_wrap":true,"#, 1);
    assert!(decode(&with(fields.clone(), "payload", &extended)).is_ok());
}

#[test]
fn failure_reasons_keep_unknown_text() {
    let reason: FailureReason = serde_json::from_str("\"fraud_suspected\"").expect("any text");
    assert_eq!(reason, FailureReason::Other("fraud_suspected".into()));
    assert_eq!(
        serde_json::to_string(&FailureReason::CurrencyMismatch)
            .ok()
            .as_deref(),
        Some("\"currency_mismatch\"")
    );
}

#[test]
fn an_event_signed_by_the_wrong_producer_is_invalid_content() {
    let forged = with(valid_fields(), "producer", "payment-service");
    let err = decode(&forged).expect_err("OrderCreated is order-service's");
    assert!(err.is_invalid_content(), "{err}");
}

#[test]
fn a_payload_no_producer_writes_is_invalid_content() {
    let fields = valid_fields();
    let mut body: serde_json::Value = serde_json::from_str(&payload_of(&fields)).expect("json");
    body["total_cents"] = serde_json::json!(-1);
    let err = decode(&with(fields.clone(), "payload", &body.to_string())).expect_err("negative");
    assert!(err.is_invalid_content(), "{err}");
}

#[test]
fn every_failure_reason_reads_back_as_itself_and_prints_its_wire_text() {
    for (reason, text) in [
        (FailureReason::InsufficientFunds, "insufficient_funds"),
        (FailureReason::OrderCancelled, "order_cancelled"),
        (FailureReason::CurrencyMismatch, "currency_mismatch"),
        (FailureReason::PaymentExpired, "payment_expired"),
        (FailureReason::Other("card_stolen".into()), "card_stolen"),
    ] {
        assert_eq!(FailureReason::from(text.to_owned()), reason, "{text}");
        assert_eq!(reason.to_string(), text);
    }
}

#[test]
fn an_answer_carries_the_trace_of_its_cause() {
    let mut cause = Envelope::new(Producer::OrderService, one_of_each().remove(0));
    cause.traceparent = Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into());
    let answer = Envelope::caused_by(&cause, Producer::PaymentService, one_of_each().remove(2));
    assert_eq!(answer.traceparent, cause.traceparent);
    assert_ne!(answer.event_id, cause.event_id, "a new event");
}
