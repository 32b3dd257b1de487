//! Ports for the servers a test starts of its own (a service, a private Redis, a cluster
//! node, a Postgres).
//!
//! A port found by binding port 0 comes from the kernel's ephemeral range (32768-60999 on
//! Linux), the range outgoing connections take their local ports from too: between the
//! moment the test releases it and the moment its server binds it, a connection of a test
//! running alongside can take it, and the server fails to start (CI saw both a service and
//! a cluster node fail so). So ports come from below that range, where no outgoing
//! connection goes, each handed out once in a test process (a counter from a random start,
//! so two test processes at once rarely meet), and still checked free by binding it.
//! Where the range starts too low to leave room below it, the kernel picks, as before.

use std::hash::{BuildHasher, RandomState};
use std::net::TcpListener;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

/// The lowest port handed out (above the well-known servers: Postgres 5432, Redis 6379).
const FIRST: u16 = 10_000;

/// How far a Redis Cluster node's bus port is from its port.
pub(crate) const CLUSTER_BUS_OFFSET: u16 = 10_000;

/// A free TCP port on 127.0.0.1, below the ephemeral range.
pub fn free_port() -> u16 {
    port_where(|_| true)
}

/// A free port whose cluster bus port ([`CLUSTER_BUS_OFFSET`] above it) is free too.
pub(crate) fn cluster_port() -> u16 {
    port_where(|port| bindable(port + CLUSTER_BUS_OFFSET))
}

/// The next port of the window that binds and meets `also`; where the ephemeral range
/// leaves no window below it, a port the kernel picks (the race above stays possible).
fn port_where(also: impl Fn(u16) -> bool) -> u16 {
    let Some((first, span)) = window() else {
        return loop {
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|listener| listener.local_addr())
                .expect("a free port")
                .port();
            if port.checked_add(CLUSTER_BUS_OFFSET).is_some() && also(port) {
                break port;
            }
        };
    };
    for _ in 0..span {
        let port = first + (next() % u32::from(span)) as u16;
        if bindable(port) && also(port) {
            return port;
        }
    }
    panic!("no free port between {first} and {}", first + span)
}

/// The ports handed out: from [`FIRST`] up to where a bus port would reach the ephemeral
/// range, if that leaves a thousand or more.
fn window() -> Option<(u16, u16)> {
    static WINDOW: OnceLock<Option<(u16, u16)>> = OnceLock::new();
    *WINDOW.get_or_init(|| {
        let ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .ok()
            .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
            .unwrap_or(32_768);
        let end = ephemeral.saturating_sub(CLUSTER_BUS_OFFSET);
        (end >= FIRST + 1_000).then_some((FIRST, end - FIRST))
    })
}

/// A counter from a random start, shared by the whole test process.
fn next() -> u32 {
    static START: OnceLock<u32> = OnceLock::new();
    static COUNT: AtomicU32 = AtomicU32::new(0);
    let start = *START.get_or_init(|| RandomState::new().hash_one(std::process::id()) as u32);
    start.wrapping_add(COUNT.fetch_add(1, Ordering::Relaxed))
}

fn bindable(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_below_the_ephemeral_range_and_never_handed_out_twice() {
        let (first, span) =
            window().expect("room below the ephemeral range (Linux's default starts at 32768)");
        let ports: Vec<u16> = (0..200).map(|_| free_port()).collect();
        assert!(ports.iter().all(|p| (first..first + span).contains(p)));
        let distinct: std::collections::HashSet<_> = ports.iter().collect();
        assert_eq!(distinct.len(), ports.len());
        let bus = cluster_port() + CLUSTER_BUS_OFFSET;
        assert!(bus < first + span + CLUSTER_BUS_OFFSET);
    }
}
