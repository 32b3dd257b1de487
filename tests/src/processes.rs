//! The services as processes of their own: started, awaited, stopped, frozen.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use sqlx::PgPool;
use testkit::{eventually, free_port};

/// A service binary running as a process of its own.
pub struct Process {
    pub child: Child,
    pub base_url: String,
    /// Where its standard error goes (a panic, a configuration it refused, a port it could
    /// not bind), shown when it exits before it is ready.
    stderr: PathBuf,
}

impl Drop for Process {
    /// A process a test leaves behind (it failed half-way) dies with it.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.stderr);
    }
}

/// Starts `binary` with exactly `env` (plus a free `HTTP_ADDR`, `RUST_LOG=warn`, and the
/// event keys of the service it is, [`testkit::signing`], which `env` may override).
pub fn start_process(binary: &str, env: &[(&str, String)]) -> Process {
    spawn_process(binary, env, Stdio::null())
}

/// Like [`start_process`], its log lines (warnings and errors) written to `log`.
pub fn start_logging_process(binary: &str, env: &[(&str, String)], log: &std::fs::File) -> Process {
    spawn_process(binary, env, log.try_clone().expect("the log file").into())
}

fn spawn_process(binary: &str, env: &[(&str, String)], stdout: Stdio) -> Process {
    let port = free_port();
    let stderr = std::env::temp_dir().join(format!(
        "e2e-{}-{port}.stderr",
        uuid::Uuid::new_v4().simple()
    ));
    let service = ["order-service", "payment-service"]
        .into_iter()
        .find(|service| binary.ends_with(service));
    let child = Command::new(binary)
        .env_clear()
        .envs(
            service
                .map(testkit::signing::signing_env)
                .unwrap_or_default(),
        )
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env("HTTP_ADDR", format!("127.0.0.1:{port}"))
        .env("RUST_LOG", "warn")
        .stdout(stdout)
        .stderr(std::fs::File::create(&stderr).expect("a file for its standard error"))
        .spawn()
        .expect("the binary starts");
    Process {
        child,
        base_url: format!("http://127.0.0.1:{port}"),
        stderr,
    }
}

/// Waits until the process answers `/health/ready` with 200; fails at once, with what it
/// wrote to its standard error, if it exits first.
pub async fn ready(process: &mut Process) {
    let url = format!("{}/health/ready", process.base_url);
    eventually("the process to be ready", Duration::from_secs(20), || {
        if let Ok(Some(status)) = process.child.try_wait() {
            let stderr = std::fs::read_to_string(&process.stderr).unwrap_or_default();
            panic!("the process exited ({status}) before it was ready; its stderr:\n{stderr}");
        }
        let url = url.clone();
        async move {
            match reqwest::get(&url).await {
                Ok(response) if response.status() == 200 => Ok(()),
                other => Err(format!("{other:?}")),
            }
        }
    })
    .await;
}

/// Sends SIGTERM and waits (up to `within`) for the process to exit; returns how it
/// exited.
pub async fn terminate(process: &mut Process, within: Duration) -> std::process::ExitStatus {
    sigterm(process);
    eventually("the process to exit", within, || {
        let status = process.child.try_wait();
        async move {
            match status {
                Ok(Some(status)) => Ok(status),
                other => Err(format!("{other:?}")),
            }
        }
    })
    .await
}

/// Sends SIGTERM.
pub fn sigterm(process: &Process) {
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(process.child.id().to_string())
        .status()
        .expect("kill runs");
    assert!(status.success());
}

/// A process stopped with `SIGSTOP` (a GC pause, a VM freeze, a half-open connection, as
/// the rest of the system sees it); resumed with `SIGCONT` when dropped.
pub struct Frozen {
    pid: u32,
}

impl Frozen {
    /// Freezes `process` now.
    pub fn now(process: &Process) -> Self {
        signal(process.child.id(), "STOP");
        Self {
            pid: process.child.id(),
        }
    }

    /// Freezes `process` at an instant when one of its Postgres sessions is inside an open
    /// transaction whose last statement matches the regular expression `statement` (so it
    /// holds that statement's locks), and checks that the transaction is still open once
    /// the stop has settled; retried until that happens (at most 30 s).
    ///
    /// Settled means the session has waited on the stopped process for the `SETTLED` interval
    /// (`idle in transaction`, the same transaction): a `COMMIT` the process sent just
    /// before the stop, still in the socket, would have been read and run within
    /// microseconds. Checked at once instead, such a `COMMIT` could land after the check,
    /// and the frozen process would hold nothing.
    pub async fn inside_transaction(process: &Process, db: &PgPool, statement: &str) -> Self {
        let pid = process.child.id();
        eventually(
            "to freeze the process inside a transaction",
            Duration::from_secs(30),
            || async {
                let ports = postgres_client_ports(pid);
                let (backend, started) = open_transaction(db, &ports, statement).await?;
                let frozen = Self::now(process);
                settled_in(db, backend, &started).await?;
                Ok(frozen)
            },
        )
        .await
    }
}

/// How long a session of a stopped process must have waited on it, inside its
/// transaction, for the stop to count as settled ([`Frozen::inside_transaction`]).
const SETTLED: Duration = Duration::from_millis(200);

/// Waits (up to 2 s: a statement the process sent before it stopped may still run) until
/// backend `backend` has been idle in the transaction that started at `started` for
/// [`SETTLED`]; an error as soon as that transaction ends.
async fn settled_in(db: &PgPool, backend: i32, started: &str) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    loop {
        let seen: Option<(Option<String>, Option<String>, bool)> = sqlx::query_as(
            "SELECT xact_start::text, state,
                    now() - state_change >= make_interval(secs => $2)
             FROM pg_stat_activity WHERE pid = $1",
        )
        .bind(backend)
        .bind(SETTLED.as_secs_f64())
        .fetch_optional(db)
        .await
        .map_err(|e| e.to_string())?;
        match seen {
            Some((Some(xact), Some(state), settled)) if xact == started => {
                if state == "idle in transaction" && settled {
                    return Ok(());
                }
                if tokio::time::Instant::now() >= deadline {
                    return Err(format!("the session is still {state} after 2 s"));
                }
            }
            other => return Err(format!("the transaction ended after the stop: {other:?}")),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        signal(self.pid, "CONT");
    }
}

fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill -{name} {pid}");
}

/// `(backend pid, transaction start)` of a session from one of `ports` inside a
/// transaction whose last statement matches `statement`.
async fn open_transaction(
    db: &PgPool,
    ports: &[i32],
    statement: &str,
) -> Result<(i32, String), String> {
    sqlx::query_as(
        "SELECT pid, xact_start::text FROM pg_stat_activity
          WHERE client_port = ANY($1) AND xact_start IS NOT NULL AND query ~* $2
          ORDER BY xact_start LIMIT 1",
    )
    .bind(ports)
    .bind(statement)
    .fetch_optional(db)
    .await
    .map_err(|e| e.to_string())?
    .ok_or_else(|| "no session of the process is inside such a transaction".to_owned())
}

/// The local ports of the process's TCP connections to Postgres (port 5432), from its file
/// descriptors' socket inodes and `/proc/net/tcp{,6}`.
fn postgres_client_ports(pid: u32) -> Vec<i32> {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|fds| {
            fds.flatten()
                .filter_map(|fd| std::fs::read_link(fd.path()).ok())
                .filter_map(|link| {
                    let link = link.to_string_lossy().into_owned();
                    let inode = link.strip_prefix("socket:[")?.strip_suffix(']')?;
                    Some(inode.to_owned())
                })
                .collect()
        })
        .unwrap_or_default();
    let mut ports = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(remote), Some(inode)) =
                (fields.get(1), fields.get(2), fields.get(9))
            else {
                continue;
            };
            let port = |address: &str| {
                address
                    .rsplit_once(':')
                    .and_then(|(_, hex)| i32::from_str_radix(hex, 16).ok())
            };
            if port(remote) == Some(5432) && inodes.iter().any(|i| i == inode) {
                ports.extend(port(local));
            }
        }
    }
    ports
}
