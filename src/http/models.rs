//! Wire types of the HTTP API: what requests carry and responses return.
//! Field names and nesting follow Docora where Docora has the route.

use actors::clock::rfc3339_ms;
use actors::store::apps::DeliveryWindow;
use actors::store::globs::Globs;
use actors::store::subscriptions::SubscriptionView;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

#[derive(Debug, Serialize, ToSchema)]
pub struct HealthBody {
    #[schema(example = "ok")]
    pub status: &'static str,
    /// Server time, RFC 3339.
    pub timestamp: String,
    /// Seconds since the process started.
    pub uptime: f64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ReadyBody {
    /// `ready` or `not_ready`.
    pub status: &'static str,
    pub database: bool,
    pub actors: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct VersionBody {
    #[schema(example = "herald")]
    pub name: &'static str,
    #[schema(example = "0.1.0")]
    pub version: &'static str,
}

/// A field that, once in the body, is passed on as it is, `null` included:
/// `null` is then refused by the field's own validation rather than read as
/// absent.
fn present<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<serde_json::Value>, D::Error> {
    serde_json::Value::deserialize(deserializer).map(Some)
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct OnboardRequest {
    /// 3 to 100 characters.
    pub app_name: String,
    /// Where webhooks go: `{base_url}/create`, `/update`, `/delete`, `/sync_failed`.
    pub base_url: String,
    pub email: String,
    pub website: Option<String>,
    /// At most 500 characters.
    pub description: Option<String>,
    /// The HMAC signing key, 16 to 500 characters; generated when absent.
    pub client_auth_key: Option<String>,
    /// Up to this many webhooks of one subscription in flight at once, 1 to
    /// 64 (default 1). 1 delivers each subscription strictly in order;
    /// above 1 the order is kept per file path.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = u8, minimum = 1, maximum = 64)]
    pub window: Option<serde_json::Value>,
    /// `push` (the default): Herald sends webhooks to `base_url`. `pull`:
    /// no webhook is sent; the app consumes its events from `GET
    /// /api/stream` or `GET /api/changes`. `nats`, `amqp`, `redis`: each
    /// event is published to the broker `destination` names.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = String, pattern = "^(push|pull|nats|amqp|redis)$")]
    pub delivery: Option<serde_json::Value>,
    /// A broker app's destination: `{"url", "subject"}` (nats),
    /// `{"url", "exchange", "routing_key"}` (amqp) or `{"url", "stream"}`
    /// (redis); templates take `{app}`, `{repository}` and `{event}`. The
    /// URL's scheme is `nats://`, `amqp://` or `redis://`, or for TLS
    /// `tls://`, `amqps://` or `rediss://` (the certificate checked as a
    /// webhook endpoint's). The URL (with the broker's credentials) is
    /// stored encrypted and never shown with them.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Object)]
    pub destination: Option<serde_json::Value>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OnboardResponse {
    pub data: OnboardedApp,
}

/// Secrets in this body are shown once and never again.
#[derive(Debug, Serialize, ToSchema)]
pub struct OnboardedApp {
    pub app_id: String,
    /// The app's API token (`Authorization: Bearer …`).
    pub token: String,
    /// Signs the `X-Docora-Signature` header.
    pub client_auth_key: String,
    /// Standard Webhooks secret: `whsec_` + base64(client_auth_key).
    pub webhook_secret: String,
    pub created_at: String,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// 1-based page number (default 1).
    pub page: Option<u64>,
    /// Items per page, 1 to 100 (default 20).
    pub limit: Option<u64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Pagination {
    pub page: u64,
    pub limit: u64,
    pub total: u64,
    pub total_pages: u64,
}

impl Pagination {
    /// Page `page` of `limit` items, out of `total`.
    pub fn numbered(page: u64, limit: u64, total: u64) -> Self {
        Self {
            page,
            limit,
            total,
            total_pages: total.div_ceil(limit),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AppListResponse {
    pub data: AppPage,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AppPage {
    pub data: Vec<AppSummaryBody>,
    pub pagination: Pagination,
}

/// What every view of an app shows.
#[derive(Debug, Serialize, ToSchema)]
pub struct AppProfile {
    pub app_id: String,
    pub app_name: String,
    pub base_url: String,
    pub email: String,
    pub website: Option<String>,
    pub description: Option<String>,
    /// `active`, or `disabled` after failing for `delivery.disable_after`.
    pub status: String,
    /// Up to this many webhooks of one subscription in flight at once.
    #[schema(minimum = 1, maximum = 64)]
    pub window: usize,
    /// `push` (webhooks), `pull` (`GET /api/stream`, `GET /api/changes`),
    /// or a broker: `nats`, `amqp`, `redis`.
    #[schema(pattern = "^(push|pull|nats|amqp|redis)$")]
    pub delivery: String,
    pub created_at: String,
}

impl From<&entity::app::Model> for AppProfile {
    fn from(app: &entity::app::Model) -> Self {
        Self {
            app_id: app.id.clone(),
            app_name: app.name.clone(),
            base_url: app.base_url.clone(),
            email: app.email.clone(),
            website: app.website.clone(),
            description: app.description.clone(),
            status: app.status.to_string(),
            window: DeliveryWindow::of_app(app).get(),
            delivery: app.delivery_mode.to_string(),
            created_at: rfc3339_ms(app.created_at),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AppSummaryBody {
    #[serde(flatten)]
    pub profile: AppProfile,
    pub repository_count: u64,
    pub failed_notification_count: u64,
}

impl From<&actors::store::apps::AppSummary> for AppSummaryBody {
    fn from(summary: &actors::store::apps::AppSummary) -> Self {
        Self {
            profile: AppProfile::from(&summary.app),
            repository_count: summary.repository_count,
            failed_notification_count: summary.failed_notification_count,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AppDetailResponse {
    pub data: AppDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AppDetail {
    #[serde(flatten)]
    pub app: AppSummaryBody,
    pub repositories: Vec<RepositoryView>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AppDeletedResponse {
    pub data: AppDeleted,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AppDeleted {
    pub deleted: bool,
    pub repositories_unlinked: u64,
    pub orphaned_repositories_cleaned: u64,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct RegisterRepository {
    /// The remote, any https git URL (Docora's name for the field).
    pub github_url: Option<String>,
    /// The same as `github_url`; give one of the two.
    pub url: Option<String>,
    /// A token for a private repository (any git host).
    pub github_token: Option<String>,
    /// Default: the remote's default branch.
    pub branch: Option<String>,
    /// Only paths matching one of these globs produce events.
    pub include: Option<Vec<String>>,
    /// Paths matching one of these globs produce no events.
    pub exclude: Option<Vec<String>>,
    /// Watch the repository with its submodules expanded: each
    /// submodule's files are sent under its path, like any other file
    /// (docs/webhooks.md, submodules). A repository watched this way is
    /// not the one watched plainly: it has an id of its own. Default false.
    pub expand_submodules: Option<bool>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RepositoryCreated {
    pub repository_id: String,
    pub github_url: String,
    pub owner: String,
    pub name: String,
    pub is_private: bool,
    pub created_at: String,
    pub branch: Option<String>,
    pub status: String,
    /// Submodules are expanded: their files come under their paths.
    pub expand_submodules: bool,
}

impl From<&SubscriptionView> for RepositoryCreated {
    fn from(view: &SubscriptionView) -> Self {
        Self {
            repository_id: view.repository.id.clone(),
            github_url: view.repository.url.clone(),
            owner: view.repository.owner.clone(),
            name: view.repository.name.clone(),
            is_private: view.is_private(),
            created_at: rfc3339_ms(view.subscription.created_at),
            branch: view.branch().map(str::to_owned),
            status: view.subscription.status.to_string(),
            expand_submodules: view.repository.expand_submodules,
        }
    }
}

/// The repository's git circuit breaker.
#[derive(Debug, Serialize, ToSchema)]
pub struct BreakerView {
    /// `closed`, `open` or `half_open`.
    pub status: String,
    pub consecutive_failures: i32,
    pub cooldown_until: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RepositoryView {
    pub repository_id: String,
    pub github_url: String,
    pub owner: String,
    pub name: String,
    pub branch: Option<String>,
    pub is_private: bool,
    /// Submodules are expanded: their files come under their paths.
    pub expand_submodules: bool,
    /// `pending_snapshot`, `syncing`, `synced` or `failed`.
    pub status: String,
    pub created_at: String,
    pub last_synced_commit: Option<String>,
    pub last_error: Option<String>,
    pub retry_count: i32,
    pub include: Vec<String>,
    pub exclude: Vec<String>,
    pub circuit_breaker: BreakerView,
    pub pending_events: u64,
    pub failed_events: u64,
}

impl From<&SubscriptionView> for RepositoryView {
    fn from(view: &SubscriptionView) -> Self {
        let breaker = view.breaker.as_ref().map_or(
            BreakerView {
                status: "closed".to_owned(),
                consecutive_failures: 0,
                cooldown_until: None,
            },
            |b| BreakerView {
                status: b.state.to_string(),
                consecutive_failures: b.consecutive_failures,
                cooldown_until: b.cooldown_until.map(rfc3339_ms),
            },
        );
        // A row whose globs cannot be read shows as the failed subscription
        // it is (its next scan records it so), never as one without filters.
        let (globs, status, last_error) = match view.globs() {
            Ok(globs) => (
                globs,
                view.subscription.status.to_string(),
                view.subscription.last_error.clone(),
            ),
            Err(corrupt) => (
                Globs::default(),
                entity::SubscriptionStatus::Failed.to_string(),
                Some(corrupt.to_string()),
            ),
        };
        Self {
            repository_id: view.repository.id.clone(),
            github_url: view.repository.url.clone(),
            owner: view.repository.owner.clone(),
            name: view.repository.name.clone(),
            branch: view.branch().map(str::to_owned),
            is_private: view.is_private(),
            expand_submodules: view.repository.expand_submodules,
            status,
            created_at: rfc3339_ms(view.subscription.created_at),
            last_synced_commit: view.subscription.last_synced_commit.clone(),
            last_error,
            retry_count: view.subscription.retry_count,
            include: globs.include,
            exclude: globs.exclude,
            circuit_breaker: breaker,
            pending_events: view.pending_events,
            failed_events: view.failed_events,
        }
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CursorQuery {
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// Items per page, 1 to 200 (default 50).
    pub limit: Option<u64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RepositoryList {
    pub data: Vec<RepositoryView>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct UpdateToken {
    pub github_token: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MessageBody {
    #[schema(example = "Token updated successfully")]
    pub message: &'static str,
}

/// The calling app as it sees itself (`GET /api/app`).
#[derive(Debug, Serialize, ToSchema)]
pub struct AppView {
    #[serde(flatten)]
    pub profile: AppProfile,
    /// Whether a `synced` notification follows the last event of a snapshot.
    pub notify_synced: bool,
    /// Whether a `submodule` event tells of each submodule whose commit moved.
    pub notify_submodules: bool,
    /// Whether files stored in Git LFS come with their real content (`true`,
    /// the default) or as the pointer files git holds.
    pub resolve_lfs: bool,
    /// The retry backoff in force: the app's own, else the server default.
    pub backoff: BackoffView,
    /// While set (and in the future), the previous signing key still signs
    /// alongside the current one.
    pub previous_key_expires_at: Option<String>,
    /// A broker app's destination, its URL without credentials.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub destination: Option<serde_json::Value>,
    pub updated_at: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct BackoffView {
    /// `fixed`, `linear`, `exponential`, `exp_full_jitter` or `exp_equal_jitter`.
    pub policy: String,
    /// First delay, e.g. `"1s"`.
    pub base: String,
    /// Longest delay, e.g. `"1h"`.
    pub max: String,
}

/// `PATCH /api/app`: the fields to change; absent fields stay as they are.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateApp {
    /// Where webhooks go (https, public address).
    pub base_url: Option<String>,
    /// Opt in to (or out of) the `synced` notification.
    pub notify_synced: Option<bool>,
    /// Opt in to (or out of) `submodule` events.
    pub notify_submodules: Option<bool>,
    /// Deliver files stored in Git LFS with their real content (`true`, the
    /// default) or as the pointer files git holds (`false`). Applies to
    /// events written after the change.
    pub resolve_lfs: Option<bool>,
    /// The app's own retry backoff (all three fields).
    pub backoff: Option<BackoffView>,
    /// Up to this many webhooks of one subscription in flight at once, 1 to
    /// 64. 1 delivers each subscription strictly in order; above 1 the
    /// order is kept per file path.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = u8, minimum = 1, maximum = 64)]
    pub window: Option<serde_json::Value>,
    /// `push` (the default): Herald sends webhooks to `base_url`. `pull`:
    /// no webhook is sent; the app consumes its events from `GET
    /// /api/stream` or `GET /api/changes`. `nats`, `amqp`, `redis`: each
    /// event is published to the broker `destination` names.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = String, pattern = "^(push|pull|nats|amqp|redis)$")]
    pub delivery: Option<serde_json::Value>,
    /// A broker app's destination: `{"url", "subject"}` (nats),
    /// `{"url", "exchange", "routing_key"}` (amqp) or `{"url", "stream"}`
    /// (redis); templates take `{app}`, `{repository}` and `{event}`. The
    /// URL's scheme is `nats://`, `amqp://` or `redis://`, or for TLS
    /// `tls://`, `amqps://` or `rediss://` (the certificate checked as a
    /// webhook endpoint's). The URL (with the broker's credentials) is
    /// stored encrypted and never shown with them.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Object)]
    pub destination: Option<serde_json::Value>,
}

/// `POST /api/app/rotate-key`: the new key, shown once.
#[derive(Debug, Serialize, ToSchema)]
pub struct RotatedKeyBody {
    pub client_auth_key: String,
    /// `whsec_` + base64 of the new key, for Standard Webhooks libraries.
    pub webhook_secret: String,
    /// Until then the previous key signs too (a second `webhook-signature`).
    pub previous_key_expires_at: String,
}

/// `POST /api/repositories/{id}/replay`: the changes between two commits of
/// the watched repository, sent again as new events.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplayRequest {
    /// The old side: a commit SHA, 40 hex digits (or at least 4, resolved
    /// in Herald's copy of the repository).
    #[schema(example = "0b1f5c3d2e4a6b8c9d0e1f2a3b4c5d6e7f8a9b0c")]
    pub from: String,
    /// The new side, the same way.
    #[schema(example = "9f8e7d6c5b4a39281706f5e4d3c2b1a098765432")]
    pub to: String,
}

/// A replay and its progress.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReplayView {
    #[schema(example = "rpl_01jd3x4y5z6a7b8c9d0e1f2g3h")]
    pub id: String,
    pub repository_id: String,
    /// Full SHAs.
    pub from: String,
    pub to: String,
    /// `delivering`, `delivered` (every event delivered or skipped), or
    /// `failed` (one of its events is dead: retry or skip it).
    #[schema(example = "delivering")]
    pub status: &'static str,
    /// Events the replay wrote.
    pub events_total: i64,
    /// Those no longer waiting (delivered or skipped), pruned or not.
    pub events_delivered: i64,
    /// Those dead among the rest.
    pub events_failed: u64,
    /// RFC 3339.
    pub created_at: String,
}

impl From<&actors::store::replays::ReplayProgress> for ReplayView {
    fn from(progress: &actors::store::replays::ReplayProgress) -> Self {
        let replay = &progress.replay;
        Self {
            id: replay.id.clone(),
            repository_id: replay.repository_id.clone(),
            from: replay.from_commit.clone(),
            to: replay.to_commit.clone(),
            status: progress.status().as_str(),
            events_total: replay.events_total,
            events_delivered: progress.delivered(),
            events_failed: progress.dead,
            created_at: rfc3339_ms(replay.created_at),
        }
    }
}
