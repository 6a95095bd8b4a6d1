//! The HTTP front door (warp): routing, authentication, bounded bodies, rate
//! limits and the one JSON error shape. It holds a [`Store`] and an
//! [`EngineHandle`]; it never runs git or sends webhooks itself.
//!
//! - [`public`]: `/health`, `/ready`, `/version`, `/metrics`, `/openapi.json`,
//!   `/docs`.
//! - [`asyncapi`]: `/asyncapi.json`, the AsyncAPI document of every channel
//!   Herald publishes on (webhooks, the pull stream, broker destinations).
//! - [`admin`]: `/admin/api/…` (admin token).
//! - [`console`]: `/admin…`, the HTML admin console (a session from the admin
//!   token, CSRF tokens, its own assets).
//! - [`client`]: `/api/…` (app token), Docora-compatible.
//! - [`account`]: `/api/app…`, the calling app's own settings and key rotation.
//! - [`events`]: `/api/events…`, an app's events, their attempts, retry and
//!   skip, and resync.
//! - [`replay`]: `/api/repositories/{id}/replay…`, replays and their progress.
//! - [`operations`]: the operators' API across apps (overview, queue, dead
//!   events, retries, bulk operations, resync, breaker reset).
//! - [`stream`]: `/api/stream`, `/api/changes`, `/api/stream/ack`: pull
//!   delivery, for apps that consume their events instead of taking webhooks.
//! - [`hooks`]: `/hooks/{github,gitlab,gitea,bitbucket}`, inbound push
//!   webhooks (verified by signature; a rate budget of their own).
//! - [`hook_list`]: `/admin/api/hooks`, the stored hooks and what each did.
//! - [`instances`]: `/admin/api/instances`, the instances sharing the
//!   database and whether each is alive.
//! - [`filters`], [`ratelimit`], [`error`], [`models`], [`openapi`], [`paging`]:
//!   shared parts.
//! - [`metrics`]: request metrics by route template, scrape-time gauges.
//! - [`server`]: accepting connections, hyper's HTTP/1 with a header read
//!   deadline, graceful shutdown.

mod account;
mod admin;
pub mod asyncapi;
mod client;
mod console;
pub mod error;
mod events;
mod filters;
mod hook_list;
mod hooks;
mod instances;
pub mod metrics;
pub mod models;
pub mod openapi;
mod operations;
mod paging;
mod public;
mod ratelimit;
mod replay;
mod server;
mod stream;

use std::sync::Arc;
use std::time::Instant;

use actors::store::Store;
use actors::supervisor::EngineHandle;
use secrecy::SecretString;
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::Method;
use warp::path::FullPath;
use warp::reply::Response;

use crate::config::Settings;
use crate::domain::UrlPolicy;
pub use filters::BodyBudget;
pub use ratelimit::RateLimits;
pub use server::{ConnectionLimits, serve};
pub use stream::{StreamHub, StreamLimits};

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub engine: EngineHandle,
    pub settings: Arc<Settings>,
    /// Compared in constant time with the bearer token of admin requests.
    pub admin_token: Arc<SecretString>,
    pub limits: Arc<RateLimits>,
    /// For `/health`'s uptime.
    pub started_at: Instant,
    /// This instance's id (`data_dir/instance.id`), to mark it in
    /// `/admin/api/instances`.
    pub instance_id: Arc<str>,
    /// The bytes of request bodies held at once, every route's together.
    pub body_budget: &'static BodyBudget,
    /// Cancelled when Herald stops serving: endless answers (pull streams,
    /// long polls) end then instead of holding up the shutdown.
    pub closing: tokio_util::sync::CancellationToken,
    /// Wakes the pull streams of apps with news.
    pub streams: Arc<stream::StreamHub>,
}

impl AppState {
    /// The size and time limits of an API request body.
    pub(crate) fn body_limit(&self) -> filters::BodyLimit {
        filters::BodyLimit {
            bytes: self.settings.server.max_body_bytes,
            timeout: self.settings.server.body_read_timeout,
            budget: self.body_budget,
        }
    }

    /// The size and time limits of an inbound hook's body.
    pub(crate) fn hook_body_limit(&self) -> filters::BodyLimit {
        filters::BodyLimit {
            bytes: self.settings.inbound.max_body_bytes,
            ..self.body_limit()
        }
    }

    pub fn url_policy(&self) -> UrlPolicy {
        UrlPolicy {
            allow_private_targets: self.settings.security.allow_private_targets,
            allow_http_targets: self.settings.security.allow_http_targets,
            allow_local_repos: self.settings.git.allow_local_repos,
        }
    }
}

/// Every route, behind the per-address rate limit (inbound hooks behind their
/// own), with errors recovered into the JSON error shape, a span per request
/// and request metrics.
pub fn routes(state: AppState) -> BoxedFilter<(Response,)> {
    let api = public::routes(state.clone())
        .or(openapi::routes())
        .unify()
        .or(asyncapi::routes())
        .unify()
        .or(admin::routes(state.clone()))
        .unify()
        .or(client::routes(state.clone()))
        .unify()
        .or(replay::routes(state.clone()))
        .unify()
        .or(operations::routes(state.clone()))
        .unify()
        .or(events::routes(state.clone()))
        .unify()
        .or(account::routes(state.clone()))
        .unify()
        .or(stream::routes(state.clone()))
        .unify()
        .or(hook_list::routes(state.clone()))
        .unify()
        .or(instances::routes(state.clone()))
        .unify()
        .or(console::routes(state.clone()))
        .unify();
    let answered = hooks::routes(state.clone())
        .or(filters::per_ip_limit(state).and(api))
        .unify()
        .recover(error::recover)
        .unify();
    warp::any()
        .map(Instant::now)
        .and(warp::method())
        .and(warp::path::full())
        .and(answered)
        .map(
            |started: Instant, method: Method, path: FullPath, response: Response| {
                metrics::observe_request(
                    &method,
                    path.as_str(),
                    response.status(),
                    started.elapsed(),
                );
                response
            },
        )
        .with(warp::trace::request())
        .map(warp::Reply::into_response)
        .boxed()
}

/// Drains the metrics recorder's histogram buffers now and then, so they do
/// not grow between scrapes.
pub fn spawn_metrics_upkeep() -> tokio::task::JoinHandle<()> {
    tokio::spawn(async {
        let mut every = tokio::time::interval(std::time::Duration::from_secs(5));
        loop {
            every.tick().await;
            if let Some(handle) = crate::telemetry::metrics_handle() {
                handle.run_upkeep();
            }
        }
    })
}

pub fn spawn_rate_limit_pruner(limits: Arc<RateLimits>) -> tokio::task::JoinHandle<()> {
    ratelimit::spawn_pruner(limits)
}
