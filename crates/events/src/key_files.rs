//! Key files (SPEC §4.9): PEM blocks as `openssl` writes them, PKCS#8 v1 private keys and
//! SPKI public keys of Ed25519, a key's id, and the `Producer:` line that binds a public
//! key to the service it signs for. What a signature covers is `signing.rs`'s.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

/// The DER prefix of an Ed25519 `SubjectPublicKeyInfo`; the 32-byte key follows.
pub(crate) const SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// The DER prefix of an Ed25519 PKCS#8 v1 `PrivateKeyInfo` (RFC 8410, what `openssl
/// genpkey` writes); the 32-byte seed follows.
pub(crate) const PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// A key that could not be read or made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct KeyError(pub(crate) String);

/// The id of a public key: the first 8 bytes of its SHA-256, in hex.
pub(crate) fn key_id_of(public_key: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, public_key);
    digest.as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// What binds a public key to its producer: a line of explanatory text just before the
/// block.
pub(crate) const PRODUCER_LINE: &str = "Producer:";

/// The DER of each PEM block labelled `label` in `text`.
pub(crate) fn pem_blocks(text: &str, label: &str) -> Result<Vec<Vec<u8>>, KeyError> {
    Ok(pem_blocks_bound(text, label)?
        .into_iter()
        .map(|(der, _)| der)
        .collect())
}

/// A PEM block's DER, with the producer a `Producer:` line just before it names, if any.
pub(crate) type BoundBlock = (Vec<u8>, Option<String>);

/// The DER of each PEM block labelled `label` in `text`, with the producer named by a
/// `Producer:` line just before it, if there is one.
pub(crate) fn pem_blocks_bound(text: &str, label: &str) -> Result<Vec<BoundBlock>, KeyError> {
    let (begin, end) = (
        format!("-----BEGIN {label}-----"),
        format!("-----END {label}-----"),
    );
    let mut blocks = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(&begin) {
        let body = &rest[start + begin.len()..];
        let stop = body
            .find(&end)
            .ok_or_else(|| KeyError(format!("a {label} block without its END line")))?;
        let base64: String = body[..stop].split_whitespace().collect();
        let der = STANDARD
            .decode(base64)
            .map_err(|e| KeyError(format!("a {label} block is not base64: {e}")))?;
        let producer = rest[..start]
            .lines()
            .rev()
            .find(|line| !line.trim().is_empty())
            .and_then(|line| line.trim().strip_prefix(PRODUCER_LINE))
            .map(|name| name.trim().to_owned());
        if producer.as_deref() == Some("") {
            return Err(KeyError(format!("a `{PRODUCER_LINE}` line without a name")));
        }
        blocks.push((der, producer));
        rest = &body[stop + end.len()..];
    }
    Ok(blocks)
}

/// `der` as a PEM block labelled `label`.
pub(crate) fn pem(label: &str, der: &[u8]) -> String {
    let base64 = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in base64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}
