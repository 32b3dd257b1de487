//! The HTTP server against slow and numerous clients, over real TCP connections: a
//! client that trickles its headers, or idles on a keep-alive connection, is cut off
//! after `HTTP_HEADER_READ_TIMEOUT_MS`, and connections over `HTTP_MAX_CONNECTIONS` are
//! answered 503 at once, while everyone else is still served.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use futures::future::join_all;
use service_runtime::http_server::{self, HttpLimits};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, timeout};
use tokio_util::sync::CancellationToken;

const HEADER_TIMEOUT: Duration = Duration::from_secs(1);

/// The header cap of these tests.
const MAX_HEADER_BYTES: usize = 16_384;

/// Serves a one-route app within `limits`; stopped when the token drops out of use.
async fn serve(max_connections: usize) -> (SocketAddr, CancellationToken) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("an address");
    let shutdown = CancellationToken::new();
    let app = Router::new().route("/health/live", get(|| async { "live" }));
    let limits = HttpLimits {
        header_read_timeout: HEADER_TIMEOUT,
        max_connections,
        max_header_bytes: MAX_HEADER_BYTES,
    };
    tokio::spawn(http_server::serve(listener, app, limits, shutdown.clone()));
    (addr, shutdown)
}

/// A whole `GET /health/live` on a new connection: the status line of the answer.
async fn get_live(addr: SocketAddr) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(b"GET /health/live HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n")
        .await
        .expect("send");
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer).await;
    answer.lines().next().unwrap_or_default().to_owned()
}

/// How long `stream` stays open: until the server closes it, or `limit`.
async fn open_for(mut stream: TcpStream, trickle: bool, limit: Duration) -> Duration {
    let started = Instant::now();
    let mut buf = [0_u8; 256];
    while started.elapsed() < limit {
        match timeout(Duration::from_millis(200), stream.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => break,
            Ok(Ok(_)) => {}
            Err(_) if trickle => {
                if stream.write_all(b"x").await.is_err() {
                    break;
                }
            }
            Err(_) => {}
        }
    }
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_trickling_headers_are_cut_off_and_others_are_still_served() {
    let (addr, _shutdown) = serve(1024).await;
    let mut tricklers = Vec::new();
    for _ in 0..1000 {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream
            .write_all(b"GET /health/live HTTP/1.1\r\nhost: test\r\nx-slow: ")
            .await
            .expect("send");
        tricklers.push(tokio::spawn(open_for(stream, true, 4 * HEADER_TIMEOUT)));
    }

    let answered = timeout(Duration::from_secs(1), get_live(addr)).await;
    assert_eq!(
        answered.as_deref(),
        Ok("HTTP/1.1 200 OK"),
        "a normal request is answered promptly beside 1000 slow ones"
    );

    let held: Vec<Duration> = join_all(tricklers)
        .await
        .into_iter()
        .map(|held| held.expect("the trickler ran"))
        .collect();
    let longest = held.iter().max().copied().unwrap_or_default();
    assert!(
        longest < 3 * HEADER_TIMEOUT,
        "every trickling client is closed after the header timeout; one held on {longest:?}"
    );
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_timeout() {
    let (addr, _shutdown) = serve(16).await;
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(b"GET /health/live HTTP/1.1\r\nhost: test\r\n\r\n")
        .await
        .expect("send");
    let mut buf = [0_u8; 512];
    let n = stream.read(&mut buf).await.expect("an answer");
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200 OK"),
        "kept alive after 200"
    );
    let idle = open_for(stream, false, 4 * HEADER_TIMEOUT).await;
    assert!(
        idle < 3 * HEADER_TIMEOUT,
        "an idle keep-alive connection is closed; it stayed {idle:?}"
    );
}

#[tokio::test]
async fn connections_over_the_cap_are_answered_503_until_one_frees() {
    let (addr, _shutdown) = serve(8).await;
    let mut idle = Vec::new();
    for _ in 0..8 {
        idle.push(TcpStream::connect(addr).await.expect("connect"));
    }
    let refused = timeout(Duration::from_secs(1), get_live(addr)).await;
    assert_eq!(
        refused.as_deref(),
        Ok("HTTP/1.1 503 Service Unavailable"),
        "the ninth connection is refused at once"
    );

    let held = join_all(
        idle.into_iter()
            .map(|stream| open_for(stream, false, 4 * HEADER_TIMEOUT)),
    )
    .await;
    assert!(held.iter().all(|h| *h < 3 * HEADER_TIMEOUT), "{held:?}");
    assert_eq!(
        get_live(addr).await,
        "HTTP/1.1 200 OK",
        "served once they went"
    );
}

/// SPEC §4.9: a request whose headers pass the cap is answered `431` and closed; one just
/// under it is served.
#[tokio::test]
async fn headers_over_the_cap_are_answered_431() {
    let (addr, _shutdown) = serve(16).await;
    let request = |header_bytes: usize| {
        let filler = "a".repeat(header_bytes);
        format!(
            "GET /health/live HTTP/1.1\r\nhost: test\r\nx-big: {filler}\r\nconnection: close\r\n\r\n"
        )
    };
    for (header_bytes, expected) in [
        (MAX_HEADER_BYTES - 1024, "HTTP/1.1 200 OK"),
        (
            MAX_HEADER_BYTES + 1024,
            "HTTP/1.1 431 Request Header Fields Too Large",
        ),
        (200_000, "HTTP/1.1 431 Request Header Fields Too Large"),
    ] {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        // The server may stop reading (and close) before all of a large request is sent.
        let _ = stream.write_all(request(header_bytes).as_bytes()).await;
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer).await;
        let answer = String::from_utf8_lossy(&answer);
        assert_eq!(
            answer.lines().next().unwrap_or_default(),
            expected,
            "{header_bytes} bytes"
        );
    }
}
