//! Settings both services share (SPEC §7): env vars, each also a CLI flag, validated once
//! at start-up. A bad value is one readable line on stderr and exit code 2.

use std::time::Duration;

use clap::error::ErrorKind;
use events::{SchemaVersion, SignatureScope};

use crate::signatures::{SignatureMode, Signatures};

use crate::http_server::HttpLimits;
pub use crate::secret_url::SecretUrl;
pub use crate::session_bounds::DatabaseBounds;
pub(crate) use values::admin_token;
pub use values::{Secret, database_url, redis_url};
use values::{consumer_name, namespace, otlp_endpoint};

mod values;

/// Log output: `pretty` for people, `json` for log shippers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Pretty,
    /// One JSON object per line.
    Json,
}

/// Settings of the stream runtime (consumer side).
#[derive(Debug, Clone, clap::Args)]
pub struct StreamSettings {
    /// Prefix of every stream key (`ns` gives `ns:order-events`); empty for none.
    #[arg(long, env = "STREAM_NAMESPACE", default_value = "", value_parser = namespace)]
    pub stream_namespace: String,
    /// This process's name in its consumer group; default `hostname-pid`.
    #[arg(long, env = "CONSUMER_NAME", value_parser = consumer_name)]
    pub consumer_name: Option<String>,
    /// Entries per `XREADGROUP` (`COUNT`): the most one batch transaction applies. A
    /// batch costs a fixed number of round trips and one commit whatever its size, so
    /// large batches are what lets the consumers keep up under load.
    #[arg(long, env = "READ_COUNT", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub read_count: u32,
    /// How long a read waits for new entries (`BLOCK`), in ms.
    #[arg(long, env = "READ_BLOCK_MS", default_value_t = 2000, value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub read_block_ms: u64,
    /// Deliveries after which an entry is dead-lettered instead of retried.
    #[arg(long, env = "MAX_DELIVERIES", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub max_deliveries: u64,
    /// Entries pending longer than this (ms) in any consumer are reclaimed (`XAUTOCLAIM`):
    /// their consumer is taken for dead. Keep it well above the time a batch takes.
    #[arg(long, env = "CLAIM_MIN_IDLE_MS", default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(100..=86_400_000))]
    pub claim_min_idle_ms: u64,
    /// An entry whose fields take more bytes than this is dead-lettered by its id without
    /// being read into the service (SPEC §4.9). At least twice the 64 KiB body limit: no
    /// event the services make from a request comes near it.
    #[arg(long, env = "MAX_ENTRY_BYTES", default_value_t = 262_144, value_parser = clap::value_parser!(u64).range(131_072..=67_108_864))]
    pub max_entry_bytes: u64,
    /// How many transactions a consumer spreads a batch over at once, each on its own
    /// database connection (keep below `DATABASE_MAX_CONNECTIONS`). One is fastest while
    /// handlers are set-based: every extra transaction is an extra commit.
    #[arg(long, env = "CONSUMER_PARALLELISM", default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=64))]
    pub consumer_parallelism: u64,
}

impl StreamSettings {
    /// The configured consumer name, or `hostname-pid` (unique per process, so replicas
    /// never share a pending list).
    pub fn consumer_name(&self) -> String {
        self.consumer_name.clone().unwrap_or_else(|| {
            format!(
                "{}-{}",
                gethostname::gethostname().to_string_lossy(),
                std::process::id()
            )
        })
    }
}

/// How long each store keeps what it holds (every store is bounded; see
/// [`retention`](crate::retention)).
#[derive(Debug, Clone, clap::Args)]
pub struct RetentionSettings {
    /// The consumed stream keeps entries this long (ms) for inspection; older ones are
    /// trimmed, but never one a consumer group on the stream has not acknowledged.
    #[arg(long, env = "STREAM_RETENTION_MS", default_value_t = 3_600_000, value_parser = clap::value_parser!(u64).range(0..=31_536_000_000))]
    pub stream_retention_ms: u64,
    /// How often (ms) the consumed stream and its dead letters are trimmed and dead
    /// consumers removed.
    #[arg(long, env = "STREAM_TRIM_INTERVAL_MS", default_value_t = 60_000, value_parser = clap::value_parser!(u64).range(10..=86_400_000))]
    pub stream_trim_interval_ms: u64,
    /// Dead letters are kept this long (hours), then trimmed.
    #[arg(long, env = "DLQ_RETENTION_HOURS", default_value_t = 336, value_parser = clap::value_parser!(u64).range(1..=87_600))]
    pub dlq_retention_hours: u64,
    /// Inbox rows (the ids of applied events) are kept this long (hours); must exceed
    /// `OUTBOX_RETENTION_HOURS`, the longest an event can be re-published.
    #[arg(long, env = "INBOX_RETENTION_HOURS", default_value_t = 336, value_parser = clap::value_parser!(u64).range(1..=87_600))]
    pub inbox_retention_hours: u64,
    /// A consumer of the group idle this long (ms) with nothing pending is removed from
    /// it (each restart adds a `hostname-pid`).
    #[arg(long, env = "CONSUMER_IDLE_DELETE_MS", default_value_t = 3_600_000, value_parser = clap::value_parser!(u64).range(1_000..=31_536_000_000))]
    pub consumer_idle_delete_ms: u64,
}

impl RetentionSettings {
    /// `STREAM_RETENTION_MS`.
    pub fn stream_retention(&self) -> Duration {
        Duration::from_millis(self.stream_retention_ms)
    }

    /// `STREAM_TRIM_INTERVAL_MS`.
    pub fn stream_trim_interval(&self) -> Duration {
        Duration::from_millis(self.stream_trim_interval_ms)
    }

    /// `DLQ_RETENTION_HOURS`.
    pub fn dead_letter_retention(&self) -> Duration {
        Duration::from_secs(self.dlq_retention_hours * 3600)
    }

    /// `INBOX_RETENTION_HOURS`.
    pub fn inbox_retention(&self) -> Duration {
        Duration::from_secs(self.inbox_retention_hours * 3600)
    }

    /// `CONSUMER_IDLE_DELETE_MS`.
    pub fn consumer_idle_delete(&self) -> Duration {
        Duration::from_millis(self.consumer_idle_delete_ms)
    }
}

/// Settings every service has.
#[derive(Debug, Clone, clap::Args)]
pub struct CommonSettings {
    /// Postgres URL of this service's own database.
    #[arg(long, env = "DATABASE_URL", value_parser = database_url)]
    pub database_url: SecretUrl,
    /// Largest number of Postgres connections in the pool.
    #[arg(long, env = "DATABASE_MAX_CONNECTIONS", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub database_max_connections: u32,
    #[command(flatten)]
    /// How long a statement, a lock wait and an idle transaction may take (SPEC §4.9).
    pub database_bounds: DatabaseBounds,
    /// Redis URL.
    #[arg(long, env = "REDIS_URL", value_parser = redis_url)]
    pub redis_url: SecretUrl,
    #[command(flatten)]
    /// How the consumer reads its streams.
    pub stream: StreamSettings,
    /// Published outbox rows are kept this long (hours), so they can be re-published
    /// after a broker loss, then deleted.
    #[arg(long, env = "OUTBOX_RETENTION_HOURS", default_value_t = 168, value_parser = clap::value_parser!(u64).range(1..=87_600))]
    pub outbox_retention_hours: u64,
    #[command(flatten)]
    /// How long each store keeps what it no longer needs.
    pub retention: RetentionSettings,
    /// The `schema_version` this service writes its events as (SPEC §3.4): every reader of
    /// them must read it. In a rolling upgrade, switch it only once every replica of every
    /// reader runs a build that reads the new version; switch it back before rolling a
    /// reader back. This build reads 1 and 2.
    #[arg(long, env = "WRITE_SCHEMA_VERSION", default_value_t = SchemaVersion::WRITTEN_BY_DEFAULT)]
    pub write_schema_version: SchemaVersion,
    /// PEM file of this service's Ed25519 signing key (PKCS#8 `PRIVATE KEY`): every event
    /// it writes is signed with it. Required unless `SIGNATURES=off`.
    #[arg(long, env = "SIGNING_KEY_FILE")]
    pub signing_key_file: Option<std::path::PathBuf>,
    /// PEM file of the public keys (`PUBLIC KEY` blocks) of the service whose events this
    /// one consumes: entries signed by any of them are accepted (two during a rotation).
    /// Required with `SIGNATURES=require`.
    #[arg(long, env = "VERIFYING_KEYS_FILE")]
    pub verifying_keys_file: Option<std::path::PathBuf>,
    /// `require`: an entry not signed by an accepted key is dead-lettered as forged;
    /// `report`: applied and counted (the step of an upgrade while producers start
    /// signing); `off`: nothing signed or verified.
    #[arg(long, env = "SIGNATURES", value_enum, default_value = "require")]
    pub signatures: SignatureMode,
    /// What one signature covers: `entry`, each event on its own (what every release
    /// reads), or `batch`, the events one statement writes, up to 32 to a signature over
    /// a hash tree (a sixth of the signing and verifying work; read from this release on).
    /// Like `WRITE_SCHEMA_VERSION`: switch it to `batch` once every replica of every
    /// reader runs this release or later, and back before rolling a reader back.
    #[arg(long, env = "SIGNATURE_SCOPE", default_value_t = SignatureScope::Entry)]
    pub signature_scope: SignatureScope,
    /// Bearer token of the admin API (dead letters, and the service's own admin routes); unset or empty, those
    /// routes answer 404 (see [`admin_token`](Self::admin_token)).
    #[arg(long, env = "ADMIN_TOKEN", value_parser = admin_token)]
    pub admin_token: Option<Secret>,
    /// How long shutdown may take before in-flight work is abandoned, in ms.
    #[arg(long, env = "SHUTDOWN_TIMEOUT_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub shutdown_timeout_ms: u64,
    /// Longest time an HTTP request may take before it is answered 503, in ms.
    #[arg(long, env = "REQUEST_TIMEOUT_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub request_timeout_ms: u64,
    /// Time a client has to send a request's headers, in ms; a keep-alive connection
    /// idle that long is closed too.
    #[arg(long, env = "HTTP_HEADER_READ_TIMEOUT_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(100..=600_000))]
    pub http_header_read_timeout_ms: u64,
    /// HTTP connections served at once; one more is answered 503 and closed. Keep it
    /// below the process's open-file limit.
    #[arg(long, env = "HTTP_MAX_CONNECTIONS", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub http_max_connections: u32,
    /// The most a request's line and headers may take, in bytes (nginx and Envoy allow
    /// tens of kB by default); over it, `431`. Also the most one connection buffers.
    #[arg(long, env = "HTTP_MAX_HEADER_BYTES", default_value_t = 16_384, value_parser = clap::value_parser!(u32).range(8_192..=1_048_576))]
    pub http_max_header_bytes: u32,
    /// `/health/live` fails when the consumer or the relay has not come round for this
    /// long (ms): stuck in a step no other bound ended (see [`crate::liveness`]).
    #[arg(long, env = "LIVENESS_STALL_MS", default_value_t = 60_000, value_parser = clap::value_parser!(u64).range(100..=86_400_000))]
    pub liveness_stall_ms: u64,
    /// `pretty` or `json`.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "pretty")]
    pub log_format: LogFormat,
    /// A warning or error repeated from one place in the code is printed once per this
    /// many ms, then summarised with a count (`log_summary.rs`).
    #[arg(long, env = "LOG_SUMMARY_INTERVAL_MS", default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(1_000..=3_600_000))]
    pub log_summary_interval_ms: u64,
    /// OTLP/HTTP collector for traces (e.g. `http://jaeger:4318`); none when unset or empty.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT", value_parser = otlp_endpoint)]
    pub otel_exporter_otlp_endpoint: Option<SecretUrl>,
}

impl CommonSettings {
    /// The admin token, if the admin API is on: an empty `ADMIN_TOKEN` (what a compose
    /// file passes for an unset variable) leaves it off, like an unset one.
    pub fn admin_token(&self) -> Option<Secret> {
        self.admin_token
            .clone()
            .filter(|token| !token.expose().is_empty())
    }

    /// `SHUTDOWN_TIMEOUT_MS`.
    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_millis(self.shutdown_timeout_ms)
    }

    /// `REQUEST_TIMEOUT_MS`.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    /// What the HTTP server allows slow and numerous clients.
    pub fn http_limits(&self) -> HttpLimits {
        HttpLimits {
            header_read_timeout: Duration::from_millis(self.http_header_read_timeout_ms),
            max_connections: self.http_max_connections as usize,
            max_header_bytes: self.http_max_header_bytes as usize,
        }
    }

    /// `OUTBOX_RETENTION_HOURS`.
    pub fn outbox_retention(&self) -> Duration {
        Duration::from_secs(self.outbox_retention_hours * 3600)
    }

    /// `LIVENESS_STALL_MS`.
    pub fn liveness_stall(&self) -> Duration {
        Duration::from_millis(self.liveness_stall_ms)
    }

    /// The longest a consumer may take to come round without being stuck: a reclaim, a
    /// wait for the reading turn and a read (each up to `READ_BLOCK_MS` and the Redis
    /// grace), and one attempt at a batch transaction.
    fn longest_round(&self) -> Duration {
        let block = Duration::from_millis(self.stream.read_block_ms);
        let redis = crate::redis_conn::COMMAND_TIMEOUT;
        self.database_bounds.transaction_deadline() + 2 * (block + redis) + redis
    }

    /// Refuses combinations of values that are each valid but unsafe together.
    pub fn check(&self) -> Result<(), String> {
        self.database_bounds.check(self.request_timeout_ms)?;
        let round = self.longest_round().as_millis() as u64;
        if self.liveness_stall_ms <= round {
            return Err(format!(
                "LIVENESS_STALL_MS ({}) must exceed the {round} ms a consumer may take to come \
                 round (its transaction deadline, two blocking reads of READ_BLOCK_MS, Redis \
                 timeouts): a live loop would be reported stuck",
                self.liveness_stall_ms
            ));
        }
        let retention = &self.retention;
        if retention.inbox_retention_hours <= self.outbox_retention_hours {
            return Err(format!(
                "INBOX_RETENTION_HOURS ({}) must exceed OUTBOX_RETENTION_HOURS ({}): an event \
                 can be re-published that long, and its inbox row is what makes the repeat \
                 harmless",
                retention.inbox_retention_hours, self.outbox_retention_hours
            ));
        }
        let busiest = self.stream.claim_min_idle_ms.max(self.stream.read_block_ms);
        if retention.consumer_idle_delete_ms <= busiest {
            return Err(format!(
                "CONSUMER_IDLE_DELETE_MS ({}) must exceed CLAIM_MIN_IDLE_MS and READ_BLOCK_MS \
                 ({busiest}): a live consumer is never that idle",
                retention.consumer_idle_delete_ms
            ));
        }
        self.signatures().map(|_| ())
    }

    /// The signing key, verifying keys and mode these settings name, read from their files.
    pub fn signatures(&self) -> Result<Signatures, String> {
        Signatures::load(
            self.signatures,
            self.signature_scope,
            self.signing_key_file.as_deref(),
            self.verifying_keys_file.as_deref(),
        )
    }
}

/// A service's settings as a whole: after each value parsed, the combinations are checked
/// (exit code 2 when they are unsafe).
pub trait ServiceSettings: clap::Parser + std::fmt::Debug {
    /// The settings every service shares.
    fn common(&self) -> &CommonSettings;

    /// Refuses unsafe combinations; the default checks the common settings.
    fn check(&self) -> Result<(), String> {
        self.common().check()
    }
}

/// Parses the process's settings and checks them as a whole, or prints one line and exits
/// with code 2. `--help` and `--version` print as usual.
pub fn parse_or_exit<S: ServiceSettings>(service: &str) -> S {
    match S::try_parse() {
        Ok(settings) => match settings.check() {
            Ok(()) => settings,
            Err(e) => {
                eprintln!("{service}: configuration error: {e}");
                std::process::exit(2)
            }
        },
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            e.exit()
        }
        Err(e) => {
            eprintln!("{service}: configuration error: {}", one_line(&e));
            std::process::exit(2)
        }
    }
}

/// clap's message without usage and hints, on one line.
fn one_line(error: &clap::Error) -> String {
    let rendered = error.render().to_string();
    let message: Vec<&str> = rendered
        .lines()
        .take_while(|line| !line.trim().is_empty())
        .map(str::trim)
        .collect();
    message.join(" ").trim_start_matches("error: ").to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Probe {
        #[command(flatten)]
        common: CommonSettings,
    }

    fn parse(args: &[&str]) -> Result<Probe, clap::Error> {
        let base = [
            "probe",
            "--database-url",
            "postgres://u:pw@db/x",
            "--redis-url",
            "redis://r",
        ];
        // Without keys unless a test gives its own mode: the other settings are checked.
        let unsigned: &[&str] = if args.contains(&"--signatures") {
            &[]
        } else {
            &["--signatures", "off"]
        };
        Probe::try_parse_from(base.iter().chain(unsigned).chain(args))
    }

    #[test]
    fn signatures_need_their_keys_and_name_the_setting_that_lacks_one() {
        let dir = std::env::temp_dir().join(format!("settings-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a folder");
        let (private, public) = events::EventSigner::generate_pem().expect("a key");
        let (key, accepted) = (dir.join("own.key"), dir.join("other.pub"));
        std::fs::write(&key, private).expect("writes");
        std::fs::write(&accepted, public).expect("writes");
        let (key, accepted) = (key.display().to_string(), accepted.display().to_string());
        let refused = |args: &[&str], named: &str| {
            let e = parse(args)
                .expect("valid alone")
                .common
                .check()
                .expect_err(named);
            assert!(e.contains(named), "{e}");
        };
        refused(&["--signatures", "require"], "SIGNING_KEY_FILE");
        refused(&["--signatures", "report"], "SIGNING_KEY_FILE");
        refused(
            &["--signatures", "require", "--signing-key-file", &key],
            "VERIFYING_KEYS_FILE",
        );
        refused(
            &[
                "--signatures",
                "require",
                "--signing-key-file",
                &accepted,
                "--verifying-keys-file",
                &accepted,
            ],
            "SIGNING_KEY_FILE",
        );
        refused(
            &[
                "--signatures",
                "require",
                "--signing-key-file",
                "/nonexistent.key",
                "--verifying-keys-file",
                &accepted,
            ],
            "/nonexistent.key",
        );
        let full = [
            "--signatures",
            "require",
            "--signing-key-file",
            &key,
            "--verifying-keys-file",
            &accepted,
        ];
        assert_eq!(parse(&full).expect("valid").common.check(), Ok(()));
        let report = ["--signatures", "report", "--signing-key-file", &key];
        assert_eq!(
            parse(&report).expect("valid").common.check(),
            Ok(()),
            "report verifies what it can"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn passwords_are_redacted() {
        let url =
            database_url("postgres://user:s3cret@db:5432/orders?sslmode=disable").expect("valid");
        assert_eq!(
            url.to_string(),
            "postgres://user:***@db:5432/orders?sslmode=disable"
        );
        assert!(!format!("{url:?}").contains("s3cret"));
        assert_eq!(
            redis_url("redis://:pw@r:6379/0")
                .expect("valid")
                .to_string(),
            "redis://:***@r:6379/0"
        );
        assert_eq!(
            redis_url("redis://r:6379").expect("valid").to_string(),
            "redis://r:6379"
        );
        assert_eq!(
            redis_url("rediss+cluster://svc:s3cret@a:7000,b:7001")
                .expect("valid")
                .to_string(),
            "rediss+cluster://svc:***@a:7000,b:7001"
        );
        let error = redis_url("redis+cluster://svc:s3cret@").expect_err("no node");
        assert!(!error.contains("s3cret"), "{error}");
        assert_eq!(
            database_url("postgres://u@db/x?sslmode=require&password=s3cret&sslpassword=k3y")
                .expect("valid")
                .to_string(),
            "postgres://u@db/x?sslmode=require&password=***&sslpassword=***"
        );
        assert_eq!(
            otlp_endpoint("https://user:s3cret@collector:4318/v1?api_token=t0k")
                .expect("valid")
                .to_string(),
            "https://user:***@collector:4318/v1?api_token=***"
        );
    }

    #[test]
    fn the_admin_token_is_never_shown() {
        let probe = parse(&["--admin-token", "0123456789abcdef-secret"]).expect("valid");
        assert!(!format!("{probe:?}").contains("secret"));
        assert!(parse(&["--admin-token", "short"]).is_err());
    }

    #[test]
    fn an_empty_admin_token_leaves_the_admin_api_off() {
        let probe = parse(&["--admin-token", ""]).expect("empty is allowed");
        assert!(probe.common.admin_token().is_none());
        assert!(parse(&[]).expect("valid").common.admin_token().is_none());
        let on = parse(&["--admin-token", "0123456789abcdef"]).expect("valid");
        assert!(on.common.admin_token().is_some());
    }

    #[test]
    fn defaults_suffice() {
        let probe = parse(&[]).expect("only the URLs are required");
        assert_eq!(probe.common.stream.read_count, 1000);
        assert_eq!(probe.common.stream.stream_namespace, "");
        assert!(probe.common.stream.consumer_name().contains('-'));
    }

    #[test]
    fn unsafe_combinations_are_refused() {
        let probe = parse(&[]).expect("defaults");
        assert_eq!(probe.common.check(), Ok(()), "the defaults are safe");
        let inbox = parse(&["--inbox-retention-hours", "168"]).expect("valid alone");
        let e = inbox
            .common
            .check()
            .expect_err("inbox no longer than the outbox");
        assert!(e.contains("INBOX_RETENTION_HOURS"), "{e}");
        let idle = parse(&["--consumer-idle-delete-ms", "30000"]).expect("valid alone");
        let e = idle
            .common
            .check()
            .expect_err("a live consumer could look dead");
        assert!(e.contains("CONSUMER_IDLE_DELETE_MS"), "{e}");
        for (args, named) in [
            (&["--db-lock-timeout-ms", "5000"][..], "DB_LOCK_TIMEOUT_MS"),
            (
                &["--db-statement-timeout-ms", "10000"],
                "DB_STATEMENT_TIMEOUT_MS",
            ),
            (
                &["--db-idle-in-transaction-timeout-ms", "5000"],
                "DB_IDLE_IN_TRANSACTION_TIMEOUT_MS",
            ),
            (&["--liveness-stall-ms", "30000"], "LIVENESS_STALL_MS"),
        ] {
            let probe = parse(args).expect("valid alone");
            let e = probe.common.check().expect_err("unsafe together");
            assert!(e.starts_with(named), "{e}");
        }
    }

    #[test]
    fn bad_values_are_one_line_errors() {
        for args in [
            &["--read-count", "0"][..],
            &["--read-block-ms", "soon"],
            &["--log-format", "xml"],
            &["--database-url", "mysql://x"],
            &["--consumer-name", ""],
            &["--stream-namespace", "{shop}"],
            &["--redis-url", "redis+cluster://,"],
        ] {
            let e = parse(args).expect_err("rejected");
            let line = one_line(&e);
            assert!(!line.contains('\n') && !line.is_empty(), "{line}");
            assert!(line.contains(args[0]), "{line} names {}", args[0]);
        }
    }
}
