//! The client API (`Authorization: Bearer <app token>`), Docora-compatible:
//! an app registers the repositories it watches and manages its
//! subscriptions. An app only ever sees its own subscriptions: anything else
//! is "not found", whether or not another app watches it.

use actors::git::{GitError, GitFailure};
use actors::ids::{AppId, RepoId};
use actors::scheduler::SchedulerMsg;
use actors::store::subscriptions::NewSubscription;
use actors::supervisor::AccessProbe;
use entity::app;
use secrecy::SecretString;
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::{Reply, Response};

use super::error::{ApiError, respond};
use super::filters::{app_auth, first_of, json_body, query, with_state};
use super::models::{
    CursorQuery, MessageBody, RegisterRepository, RepositoryCreated, RepositoryList,
    RepositoryView, UpdateToken,
};
use super::paging;
use super::state::AppState;
use crate::domain::{self, Invalid};

const NOT_REGISTERED: &str = "Repository not found or not registered for this app";

pub fn routes(state: AppState) -> BoxedFilter<(Response,)> {
    let body_limit = state.body_limit();
    let register = warp::path!("api" / "repositories")
        .and(warp::post())
        .and(app_auth(state.clone()))
        .and(json_body::<RegisterRepository>(body_limit))
        .and(with_state(state.clone()))
        .then(register)
        .map(respond);
    let list = warp::path!("api" / "repositories")
        .and(warp::get())
        .and(app_auth(state.clone()))
        .and(query::<CursorQuery>())
        .and(with_state(state.clone()))
        .then(list)
        .map(respond);
    let detail = warp::path!("api" / "repositories" / String)
        .and(warp::get())
        .and(app_auth(state.clone()))
        .and(with_state(state.clone()))
        .then(detail)
        .map(respond);
    let delete = warp::path!("api" / "repositories" / String)
        .and(warp::delete())
        .and(app_auth(state.clone()))
        .and(with_state(state.clone()))
        .then(unwatch)
        .map(respond);
    let token = warp::path!("api" / "repositories" / String / "token")
        .and(warp::patch())
        .and(app_auth(state.clone()))
        .and(json_body::<UpdateToken>(body_limit))
        .and(with_state(state.clone()))
        .then(update_token)
        .map(respond);
    let scan = warp::path!("api" / "repositories" / String / "scan")
        .and(warp::post())
        .and(app_auth(state.clone()))
        .and(with_state(state))
        .then(scan)
        .map(respond);
    first_of([
        register.boxed(),
        list.boxed(),
        detail.boxed(),
        delete.boxed(),
        token.boxed(),
        scan.boxed(),
    ])
}

fn repo_id(raw: &str) -> Result<RepoId, ApiError> {
    RepoId::parse(raw).ok_or_else(|| ApiError::NotFound(NOT_REGISTERED.to_owned()))
}

/// Proves that `token` (or no token) reads the repository, before anything
/// is written: the remote is asked where the branch is, with this credential
/// alone, whoever else watches the repository.
async fn prove_access(
    state: &AppState,
    fetch_url: &str,
    branch: Option<&str>,
    token: Option<&SecretString>,
) -> Result<(), ApiError> {
    let probe = AccessProbe {
        url: fetch_url.to_owned(),
        branch: branch.map(str::to_owned),
        token: token.cloned(),
    };
    state
        .engine
        .check_access(probe)
        .await
        .map(|_| ())
        .map_err(|err| access_error(&err, token.is_some()))
}

/// Whether the repository needs a credential: an anonymous check is refused.
/// `None` when the remote could not tell (it failed for another reason).
async fn needs_credential(state: &AppState, fetch_url: &str, branch: Option<&str>) -> Option<bool> {
    match prove_access(state, fetch_url, branch, None).await {
        Ok(()) => Some(false),
        Err(ApiError::RepositoryAccessDenied(_) | ApiError::RepositoryNotFound(_)) => Some(true),
        Err(_) => None,
    }
}

/// A failed access check as the caller sees it: what failed, never how the
/// remote phrased it, never the credential.
fn access_error(err: &GitError, with_token: bool) -> ApiError {
    match (err.failure, with_token) {
        (GitFailure::NotFound, _) => ApiError::RepositoryNotFound(format!(
            "Repository not found: {} (or the credential cannot see it)",
            err.message
        )),
        (GitFailure::Auth, false) => ApiError::RepositoryAccessDenied(
            "The repository requires a credential: give a github_token that can read it".to_owned(),
        ),
        (GitFailure::Auth, true) => ApiError::RepositoryAccessDenied(
            "The git remote refused the github_token: it cannot read this repository".to_owned(),
        ),
        (GitFailure::Refused, _) => Invalid {
            field: "github_url",
            message: err.message.clone(),
        }
        .into(),
        (GitFailure::Timeout | GitFailure::Network | GitFailure::Other, _) => {
            ApiError::RepositoryUnreachable(format!(
                "Access to the repository could not be checked: {}",
                err.message
            ))
        }
    }
}

/// Watches a repository. Access is checked first with the app's own
/// credential (its token, or none), also when other apps already watch the
/// repository. Registering the same repository again returns the same id,
/// stores the credential just checked, and re-sends the whole current tree
/// (every file as `create`, after whatever is already queued), as a resync
/// does and as Docora does: its clients re-register to recover after
/// losing their store.
#[utoipa::path(post, path = "/api/repositories", tag = "client",
    request_body = RegisterRepository,
    security(("app_token" = [])),
    responses(
        (status = 201, description = "Registered; or registered again: the same id, and the whole current tree is sent again", body = RepositoryCreated),
        (status = 400, description = "Malformed JSON", body = super::error::ErrorBody),
        (status = 401, description = "Missing or invalid token", body = super::error::ErrorBody),
        (status = 404, description = "No such repository or branch on the remote (`repository_not_found`)", body = super::error::ErrorBody),
        (status = 413, description = "Body too large", body = super::error::ErrorBody),
        (status = 422, description = "Invalid field, or the credential cannot read the repository (`repository_access_denied`)", body = super::error::ErrorBody),
        (status = 429, description = "Rate limited", body = super::error::ErrorBody),
        (status = 502, description = "The git remote could not be reached to check access (`repository_unreachable`)", body = super::error::ErrorBody)))]
pub(crate) async fn register(
    app: app::Model,
    request: RegisterRepository,
    state: AppState,
) -> Result<Response, ApiError> {
    let policy = state.url_policy();
    let (field, raw_url) = match (&request.github_url, &request.url) {
        (Some(url), _) => ("github_url", url),
        (None, Some(url)) => ("url", url),
        (None, None) => {
            return Err(Invalid {
                field: "github_url",
                message: "is required (or give `url`)".to_owned(),
            }
            .into());
        }
    };
    let remote = domain::repo_url(field, raw_url, policy).await?;
    let branch = request.branch.as_deref().map(domain::branch).transpose()?;
    let git_token = request
        .github_token
        .as_deref()
        .map(domain::git_token)
        .transpose()?;
    let include = domain::globs("include", request.include.as_deref().unwrap_or_default())?;
    let exclude = domain::globs("exclude", request.exclude.as_deref().unwrap_or_default())?;
    prove_access(&state, &remote.fetch, branch.as_deref(), git_token.as_ref()).await?;
    let is_private = match git_token {
        None => Some(false),
        Some(_) => needs_credential(&state, &remote.fetch, branch.as_deref()).await,
    };
    let new = NewSubscription {
        url: remote.canonical,
        fetch_url: remote.fetch,
        owner: remote.owner,
        name: remote.name,
        branch,
        git_token,
        is_private,
        include,
        exclude,
        expand_submodules: request.expand_submodules.unwrap_or(false),
    };
    let (view, created) = state.store.subscribe(&AppId::stored(&app.id), new).await?;
    let repo = RepoId::parse(&view.repository.id).expect("stored ids are well formed");
    if created {
        tracing::info!(app = %app.id, repository = %view.repository.id, "repository registered");
        state
            .engine
            .notify(SchedulerMsg::RepositoryRegistered(repo));
    } else {
        tracing::info!(app = %app.id, repository = %view.repository.id, "repository registered again; its whole tree is sent again");
        state.engine.notify(SchedulerMsg::ScanNow(repo));
    }
    Ok(warp::reply::with_status(
        warp::reply::json(&RepositoryCreated::from(&view)),
        StatusCode::CREATED,
    )
    .into_response())
}

/// The app's repositories with their status, a page at a time.
#[utoipa::path(get, path = "/api/repositories", tag = "client", operation_id = "list_repositories",
    params(CursorQuery),
    security(("app_token" = [])),
    responses(
        (status = 200, description = "A page of repositories", body = RepositoryList),
        (status = 400, description = "Malformed query string", body = super::error::ErrorBody),
        (status = 401, description = "Missing or invalid token", body = super::error::ErrorBody),
        (status = 422, description = "Bad paging", body = super::error::ErrorBody)))]
pub(crate) async fn list(
    app: app::Model,
    query: CursorQuery,
    state: AppState,
) -> Result<Response, ApiError> {
    let limit = paging::limit(query.limit)?;
    let cursor = match query.cursor.as_deref() {
        Some(raw) => Some(RepoId::parse(raw).ok_or_else(|| Invalid {
            field: "cursor",
            message: "is not a cursor this API returned".to_owned(),
        })?),
        None => None,
    };
    let views = state
        .store
        .subscriptions_of_app(&AppId::stored(&app.id), cursor.as_ref(), Some(limit + 1))
        .await?;
    let (page, next_cursor) = paging::page(
        &views,
        limit,
        |v| RepositoryView::from(v),
        |v| v.repository_id.clone(),
    );
    Ok(warp::reply::json(&RepositoryList {
        data: page,
        next_cursor,
    })
    .into_response())
}

/// One of the app's repositories.
#[utoipa::path(get, path = "/api/repositories/{id}", tag = "client", operation_id = "repository_detail",
    params(("id" = String, Path, description = "Repository id")),
    security(("app_token" = [])),
    responses(
        (status = 200, description = "The repository", body = RepositoryView),
        (status = 401, description = "Missing or invalid token", body = super::error::ErrorBody),
        (status = 404, description = "Not registered for this app", body = super::error::ErrorBody)))]
pub(crate) async fn detail(
    id: String,
    app: app::Model,
    state: AppState,
) -> Result<Response, ApiError> {
    let view = state
        .store
        .subscription_of_app(&AppId::stored(&app.id), &repo_id(&id)?)
        .await?
        .ok_or_else(|| ApiError::NotFound(NOT_REGISTERED.to_owned()))?;
    Ok(warp::reply::json(&RepositoryView::from(&view)).into_response())
}

/// Stops watching a repository; its pending events are dropped with it.
#[utoipa::path(delete, path = "/api/repositories/{id}", tag = "client",
    params(("id" = String, Path, description = "Repository id")),
    security(("app_token" = [])),
    responses(
        (status = 204, description = "Unwatched"),
        (status = 401, description = "Missing or invalid token", body = super::error::ErrorBody),
        (status = 404, description = "Not registered for this app", body = super::error::ErrorBody)))]
pub(crate) async fn unwatch(
    id: String,
    app: app::Model,
    state: AppState,
) -> Result<Response, ApiError> {
    let repo = repo_id(&id)?;
    if !state
        .store
        .unsubscribe(&AppId::stored(&app.id), &repo)
        .await?
    {
        return Err(ApiError::NotFound(NOT_REGISTERED.to_owned()));
    }
    tracing::info!(app = %app.id, repository = %repo, "repository unwatched");
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Replaces the git token of a repository and clears its failure state. The
/// new token is checked against the remote first; a token that cannot read
/// the repository changes nothing.
#[utoipa::path(patch, path = "/api/repositories/{id}/token", tag = "client",
    params(("id" = String, Path, description = "Repository id")),
    request_body = UpdateToken,
    security(("app_token" = [])),
    responses(
        (status = 200, description = "Updated", body = MessageBody),
        (status = 400, description = "Malformed JSON", body = super::error::ErrorBody),
        (status = 401, description = "Missing or invalid token", body = super::error::ErrorBody),
        (status = 404, description = "Not registered for this app, or gone from the remote", body = super::error::ErrorBody),
        (status = 422, description = "Invalid token value, or the token cannot read the repository (`repository_access_denied`)", body = super::error::ErrorBody),
        (status = 502, description = "The git remote could not be reached to check the token (`repository_unreachable`)", body = super::error::ErrorBody)))]
pub(crate) async fn update_token(
    id: String,
    app: app::Model,
    request: UpdateToken,
    state: AppState,
) -> Result<Response, ApiError> {
    let repo = repo_id(&id)?;
    let token = domain::git_token(&request.github_token)?;
    let view = state
        .store
        .subscription_of_app(&AppId::stored(&app.id), &repo)
        .await?
        .ok_or_else(|| ApiError::NotFound(NOT_REGISTERED.to_owned()))?;
    prove_access(
        &state,
        &view.repository.fetch_url,
        view.branch(),
        Some(&token),
    )
    .await?;
    if !state
        .store
        .update_git_token(&AppId::stored(&app.id), &repo, &token)
        .await?
    {
        return Err(ApiError::NotFound(NOT_REGISTERED.to_owned()));
    }
    tracing::info!(app = %app.id, repository = %repo, "git token updated");
    state.engine.notify(SchedulerMsg::ScanNow(repo));
    Ok(warp::reply::json(&MessageBody {
        message: "Token updated successfully",
    })
    .into_response())
}

/// Scans the repository now, as a push hook would: for CI pipelines and git
/// hosts without push hooks. Whatever changed reaches every subscriber; the
/// answer does not wait for the scan. Within
/// `scheduler.scan_request_cooldown` of the repository's last scan (by
/// anyone's request, a push hook or the poll) the answer is 429 with
/// `Retry-After`: a scan costs the git host and Herald, and one just ran.
#[utoipa::path(post, path = "/api/repositories/{id}/scan", tag = "client",
    params(("id" = String, Path, description = "Repository id")),
    security(("app_token" = [])),
    responses(
        (status = 202, description = "Scan queued", body = MessageBody),
        (status = 401, description = "Missing or invalid token", body = super::error::ErrorBody),
        (status = 404, description = "Not registered for this app", body = super::error::ErrorBody),
        (status = 429, description = "Rate limited, or the repository was scanned less than `scheduler.scan_request_cooldown` ago: retry after `Retry-After` seconds", body = super::error::ErrorBody)))]
pub(crate) async fn scan(
    id: String,
    app: app::Model,
    state: AppState,
) -> Result<Response, ApiError> {
    let repo = repo_id(&id)?;
    let view = state
        .store
        .subscription_of_app(&AppId::stored(&app.id), &repo)
        .await?
        .ok_or_else(|| ApiError::NotFound(NOT_REGISTERED.to_owned()))?;
    let cooldown = state.settings.scheduler.scan_request_cooldown;
    if let Some(left) = cooldown_left(view.repository.last_scanned_at, cooldown) {
        return Err(ApiError::RateLimited {
            retry_after_secs: left.as_secs().max(1),
        });
    }
    if !state
        .store
        .request_scan(&AppId::stored(&app.id), &repo)
        .await?
    {
        return Err(ApiError::NotFound(NOT_REGISTERED.to_owned()));
    }
    tracing::info!(app = %app.id, repository = %repo, "scan requested");
    state.engine.notify(SchedulerMsg::ScanNow(repo));
    Ok(warp::reply::with_status(
        warp::reply::json(&MessageBody {
            message: "Scan queued",
        }),
        StatusCode::ACCEPTED,
    )
    .into_response())
}

/// What is left of `cooldown` since the last scan (`None`: a scan may be
/// asked for now), rounded up to whole seconds.
fn cooldown_left(
    last_scanned_at: Option<i64>,
    cooldown: std::time::Duration,
) -> Option<std::time::Duration> {
    let since = actors::clock::now_ms().saturating_sub(last_scanned_at?);
    let left = i64::try_from(cooldown.as_millis())
        .unwrap_or(i64::MAX)
        .saturating_sub(since);
    let left = u64::try_from(left).ok().filter(|left| *left > 0)?;
    Some(std::time::Duration::from_secs(left.div_ceil(1000)))
}
