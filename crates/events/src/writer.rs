//! How a service writes its events: as which schema version (`versions.rs`), signed with
//! which key, one entry or one batch to a signature (`signing.rs`).

use std::sync::Arc;

use std::fmt;

use crate::{Envelope, EventSigner, SchemaVersion};

/// What one signature covers (the `SIGNATURE_SCOPE` setting).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SignatureScope {
    /// Each entry signed on its own: what every release reads.
    #[default]
    Entry,
    /// The entries one statement writes signed once, up to 32 to a hash tree, each entry
    /// carrying its path to the signed root (`signature_proof`): read from this release
    /// on, so switched on once every reader runs it, like a new schema version.
    Batch,
}

impl fmt::Display for SignatureScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Entry => "entry",
            Self::Batch => "batch",
        })
    }
}

impl std::str::FromStr for SignatureScope {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match text.trim() {
            "entry" => Ok(Self::Entry),
            "batch" => Ok(Self::Batch),
            other => Err(format!(
                "{other:?} is not a signature scope (entry or batch)"
            )),
        }
    }
}

/// A service's way of writing its events. Cheap to clone.
#[derive(Debug, Clone)]
pub struct EventWriter {
    version: SchemaVersion,
    signer: Option<Arc<EventSigner>>,
    scope: SignatureScope,
}

impl EventWriter {
    /// Writes as `version`, signed with `signer` (unsigned without one), each entry on its
    /// own.
    pub fn new(version: SchemaVersion, signer: Option<Arc<EventSigner>>) -> Self {
        Self {
            version,
            signer,
            scope: SignatureScope::Entry,
        }
    }

    /// The same writer, signing with `scope`.
    pub fn with_scope(mut self, scope: SignatureScope) -> Self {
        self.scope = scope;
        self
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
            ..self.clone()
        }
    }

    /// What one of its signatures covers.
    pub fn scope(&self) -> SignatureScope {
        self.scope
    }

    /// The id of the key it signs with, if it signs.
    pub fn key_id(&self) -> Option<&str> {
        self.signer.as_deref().map(EventSigner::key_id)
    }

    /// `envelope`'s stream entry: its fields as [`version`](Self::version), signed.
    pub fn fields(&self, envelope: &Envelope) -> Vec<(&'static str, String)> {
        let mut all = self.fields_all(std::slice::from_ref(envelope));
        all.pop().unwrap_or_default()
    }

    /// The stream entries of `envelopes`, which one statement writes: each one's fields as
    /// [`version`](Self::version), signed one by one or, with [`SignatureScope::Batch`],
    /// as batches.
    pub fn fields_all(&self, envelopes: &[Envelope]) -> Vec<Vec<(&'static str, String)>> {
        let mut all: Vec<_> = envelopes
            .iter()
            .map(|envelope| envelope.to_fields_as(self.version))
            .collect();
        let signed = match (&self.signer, self.scope) {
            (None, _) => Ok(()),
            (Some(signer), SignatureScope::Entry) => {
                all.iter_mut().try_for_each(|fields| signer.sign(fields))
            }
            (Some(signer), SignatureScope::Batch) => signer.sign_all(&mut all),
        };
        debug_assert!(signed.is_ok(), "to_fields_as writes every signed field");
        all
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
    fn a_batch_writer_signs_once_per_tree_and_each_entry_verifies() {
        let (private, public) = EventSigner::generate_pem().expect("a key");
        let signer = Arc::new(EventSigner::from_pem(&private).expect("reads"));
        let writer =
            EventWriter::new(SchemaVersion::NEWEST, Some(signer)).with_scope(SignatureScope::Batch);
        let envelopes: Vec<Envelope> = (0..40).map(|_| envelope()).collect();
        let entries = writer.fields_all(&envelopes);
        let verifying = VerifyingKeys::from_pem(&public).expect("reads");
        let all: Vec<&[(&str, String)]> = entries.iter().map(Vec::as_slice).collect();
        assert!(verifying.verify_all(&all).iter().all(Result::is_ok));
        let signatures: std::collections::BTreeSet<&str> = entries
            .iter()
            .flat_map(|e| e.iter().filter(|(k, _)| *k == crate::fields::SIGNATURE))
            .map(|(_, v)| v.as_str())
            .collect();
        assert_eq!(signatures.len(), 2, "40 entries: a tree of 32 and one of 8");
        let one = writer.with_version(SchemaVersion::V1).fields(&envelopes[0]);
        assert_eq!(verifying.verify(&one), Ok(()), "a batch of one");
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
