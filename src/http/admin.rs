//! The admin API (`Authorization: Bearer <admin token>`): onboarding and app
//! management.

use actors::clock::rfc3339_ms;
use actors::crypto;
use actors::ids::AppId;
use actors::store::apps::{AppDeletion, NewApp};
use secrecy::ExposeSecret;
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::{Reply, Response};

use super::error::{ApiError, respond};
use super::filters::{admin_auth, first_of, json_body, onboarding_limit, query, with_state};
use super::models::{
    AppDeleted, AppDeletedResponse, AppDetail, AppDetailResponse, AppListResponse, AppPage,
    AppSummaryBody, OnboardRequest, OnboardResponse, OnboardedApp, PageQuery, Pagination,
    RepositoryView,
};
use super::paging;
use super::state::AppState;
use crate::domain;

const APP_NOT_FOUND: &str = "App not found";

pub fn routes(state: AppState) -> BoxedFilter<(Response,)> {
    let body_limit = state.body_limit();
    let onboard = warp::path!("admin" / "api" / "apps" / "onboard")
        .and(warp::post())
        .and(onboarding_limit(state.clone()))
        .and(admin_auth(state.clone()))
        .and(json_body::<OnboardRequest>(body_limit))
        .and(with_state(state.clone()))
        .then(onboard)
        .map(respond);
    let list = warp::path!("admin" / "api" / "apps")
        .and(warp::get())
        .and(admin_auth(state.clone()))
        .and(query::<PageQuery>())
        .and(with_state(state.clone()))
        .then(list_apps)
        .map(respond);
    let detail = warp::path!("admin" / "api" / "apps" / String)
        .and(warp::get())
        .and(admin_auth(state.clone()))
        .and(with_state(state.clone()))
        .then(app_detail)
        .map(respond);
    let delete = warp::path!("admin" / "api" / "apps" / String)
        .and(warp::delete())
        .and(admin_auth(state.clone()))
        .and(with_state(state.clone()))
        .then(delete_app)
        .map(respond);
    let enable = warp::path!("admin" / "api" / "apps" / String / "enable")
        .and(warp::post())
        .and(admin_auth(state.clone()))
        .and(with_state(state))
        .then(enable_app)
        .map(respond);
    first_of([
        onboard.boxed(),
        list.boxed(),
        detail.boxed(),
        delete.boxed(),
        enable.boxed(),
    ])
}

/// Registers an app. Returns its token, signing key and webhook secret once.
#[utoipa::path(post, path = "/admin/api/apps/onboard", tag = "admin",
    request_body = OnboardRequest,
    security(("admin_token" = [])),
    responses(
        (status = 201, description = "App onboarded", body = OnboardResponse),
        (status = 400, description = "Malformed JSON", body = super::error::ErrorBody),
        (status = 401, description = "Missing or wrong admin token", body = super::error::ErrorBody),
        (status = 413, description = "Body too large", body = super::error::ErrorBody),
        (status = 422, description = "Invalid field", body = super::error::ErrorBody),
        (status = 429, description = "Rate limited", body = super::error::ErrorBody)))]
pub(crate) async fn onboard(
    request: OnboardRequest,
    state: AppState,
) -> Result<Response, ApiError> {
    let policy = state.url_policy();
    let delivery = request
        .delivery
        .as_ref()
        .map(domain::delivery)
        .transpose()?
        .unwrap_or_default();
    let new = NewApp {
        name: domain::app_name(&request.app_name)?,
        base_url: domain::base_url(&request.base_url, policy).await?,
        email: domain::email(&request.email)?,
        website: request
            .website
            .as_deref()
            .map(domain::website)
            .transpose()?,
        description: request
            .description
            .as_deref()
            .map(domain::description)
            .transpose()?,
        client_auth_key: match request.client_auth_key.as_deref() {
            Some(key) => domain::client_auth_key(key)?,
            None => crypto::generate_client_auth_key(),
        },
        window: request
            .window
            .as_ref()
            .map(domain::window)
            .transpose()?
            .unwrap_or_default(),
        delivery,
        destination: match (&request.destination, delivery.is_broker()) {
            (Some(raw), true) => Some(domain::destination(delivery, raw, policy)?),
            (None, false) => None,
            (Some(_), false) => return Err(domain::destination_unused().into()),
            (None, true) => return Err(domain::destination_needed(delivery).into()),
        },
    };
    let onboarded = state.store.onboard_app(new).await?;
    tracing::info!(app = %onboarded.app.id, "app onboarded");
    let body = OnboardResponse {
        data: OnboardedApp {
            app_id: onboarded.app.id.clone(),
            token: onboarded.token.expose_secret().to_owned(),
            client_auth_key: onboarded.client_auth_key.expose_secret().to_owned(),
            webhook_secret: onboarded.webhook_secret.expose_secret().to_owned(),
            created_at: rfc3339_ms(onboarded.app.created_at),
        },
    };
    Ok(warp::reply::with_status(warp::reply::json(&body), StatusCode::CREATED).into_response())
}

/// Lists apps, a page at a time.
#[utoipa::path(get, path = "/admin/api/apps", tag = "admin",
    params(PageQuery),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "A page of apps", body = AppListResponse),
        (status = 400, description = "Malformed query string", body = super::error::ErrorBody),
        (status = 401, description = "Missing or wrong admin token", body = super::error::ErrorBody),
        (status = 422, description = "Bad paging", body = super::error::ErrorBody)))]
pub(crate) async fn list_apps(query: PageQuery, state: AppState) -> Result<Response, ApiError> {
    let (page, limit) = paging::numbered(&query)?;
    let (apps, total) = state.store.list_apps(page, limit).await?;
    let body = AppListResponse {
        data: AppPage {
            data: apps.iter().map(AppSummaryBody::from).collect(),
            pagination: Pagination::numbered(page, limit, total),
        },
    };
    Ok(warp::reply::json(&body).into_response())
}

/// One app with its subscriptions.
#[utoipa::path(get, path = "/admin/api/apps/{id}", tag = "admin",
    params(("id" = String, Path, description = "App id")),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The app", body = AppDetailResponse),
        (status = 401, description = "Missing or wrong admin token", body = super::error::ErrorBody),
        (status = 404, description = "No such app", body = super::error::ErrorBody)))]
pub(crate) async fn app_detail(id: String, state: AppState) -> Result<Response, ApiError> {
    let id = AppId::parse(&id).ok_or_else(|| ApiError::NotFound(APP_NOT_FOUND.to_owned()))?;
    let (summary, subscriptions) = state
        .store
        .app_detail(&id)
        .await?
        .ok_or_else(|| ApiError::NotFound(APP_NOT_FOUND.to_owned()))?;
    let body = AppDetailResponse {
        data: AppDetail {
            app: AppSummaryBody::from(&summary),
            repositories: subscriptions.iter().map(RepositoryView::from).collect(),
        },
    };
    Ok(warp::reply::json(&body).into_response())
}

/// Deletes an app with its subscriptions and events; repositories no other
/// app watches are removed too.
#[utoipa::path(delete, path = "/admin/api/apps/{id}", tag = "admin",
    params(("id" = String, Path, description = "App id")),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "Deleted", body = AppDeletedResponse),
        (status = 401, description = "Missing or wrong admin token", body = super::error::ErrorBody),
        (status = 404, description = "No such app", body = super::error::ErrorBody)))]
pub(crate) async fn delete_app(id: String, state: AppState) -> Result<Response, ApiError> {
    let deletion = remove_app(&id, &state).await?;
    let body = AppDeletedResponse {
        data: AppDeleted {
            deleted: true,
            repositories_unlinked: deletion.repositories_unlinked,
            orphaned_repositories_cleaned: deletion.orphaned_repositories_cleaned,
        },
    };
    Ok(warp::reply::json(&body).into_response())
}

/// Re-enables an app that was disabled after its endpoint failed for
/// `delivery.disable_after`; its waiting events are delivered again, in order.
#[utoipa::path(post, path = "/admin/api/apps/{id}/enable", tag = "admin",
    params(("id" = String, Path, description = "App id")),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The app, active again", body = AppDetailResponse),
        (status = 401, description = "Missing or wrong admin token", body = super::error::ErrorBody),
        (status = 404, description = "No such app", body = super::error::ErrorBody)))]
pub(crate) async fn enable_app(id: String, state: AppState) -> Result<Response, ApiError> {
    let id = reenable_app(&id, &state).await?;
    app_detail(id.into_string(), state).await
}

/// An operator's deletion of an app (the API and the console).
pub(crate) async fn remove_app(id: &str, state: &AppState) -> Result<AppDeletion, ApiError> {
    let id = AppId::parse(id).ok_or_else(|| ApiError::NotFound(APP_NOT_FOUND.to_owned()))?;
    let deletion = state
        .store
        .delete_app(&id)
        .await?
        .ok_or_else(|| ApiError::NotFound(APP_NOT_FOUND.to_owned()))?;
    tracing::info!(app = %id, "app deleted");
    Ok(deletion)
}

/// An operator's re-enabling of a disabled app (the API and the console).
pub(crate) async fn reenable_app(id: &str, state: &AppState) -> Result<AppId, ApiError> {
    let id = AppId::parse(id).ok_or_else(|| ApiError::NotFound(APP_NOT_FOUND.to_owned()))?;
    state
        .store
        .enable_app(&id)
        .await?
        .ok_or_else(|| ApiError::NotFound(APP_NOT_FOUND.to_owned()))?;
    tracing::info!(app = %id, "app re-enabled");
    state.engine.wake_delivery();
    Ok(id)
}
