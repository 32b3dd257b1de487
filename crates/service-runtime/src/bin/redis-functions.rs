//! `redis-functions`: loads the runtime's Redis Functions library ([`functions`]) into the
//! Redis (or every master of the cluster) at `REDIS_URL`, as a user allowed
//! `FUNCTION LOAD` (the `functions` user of `deploy/redis/users.acl`). The services' own
//! users may only call it. Safe to run at every start: it replaces the library by the
//! same.
//!
//! - `redis-functions`: loads it once (an init container, a deploy step).
//! - `redis-functions --watch <ms>`: loads it, then again every `<ms>`, so that a Redis
//!   restarted empty (no persistence, a replaced node) has it back within `<ms>` and the
//!   services, which wait and retry meanwhile, go on by themselves (SPEC §4.6). Compose
//!   runs it this way.
//! - `redis-functions --check`: exits 0 if the library is loaded (a health check).
//!
//! [`functions`]: service_runtime::functions

use std::process::ExitCode;
use std::time::Duration;

use service_runtime::RedisConnection;
use service_runtime::functions::{LIBRARY_NAME, is_loaded, load};
use service_runtime::service::shutdown_signal;
use service_runtime::settings::SecretUrl;
use service_runtime::settings::redis_url;

const USAGE: &str =
    "usage: REDIS_URL=redis://user:password@host:port redis-functions [--watch <ms> | --check]";

enum Mode {
    Once,
    Watch(Duration),
    Check,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mode = match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        [] => Mode::Once,
        ["--check"] => Mode::Check,
        ["--watch", ms] => match ms.parse::<u64>() {
            Ok(ms) if ms > 0 => Mode::Watch(Duration::from_millis(ms)),
            _ => {
                eprintln!("--watch: {ms:?} is not a positive number of milliseconds");
                return ExitCode::from(2);
            }
        },
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let url = match std::env::var("REDIS_URL").map(|url| redis_url(&url)) {
        Ok(Ok(url)) => url,
        Ok(Err(e)) => {
            eprintln!("REDIS_URL: {e}");
            return ExitCode::from(2);
        }
        Err(_) => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match mode {
        Mode::Once => match load_into(&url).await {
            Ok(()) => {
                println!("loaded {LIBRARY_NAME} into {url}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("cannot load {LIBRARY_NAME} into {url}: {e}");
                ExitCode::FAILURE
            }
        },
        Mode::Check => {
            let loaded = async {
                let mut redis = RedisConnection::connect_for_commands(url.expose()).await?;
                is_loaded(&mut redis).await
            };
            match loaded.await {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => {
                    eprintln!("{LIBRARY_NAME} is not loaded in {url}");
                    ExitCode::FAILURE
                }
                Err(e) => {
                    eprintln!("cannot ask {url}: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Mode::Watch(every) => watch(&url, every).await,
    }
}

/// Loads the library every `every`, saying only when that starts or stops working.
async fn watch(url: &SecretUrl, every: Duration) -> ExitCode {
    let mut failing = None;
    let stop = shutdown_signal();
    tokio::pin!(stop);
    loop {
        match load_into(url).await {
            Ok(()) if failing != Some(false) => {
                println!("loaded {LIBRARY_NAME} into {url}; loading it again every {every:?}");
                failing = Some(false);
            }
            Err(e) if failing != Some(true) => {
                eprintln!("cannot load {LIBRARY_NAME} into {url} (trying every {every:?}): {e}");
                failing = Some(true);
            }
            _ => {}
        }
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = &mut stop => return ExitCode::SUCCESS,
        }
    }
}

async fn load_into(url: &SecretUrl) -> redis::RedisResult<()> {
    let mut redis = RedisConnection::connect_for_commands(url.expose()).await?;
    load(&mut redis).await
}
