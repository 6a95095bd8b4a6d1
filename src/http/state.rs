//! What every handler can reach ([`AppState`]): the store, the engine, the
//! settings and the shared limits, built once at start-up and cloned into
//! each route.

use std::sync::Arc;
use std::time::Instant;

use actors::store::Store;
use actors::supervisor::EngineHandle;
use secrecy::SecretString;

use super::budget::{BodyBudget, BodyLimit};
use super::ratelimit::RateLimits;
use super::stream::hub::StreamHub;
use crate::config::Settings;
use crate::domain::UrlPolicy;

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
    pub streams: Arc<StreamHub>,
}

impl AppState {
    /// The size and time limits of an API request body.
    pub(crate) fn body_limit(&self) -> BodyLimit {
        BodyLimit {
            bytes: self.settings.server.max_body_bytes,
            timeout: self.settings.server.body_read_timeout,
            budget: self.body_budget,
        }
    }

    /// The size and time limits of an inbound hook's body.
    pub(crate) fn hook_body_limit(&self) -> BodyLimit {
        BodyLimit {
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
