//! `event-keys <folder> <service>...`: makes the event signing keys of each service that
//! has none yet in `<folder>`: `<service>.key` (its private key, PKCS#8 PEM, readable by
//! its owner only) and `<service>.pub` (its public key, for its consumers'
//! `VERIFYING_KEYS_FILE`). Keys already there are left alone, so it is safe at every
//! start (compose and `scripts/run-local.sh` run it for demo keys). A production
//! deployment makes its keys once, keeps the private ones secret and gives each service
//! only its own (`openssl genpkey -algorithm ed25519` makes the same kind).

use std::path::Path;
use std::process::ExitCode;

use events::EventSigner;

fn make(folder: &Path, service: &str) -> Result<bool, String> {
    let (private, public) = (
        folder.join(format!("{service}.key")),
        folder.join(format!("{service}.pub")),
    );
    let in_public = |e: std::io::Error| format!("{}: {e}", public.display());
    if private.exists() && public.exists() {
        let pem = std::fs::read_to_string(&public).map_err(in_public)?;
        if !pem.contains("Producer:") {
            std::fs::write(&public, EventSigner::bind_to_producer(&pem, service))
                .map_err(in_public)?;
        }
        return Ok(false);
    }
    let (private_pem, public_pem) = EventSigner::generate_pem().map_err(|e| e.to_string())?;
    write_private(&private, &private_pem).map_err(|e| format!("{}: {e}", private.display()))?;
    std::fs::write(&public, EventSigner::bind_to_producer(&public_pem, service))
        .map_err(in_public)?;
    Ok(true)
}

#[cfg(unix)]
fn write_private(path: &Path, pem: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?
        .write_all(pem.as_bytes())
}

#[cfg(not(unix))]
fn write_private(path: &Path, pem: &str) -> std::io::Result<()> {
    std::fs::write(path, pem)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((folder, services)) = args.split_first().filter(|(_, s)| !s.is_empty()) else {
        eprintln!("usage: event-keys <folder> <service>...");
        return ExitCode::from(2);
    };
    let folder = Path::new(folder);
    if let Err(e) = std::fs::create_dir_all(folder) {
        eprintln!("{}: {e}", folder.display());
        return ExitCode::FAILURE;
    }
    for service in services {
        match make(folder, service) {
            Ok(true) => println!("made the event keys of {service} in {}", folder.display()),
            Ok(false) => println!("{service} has its event keys in {}", folder.display()),
            Err(e) => {
                eprintln!("cannot make the keys of {service}: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}
