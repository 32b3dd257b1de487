//! The published contract (SPEC §3.4): a JSON Schema of every payload of every schema
//! version, and an AsyncAPI 3.0 document of both streams, generated here from the same
//! limits the decoder checks, and committed under `crates/events/contract/`
//! (`tests/contract.rs` fails when the two drift; `UPDATE_CONTRACT=1` rewrites them).
//! Each service serves the committed document at `GET /asyncapi.json` ([`ASYNCAPI_JSON`]).
//!
//! AsyncAPI has no Redis Streams binding yet, so what is particular to Redis is said in
//! `x-redis-*` extensions: a message is one stream entry of flat text fields, its
//! `payload` field the JSON the payload schema describes and every other field a header;
//! the consumer groups, the dead-letter stream and the parked hash of each stream.

use serde_json::{Value, json};

use crate::limits::{
    MAX_ITEMS, MAX_QUANTITY, MAX_REASON_CHARS, MAX_TOTAL_CENTS, MAX_UNIT_PRICE_CENTS,
};
use crate::streams::{
    DEAD_LETTER_SUFFIX, ORDER_EVENTS, ORDER_SERVICE_GROUP, PAYMENT_EVENTS, PAYMENT_SERVICE_GROUP,
};
use crate::text::MAX_IDENTIFIER_CHARS;
use crate::{EventType, Producer, SchemaVersion, fields};

/// The committed AsyncAPI document, as the services serve it.
pub const ASYNCAPI_JSON: &str = include_str!("../contract/asyncapi.json");

/// The name of an event's message and schema in the contract, e.g. `OrderCreatedV2`.
pub fn message_name(event_type: EventType, version: SchemaVersion) -> String {
    format!("{event_type}V{version}")
}

/// The JSON Schema (draft 07) of the `payload` field of `event_type` in `version`, as
/// a file of its own.
pub fn payload_schema_file(event_type: EventType, version: SchemaVersion) -> Value {
    let mut schema = payload_schema(event_type, version);
    if let Some(object) = schema.as_object_mut() {
        object.insert(
            "$schema".into(),
            json!("http://json-schema.org/draft-07/schema#"),
        );
        object.insert(
            "$id".into(),
            json!(format!(
                "https://order-payment.example/contract/schemas/v{version}/{event_type}.schema.json"
            )),
        );
    }
    schema
}

/// The JSON Schema of the `payload` field of `event_type` in `version`. Fields not named
/// are allowed (a tolerant reader ignores them): a producer may add an optional one
/// within a version.
pub fn payload_schema(event_type: EventType, version: SchemaVersion) -> Value {
    use EventType as T;
    let uuid = json!({"type": "string", "format": "uuid"});
    let amount = json!({"type": "integer", "minimum": 0, "maximum": MAX_TOTAL_CENTS});
    let currency = json!({"type": "string", "pattern": "^[A-Z]{3}$", "description": "ISO 4217"});
    let reason = json!({
        "type": "string",
        "maxLength": MAX_REASON_CHARS,
        "pattern": "^[^\\u0000-\\u001f\\u007f-\\u009f]*$"
    });
    let (description, properties) = match event_type {
        T::OrderCreated => {
            let mut properties = json!({
                "order_id": uuid,
                "customer_id": identifier(),
                "items": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": MAX_ITEMS,
                    "items": {
                        "type": "object",
                        "properties": {
                            "sku": identifier(),
                            "quantity": {"type": "integer", "minimum": 1, "maximum": MAX_QUANTITY},
                            "unit_price_cents": {"type": "integer", "minimum": 0, "maximum": MAX_UNIT_PRICE_CENTS}
                        },
                        "required": ["sku", "quantity", "unit_price_cents"]
                    }
                },
                "total_cents": {
                    "type": "integer", "minimum": 0, "maximum": MAX_TOTAL_CENTS,
                    "description": "the sum of quantity * unit_price_cents over the items"
                },
                "currency": currency
            });
            if version >= SchemaVersion::V2 {
                properties["pay_by"] = json!({
                    "type": "string",
                    "format": "date-time",
                    "description": "the payment deadline: nothing is charged after it"
                });
            }
            ("An order was accepted and waits for payment.", properties)
        }
        T::OrderCancelled => (
            "The order is cancelled (by its customer, or expired unpaid): its payment is to be refunded or never made.",
            json!({"order_id": uuid, "customer_id": identifier(), "reason": reason}),
        ),
        T::PaymentCompleted => (
            "The customer's account was debited for the order.",
            json!({"payment_id": uuid, "order_id": uuid, "customer_id": identifier(),
                   "amount_cents": amount, "currency": currency}),
        ),
        T::PaymentFailed => (
            "The order was not charged, for the reason given.",
            json!({"order_id": uuid, "customer_id": identifier(), "amount_cents": amount,
            "currency": currency,
            "reason": {
                "type": "string",
                "maxLength": MAX_REASON_CHARS,
                "description": "an open set: readers keep reasons they do not know as text",
                "examples": ["insufficient_funds", "currency_mismatch", "order_cancelled", "payment_expired"]
            }}),
        ),
        T::PaymentRefunded => (
            "A payment was credited back to the customer (the order was cancelled after it was charged).",
            json!({"payment_id": uuid, "order_id": uuid, "customer_id": identifier(),
                   "amount_cents": amount, "currency": currency}),
        ),
        T::PaymentCancelled => (
            "A cancellation is settled with nothing charged and nothing ever to be.",
            json!({"order_id": uuid, "customer_id": identifier()}),
        ),
    };
    let required: Vec<&String> = properties
        .as_object()
        .map(|p| p.keys().collect())
        .unwrap_or_default();
    json!({
        "title": message_name(event_type, version),
        "description": description,
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": true
    })
}

/// A customer id or SKU (`text::check_identifier`): 1 to 64 characters, not blank, no
/// control characters.
fn identifier() -> Value {
    json!({
        "type": "string",
        "minLength": 1,
        "maxLength": MAX_IDENTIFIER_CHARS,
        "pattern": "^(?=.*\\S)[^\\u0000-\\u001f\\u007f-\\u009f]*$"
    })
}

/// The fields of an entry besides `payload`, for `event_type` in `version`.
fn headers(event_type: EventType, version: SchemaVersion) -> Value {
    json!({
        "type": "object",
        "description": "The stream entry's other fields (SPEC §3.2), all text.",
        "properties": {
            fields::EVENT_ID: {"type": "string", "format": "uuid", "description": "UUID v7, the same on every re-publish: consumers dedupe on it"},
            fields::EVENT_TYPE: {"const": event_type.as_str()},
            fields::SCHEMA_VERSION: {"const": version.to_string()},
            fields::ORDER_ID: {"type": "string", "format": "uuid", "description": "the payload's order_id"},
            fields::OCCURRED_AT: {"type": "string", "format": "date-time"},
            fields::PRODUCER: {"const": event_type.producer().as_str()},
            fields::TRACEPARENT: {"type": "string", "pattern": "^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$", "description": "W3C trace context of the producing span"},
            fields::KEY_ID: {"type": "string", "pattern": "^[0-9a-f]{16}$", "description": "the producer's signing key: the first 8 bytes of the SHA-256 of its Ed25519 public key, in hex"},
            fields::SIGNATURE: {"type": "string", "contentEncoding": "base64", "description": "Ed25519 signature over the domain tag and the length-prefixed names and values of event_id, event_type, schema_version, order_id, occurred_at, producer, key_id and payload (crates/events/src/signing.rs); consumers that require signatures dead-letter an entry without a valid one; with signature_proof, the signature is over the batch's hash-tree root instead"},
            fields::SIGNATURE_PROOF: {"type": "string", "contentEncoding": "base64", "description": "with a batch signature (SIGNATURE_SCOPE=batch): the entry's path to the signed hash-tree root, each step a side byte (L or R) and the sibling's 32-byte SHA-256 (crates/events/src/signature_tree.rs)"}
        },
        "required": [fields::EVENT_ID, fields::EVENT_TYPE, fields::SCHEMA_VERSION,
                     fields::ORDER_ID, fields::OCCURRED_AT, fields::PRODUCER]
    })
}

/// The AsyncAPI 3.0 document of both streams.
pub fn asyncapi() -> Value {
    let mut messages = serde_json::Map::new();
    let mut schemas = serde_json::Map::new();
    for version in SchemaVersion::ALL {
        for event_type in EventType::ALL {
            let name = message_name(event_type, version);
            schemas.insert(name.clone(), payload_schema(event_type, version));
            messages.insert(
                name.clone(),
                json!({
                    "name": event_type.as_str(),
                    "title": format!("{event_type}, schema version {version}"),
                    "contentType": "application/json",
                    "headers": headers(event_type, version),
                    "payload": {"$ref": format!("#/components/schemas/{name}")},
                    "x-redis-entry": "one stream entry: the headers are its fields, `payload` the JSON of the payload"
                }),
            );
        }
    }
    let mut channels = serde_json::Map::new();
    let mut operations = serde_json::Map::new();
    for (stream, writer, group, channel) in [
        (
            ORDER_EVENTS,
            Producer::OrderService,
            PAYMENT_SERVICE_GROUP,
            "orderEvents",
        ),
        (
            PAYMENT_EVENTS,
            Producer::PaymentService,
            ORDER_SERVICE_GROUP,
            "paymentEvents",
        ),
    ] {
        let names: Vec<String> = SchemaVersion::ALL
            .into_iter()
            .flat_map(|version| {
                EventType::ALL
                    .into_iter()
                    .filter(|t| t.producer() == writer)
                    .map(move |t| message_name(t, version))
            })
            .collect();
        let channel_messages: serde_json::Map<String, Value> = names
            .iter()
            .map(|name| {
                (
                    name.clone(),
                    json!({"$ref": format!("#/components/messages/{name}")}),
                )
            })
            .collect();
        let refs: Vec<Value> = names
            .iter()
            .map(|name| json!({"$ref": format!("#/channels/{channel}/messages/{name}")}))
            .collect();
        channels.insert(
            channel.into(),
            json!({
                "address": stream,
                "title": stream,
                "description": format!(
                    "The Redis stream `{stream}` (its key is `<STREAM_NAMESPACE>:{stream}` when a namespace is set), written by {} through its outbox, read by the consumer group `{group}`.",
                    writer.as_str()
                ),
                "messages": channel_messages,
                "x-redis-stream": {
                    "write": "XADD, MAXLEN/MINID trimmed by STREAM_RETENTION_MS",
                    "consumerGroups": [group],
                    "deadLetters": format!("{{{stream}}}{DEAD_LETTER_SUFFIX}"),
                    "parked": format!("{{{stream}}}:parked:{group} (a hash by event_id: entries of a newer schema_version than a reader reads)")
                }
            }),
        );
        operations.insert(
            format!("{channel}Publish"),
            json!({
                "action": "send",
                "title": format!("{} publishes", writer.as_str()),
                "channel": {"$ref": format!("#/channels/{channel}")},
                "messages": refs
            }),
        );
        operations.insert(
            format!("{channel}Consume"),
            json!({
                "action": "receive",
                "title": format!("group {group} consumes"),
                "channel": {"$ref": format!("#/channels/{channel}")},
                "messages": refs,
                "x-redis-consumer-group": group
            }),
        );
    }
    json!({
        "asyncapi": "3.0.0",
        "info": {
            "title": "order-service and payment-service events",
            "version": SchemaVersion::NEWEST.to_string(),
            "description": "The event contract of the two services (SPEC §3): two Redis streams, each read by one consumer group. Every schema version a current build reads is listed; a producer writes the one its WRITE_SCHEMA_VERSION says. Redis has no AsyncAPI binding yet: what is particular to Redis Streams is in x-redis-* extensions."
        },
        "defaultContentType": "application/json",
        "servers": {
            "redis": {
                "host": "localhost:6379",
                "protocol": "redis",
                "description": "Redis 7 or a Redis Cluster (REDIS_URL)"
            }
        },
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": schemas}
    })
}

/// `value` as a committed contract file: pretty JSON and a final newline.
pub fn to_file_text(value: &Value) -> String {
    let mut text = serde_json::to_string_pretty(value).unwrap_or_default();
    text.push('\n');
    text
}
