//! Authenticated events (SPEC §3.2, §4.9): each service signs the entries it writes with
//! its own Ed25519 key; a consumer holds only the verifying keys of the service it reads
//! from, so a compromised service still cannot forge the other's events, and a Redis user
//! who can `XADD` cannot forge either's.
//!
//! The signature covers every field that has meaning, in the canonical encoding of
//! [`signed_bytes`]: a domain tag, then `event_id`, `event_type`, `schema_version`,
//! `order_id`, `occurred_at`, `producer`, `key_id` and `payload`, each as its name and its
//! value, both length-prefixed (u32, big-endian), so no two entries encode alike. Only
//! `traceparent` is left out: it is telemetry, and moves nothing. The entry carries
//! `key_id` (the first 8 bytes of the SHA-256 of the public key, in hex) and `signature`
//! (base64). Keys are PEM: a PKCS#8 `PRIVATE KEY` to sign with, and any number of
//! `PUBLIC KEY` blocks (SPKI) to verify with, so a key is rotated by accepting both for a
//! while. `openssl genpkey -algorithm ed25519` makes one too. A `PUBLIC KEY` block may be
//! bound to the producer it signs for by a line `Producer: <name>` just before it (RFC
//! 7468's explanatory text, which other tools ignore): an entry naming another `producer`
//! is then refused whatever its signature, so a consumer of two producers (holding both
//! keys) still cannot be fed one producer's events signed with the other's key.
//!
//! What one signature covers is the writer's [`SignatureScope`](crate::SignatureScope): one entry (`entry`, what
//! every release reads), or the entries one statement writes (`batch`, read from this
//! release on): the signature is then over the root of a hash tree of their encodings and
//! each entry carries its path to that root (`signature_tree.rs`), so a producer signs, and
//! a consumer verifies, once per batch rather than once per entry.

use std::collections::HashMap;
use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};

use crate::fields;
use crate::key_files::{
    KeyError, PKCS8_PREFIX, PRODUCER_LINE, SPKI_PREFIX, key_id_of, pem, pem_blocks,
    pem_blocks_bound,
};
use crate::signature_tree::{self, LEAVES_PER_TREE};

/// The fields a signature covers, in this order (`key_id` included: a signature names
/// the key that made it).
pub const SIGNED_FIELDS: [&str; 8] = [
    fields::EVENT_ID,
    fields::EVENT_TYPE,
    fields::SCHEMA_VERSION,
    fields::ORDER_ID,
    fields::OCCURRED_AT,
    fields::PRODUCER,
    fields::KEY_ID,
    fields::PAYLOAD,
];

/// What the signed bytes start with: a signature over them means nothing else.
const DOMAIN: &[u8] = b"order-payment-streams event signature v1\n";

/// What a batch signature signs, followed by its tree's root.
const TREE_DOMAIN: &[u8] = b"order-payment-streams event batch signature v1\n";

/// Why an entry's signature does not stand.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unverified {
    #[error("the entry is not signed")]
    Unsigned,
    #[error("signed with key {0:?}, not one this service accepts")]
    UnknownKey(String),
    #[error("the signature of key {0:?} does not match the entry")]
    BadSignature(String),
    #[error("signed with key {key_id:?} of {bound}, but the entry names producer {named:?}")]
    ForeignProducer {
        key_id: String,
        bound: String,
        named: String,
    },
    #[error("the entry cannot be checked: {0}")]
    Malformed(String),
}

/// The bytes a signature covers: the domain tag, then each of [`SIGNED_FIELDS`] as
/// length-prefixed name and value. A field missing, or given twice, is an error.
pub fn signed_bytes<K: AsRef<str>, V: AsRef<[u8]>>(
    entry: &[(K, V)],
) -> Result<Vec<u8>, Unverified> {
    let mut out = DOMAIN.to_vec();
    for name in SIGNED_FIELDS {
        let mut values = entry.iter().filter(|(k, _)| k.as_ref() == name);
        let (Some((_, value)), None) = (values.next(), values.next()) else {
            return Err(Unverified::Malformed(format!(
                "field `{name}` must be there exactly once"
            )));
        };
        for part in [name.as_bytes(), value.as_ref()] {
            let len = u32::try_from(part.len())
                .map_err(|_| Unverified::Malformed(format!("field `{name}` is too long")))?;
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(part);
        }
    }
    Ok(out)
}

/// A service's signing key.
pub struct EventSigner {
    key_id: String,
    key: SigningKey,
}

impl fmt::Debug for EventSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventSigner")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl EventSigner {
    /// The key of a PEM `PRIVATE KEY` block (PKCS#8, Ed25519).
    pub fn from_pem(text: &str) -> Result<Self, KeyError> {
        let blocks = pem_blocks(text, "PRIVATE KEY")?;
        let [der] = blocks.as_slice() else {
            return Err(KeyError(format!(
                "expected one PRIVATE KEY block, found {}",
                blocks.len()
            )));
        };
        let key = SigningKey::from_pkcs8_der(der)
            .map_err(|e| KeyError(format!("not an Ed25519 PKCS#8 key: {e}")))?;
        Ok(Self {
            key_id: key_id_of(key.verifying_key().as_bytes()),
            key,
        })
    }

    /// A new key pair, as PEM: the private key (PKCS#8 v1) and the public key (SPKI).
    pub fn generate_pem() -> Result<(String, String), KeyError> {
        let mut seed = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut seed)
            .map_err(|_| KeyError("no randomness to make a key with".into()))?;
        let public = SigningKey::from_bytes(&seed).verifying_key();
        let pkcs8: Vec<u8> = PKCS8_PREFIX.iter().chain(&seed).copied().collect();
        let spki: Vec<u8> = SPKI_PREFIX
            .iter()
            .chain(public.as_bytes())
            .copied()
            .collect();
        Ok((pem("PRIVATE KEY", &pkcs8), pem("PUBLIC KEY", &spki)))
    }

    /// `public_pem` bound to `producer`: the same block, after a `Producer:` line.
    pub fn bind_to_producer(public_pem: &str, producer: &str) -> String {
        format!("{PRODUCER_LINE} {producer}\n{public_pem}")
    }

    /// The key's id, as entries it signs carry it.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// Signs `entry`: appends `key_id` and `signature`, replacing any there were. An
    /// entry lacking a field the signature covers is left unsigned (the error says which).
    pub fn sign<K: From<&'static str> + AsRef<str>, V: From<String> + AsRef<[u8]>>(
        &self,
        entry: &mut Vec<(K, V)>,
    ) -> Result<(), Unverified> {
        self.relabel(entry);
        match signed_bytes(entry) {
            Ok(bytes) => {
                let signature = STANDARD.encode(self.key.sign(&bytes).to_bytes());
                entry.push((fields::SIGNATURE.into(), signature.into()));
                Ok(())
            }
            Err(e) => {
                entry.pop();
                Err(e)
            }
        }
    }

    /// Signs `entries` as batches (`SIGNATURE_SCOPE=batch`): one signature per
    /// [`LEAVES_PER_TREE`] entries, over the root of their hash tree, and each entry its
    /// `signature_proof`. Replaces any earlier signature; an entry lacking a field the
    /// signature covers is left unsigned (the error says which) and the rest are signed.
    pub fn sign_all<K: From<&'static str> + AsRef<str>, V: From<String> + AsRef<[u8]>>(
        &self,
        entries: &mut [Vec<(K, V)>],
    ) -> Result<(), Unverified> {
        let mut first_error = Ok(());
        let mut signable: Vec<(&mut Vec<(K, V)>, signature_tree::Hash)> = Vec::new();
        for entry in entries.iter_mut() {
            self.relabel(entry);
            match signed_bytes(entry) {
                Ok(bytes) => signable.push((entry, signature_tree::leaf(&bytes))),
                Err(e) => {
                    entry.pop();
                    first_error = first_error.and(Err(e));
                }
            }
        }
        for tree in signable.chunks_mut(LEAVES_PER_TREE) {
            let leaves: Vec<_> = tree.iter().map(|(_, leaf)| *leaf).collect();
            let (root, proofs) = signature_tree::build(&leaves);
            let message = [TREE_DOMAIN, &root].concat();
            let signature = STANDARD.encode(self.key.sign(&message).to_bytes());
            for ((entry, _), proof) in tree.iter_mut().zip(proofs) {
                entry.push((fields::SIGNATURE.into(), signature.clone().into()));
                let proof = STANDARD.encode(signature_tree::encode(&proof));
                entry.push((fields::SIGNATURE_PROOF.into(), proof.into()));
            }
        }
        first_error
    }

    /// Takes any earlier signature off `entry` and names this key in it.
    fn relabel<K: From<&'static str> + AsRef<str>, V: From<String>>(
        &self,
        entry: &mut Vec<(K, V)>,
    ) {
        entry.retain(|(k, _)| {
            ![fields::KEY_ID, fields::SIGNATURE, fields::SIGNATURE_PROOF].contains(&k.as_ref())
        });
        entry.push((fields::KEY_ID.into(), self.key_id.clone().into()));
    }
}

/// The keys a consumer accepts signatures of, by id, each with the producer it is bound
/// to, if it is.
#[derive(Debug, Clone, Default)]
pub struct VerifyingKeys(HashMap<String, (VerifyingKey, Option<String>)>);

/// An entry ready for the curve arithmetic: its key, signature and signed bytes.
struct Claim {
    key_id: String,
    key: VerifyingKey,
    signature: Signature,
    message: Vec<u8>,
}

impl VerifyingKeys {
    /// The keys of every PEM `PUBLIC KEY` block (SPKI, Ed25519) in `text`, each bound to
    /// the producer a `Producer:` line just before it names.
    pub fn from_pem(text: &str) -> Result<Self, KeyError> {
        let mut keys = HashMap::new();
        for (der, producer) in pem_blocks_bound(text, "PUBLIC KEY")? {
            let key = VerifyingKey::from_public_key_der(&der)
                .map_err(|e| KeyError(format!("a PUBLIC KEY that is not an Ed25519 key: {e}")))?;
            keys.insert(key_id_of(key.as_bytes()), (key, producer));
        }
        if keys.is_empty() {
            return Err(KeyError("no PUBLIC KEY block".into()));
        }
        Ok(Self(keys))
    }

    /// The ids of the keys not bound to a producer, sorted.
    pub fn unbound_key_ids(&self) -> Vec<&str> {
        let mut ids: Vec<&str> = self
            .0
            .iter()
            .filter(|(_, (_, producer))| producer.is_none())
            .map(|(id, _)| id.as_str())
            .collect();
        ids.sort_unstable();
        ids
    }

    /// The ids of the keys, sorted.
    pub fn key_ids(&self) -> Vec<&str> {
        let mut ids: Vec<&str> = self.0.keys().map(String::as_str).collect();
        ids.sort_unstable();
        ids
    }

    /// Whether `entry` (as Redis returns it) is signed by one of these keys.
    pub fn verify<K: AsRef<str>, V: AsRef<[u8]>>(
        &self,
        entry: &[(K, V)],
    ) -> Result<(), Unverified> {
        let claim = self.claim(entry)?;
        claim
            .key
            .verify(&claim.message, &claim.signature)
            .map_err(|_| Unverified::BadSignature(claim.key_id))
    }

    /// [`verify`](Self::verify) of each of `entries`, the signatures checked as one batch
    /// (about half the arithmetic of one at a time), each distinct signed message once (the
    /// entries of one batch signature share theirs); if the batch does not stand, each is
    /// checked alone to tell which.
    pub fn verify_all<K: AsRef<str>, V: AsRef<[u8]>>(
        &self,
        entries: &[&[(K, V)]],
    ) -> Vec<Result<(), Unverified>> {
        let claims: Vec<Result<Claim, Unverified>> =
            entries.iter().map(|entry| self.claim(entry)).collect();
        // The distinct checks, and which one each standing claim is.
        let mut distinct: Vec<&Claim> = Vec::new();
        let mut index: HashMap<(&[u8], [u8; 64]), usize> = HashMap::new();
        let check_of: Vec<Option<usize>> = claims
            .iter()
            .map(|claim| {
                let claim = claim.as_ref().ok()?;
                let key = (claim.message.as_slice(), claim.signature.to_bytes());
                Some(*index.entry(key).or_insert_with(|| {
                    distinct.push(claim);
                    distinct.len() - 1
                }))
            })
            .collect();
        let messages: Vec<&[u8]> = distinct.iter().map(|c| c.message.as_slice()).collect();
        let signatures: Vec<Signature> = distinct.iter().map(|c| c.signature).collect();
        let keys: Vec<VerifyingKey> = distinct.iter().map(|c| c.key).collect();
        let outcomes: Vec<bool> = if distinct.len() > 1
            && ed25519_dalek::verify_batch(&messages, &signatures, &keys).is_ok()
        {
            vec![true; distinct.len()]
        } else {
            distinct
                .iter()
                .map(|c| c.key.verify(&c.message, &c.signature).is_ok())
                .collect()
        };
        claims
            .into_iter()
            .zip(check_of)
            .map(|(claim, check)| {
                let claim = claim?;
                match check {
                    Some(i) if outcomes[i] => Ok(()),
                    _ => Err(Unverified::BadSignature(claim.key_id)),
                }
            })
            .collect()
    }

    /// What checking `entry`'s signature takes, or why it cannot stand whatever the
    /// arithmetic says.
    fn claim<K: AsRef<str>, V: AsRef<[u8]>>(&self, entry: &[(K, V)]) -> Result<Claim, Unverified> {
        let field = |name: &str| {
            entry
                .iter()
                .find(|(k, _)| k.as_ref() == name)
                .map(|(_, v)| v.as_ref())
        };
        let (Some(key_id), Some(signature)) = (field(fields::KEY_ID), field(fields::SIGNATURE))
        else {
            return Err(Unverified::Unsigned);
        };
        let key_id = String::from_utf8_lossy(key_id).into_owned();
        let (key, bound) = self
            .0
            .get(&key_id)
            .ok_or_else(|| Unverified::UnknownKey(key_id.clone()))?;
        let named = field(fields::PRODUCER).map(String::from_utf8_lossy);
        if let Some(bound) = bound
            && named.as_deref() != Some(bound.as_str())
        {
            return Err(Unverified::ForeignProducer {
                key_id,
                bound: bound.clone(),
                named: named.unwrap_or_default().into_owned(),
            });
        }
        let key = *key;
        let signature = STANDARD
            .decode(signature)
            .ok()
            .and_then(|bytes| Signature::from_slice(&bytes).ok())
            .ok_or_else(|| Unverified::BadSignature(key_id.clone()))?;
        let bytes = signed_bytes(entry)?;
        let message = match field(fields::SIGNATURE_PROOF) {
            None => bytes,
            Some(proof) => {
                let proof = STANDARD
                    .decode(proof)
                    .map_err(|e| e.to_string())
                    .and_then(|proof| signature_tree::decode(&proof))
                    .map_err(|e| Unverified::Malformed(format!("signature_proof: {e}")))?;
                let root = signature_tree::root(signature_tree::leaf(&bytes), &proof);
                [TREE_DOMAIN, &root].concat()
            }
        };
        Ok(Claim {
            message,
            key_id,
            key,
            signature,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Vec<(&'static str, String)> {
        [
            (fields::EVENT_ID, "01937a2e-5c00-7000-8000-000000000100"),
            (fields::EVENT_TYPE, "OrderCancelled"),
            (fields::SCHEMA_VERSION, "1"),
            (fields::ORDER_ID, "01937a2e-5c00-7000-8000-000000000001"),
            (fields::OCCURRED_AT, "2026-12-02T16:00:00Z"),
            (fields::PRODUCER, "order-service"),
            (
                fields::PAYLOAD,
                r#"{"order_id":"01937a2e-5c00-7000-8000-000000000001","customer_id":"ana","reason":"x"}"#,
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k, v.to_owned()))
        .collect()
    }

    /// `n` entries of distinct events.
    fn entries(n: usize) -> Vec<Vec<(&'static str, String)>> {
        (0..n)
            .map(|i| {
                let mut entry = entry();
                entry[0].1 = format!("01937a2e-5c00-7000-8000-{i:012}");
                entry
            })
            .collect()
    }

    fn keys() -> (EventSigner, VerifyingKeys) {
        let (private, public) = EventSigner::generate_pem().expect("a key");
        (
            EventSigner::from_pem(&private).expect("reads"),
            VerifyingKeys::from_pem(&public).expect("reads"),
        )
    }

    #[test]
    fn a_signed_entry_verifies_and_any_change_to_a_meaningful_field_breaks_it() {
        let (signer, verifying) = keys();
        let mut signed = entry();
        signer.sign(&mut signed).expect("signs");
        assert_eq!(verifying.key_ids(), [signer.key_id()]);
        assert_eq!(verifying.verify(&signed), Ok(()));
        for name in SIGNED_FIELDS {
            let mut changed = signed.clone();
            for (k, v) in &mut changed {
                if *k == name {
                    v.push('x');
                }
            }
            assert!(verifying.verify(&changed).is_err(), "{name} changed");
        }
        let mut traced = signed.clone();
        traced.push((
            fields::TRACEPARENT,
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
        ));
        assert_eq!(verifying.verify(&traced), Ok(()), "telemetry is not signed");
    }

    #[test]
    fn unsigned_unknown_and_foreign_signatures_are_told_apart() {
        let (signer, verifying) = keys();
        let (other, _) = keys();
        assert_eq!(verifying.verify(&entry()), Err(Unverified::Unsigned));
        let mut foreign = entry();
        other.sign(&mut foreign).expect("signs");
        assert_eq!(
            verifying.verify(&foreign),
            Err(Unverified::UnknownKey(other.key_id().to_owned()))
        );
        // Another key's signature under this key's id.
        let mut mislabelled = foreign.clone();
        for (k, v) in &mut mislabelled {
            if *k == fields::KEY_ID {
                *v = signer.key_id().to_owned();
            }
        }
        assert!(matches!(
            verifying.verify(&mislabelled),
            Err(Unverified::BadSignature(_))
        ));
    }

    #[test]
    fn a_batch_is_verified_at_once_and_a_bad_entry_in_it_is_told_apart() {
        let (signer, verifying) = keys();
        let (other, _) = keys();
        let signed = |i: usize, by: &EventSigner| {
            let mut entry = entry();
            entry[0].1 = format!("01937a2e-5c00-7000-8000-{i:012}");
            by.sign(&mut entry).expect("signs");
            entry
        };
        let mut batch: Vec<_> = (0..8).map(|i| signed(i, &signer)).collect();
        let all: Vec<&[(&str, String)]> = batch.iter().map(Vec::as_slice).collect();
        assert!(verifying.verify_all(&all).iter().all(Result::is_ok));
        // One changed after signing, one signed by another key under this key's id, one
        // unsigned: each told, the rest stand.
        batch[2][6].1.push(' ');
        batch[5] = signed(5, &other);
        batch[5].retain(|(k, _)| *k != fields::KEY_ID);
        batch[5].push((fields::KEY_ID, signer.key_id().to_owned()));
        batch[7].retain(|(k, _)| *k != fields::SIGNATURE);
        let all: Vec<&[(&str, String)]> = batch.iter().map(Vec::as_slice).collect();
        let verdicts = verifying.verify_all(&all);
        for (i, verdict) in verdicts.iter().enumerate() {
            match i {
                2 | 5 => assert!(matches!(verdict, Err(Unverified::BadSignature(_))), "{i}"),
                7 => assert_eq!(verdict, &Err(Unverified::Unsigned)),
                _ => assert_eq!(verdict, &Ok(()), "{i}"),
            }
        }
        let one: Vec<&[(&str, String)]> = vec![&batch[2]];
        assert!(
            verifying.verify_all(&one)[0].is_err(),
            "a batch of one is checked too"
        );
    }

    #[test]
    fn a_batch_signature_holds_for_each_entry_alone_and_for_nothing_changed() {
        let (signer, verifying) = keys();
        let mut batch = entries(5);
        signer.sign_all(&mut batch).expect("signs");
        let field = |entry: &[(&str, String)], name: &str| {
            entry
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.clone())
        };
        let signature = field(&batch[0], fields::SIGNATURE);
        assert!(
            batch
                .iter()
                .all(|e| field(e, fields::SIGNATURE) == signature)
        );
        for entry in &batch {
            assert_eq!(verifying.verify(entry), Ok(()), "each entry alone");
        }
        let set = |entry: &[(&'static str, String)], name: &'static str, value: String| {
            let mut changed = entry.to_vec();
            changed.retain(|(k, _)| *k != name);
            changed.push((name, value));
            changed
        };
        for name in SIGNED_FIELDS {
            let mut changed = batch[1].clone();
            for (k, v) in &mut changed {
                if *k == name {
                    v.push('x');
                }
            }
            assert!(verifying.verify(&changed).is_err(), "{name} changed");
        }
        // A genuine entry of the batch made to name another order.
        let moved = set(
            &batch[2],
            fields::ORDER_ID,
            "01937a2e-5c00-7000-8000-000000000999".into(),
        );
        assert!(matches!(
            verifying.verify(&moved),
            Err(Unverified::BadSignature(_))
        ));
        // Another entry's path, no path, and a path that is not one.
        let other_proof = field(&batch[3], fields::SIGNATURE_PROOF).expect("a proof");
        let swapped = set(&batch[2], fields::SIGNATURE_PROOF, other_proof);
        assert!(matches!(
            verifying.verify(&swapped),
            Err(Unverified::BadSignature(_))
        ));
        let mut bare = batch[2].clone();
        bare.retain(|(k, _)| *k != fields::SIGNATURE_PROOF);
        assert!(matches!(
            verifying.verify(&bare),
            Err(Unverified::BadSignature(_))
        ));
        let junk = set(&batch[2], fields::SIGNATURE_PROOF, "not base64!".into());
        assert!(matches!(
            verifying.verify(&junk),
            Err(Unverified::Malformed(_))
        ));
        // An entry signed alone, given a proof: the signature is over the entry, not a root.
        let mut alone = entry();
        signer.sign(&mut alone).expect("signs");
        let grafted = set(&alone, fields::SIGNATURE_PROOF, String::new());
        assert!(matches!(
            verifying.verify(&grafted),
            Err(Unverified::BadSignature(_))
        ));
        // Read together, the genuine ones stand and each changed one is told.
        let all: Vec<&[(&str, String)]> = batch
            .iter()
            .map(Vec::as_slice)
            .chain([moved.as_slice(), swapped.as_slice(), alone.as_slice()])
            .collect();
        let verdicts = verifying.verify_all(&all);
        let standing: Vec<bool> = verdicts.iter().map(Result::is_ok).collect();
        assert_eq!(standing, [true, true, true, true, true, false, false, true]);
    }

    #[test]
    fn the_encoding_is_length_prefixed_so_fields_cannot_shift() {
        let mut a = entry();
        let mut b = entry();
        a.push((fields::KEY_ID, "k".into()));
        b.push((fields::KEY_ID, "k".into()));
        for (k, v) in &mut a {
            if *k == fields::ORDER_ID {
                v.push('a');
            }
        }
        for (k, v) in &mut b {
            if *k == fields::OCCURRED_AT {
                v.insert(0, 'a');
            }
        }
        assert_ne!(signed_bytes(&a), signed_bytes(&b));
        let mut twice = a.clone();
        twice.push((fields::PAYLOAD, "{}".into()));
        assert!(matches!(
            signed_bytes(&twice),
            Err(Unverified::Malformed(_))
        ));
    }

    #[test]
    fn keys_written_by_earlier_builds_are_read() {
        // Builds before 2026-12-02 wrote ring's PKCS#8 v2 (the public key included).
        let v2 = ring::signature::Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new())
            .expect("a key");
        let signer = EventSigner::from_pem(&pem("PRIVATE KEY", v2.as_ref())).expect("reads v2");
        let pair = ring::signature::Ed25519KeyPair::from_pkcs8(v2.as_ref()).expect("reads");
        let public = ring::signature::KeyPair::public_key(&pair).as_ref();
        assert_eq!(signer.key_id(), key_id_of(public));
    }

    const PINNED_KEY_ID: &str = "e744c0791320c328";
    const PINNED_SIGNATURE: &str =
        "b3LKMj97xJRAQz6hmd5w+GtDLU2cciROKwSMtLzEyQlyD8/ba8RnO9f7cleYVdOMXwpYVwdM07yyiGjj3NsGBA==";

    const PINNED_BATCH_SIGNATURE: &str =
        "OASB14TqAVy8V0NO9Eua3cQsSAIAzwraE7z0jNcz1edpmm0o2U1ajzV1Qm/XfzCoFuf2lOtWpgdNjmVkscfDAg==";
    const PINNED_BATCH_PROOF: &str = "TKF6cK83D5i2rrjCuFz02e1pzQ5kQHtkNiIxfsoW3hPD";

    #[test]
    fn keys_made_by_openssl_are_read() {
        // `openssl genpkey -algorithm ed25519` and `openssl pkey -pubout` (RFC 8410's
        // test key).
        let private = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEINTuctv5E1hK1bbY8fdp+K06/nwoy/HU++CXqI9EdVhC\n-----END PRIVATE KEY-----\n";
        let public = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=\n-----END PUBLIC KEY-----\n";
        let signer = EventSigner::from_pem(private).expect("reads a PKCS#8 v1 key");
        let verifying = VerifyingKeys::from_pem(public).expect("reads");
        let mut signed = entry();
        signer.sign(&mut signed).expect("signs");
        assert_eq!(verifying.verify(&signed), Ok(()));
        // Ed25519 is deterministic: the canonical encoding of this entry, pinned. It is
        // the contract between builds: a change here breaks every deployed consumer.
        let field = |name: &str| {
            signed
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(field(fields::KEY_ID).as_deref(), Some(PINNED_KEY_ID));
        assert_eq!(field(fields::SIGNATURE).as_deref(), Some(PINNED_SIGNATURE));
        // And a batch of three: its one signature, and the third entry's path.
        let mut batch = entries(3);
        signer.sign_all(&mut batch).expect("signs");
        let field = |name: &str| {
            batch[2]
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(
            field(fields::SIGNATURE).as_deref(),
            Some(PINNED_BATCH_SIGNATURE)
        );
        assert_eq!(
            field(fields::SIGNATURE_PROOF).as_deref(),
            Some(PINNED_BATCH_PROOF)
        );
        assert!(VerifyingKeys::from_pem("").is_err());
        assert!(EventSigner::from_pem(public).is_err());
    }

    #[test]
    fn signing_again_replaces_the_earlier_signature() {
        let (first, _) = keys();
        let (second, verifying) = keys();
        let mut signed = entry();
        first.sign(&mut signed).expect("signs");
        second.sign(&mut signed).expect("signs again");
        let count = |name: &str| signed.iter().filter(|(k, _)| *k == name).count();
        assert_eq!((count(fields::KEY_ID), count(fields::SIGNATURE)), (1, 1));
        assert_eq!(verifying.verify(&signed), Ok(()));
    }

    #[test]
    fn a_signer_shows_its_key_id_and_never_its_key() {
        let (private, _) = EventSigner::generate_pem().expect("a key");
        let signer = EventSigner::from_pem(&private).expect("reads");
        let shown = format!("{signer:?}");
        assert!(shown.contains(signer.key_id()), "{shown}");
        let secret: String = private
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect();
        assert!(!shown.contains(&secret[16..32]), "{shown}");
    }

    #[test]
    fn a_key_bound_to_a_producer_signs_for_that_producer_only() {
        let (private, public) = EventSigner::generate_pem().expect("a key");
        let (other_private, other_public) = EventSigner::generate_pem().expect("a key");
        let (signer, other) = (
            EventSigner::from_pem(&private).expect("reads"),
            EventSigner::from_pem(&other_private).expect("reads"),
        );
        // What a consumer of both producers holds: each key bound to its producer.
        let accepts = [
            EventSigner::bind_to_producer(&public, "order-service"),
            EventSigner::bind_to_producer(&other_public, "payment-service"),
        ]
        .concat();
        let verifying = VerifyingKeys::from_pem(&accepts).expect("reads");
        assert!(verifying.unbound_key_ids().is_empty());
        let mut genuine = entry();
        signer.sign(&mut genuine).expect("signs");
        assert_eq!(verifying.verify(&genuine), Ok(()));
        // An order-service event signed with payment-service's key: a good signature,
        // the wrong producer.
        let mut foreign = entry();
        other.sign(&mut foreign).expect("signs");
        assert_eq!(
            verifying.verify(&foreign),
            Err(Unverified::ForeignProducer {
                key_id: other.key_id().to_owned(),
                bound: "payment-service".into(),
                named: "order-service".into(),
            })
        );
        // Unbound keys (openssl's, or files before bindings) accept any producer.
        let unbound = VerifyingKeys::from_pem(&[public, other_public].concat()).expect("reads");
        assert_eq!(unbound.unbound_key_ids().len(), 2);
        assert_eq!(unbound.verify(&foreign), Ok(()));
        assert!(VerifyingKeys::from_pem(&EventSigner::bind_to_producer(
            "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=\n-----END PUBLIC KEY-----\n",
            ""
        ))
        .is_err());
    }

    #[test]
    fn an_empty_or_unfinished_key_block_is_an_error_not_a_panic() {
        for text in [
            "-----BEGIN PUBLIC KEY-----\n-----END PUBLIC KEY-----\n",
            "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA\n",
            "-----BEGIN PUBLIC KEY-----\nnot base64!\n-----END PUBLIC KEY-----\n",
        ] {
            assert!(VerifyingKeys::from_pem(text).is_err(), "{text}");
        }
    }
}
