//! Telemetry end to end: OTLP traces received by a real OTLP/HTTP endpoint and
//! decoded from protobuf; `/metrics` parsed as Prometheus text while events
//! flow through the real binary, a real git server and a real receiver.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value;
use prost::Message;
use reqwest::StatusCode;
use warp::Filter;

use crate::gitserver::TestRepo;
use crate::helpers::{Rig, TestApp, engine_with};
use crate::receiver::Reply;

/// One exported span, ids in lowercase hex.
#[derive(Debug, Clone)]
struct ExportedSpan {
    name: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    attributes: HashMap<String, String>,
    service_name: String,
}

/// An OTLP/HTTP trace endpoint: `POST /v1/traces` with a protobuf
/// `ExportTraceServiceRequest`, as a collector receives it.
struct OtlpCollector {
    endpoint: String,
    spans: Arc<Mutex<Vec<ExportedSpan>>>,
    _shutdown: tokio::sync::oneshot::Sender<()>,
}

impl OtlpCollector {
    async fn start() -> OtlpCollector {
        let spans = Arc::new(Mutex::new(Vec::new()));
        let record = spans.clone();
        let route = warp::post()
            .and(warp::path!("v1" / "traces"))
            .and(warp::header::exact_ignore_case(
                "content-type",
                "application/x-protobuf",
            ))
            .and(warp::body::bytes())
            .and_then(move |body: bytes::Bytes| {
                let record = record.clone();
                async move {
                    let request = ExportTraceServiceRequest::decode(body)
                        .expect("the exporter sends a valid ExportTraceServiceRequest");
                    record.lock().expect("span lock").extend(flatten(request));
                    let answer = ExportTraceServiceResponse::default().encode_to_vec();
                    Ok::<_, Infallible>(warp::reply::with_header(
                        answer,
                        "content-type",
                        "application/x-protobuf",
                    ))
                }
            });
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .expect("a port");
        let addr = listener.local_addr().expect("address");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(
            warp::serve(route)
                .incoming(listener)
                .graceful(async move {
                    let _ = rx.await;
                })
                .run(),
        );
        OtlpCollector {
            endpoint: format!("http://{addr}"),
            spans,
            _shutdown: tx,
        }
    }

    fn spans(&self) -> Vec<ExportedSpan> {
        self.spans.lock().expect("span lock").clone()
    }
}

fn flatten(request: ExportTraceServiceRequest) -> Vec<ExportedSpan> {
    let mut spans = Vec::new();
    for resource_spans in request.resource_spans {
        let service_name = resource_spans
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|kv| kv.key == "service.name")
            .map(|kv| string_value(kv.value.as_ref()))
            .unwrap_or_default();
        for scope in resource_spans.scope_spans {
            for span in scope.spans {
                spans.push(ExportedSpan {
                    name: span.name,
                    trace_id: hex::encode(span.trace_id),
                    span_id: hex::encode(span.span_id),
                    parent_span_id: hex::encode(span.parent_span_id),
                    attributes: span
                        .attributes
                        .iter()
                        .map(|kv| (kv.key.clone(), string_value(kv.value.as_ref())))
                        .collect(),
                    service_name: service_name.clone(),
                });
            }
        }
    }
    spans
}

fn string_value(value: Option<&opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match value.and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        _ => String::new(),
    }
}

/// `00-<trace>-<parent>-<flags>` → (trace, parent).
fn parse_traceparent(value: &str) -> (String, String) {
    let parts: Vec<&str> = value.split('-').collect();
    assert_eq!(parts.len(), 4, "a W3C traceparent: {value}");
    assert_eq!(parts[0], "00", "{value}");
    assert_eq!(parts[1].len(), 32, "{value}");
    assert_eq!(parts[2].len(), 16, "{value}");
    (parts[1].to_owned(), parts[2].to_owned())
}

#[tokio::test]
async fn one_trace_follows_a_change_from_the_scan_to_every_delivery_attempt() {
    let collector = OtlpCollector::start().await;
    let repo = TestRepo::new("main");
    repo.write("docs/a.md", "alpha\n");
    repo.commit("first");
    let rig = Rig::serve(&repo).await;
    // Spans leave in one batch at shutdown (the schedule delay is far
    // longer than the test): what arrives proves the flush on SIGTERM.
    let settings = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", collector.endpoint.as_str()),
        ("OTEL_SERVICE_NAME", "herald-under-test"),
        ("OTEL_BSP_SCHEDULE_DELAY", "600000"),
    ];
    let (mut app, client, repository_id) = rig.watched("traced", &settings).await;
    rig.receiver
        .wait_for("the initial snapshot", |r| r.len() == 1)
        .await;

    // The change's first attempt fails, the second succeeds: two attempts.
    rig.receiver.script([Reply::status(500)]);
    repo.write("docs/a.md", "alpha, revised\n");
    let commit = repo.commit("revise");
    rig.served.push(&repo, "main", false);
    app.wait_for_commit(&client, &repository_id, &commit).await;
    rig.receiver
        .wait_for("the update after a retry", |r| r.len() == 2)
        .await;
    let attempts: Vec<_> = rig
        .receiver
        .received()
        .into_iter()
        .filter(|r| r.endpoint == "update")
        .collect();
    assert_eq!(attempts.len(), 2, "one failed attempt, one delivered");
    let initial = rig.receiver.accepted()[0].clone();

    assert_eq!(app.terminate().await, Some(0));
    let spans = collector.spans();
    assert!(
        spans.iter().all(|s| s.service_name == "herald-under-test"),
        "OTEL_SERVICE_NAME names the service"
    );

    // Both attempts of the update carry one trace, each its own span.
    let headers: Vec<(String, String)> = attempts
        .iter()
        .map(|r| parse_traceparent(r.header("traceparent")))
        .collect();
    let trace = headers[0].0.clone();
    assert_eq!(headers[1].0, trace, "retries stay in the scan's trace");
    assert_ne!(headers[0].1, headers[1].1, "each attempt is a span");

    // That trace holds the scan that found the change …
    let in_trace: Vec<&ExportedSpan> = spans.iter().filter(|s| s.trace_id == trace).collect();
    let scans: Vec<&&ExportedSpan> = in_trace.iter().filter(|s| s.name == "scan").collect();
    assert_eq!(
        scans.len(),
        1,
        "one scan span in the trace; exported: {:#?}",
        spans
            .iter()
            .map(|s| (&s.name, &s.trace_id))
            .collect::<Vec<_>>()
    );
    let scan = scans[0];
    assert_eq!(scan.attributes["repository"], repository_id);
    assert_eq!(scan.attributes["outcome"], "changed");
    assert!(scan.parent_span_id.is_empty(), "a scan starts its trace");

    // … and both delivery attempts, children of the scan, whose span ids are
    // the ones the receiver saw in `traceparent`.
    for (header, expected) in headers.iter().zip(["failed", "delivered"]) {
        let attempt = in_trace
            .iter()
            .find(|s| s.span_id == header.1)
            .unwrap_or_else(|| panic!("no exported span for traceparent {header:?}"));
        assert_eq!(attempt.name, "delivery_attempt");
        assert_eq!(attempt.parent_span_id, scan.span_id);
        assert_eq!(attempt.attributes["app"], client.app_id);
        assert_eq!(attempt.attributes["kind"], "updated");
        assert_eq!(attempt.attributes["outcome"], expected);
    }

    // The initial snapshot came from another scan: a trace of its own.
    let (initial_trace, initial_span) = parse_traceparent(initial.header("traceparent"));
    assert_ne!(initial_trace, trace);
    let initial_attempt = spans
        .iter()
        .find(|s| s.span_id == initial_span)
        .expect("the initial delivery's span was exported");
    assert!(
        spans.iter().any(|s| s.name == "scan"
            && s.trace_id == initial_trace
            && s.span_id == initial_attempt.parent_span_id),
        "the initial delivery continues the first scan's trace"
    );

    // HTTP requests have spans too.
    assert!(spans.iter().any(|s| s.name == "request"));
}

/// `/metrics`, parsed.
pub(crate) async fn scrape(app: &TestApp) -> prometheus_parse::Scrape {
    let response = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .expect("herald answers");
    assert_eq!(response.status(), StatusCode::OK);
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    let text = response.text().await.expect("a body");
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
        .expect("/metrics is Prometheus text format")
}

/// The value of the series `name` whose labels include `labels` (0 when
/// absent).
pub(crate) fn value(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match &s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => *v,
            prometheus_parse::Value::Histogram(buckets) => buckets.last().map_or(0.0, |b| b.count),
            prometheus_parse::Value::Summary(_) => 0.0,
        })
        .sum()
}

/// Scrapes until `done` holds (bounded), returning that scrape.
pub(crate) async fn scrape_until(
    app: &TestApp,
    what: &str,
    done: impl Fn(&prometheus_parse::Scrape) -> bool,
) -> prometheus_parse::Scrape {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let scrape = scrape(app).await;
        if done(&scrape) {
            return scrape;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "gave up waiting for {what}; last scrape: {:#?}",
            scrape
                .samples
                .iter()
                .filter(|s| s.metric.starts_with("herald_") && !s.metric.starts_with("herald_http"))
                .map(|s| (&s.metric, &s.labels, &s.value))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn metrics_count_scans_changes_events_and_deliveries() {
    let repo = TestRepo::new("main");
    repo.write("docs/a.md", "alpha\n");
    repo.write("docs/b.md", "beta\n");
    repo.commit("first");
    let rig = Rig::serve(&repo).await;
    let receiver = &rig.receiver;
    let app = engine_with(&[]).await;

    let before = scrape(&app).await;
    assert_eq!(
        value(
            &before,
            "herald_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
    assert_eq!(value(&before, "herald_events_created_total", &[]), 0.0);
    assert_eq!(value(&before, "herald_deliveries_total", &[]), 0.0);
    assert_eq!(value(&before, "herald_apps_disabled", &[]), 0.0);

    let (client, repository_id) = rig.subscribe(&app, receiver, "measured").await;
    let app_id = client.app_id.as_str();
    receiver
        .wait_for("the initial snapshot", |r| r.len() == 2)
        .await;
    let delivered = [("app_id", app_id), ("outcome", "delivered")];
    let after_snapshot = scrape_until(&app, "the snapshot's deliveries", |s| {
        value(s, "herald_deliveries_total", &delivered) == 2.0
            && value(s, "herald_outbox_depth", &[("app_id", app_id)]) == 0.0
    })
    .await;
    assert_eq!(
        value(
            &after_snapshot,
            "herald_events_created_total",
            &[("kind", "created")]
        ),
        2.0
    );
    assert_eq!(
        value(
            &after_snapshot,
            "herald_changes_found_total",
            &[("kind", "created")]
        ),
        2.0,
        "the first snapshot finds every file"
    );
    assert!(
        value(
            &after_snapshot,
            "herald_scans_total",
            &[("outcome", "changed")]
        ) >= 1.0
    );
    assert_eq!(
        value(
            &after_snapshot,
            "herald_delivery_duration_seconds",
            &[("app_id", app_id)]
        ),
        2.0,
        "one latency observation per attempt"
    );

    // A change of one file and a deletion, the first attempt rate limited.
    receiver.script([Reply {
        status: 429,
        retry_after: Some(0),
        delay: Duration::ZERO,
    }]);
    repo.write("docs/a.md", "alpha, revised\n");
    repo.remove("docs/b.md");
    let commit = repo.commit("change");
    rig.served.push(&repo, "main", false);
    app.wait_for_commit(&client, &repository_id, &commit).await;
    receiver.wait_for("the change", |r| r.len() == 4).await;
    let after_change = scrape_until(&app, "the change's deliveries", |s| {
        value(s, "herald_deliveries_total", &delivered) == 4.0
            && value(s, "herald_outbox_depth", &[("app_id", app_id)]) == 0.0
    })
    .await;
    for (kind, n) in [("created", 2.0), ("updated", 1.0), ("deleted", 1.0)] {
        assert_eq!(
            value(
                &after_change,
                "herald_events_created_total",
                &[("kind", kind)]
            ),
            n,
            "{kind} events"
        );
    }
    assert_eq!(
        value(
            &after_change,
            "herald_changes_found_total",
            &[("kind", "updated")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &after_change,
            "herald_changes_found_total",
            &[("kind", "deleted")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &after_change,
            "herald_deliveries_total",
            &[("app_id", app_id), ("outcome", "rate_limited")]
        ),
        1.0
    );
    assert!(
        value(
            &after_change,
            "herald_scans_total",
            &[("outcome", "changed")]
        ) >= 2.0
    );
    assert!(
        value(
            &after_change,
            "herald_scan_duration_seconds",
            &[("outcome", "changed")]
        ) >= 2.0
    );

    // Requests are counted by route template, never by raw path.
    assert!(
        value(
            &after_change,
            "herald_http_requests_total",
            &[
                ("method", "GET"),
                ("route", "/api/repositories/:id"),
                ("status", "200")
            ]
        ) >= 1.0
    );
    assert!(
        value(
            &after_change,
            "herald_http_request_duration_seconds",
            &[("method", "POST"), ("route", "/admin/api/apps/onboard")]
        ) >= 1.0
    );
    assert!(
        after_change
            .samples
            .iter()
            .filter_map(|s| s.labels.get("route"))
            .all(|route| !route.contains("repo_") && !route.contains("app_")),
        "no id in a route label"
    );
    assert!(
        after_change.docs.contains_key("herald_deliveries_total"),
        "series carry HELP lines"
    );
}

#[test]
fn the_dashboard_uses_only_documented_series() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let manual = std::fs::read_to_string(root.join("docs/operations.md"))
        .expect("docs/operations.md, whose Telemetry section lists the series");
    let dashboard = std::fs::read_to_string(root.join("config/grafana/dashboards/herald.json"))
        .expect("the Grafana dashboard");
    serde_json::from_str::<serde_json::Value>(&dashboard).expect("the dashboard is JSON");
    let mut used: Vec<&str> = dashboard
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|word| word.starts_with("herald_"))
        .map(|word| word.trim_end_matches("_bucket"))
        .collect();
    used.sort_unstable();
    used.dedup();
    assert!(
        used.len() >= 10,
        "the dashboard shows Herald's series: {used:?}"
    );
    for series in used {
        assert!(
            manual.contains(&format!("| `{series}` |")),
            "{series} is on the dashboard but not in docs/operations.md's metric table"
        );
    }
}
