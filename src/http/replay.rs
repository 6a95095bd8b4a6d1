//! Replay (`/api/repositories/{id}/replay`, app token): the changes between
//! two commits of a watched repository, computed from git again (so also
//! after retention pruned the events that carried them), appended to the
//! calling app's own subscription as new events with ids of their own and
//! a `replay` marker in their bodies; and the replay's progress. The git
//! work runs on the engine's scan workers ([`actors::supervisor::EngineHandle::replay`]);
//! the events are written by the store in one transaction. What one app's
//! replays may take (replays under way, events waiting, bytes an hour) is
//! counted by the store ([`actors::store::replay_quotas`]): a replay past a
//! quota is answered 429 with `Retry-After`, and nothing of it is written.

use actors::git::GitFailure;
use actors::ids::{AppId, ReplayId, RepoId};
use actors::scan::replay::ReplayFailure;
use actors::store::replay_quotas::{
    QuotaRefusal, ReplayQuotas, ReplayRun, ReplayStart, secs_rounded_up,
};
use actors::store::replays::Recorded;
use actors::supervisor::ReplayRequest as EngineReplay;
use entity::app;
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::{HeaderValue, StatusCode};
use warp::reply::{Reply, Response};

use super::error::{ApiError, respond};
use super::filters::{app_auth, first_of, json_body, with_state};
use super::models::{ReplayRequest, ReplayView};
use super::state::AppState;
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
    first_of([start.boxed(), progress.boxed()])
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

/// The `Retry-After` of a replay refused while another of the app's is
/// under way: a replay's git work and write usually take seconds.
pub const RUNNING_RETRY_SECS: u64 = 5;
/// The `Retry-After` of a replay refused while too many of the app's
/// events wait: they leave as the app takes delivery, at its pace.
pub const WAITING_RETRY_SECS: u64 = 30;

/// The `[replay]` settings as the store counts them.
fn quotas(state: &AppState) -> ReplayQuotas {
    let settings = &state.settings;
    ReplayQuotas {
        max_running: settings.replay.max_concurrent_per_app,
        max_waiting_events: settings.replay.max_waiting_events_per_app,
        max_bytes_per_hour: settings.replay.max_bytes_per_hour_per_app,
        lease: settings.cluster.lease_ttl(),
    }
}

/// A replay a quota refused, as the caller sees it: 429 with the code of
/// the quota and when to try again, or 422 when the replay alone is larger
/// than the quota (waiting will not help).
fn refused(refusal: QuotaRefusal) -> ApiError {
    let message = format!("{refusal}; nothing was written");
    let (code, retry_after_secs) = match refusal {
        QuotaRefusal::Running { .. } => ("replay_in_progress", RUNNING_RETRY_SECS),
        QuotaRefusal::Waiting { .. } => ("too_many_waiting_events", WAITING_RETRY_SECS),
        QuotaRefusal::Budget { frees_in, .. } => ("replay_budget_spent", secs_rounded_up(frees_in)),
        QuotaRefusal::TooManyEvents { .. } | QuotaRefusal::TooManyBytes { .. } => {
            return ApiError::ReplayTooLarge(message);
        }
    };
    ApiError::QuotaExceeded {
        code,
        message,
        retry_after_secs,
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
/// nothing is written. What one app's replays may take is bounded
/// (docs/limits.md, Replay quotas): one under way at a time
/// (`replay.max_concurrent_per_app`), the app's events waiting for delivery
/// (`replay.max_waiting_events_per_app`) and the database bytes its replays
/// write an hour (`replay.max_bytes_per_hour_per_app`); past one, the
/// answer is 429 with `Retry-After`, and nothing is written.
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
        (status = 409, description = "The subscription's stored include or exclude globs cannot be read (it is failed, with that error): delete it and register the repository again. Nothing is written", body = super::error::ErrorBody),
        (status = 422, description = "A field is not a commit SHA (`validation_failed`); a commit is in neither Herald's copy nor the remote, e.g. after a history rewrite (`commit_not_found`); the diff exceeds 10,000 events, or alone exceeds the app's limit of waiting events or its hourly replay bytes (`replay_too_large`); or this subscription's credential cannot read the repository (`repository_access_denied`). Nothing is written", body = super::error::ErrorBody),
        (status = 429, description = "A replay quota of the app is spent for now; retry after `Retry-After` seconds. `replay_in_progress`: another of its replays is under way (`replay.max_concurrent_per_app`); `too_many_waiting_events`: its events waiting for delivery would pass `replay.max_waiting_events_per_app`; `replay_budget_spent`: its replays wrote `replay.max_bytes_per_hour_per_app` bytes within the last hour (`Retry-After`: when enough of it frees); `rate_limited`: the app's request budget. Nothing is written", body = super::error::ErrorBody,
            headers(("retry-after" = u64, description = "Seconds to wait before retrying"))),
        (status = 502, description = "A commit must be fetched again and the remote could not be reached (`repository_unreachable`)", body = super::error::ErrorBody),
        (status = 503, description = "The database was too busy to answer in time (`database_busy`); retry after `Retry-After` seconds. Nothing is written", body = super::error::ErrorBody,
            headers(("retry-after" = u64, description = "Seconds to wait before retrying")))))]
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
    // A corrupt row never replays as "no filter".
    let globs = view
        .globs()
        .map_err(|corrupt| ApiError::Conflict(corrupt.to_string()))?;
    let replay_id = ReplayId::generate();
    let quotas = quotas(&state);
    state
        .store
        .start_replay(
            &ReplayStart {
                id: &replay_id,
                app: &app_id,
                repository: &repo,
                subscription_id: &view.subscription.id,
                from: &from,
                to: &to,
            },
            &quotas,
        )
        .await?
        .map_err(refused)?;
    // Held until the replay is written: given back at once if this request
    // fails or its client leaves, after its lease if this instance dies.
    let run = ReplayRun::hold(state.store.clone(), replay_id.clone(), quotas.lease);
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
            include: globs.include,
            exclude: globs.exclude,
            resolve_lfs: app.resolve_lfs,
        })
        .await
        .map_err(replay_error)?;
    let recorded = state
        .store
        .record_replay(&app_id, &repo, &replay_id, &diff, &quotas)
        .await;
    let progress = match recorded {
        Ok(Recorded::Written(progress)) => {
            run.written();
            progress
        }
        not_written => {
            // The git work pinned its commit for events that will not come.
            let (engine, repo, app_id, replay_id) = (
                state.engine.clone(),
                repo.clone(),
                app.id.clone(),
                replay_id.clone(),
            );
            tokio::spawn(async move { engine.unpin_replay(&repo, app_id, &replay_id).await });
            return Err(match not_written? {
                Recorded::Refused(refusal) => refused(refusal),
                _ => ApiError::NotFound(NOT_REGISTERED.to_owned()),
            });
        }
    };
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
