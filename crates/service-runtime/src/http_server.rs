//! The HTTP server: the service's router served by hyper with the limits a public
//! endpoint needs against slow and numerous clients.
//!
//! `axum::serve` runs hyper without a timer, so a client that sends its headers one
//! byte every few seconds holds a connection (a file descriptor and a task) for as long
//! as it likes, and thousands of them starve the process. Here:
//! - a client has `HTTP_HEADER_READ_TIMEOUT_MS` to send a request's headers, counted from
//!   the moment the server waits for them: from the connection's start, and on a
//!   keep-alive connection from the end of the previous response, so an idle keep-alive
//!   connection is closed after the same time;
//! - at most `HTTP_MAX_CONNECTIONS` connections are served at once; one more is answered
//!   `503` with `Retry-After` and closed at once (counted in
//!   `http_connections_refused_total`; a few are drained for a moment so the client reads
//!   the answer, the rest closed bare), so the process never runs out of descriptors and
//!   the listen queue never fills;
//! - a request's line and headers may take `HTTP_MAX_HEADER_BYTES` (hyper's default,
//!   about 400 kB, let a few hundred unfinished headers take over 100 MiB); over it the
//!   request is answered `431` and the connection closed;
//! - the request deadline (`REQUEST_TIMEOUT_MS`) and the body limit apply once the
//!   headers are in (see [`crate::request`]).
//!
//! On shutdown it stops accepting, lets requests in progress finish and closes idle
//! connections (the caller bounds how long that may take).

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::observability::HTTP_CONNECTIONS_REFUSED;

/// What the server allows one client and all of them.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// Time to send a request's headers, and the most a keep-alive connection stays idle.
    pub header_read_timeout: Duration,
    /// Connections served at once.
    pub max_connections: usize,
    /// The most a request's line and headers may take, in bytes; over it, `431` and the
    /// connection closed. It is also the most the server buffers for one connection, so
    /// `max_connections` clients sending the largest headers allowed hold at most
    /// `max_connections × max_header_bytes` (SPEC §4.9).
    pub max_header_bytes: usize,
}

/// The answer to a connection over the cap: written without reading the request.
const OVER_CAPACITY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
    content-type: text/plain\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: 21\r\n\r\n\
    too many connections\n";

/// How long a refused connection is drained after its answer, so that the client reads
/// the answer rather than a reset; and how many are drained at once (more are closed
/// without an answer).
const REFUSAL_DRAIN: Duration = Duration::from_millis(250);
const REFUSALS_DRAINED: usize = 64;

/// Pause after a failed `accept` (e.g. out of descriptors), so the loop does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// Serves `app` on `listener` within `limits` until `shutdown`, then finishes what is in
/// progress.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: HttpLimits,
    shutdown: CancellationToken,
) {
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let refusals = Arc::new(Semaphore::new(REFUSALS_DRAINED));
    let graceful = GracefulShutdown::new();
    loop {
        let stream = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            metrics::counter!(HTTP_CONNECTIONS_REFUSED).increment(1);
            if let Ok(drainer) = refusals.clone().try_acquire_owned() {
                tokio::spawn(async move {
                    refuse(stream).await;
                    drop(drainer);
                });
            }
            continue;
        };
        let service = TowerToHyperService::new(app.clone());
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                debug!(error = %e, "connection ended with an error");
            }
            drop(slot);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// Answers a connection over the cap with a `503` and closes it. What the client sent is
/// read and discarded for a moment first: closing a socket with unread data resets it,
/// and the client would lose the answer.
async fn refuse(mut stream: TcpStream) {
    if stream.write_all(OVER_CAPACITY).await.is_err() || stream.shutdown().await.is_err() {
        return;
    }
    let mut sink = [0_u8; 1024];
    let _ = tokio::time::timeout(REFUSAL_DRAIN, async {
        while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
}
