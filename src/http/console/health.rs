//! The delivery-health page (`/admin/health`) and an app's charts on its
//! page: deliveries and failures, latency p50 / p95, pending events per
//! subscription, read from the per-minute rollups
//! ([`actors::store::rollups`]) that upkeep keeps, never from the raw
//! attempts. The charts refresh every 30 s through htmx, which swaps in
//! the same section rendered again (`…/charts` fragments).

use actors::clock::now_ms;
use actors::ids::AppId;
use actors::store::rollups::{AppDeliveries, ChartWindow, DeliveryBin, MINUTE_MS, PendingSeries};
use maud::{Markup, html};
use serde::Deserialize;

use super::Session;
use super::chart::{Axis, CategoryChart, Series, Shape, TimeChart};
use super::layout;
use crate::http::error::ApiError;
use crate::http::state::AppState;

/// Subscriptions drawn in a pending chart: the ones that had the most.
const PENDING_LINES: usize = 8;
/// Apps given charts of their own on the health page (by name).
const APP_CHARTS: usize = 20;

/// The span a chart covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Span {
    /// The last hour, a bin a minute.
    Hour,
    /// The last 24 hours, a bin per 15 minutes (the data stays per minute).
    Day,
}

impl Span {
    fn parse(raw: Option<&str>) -> Result<Self, ApiError> {
        match raw {
            None | Some("1h") => Ok(Span::Hour),
            Some("24h") => Ok(Span::Day),
            Some(_) => Err(ApiError::BadRequest("window must be 1h or 24h".to_owned())),
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Span::Hour => "1h",
            Span::Day => "24h",
        }
    }

    fn window(self, now: i64) -> ChartWindow {
        match self {
            Span::Hour => ChartWindow::ending_at(now, 60, 1),
            Span::Day => ChartWindow::ending_at(now, 24 * 60, 15),
        }
    }
}

/// The health page's query: `window=1h|24h`, `app=<id>`.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct HealthQuery {
    pub window: Option<String>,
    pub app: Option<String>,
}

/// What the query asks for, checked: a malformed window is a 400, an app
/// id that is malformed or unknown a 404.
struct Asked {
    span: Span,
    app: Option<(AppId, String)>,
}

async fn asked(state: &AppState, query: &HealthQuery) -> Result<Asked, ApiError> {
    let span = Span::parse(query.window.as_deref())?;
    let app = match query.app.as_deref().filter(|id| !id.is_empty()) {
        None => None,
        Some(raw) => {
            let not_found = || ApiError::NotFound("App not found".to_owned());
            let id = AppId::parse(raw).ok_or_else(not_found)?;
            let (summary, _) = state.store.app_detail(&id).await?.ok_or_else(not_found)?;
            Some((id, summary.app.name))
        }
    };
    Ok(Asked { span, app })
}

fn query_string(span: Span, app: Option<&AppId>) -> String {
    match app {
        Some(id) => format!("window={}&app={id}", span.as_str()),
        None => format!("window={}", span.as_str()),
    }
}

/// `/admin/health`: the charts of every app (or of one), with the window
/// and app to choose.
pub async fn page(
    session: Session,
    state: AppState,
    query: HealthQuery,
) -> Result<Markup, ApiError> {
    let asked = asked(&state, &query).await?;
    let charts = charts_of(&state, &asked).await?;
    let app = asked.app.as_ref().map(|(id, _)| id);
    let choice = |span: Span, label: &str| {
        let href = format!("/admin/health?{}", query_string(span, app));
        html! {
            li {
                @if span == asked.span {
                    a href=(href) aria-current="page" { (label) }
                } @else {
                    a href=(href) { (label) }
                }
            }
        }
    };
    Ok(layout::page(
        &session,
        "/admin/health",
        "Delivery health",
        None,
        &html! {
            nav.choices aria-label="Window" {
                ul {
                    (choice(Span::Hour, "Last hour"))
                    (choice(Span::Day, "Last 24 hours"))
                }
            }
            @if let Some((id, name)) = &asked.app {
                p { "Showing " a href={ "/admin/apps/" (id) } { (name) } " only. "
                    a href={ "/admin/health?window=" (asked.span.as_str()) } { "Show every app" } }
            }
            (charts)
            p.hint { "Figures are kept per minute by upkeep (the current minute fills in as it goes); the charts refresh every 30 seconds." }
        },
    ))
}

/// `/admin/health/charts`: the page's charts alone, for htmx to swap in.
pub async fn charts(state: AppState, query: HealthQuery) -> Result<Markup, ApiError> {
    let asked = asked(&state, &query).await?;
    charts_of(&state, &asked).await
}

async fn charts_of(state: &AppState, asked: &Asked) -> Result<Markup, ApiError> {
    let window = asked.span.window(now_ms());
    let app = asked.app.as_ref().map(|(id, _)| id);
    let deliveries = state.store.deliveries(window, app).await?;
    let pending = state
        .store
        .pending_series(window, app, PENDING_LINES)
        .await?;
    let url = format!("/admin/health/charts?{}", query_string(asked.span, app));
    let axis = axis(window);
    Ok(html! {
        section id="health-charts" aria-labelledby="health-title" hx-get=(url)
            hx-trigger="every 30s" hx-swap="outerHTML" {
            h2 id="health-title" { "Deliveries" }
            (delivery_chart("deliveries", "Deliveries and failures", &axis, &deliveries.overall))
            @match &asked.app {
                Some((id, name)) => {
                    (latency_chart(&format!("latency-{id}"), &format!("Latency of {name}"), &axis, &deliveries.overall))
                },
                None => { (latency_by_app(&deliveries.apps)) },
            }
            (pending_chart("pending", "Pending events per subscription", &axis, &pending))
            @if asked.app.is_none() && !deliveries.apps.is_empty() {
                h2 { "By app" }
                @for app in deliveries.apps.iter().take(APP_CHARTS) {
                    section.app-health aria-labelledby={ "app-" (app.app_id) } {
                        h3 id={ "app-" (app.app_id) } {
                            a href={ "/admin/health?" (query_string(asked.span, Some(&AppId::stored(app.app_id.clone())))) } { (app.app_name) }
                        }
                        (app_charts(app, &axis))
                    }
                }
                @if deliveries.apps.len() > APP_CHARTS {
                    p.hint { "Showing " (APP_CHARTS) " of " (deliveries.apps.len()) " apps; choose one by its link to see the others." }
                }
            }
        }
    })
}

/// An app's charts over the last hour, on its page: a section that
/// refreshes itself from `/admin/apps/{id}/health`.
pub async fn app_section(state: &AppState, app: &AppId) -> Result<Markup, ApiError> {
    let window = Span::Hour.window(now_ms());
    let deliveries = state.store.deliveries(window, Some(app)).await?;
    let pending = state
        .store
        .pending_series(window, Some(app), PENDING_LINES)
        .await?;
    let axis = axis(window);
    let app_deliveries = deliveries.apps.into_iter().next();
    Ok(html! {
        section id="app-health" aria-labelledby="app-health-title"
            hx-get={ "/admin/apps/" (app) "/health" } hx-trigger="every 30s" hx-swap="outerHTML" {
            h2 id="app-health-title" { "Delivery health, last hour" }
            @match &app_deliveries {
                Some(d) => { (app_charts(d, &axis)) },
                None => { (delivery_chart(&format!("deliveries-{app}"), "Deliveries and failures", &axis, &deliveries.overall)) },
            }
            (pending_chart(&format!("pending-{app}"), "Pending events per subscription", &axis, &pending))
            p { a href={ "/admin/health?window=24h&app=" (app) } { "The last 24 hours" } }
        }
    })
}

/// `/admin/apps/{id}/health`: [`app_section`] for htmx to swap in.
pub async fn app_fragment(id: String, state: AppState) -> Result<Markup, ApiError> {
    let app = AppId::parse(&id).ok_or_else(|| ApiError::NotFound("App not found".to_owned()))?;
    app_section(&state, &app).await
}

fn axis(window: ChartWindow) -> Axis {
    Axis {
        starts: (0..window.bins()).map(|i| window.bin_start_ms(i)).collect(),
        bin_ms: window.bin * MINUTE_MS,
    }
}

fn app_charts(app: &AppDeliveries, axis: &Axis) -> Markup {
    html! {
        (delivery_chart(&format!("deliveries-{}", app.app_id), &format!("Deliveries and failures of {}", app.app_name), axis, &app.bins))
        (latency_chart(&format!("latency-{}", app.app_id), &format!("Latency of {}", app.app_name), axis, &app.bins))
    }
}

fn delivery_chart(id: &str, title: &str, axis: &Axis, bins: &[DeliveryBin]) -> Markup {
    let counts =
        |pick: fn(&DeliveryBin) -> u64| bins.iter().map(|b| Some(pick(b) as f64)).collect();
    TimeChart {
        id,
        title,
        unit: "attempts",
        axis,
        shape: Shape::Stacked,
        series: vec![
            Series {
                name: "delivered".into(),
                class: "s-delivered",
                values: counts(|b| b.delivered),
            },
            Series {
                name: "failed".into(),
                class: "s-failed",
                values: counts(|b| b.failed),
            },
        ],
    }
    .render()
}

fn latency_chart(id: &str, title: &str, axis: &Axis, bins: &[DeliveryBin]) -> Markup {
    TimeChart {
        id,
        title,
        unit: "ms",
        axis,
        shape: Shape::Lines,
        series: latency_series(bins),
    }
    .render()
}

/// p50 and p95 of each app over the whole window.
fn latency_by_app(apps: &[AppDeliveries]) -> Markup {
    let totals: Vec<DeliveryBin> = apps.iter().map(AppDeliveries::total).collect();
    CategoryChart {
        id: "latency-by-app",
        title: "Latency by app over the window",
        unit: "ms",
        categories: apps.iter().map(|a| a.app_name.clone()).collect(),
        series: latency_series(&totals),
    }
    .render()
}

/// The p50 and p95 latency of each bin, to the millisecond.
fn latency_series(bins: &[DeliveryBin]) -> Vec<Series> {
    let quantile = |q: f64| {
        bins.iter()
            .map(|b| b.latency.percentile(q).map(f64::round))
            .collect()
    };
    vec![
        Series {
            name: "p50".into(),
            class: "s-p50",
            values: quantile(0.5),
        },
        Series {
            name: "p95".into(),
            class: "s-p95",
            values: quantile(0.95),
        },
    ]
}

/// The pending lines, one per subscription, coloured by their place.
const LINE_CLASSES: [&str; PENDING_LINES] = [
    "s-line0", "s-line1", "s-line2", "s-line3", "s-line4", "s-line5", "s-line6", "s-line7",
];

fn pending_chart(id: &str, title: &str, axis: &Axis, series: &[PendingSeries]) -> Markup {
    TimeChart {
        id,
        title,
        unit: "events",
        axis,
        shape: Shape::Lines,
        series: series
            .iter()
            .zip(LINE_CLASSES)
            .map(|(s, class)| Series {
                name: format!("{} · {}", s.app_name, s.repository),
                class,
                values: s.bins.iter().map(|&n| Some(n as f64)).collect(),
            })
            .collect(),
    }
    .render()
}
