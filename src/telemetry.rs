//! Telemetry: logs, traces and metrics.
//!
//! - Logs: `tracing` with structured fields, JSON or human-readable
//!   (`telemetry.log_format`). Secrets never reach a log line: they live in
//!   `SecretString`s, whose Debug output is redacted, and no handler logs a
//!   request body.
//! - Traces: every `tracing` span is also an OpenTelemetry span. They are
//!   exported over OTLP/HTTP (protobuf) when `OTEL_EXPORTER_OTLP_ENDPOINT` or
//!   `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set (the other standard `OTEL_*`
//!   variables apply: headers, timeout, `OTEL_SERVICE_NAME`, `OTEL_BSP_*`).
//!   Without an endpoint spans still get W3C ids, so the `traceparent` sent
//!   with webhooks is consistent for an event's every attempt; the spans
//!   made only for export (`actors::telemetry::TRACE_ONLY_SPANS`, one per
//!   webhook) are then not built.
//! - Metrics: a Prometheus recorder behind the `metrics` facade, rendered at
//!   `GET /metrics` ([`metrics_handle`]). Every series carries the serving
//!   instance's id as the `instance_id` label (not `instance`: Prometheus
//!   sets that one to the scrape target), so several instances' series
//!   never merge.
//!
//! [`shutdown`] flushes the spans still buffered; the server calls it last.

use std::io::IsTerminal;
use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer as _;
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::fmt::format::FmtSpan;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::{LogFormat, TelemetrySettings};

/// The tracer provider of this process, kept to be flushed on shutdown.
static TRACER_PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();
/// The Prometheus recorder's handle; `None` when another recorder was
/// installed first (an embedding program's).
static METRICS: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

const DEFAULT_SERVICE_NAME: &str = "herald";

/// Latency buckets (seconds) of the duration histograms: from a fast local
/// request to a webhook that runs into the 30 s delivery timeout, and a scan
/// of a large repository.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0,
];

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("OTLP trace exporter: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
}

/// Installs the global subscriber (logs, and spans for OpenTelemetry) and the
/// metrics recorder, whose series (and the spans' resource) carry `instance`,
/// this instance's id, when given. `RUST_LOG` overrides
/// `telemetry.log_level`.
///
/// Fails only when an OTLP endpoint is configured but the exporter cannot be
/// built (an invalid URL, say): Herald does not start with half its
/// telemetry silently gone.
pub fn init(settings: &TelemetrySettings, instance: Option<&str>) -> Result<(), TelemetryError> {
    install_metrics(instance);
    let exporting = otlp_configured();
    let provider = tracer_provider(instance, exporting)?;
    let tracer = provider.tracer("herald");
    let _ = TRACER_PROVIDER.set(provider);

    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&settings.log_level));
    let json = match settings.log_format {
        LogFormat::Json => true,
        LogFormat::Pretty => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    // A second initialisation (tests, embedding) keeps the first subscriber.
    let _ = subscriber(filter, json, exporting, tracer).try_init();
    Ok(())
}

/// The subscriber: `filter`'s logs to stderr (JSON when `json`), and spans
/// for OpenTelemetry through `tracer`, those made only for export included
/// when `exporting`.
fn subscriber(
    filter: EnvFilter,
    json: bool,
    exporting: bool,
    tracer: opentelemetry_sdk::trace::Tracer,
) -> Box<dyn tracing::Subscriber + Send + Sync> {
    let trace_only = |metadata: &tracing::Metadata<'_>| {
        metadata.is_span() && actors::telemetry::TRACE_ONLY_SPANS.contains(&metadata.name())
    };
    // Decided once per callsite, before any layer: ractor's actor spans are
    // never built, nor the spans made for export only when nothing exports
    // them (a layer's own filter would not stop the span being built for
    // the others, only its own share of the work).
    let built =
        filter_fn(move |metadata| !actor_loop(metadata) && (exporting || !trace_only(metadata)));
    // A span's duration is its time from creation to close; the busy and
    // idle times (from every entering and leaving) are not recorded.
    let otel = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_tracked_inactivity(false);
    // The log layer formats a span's fields when the span begins, for the
    // log lines written inside it; spans no log line is written in are left
    // to OpenTelemetry.
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_span_events(FmtSpan::NONE);
    let logged = filter_fn(move |metadata| !trace_only(metadata));
    let registry = tracing_subscriber::registry()
        .with(built)
        .with(filter)
        .with(otel);
    if json {
        Box::new(registry.with(fmt.json().flatten_event(true).with_filter(logged)))
    } else {
        Box::new(registry.with(fmt.with_filter(logged)))
    }
}

/// ractor's span around an actor's whole life (`Actor`, with its id and
/// name), entered and left at every poll of the actor: each message a lane
/// handles, every step of a webhook's send. No layer builds it: a log line
/// inside an actor carries its own fields (app, repository, subscription),
/// an exported trace has its spans from the scan and the attempt, and an
/// actor's life as one span would only be a trace of hours.
fn actor_loop(metadata: &tracing::Metadata<'_>) -> bool {
    metadata.is_span() && metadata.target().starts_with("ractor")
}

/// A tracer provider that exports over OTLP/HTTP when an endpoint is
/// configured, and otherwise only assigns ids.
fn tracer_provider(
    instance: Option<&str>,
    exporting: bool,
) -> Result<SdkTracerProvider, TelemetryError> {
    let service_name = std::env::var("OTEL_SERVICE_NAME")
        .ok()
        .filter(|name| !name.trim().is_empty())
        .unwrap_or_else(|| DEFAULT_SERVICE_NAME.to_owned());
    let mut resource = Resource::builder()
        .with_service_name(service_name)
        .with_attribute(opentelemetry::KeyValue::new(
            "service.version",
            env!("CARGO_PKG_VERSION"),
        ));
    if let Some(instance) = instance {
        resource = resource.with_attribute(opentelemetry::KeyValue::new(
            "service.instance.id",
            instance.to_owned(),
        ));
    }
    let resource = resource.build();
    let builder = SdkTracerProvider::builder().with_resource(resource);
    let builder = if exporting {
        // The batch processor exports from a thread of its own, with the
        // blocking client: no runtime needed, none blocked. It takes rustls's
        // default provider.
        actors::tls::install_crypto_provider();
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .build()?;
        builder.with_batch_exporter(exporter)
    } else {
        builder
    };
    Ok(builder.build())
}

fn otlp_configured() -> bool {
    [
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    ]
    .iter()
    .any(|key| std::env::var(key).is_ok_and(|value| !value.trim().is_empty()))
}

/// Exports the spans still buffered and stops the exporter. Blocks (at most
/// the exporter's timeout): call it from a blocking thread.
pub fn shutdown() {
    if let Some(provider) = TRACER_PROVIDER.get()
        && let Err(err) = provider.shutdown_with_timeout(Duration::from_secs(10))
    {
        eprintln!("herald: flushing traces failed: {err}");
    }
}

/// The Prometheus recorder, installed on first use (without the instance
/// label when [`init`] did not install it first).
pub fn metrics_handle() -> Option<&'static PrometheusHandle> {
    install_metrics(None).as_ref()
}

/// The label every series carries: the id of the instance that serves it.
pub const INSTANCE_LABEL: &str = "instance_id";

fn install_metrics(instance: Option<&str>) -> &'static Option<PrometheusHandle> {
    METRICS.get_or_init(|| {
        let mut builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), LATENCY_BUCKETS)
            .expect("the bucket list is not empty");
        if let Some(instance) = instance {
            builder = builder.add_global_label(INSTANCE_LABEL, instance);
        }
        let handle = builder.install_recorder().ok()?;
        describe_metrics();
        metrics::gauge!("herald_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
        Some(handle)
    })
}

/// Help lines and units of Herald's series (docs/operations.md, "Telemetry").
fn describe_metrics() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_gauge!(
        "herald_build_info",
        "Always 1; the label says which version runs"
    );
    describe_counter!(
        "herald_scans_total",
        "Repository scans by outcome (changed, unchanged, failed)"
    );
    describe_histogram!(
        "herald_scan_duration_seconds",
        Unit::Seconds,
        "Duration of one repository scan: remote check, fetch, diff and commit"
    );
    describe_gauge!(
        "herald_workers_waiting",
        "Reservations waiting for a worker, by pool (scans, access checks) and priority (urgent, scheduled)"
    );
    describe_counter!(
        "herald_changes_found_total",
        "File changes found in watched repositories, by kind"
    );
    describe_counter!(
        "herald_events_created_total",
        "Outbox events written, by kind (one per subscription and change)"
    );
    describe_counter!(
        "herald_deliveries_total",
        "Webhook delivery attempts by app and outcome"
    );
    describe_histogram!(
        "herald_delivery_duration_seconds",
        Unit::Seconds,
        "Latency of one webhook request, by app"
    );
    describe_gauge!(
        "herald_outbox_depth",
        "Events waiting for delivery, by app (read at scrape time)"
    );
    describe_gauge!(
        "herald_breaker_state",
        "Circuit breakers that are not closed: 0 closed, 1 half-open, 2 open"
    );
    describe_gauge!(
        "herald_apps_disabled",
        "Apps disabled after failing for longer than delivery.disable_after"
    );
    describe_counter!(
        "herald_inbound_hooks_total",
        "Inbound push webhooks by provider and outcome"
    );
    describe_counter!(
        "herald_http_requests_total",
        "HTTP requests served, by method, route template and status"
    );
    describe_histogram!(
        "herald_http_request_duration_seconds",
        Unit::Seconds,
        "Time to answer an HTTP request, by method and route template"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What ractor makes around each actor's life, as ractor makes it.
    fn actor_span() -> tracing::Span {
        tracing::info_span!(target: "ractor::actor", "Actor", id = "0.1", name = "lane")
    }

    #[test]
    fn ractors_actor_spans_are_never_built_and_herald_s_are() {
        for (json, exporting) in [(false, false), (true, false), (false, true), (true, true)] {
            let tracer = SdkTracerProvider::builder().build().tracer("herald");
            let subscriber = subscriber(EnvFilter::new("info"), json, exporting, tracer);
            tracing::subscriber::with_default(subscriber, || {
                assert!(
                    actor_span().is_disabled(),
                    "json {json}, exporting {exporting}"
                );
                let scan = tracing::info_span!(target: "actors::scan", "scan", repository = "r");
                assert!(!scan.is_disabled(), "json {json}, exporting {exporting}");
                let attempt = tracing::info_span!(
                    target: "actors::delivery",
                    actors::telemetry::DELIVERY_ATTEMPT_SPAN,
                    event = "e"
                );
                assert_eq!(attempt.is_disabled(), !exporting);
            });
        }
    }
}
