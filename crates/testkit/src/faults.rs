//! Faults a test can cause without disturbing others: a private Redis to wipe, kill and
//! restart, and a TCP proxy that cuts one service off from a server.

use std::net::SocketAddr;
use std::time::Duration;

use crate::ports::free_port;
use crate::waiting::eventually;

/// Waits until the Redis at `url` answers `PING`.
pub(crate) async fn answers(url: &str, what: &str) {
    eventually(
        &format!("{what} to answer"),
        Duration::from_secs(10),
        || async {
            let client = redis::Client::open(url).map_err(|e| e.to_string())?;
            let mut conn = client
                .get_multiplexed_async_connection()
                .await
                .map_err(|e| e.to_string())?;
            redis::cmd("PING")
                .query_async::<String>(&mut conn)
                .await
                .map_err(|e| e.to_string())
        },
    )
    .await;
}

/// A Redis server of one test's own, for what must not touch the shared one: `FLUSHALL`,
/// restarts, outages (CRATES.md trap 8). No persistence: a restart comes back empty.
pub struct PrivateRedis {
    port: u16,
    server: Option<std::process::Child>,
    /// More `redis-server` arguments (e.g. `--aclfile`).
    args: Vec<String>,
    /// The user the test itself connects as, if not the default one.
    user: Option<(String, String)>,
}

impl PrivateRedis {
    /// Starts `redis-server` on a free port and waits until it answers.
    pub async fn start() -> Self {
        Self::start_with(&[], None).await
    }

    /// Starts `redis-server` with more arguments (`--aclfile …`, say), and waits until it
    /// answers `user` (`(name, password)`; the default user when `None`).
    pub async fn start_with(args: &[&str], user: Option<(&str, &str)>) -> Self {
        let mut redis = Self {
            port: free_port(),
            server: None,
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            user: user.map(|(name, password)| (name.to_owned(), password.to_owned())),
        };
        redis.restart().await;
        redis
    }

    /// The URL the test connects with (as its user, if it has one).
    pub fn url(&self) -> String {
        match &self.user {
            Some((name, password)) => self.url_as(name, password),
            None => format!("redis://127.0.0.1:{}", self.port),
        }
    }

    /// The URL of user `name`.
    pub fn url_as(&self, name: &str, password: &str) -> String {
        format!("redis://{name}:{password}@127.0.0.1:{}", self.port)
    }

    /// Kills the server at once (`SIGKILL`): clients see their connections drop.
    pub fn kill(&mut self) {
        if let Some(mut server) = self.server.take() {
            let _ = server.kill();
            let _ = server.wait();
        }
    }

    /// Freezes the server (`SIGSTOP`): connections stay open and nothing answers, as with
    /// a process stopped or a host gone silent. [`PrivateRedis::thaw`] lets it go on.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    /// Lets a frozen server go on (`SIGCONT`).
    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let server = self.server.as_ref().expect("the server runs");
        let sent = std::process::Command::new("kill")
            .args([signal, &server.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(sent.success(), "kill {signal}");
    }

    /// Starts it again, empty, on the same port.
    pub async fn restart(&mut self) {
        self.kill();
        let server = std::process::Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args(&self.args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("redis-server is installed");
        self.server = Some(server);
        answers(&self.url(), "the private Redis").await;
    }

    /// `FLUSHALL`: every stream and group is gone, as after a restart without persistence.
    pub async fn flush_all(&self) {
        let client = redis::Client::open(self.url()).expect("valid URL");
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .expect("reachable");
        let _: () = redis::cmd("FLUSHALL")
            .query_async(&mut conn)
            .await
            .expect("FLUSHALL");
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A TCP proxy in front of a server, to cut one service off from it (an outage only that
/// service sees) and restore it. Cutting closes every open connection and refuses new
/// ones until restored.
pub struct FaultProxy {
    pub addr: SocketAddr,
    up: tokio::sync::watch::Sender<bool>,
    accepting: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    /// A proxy on a free port forwarding to `upstream` (`host:port`).
    pub async fn start(upstream: String) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binds");
        let addr = listener.local_addr().expect("has an address");
        let (up, _) = tokio::sync::watch::channel(true);
        let watch = up.clone();
        let accepting = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !*watch.borrow() {
                    continue;
                }
                let (mut cut, upstream) = (watch.subscribe(), upstream.clone());
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(&upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut.wait_for(|up| !*up) => {}
                    }
                });
            }
        });
        Self {
            addr,
            up,
            accepting,
        }
    }

    /// Drops every connection through the proxy and refuses new ones.
    pub fn cut(&self) {
        self.up.send_replace(false);
    }

    /// Lets connections through again.
    pub fn restore(&self) {
        self.up.send_replace(true);
    }

    /// `url` pointed at this proxy instead of its own host and port.
    pub fn url_through(&self, url: &str) -> String {
        let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(authority_end);
        let userinfo = authority.rfind('@').map_or("", |at| &authority[..=at]);
        format!("{scheme}://{userinfo}{}{path}", self.addr)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.cut();
        self.accepting.abort();
    }
}

/// The `host:port` of a URL (port defaulting to `default_port`).
pub fn host_port(url: &str, default_port: u16) -> String {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = &rest[..rest.find(['/', '?']).unwrap_or(rest.len())];
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    if host
        .rsplit_once(':')
        .is_some_and(|(_, port)| port.parse::<u16>().is_ok())
    {
        host.to_owned()
    } else {
        format!("{host}:{default_port}")
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn finds_host_and_port() {
        assert_eq!(super::host_port("postgres://u:p@h:5433/db", 5432), "h:5433");
        assert_eq!(super::host_port("postgres://h/db", 5432), "h:5432");
        assert_eq!(
            super::host_port("redis://127.0.0.1:6379", 6379),
            "127.0.0.1:6379"
        );
    }
}
