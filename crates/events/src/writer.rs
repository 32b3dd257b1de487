//! How a service writes its events: as which schema version (`versions.rs`), signed with
//! which key (`signing.rs`).

use std::sync::Arc;

use crate::{Envelope, EventSigner, SchemaVersion};

/// A service's way of writing its events. Cheap to clone.
#[derive(Debug, Clone)]
pub struct EventWriter {
    version: SchemaVersion,
    signer: Option<Arc<EventSigner>>,
}

impl EventWriter {
    /// Writes as `version`, signed with `signer` (unsigned without one).
    pub fn new(version: SchemaVersion, signer: Option<Arc<EventSigner>>) -> Self {
        Self { version, signer }
    }

    /// Writes as `version`, unsigned: for tests and tools.
    pub fn unsigned(version: SchemaVersion) -> Self {
        Self::new(version, None)
    }

    /// The schema version it writes.
    pub fn version(&self) -> SchemaVersion {
        self.version
    }

    /// The same writer, writing as `version` instead.
    pub fn with_version(&self, version: SchemaVersion) -> Self {
        Self {
            version,
            signer: self.signer.clone(),
        }
    }

    /// The id of the key it signs with, if it signs.
    pub fn key_id(&self) -> Option<&str> {
        self.signer.as_deref().map(EventSigner::key_id)
    }

    /// `envelope`'s stream entry: its fields as [`version`](Self::version), signed.
    pub fn fields(&self, envelope: &Envelope) -> Vec<(&'static str, String)> {
        let mut fields = envelope.to_fields_as(self.version);
        if let Some(signer) = &self.signer {
            let signed = signer.sign(&mut fields);
            debug_assert!(signed.is_ok(), "to_fields_as writes every signed field");
        }
        fields
    }
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::*;
    use crate::{Event, OrderCancelled, Producer, VerifyingKeys};

    fn envelope() -> Envelope {
        Envelope::new(
            Producer::OrderService,
            Event::OrderCancelled(OrderCancelled {
                order_id: Uuid::now_v7(),
                customer_id: "ana".into(),
                reason: "changed mind".into(),
            }),
        )
    }

    #[test]
    fn a_signing_writer_writes_the_envelope_signed_with_its_key() {
        let (private, public) = EventSigner::generate_pem().expect("a key");
        let signer = Arc::new(EventSigner::from_pem(&private).expect("reads"));
        let writer = EventWriter::new(SchemaVersion::NEWEST, Some(signer.clone()));
        assert_eq!(writer.key_id(), Some(signer.key_id()));
        let envelope = envelope();
        let fields = writer.fields(&envelope);
        let verifying = VerifyingKeys::from_pem(&public).expect("reads");
        assert_eq!(verifying.verify(&fields), Ok(()));
        let decoded = Envelope::from_fields(fields).expect("decodes");
        assert_eq!(decoded.event_id, envelope.event_id);
    }

    #[test]
    fn an_unsigned_writer_writes_the_envelope_as_its_version() {
        let writer = EventWriter::unsigned(SchemaVersion::NEWEST);
        assert_eq!(writer.key_id(), None);
        let envelope = envelope();
        assert_eq!(
            writer.fields(&envelope),
            envelope.to_fields_as(SchemaVersion::NEWEST)
        );
    }
}
