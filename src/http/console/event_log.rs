//! The event log (`/admin/log`): every event of every app, newest first,
//! under filters kept in the URL so a view can be shared; and one event's
//! page (`/admin/events/{id}`) with every attempt, the headers its requests
//! carried and the response excerpts.

use actors::clock::rfc3339_ms;
use actors::ids::EventId;
use actors::payload::chunk_webhook_id;
use actors::store::event_log::{LogFilter, LogPage, PathFilter, SCAN_BUDGET, is_commit_prefix};
use entity::{EventStatus, delivery_attempt};
use maud::{Markup, html};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::layout::{self, action, empty, status, when, when_opt};
use super::{ListQuery, Session};
use crate::http::error::ApiError;
use crate::http::state::AppState;

const PER_PAGE: u64 = 50;
/// The apps and repositories a filter's lists offer; beyond them, the id
/// can still be given in the URL.
const CHOICES: u64 = 500;
const STATUSES: [EventStatus; 4] = [
    EventStatus::Pending,
    EventStatus::Delivered,
    EventStatus::Dead,
    EventStatus::Skipped,
];

/// The log's query string: its filters and the page's cursor. Every field
/// is text, checked here, so a bad one is shown in the form rather than
/// refused.
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
pub(crate) struct LogQuery {
    #[serde(skip_serializing_if = "blank")]
    app: Option<String>,
    #[serde(skip_serializing_if = "blank")]
    repository: Option<String>,
    #[serde(skip_serializing_if = "blank")]
    status: Option<String>,
    #[serde(skip_serializing_if = "blank")]
    path: Option<String>,
    #[serde(skip_serializing_if = "blank")]
    commit: Option<String>,
    #[serde(skip_serializing_if = "blank")]
    from: Option<String>,
    #[serde(skip_serializing_if = "blank")]
    to: Option<String>,
    #[serde(skip_serializing_if = "blank")]
    before: Option<String>,
}

fn blank(value: &Option<String>) -> bool {
    value.as_deref().is_none_or(|v| v.trim().is_empty())
}

fn given(value: &Option<String>) -> Option<&str> {
    value.as_deref().map(str::trim).filter(|v| !v.is_empty())
}

/// A time from the form (`datetime-local`, read as UTC) or from a shared
/// URL (RFC 3339), in Unix ms.
fn parse_time(text: &str) -> Option<i64> {
    [text.to_owned(), format!("{text}Z"), format!("{text}:00Z")]
        .iter()
        .find_map(|candidate| OffsetDateTime::parse(candidate, &Rfc3339).ok())
        .and_then(|at| i64::try_from(at.unix_timestamp_nanos() / 1_000_000).ok())
}

/// A time as a `datetime-local` field shows it (UTC, to the minute).
fn time_field(ms: i64) -> String {
    rfc3339_ms(ms).chars().take(16).collect()
}

impl LogQuery {
    /// The store's filter, or what is wrong with the query (each problem in
    /// words for the form).
    fn filter(&self) -> Result<LogFilter, Vec<String>> {
        let mut problems = Vec::new();
        let mut filter = LogFilter {
            app: given(&self.app).map(str::to_owned),
            repository: given(&self.repository).map(str::to_owned),
            ..LogFilter::default()
        };
        if let Some(word) = given(&self.status) {
            match STATUSES.iter().find(|s| s.as_str() == word) {
                Some(status) => filter.status = Some(*status),
                None => problems.push(format!(
                    "Status must be one of pending, delivered, dead, skipped (not “{word}”)."
                )),
            }
        }
        if let Some(path) = given(&self.path) {
            match PathFilter::parse(path) {
                Ok(path) => filter.path = Some(path),
                Err(err) => problems.push(format!("The path glob is not valid: {}.", err.kind())),
            }
        }
        if let Some(commit) = given(&self.commit) {
            if is_commit_prefix(commit) {
                filter.commit = Some(commit.to_ascii_lowercase());
            } else {
                problems.push("A commit is 7 to 64 hexadecimal digits.".to_owned());
            }
        }
        for (text, slot, name) in [
            (&self.from, &mut filter.from, "From"),
            (&self.to, &mut filter.to, "To"),
        ] {
            if let Some(text) = given(text) {
                match parse_time(text) {
                    Some(ms) => *slot = Some(ms),
                    None => problems.push(format!(
                        "{name} must be a date and time such as 2026-11-26T14:30 (UTC)."
                    )),
                }
            }
        }
        if given(&self.before).is_some_and(|before| EventId::parse(before).is_none()) {
            problems.push("The page cursor is not an event id.".to_owned());
        }
        if problems.is_empty() {
            Ok(filter)
        } else {
            Err(problems)
        }
    }

    /// This view's URL under `base`, the cursor replaced by `before`.
    fn href(&self, base: &str, before: Option<&str>) -> String {
        let query = LogQuery {
            before: before.map(str::to_owned),
            ..self.clone()
        };
        match serde_urlencoded::to_string(&query) {
            Ok(query) if !query.is_empty() => format!("{base}?{query}"),
            _ => base.to_owned(),
        }
    }

    fn before(&self) -> Option<&str> {
        given(&self.before)
    }
}

pub async fn log(session: Session, state: AppState, query: LogQuery) -> Result<Markup, ApiError> {
    let (apps, _) = state.store.list_apps(1, CHOICES).await?;
    let (repositories, _) = state.store.repository_states(1, CHOICES).await?;
    let rows = log_rows(state, query.clone()).await?;
    let selected = |value: &Option<String>, option: &str| given(value) == Some(option);
    Ok(layout::page(
        &session,
        "/admin/log",
        "Event log",
        None,
        &html! {
            form.filters method="get" action="/admin/log" role="search" aria-label="Filter events" {
                div.fields {
                    div {
                        label for="f-app" { "App" }
                        select id="f-app" name="app" {
                            option value="" { "Any app" }
                            @for a in &apps {
                                option value=(a.app.id) selected[selected(&query.app, &a.app.id)] { (a.app.name) }
                            }
                        }
                    }
                    div {
                        label for="f-repository" { "Repository" }
                        select id="f-repository" name="repository" {
                            option value="" { "Any repository" }
                            @for r in &repositories {
                                @let r = &r.repository;
                                option value=(r.id) selected[selected(&query.repository, &r.id)] { (r.owner) "/" (r.name) " (" (r.branch) ")" }
                            }
                        }
                    }
                    div {
                        label for="f-status" { "Status" }
                        select id="f-status" name="status" {
                            option value="" { "Any status" }
                            @for s in STATUSES {
                                option value=(s.as_str()) selected[selected(&query.status, s.as_str())] { (s.as_str()) }
                            }
                        }
                    }
                    div {
                        label for="f-path" { "Path" }
                        input id="f-path" name="path" type="text" value=[given(&query.path)]
                            placeholder="docs/ or **/*.md" aria-describedby="f-path-hint";
                        span.hint id="f-path-hint" { "A prefix, or a glob (* within a folder, ** across)." }
                    }
                    div {
                        label for="f-commit" { "Commit" }
                        input id="f-commit" name="commit" type="text" value=[given(&query.commit)]
                            placeholder="7+ hex digits" autocomplete="off" spellcheck="false";
                    }
                    div {
                        label for="f-from" { "From (UTC)" }
                        input id="f-from" name="from" type="datetime-local" value=[given(&query.from).and_then(parse_time).map(time_field)];
                    }
                    div {
                        label for="f-to" { "To (UTC)" }
                        input id="f-to" name="to" type="datetime-local" value=[given(&query.to).and_then(parse_time).map(time_field)];
                    }
                }
                div.actions {
                    button type="submit" { "Filter" }
                    a.button href="/admin/log" { "Clear" }
                }
            }
            (rows)
        },
    ))
}

/// The log's results: on the first page they refresh every 5 s (htmx
/// replaces the section with itself); older pages stay still.
pub async fn log_rows(state: AppState, query: LogQuery) -> Result<Markup, ApiError> {
    let filter = match query.filter() {
        Ok(filter) => filter,
        Err(problems) => {
            return Ok(html! {
                section id="log" aria-labelledby="log-title" {
                    h2 id="log-title" { "Events" }
                    div.error role="alert" {
                        @for problem in &problems { p { (problem) } }
                    }
                }
            });
        }
    };
    let page = state
        .store
        .event_log(&filter, query.before(), PER_PAGE)
        .await?;
    let live = query.before().is_none();
    let refresh = query.href("/admin/log/rows", None);
    Ok(html! {
        section id="log" aria-labelledby="log-title"
            hx-get=[live.then_some(refresh.as_str())] hx-trigger=[live.then_some("every 5s")]
            hx-swap=[live.then_some("outerHTML")] {
            h2 id="log-title" { "Events" @if live { span.hint { " (newest first, refreshed every 5 seconds)" } } }
            (log_table(&page))
            (log_pager(&query, &page))
        }
    })
}

fn log_table(page: &LogPage) -> Markup {
    html! {
        @if page.entries.is_empty() {
            (empty(if page.searched_to.is_some() {
                "No match among the events searched so far."
            } else {
                "No event matches these filters."
            }))
        } @else {
            div.scroll {
                table.log {
                    caption.visually-hidden { "Events, newest first" }
                    thead { tr {
                        th scope="col" { "Event" } th scope="col" { "Created" } th scope="col" { "App" }
                        th scope="col" { "Repository" } th scope="col" { "Commit" } th scope="col" { "Status" }
                    } }
                    tbody {
                        @for entry in &page.entries {
                            @let e = &entry.event;
                            tr {
                                td {
                                    a href={ "/admin/events/" (e.id) } { (e.path.as_deref().unwrap_or(e.kind.as_str())) }
                                    br; span.muted { (e.kind.as_str()) " · " code { (e.id) } }
                                }
                                td { (when(e.created_at)) }
                                td { a href={ "/admin/apps/" (e.app_id) } { (entry.app_name.as_deref().unwrap_or(&e.app_id)) } }
                                td { (repository_link(&e.repository_id, entry.repository.as_ref())) }
                                td { (commit(e.commit_sha.as_deref())) }
                                td { (status(e.status.as_str())) @if e.attempts > 0 { br; span.muted { (e.attempts) " " (if e.attempts == 1 { "attempt" } else { "attempts" }) } } }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn log_pager(query: &LogQuery, page: &LogPage) -> Markup {
    html! {
        nav.pager aria-label="Pages" {
            @if query.before().is_some() {
                a href=(query.href("/admin/log", None)) { "Newest" }
            }
            @if let Some(next) = &page.next {
                a href=(query.href("/admin/log", Some(next))) rel="next" {
                    @if page.searched_to.is_some() { "Search further back" } @else { "Older" }
                }
            }
        }
        @if page.searched_to.is_some() {
            p.hint { "This page stopped after searching " (SCAN_BUDGET) " events; older ones have not been searched yet." }
        }
    }
}

fn repository_link(id: &str, repository: Option<&entity::repository::Model>) -> Markup {
    html! {
        a href={ "/admin/repositories/" (id) } {
            @match repository { Some(r) => { (r.owner) "/" (r.name) }, None => { code { (id) } } }
        }
    }
}

fn commit(sha: Option<&str>) -> Markup {
    html! {
        @match sha {
            Some(sha) => { code title=(sha) { (sha.get(..10).unwrap_or(sha)) } },
            None => { span.muted { "none" } },
        }
    }
}

/// What happened to one event: its facts, every attempt with the headers
/// sent and the answer, and what an operator can do with it.
pub async fn event(
    id: String,
    session: Session,
    state: AppState,
    query: ListQuery,
) -> Result<Markup, ApiError> {
    let not_found =
        || ApiError::NotFound("Event not found (retention may have removed it)".to_owned());
    let event_id = EventId::parse(&id).ok_or_else(not_found)?;
    let detail = state
        .store
        .event_detail(&event_id)
        .await?
        .ok_or_else(not_found)?;
    let e = &detail.event;
    let undelivered = matches!(e.status, EventStatus::Pending | EventStatus::Dead);
    let title = format!("{} {}", e.kind.as_str(), e.path.as_deref().unwrap_or(""));
    Ok(layout::page(
        &session,
        "/admin/log",
        title.trim(),
        super::pages::notice(&query),
        &html! {
            dl.facts {
                dt { "Event" } dd { code { (e.id) } }
                dt { "Status" } dd { (status(e.status.as_str())) }
                dt { "Kind" } dd { (e.kind.as_str()) }
                @if let Some(path) = &e.path { dt { "Path" } dd { code { (path) } } }
                @if let Some(from) = &e.renamed_from { dt { "Renamed from" } dd { code { (from) } } }
                dt { "App" } dd {
                    a href={ "/admin/apps/" (e.app_id) } { (detail.app.as_ref().map_or(e.app_id.as_str(), |a| a.name.as_str())) }
                }
                dt { "Repository" } dd { (repository_link(&e.repository_id, detail.repository.as_ref())) }
                dt { "Subscription" } dd {
                    @match &detail.subscription { Some(s) => { (status(s.status.as_str())) }, None => { span.muted { "removed" } } }
                }
                dt { "Commit" } dd { (commit(e.commit_sha.as_deref())) }
                dt { "Sequence" } dd { (e.seq) }
                @if let Some(size) = e.size { dt { "Size" } dd { (size) " bytes" @if e.binary { " (binary)" } } }
                @if let Some(sha) = &e.sha256 { dt { "SHA-256" } dd { code { (sha) } } }
                @if let Some(sha) = &e.previous_sha256 { dt { "Previous SHA-256" } dd { code { (sha) } } }
                dt { "webhook-id" } dd { (webhook_ids(e, &detail.attempts)) }
                dt { "Created" } dd { (when(e.created_at)) }
                dt { "Delivered" } dd { (when_opt(e.delivered_at)) }
                @if undelivered { dt { "Next attempt" } dd { (when(e.next_attempt_at)) } }
                @if let Some(error) = &e.last_error { dt { "Last error" } dd.excerpt { (error) } }
                @if let Some(replay) = &e.replay_id { dt { "Replay" } dd { code { (replay) } } }
            }
            div.actions {
                @if undelivered {
                    (action(&session, &format!("/admin/events/{}/retry?back=event", e.id), "Retry", &format!("Retry event {}", e.id)))
                    (action(&session, &format!("/admin/events/{}/skip?back=event", e.id), "Skip", &format!("Skip event {}", e.id)))
                }
                @if detail.subscription.is_some() {
                    (action(&session, &format!("/admin/apps/{}/repositories/{}/resync", e.app_id, e.repository_id), "Resync subscription", "Resync subscription: send its whole tree again"))
                }
            }
            h2 { "Attempts" }
            (attempts(e, &detail.attempts, state.settings.delivery.max_file_bytes))
        },
    ))
}

/// The `webhook-id` of each request of the event: its id, or one per
/// chunk (`{id}_{index}`) for a chunked file.
fn webhook_ids(event: &entity::event::Model, attempts: &[delivery_attempt::Model]) -> Markup {
    let chunks = attempts
        .iter()
        .filter_map(|a| a.chunk_index.and_then(|i| usize::try_from(i).ok()))
        .max()
        .map(|last| last + 1);
    html! {
        @match chunks {
            None => { code { (event.id) } },
            Some(n) => {
                code { (chunk_webhook_id(&event.id, 0)) } " … " code { (chunk_webhook_id(&event.id, n - 1)) }
                br; span.muted { "a chunked file: one request per chunk, " (n) " reached so far; each attempt is a new transfer (a new chunk.id) from chunk 0" }
            },
        }
    }
}

/// `max_file_bytes`: the setting that tells whether the event's file was
/// announced at `file_too_large` (its headers' `ce-type`).
fn attempts(
    event: &entity::event::Model,
    attempts: &[delivery_attempt::Model],
    max_file_bytes: u64,
) -> Markup {
    let endpoint = if actors::payload::too_large(event, max_file_bytes) {
        "file_too_large"
    } else {
        event.kind.endpoint()
    };
    let cloud_event = actors::cloudevents::CloudEvent::of_event(event, endpoint);
    html! {
        @if attempts.is_empty() {
            (empty("No attempt yet."))
        } @else {
            ol.attempts {
                @for (n, a) in attempts.iter().enumerate() {
                    li.attempt id={ "attempt-" (n + 1) } {
                        h3 {
                            "Attempt " (n + 1)
                            @if let Some(chunk) = a.chunk_index { ", chunk " (chunk) }
                            ": "
                            @match a.status_code {
                                Some(code) => { "HTTP " (code) },
                                None => { (a.error_class.map_or("no answer", entity::ErrorClass::as_str)) },
                            }
                        }
                        p.muted {
                            @let at = rfc3339_ms(a.attempted_at);
                            time datetime=(at) title=(at) { (at) }
                            " · " (a.latency_ms) " ms"
                            @if let (Some(_), Some(class)) = (a.status_code, a.error_class) { " · " (class) }
                        }
                        @if let Some(excerpt) = &a.response_excerpt {
                            details.response {
                                summary { "Response excerpt" }
                                pre { code { (excerpt) } }
                            }
                        }
                        @if let Some(timestamp) = a.request_timestamp {
                            details.headers {
                                summary { "Request headers" }
                                dl.headers {
                                    @for (name, value) in request_headers(event, &cloud_event, a, timestamp) {
                                        dt { code { (name) } } dd { code { (value) } }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn request_headers(
    event: &entity::event::Model,
    cloud_event: &actors::cloudevents::CloudEvent,
    attempt: &delivery_attempt::Model,
    timestamp: i64,
) -> Vec<(&'static str, String)> {
    let webhook_id = match attempt.chunk_index {
        Some(index) => chunk_webhook_id(&event.id, usize::try_from(index).unwrap_or(0)),
        None => event.id.clone(),
    };
    actors::signing::shown_headers(
        &event.app_id,
        &webhook_id,
        timestamp,
        cloud_event,
        attempt.traceparent.as_deref(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shared_view_keeps_its_filters_and_drops_blank_ones() {
        let query = LogQuery {
            app: Some("app_1".into()),
            path: Some("docs/**/*.md".into()),
            commit: Some(String::new()),
            ..LogQuery::default()
        };
        assert_eq!(
            query.href("/admin/log", Some("evt_2")),
            "/admin/log?app=app_1&path=docs%2F**%2F*.md&before=evt_2"
        );
        assert_eq!(LogQuery::default().href("/admin/log", None), "/admin/log");
    }

    #[test]
    fn bad_filters_are_named_not_applied() {
        let query = LogQuery {
            status: Some("lost".into()),
            commit: Some("xyz".into()),
            from: Some("yesterday".into()),
            path: Some("a/[".into()),
            ..LogQuery::default()
        };
        let problems = query.filter().expect_err("four problems");
        assert_eq!(problems.len(), 4, "{problems:?}");
    }

    #[test]
    fn times_read_as_utc_from_the_form_or_rfc_3339() {
        let at = parse_time("2026-11-26T14:30").expect("datetime-local");
        assert_eq!(parse_time("2026-11-26T14:30:00Z"), Some(at));
        assert_eq!(parse_time("2026-11-26T15:30:00+01:00"), Some(at));
        assert_eq!(time_field(at), "2026-11-26T14:30");
        assert_eq!(parse_time("26/11/2026"), None);
    }
}
