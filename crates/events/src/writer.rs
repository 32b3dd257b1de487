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
