//! The stream entry: envelope fields of SPEC §3.2 around a typed [`Event`], and the
//! encoding to and from the flat field list that `XADD` writes and `XREADGROUP` returns.

use std::fmt;
use std::str::FromStr;

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use uuid::Uuid;

use crate::{Event, SchemaVersion};

/// Field names of a stream entry (SPEC §3.2), in the order they are written.
pub mod fields {
    pub const EVENT_ID: &str = "event_id";
    pub const EVENT_TYPE: &str = "event_type";
    pub const SCHEMA_VERSION: &str = "schema_version";
    pub const ORDER_ID: &str = "order_id";
    pub const OCCURRED_AT: &str = "occurred_at";
    pub const PRODUCER: &str = "producer";
    pub const TRACEPARENT: &str = "traceparent";
    pub const PAYLOAD: &str = "payload";
    /// The id of the key that signed the entry (`signing.rs`).
    pub const KEY_ID: &str = "key_id";
    /// The producer's signature over the entry's meaningful fields (`signing.rs`).
    pub const SIGNATURE: &str = "signature";
    /// With a batch signature, the entry's path to the signed root (`signature_tree.rs`).
    pub const SIGNATURE_PROOF: &str = "signature_proof";
}

/// The value of the `event_type` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    OrderCreated,
    OrderCancelled,
    PaymentCompleted,
    PaymentFailed,
    PaymentRefunded,
    PaymentCancelled,
}

impl EventType {
    /// Every type this version knows.
    pub const ALL: [Self; 6] = [
        Self::OrderCreated,
        Self::OrderCancelled,
        Self::PaymentCompleted,
        Self::PaymentFailed,
        Self::PaymentRefunded,
        Self::PaymentCancelled,
    ];

    /// The wire name, e.g. `OrderCreated`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OrderCreated => "OrderCreated",
            Self::OrderCancelled => "OrderCancelled",
            Self::PaymentCompleted => "PaymentCompleted",
            Self::PaymentFailed => "PaymentFailed",
            Self::PaymentRefunded => "PaymentRefunded",
            Self::PaymentCancelled => "PaymentCancelled",
        }
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for EventType {
    type Err = DecodeError;
    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|t| t.as_str() == name)
            .ok_or_else(|| DecodeError::UnknownEventType(name.to_owned()))
    }
}

/// The service that wrote an event (the `producer` field).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Producer {
    OrderService,
    PaymentService,
}

impl Producer {
    /// The wire name, e.g. `order-service`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OrderService => "order-service",
            Self::PaymentService => "payment-service",
        }
    }
}

impl FromStr for Producer {
    type Err = String;
    fn from_str(name: &str) -> Result<Self, Self::Err> {
        match name {
            "order-service" => Ok(Self::OrderService),
            "payment-service" => Ok(Self::PaymentService),
            other => Err(format!("unknown producer {other:?}")),
        }
    }
}

/// Why a stream entry could not be read as an [`Envelope`].
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The `event_type` is not one this version knows: skip it, it is not poison.
    #[error("unknown event_type {0:?}")]
    UnknownEventType(String),
    #[error("missing field `{0}`")]
    MissingField(&'static str),
    #[error("field `{field}` is invalid: {reason}")]
    InvalidField { field: &'static str, reason: String },
    #[error("schema_version {0} is older than this build reads (from {oldest})", oldest = SchemaVersion::OLDEST)]
    UnsupportedSchemaVersion(u32),
    /// Written by a newer build (`schema_version` above [`SchemaVersion::NEWEST`], a
    /// rolling upgrade under way): not poison, but not readable here; it is to wait for a
    /// build that reads it.
    #[error(
        "schema_version {version} is newer than this build reads (up to {})",
        SchemaVersion::NEWEST
    )]
    NewerSchemaVersion { version: u32, event_id: Uuid },
    #[error("payload of {event_type} does not decode: {source}")]
    InvalidPayload {
        event_type: EventType,
        #[source]
        source: serde_json::Error,
    },
    /// It decodes, but no honest producer writes it (see [`crate::Event::check`]): a
    /// forged or corrupted entry.
    #[error("invalid content: {0}")]
    InvalidContent(String),
}

impl DecodeError {
    /// True for an unknown `event_type`: the entry is to be acked and skipped, not
    /// dead-lettered (tolerant reader, SPEC §3.3).
    pub fn is_unknown_event_type(&self) -> bool {
        matches!(self, Self::UnknownEventType(_))
    }

    /// The version and `event_id` of an event written by a newer build.
    pub fn newer_schema_version(&self) -> Option<(u32, Uuid)> {
        match self {
            Self::NewerSchemaVersion { version, event_id } => Some((*version, *event_id)),
            _ => None,
        }
    }

    /// True for an entry that decodes but fails the content checks: forged or corrupted.
    pub fn is_invalid_content(&self) -> bool {
        matches!(self, Self::InvalidContent(_))
    }

    fn invalid(field: &'static str, reason: impl fmt::Display) -> Self {
        Self::InvalidField {
            field,
            reason: reason.to_string(),
        }
    }
}

/// One event as it travels on a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// UUID v7, the same on every re-publish: consumers dedupe on it.
    pub event_id: Uuid,
    pub order_id: Uuid,
    pub occurred_at: OffsetDateTime,
    pub producer: Producer,
    /// W3C trace context of the span that produced the event.
    pub traceparent: Option<String>,
    pub event: Event,
}

impl Envelope {
    /// A new event with a fresh UUID v7 id, stamped now.
    pub fn new(producer: Producer, event: Event) -> Self {
        Self {
            event_id: Uuid::now_v7(),
            order_id: event.order_id(),
            occurred_at: OffsetDateTime::now_utc(),
            producer,
            traceparent: None,
            event,
        }
    }

    /// A new event published in answer to `cause`: it carries `cause`'s trace context
    /// on, so the answer joins the trace of what caused it.
    pub fn caused_by(cause: &Envelope, producer: Producer, event: Event) -> Self {
        Self {
            traceparent: cause.traceparent.clone(),
            ..Self::new(producer, event)
        }
    }

    /// The event's type.
    pub fn event_type(&self) -> EventType {
        self.event.event_type()
    }

    /// The flat field list for `XADD` at the newest version: [`to_fields_as`](Self::to_fields_as).
    pub fn to_fields(&self) -> Vec<(&'static str, String)> {
        self.to_fields_as(SchemaVersion::NEWEST)
    }

    /// The flat field list for `XADD`, every field of SPEC §3.2 (`traceparent` only when
    /// there is one), the payload written as `version` says (`versions.rs`).
    pub fn to_fields_as(&self, version: SchemaVersion) -> Vec<(&'static str, String)> {
        let occurred_at = self
            .occurred_at
            .to_offset(time::UtcOffset::UTC)
            .format(&Rfc3339)
            .unwrap_or_default();
        let mut out = vec![
            (fields::EVENT_ID, self.event_id.to_string()),
            (fields::EVENT_TYPE, self.event_type().as_str().to_owned()),
            (fields::SCHEMA_VERSION, version.to_string()),
            (fields::ORDER_ID, self.order_id.to_string()),
            (fields::OCCURRED_AT, occurred_at),
            (fields::PRODUCER, self.producer.as_str().to_owned()),
        ];
        if let Some(traceparent) = &self.traceparent {
            out.push((fields::TRACEPARENT, traceparent.clone()));
        }
        out.push((fields::PAYLOAD, self.event.payload_json(version)));
        out
    }

    /// Reads an entry's fields. Values are bytes as Redis returns them; each must be
    /// UTF-8. An unknown `event_type` is reported first, whatever else is wrong, so that
    /// such entries are always skipped rather than dead-lettered. An event that decodes
    /// must also be plausible: written by the producer of its type, its body passing
    /// [`Event::check`] ([`DecodeError::InvalidContent`] otherwise).
    pub fn from_fields<K, V>(entry: impl IntoIterator<Item = (K, V)>) -> Result<Self, DecodeError>
    where
        K: AsRef<str>,
        V: AsRef<[u8]>,
    {
        let entry: Vec<(K, V)> = entry.into_iter().collect();
        let get = |name: &'static str| -> Result<&str, DecodeError> {
            let (_, value) = entry
                .iter()
                .find(|(k, _)| k.as_ref() == name)
                .ok_or(DecodeError::MissingField(name))?;
            std::str::from_utf8(value.as_ref()).map_err(|_| DecodeError::invalid(name, "not UTF-8"))
        };

        let event_type: EventType = get(fields::EVENT_TYPE)?.parse()?;
        let version: u32 = get(fields::SCHEMA_VERSION)?
            .parse()
            .map_err(|e| DecodeError::invalid(fields::SCHEMA_VERSION, e))?;
        let event_id = Uuid::parse_str(get(fields::EVENT_ID)?)
            .map_err(|e| DecodeError::invalid(fields::EVENT_ID, e))?;
        if version > SchemaVersion::NEWEST.get() {
            return Err(DecodeError::NewerSchemaVersion { version, event_id });
        }
        let version = SchemaVersion::try_from(version)
            .map_err(|_| DecodeError::UnsupportedSchemaVersion(version))?;
        let order_id = Uuid::parse_str(get(fields::ORDER_ID)?)
            .map_err(|e| DecodeError::invalid(fields::ORDER_ID, e))?;
        let occurred_at = OffsetDateTime::parse(get(fields::OCCURRED_AT)?, &Rfc3339)
            .map_err(|e| DecodeError::invalid(fields::OCCURRED_AT, e))?;
        let producer: Producer = get(fields::PRODUCER)?
            .parse()
            .map_err(|e| DecodeError::invalid(fields::PRODUCER, e))?;
        let traceparent = match get(fields::TRACEPARENT) {
            Ok(value) => Some(value.to_owned()),
            Err(DecodeError::MissingField(_)) => None,
            Err(other) => return Err(other),
        };
        let event = Event::from_payload(event_type, version, get(fields::PAYLOAD)?)
            .map_err(|source| DecodeError::InvalidPayload { event_type, source })?;
        if event.order_id() != order_id {
            return Err(DecodeError::invalid(
                fields::ORDER_ID,
                format!("{order_id} differs from the payload's {}", event.order_id()),
            ));
        }
        if producer != event_type.producer() {
            return Err(DecodeError::InvalidContent(format!(
                "{event_type} is written by {}, not by {}",
                event_type.producer().as_str(),
                producer.as_str()
            )));
        }
        event.check().map_err(DecodeError::InvalidContent)?;
        Ok(Self {
            event_id,
            order_id,
            occurred_at,
            producer,
            traceparent,
            event,
        })
    }
}
