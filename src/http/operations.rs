//! The operators' API (`Authorization: Bearer <admin token>`) across every
//! app: what is queued and what failed, and the levers: retry (one event,
//! one subscription, or in bulk as a background operation), resync a
//! subscription, reset a repository's git breaker. Every body is wrapped in
//! `{"data": …}` like the rest of the admin API.

use actors::clock::now_ms;
use actors::ids::{AppId, EventId, OperationId, RepoId};
use actors::scheduler::SchedulerMsg;
use actors::store::bulk::BulkStart;
use actors::store::events::{EventFilter, Lever};
use actors::store::operations::BreakerReset;
use entity::{AppStatus, BreakerKind, EventStatus, SubscriptionStatus};

use serde::Serialize;
use utoipa::ToSchema;
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::{Reply, Response};

use super::error::{ApiError, respond};
use super::filters::{admin_auth, first_of, json_body, query, with_state};
use super::models::{PageQuery, Pagination};
use super::paging;
use super::state::AppState;
use crate::domain::Invalid;

mod views;

pub use views::*;

const APP_NOT_FOUND: &str = "App not found";
const EVENT_NOT_FOUND: &str = "Event not found";
const NOT_WATCHED: &str = "App-repository link not found";
const REPOSITORY_NOT_FOUND: &str = "Repository not found";
const OPERATION_NOT_FOUND: &str = "Operation not found or expired";
/// Dead events one bulk operation takes on; more wait for the next one.
const MAX_BULK_EVENTS: u64 = 50_000;
/// Bulk operations running at once, across instances; one more is a 429.
const MAX_RUNNING_OPERATIONS: u64 = 64;

pub fn routes(state: AppState) -> BoxedFilter<(Response,)> {
    let body_limit = state.body_limit();
    let admin = || admin_auth(state.clone());
    let overview = warp::path!("admin" / "api" / "overview")
        .and(warp::get())
        .and(admin())
        .and(with_state(state.clone()))
        .then(overview)
        .map(respond);
    let queue = warp::path!("admin" / "api" / "queue")
        .and(warp::get())
        .and(admin())
        .and(with_state(state.clone()))
        .then(queue)
        .map(respond);
    let failed = warp::path!("admin" / "api" / "notifications" / "failed")
        .and(warp::get())
        .and(admin())
        .and(query::<PageQuery>())
        .and(with_state(state.clone()))
        .then(failed_notifications)
        .map(respond);
    let retry_one = warp::path!("admin" / "api" / "retry")
        .and(warp::post())
        .and(admin())
        .and(json_body::<RetryRequest>(body_limit))
        .and(with_state(state.clone()))
        .then(retry)
        .map(respond);
    let retry_app = warp::path!("admin" / "api" / "retry" / "app" / String)
        .and(warp::post())
        .and(admin())
        .and(with_state(state.clone()))
        .then(retry_app)
        .map(respond);
    let retry_all = warp::path!("admin" / "api" / "retry" / "all")
        .and(warp::post())
        .and(admin())
        .and(with_state(state.clone()))
        .then(retry_all)
        .map(respond);
    let progress = warp::path!("admin" / "api" / "retry" / "progress" / String)
        .and(warp::get())
        .and(admin())
        .and(with_state(state.clone()))
        .then(retry_progress)
        .map(respond);
    let cancel = warp::path!("admin" / "api" / "retry" / "cancel" / String)
        .and(warp::post())
        .and(admin())
        .and(with_state(state.clone()))
        .then(retry_cancel)
        .map(respond);
    let resync = warp::path!("admin" / "api" / "resync" / String / String)
        .and(warp::post())
        .and(admin())
        .and(with_state(state.clone()))
        .then(resync)
        .map(respond);
    let breaker_reset =
        warp::path!("admin" / "api" / "repositories" / String / "breaker" / "reset")
            .and(warp::post())
            .and(admin())
            .and(with_state(state))
            .then(breaker_reset)
            .map(respond);
    first_of([
        overview.boxed(),
        queue.boxed(),
        failed.boxed(),
        retry_one.boxed(),
        retry_app.boxed(),
        retry_all.boxed(),
        progress.boxed(),
        cancel.boxed(),
        resync.boxed(),
        breaker_reset.boxed(),
    ])
}

// ---------------------------------------------------------------- wire types

#[derive(Debug, Serialize, ToSchema)]
pub struct BreakerResetResponse {
    pub data: BreakerResetBody,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BreakerResetBody {
    #[schema(example = "Breaker reset")]
    pub message: &'static str,
    pub repository_id: String,
    /// Failed subscriptions put back to work.
    pub subscriptions_recovered: u64,
    /// Failed subscriptions a dead event still holds (retry, skip or resync).
    pub subscriptions_still_failed: u64,
}

// ------------------------------------------------------------------ handlers

fn json<T: Serialize>(body: &T) -> Response {
    warp::reply::json(body).into_response()
}

fn invalid(field: &'static str, message: &str) -> ApiError {
    ApiError::Invalid(Invalid {
        field,
        message: message.to_owned(),
    })
}

/// Counts across every app: apps, repositories, subscriptions and events by
/// status, lanes in flight, open breakers.
#[utoipa::path(get, path = "/admin/api/overview", tag = "operations",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The counts", body = OverviewResponse),
        (status = 401, description = "Missing or wrong admin token", body = super::error::ErrorBody)))]
pub(crate) async fn overview(state: AppState) -> Result<Response, ApiError> {
    let o = state.store.overview(true).await?;
    let events = EventCounts {
        total: o.events.total(),
        pending: o.events.get(EventStatus::Pending),
        delivered: o.events.get(EventStatus::Delivered),
        dead: o.events.get(EventStatus::Dead),
        skipped: o.events.get(EventStatus::Skipped),
    };
    let apps = AppCounts {
        total: o.apps.total(),
        active: o.apps.get(AppStatus::Active),
        disabled: o.apps.get(AppStatus::Disabled),
    };
    let body = OverviewBody {
        total_apps: apps.total,
        total_repositories: o.repositories,
        failed_notifications: events.dead,
        queue_waiting: events.pending,
        queue_active: o.in_flight,
        apps,
        repositories: o.repositories,
        subscriptions: SubscriptionCounts {
            total: o.subscriptions.total(),
            pending_snapshot: o.subscriptions.get(SubscriptionStatus::PendingSnapshot),
            syncing: o.subscriptions.get(SubscriptionStatus::Syncing),
            synced: o.subscriptions.get(SubscriptionStatus::Synced),
            failed: o.subscriptions.get(SubscriptionStatus::Failed),
            paused: o.subscriptions.get(SubscriptionStatus::Paused),
        },
        events,
        in_flight: o.in_flight,
        breakers_open: BreakerCounts {
            git: o.open_breakers.get(BreakerKind::Git),
            delivery: o.open_breakers.get(BreakerKind::Delivery),
        },
    };
    Ok(json(&OverviewResponse { data: body }))
}

/// The delivery queue per app: pending, in flight and dead, with the state
/// of each app's endpoint breaker.
#[utoipa::path(get, path = "/admin/api/queue", tag = "operations",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The queue", body = QueueResponse),
        (status = 401, description = "Missing or wrong admin token", body = super::error::ErrorBody)))]
pub(crate) async fn queue(state: AppState) -> Result<Response, ApiError> {
    let entries = state.store.queue().await?;
    let totals = entries
        .iter()
        .fold(QueueCounts::default(), |t, e| QueueCounts {
            pending: t.pending + e.pending,
            in_flight: t.in_flight + e.in_flight,
            dead: t.dead + e.dead,
        });
    let body = QueueBody {
        totals,
        apps: entries.iter().map(AppQueue::from).collect(),
    };
    Ok(json(&QueueResponse { data: body }))
}

/// Dead events of every app, newest first, a page at a time.
#[utoipa::path(get, path = "/admin/api/notifications/failed", tag = "operations",
    params(PageQuery),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "A page of dead events", body = FailedListResponse),
        (status = 400, description = "Malformed query string", body = super::error::ErrorBody),
        (status = 401, description = "Missing or wrong admin token", body = super::error::ErrorBody),
        (status = 422, description = "Bad paging", body = super::error::ErrorBody)))]
pub(crate) async fn failed_notifications(
    query: PageQuery,
    state: AppState,
) -> Result<Response, ApiError> {
    let (page, limit) = paging::numbered(&query)?;
    let (dead, total) = state.store.dead_events(page, limit).await?;
    let body = FailedPage {
        data: dead.iter().map(FailedNotification::from).collect(),
        pagination: Pagination::numbered(page, limit, total),
    };
    Ok(json(&FailedListResponse { data: body }))
}

/// Retries one event from a fresh start (attempts reset); its subscription
/// resumes in order. With `{app_id, repository_id}` instead (Docora's form):
/// every dead event of that subscription, or, when the subscription failed
/// on its git remote, a scan as soon as the remote's breaker allows.
#[utoipa::path(post, path = "/admin/api/retry", tag = "operations", operation_id = "retry_dead",
    request_body = RetryRequest,
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "Queued again", body = RetryResponse),
        (status = 400, description = "Malformed JSON", body = super::error::ErrorBody),
        (status = 401, description = "Missing or wrong admin token", body = super::error::ErrorBody),
        (status = 404, description = "No such event or subscription", body = super::error::ErrorBody),
        (status = 409, description = "Already delivered, or nothing failed", body = super::error::ErrorBody),
        (status = 422, description = "Neither event_id nor app_id and repository_id", body = super::error::ErrorBody)))]
pub(crate) async fn retry(request: RetryRequest, state: AppState) -> Result<Response, ApiError> {
    match (request.event_id, request.app_id, request.repository_id) {
        (Some(event_id), _, _) => retry_event(&event_id, &state).await,
        (None, Some(app_id), Some(repository_id)) => {
            retry_subscription(&app_id, &repository_id, &state).await
        }
        _ => Err(invalid(
            "event_id",
            "is required (or give app_id and repository_id)",
        )),
    }
}

async fn retry_event(raw: &str, state: &AppState) -> Result<Response, ApiError> {
    let id = requeue_event(raw, state).await?;
    Ok(json(&RetryResponse {
        data: RetryQueued {
            message: "Retry queued",
            event_id: Some(id.into_string()),
            app_id: None,
            repository_id: None,
            retried: 1,
        },
    }))
}

/// An operator's retry of one event (the API and the console).
pub(crate) async fn requeue_event(raw: &str, state: &AppState) -> Result<EventId, ApiError> {
    pull_lever(raw, state, true).await
}

/// An operator's skip of one undelivered event, whichever app it belongs
/// to (the console); its subscription resumes with the next event.
pub(crate) async fn pass_over_event(raw: &str, state: &AppState) -> Result<EventId, ApiError> {
    pull_lever(raw, state, false).await
}

async fn pull_lever(raw: &str, state: &AppState, retry: bool) -> Result<EventId, ApiError> {
    let id = EventId::parse(raw).ok_or_else(|| ApiError::NotFound(EVENT_NOT_FOUND.to_owned()))?;
    let (lever, done) = if retry {
        (state.store.retry_event(None, &id).await?, "retried")
    } else {
        (state.store.skip_event(None, &id).await?, "skipped")
    };
    match lever {
        Lever::Done => {
            state.engine.wake_delivery();
            tracing::info!(event = %id, "event {done} by an operator");
            Ok(id)
        }
        Lever::NotFound => Err(ApiError::NotFound(EVENT_NOT_FOUND.to_owned())),
        Lever::NotApplicable => Err(ApiError::Conflict(format!(
            "Only undelivered events can be {done}"
        ))),
    }
}

async fn retry_subscription(
    app_raw: &str,
    repository_raw: &str,
    state: &AppState,
) -> Result<Response, ApiError> {
    let not_found = || ApiError::NotFound(NOT_WATCHED.to_owned());
    let app = AppId::parse(app_raw).ok_or_else(not_found)?;
    let repo = RepoId::parse(repository_raw).ok_or_else(not_found)?;
    let view = state
        .store
        .subscription_of_app(&app, &repo)
        .await?
        .ok_or_else(not_found)?;
    let mut retried = 0u64;
    let mut after = None;
    loop {
        let filter = EventFilter {
            status: Some(entity::EventStatus::Dead),
            repository_id: Some(repo.as_str().to_owned()),
            after: after.take(),
            limit: 100,
        };
        let dead = state.store.list_events(Some(&app), &filter).await?;
        let Some(last) = dead.last() else { break };
        after = Some(last.id.clone());
        for event in &dead {
            let id = EventId::parse(&event.id).expect("stored event ids are well formed");
            if state.store.retry_event(Some(&app), &id).await? == Lever::Done {
                retried += 1;
            }
        }
    }
    if retried > 0 {
        state.engine.wake_delivery();
    } else if view.subscription.status == entity::SubscriptionStatus::Failed {
        // Failed on its git remote, not on an event: scan again.
        state.store.reschedule(&repo, now_ms()).await?;
        state.engine.notify(SchedulerMsg::ScanNow(repo.clone()));
    } else {
        return Err(ApiError::Conflict(
            "Only failed entries can be retried".to_owned(),
        ));
    }
    tracing::info!(app = %app, repository = %repo, retried, "subscription retried by an operator");
    Ok(json(&RetryResponse {
        data: RetryQueued {
            message: "Retry queued",
            event_id: None,
            app_id: Some(app.into_string()),
            repository_id: Some(repo.into_string()),
            retried,
        },
    }))
}

/// Retries every dead event of one app, in the background.
#[utoipa::path(post, path = "/admin/api/retry/app/{app_id}", tag = "operations",
    params(("app_id" = String, Path, description = "App id")),
    security(("admin_token" = [])),
    responses(
        (status = 202, description = "Bulk retry started", body = BulkStartedResponse),
        (status = 401, description = "Missing or wrong admin token", body = super::error::ErrorBody),
        (status = 404, description = "No such app, or nothing to retry", body = super::error::ErrorBody),
        (status = 429, description = "Too many operations running", body = super::error::ErrorBody)))]
pub(crate) async fn retry_app(app_id: String, state: AppState) -> Result<Response, ApiError> {
    let app = AppId::parse(&app_id).ok_or_else(|| ApiError::NotFound(APP_NOT_FOUND.to_owned()))?;
    if state.store.app(&app).await?.is_none() {
        return Err(ApiError::NotFound(APP_NOT_FOUND.to_owned()));
    }
    start_bulk(Some(&app), "No failed notifications for this app", &state).await
}

/// Retries every dead event of every app, in the background.
#[utoipa::path(post, path = "/admin/api/retry/all", tag = "operations",
    security(("admin_token" = [])),
    responses(
        (status = 202, description = "Bulk retry started", body = BulkStartedResponse),
        (status = 401, description = "Missing or wrong admin token", body = super::error::ErrorBody),
        (status = 404, description = "Nothing to retry", body = super::error::ErrorBody),
        (status = 429, description = "Too many operations running", body = super::error::ErrorBody)))]
pub(crate) async fn retry_all(state: AppState) -> Result<Response, ApiError> {
    start_bulk(None, "No failed notifications found", &state).await
}

async fn start_bulk(
    app: Option<&AppId>,
    nothing: &str,
    state: &AppState,
) -> Result<Response, ApiError> {
    let operation = begin_bulk_retry(app, nothing, state).await?;
    let total = u64::try_from(operation.total).unwrap_or(0);
    let body = BulkStartedResponse {
        data: BulkStarted {
            operation_id: operation.id,
            total,
            message: "Bulk retry started",
        },
    };
    Ok(warp::reply::with_status(warp::reply::json(&body), StatusCode::ACCEPTED).into_response())
}

/// Starts a bulk retry of the dead events of `app` (or of every app) in the
/// background (the API and the console).
pub(crate) async fn begin_bulk_retry(
    app: Option<&AppId>,
    nothing: &str,
    state: &AppState,
) -> Result<entity::bulk_operation::Model, ApiError> {
    let operation = match state
        .store
        .start_bulk_retry(app, MAX_BULK_EVENTS, MAX_RUNNING_OPERATIONS)
        .await?
    {
        BulkStart::Started(operation) => operation,
        BulkStart::Nothing => return Err(ApiError::NotFound(nothing.to_owned())),
        BulkStart::Busy => {
            return Err(ApiError::RateLimited {
                retry_after_secs: 60,
            });
        }
    };
    // This instance's runner claims it at once; any other's would on its
    // next tick.
    state.engine.run_bulk();
    tracing::info!(operation = %operation.id, app = ?app.map(AppId::as_str), total = operation.total, "bulk retry started");
    Ok(*operation)
}

fn operation_not_found() -> ApiError {
    ApiError::NotFound(OPERATION_NOT_FOUND.to_owned())
}

/// Where a bulk retry stands, whichever instance runs it. Finished
/// operations are kept for an hour.
#[utoipa::path(get, path = "/admin/api/retry/progress/{operation_id}", tag = "operations",
    params(("operation_id" = String, Path, description = "Operation id")),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The progress", body = ProgressResponse),
        (status = 401, description = "Missing or wrong admin token", body = super::error::ErrorBody),
        (status = 404, description = "Unknown or expired operation", body = super::error::ErrorBody)))]
pub(crate) async fn retry_progress(
    operation_id: String,
    state: AppState,
) -> Result<Response, ApiError> {
    let operation = bulk_progress(&operation_id, &state).await?;
    Ok(json(&ProgressResponse {
        data: ProgressBody::from(&operation),
    }))
}

/// Stops a bulk retry before its next event (events already retried stay
/// queued), whichever instance runs it; one whose runner died is cancelled
/// at once. A finished operation stays as it ended.
#[utoipa::path(post, path = "/admin/api/retry/cancel/{operation_id}", tag = "operations",
    params(("operation_id" = String, Path, description = "Operation id")),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "Cancellation requested", body = MessageResponse),
        (status = 401, description = "Missing or wrong admin token", body = super::error::ErrorBody),
        (status = 404, description = "Unknown or expired operation", body = super::error::ErrorBody)))]
pub(crate) async fn retry_cancel(
    operation_id: String,
    state: AppState,
) -> Result<Response, ApiError> {
    cancel_bulk_retry(&operation_id, &state).await?;
    Ok(json(&MessageResponse {
        data: MessageData {
            message: "Cancellation requested",
        },
    }))
}

/// Delivers the repository's whole current tree to the app again (every
/// file as `create`), after whatever the subscription already has queued.
#[utoipa::path(post, path = "/admin/api/resync/{app_id}/{repository_id}", tag = "operations", operation_id = "resync_subscription",
    params(
        ("app_id" = String, Path, description = "App id"),
        ("repository_id" = String, Path, description = "Repository id")),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "Re-sync queued", body = ResyncResponse),
        (status = 401, description = "Missing or wrong admin token", body = super::error::ErrorBody),
        (status = 404, description = "The app does not watch the repository", body = super::error::ErrorBody)))]
pub(crate) async fn resync(
    app_id: String,
    repository_id: String,
    state: AppState,
) -> Result<Response, ApiError> {
    let (app, repo) = resync_subscription(&app_id, &repository_id, &state).await?;
    Ok(json(&ResyncResponse {
        data: ResyncQueued {
            message: "Re-sync queued",
            app_id: app.into_string(),
            repository_id: repo.into_string(),
        },
    }))
}

/// An operator's resync of one subscription (the API and the console).
pub(crate) async fn resync_subscription(
    app_id: &str,
    repository_id: &str,
    state: &AppState,
) -> Result<(AppId, RepoId), ApiError> {
    let not_found = || ApiError::NotFound(NOT_WATCHED.to_owned());
    let app = AppId::parse(app_id).ok_or_else(not_found)?;
    let repo = RepoId::parse(repository_id).ok_or_else(not_found)?;
    if !state.store.resync(&app, &repo).await? {
        return Err(not_found());
    }
    state.engine.notify(SchedulerMsg::ScanNow(repo.clone()));
    tracing::info!(app = %app, repository = %repo, "resync requested by an operator");
    Ok((app, repo))
}

/// Closes a repository's git breaker and clears the failure it left: the
/// repository's and its subscriptions' errors; failed subscriptions go back
/// to work (unless a dead event holds them); the repository is scanned now.
#[utoipa::path(post, path = "/admin/api/repositories/{id}/breaker/reset", tag = "operations",
    params(("id" = String, Path, description = "Repository id")),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "Breaker reset", body = BreakerResetResponse),
        (status = 401, description = "Missing or wrong admin token", body = super::error::ErrorBody),
        (status = 404, description = "No such repository", body = super::error::ErrorBody)))]
pub(crate) async fn breaker_reset(id: String, state: AppState) -> Result<Response, ApiError> {
    let (repo, reset) = reset_breaker(&id, &state).await?;
    Ok(json(&BreakerResetResponse {
        data: BreakerResetBody {
            message: "Breaker reset",
            repository_id: repo.into_string(),
            subscriptions_recovered: reset.recovered,
            subscriptions_still_failed: reset.still_failed,
        },
    }))
}

/// An operator's git breaker reset (the API and the console).
pub(crate) async fn reset_breaker(
    id: &str,
    state: &AppState,
) -> Result<(RepoId, BreakerReset), ApiError> {
    let not_found = || ApiError::NotFound(REPOSITORY_NOT_FOUND.to_owned());
    let repo = RepoId::parse(id).ok_or_else(not_found)?;
    let reset = state
        .store
        .reset_repository_breaker(&repo)
        .await?
        .ok_or_else(not_found)?;
    state.engine.notify(SchedulerMsg::ScanNow(repo.clone()));
    // Recovered subscriptions may hold notifications (sync_failed) to send.
    state.engine.wake_delivery();
    tracing::info!(repository = %repo, recovered = reset.recovered, still_failed = reset.still_failed, "git breaker reset by an operator");
    Ok((repo, reset))
}

/// Where a bulk retry stands (the API and the console).
pub(crate) async fn bulk_progress(
    operation_id: &str,
    state: &AppState,
) -> Result<entity::bulk_operation::Model, ApiError> {
    let id = OperationId::parse(operation_id).ok_or_else(operation_not_found)?;
    state
        .store
        .bulk_operation(&id, now_ms())
        .await?
        .ok_or_else(operation_not_found)
}

/// Asks a bulk retry to stop (the API and the console).
pub(crate) async fn cancel_bulk_retry(
    operation_id: &str,
    state: &AppState,
) -> Result<(), ApiError> {
    let id = OperationId::parse(operation_id).ok_or_else(operation_not_found)?;
    let lease_ms =
        i64::try_from(state.settings.cluster.lease_ttl().as_millis()).unwrap_or(i64::MAX);
    state
        .store
        .cancel_bulk_operation(&id, now_ms().saturating_sub(lease_ms))
        .await?
        .ok_or_else(operation_not_found)?;
    tracing::info!(operation = %id, "bulk retry cancellation requested");
    Ok(())
}
