//! The load generator's HTTP client: HTTP/1.1 keep-alive connections to order-service,
//! kept in a pool, one per request in flight. Nothing a general client does per request
//! beyond that (no URL to parse, no redirects, no per-request timer of its own): loadgen
//! shares the box with what it measures, and every microsecond it spends is one the
//! system does not get (docs/performance.md, 2026-12-05, later).
//!
//! The server closes a keep-alive connection idle for `HTTP_HEADER_READ_TIMEOUT_MS` (10 s
//! by default), and a request sent as it does is lost. So a connection idle for
//! [`REUSE_WITHIN`] is not used again, and a request the connection could not even start
//! to send goes on another.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{CONTENT_TYPE, HOST};
use hyper::{Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// How long an idle connection may wait to be used again: well within the server's
/// default keep-alive of 10 s.
const REUSE_WITHIN: Duration = Duration::from_secs(5);

/// `POST /orders` of one order-service.
pub struct Orders {
    /// `host:port`, to connect to and to name in `Host`.
    authority: String,
    /// Idle connections, each with the moment it became idle; the last is the newest.
    idle: Mutex<Vec<(Instant, SendRequest<Full<Bytes>>)>>,
}

impl Orders {
    /// A client of the order-service at `base_url` (`http://host:port`).
    pub fn new(base_url: &str) -> anyhow::Result<Self> {
        let uri: Uri = base_url.parse().context("--order-url")?;
        if uri.scheme_str() != Some("http") {
            bail!("--order-url: only http:// is supported, not {base_url}");
        }
        let authority = uri.authority().context("--order-url: no host")?;
        Ok(Self {
            authority: format!(
                "{}:{}",
                authority.host(),
                authority.port_u16().unwrap_or(80)
            ),
            idle: Mutex::new(Vec::new()),
        })
    }

    /// Posts `body` as an order: the answer's status and body.
    pub async fn post(&self, body: Bytes) -> anyhow::Result<(StatusCode, Bytes)> {
        let mut request = Request::post("/orders")
            .header(HOST, &self.authority)
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(body))?;
        loop {
            let mut sender = self.ready_connection().await?;
            match sender.try_send_request(request).await {
                Ok(response) => {
                    let status = response.status();
                    let body = response.into_body().collect().await?.to_bytes();
                    self.lock_idle().push((Instant::now(), sender));
                    return Ok((status, body));
                }
                // Not sent at all: the connection was closing. On another one.
                Err(mut unsent) => match unsent.take_message() {
                    Some(back) => request = back,
                    None => return Err(unsent.into_error().into()),
                },
            }
        }
    }

    /// The newest idle connection that can take a request (older ones, and one the server
    /// closed, are dropped), or a new one.
    async fn ready_connection(&self) -> anyhow::Result<SendRequest<Full<Bytes>>> {
        loop {
            let idle = self.lock_idle().pop();
            let Some((since, mut sender)) = idle else {
                return self.connect().await;
            };
            if since.elapsed() < REUSE_WITHIN && sender.ready().await.is_ok() {
                return Ok(sender);
            }
        }
    }

    fn lock_idle(&self) -> std::sync::MutexGuard<'_, Vec<(Instant, SendRequest<Full<Bytes>>)>> {
        self.idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    async fn connect(&self) -> anyhow::Result<SendRequest<Full<Bytes>>> {
        let stream = TcpStream::connect(&self.authority)
            .await
            .with_context(|| format!("cannot connect to {}", self.authority))?;
        stream.set_nodelay(true)?;
        let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        Ok(sender)
    }
}
