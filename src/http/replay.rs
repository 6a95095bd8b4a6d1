//! Replay (`/api/repositories/{id}/replay`, app token): the changes between
//! two commits of a watched repository, computed from git again (so also
//! after retention pruned the events that carried them), appended to the
//! calling app's own subscription as new events with ids of their own and
//! a `replay` marker in their bodies; and the replay's progress. The git
//! work runs on the engine's scan workers ([`actors::supervisor::EngineHandle::replay`]);
//! the events are written by the store in one transaction.

use actors::git::GitFailure;
use actors::ids::{AppId, ReplayId, RepoId};
use actors::scan::replay::ReplayFailure;
use actors::supervisor::ReplayRequest as EngineReplay;
use entity::app;
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::{HeaderValue, StatusCode};
use warp::reply::{Reply, Response};

use super::AppState;
use super::error::{ApiError, respond};
use super::filters::{app_auth, json_body, with_state};
use super::models::{ReplayRequest, ReplayView};
use crate::domain::Invalid;

const NOT_REGISTERED: &str = "Repository not found or not registered for this app";
const NO_REPLAY: &str = "Replay not found for this repository and app";

pub fn routes(state: AppState) -> BoxedFilter<(Response,)> {
    let body_limit = state.body_limit();
    let start = warp::path!("api" / "repositories" / String / "replay")
        .and(warp::post())
        .and(app_auth(state.clone()))
        .and(json_body::<ReplayRequest>(body_limit))
        .and(with_state(state.clone()))
        .then(start)
        .map(respond);
    let progress = warp::path!("api" / "repositories" / String / "replays" / String)
        .and(warp::get())
        .and(app_auth(state.clone()))
        .and(with_state(state))
        .then(progress)
        .map(respond);
    start.or(progress).unify().boxed()
}

fn repo_id(raw: &str) -> Result<RepoId, ApiError> {
    RepoId::parse(raw).ok_or_else(|| ApiError::NotFound(NOT_REGISTERED.to_owned()))
}

/// A commit as a request names it: 4 to 40 hex digits (git's shortest
/// abbreviation to a full SHA-1), case ignored.
fn commit(field: &'static str, raw: &str) -> Result<String, Invalid> {
    let raw = raw.trim();
    if (4..=40).contains(&raw.len()) && raw.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(raw.to_ascii_lowercase())
    } else {
        Err(Invalid {
            field,
            message: "must be a commit SHA: 40 hex digits (or an abbreviation of at least 4)"
                .to_owned(),
        })
    }
}

/// A failed replay as the caller sees it.
fn replay_error(failure: ReplayFailure) -> ApiError {
    match failure {
        ReplayFailure::UnknownCommit(message) => ApiError::CommitNotFound(message),
        ambiguous @ ReplayFailure::Ambiguous { .. } => {
            ApiError::CommitNotFound(ambiguous.to_string())
        }
        too_large @ ReplayFailure::TooLarge { .. } => {
            ApiError::ReplayTooLarge(too_large.to_string())
        }
        ReplayFailure::Git(err) => match err.failure {
            GitFailure::Auth | GitFailure::NotFound => ApiError::RepositoryAccessDenied(format!(
                "The commit must be fetched again and the remote refused this subscription's credential: {}",
                err.message
            )),
            GitFailure::Timeout | GitFailure::Network | GitFailure::Refused => {
                ApiError::RepositoryUnreachable(format!(
                    "The commit must be fetched again and the remote could not be read: {}",
                    err.message
                ))
            }
            GitFailure::Other => {
                ApiError::internal(anyhow::anyhow!("replay failed: {}", err.message))
            }
        },
    }
}

/// Replays the changes from commit `from` to commit `to` to the calling
/// app's subscription: the diff between their trees, filtered by the
/// subscription's globs and the repository's ignore files as a scan filters
/// it, appended after the subscription's other events as new events (new
/// ids, new `webhook-id`s, a `replay` marker in every body), delivered as
/// webhooks like any other. Computed from git, so it works after retention
/// pruned the original events; a commit Herald's mirror no longer holds is
/// fetched again with the subscription's credential. A replay writes at
/// most 10,000 events: a larger diff is refused (`replay_too_large`), and
/// nothing is written.
#[utoipa::path(post, path = "/api/repositories/{id}/replay", tag = "client", operation_id = "replay",
    params(("id" = String, Path, description = "Repository id")),
    request_body = ReplayRequest,
    security(("app_token" = [])),
    responses(
        (status = 202, description = "Replay written; its events are on their way. `Location` names its progress", body = ReplayView,
            headers(("location" = String, description = "The replay's progress"))),
        (status = 400, description = "Malformed JSON", body = super::error::ErrorBody),
        (status = 401, description = "Missing or invalid token", body = super::error::ErrorBody),
        (status = 404, description = "Not registered for this app", body = super::error::ErrorBody),
        (status = 422, description = "A field is not a commit SHA (`validation_failed`); a commit is in neither Herald's copy nor the remote, e.g. after a history rewrite (`commit_not_found`); the diff exceeds 10,000 events (`replay_too_large`); or this subscription's credential cannot read the repository (`repository_access_denied`). Nothing is written", body = super::error::ErrorBody),
        (status = 502, description = "A commit must be fetched again and the remote could not be reached (`repository_unreachable`)", body = super::error::ErrorBody)))]
pub(crate) async fn start(
    id: String,
    app: app::Model,
    request: ReplayRequest,
    state: AppState,
) -> Result<Response, ApiError> {
    let repo = repo_id(&id)?;
    let from = commit("from", &request.from)?;
    let to = commit("to", &request.to)?;
    let app_id = AppId::stored(&app.id);
    let view = state
        .store
        .subscription_of_app(&app_id, &repo)
        .await?
        .ok_or_else(|| ApiError::NotFound(NOT_REGISTERED.to_owned()))?;
    if view.subscription.access != entity::AccessState::Granted {
        return Err(ApiError::RepositoryAccessDenied(
            "This subscription's credential cannot read the repository: update its token first"
                .to_owned(),
        ));
    }
    let replay_id = ReplayId::generate();
    let diff = state
        .engine
        .replay(EngineReplay {
            repository: repo.clone(),
            app: app.id.clone(),
            fetch_url: view.repository.fetch_url.clone(),
            expand_submodules: view.repository.expand_submodules,
            branch: view.branch().map(str::to_owned),
            token: state.store.git_token(&view.subscription)?,
            from,
            to,
            replay_id: replay_id.clone(),
            include: view.include(),
            exclude: view.exclude(),
            resolve_lfs: app.resolve_lfs,
        })
        .await
        .map_err(replay_error)?;
    let progress = state
        .store
        .record_replay(&app_id, &repo, &replay_id, &diff)
        .await?
        .ok_or_else(|| ApiError::NotFound(NOT_REGISTERED.to_owned()))?;
    tracing::info!(app = %app.id, repository = %repo, replay = %replay_id, from = %diff.from, to = %diff.to, events = progress.replay.events_total, "replay written");
    if progress.replay.events_total > 0 {
        state.engine.wake_delivery();
    }
    let mut response = warp::reply::with_status(
        warp::reply::json(&ReplayView::from(&progress)),
        StatusCode::ACCEPTED,
    )
    .into_response();
    if let Ok(location) =
        HeaderValue::from_str(&format!("/api/repositories/{repo}/replays/{replay_id}"))
    {
        response.headers_mut().insert("location", location);
    }
    Ok(response)
}

/// One of the app's replays of this repository, with its progress:
/// `events_delivered` counts its events no longer waiting, whether or not
/// retention has pruned them since.
#[utoipa::path(get, path = "/api/repositories/{id}/replays/{replay_id}", tag = "client", operation_id = "replay_progress",
    params(
        ("id" = String, Path, description = "Repository id"),
        ("replay_id" = String, Path, description = "Replay id")),
    security(("app_token" = [])),
    responses(
        (status = 200, description = "The replay", body = ReplayView),
        (status = 401, description = "Missing or invalid token", body = super::error::ErrorBody),
        (status = 404, description = "No such replay of this app's subscription", body = super::error::ErrorBody)))]
pub(crate) async fn progress(
    id: String,
    replay: String,
    app: app::Model,
    state: AppState,
) -> Result<Response, ApiError> {
    let not_found = || ApiError::NotFound(NO_REPLAY.to_owned());
    let repo = RepoId::parse(&id).ok_or_else(not_found)?;
    let replay = ReplayId::parse(&replay).ok_or_else(not_found)?;
    let progress = state
        .store
        .replay_of_app(&AppId::stored(&app.id), &repo, &replay)
        .await?
        .ok_or_else(not_found)?;
    Ok(warp::reply::json(&ReplayView::from(&progress)).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_are_hex_of_4_to_40_digits() {
        let full = "0123456789abcdef0123456789ABCDEF01234567";
        assert_eq!(
            commit("from", full).as_deref(),
            Ok(&*full.to_ascii_lowercase())
        );
        assert_eq!(commit("to", "abcd").as_deref(), Ok("abcd"));
        for bad in [
            "",
            "abc",
            "main",
            "HEAD~1",
            "g123456",
            &"a".repeat(41),
            "12 34",
        ] {
            let err = commit("from", bad).expect_err(bad);
            assert_eq!(err.field, "from", "{bad}");
        }
    }
}
