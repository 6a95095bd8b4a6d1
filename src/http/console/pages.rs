//! The console's pages. Each reads through the same store queries as the
//! admin API and renders with maud (escaped by default).

use actors::broker::Destination;
use actors::clock::now_ms;
use actors::ids::AppId;
use actors::store::apps::DeliveryWindow;
use actors::store::inbound::HookFilter;
use entity::{BreakerKind, SubscriptionStatus};
use maud::{Markup, html};

use super::layout::{self, action, empty, pager, status, when, when_opt};
use super::{ListQuery, Session};
use crate::http::error::ApiError;
use crate::http::state::AppState;

const PER_PAGE: u64 = 50;
/// An instance unseen for longer than this is shown as gone.
const ALIVE_WITHIN_MS: i64 = 60_000;

/// The notice of an action just done; only known words are shown.
pub(super) fn notice(query: &ListQuery) -> Option<&'static str> {
    match query.notice.as_deref()? {
        "retried" => Some("Retry queued: the event will be delivered again."),
        "skipped" => Some("Event skipped: its subscription goes on with the next one."),
        "enabled" => Some("App enabled: its waiting events are delivered again."),
        "deleted" => Some("App deleted, with its subscriptions and events."),
        "resync" => Some("Re-sync queued: the whole tree is sent again."),
        "reset" => Some("Breaker reset: the repository is scanned now."),
        "scan" => Some("Scan queued: the repository is fetched now."),
        _ => None,
    }
}

fn page_of(query: &ListQuery) -> u64 {
    query.page.unwrap_or(1).max(1)
}

pub fn login(csrf: &str, error: Option<&str>) -> Markup {
    layout::bare(
        "Sign in to Herald",
        &html! {
            @if let Some(error) = error {
                p.error role="alert" id="login-error" { (error) }
            }
            form method="post" action="/admin/login" {
                input type="hidden" name="csrf" value=(csrf);
                label for="token" { "Admin token" }
                input id="token" name="token" type="password" required autocomplete="current-password"
                    autofocus aria-describedby=[error.map(|_| "login-error")];
                p.hint { "The admin token from the configuration (admin.token), or the one the first start wrote into the data directory." }
                button type="submit" { "Sign in" }
            }
        },
    )
}

pub async fn overview(session: Session, state: AppState) -> Result<Markup, ApiError> {
    let counts = overview_counts(state).await?;
    Ok(layout::page(
        &session,
        "/admin/overview",
        "Overview",
        None,
        &html! {
            (counts)
            p.hint { "The counts refresh every 5 seconds." }
        },
    ))
}

/// The overview's counts, polled by htmx every 5 s (the section replaces
/// itself).
pub async fn overview_counts(state: AppState) -> Result<Markup, ApiError> {
    // Only what waits: the console's counts stay cheap whatever history
    // retention keeps.
    let o = state.store.overview(false).await?;
    let instances = state.store.instances().await?;
    let now = now_ms();
    let alive = instances
        .iter()
        .filter(|i| now - i.last_seen_at <= ALIVE_WITHIN_MS)
        .count();
    let dead = o.events.get(entity::EventStatus::Dead);
    let card = |label: &str, value: u64, href: &str| {
        html! {
            div.card {
                dt { a href=(href) { (label) } }
                dd { (value) }
            }
        }
    };
    Ok(html! {
        section id="counts" aria-labelledby="counts-title" hx-get="/admin/overview/counts"
            hx-trigger="every 5s" hx-swap="outerHTML" {
            h2 id="counts-title" { "Now" }
            dl.cards {
                (card("Apps active", o.apps.get(entity::AppStatus::Active), "/admin/apps"))
                (card("Apps disabled", o.apps.get(entity::AppStatus::Disabled), "/admin/apps"))
                (card("Repositories", o.repositories, "/admin/repositories"))
                (card("Pending events", o.events.get(entity::EventStatus::Pending), "/admin/apps"))
                (card("Dead events", dead, "/admin/events"))
                (card("Open git breakers", o.open_breakers.get(BreakerKind::Git), "/admin/repositories"))
                (card("Open endpoint breakers", o.open_breakers.get(BreakerKind::Delivery), "/admin/apps"))
                (card("Instances alive", alive as u64, "/admin/instances"))
            }
            h2 { "Subscriptions by status" }
            dl.cards {
                @for s in [
                    SubscriptionStatus::PendingSnapshot,
                    SubscriptionStatus::Syncing,
                    SubscriptionStatus::Synced,
                    SubscriptionStatus::Failed,
                    SubscriptionStatus::Paused,
                ] {
                    (card(s.as_str(), o.subscriptions.get(s), "/admin/apps"))
                }
            }
        }
    })
}

pub async fn dead_events(
    session: Session,
    state: AppState,
    query: ListQuery,
) -> Result<Markup, ApiError> {
    let page = page_of(&query);
    let (dead, total) = state.store.dead_events(page, PER_PAGE).await?;
    Ok(layout::page(
        &session,
        "/admin/events",
        "Dead events",
        notice(&query),
        &html! {
            @if dead.is_empty() {
                (empty("No dead events: every event was delivered or is still being tried. An event lands here after delivery.max_attempts failed attempts."))
            } @else {
                p { (total) " events gave up after their last attempt. Retry one once its receiver is fixed, or skip it to let its subscription go on." }
                div.actions {
                    (action(&session, "/admin/events/retry-all", "Retry all", "Retry all dead events, in the background"))
                }
                div.scroll {
                    table {
                        caption.visually-hidden { "Dead events, newest first" }
                        thead { tr {
                            th scope="col" { "Event" } th scope="col" { "App" } th scope="col" { "Repository" }
                            th scope="col" { "Last attempt" } th scope="col" { "Response" } th scope="col" { "Actions" }
                        } }
                        tbody {
                            @for d in &dead {
                                @let e = &d.event;
                                tr {
                                    td { code { (e.id) } br; (e.kind.to_string()) " " (e.path.as_deref().unwrap_or("")) br; span.muted { (e.attempts) " attempts, created " (when(e.created_at)) } }
                                    td { a href={ "/admin/apps/" (e.app_id) } { (d.app_name.as_deref().unwrap_or(&e.app_id)) } }
                                    td { @match &d.repository { Some(r) => { (r.owner) "/" (r.name) }, None => { code { (e.repository_id) } } } }
                                    td {
                                        @match &d.last_attempt {
                                            Some(a) => {
                                                @match a.status_code { Some(code) => { "HTTP " (code) }, None => { (a.error_class.map_or("no answer", entity::ErrorClass::as_str)) } }
                                                br; (when(a.attempted_at))
                                            },
                                            None => { span.muted { "none recorded" } },
                                        }
                                    }
                                    td.excerpt {
                                        @if let Some(text) = d.last_attempt.as_ref().and_then(|a| a.response_excerpt.as_deref()) {
                                            code { (text) }
                                        } @else {
                                            (e.last_error.as_deref().unwrap_or(""))
                                        }
                                    }
                                    td.actions {
                                        (action(&session, &format!("/admin/events/{}/retry", e.id), "Retry", &format!("Retry event {}", e.id)))
                                        (action(&session, &format!("/admin/events/{}/skip", e.id), "Skip", &format!("Skip event {}", e.id)))
                                    }
                                }
                            }
                        }
                    }
                }
                (pager("/admin/events", page, PER_PAGE, total))
            }
        },
    ))
}

pub async fn apps(session: Session, state: AppState, query: ListQuery) -> Result<Markup, ApiError> {
    let page = page_of(&query);
    let (apps, total) = state.store.list_apps(page, PER_PAGE).await?;
    Ok(layout::page(
        &session,
        "/admin/apps",
        "Apps",
        notice(&query),
        &html! {
            @if apps.is_empty() {
                (empty("No apps yet. Onboard one with POST /admin/api/apps/onboard (or `herald app onboard`)."))
            } @else {
                div.scroll {
                    table {
                        caption.visually-hidden { "Apps" }
                        thead { tr {
                            th scope="col" { "App" } th scope="col" { "Status" } th scope="col" { "Endpoint" }
                            th scope="col" { "Repositories" } th scope="col" { "Dead events" } th scope="col" { "Created" }
                        } }
                        tbody {
                            @for a in &apps {
                                tr {
                                    td { a href={ "/admin/apps/" (a.app.id) } { (a.app.name) } }
                                    td { (status(a.app.status.as_str())) }
                                    td { code { (a.app.base_url) } }
                                    td { (a.repository_count) }
                                    td { (a.failed_notification_count) }
                                    td { (when(a.app.created_at)) }
                                }
                            }
                        }
                    }
                }
                (pager("/admin/apps", page, PER_PAGE, total))
            }
        },
    ))
}

pub async fn app_detail(
    id: String,
    session: Session,
    state: AppState,
    query: ListQuery,
) -> Result<Markup, ApiError> {
    let not_found = || ApiError::NotFound("App not found".to_owned());
    let app_id = AppId::parse(&id).ok_or_else(not_found)?;
    let (summary, subscriptions) = state
        .store
        .app_detail(&app_id)
        .await?
        .ok_or_else(not_found)?;
    let app = &summary.app;
    let disabled = app.status == entity::AppStatus::Disabled;
    let endpoint = state
        .store
        .breaker(BreakerKind::Delivery, app.id.as_str())
        .await?;
    let health = super::health::app_section(&state, &app_id).await?;
    let destination = state
        .store
        .destination(app)?
        .filter(|_| app.delivery_mode.is_broker());
    Ok(layout::page(
        &session,
        "/admin/apps",
        &app.name,
        notice(&query),
        &html! {
            dl.facts {
                dt { "Status" } dd { (status(app.status.as_str())) }
                dt { "Endpoint" } dd { code { (app.base_url) } }
                dt { "Contact" } dd { (app.email) }
                dt { "Failing since" } dd { (when_opt(app.failing_since)) }
                dt { "Backoff" } dd { (backoff(app)) }
                dt { "Delivery" } dd { (delivery(app)) }
                @if let Some(destination) = &destination {
                    dt { "Destination" } dd { (destination_facts(destination)) }
                }
                dt { "Delivery window" } dd { (window(app)) }
                dt { "Endpoint breaker" } dd {
                    @match &endpoint {
                        Some(b) => {
                            (status(b.state.as_str())) ", " (b.consecutive_failures) " consecutive " (if b.consecutive_failures == 1 { "failure" } else { "failures" })
                            @if let Some(until) = b.cooldown_until.filter(|_| b.state != entity::BreakerStatus::Closed) {
                                ", tried again " (when(until))
                            }
                            @if let Some(error) = &b.last_error { br; span.excerpt { (error) } }
                        },
                        None => { (status("closed")) " no failures" },
                    }
                }
                dt { "Dead events" } dd { a href="/admin/events" { (summary.failed_notification_count) } }
                dt { "Created" } dd { (when(app.created_at)) }
            }
            div.actions {
                @if disabled {
                    (action(&session, &format!("/admin/apps/{}/enable", app.id), "Enable", &format!("Enable {}", app.name)))
                }
                a.button.danger href={ "/admin/apps/" (app.id) "/delete" } { "Delete…" }
            }
            h2 { "Subscriptions" }
            @if subscriptions.is_empty() {
                (empty("This app watches no repository yet; it registers them with POST /api/repositories."))
            } @else {
                div.scroll {
                    table {
                        caption.visually-hidden { "Subscriptions of this app" }
                        thead { tr {
                            th scope="col" { "Repository" } th scope="col" { "Status" } th scope="col" { "Pending" }
                            th scope="col" { "Dead" } th scope="col" { "Last error" } th scope="col" { "Actions" }
                        } }
                        tbody {
                            @for s in &subscriptions {
                                @let r = &s.repository;
                                tr {
                                    td { (r.owner) "/" (r.name) br; span.muted { (r.branch) } }
                                    td { (status(s.subscription.status.as_str())) }
                                    td { (s.pending_events) }
                                    td { (s.failed_events) }
                                    td.excerpt { (s.subscription.last_error.as_deref().or(r.last_error.as_deref()).unwrap_or("")) }
                                    td.actions {
                                        (action(&session, &format!("/admin/apps/{}/repositories/{}/resync", app.id, r.id), "Resync", &format!("Resync {}/{}", r.owner, r.name)))
                                    }
                                }
                            }
                        }
                    }
                }
            }
            (health)
        },
    ))
}

/// The app's retry schedule: its own policy, or the configured default.
fn backoff(app: &entity::app::Model) -> String {
    let span = |ms: Option<i64>| {
        ms.and_then(|ms| u64::try_from(ms).ok())
            .map(|ms| humantime::format_duration(std::time::Duration::from_millis(ms)).to_string())
    };
    match app.backoff_policy.map(entity::BackoffPolicy::as_str) {
        None => "the default (delivery.backoff)".to_owned(),
        Some(policy) => match (span(app.backoff_base_ms), span(app.backoff_max_ms)) {
            (Some(base), Some(max)) => format!("{policy}, from {base} up to {max}"),
            (Some(base), None) => format!("{policy}, from {base}"),
            (None, Some(max)) => format!("{policy}, up to {max}"),
            (None, None) => policy.to_owned(),
        },
    }
}

/// How the app receives its events.
fn delivery(app: &entity::app::Model) -> &'static str {
    match app.delivery_mode {
        entity::DeliveryMode::Push => "push: webhooks to its endpoint",
        entity::DeliveryMode::Pull => "pull: its consumer reads /api/stream or /api/changes",
        entity::DeliveryMode::Nats => "nats: published to a NATS JetStream subject",
        entity::DeliveryMode::Amqp => "amqp: published to a RabbitMQ exchange",
        entity::DeliveryMode::Redis => "redis: added to a Redis stream",
    }
}

/// A broker app's destination as `GET /api/app` shows it: the URL without
/// its credentials, then the subject, exchange and routing key, or stream.
fn destination_facts(destination: &Destination) -> Markup {
    let shown = destination.shown();
    let field = |name: &str| shown[name].as_str().unwrap_or_default().to_owned();
    html! {
        code { (field("url")) }
        @for name in ["subject", "exchange", "routing_key", "stream"] {
            @if shown.get(name).is_some() {
                br; span.muted { (name.replace('_', " ")) } " " code { (field(name)) }
            }
        }
    }
}

/// The app's delivery window and the order it keeps.
fn window(app: &entity::app::Model) -> String {
    match DeliveryWindow::of_app(app).get() {
        1 => "1 webhook at a time per subscription, in order".to_owned(),
        n => format!("up to {n} webhooks at a time per subscription, in order per file"),
    }
}

pub async fn confirm_delete(
    id: String,
    session: Session,
    state: AppState,
) -> Result<Markup, ApiError> {
    let not_found = || ApiError::NotFound("App not found".to_owned());
    let app_id = AppId::parse(&id).ok_or_else(not_found)?;
    let (summary, _) = state
        .store
        .app_detail(&app_id)
        .await?
        .ok_or_else(not_found)?;
    let app = &summary.app;
    Ok(layout::page(
        &session,
        "/admin/apps",
        &format!("Delete {}?", app.name),
        None,
        &html! {
            p { "This removes the app, its " (summary.repository_count) " subscriptions and all their events. Repositories no other app watches are removed too. It cannot be undone." }
            form method="post" action={ "/admin/apps/" (app.id) "/delete" } {
                (layout::csrf_field(&session))
                button.danger type="submit" { "Delete " (app.name) }
                " "
                a href={ "/admin/apps/" (app.id) } { "Cancel" }
            }
        },
    ))
}

pub async fn repositories(
    session: Session,
    state: AppState,
    query: ListQuery,
) -> Result<Markup, ApiError> {
    let page = page_of(&query);
    let (repositories, total) = state.store.repository_states(page, PER_PAGE).await?;
    Ok(layout::page(
        &session,
        "/admin/repositories",
        "Repositories",
        notice(&query),
        &html! {
            @if repositories.is_empty() {
                (empty("No repositories yet. They appear when an app registers one with POST /api/repositories."))
            } @else {
                div.scroll {
                    table {
                        caption.visually-hidden { "Repositories" }
                        thead { tr {
                            th scope="col" { "Repository" } th scope="col" { "Head" } th scope="col" { "Last scan" }
                            th scope="col" { "Apps" } th scope="col" { "Git breaker" } th scope="col" { "Last error" } th scope="col" { "Actions" }
                        } }
                        tbody {
                            @for s in &repositories {
                                @let r = &s.repository;
                                tr {
                                    td { (r.owner) "/" (r.name) br; span.muted { (r.branch) } }
                                    td { @match &r.head_commit { Some(c) => { code title=(c) { (c.get(..10).unwrap_or(c)) } }, None => { span.muted { "not fetched yet" } } } }
                                    td { (when_opt(r.last_scanned_at)) }
                                    td { (s.subscribers) }
                                    td {
                                        @match &s.breaker {
                                            Some(b) => { (status(b.state.as_str())) br; span.muted { (b.consecutive_failures) " failures" } },
                                            None => { (status("closed")) },
                                        }
                                    }
                                    td.excerpt { (r.last_error.as_deref().unwrap_or("")) }
                                    td.actions {
                                        @if s.breaker.is_some() || r.last_error.is_some() {
                                            (action(&session, &format!("/admin/repositories/{}/breaker-reset", r.id), "Reset breaker", &format!("Reset breaker of {}/{}", r.owner, r.name)))
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
                p.hint { "To send a repository's whole tree to one app again, use Resync on that app's page." }
                (pager("/admin/repositories", page, PER_PAGE, total))
            }
        },
    ))
}

pub async fn hooks(
    session: Session,
    state: AppState,
    query: ListQuery,
) -> Result<Markup, ApiError> {
    let page = page_of(&query);
    let (hooks, total) = state
        .store
        .list_hooks(&HookFilter::default(), page, PER_PAGE)
        .await?;
    Ok(layout::page(
        &session,
        "/admin/hooks",
        "Inbound hooks",
        None,
        &html! {
            @if hooks.is_empty() {
                (empty("No push webhooks received yet. Point a GitHub, GitLab, Gitea or Bitbucket webhook at /hooks/<provider> to get changes without waiting for a poll."))
            } @else {
                div.scroll {
                    table {
                        caption.visually-hidden { "Inbound hooks, newest first" }
                        thead { tr {
                            th scope="col" { "Received" } th scope="col" { "Provider" } th scope="col" { "Event" }
                            th scope="col" { "Status" } th scope="col" { "Result" }
                        } }
                        tbody {
                            @for h in &hooks {
                                tr {
                                    td { (when(h.received_at)) }
                                    td { (h.provider) }
                                    td { (h.event_type) br; code.muted { (h.delivery_id) } }
                                    td { (status(h.status.as_str())) }
                                    td.excerpt { (h.result.as_deref().unwrap_or("")) }
                                }
                            }
                        }
                    }
                }
                (pager("/admin/hooks", page, PER_PAGE, total))
            }
        },
    ))
}

pub async fn instances(session: Session, state: AppState) -> Result<Markup, ApiError> {
    let instances = state.store.instances().await?;
    let now = now_ms();
    Ok(layout::page(
        &session,
        "/admin/instances",
        "Instances",
        None,
        &html! {
            @if instances.is_empty() {
                (empty("No heartbeat recorded yet; this instance writes its first within a few seconds of starting."))
            } @else {
                div.scroll {
                    table {
                        caption.visually-hidden { "Instances sharing this database" }
                        thead { tr {
                            th scope="col" { "Instance" } th scope="col" { "Host" } th scope="col" { "Version" }
                            th scope="col" { "Started" } th scope="col" { "Last seen" } th scope="col" { "State" }
                        } }
                        tbody {
                            @for i in &instances {
                                tr {
                                    td { code { (i.id) } @if *i.id == *state.instance_id { " (this one)" } }
                                    td { (i.host) }
                                    td { (i.version) }
                                    td { (when(i.started_at)) }
                                    td { (when(i.last_seen_at)) }
                                    td { (status(if now - i.last_seen_at <= ALIVE_WITHIN_MS { "alive" } else { "gone" })) }
                                }
                            }
                        }
                    }
                }
            }
        },
    ))
}

/// A bulk retry's page: its progress, polled every second while it runs.
pub async fn operation(id: String, session: Session, state: AppState) -> Result<Markup, ApiError> {
    let progress = operation_progress(id, session.clone(), state).await?;
    Ok(layout::page(
        &session,
        "/admin/events",
        "Retrying dead events",
        None,
        &html! {
            (progress)
            p { a href="/admin/events" { "Back to dead events" } }
        },
    ))
}

/// A bulk retry's progress, with a cancel button while it runs; while it
/// runs, htmx replaces it every second.
pub async fn operation_progress(
    id: String,
    session: Session,
    state: AppState,
) -> Result<Markup, ApiError> {
    let op = crate::http::operations::bulk_progress(&id, &state).await?;
    let running = op.status == entity::BulkStatus::Running;
    let url = format!("/admin/operations/{}/progress", op.id);
    Ok(html! {
        section id="progress" aria-live="polite" aria-labelledby="progress-title"
            hx-get=[running.then_some(url.as_str())] hx-trigger=[running.then_some("every 1s")]
            hx-swap=[running.then_some("outerHTML")] {
            h2 id="progress-title" { "Progress: " (status(op.status.as_str())) }
            label for="bulk-progress" { (op.done) " of " (op.total) " events retried" @if op.failed > 0 { ", " (op.failed) " could not be" } }
            progress id="bulk-progress" max=(op.total.max(1)) value=(op.done) { (op.done) " of " (op.total) }
            @if op.cancel_requested && running {
                p { "Stopping before the next event…" }
            } @else if running {
                div.actions {
                    (action(&session, &format!("/admin/operations/{}/cancel", op.id), "Cancel", "Cancel this bulk retry"))
                }
            }
            @if let Some(error) = &op.error {
                p.error role="alert" { (error) }
            }
            p.hint { "Started " (when(op.started_at)) @if let Some(at) = op.finished_at { ", ended " (when(at)) } "." }
        }
    })
}
