//! The client API's events (`Authorization: Bearer <app token>`): what was
//! sent and how each attempt went, and the app's levers: retry a failed
//! event, skip it, resync a repository. An app only ever sees its own events.

use actors::clock::rfc3339_ms;
use actors::ids::{AppId, EventId, RepoId};
use actors::scheduler::SchedulerMsg;
use actors::store::events::{EventFilter, Lever};
use entity::{app, delivery_attempt, event};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::{Reply, Response};

use super::error::{ApiError, respond};
use super::filters::{app_auth, first_of, query, with_state};
use super::paging;
use super::state::AppState;
use crate::domain::Invalid;

const EVENT_NOT_FOUND: &str = "Event not found";

pub fn routes(state: AppState) -> BoxedFilter<(Response,)> {
    let list = warp::path!("api" / "events")
        .and(warp::get())
        .and(app_auth(state.clone()))
        .and(query::<EventQuery>())
        .and(with_state(state.clone()))
        .then(list)
        .map(respond);
    let detail = warp::path!("api" / "events" / String)
        .and(warp::get())
        .and(app_auth(state.clone()))
        .and(with_state(state.clone()))
        .then(detail)
        .map(respond);
    let retry = warp::path!("api" / "events" / String / "retry")
        .and(warp::post())
        .and(app_auth(state.clone()))
        .and(with_state(state.clone()))
        .then(retry)
        .map(respond);
    let skip = warp::path!("api" / "events" / String / "skip")
        .and(warp::post())
        .and(app_auth(state.clone()))
        .and(with_state(state.clone()))
        .then(skip)
        .map(respond);
    let resync = warp::path!("api" / "repositories" / String / "resync")
        .and(warp::post())
        .and(app_auth(state.clone()))
        .and(with_state(state))
        .then(resync)
        .map(respond);
    first_of([
        list.boxed(),
        detail.boxed(),
        retry.boxed(),
        skip.boxed(),
        resync.boxed(),
    ])
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventQuery {
    /// `pending`, `delivered`, `dead` or `skipped`.
    pub status: Option<String>,
    pub repository_id: Option<String>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// 1 to 200 (default 50).
    pub limit: Option<u64>,
}

/// One event of the outbox.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventView {
    pub event_id: String,
    pub repository_id: String,
    /// Position in the subscription's stream (gap-free, from 1).
    pub seq: i64,
    /// `created`, `updated`, `deleted`, `sync_failed`, `synced` or `submodule`.
    pub kind: String,
    pub path: Option<String>,
    pub sha: Option<String>,
    pub previous_sha: Option<String>,
    pub size: Option<i64>,
    pub binary: bool,
    /// The file is stored in Git LFS: `sha` and `size` are its real
    /// content's, which its webhook carries.
    pub lfs: bool,
    pub commit_sha: Option<String>,
    /// `pending`, `delivered`, `dead` or `skipped`.
    pub status: String,
    /// Attempts used up so far (probes of an open breaker do not count).
    pub attempt_count: i32,
    pub last_error: Option<String>,
    pub next_attempt_at: Option<String>,
    pub created_at: String,
    pub delivered_at: Option<String>,
}

impl From<&event::Model> for EventView {
    fn from(e: &event::Model) -> Self {
        Self {
            event_id: e.id.clone(),
            repository_id: e.repository_id.clone(),
            seq: e.seq,
            kind: e.kind.to_string(),
            path: e.path.clone(),
            sha: e.sha256.clone(),
            previous_sha: e.previous_sha256.clone(),
            size: e.size,
            binary: e.binary,
            lfs: e.lfs,
            commit_sha: e.commit_sha.clone(),
            status: e.status.to_string(),
            attempt_count: e.attempts,
            last_error: e.last_error.clone(),
            next_attempt_at: (e.status == entity::EventStatus::Pending)
                .then(|| rfc3339_ms(e.next_attempt_at)),
            created_at: rfc3339_ms(e.created_at),
            delivered_at: e.delivered_at.map(rfc3339_ms),
        }
    }
}

/// One HTTP attempt (or chunk) of an event.
#[derive(Debug, Serialize, ToSchema)]
pub struct AttemptView {
    pub attempted_at: String,
    pub chunk_index: Option<i32>,
    pub status_code: Option<i32>,
    pub latency_ms: i64,
    /// `http_status`, `redirect`, `timeout`, `connect`, `ssrf`, `broker`,
    /// `tls`, … when it failed.
    pub error_class: Option<String>,
    /// The start of the response body (at most 1 KiB).
    pub response_excerpt: Option<String>,
}

impl From<&delivery_attempt::Model> for AttemptView {
    fn from(a: &delivery_attempt::Model) -> Self {
        Self {
            attempted_at: rfc3339_ms(a.attempted_at),
            chunk_index: a.chunk_index,
            status_code: a.status_code,
            latency_ms: a.latency_ms,
            error_class: a.error_class.map(|class| class.to_string()),
            response_excerpt: a.response_excerpt.clone(),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EventList {
    pub data: Vec<EventView>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EventDetail {
    #[serde(flatten)]
    pub event: EventView,
    pub attempts: Vec<AttemptView>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LeverReply {
    pub message: &'static str,
    pub event_id: String,
}

fn event_id(raw: &str) -> Result<EventId, ApiError> {
    EventId::parse(raw).ok_or_else(|| ApiError::NotFound(EVENT_NOT_FOUND.to_owned()))
}

/// The app's events, oldest first, a page at a time.
#[utoipa::path(get, path = "/api/events", tag = "client", operation_id = "list_events", params(EventQuery),
    security(("app_token" = [])),
    responses(
        (status = 200, description = "A page of events", body = EventList),
        (status = 400, description = "Malformed query string", body = super::error::ErrorBody),
        (status = 401, description = "Missing or invalid token", body = super::error::ErrorBody),
        (status = 422, description = "Bad filter", body = super::error::ErrorBody)))]
pub(crate) async fn list(
    app: app::Model,
    query: EventQuery,
    state: AppState,
) -> Result<Response, ApiError> {
    let limit = paging::limit(query.limit)?;
    let status = match &query.status {
        Some(name) => Some(entity::EventStatus::parse(name).ok_or_else(|| Invalid {
            field: "status",
            message: "must be pending, delivered, dead or skipped".to_owned(),
        })?),
        None => None,
    };
    let cursor = match &query.cursor {
        Some(raw) => Some(
            EventId::parse(raw)
                .ok_or_else(|| Invalid {
                    field: "cursor",
                    message: "is not a cursor this API returned".to_owned(),
                })?
                .into_string(),
        ),
        None => None,
    };
    let filter = EventFilter {
        status,
        repository_id: query.repository_id.clone(),
        after: cursor,
        limit: limit + 1,
    };
    let events = state
        .store
        .list_events(Some(&AppId::stored(&app.id)), &filter)
        .await?;
    let (page, next_cursor) = paging::page(
        &events,
        limit,
        |e| EventView::from(e),
        |e| e.event_id.clone(),
    );
    Ok(warp::reply::json(&EventList {
        data: page,
        next_cursor,
    })
    .into_response())
}

/// One event with every attempt.
#[utoipa::path(get, path = "/api/events/{id}", tag = "client", operation_id = "event_detail",
    params(("id" = String, Path, description = "Event id")),
    security(("app_token" = [])),
    responses(
        (status = 200, description = "The event", body = EventDetail),
        (status = 401, description = "Missing or invalid token", body = super::error::ErrorBody),
        (status = 404, description = "Not one of this app's events", body = super::error::ErrorBody)))]
pub(crate) async fn detail(
    id: String,
    app: app::Model,
    state: AppState,
) -> Result<Response, ApiError> {
    let (event, attempts) = state
        .store
        .event_with_attempts(Some(&AppId::stored(&app.id)), &event_id(&id)?)
        .await?
        .ok_or_else(|| ApiError::NotFound(EVENT_NOT_FOUND.to_owned()))?;
    Ok(warp::reply::json(&EventDetail {
        event: EventView::from(&event),
        attempts: attempts.iter().map(AttemptView::from).collect(),
    })
    .into_response())
}

fn lever_reply(
    lever: Lever,
    id: &str,
    message: &'static str,
    state: &AppState,
) -> Result<Response, ApiError> {
    match lever {
        Lever::Done => {
            state.engine.wake_delivery();
            Ok(warp::reply::json(&LeverReply {
                message,
                event_id: id.to_owned(),
            })
            .into_response())
        }
        Lever::NotFound => Err(ApiError::NotFound(EVENT_NOT_FOUND.to_owned())),
        Lever::NotApplicable => Err(ApiError::Conflict(format!(
            "event {id} cannot be changed in its current state"
        ))),
    }
}

/// Delivers a failed event again from a fresh start (attempts reset); its
/// subscription resumes, in order.
#[utoipa::path(post, path = "/api/events/{id}/retry", tag = "client", operation_id = "retry_event",
    params(("id" = String, Path, description = "Event id")),
    security(("app_token" = [])),
    responses(
        (status = 200, description = "Queued again", body = LeverReply),
        (status = 404, description = "Not one of this app's events", body = super::error::ErrorBody),
        (status = 409, description = "Already delivered", body = super::error::ErrorBody)))]
pub(crate) async fn retry(
    id: String,
    app: app::Model,
    state: AppState,
) -> Result<Response, ApiError> {
    let lever = state
        .store
        .retry_event(Some(&AppId::stored(&app.id)), &event_id(&id)?)
        .await?;
    lever_reply(lever, &id, "Retry queued", &state)
}

/// Passes over an undelivered event; its subscription goes on with the next.
#[utoipa::path(post, path = "/api/events/{id}/skip", tag = "client",
    params(("id" = String, Path, description = "Event id")),
    security(("app_token" = [])),
    responses(
        (status = 200, description = "Skipped", body = LeverReply),
        (status = 404, description = "Not one of this app's events", body = super::error::ErrorBody),
        (status = 409, description = "Already delivered or skipped", body = super::error::ErrorBody)))]
pub(crate) async fn skip(
    id: String,
    app: app::Model,
    state: AppState,
) -> Result<Response, ApiError> {
    let lever = state
        .store
        .skip_event(Some(&AppId::stored(&app.id)), &event_id(&id)?)
        .await?;
    lever_reply(lever, &id, "Event skipped", &state)
}

/// Delivers the repository's whole current tree again (every file as
/// `create`), after whatever is already queued.
#[utoipa::path(post, path = "/api/repositories/{id}/resync", tag = "client", operation_id = "resync_repository",
    params(("id" = String, Path, description = "Repository id")),
    security(("app_token" = [])),
    responses(
        (status = 202, description = "Re-sync queued", body = super::models::MessageBody),
        (status = 404, description = "Not registered for this app", body = super::error::ErrorBody)))]
pub(crate) async fn resync(
    id: String,
    app: app::Model,
    state: AppState,
) -> Result<Response, ApiError> {
    let not_found =
        || ApiError::NotFound("Repository not found or not registered for this app".to_owned());
    let repo = RepoId::parse(&id).ok_or_else(not_found)?;
    if !state.store.resync(&AppId::stored(&app.id), &repo).await? {
        return Err(not_found());
    }
    state.engine.notify(SchedulerMsg::ScanNow(repo));
    Ok(warp::reply::with_status(
        warp::reply::json(&super::models::MessageBody {
            message: "Re-sync queued",
        }),
        StatusCode::ACCEPTED,
    )
    .into_response())
}
