//! The engine's telemetry: the W3C trace context that ties a scan to every
//! delivery attempt of the events it wrote, and the Prometheus series the
//! engine records (docs/operations.md, "Telemetry").
//!
//! A scan runs in a root span; the events it writes keep that span's
//! `traceparent` in the outbox; each delivery attempt, however much later and
//! on whichever instance, is a span whose parent is that context, and the
//! attempt's own context goes to the receiver in the `traceparent` header.
//! Where no spans are exported, the attempt's span is not built (see
//! [`TRACE_ONLY_SPANS`]) and the header still continues the scan's trace.
//! What an attempt learns after its span began (the answer's status, the
//! outcome) is set as OpenTelemetry attributes, not recorded as `tracing`
//! fields, which the log layer would copy into its JSON again on every
//! webhook; the attempt's span is left out of the log layer altogether.
//!
//! Metrics go through the `metrics` facade: a no-op until the `herald` binary
//! installs its recorder.

use std::fmt::Write as _;
use std::time::Duration;

use entity::DeliveryOutcome;

use crate::ids::AppId;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanId, TraceContextExt, TraceFlags, TraceId};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

const TRACEPARENT: &str = "traceparent";

/// The span of one delivery attempt (one request).
pub const DELIVERY_ATTEMPT_SPAN: &str = "delivery_attempt";

/// Spans that exist for OpenTelemetry only: the log layer leaves them out
/// (no log line is written inside them), so it does not format their fields
/// for every webhook, and where no spans are exported they are not built at
/// all (one per webhook, their cost is on every delivery's path).
pub const TRACE_ONLY_SPANS: &[&str] = &[DELIVERY_ATTEMPT_SPAN];

/// A `traceparent` value as the propagator's carrier: the only header it
/// reads or writes here, without a map for it.
#[derive(Default)]
struct Traceparent<'a> {
    incoming: Option<&'a str>,
    outgoing: Option<String>,
}

impl Extractor for Traceparent<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.incoming.filter(|_| key == TRACEPARENT)
    }

    fn keys(&self) -> Vec<&str> {
        self.incoming.map(|_| TRACEPARENT).into_iter().collect()
    }
}

impl Injector for Traceparent<'_> {
    fn set(&mut self, key: &str, value: String) {
        if key == TRACEPARENT {
            self.outgoing = Some(value);
        }
    }
}

/// The W3C `traceparent` of `span`; `None` when the span was not built
/// (nothing exports it) or no OpenTelemetry layer gives it a trace context.
pub fn traceparent(span: &Span) -> Option<String> {
    if span.is_disabled() {
        return None;
    }
    let context = span.context();
    if !context.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = Traceparent::default();
    TraceContextPropagator::new().inject_context(&context, &mut carrier);
    carrier.outgoing
}

/// The current span's `traceparent`: where events are written, the scan's.
pub fn current_traceparent() -> Option<String> {
    traceparent(&Span::current())
}

/// The context a persisted `traceparent` names; `None` when it is malformed.
fn persisted_context(traceparent: &str) -> Option<opentelemetry::Context> {
    let context = TraceContextPropagator::new().extract(&Traceparent {
        incoming: Some(traceparent),
        outgoing: None,
    });
    context.span().span_context().is_valid().then_some(context)
}

/// Makes `span` a child of the persisted context `traceparent`. A missing or
/// malformed value leaves `span` the root of a trace of its own. A span not
/// built (nothing exports it) joins nothing, and the value is not parsed.
pub fn continue_trace(span: &Span, traceparent: Option<&str>) {
    if span.is_disabled() {
        return;
    }
    if let Some(context) = traceparent.and_then(persisted_context) {
        // Fails only without an OpenTelemetry layer: then no trace to join.
        let _ = span.set_parent(context);
    }
}

/// The traces a lane's requests continue: the persisted `traceparent` of the
/// events it delivers, parsed once for as long as they share it (a scan's
/// events all do), not once a request.
#[derive(Default)]
pub struct PersistedTraces {
    /// The last `traceparent` parsed, with its trace (`None`: malformed).
    last: std::sync::Mutex<Option<(String, Option<Trace>)>>,
}

/// The trace a persisted `traceparent` names, and its flags.
type Trace = (TraceId, TraceFlags);

impl PersistedTraces {
    /// The `traceparent` header of a request made in `span`, whose trace
    /// continues `persisted`: the span's own context; where the span was not
    /// built (nothing exports it), a fresh span id in `persisted`'s trace;
    /// where there is no such trace either, a fresh one. Every webhook
    /// carries a valid header (docs/webhooks.md, Signatures), and an event's
    /// attempts share their scan's trace id.
    pub fn outgoing(&self, span: &Span, persisted: Option<&str>) -> String {
        traceparent(span).unwrap_or_else(|| {
            let span_id = SpanId::from_bytes(crate::crypto::random_bytes());
            let (trace_id, flags) = persisted
                .and_then(|persisted| self.trace_of(persisted))
                .unwrap_or_else(|| {
                    (
                        TraceId::from_bytes(crate::crypto::random_bytes()),
                        TraceFlags::SAMPLED,
                    )
                });
            let mut header = String::with_capacity(TRACEPARENT_LEN);
            // Writing to a String cannot fail.
            let _ = write!(header, "00-{trace_id}-{span_id}-{:02x}", flags.to_u8());
            header
        })
    }

    /// The trace and flags `persisted` names, parsed by the propagator
    /// unless it is the one parsed last.
    fn trace_of(&self, persisted: &str) -> Option<Trace> {
        let mut last = self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((text, trace)) = last.as_ref()
            && text == persisted
        {
            return *trace;
        }
        let trace = persisted_context(persisted).map(|context| {
            let parent = context.span().span_context().clone();
            (parent.trace_id(), parent.trace_flags())
        });
        *last = Some((persisted.to_owned(), trace));
        trace
    }
}

/// `00-` + 32 hex digits + `-` + 16 + `-` + 2.
const TRACEPARENT_LEN: usize = 55;

/// A scan ended (not counted: scans skipped for a lease or an open breaker).
/// Also recorded on the current span, the scan's. `outcome` is the label
/// of `herald_scans_total` and `herald_scan_duration_seconds`.
pub fn scan_finished(outcome: entity::ScanEnd, elapsed: Duration) {
    let outcome = outcome.as_str();
    Span::current().record("outcome", outcome);
    metrics::counter!("herald_scans_total", "outcome" => outcome).increment(1);
    metrics::histogram!("herald_scan_duration_seconds", "outcome" => outcome)
        .record(elapsed.as_secs_f64());
}

/// A repository's mirror on this instance after a scan: its size on disk
/// and its pack files (compaction keeps those few).
pub fn mirror_size(repository_id: &str, stats: crate::git::MirrorStats) {
    let repository = repository_id.to_owned();
    metrics::gauge!("herald_mirror_bytes", "repository_id" => repository.clone())
        .set(stats.bytes as f64);
    metrics::gauge!("herald_mirror_packs", "repository_id" => repository).set(stats.packs as f64);
}

/// File changes a committed scan found in the repository's tree.
pub fn changes_found(created: u64, updated: u64, deleted: u64) {
    for (kind, n) in [
        ("created", created),
        ("updated", updated),
        ("deleted", deleted),
    ] {
        if n > 0 {
            metrics::counter!("herald_changes_found_total", "kind" => kind).increment(n);
        }
    }
}

/// Outbox events committed, of one kind.
pub fn events_created(kind: entity::EventKind, n: u64) {
    if n > 0 {
        metrics::counter!("herald_events_created_total", "kind" => kind.as_str()).increment(n);
    }
}

/// A delivery attempt's span got an answer with this status.
///
/// What is learnt of an attempt after its span began goes to OpenTelemetry
/// only, as attributes: recorded as `tracing` fields, the log layer would
/// parse and write its JSON copy of the span's fields again on every
/// webhook, for fields no log line shows.
pub fn answered(span: &Span, status: u16) {
    span.set_attribute("http.response.status_code", i64::from(status));
}

/// An app's delivery series. The hot ones (delivered, the duration) are
/// looked up once, when a lane starts: a lane records each success through
/// these handles instead of finding its series by name and labels every time.
pub struct AppDeliveries {
    app_id: AppId,
    delivered: metrics::Counter,
    duration: metrics::Histogram,
}

impl AppDeliveries {
    pub fn of(app_id: &AppId) -> Self {
        Self {
            app_id: app_id.clone(),
            delivered: Self::counter(app_id, DeliveryOutcome::Delivered),
            duration: metrics::histogram!("herald_delivery_duration_seconds", "app_id" => app_id.to_string()),
        }
    }

    fn counter(app_id: &AppId, outcome: DeliveryOutcome) -> metrics::Counter {
        metrics::counter!("herald_deliveries_total", "app_id" => app_id.to_string(), "outcome" => outcome.as_str())
    }

    /// One delivery attempt ended; `latency` is `None` when no request was
    /// made (content gone from the mirror, a payload that cannot be
    /// rendered). Also set on the attempt's span (see [`answered`]).
    pub fn attempt(&self, span: &Span, outcome: DeliveryOutcome, latency: Option<Duration>) {
        span.set_attribute("outcome", outcome.as_str());
        if outcome == DeliveryOutcome::Delivered {
            self.delivered.increment(1);
        } else {
            Self::counter(&self.app_id, outcome).increment(1);
        }
        if let Some(latency) = latency {
            self.duration.record(latency.as_secs_f64());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_tracer_requests_still_carry_a_valid_traceparent() {
        let traces = PersistedTraces::default();
        let outgoing_traceparent = |span, persisted| traces.outgoing(span, persisted);
        let span = Span::none();
        assert_eq!(traceparent(&span), None);
        let header = outgoing_traceparent(&span, None);
        let parts: Vec<&str> = header.split('-').collect();
        assert_eq!(parts.len(), 4, "{header}");
        assert_eq!(parts[0], "00");
        assert_eq!(parts[1].len(), 32);
        assert_eq!(parts[2].len(), 16);
        assert_eq!(parts[3], "01");
        assert_ne!(header, outgoing_traceparent(&span, None), "fresh each time");
    }

    #[test]
    fn an_attempt_without_a_span_continues_the_persisted_trace_with_a_span_id_of_its_own() {
        let traces = PersistedTraces::default();
        let outgoing_traceparent = |span, persisted| traces.outgoing(span, persisted);
        let persisted = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let span = Span::none();
        let sent = outgoing_traceparent(&span, Some(persisted));
        let again = outgoing_traceparent(&span, Some(persisted));
        let parts: Vec<&str> = sent.split('-').collect();
        assert_eq!(parts.len(), 4, "{sent}");
        assert_eq!(parts[..2], ["00", "4bf92f3577b34da6a3ce929d0e0e4736"]);
        assert_eq!(parts[3], "01");
        assert_eq!(parts[2].len(), 16);
        assert_ne!(parts[2], "00f067aa0ba902b7", "the attempt's own span id");
        assert_ne!(sent, again, "each attempt its own span id");
        assert_eq!(again.split('-').nth(1), Some(parts[1]));
        // An unsampled trace stays unsampled.
        let unsampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        assert!(outgoing_traceparent(&span, Some(unsampled)).ends_with("-00"));
        // A malformed one starts a trace of its own.
        let orphan = outgoing_traceparent(&span, Some("not a traceparent"));
        assert_ne!(orphan.split('-').nth(1), Some(parts[1]));
        assert_eq!(orphan.len(), 55, "{orphan}");
        // Back to the first trace: its own again, not the one parsed last.
        let back = outgoing_traceparent(&span, Some(persisted));
        assert_eq!(back.split('-').nth(1), Some(parts[1]));
        assert!(back.ends_with("-01"), "{back}");
    }

    #[test]
    fn an_attempt_continues_the_persisted_trace() {
        use opentelemetry::trace::TracerProvider as _;
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
        let subscriber = tracing_subscriber::layer::SubscriberExt::with(
            tracing_subscriber::registry(),
            tracing_opentelemetry::layer().with_tracer(provider.tracer("test")),
        );
        tracing::subscriber::with_default(subscriber, || {
            let traces = PersistedTraces::default();
            let outgoing_traceparent = |span, persisted| traces.outgoing(span, persisted);
            let scan = tracing::info_span!("scan");
            let persisted = scan.in_scope(current_traceparent).expect("a scan context");
            let attempt = tracing::info_span!(parent: None, "delivery_attempt");
            continue_trace(&attempt, Some(&persisted));
            let sent = outgoing_traceparent(&attempt, Some(&persisted));
            let trace_of = |value: &str| value.split('-').nth(1).map(str::to_owned);
            assert_eq!(trace_of(&sent), trace_of(&persisted));
            assert_ne!(sent, persisted, "the attempt is a span of its own");

            let orphan = tracing::info_span!(parent: None, "delivery_attempt");
            continue_trace(&orphan, Some("not a traceparent"));
            assert_ne!(
                trace_of(&outgoing_traceparent(&orphan, Some("not a traceparent"))),
                trace_of(&persisted)
            );
        });
    }
}
