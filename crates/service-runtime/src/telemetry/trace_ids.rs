//! Trace context when no exporter runs: each span gets a trace id and a span id, and
//! nothing else.
//!
//! What the processes need of a trace without an exporter is only its context: the
//! `traceparent` an event carries to the next service (SPEC §8). The OpenTelemetry layer
//! would also record every field of every span and build an SDK span that is then
//! dropped; this layer keeps the two ids and the sampled flag in the span's extensions,
//! a child taking its trace from the nearest traced span above it. In the OpenTelemetry
//! layer's place it took 5-8 % off order-service's CPU per order and more off
//! payment-service's (docs/performance.md, 2026-12-05, evening).

use opentelemetry::trace::{SpanId, TraceFlags, TraceId};
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator};
use tracing::span::{Attributes, Id};
use tracing::{Subscriber, dispatcher};
use tracing_subscriber::Registry;
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::registry::LookupSpan;

/// A span's place in its trace.
#[derive(Debug, Clone, Copy)]
pub(super) struct TraceIds {
    pub(super) trace_id: TraceId,
    pub(super) span_id: SpanId,
    pub(super) flags: TraceFlags,
}

impl TraceIds {
    /// The first span of a new trace.
    pub(super) fn root() -> Self {
        let ids = RandomIdGenerator::default();
        Self {
            trace_id: ids.new_trace_id(),
            span_id: ids.new_span_id(),
            flags: TraceFlags::SAMPLED,
        }
    }

    /// A span of the same trace, below this one.
    fn child(&self) -> Self {
        Self {
            span_id: RandomIdGenerator::default().new_span_id(),
            ..*self
        }
    }

    /// The W3C `traceparent` of the span.
    pub(super) fn traceparent(&self) -> String {
        format!(
            "00-{}-{}-{:02x}",
            self.trace_id,
            self.span_id,
            self.flags.to_u8()
        )
    }
}

/// Gives every span it sees its [`TraceIds`].
pub(super) struct TraceIdLayer;

impl<S> Layer<S> for TraceIdLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, _attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let ids = span
            .scope()
            .skip(1)
            .find_map(|above| above.extensions().get::<TraceIds>().map(TraceIds::child))
            .unwrap_or_else(TraceIds::root);
        span.extensions_mut().insert(ids);
    }
}

/// Runs `f` on the [`TraceIds`] of `span`; `None` if the layer does not run in the
/// span's subscriber (an exporter is configured, or another subscriber is installed).
pub(super) fn with_ids<R>(span: &tracing::Span, f: impl FnOnce(&mut TraceIds) -> R) -> Option<R> {
    span.with_subscriber(|(id, dispatch): (&Id, &dispatcher::Dispatch)| {
        let registry = dispatch.downcast_ref::<Registry>()?;
        let span = registry.span(id)?;
        let mut extensions = span.extensions_mut();
        extensions.get_mut::<TraceIds>().map(f)
    })
    .flatten()
}

#[cfg(test)]
mod tests {
    use tracing::info_span;
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;
    use crate::telemetry::{continue_trace, trace_id, traceparent_of};

    fn traced<R>(f: impl FnOnce() -> R) -> R {
        tracing::subscriber::with_default(tracing_subscriber::registry().with(TraceIdLayer), f)
    }

    fn parts(traceparent: &str) -> Vec<String> {
        traceparent.split('-').map(str::to_owned).collect()
    }

    #[test]
    fn a_span_inside_another_is_a_new_span_of_its_trace() {
        traced(|| {
            let outer = info_span!("outer");
            let inner = outer.in_scope(|| info_span!("inner"));
            let (outer, inner) = (
                parts(&traceparent_of(&outer).expect("traced")),
                parts(&traceparent_of(&inner).expect("traced")),
            );
            assert_eq!(outer[0], "00");
            assert_eq!(outer[1].len(), 32);
            assert_eq!(outer[2].len(), 16);
            assert_eq!(
                outer[3], "01",
                "sampled, as the SDK's default sampler would"
            );
            assert_eq!(inner[1], outer[1], "the same trace");
            assert_ne!(inner[2], outer[2], "its own span");
        });
    }

    #[test]
    fn spans_with_nothing_above_start_traces_of_their_own() {
        traced(|| {
            let (a, b) = (info_span!("a"), info_span!("b"));
            let (a, b) = (
                traceparent_of(&a).expect("traced"),
                traceparent_of(&b).expect("traced"),
            );
            assert_ne!(trace_id(&a), trace_id(&b));
        });
    }

    #[test]
    fn a_continued_span_and_those_below_it_join_the_callers_trace() {
        traced(|| {
            let caller = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
            let span = info_span!("request");
            continue_trace(&span, caller);
            let child = span.in_scope(|| info_span!("work"));
            for traceparent in [traceparent_of(&span), traceparent_of(&child)] {
                let traceparent = parts(&traceparent.expect("traced"));
                assert_eq!(traceparent[1], "4bf92f3577b34da6a3ce929d0e0e4736");
                assert_ne!(traceparent[2], "00f067aa0ba902b7", "a span of its own");
                assert_eq!(traceparent[3], "00", "the caller's flags are kept");
            }
        });
    }

    #[test]
    fn a_malformed_traceparent_leaves_the_span_a_trace_of_its_own() {
        traced(|| {
            let outer = info_span!("outer");
            let span = outer.in_scope(|| info_span!("request"));
            continue_trace(&span, "00-NOT-A-TRACE");
            let (outer, span) = (
                traceparent_of(&outer).expect("traced"),
                traceparent_of(&span).expect("traced"),
            );
            assert_ne!(
                trace_id(&span),
                trace_id(&outer),
                "not the one it was under"
            );
            assert_eq!(trace_id(&span).map(str::len), Some(32));
        });
    }

    #[test]
    fn without_the_layer_there_is_no_traceparent() {
        tracing::subscriber::with_default(tracing_subscriber::registry(), || {
            assert_eq!(traceparent_of(&info_span!("untraced")), None);
        });
    }
}
