//! Event signatures as a service is set up with them (SPEC §4.9; the scheme is the
//! `events` crate's `signing.rs`): its signing key, the verifying keys of the service it
//! consumes from, and what its consumer does with an entry whose signature does not stand
//! ([`SignatureMode`]). Keys are PEM files named by settings, never part of the build.

use std::path::Path;
use std::sync::Arc;

use events::{EventSigner, EventWriter, SchemaVersion, SignatureScope, VerifyingKeys};

/// What a consumer does with an entry that is unsigned, or signed with a key it does not
/// accept, or whose signature does not match.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SignatureMode {
    /// Dead-letter it as forged: it has no effect. The service signs what it writes.
    Require,
    /// Apply it, and count it (`events_unverified_total`): the step of an upgrade in which
    /// producers start signing while consumers still meet unsigned entries. The service
    /// signs what it writes.
    Report,
    /// Neither sign nor verify (said at start-up and in `/health/ready`).
    Off,
}

impl SignatureMode {
    /// The setting's text.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Require => "require",
            Self::Report => "report",
            Self::Off => "off",
        }
    }
}

/// A service's keys and mode, read from its settings.
#[derive(Debug, Clone)]
pub struct Signatures {
    /// What the consumer does with an entry whose signature does not stand.
    pub mode: SignatureMode,
    /// What one signature covers: an entry, or the entries one statement writes.
    pub scope: SignatureScope,
    signer: Option<Arc<EventSigner>>,
    verifying: VerifyingKeys,
}

impl Signatures {
    /// Reads the keys `mode` needs: a signing key unless `off`, verifying keys to
    /// `require` (and to `report` if given). The error names the setting.
    pub fn load(
        mode: SignatureMode,
        scope: SignatureScope,
        signing_key_file: Option<&Path>,
        verifying_keys_file: Option<&Path>,
    ) -> Result<Self, String> {
        let read = |setting: &str, path: &Path| {
            std::fs::read_to_string(path).map_err(|e| format!("{setting} {}: {e}", path.display()))
        };
        if mode == SignatureMode::Off {
            return Ok(Self::off());
        }
        let path = signing_key_file.ok_or(
            "SIGNING_KEY_FILE is not set: a service signs the events it writes (SIGNATURES=off \
             turns signing and verifying off)",
        )?;
        let signer = EventSigner::from_pem(&read("SIGNING_KEY_FILE", path)?)
            .map_err(|e| format!("SIGNING_KEY_FILE {}: {e}", path.display()))?;
        let verifying = match (verifying_keys_file, mode) {
            (Some(path), _) => VerifyingKeys::from_pem(&read("VERIFYING_KEYS_FILE", path)?)
                .map_err(|e| format!("VERIFYING_KEYS_FILE {}: {e}", path.display()))?,
            (None, SignatureMode::Report) => VerifyingKeys::default(),
            (None, _) => {
                return Err("VERIFYING_KEYS_FILE is not set: with SIGNATURES=require a \
                            consumer needs the public keys of the service it reads from"
                    .to_owned());
            }
        };
        Ok(Self {
            mode,
            scope,
            signer: Some(Arc::new(signer)),
            verifying,
        })
    }

    /// Neither signing nor verifying.
    pub fn off() -> Self {
        Self {
            mode: SignatureMode::Off,
            scope: SignatureScope::Entry,
            signer: None,
            verifying: VerifyingKeys::default(),
        }
    }

    /// The service's writer: `version`, signed with its key, in its scope.
    pub fn writer(&self, version: SchemaVersion) -> EventWriter {
        EventWriter::new(version, self.signer.clone()).with_scope(self.scope)
    }

    /// The keys the consumer accepts.
    pub fn verifying(&self) -> &VerifyingKeys {
        &self.verifying
    }

    /// Refuses keys a consumer of `streams` streams could be fooled with: reading more than
    /// one (in this design, more than one producer), every key must be bound to its
    /// producer (a `Producer:` line before its block), or either producer's key would
    /// pass on either stream.
    pub fn check_bound(&self, streams: usize) -> Result<(), String> {
        let unbound = self.verifying.unbound_key_ids();
        if self.mode == SignatureMode::Off || streams < 2 || unbound.is_empty() {
            return Ok(());
        }
        Err(format!(
            "VERIFYING_KEYS_FILE: key(s) {} bound to no producer, and this service reads              {streams} streams, so either producer's key would pass on either; put a line              `Producer: <service>` just before each PUBLIC KEY block (event-keys writes it)",
            unbound.join(", ")
        ))
    }

    /// The id of the signing key, if any.
    pub fn key_id(&self) -> Option<&str> {
        self.signer.as_deref().map(EventSigner::key_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_keys(accepts: &str) -> Signatures {
        let dir = std::env::temp_dir().join(format!("signatures-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).expect("a folder");
        let (private, _) = EventSigner::generate_pem().expect("a key");
        std::fs::write(dir.join("key"), private).expect("writes");
        std::fs::write(dir.join("accepts"), accepts).expect("writes");
        Signatures::load(
            SignatureMode::Require,
            SignatureScope::Entry,
            Some(&dir.join("key")),
            Some(&dir.join("accepts")),
        )
        .expect("loads")
    }

    #[test]
    fn a_consumer_of_several_streams_needs_each_key_bound_to_its_producer() {
        let (_, orders) = EventSigner::generate_pem().expect("a key");
        let (_, payments) = EventSigner::generate_pem().expect("a key");
        let unbound = with_keys(&[orders.as_str(), &payments].concat());
        assert_eq!(unbound.check_bound(1), Ok(()), "one stream: one producer");
        let refused = unbound.check_bound(2).expect_err("refused");
        assert!(refused.contains("Producer: <service>"), "{refused}");
        let bound = with_keys(
            &[
                EventSigner::bind_to_producer(&orders, "order-service"),
                EventSigner::bind_to_producer(&payments, "payment-service"),
            ]
            .concat(),
        );
        assert_eq!(bound.check_bound(2), Ok(()));
        assert_eq!(Signatures::off().check_bound(2), Ok(()));
    }
}
