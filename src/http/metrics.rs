//! HTTP request metrics and the scrape-time gauges of `/metrics`.
//!
//! Requests are labelled with their route *template* (`/api/events/:id`),
//! never the raw path: ids would make the label set unbounded. A path that
//! matches no template counts as `other`.

use std::collections::HashSet;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use actors::store::gauges::Gauges;
use entity::BreakerKind;
use warp::http::{Method, StatusCode};

/// Every route Herald serves, as templates: `:name` matches one path segment,
/// a trailing `*` the rest of the path. A static segment wins over `:name`.
const ROUTES: &[&str] = &[
    "/health",
    "/ready",
    "/version",
    "/metrics",
    "/openapi.json",
    "/asyncapi.json",
    "/docs",
    "/docs/*",
    "/hooks/github",
    "/hooks/gitlab",
    "/hooks/gitea",
    "/hooks/bitbucket",
    "/api/app",
    "/api/app/rotate-key",
    "/api/stream",
    "/api/stream/ack",
    "/api/changes",
    "/api/repositories",
    "/api/repositories/:id",
    "/api/repositories/:id/token",
    "/api/repositories/:id/resync",
    "/api/repositories/:id/scan",
    "/api/repositories/:id/replay",
    "/api/repositories/:id/replays/:replay_id",
    "/api/events",
    "/api/events/:id",
    "/api/events/:id/retry",
    "/api/events/:id/skip",
    "/admin/api/apps",
    "/admin/api/apps/onboard",
    "/admin/api/apps/:id",
    "/admin/api/apps/:id/enable",
    "/admin/api/overview",
    "/admin/api/hooks",
    "/admin/api/instances",
    "/admin/api/queue",
    "/admin/api/notifications/failed",
    "/admin/api/retry",
    "/admin/api/retry/all",
    "/admin/api/retry/app/:id",
    "/admin/api/retry/progress/:id",
    "/admin/api/retry/cancel/:id",
    "/admin/api/resync/:app_id/:repository_id",
    "/admin/api/repositories/:id/breaker/reset",
];

/// The route template `path` belongs to, or `other`.
pub fn route_template(path: &str) -> &'static str {
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    // A static segment beats a placeholder: try exact templates first.
    let matches = |template: &str, placeholders: bool| {
        let parts: Vec<&str> = template.split('/').skip(1).collect();
        if parts.last() == Some(&"*") {
            return placeholders
                && segments.len() >= parts.len() - 1
                && parts[..parts.len() - 1] == segments[..parts.len() - 1];
        }
        parts.len() == segments.len()
            && parts.iter().zip(&segments).all(|(part, segment)| {
                part == segment || (placeholders && part.starts_with(':') && !segment.is_empty())
            })
    };
    ROUTES
        .iter()
        .find(|t| matches(t, false))
        .or_else(|| ROUTES.iter().find(|t| matches(t, true)))
        .copied()
        .unwrap_or("other")
}

/// A bounded method label.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// Counts one answered request and its duration.
pub fn observe_request(method: &Method, path: &str, status: StatusCode, elapsed: Duration) {
    let method = method_label(method);
    let route = route_template(path);
    metrics::counter!(
        "herald_http_requests_total",
        "method" => method,
        "route" => route,
        "status" => status.as_u16().to_string(),
    )
    .increment(1);
    metrics::histogram!(
        "herald_http_request_duration_seconds",
        "method" => method,
        "route" => route,
    )
    .record(elapsed.as_secs_f64());
}

/// Labels set by earlier scrapes: an app deleted or a breaker closed since
/// then reads 0 instead of keeping its last value.
static REPORTED: Mutex<Option<Reported>> = Mutex::new(None);

#[derive(Default)]
struct Reported {
    apps: HashSet<String>,
    breakers: HashSet<(BreakerKind, String)>,
}

/// Sets the scrape-time gauges from a database reading.
pub fn publish_gauges(gauges: &Gauges) {
    let mut reported = REPORTED.lock().unwrap_or_else(PoisonError::into_inner);
    let reported = reported.get_or_insert_with(Reported::default);

    let apps: HashSet<String> = gauges
        .outbox_depth
        .iter()
        .map(|(app, _)| app.clone())
        .collect();
    for gone in reported.apps.difference(&apps) {
        metrics::gauge!("herald_outbox_depth", "app_id" => gone.clone()).set(0.0);
    }
    for (app, depth) in &gauges.outbox_depth {
        metrics::gauge!("herald_outbox_depth", "app_id" => app.clone()).set(*depth as f64);
    }
    reported.apps.extend(apps);

    let breakers: HashSet<(BreakerKind, String)> = gauges
        .breakers
        .iter()
        .map(|(kind, target, _)| (*kind, target.clone()))
        .collect();
    for (kind, target) in reported.breakers.difference(&breakers) {
        metrics::gauge!("herald_breaker_state", "breaker" => kind.as_str(), "target" => target.clone())
            .set(0.0);
    }
    for (kind, target, level) in &gauges.breakers {
        metrics::gauge!("herald_breaker_state", "breaker" => kind.as_str(), "target" => target.clone())
            .set(*level);
    }
    reported.breakers.extend(breakers);

    metrics::gauge!("herald_apps_disabled").set(gauges.apps_disabled as f64);
}

#[cfg(test)]
mod tests {
    use super::route_template;

    #[test]
    fn paths_map_to_bounded_templates() {
        for (path, template) in [
            ("/health", "/health"),
            ("/metrics", "/metrics"),
            ("/api/repositories", "/api/repositories"),
            ("/api/repositories/", "/api/repositories"),
            ("/api/repositories/repo_01ABC", "/api/repositories/:id"),
            (
                "/api/repositories/repo_01ABC/token",
                "/api/repositories/:id/token",
            ),
            (
                "/api/repositories/repo_01ABC/scan",
                "/api/repositories/:id/scan",
            ),
            (
                "/api/repositories/repo_01ABC/replay",
                "/api/repositories/:id/replay",
            ),
            (
                "/api/repositories/repo_01ABC/replays/rpl_01XYZ",
                "/api/repositories/:id/replays/:replay_id",
            ),
            ("/hooks/bitbucket", "/hooks/bitbucket"),
            ("/admin/api/hooks", "/admin/api/hooks"),
            ("/admin/api/instances", "/admin/api/instances"),
            ("/admin/api/apps/onboard", "/admin/api/apps/onboard"),
            ("/admin/api/apps/app_01XYZ", "/admin/api/apps/:id"),
            ("/admin/api/retry/all", "/admin/api/retry/all"),
            ("/admin/api/retry/app/app_1", "/admin/api/retry/app/:id"),
            (
                "/admin/api/resync/app_1/repo_2",
                "/admin/api/resync/:app_id/:repository_id",
            ),
            ("/docs", "/docs"),
            ("/docs/swagger-ui.css", "/docs/*"),
            ("/docs/a/b/c", "/docs/*"),
            ("/", "other"),
            ("/wp-admin/install.php", "other"),
            ("/api/repositories/a/b/c/d", "other"),
        ] {
            assert_eq!(route_template(path), template, "{path}");
        }
    }
}
