//! TLS for one test: certificates it generates (with `openssl`), and a Redis and a
//! PostgreSQL of its own that speak TLS with them. The shared servers are never
//! reconfigured.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use sqlx::Connection;
use uuid::Uuid;

use crate::faults::answers;
use crate::ports::free_port;
use crate::waiting::eventually;

/// A certificate authority and a server certificate it signed for `127.0.0.1` and
/// `localhost`, as PEM files in a directory of their own (removed on drop).
pub struct TestCertificates {
    pub dir: PathBuf,
    /// The authority's certificate: what clients trust.
    pub ca: PathBuf,
    /// The server's certificate and key.
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TestCertificates {
    /// Generates a fresh authority and server certificate.
    pub fn generate() -> Self {
        let dir = std::env::temp_dir().join(format!("tls-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        let certs = Self {
            ca: dir.join("ca.crt"),
            cert: dir.join("server.crt"),
            key: dir.join("server.key"),
            dir,
        };
        let ca_key = certs.dir.join("ca.key");
        let csr = certs.dir.join("server.csr");
        let ext = certs.dir.join("server.ext");
        std::fs::write(&ext, "subjectAltName=IP:127.0.0.1,DNS:localhost\n").expect("writes");
        let path = |p: &Path| p.to_str().expect("a UTF-8 path").to_owned();
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=test-ca",
            "-keyout",
            &path(&ca_key),
            "-out",
            &path(&certs.ca),
        ]);
        openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            &path(&certs.key),
            "-out",
            &path(&csr),
        ]);
        openssl(&[
            "x509",
            "-req",
            "-days",
            "2",
            "-in",
            &path(&csr),
            "-CA",
            &path(&certs.ca),
            "-CAkey",
            &path(&ca_key),
            "-CAcreateserial",
            "-extfile",
            &path(&ext),
            "-out",
            &path(&certs.cert),
        ]);
        certs
    }
}

impl Drop for TestCertificates {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn openssl(args: &[&str]) {
    let status = Command::new("openssl")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("openssl is installed");
    assert!(status.success(), "openssl {args:?} failed");
}

/// A Redis of one test's own that takes TLS connections (`rediss://`) with `certs` on
/// one port and plain ones on another (for the test's own checks).
pub struct TlsRedis {
    pub plain_port: u16,
    pub tls_port: u16,
    server: Child,
}

impl TlsRedis {
    pub async fn start(certs: &TestCertificates) -> Self {
        let (plain_port, tls_port) = (free_port(), free_port());
        let path = |p: &Path| p.to_str().expect("a UTF-8 path").to_owned();
        let server = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--port", &plain_port.to_string()])
            .args(["--tls-port", &tls_port.to_string()])
            .args(["--tls-cert-file", &path(&certs.cert)])
            .args(["--tls-key-file", &path(&certs.key)])
            .args(["--tls-ca-cert-file", &path(&certs.ca)])
            .args(["--tls-auth-clients", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed");
        let redis = Self {
            plain_port,
            tls_port,
            server,
        };
        answers(&redis.plain_url(), "the TLS Redis").await;
        redis
    }

    /// `rediss://127.0.0.1:<tls port>`.
    pub fn tls_url(&self) -> String {
        format!("rediss://127.0.0.1:{}", self.tls_port)
    }

    /// `redis://127.0.0.1:<plain port>`, for the test's own checks.
    pub fn plain_url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.plain_port)
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

/// A PostgreSQL cluster of one test's own (`initdb`, trust authentication) with
/// `ssl = on` and `certs`, on a free port; removed on drop. Run as the `postgres` user
/// when the test runs as root (the server refuses root).
pub struct TlsPostgres {
    pub port: u16,
    dir: PathBuf,
    server: Child,
}

impl TlsPostgres {
    pub async fn start(certs: &TestCertificates) -> Self {
        let dir = std::env::temp_dir().join(format!("pg-{}", Uuid::new_v4().simple()));
        let data = dir.join("data");
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        for (from, to) in [(&certs.cert, "server.crt"), (&certs.key, "server.key")] {
            std::fs::copy(from, dir.join(to)).expect("copies the certificate");
        }
        let as_root = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|out| out.stdout.starts_with(b"0\n"));
        let path = |p: &Path| p.to_str().expect("a UTF-8 path").to_owned();
        if as_root {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres", &path(&dir)])
                .status()
                .expect("chown runs");
            assert!(status.success(), "chown the cluster to postgres");
        }
        let run = |program: &str| {
            let mut cmd = if as_root {
                let mut cmd = Command::new("runuser");
                cmd.args(["-u", "postgres", "--", program]);
                cmd
            } else {
                Command::new(program)
            };
            cmd.stdout(Stdio::null()).stderr(Stdio::null());
            cmd
        };
        let key = dir.join("server.key");
        let status = run("chmod")
            .args(["0600", &path(&key)])
            .status()
            .expect("chmod runs");
        assert!(status.success(), "the key is private");
        let status = run(&bin("initdb"))
            .args(["-D", &path(&data), "-A", "trust", "-U", "postgres"])
            .status()
            .expect("initdb runs");
        assert!(status.success(), "initdb");
        let port = free_port();
        let server = run(&bin("postgres"))
            .args([
                "-D",
                &path(&data),
                "-p",
                &port.to_string(),
                "-k",
                &path(&dir),
            ])
            .args(["-c", "listen_addresses=127.0.0.1", "-c", "ssl=on"])
            .args([
                "-c",
                &format!("ssl_cert_file={}", path(&dir.join("server.crt"))),
            ])
            .args(["-c", &format!("ssl_key_file={}", path(&key))])
            .args(["-c", "fsync=off"])
            .spawn()
            .expect("postgres runs");
        let postgres = Self { port, dir, server };
        let url = format!("{}?sslmode=disable", postgres.url());
        eventually(
            "the TLS Postgres to answer",
            Duration::from_secs(20),
            || async {
                sqlx::PgConnection::connect(&url)
                    .await
                    .map(drop)
                    .map_err(|e| e.to_string())
            },
        )
        .await;
        postgres
    }

    /// `postgres://postgres@127.0.0.1:<port>/postgres`, with no TLS parameters.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for TlsPostgres {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A PostgreSQL server program: from the newest `/usr/lib/postgresql/*/bin` (Debian),
/// else from `PATH`.
fn bin(program: &str) -> String {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path().join("bin").join(program))
        .filter(|path| path.exists())
        .collect();
    versions.sort_by_key(|path| {
        path.components()
            .nth(4)
            .and_then(|c| c.as_os_str().to_str()?.parse::<u32>().ok())
    });
    versions
        .pop()
        .and_then(|path| path.to_str().map(str::to_owned))
        .unwrap_or_else(|| program.to_owned())
}
