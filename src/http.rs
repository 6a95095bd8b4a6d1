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
//! - [`state`]: [`AppState`], what every handler can reach.
//! - [`filters`], [`budget`], [`ratelimit`], [`error`], [`models`],
//!   [`openapi`], [`paging`]: shared parts.
//! - [`metrics`]: request metrics by route template, scrape-time gauges.
//! - [`server`]: accepting connections, hyper's HTTP/1 with a header read
//!   deadline, graceful shutdown.

mod account;
mod admin;
pub mod asyncapi;
mod budget;
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
mod state;
mod stream;

use std::sync::Arc;
use std::time::Instant;

use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::Method;
use warp::path::FullPath;
use warp::reply::Response;

pub use budget::BodyBudget;
pub use ratelimit::RateLimits;
pub use server::{ConnectionLimits, serve};
pub use state::AppState;
pub use stream::{StreamHub, StreamLimits};

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
