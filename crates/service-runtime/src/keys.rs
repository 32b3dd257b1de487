//! Every Redis key and field name the runtime uses (SPEC §3.1, §4.4).
//!
//! Stream keys are the logical names of [`events::streams`] behind the optional
//! `STREAM_NAMESPACE` prefix, so tests and deployments can share one Redis.

use events::streams::DEAD_LETTER_SUFFIX;

/// Fields of a dead-letter entry, written before the original entry's own fields.
pub mod dead_letter_fields {
    /// Id of the entry in its source stream.
    pub const ORIGINAL_ID: &str = "dlq:original_id";
    /// Key of the source stream.
    pub const SOURCE_STREAM: &str = "dlq:stream";
    /// Consumer group that gave up on it.
    pub const GROUP: &str = "dlq:group";
    /// Consumer that dead-lettered it.
    pub const CONSUMER: &str = "dlq:consumer";
    /// How many times it had been delivered.
    pub const DELIVERY_COUNT: &str = "dlq:delivery_count";
    /// Why it could not be processed.
    pub const ERROR: &str = "dlq:error";
}

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

    /// The key of a logical stream's dead-letter stream: `ns:order-events:dlq`.
    pub fn dead_letter(&self, logical: &str) -> String {
        format!("{}{DEAD_LETTER_SUFFIX}", self.stream(logical))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_namespace_gives_bare_names() {
        let keys = StreamKeys::new("");
        assert_eq!(keys.stream("order-events"), "order-events");
        assert_eq!(keys.dead_letter("order-events"), "order-events:dlq");
    }

    #[test]
    fn namespace_prefixes_every_key() {
        let keys = StreamKeys::new("ns");
        assert_eq!(keys.stream("order-events"), "ns:order-events");
        assert_eq!(keys.dead_letter("payment-events"), "ns:payment-events:dlq");
    }
}
