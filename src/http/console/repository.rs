//! One repository's page (`/admin/repositories/{id}`): its state and git
//! breaker, its subscribers, its recent scans, and "scan now".

use actors::ids::RepoId;
use maud::{Markup, html};

use super::layout::{self, action, empty, status, when, when_opt};
use super::{ListQuery, Session};
use crate::http::error::ApiError;
use crate::http::state::AppState;

/// Scans shown (the store keeps a few more).
const SCANS: u64 = 20;

/// An operator's "scan now": the repository is due at once, and the
/// scheduler is told (no cooldown: the console is for operators).
pub async fn scan_now(id: &str, state: &AppState) -> Result<(), ApiError> {
    let not_found = || ApiError::NotFound("Repository not found".to_owned());
    let repo = RepoId::parse(id).ok_or_else(not_found)?;
    if !state.store.scan_now(&repo).await? {
        return Err(not_found());
    }
    tracing::info!(repository = %repo, "scan requested by an operator");
    state
        .engine
        .notify(actors::scheduler::SchedulerMsg::ScanNow(repo));
    Ok(())
}

pub async fn repository(
    id: String,
    session: Session,
    state: AppState,
    query: ListQuery,
) -> Result<Markup, ApiError> {
    let not_found = || ApiError::NotFound("Repository not found".to_owned());
    let repo = RepoId::parse(&id).ok_or_else(not_found)?;
    let page = state
        .store
        .repository_page(&repo, SCANS)
        .await?
        .ok_or_else(not_found)?;
    let r = &page.repository;
    let title = format!("{}/{}", r.owner, r.name);
    Ok(layout::page(
        &session,
        "/admin/repositories",
        &title,
        super::pages::notice(&query),
        &html! {
            dl.facts {
                dt { "Remote" } dd { code { (r.url) } }
                dt { "Branch" } dd {
                    @if r.branch.is_empty() {
                        "the remote's default" @if let Some(resolved) = &r.resolved_branch { " (" (resolved) ")" }
                    } @else { (r.branch) }
                }
                dt { "Submodules" } dd {
                    @if r.expand_submodules { "expanded: their files are sent under their paths" }
                    @else { "not followed" }
                }
                dt { "Head" } dd {
                    @match &r.head_commit { Some(c) => { code { (c) } }, None => { span.muted { "not fetched yet" } } }
                }
                dt { "Last scan" } dd { (when_opt(r.last_scanned_at)) }
                dt { "Next scan" } dd { (when(r.next_scan_at)) }
                dt { "Git breaker" } dd {
                    @match &page.breaker {
                        Some(b) => {
                            (status(b.state.as_str())) ", " (b.consecutive_failures) " consecutive failures"
                            @if let Some(error) = &b.last_error { br; span.excerpt { (error) } }
                        },
                        None => { (status("closed")) " no failures" },
                    }
                }
                @if let Some(error) = &r.last_error { dt { "Last error" } dd.excerpt { (error) } }
            }
            div.actions {
                (action(&session, &format!("/admin/repositories/{}/scan", r.id), "Scan now", &format!("Scan now: {title}")))
                @if page.breaker.as_ref().is_some_and(|b| b.state != entity::BreakerStatus::Closed) || r.last_error.is_some() {
                    (action(&session, &format!("/admin/repositories/{}/breaker-reset?back=repository", r.id), "Reset breaker", &format!("Reset breaker: {title}")))
                }
                a.button href={ "/admin/log?repository=" (r.id) } { "Its events" }
            }
            h2 { "Subscribers" }
            @if page.subscribers.is_empty() {
                (empty("No app watches this repository any more."))
            } @else {
                div.scroll {
                    table {
                        caption.visually-hidden { "Apps subscribed to this repository" }
                        thead { tr {
                            th scope="col" { "App" } th scope="col" { "Status" } th scope="col" { "Pending" }
                            th scope="col" { "Dead" } th scope="col" { "Last error" }
                        } }
                        tbody {
                            @for (view, name) in &page.subscribers {
                                @let s = &view.subscription;
                                tr {
                                    td { a href={ "/admin/apps/" (s.app_id) } { (name.as_deref().unwrap_or(&s.app_id)) } }
                                    td { (status(s.status.as_str())) }
                                    td { (view.pending_events) }
                                    td { (view.failed_events) }
                                    td.excerpt { (s.last_error.as_deref().unwrap_or("")) }
                                }
                            }
                        }
                    }
                }
            }
            h2 { "Recent scans" }
            @if page.scans.is_empty() {
                (empty("No scan recorded yet."))
            } @else {
                div.scroll {
                    table {
                        caption.visually-hidden { "Recent scans, newest first" }
                        thead { tr {
                            th scope="col" { "When" } th scope="col" { "Outcome" } th scope="col" { "Commit" }
                            th scope="col" { "Changes" } th scope="col" { "Events" } th scope="col" { "Duration" }
                        } }
                        tbody {
                            @for scan in &page.scans {
                                tr {
                                    td {
                                        (when(scan.last_started_at))
                                        @if scan.times > 1 { br; span.muted { (scan.times) " polls since " (when(scan.started_at)) } }
                                    }
                                    td { (status(scan.outcome.as_str())) @if let Some(error) = &scan.error { br; span.excerpt { (error) } } }
                                    td { @match &scan.commit_sha { Some(c) => { code title=(c) { (c.get(..10).unwrap_or(c)) } }, None => { span.muted { "none" } } } }
                                    td { (scan.changes) }
                                    td { (scan.events) }
                                    td { (scan.duration_ms) " ms" @if scan.times > 1 { span.muted { " (the last)" } } }
                                }
                            }
                        }
                    }
                }
            }
        },
    ))
}
