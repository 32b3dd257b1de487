//! What an entry needs, decided before touching the database ([`Plan`]): skipped (deleted
//! while pending, or a type this version does not know), parked (a newer schema version
//! than this build reads), dead-lettered (not signed by its producer, undecodable,
//! implausible content, over `MAX_ENTRY_BYTES`, or delivered too often), or applied in a
//! span that continues its producer's trace.

use events::{Envelope, Unverified};
use tracing::{debug, info, info_span, warn};

use super::read::OVERSIZED_FIELD;
use super::{Consumer, EventHandler};
use crate::observability::{EVENTS_SKIPPED, EVENTS_UNVERIFIED};
use crate::signatures::SignatureMode;
use crate::stream_reply::RawEntry;
use crate::telemetry;

/// What to do with an entry, decided before touching the database.
pub(super) enum Plan {
    /// Ack without handling (deleted while pending, or an unknown event type).
    Skip,
    /// Can never be handled: dead-letter for this cause, with this error.
    DeadLetter(DeadLetterCause, String),
    /// Written by a newer build than this one reads: park it (see [`park`](super::park)),
    /// the event of this `event_id`, of this schema version.
    Park(uuid::Uuid, u32),
    /// Handle it, in this span.
    Apply(Box<Envelope>, tracing::Span),
}

/// Why an entry is dead-lettered: the `cause` label of `events_dead_lettered_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum DeadLetterCause {
    /// It is not signed by a key of its producer (with `SIGNATURES=require`): forged.
    Forged,
    /// It is not an event of a known type (missing or malformed fields, bad payload).
    Undecodable,
    /// It decodes but fails the content checks: forged, or corrupted on the way.
    InvalidContent,
    /// Its handler refused it (it contradicts what the service knows).
    Rejected,
    /// It failed on its last allowed delivery.
    Exhausted,
    /// It is larger than `MAX_ENTRY_BYTES`: never read into the service.
    Oversized,
}

impl DeadLetterCause {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Self::Forged => "forged",
            Self::Undecodable => "undecodable",
            Self::Oversized => "oversized",
            Self::InvalidContent => "invalid_content",
            Self::Rejected => "rejected",
            Self::Exhausted => "exhausted",
        }
    }
}

impl<H: EventHandler> Consumer<H> {
    /// Decides what to do with an entry before touching the database. An event gets a
    /// span that continues its producer's trace.
    /// `verdict` is what its signature came to (see [`verdicts`](Self::verdicts)).
    pub(super) fn plan(
        &self,
        entry: &RawEntry,
        deliveries: u64,
        verdict: Result<(), Unverified>,
    ) -> Plan {
        let stream = self.stream_key.as_str();
        let skip = |reason: &'static str| {
            metrics::counter!(EVENTS_SKIPPED, "stream" => stream.to_owned(), "reason" => reason)
                .increment(1);
            Plan::Skip
        };
        let Some(fields) = &entry.fields else {
            debug!(entry_id = %entry.id, "entry was deleted from the stream while pending; acking");
            return skip("deleted");
        };
        if let [(name, size)] = fields.as_slice()
            && name == OVERSIZED_FIELD
        {
            let size = String::from_utf8_lossy(size);
            let max = self.config.max_entry_bytes;
            warn!(entry_id = %entry.id, size = %size, "an entry over MAX_ENTRY_BYTES; dead-lettered unread");
            return Plan::DeadLetter(
                DeadLetterCause::Oversized,
                format!(
                    "entry of {size} bytes, over MAX_ENTRY_BYTES={max}: dead-lettered by its id, unread"
                ),
            );
        }
        let mut envelope = match Envelope::from_fields(
            fields.iter().map(|(k, v)| (k.as_str(), v.as_slice())),
        ) {
            Ok(envelope) => envelope,
            Err(e) if e.is_unknown_event_type() => {
                info!(entry_id = %entry.id, error = %e, "skipping an event type this version does not know");
                return skip("unknown_type");
            }
            Err(e) if let Some((version, event_id)) = e.newer_schema_version() => {
                // Parked only if it is its producer's: a forger cannot fill the hash.
                return self
                    .forged(entry, verdict)
                    .unwrap_or(Plan::Park(event_id, version));
            }
            Err(e) if e.is_invalid_content() => {
                warn!(entry_id = %entry.id, error = %e, "an entry no honest producer writes (forged or corrupted)");
                return Plan::DeadLetter(DeadLetterCause::InvalidContent, e.to_string());
            }
            Err(e) => return Plan::DeadLetter(DeadLetterCause::Undecodable, e.to_string()),
        };
        if let Some(forged) = self.forged(entry, verdict) {
            return forged;
        }
        let max = self.config.max_deliveries;
        if deliveries > max {
            // Only reached when a consumer died while handling it (a crash loop).
            return Plan::DeadLetter(
                DeadLetterCause::Exhausted,
                format!("delivered {deliveries} times, more than MAX_DELIVERIES={max}"),
            );
        }
        let span = info_span!("consume", stream, entry_id = %entry.id,
            event_type = envelope.event_type().as_str(), event_id = %envelope.event_id, order_id = %envelope.order_id);
        if let Some(traceparent) = &envelope.traceparent {
            telemetry::continue_trace(&span, traceparent);
        }
        // Handlers see the consuming span's context, for the events they publish in answer.
        envelope.traceparent = telemetry::traceparent_of(&span).or(envelope.traceparent);
        Plan::Apply(Box::new(envelope), span)
    }

    /// What each entry's signature comes to (SPEC §4.9), checked as one batch: all stand
    /// with `SIGNATURES=off`.
    pub(super) fn verdicts(&self, entries: &[RawEntry]) -> Vec<Result<(), Unverified>> {
        if self.verification.mode == SignatureMode::Off {
            return vec![Ok(()); entries.len()];
        }
        let fields: Vec<&[(String, Vec<u8>)]> = entries
            .iter()
            .map(|entry| entry.fields.as_deref().unwrap_or_default())
            .collect();
        self.verification.keys.verify_all(&fields)
    }

    /// Acts on the entry's signature verdict (SPEC §4.9): `None` if it stands, or if the consumer
    /// only reports (`SIGNATURES=report`, counted and logged); else the plan that
    /// dead-letters it as forged.
    fn forged(&self, entry: &RawEntry, verdict: Result<(), Unverified>) -> Option<Plan> {
        let unverified = verdict.err()?;
        let reason = match unverified {
            Unverified::Unsigned => "unsigned",
            Unverified::UnknownKey(_) => "unknown_key",
            Unverified::BadSignature(_) => "bad_signature",
            Unverified::ForeignProducer { .. } => "foreign_producer",
            Unverified::Malformed(_) => "malformed",
        };
        metrics::counter!(EVENTS_UNVERIFIED, "stream" => self.stream_key.clone(), "reason" => reason)
            .increment(1);
        if self.verification.mode == SignatureMode::Report {
            warn!(entry_id = %entry.id, error = %unverified,
                "an entry not signed by its producer, applied (SIGNATURES=report)");
            return None;
        }
        warn!(entry_id = %entry.id, error = %unverified,
            "an entry not signed by its producer: dead-lettered as forged");
        Some(Plan::DeadLetter(
            DeadLetterCause::Forged,
            unverified.to_string(),
        ))
    }
}
