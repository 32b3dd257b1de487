//! Every Redis key the runtime uses (SPEC §3.1, §4.4); the fields of a dead letter are
//! named in [`dead_letters::fields`](crate::dead_letters::fields).
//!
//! Stream keys are the logical names of [`events::streams`] behind the optional
//! `STREAM_NAMESPACE` prefix, so tests and deployments can share one Redis. Each stream's
//! dead letters share its hash slot, so nothing breaks on a Redis Cluster.

use events::streams::DEAD_LETTER_SUFFIX;

/// Builds namespaced stream keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamKeys {
    namespace: String,
}

impl StreamKeys {
    /// Keys under `namespace`; an empty namespace gives the bare names.
    pub fn new(namespace: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
        }
    }

    /// The key of a logical stream: `order-events` or `ns:order-events`.
    pub fn stream(&self, logical: &str) -> String {
        if self.namespace.is_empty() {
            logical.to_owned()
        } else {
            format!("{}:{logical}", self.namespace)
        }
    }

    /// The key of the dead letters a consumer group wrote for a logical stream:
    /// `{ns:order-events}:dlq:payment-service`. One per group, so that groups reading the
    /// same stream never list, replay or trim each other's. The stream's key is its hash
    /// tag, so in a Redis Cluster both live in one slot (a key without braces hashes
    /// whole, a tagged one hashes its tag).
    pub fn dead_letter(&self, logical: &str, group: &str) -> String {
        format!("{{{}}}{DEAD_LETTER_SUFFIX}:{group}", self.stream(logical))
    }

    /// The key of a logical stream's ticks: `{ns:order-events}:ticks`, a stream of at most
    /// one tiny entry that the relay adds after each batch it publishes, so that consumers
    /// can block on it instead of on the stream itself (whose entries may be huge, SPEC
    /// §4.9; see [`consumer`](crate::consumer)). In the stream's hash slot.
    pub fn ticks(&self, logical: &str) -> String {
        format!("{{{}}}:ticks", self.stream(logical))
    }

    /// The key of the events a consumer group parked on a logical stream, written by a
    /// newer build than it reads (see [`consumer`](crate::consumer)):
    /// `{ns:order-events}:parked:payment-service`, a hash by `event_id`, in the stream's
    /// hash slot.
    pub fn parked(&self, logical: &str, group: &str) -> String {
        format!("{{{}}}:parked:{group}", self.stream(logical))
    }

    /// The key of a consumer group's reading turn on a logical stream (see
    /// [`consumer`](crate::consumer)): `{ns:order-events}:turn:payment-service`, in the
    /// stream's hash slot like its dead letters. Its wake-up list is this key plus `:wake`.
    pub fn read_turn(&self, logical: &str, group: &str) -> String {
        format!("{{{}}}:turn:{group}", self.stream(logical))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_namespace_gives_bare_names() {
        let keys = StreamKeys::new("");
        assert_eq!(keys.stream("order-events"), "order-events");
        assert_eq!(
            keys.dead_letter("order-events", "payment-service"),
            "{order-events}:dlq:payment-service"
        );
        assert_eq!(
            keys.read_turn("order-events", "payment-service"),
            "{order-events}:turn:payment-service"
        );
    }

    #[test]
    fn namespace_prefixes_every_key() {
        let keys = StreamKeys::new("ns");
        assert_eq!(keys.stream("order-events"), "ns:order-events");
        assert_eq!(
            keys.dead_letter("payment-events", "order-service"),
            "{ns:payment-events}:dlq:order-service"
        );
    }
}
