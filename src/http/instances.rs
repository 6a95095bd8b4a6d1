//! `GET /admin/api/instances` (admin token): the Herald instances sharing
//! this database, from the heartbeat row each writes every
//! `cluster.heartbeat_interval`, and whether each is alive (seen within
//! `cluster.lease_ttl`, the time after which its work passes to another).

use actors::clock::{now_ms, rfc3339_ms};
use serde::Serialize;
use utoipa::ToSchema;
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::reply::{Reply, Response};

use super::error::{ApiError, respond};
use super::filters::{admin_auth, with_state};
use super::state::AppState;

pub fn routes(state: AppState) -> BoxedFilter<(Response,)> {
    warp::path!("admin" / "api" / "instances")
        .and(warp::get())
        .and(admin_auth(state.clone()))
        .and(with_state(state))
        .then(list_instances)
        .map(respond)
        .boxed()
}

#[derive(Debug, Serialize, ToSchema)]
pub struct InstanceListResponse {
    pub data: InstanceList,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct InstanceList {
    /// Every instance seen in the last day, by id.
    pub instances: Vec<InstanceView>,
    /// How many of them are alive.
    pub alive: u64,
    /// `cluster.lease_ttl`: an instance not seen for this long is not alive.
    pub lease_ttl_seconds: u64,
}

/// One instance, as its last heartbeat described it.
#[derive(Debug, Serialize, ToSchema)]
pub struct InstanceView {
    /// The id kept in the instance's data_dir (`instance.id`); metrics carry
    /// it as the `instance_id` label.
    #[schema(example = "herald-0123456789abcdef")]
    pub instance_id: String,
    /// The Herald version it runs.
    pub version: String,
    pub host: String,
    /// When its current run started.
    pub started_at: String,
    pub last_seen_at: String,
    /// Seen within `cluster.lease_ttl`.
    pub alive: bool,
    /// The instance that answered this request.
    pub current: bool,
}

/// The instances sharing this database, alive or seen in the last day.
#[utoipa::path(get, path = "/admin/api/instances", tag = "operations",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The instances", body = InstanceListResponse),
        (status = 401, description = "Missing or wrong admin token", body = super::error::ErrorBody),
        (status = 429, description = "Rate limited", body = super::error::ErrorBody),
        (status = 500, description = "Internal error (the cause is logged)", body = super::error::ErrorBody)))]
pub(crate) async fn list_instances(state: AppState) -> Result<Response, ApiError> {
    let lease_ttl = state.settings.cluster.lease_ttl();
    let lease_ms = i64::try_from(lease_ttl.as_millis()).unwrap_or(i64::MAX);
    let seen_since = now_ms().saturating_sub(lease_ms);
    let instances: Vec<InstanceView> = state
        .store
        .instances()
        .await?
        .into_iter()
        .map(|row| InstanceView {
            alive: row.last_seen_at >= seen_since,
            current: row.id == *state.instance_id,
            instance_id: row.id,
            version: row.version,
            host: row.host,
            started_at: rfc3339_ms(row.started_at),
            last_seen_at: rfc3339_ms(row.last_seen_at),
        })
        .collect();
    let body = InstanceListResponse {
        data: InstanceList {
            alive: instances.iter().filter(|i| i.alive).count() as u64,
            instances,
            lease_ttl_seconds: lease_ttl.as_secs(),
        },
    };
    Ok(warp::reply::json(&body).into_response())
}
