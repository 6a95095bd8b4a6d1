//! `GET /admin/api/hooks` (admin token): the inbound push webhooks Herald
//! stored, newest first, with what each one did, so that an operator sees a
//! hook the git host delivered but Herald could not read (and why).

use actors::clock::rfc3339_ms;
use actors::inbound::Provider;
use actors::store::inbound::{HookFilter, HookSummary};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::reply::{Reply, Response};

use super::error::{ApiError, respond};
use super::filters::{admin_auth, query, with_state};
use super::models::{PageQuery, Pagination};
use super::paging;
use super::state::AppState;

pub fn routes(state: AppState) -> BoxedFilter<(Response,)> {
    warp::path!("admin" / "api" / "hooks")
        .and(warp::get())
        .and(admin_auth(state.clone()))
        .and(query::<HookQuery>())
        .and(with_state(state))
        .then(list_hooks)
        .map(respond)
        .boxed()
}

/// Paging and filters; an unknown provider or result is a 400.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct HookQuery {
    /// 1-based page number (default 1).
    pub page: Option<u64>,
    /// Items per page, 1 to 100 (default 20).
    pub limit: Option<u64>,
    /// Only this host's hooks: `github`, `gitlab`, `gitea` or `bitbucket`.
    pub provider: Option<String>,
    /// Only hooks with this result: `received`, `triggered`, `ignored` or
    /// `invalid`.
    pub result: Option<String>,
}

impl HookQuery {
    fn filter(&self) -> Result<HookFilter, ApiError> {
        let provider = match self.provider.as_deref() {
            None => None,
            Some(raw) => Some(Provider::parse(raw).ok_or_else(|| {
                ApiError::BadRequest(
                    "provider must be github, gitlab, gitea or bitbucket".to_owned(),
                )
            })?),
        };
        let status = match self.result.as_deref() {
            None => None,
            Some(raw) => Some(entity::HookStatus::parse(raw).ok_or_else(|| {
                ApiError::BadRequest(
                    "result must be received, triggered, ignored or invalid".to_owned(),
                )
            })?),
        };
        Ok(HookFilter { provider, status })
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct HookListResponse {
    pub data: HookPage,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct HookPage {
    pub data: Vec<HookView>,
    pub pagination: Pagination,
}

/// One stored hook.
#[derive(Debug, Serialize, ToSchema)]
pub struct HookView {
    #[schema(example = "hook_01jd0000000000000000000000")]
    pub hook_id: String,
    /// `github`, `gitlab`, `gitea` or `bitbucket`.
    pub provider: String,
    /// The host's delivery id (`sha256:` and a hash of the body when it sent none).
    pub delivery_id: String,
    /// The event header, e.g. `push`, `System Hook`, `repo:push`.
    pub event_type: String,
    pub received_at: String,
    pub processed_at: Option<String>,
    /// `received` (not processed yet), `triggered` (a scan), `ignored`
    /// (nothing to do) or `invalid` (the payload could not be read).
    pub result: String,
    /// What was done, or why nothing: for an invalid hook, what is wrong
    /// with its payload.
    pub reason: Option<String>,
}

impl From<&HookSummary> for HookView {
    fn from(hook: &HookSummary) -> Self {
        Self {
            hook_id: hook.id.clone(),
            provider: hook.provider.to_string(),
            delivery_id: hook.delivery_id.clone(),
            event_type: hook.event_type.clone(),
            received_at: rfc3339_ms(hook.received_at),
            processed_at: hook.processed_at.map(rfc3339_ms),
            result: hook.status.to_string(),
            reason: hook.result.clone(),
        }
    }
}

/// Inbound push webhooks stored in the last 7 days, newest first, a page at
/// a time.
#[utoipa::path(get, path = "/admin/api/hooks", tag = "operations",
    params(HookQuery),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "A page of stored hooks", body = HookListResponse),
        (status = 400, description = "Malformed query string, or an unknown provider or result", body = super::error::ErrorBody),
        (status = 401, description = "Missing or wrong admin token", body = super::error::ErrorBody),
        (status = 422, description = "Bad paging", body = super::error::ErrorBody),
        (status = 429, description = "Rate limited", body = super::error::ErrorBody),
        (status = 500, description = "Internal error (the cause is logged)", body = super::error::ErrorBody)))]
pub(crate) async fn list_hooks(query: HookQuery, state: AppState) -> Result<Response, ApiError> {
    let (page, limit) = paging::numbered(&PageQuery {
        page: query.page,
        limit: query.limit,
    })?;
    let filter = query.filter()?;
    let (hooks, total) = state.store.list_hooks(&filter, page, limit).await?;
    let body = HookListResponse {
        data: HookPage {
            data: hooks.iter().map(HookView::from).collect(),
            pagination: Pagination::numbered(page, limit, total),
        },
    };
    Ok(warp::reply::json(&body).into_response())
}
