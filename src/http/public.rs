//! Public routes: liveness, readiness, version, Prometheus metrics (the
//! OpenAPI document and its docs page are in [`super::openapi`]).

use actors::clock::{now_ms, rfc3339_ms};
use tracing::warn;
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::{Reply, Response};

use super::filters::{first_of, with_state};
use super::models::{HealthBody, ReadyBody, VersionBody};
use super::state::AppState;

pub fn routes(state: AppState) -> BoxedFilter<(Response,)> {
    let health = warp::path!("health")
        .and(warp::get())
        .and(with_state(state.clone()))
        .map(health);
    let ready = warp::path!("ready")
        .and(warp::get())
        .and(with_state(state.clone()))
        .then(ready);
    let metrics = warp::path!("metrics")
        .and(warp::get())
        .and(with_state(state))
        .then(metrics);
    let version = warp::path!("version").and(warp::get()).map(version);
    first_of([
        health.boxed(),
        ready.boxed(),
        version.boxed(),
        metrics.boxed(),
    ])
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/health", tag = "public",
    responses((status = 200, description = "Herald is running", body = HealthBody)))]
pub(crate) fn health(state: AppState) -> Response {
    warp::reply::json(&HealthBody {
        status: "ok",
        timestamp: rfc3339_ms(now_ms()),
        uptime: state.started_at.elapsed().as_secs_f64(),
    })
    .into_response()
}

/// Readiness: the database answers and the actor tree runs.
#[utoipa::path(get, path = "/ready", tag = "public",
    responses(
        (status = 200, description = "Ready to serve", body = ReadyBody),
        (status = 503, description = "Not ready", body = ReadyBody)))]
pub(crate) async fn ready(state: AppState) -> Response {
    let database = state.store.ping().await.is_ok();
    let actors = state.engine.is_healthy().await;
    let ready = database && actors;
    let body = ReadyBody {
        status: if ready { "ready" } else { "not_ready" },
        database,
        actors,
    };
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    warp::reply::with_status(warp::reply::json(&body), status).into_response()
}

/// The running version.
#[utoipa::path(get, path = "/version", tag = "public",
    responses((status = 200, description = "Version", body = VersionBody)))]
pub(crate) fn version() -> Response {
    warp::reply::json(&VersionBody {
        name: "herald",
        version: env!("CARGO_PKG_VERSION"),
    })
    .into_response()
}

/// Prometheus metrics (text format 0.0.4): the `herald_*` series listed in
/// docs/operations.md. Outbox depth, breaker states and disabled apps are read from
/// the database now; counters and histograms are this instance's since start.
#[utoipa::path(get, path = "/metrics", tag = "public",
    responses((status = 200, description = "Prometheus text exposition format",
        content_type = "text/plain; version=0.0.4", body = String)))]
pub(crate) async fn metrics(state: AppState) -> Response {
    let Some(handle) = crate::telemetry::metrics_handle() else {
        return super::error::ApiError::NotFound("Not found".to_owned()).into_response();
    };
    // A database outage still leaves the counters readable.
    match state.store.gauges(now_ms()).await {
        Ok(gauges) => super::metrics::publish_gauges(&gauges),
        Err(err) => warn!(error = %err, "could not read the gauges for /metrics"),
    }
    warp::reply::with_header(
        handle.render(),
        "content-type",
        "text/plain; version=0.0.4; charset=utf-8",
    )
    .into_response()
}
