//! Where the shared servers are: `DATABASE_URL` and `REDIS_URL` when set (CI sets them),
//! otherwise Postgres 16 and Redis 7.2 containers started once per test process with
//! testcontainers (needs Docker).

use std::sync::OnceLock;

/// Where the shared servers are.
#[derive(Debug, Clone)]
pub struct Backends {
    /// A database on the server that may create others (`postgres`, say).
    pub database_url: String,
    pub redis_url: String,
}

static BACKENDS: OnceLock<Backends> = OnceLock::new();

/// The servers of this test process: from the environment, or containers.
pub fn backends() -> &'static Backends {
    BACKENDS.get_or_init(
        || match (std::env::var("DATABASE_URL"), std::env::var("REDIS_URL")) {
            (Ok(database_url), Ok(redis_url)) => Backends {
                database_url,
                redis_url,
            },
            _ => containers::start(),
        },
    )
}

/// Containers for machines without `DATABASE_URL`/`REDIS_URL`. Kept for the whole test
/// process (statics are never dropped).
mod containers {
    use std::sync::OnceLock;

    use testcontainers_modules::postgres::Postgres;
    use testcontainers_modules::redis::Redis;
    use testcontainers_modules::testcontainers::runners::SyncRunner;
    use testcontainers_modules::testcontainers::{Container, ImageExt};

    use super::Backends;

    static RUNNING: OnceLock<(Container<Postgres>, Container<Redis>)> = OnceLock::new();

    pub(super) fn start() -> Backends {
        // The sync runner has its own runtime: start it off any async test's runtime.
        let started = std::thread::spawn(|| {
            let postgres = Postgres::default().with_tag("16-alpine").start()?;
            let redis = Redis::default().with_tag("7.2-alpine").start()?;
            let backends = Backends {
                database_url: format!(
                    "postgres://postgres:postgres@{}:{}/postgres",
                    postgres.get_host()?,
                    postgres.get_host_port_ipv4(5432)?
                ),
                redis_url: format!(
                    "redis://{}:{}",
                    redis.get_host()?,
                    redis.get_host_port_ipv4(6379)?
                ),
            };
            let _ = RUNNING.set((postgres, redis));
            Ok::<_, testcontainers_modules::testcontainers::TestcontainersError>(backends)
        })
        .join();
        match started {
            Ok(Ok(backends)) => backends,
            Ok(Err(e)) => panic!(
                "DATABASE_URL and REDIS_URL are not set and containers could not start ({e}); \
                 set them to a Postgres and a Redis, or run with Docker available"
            ),
            Err(_) => panic!("starting test containers panicked"),
        }
    }
}

/// `url` with its database name replaced by `name`.
pub fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let host_and_path = &base[scheme_end..];
    let host = host_and_path.split('/').next().unwrap_or_default();
    let mut out = format!("{}{host}/{name}", &base[..scheme_end]);
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn replaces_the_database_name() {
        assert_eq!(
            with_database("postgres://u:p@h:5432/postgres", "x"),
            "postgres://u:p@h:5432/x"
        );
        assert_eq!(with_database("postgres://h", "x"), "postgres://h/x");
        assert_eq!(
            with_database("postgres://h/db?sslmode=disable", "x"),
            "postgres://h/x?sslmode=disable"
        );
    }
}
