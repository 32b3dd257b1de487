//! The event keys of the tests' services: one Ed25519 key pair per service, made once per
//! test process in a folder of its own (PEM files, as a deployment has them), so each
//! service signs with its own key and accepts only the other's, as in production.

use std::path::PathBuf;
use std::sync::LazyLock;

use events::EventSigner;
use events::streams::{ORDER_EVENTS, PAYMENT_EVENTS};

/// The services that have keys.
const SERVICES: [&str; 2] = ["order-service", "payment-service"];

/// The folder of the keys: `<service>.key` (private) and `<service>.pub` (public).
static KEYS: LazyLock<PathBuf> = LazyLock::new(|| {
    let dir = std::env::temp_dir().join(format!("testkit-keys-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a folder for the test keys");
    for service in SERVICES {
        let (private, public) = EventSigner::generate_pem().expect("a key pair");
        std::fs::write(dir.join(format!("{service}.key")), private).expect("writes the key");
        std::fs::write(dir.join(format!("{service}.pub")), public).expect("writes the key");
    }
    dir
});

/// The private key file of `service`.
pub fn signing_key_file(service: &str) -> PathBuf {
    KEYS.join(format!("{service}.key"))
}

/// The public key file of `service`: what its consumers accept.
pub fn public_key_file(service: &str) -> PathBuf {
    KEYS.join(format!("{service}.pub"))
}

/// The service whose events `service` consumes.
fn producer_for(service: &str) -> Option<&'static str> {
    match service {
        "order-service" => Some("payment-service"),
        "payment-service" => Some("order-service"),
        _ => None,
    }
}

/// `SIGNING_KEY_FILE` and `VERIFYING_KEYS_FILE` of `service` (none for another name), as
/// environment variables.
pub fn signing_env(service: &str) -> Vec<(&'static str, String)> {
    let Some(producer) = producer_for(service) else {
        return Vec::new();
    };
    vec![
        (
            "SIGNING_KEY_FILE",
            signing_key_file(service).display().to_string(),
        ),
        (
            "VERIFYING_KEYS_FILE",
            public_key_file(producer).display().to_string(),
        ),
    ]
}

/// The same, as command-line flags.
pub fn signing_args(service: &str) -> Vec<String> {
    signing_env(service)
        .into_iter()
        .flat_map(|(name, value)| {
            [
                format!("--{}", name.to_lowercase().replace('_', "-")),
                value,
            ]
        })
        .collect()
}

/// The signing keys, read back from their files.
static SIGNERS: LazyLock<Vec<(&'static str, EventSigner)>> = LazyLock::new(|| {
    SERVICES
        .into_iter()
        .map(|service| {
            let pem = std::fs::read_to_string(signing_key_file(service)).expect("the key");
            (service, EventSigner::from_pem(&pem).expect("a key"))
        })
        .collect()
});

/// Signs `entry` with the key of the producer of the logical stream `logical`, as that
/// service would (no key for another stream: left as it is). An entry lacking a signed
/// field is left unsigned: it is not an event anyway.
pub fn sign_as_producer(logical: &str, entry: &mut Vec<(String, Vec<u8>)>) {
    match logical {
        ORDER_EVENTS => sign_with("order-service", entry),
        PAYMENT_EVENTS => sign_with("payment-service", entry),
        _ => {}
    }
}

/// Signs `entry` with the key of `service` (a forger holding the wrong key, in a test).
pub fn sign_with(service: &str, entry: &mut Vec<(String, Vec<u8>)>) {
    if let Some((_, signer)) = SIGNERS.iter().find(|(name, _)| *name == service) {
        let _unsigned_if_not_an_event = signer.sign(entry);
    }
}
