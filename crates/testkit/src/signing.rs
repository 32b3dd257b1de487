//! The event keys of the tests' services: one Ed25519 key pair per service, made once per
//! test process in a folder of its own (PEM files, as a deployment has them), so each
//! service signs with its own key and accepts only those of the services it reads, as in
//! production.

use std::path::PathBuf;
use std::sync::LazyLock;

use events::EventSigner;
use events::streams::{ORDER_EVENTS, PAYMENT_EVENTS};

/// The services that have keys.
const SERVICES: [&str; 3] = ["order-service", "payment-service", "shipping-service"];

/// The folder of the keys: `<service>.key` (private), `<service>.pub` (public) and
/// `<service>.accepts` (the public keys of the services it reads).
static KEYS: LazyLock<PathBuf> = LazyLock::new(|| {
    let dir = std::env::temp_dir().join(format!("testkit-keys-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a folder for the test keys");
    let mut public_keys = Vec::new();
    for service in SERVICES {
        let (private, public) = EventSigner::generate_pem().expect("a key pair");
        let public = EventSigner::bind_to_producer(&public, service);
        std::fs::write(dir.join(format!("{service}.key")), private).expect("writes the key");
        std::fs::write(dir.join(format!("{service}.pub")), &public).expect("writes the key");
        public_keys.push((service, public));
    }
    for service in SERVICES {
        let accepted: String = public_keys
            .iter()
            .filter(|(producer, _)| producers_for(service).contains(producer))
            .map(|(_, public)| public.as_str())
            .collect();
        std::fs::write(dir.join(format!("{service}.accepts")), accepted).expect("writes keys");
    }
    dir
});

/// The private key file of `service`.
pub fn signing_key_file(service: &str) -> PathBuf {
    KEYS.join(format!("{service}.key"))
}

/// The services whose events `service` consumes.
fn producers_for(service: &str) -> &'static [&'static str] {
    match service {
        "order-service" => &["payment-service"],
        "payment-service" => &["order-service"],
        "shipping-service" => &["order-service", "payment-service"],
        _ => &[],
    }
}

/// `SIGNING_KEY_FILE` and `VERIFYING_KEYS_FILE` of `service` (none for another name), as
/// environment variables, with `SIGNATURE_SCOPE=batch` (every reader in a test runs this
/// build, but for the previous release of the rolling-upgrade test, which sets its own).
pub fn signing_env(service: &str) -> Vec<(&'static str, String)> {
    if producers_for(service).is_empty() {
        return Vec::new();
    }
    vec![
        (
            "SIGNING_KEY_FILE",
            signing_key_file(service).display().to_string(),
        ),
        (
            "VERIFYING_KEYS_FILE",
            KEYS.join(format!("{service}.accepts"))
                .display()
                .to_string(),
        ),
        ("SIGNATURE_SCOPE", "batch".to_owned()),
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

/// Signs `entries` with the key of `service` as one batch (`SIGNATURE_SCOPE=batch`: one
/// signature over a hash tree, each entry its path), as that service signs the events of
/// one statement.
pub fn sign_batch_with(service: &str, entries: &mut [Vec<(String, Vec<u8>)>]) {
    if let Some((_, signer)) = SIGNERS.iter().find(|(name, _)| *name == service) {
        let _unsigned_if_not_events = signer.sign_all(entries);
    }
}

/// Signs `entry` with the key of `service` (a forger holding the wrong key, in a test).
pub fn sign_with(service: &str, entry: &mut Vec<(String, Vec<u8>)>) {
    if let Some((_, signer)) = SIGNERS.iter().find(|(name, _)| *name == service) {
        let _unsigned_if_not_an_event = signer.sign(entry);
    }
}
