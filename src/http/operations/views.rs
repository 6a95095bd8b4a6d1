//! The operators' API's wire types: what `/admin/api/overview`, `/queue`,
//! `/failed-notifications`, the retries, the bulk operations, the resyncs
//! and the breaker resets answer (each wrapped in `{"data": …}`).

use actors::clock::rfc3339_ms;
use actors::store::operations::{DeadEvent, QueueEntry};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::http::models::{BreakerView, Pagination};

#[derive(Debug, Serialize, ToSchema)]
pub struct OverviewResponse {
    pub data: OverviewBody,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OverviewBody {
    pub apps: AppCounts,
    pub repositories: u64,
    pub subscriptions: SubscriptionCounts,
    pub events: EventCounts,
    /// Subscriptions a delivery lane holds right now.
    pub in_flight: u64,
    /// Breakers not closed (open, or waiting for their probe).
    pub breakers_open: BreakerCounts,
    /// Docora's overview fields: apps.
    pub total_apps: u64,
    /// Docora: repositories.
    pub total_repositories: u64,
    /// Docora: dead events.
    pub failed_notifications: u64,
    /// Docora: pending events.
    pub queue_waiting: u64,
    /// Docora: subscriptions being delivered.
    pub queue_active: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AppCounts {
    pub total: u64,
    pub active: u64,
    pub disabled: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SubscriptionCounts {
    pub total: u64,
    pub pending_snapshot: u64,
    pub syncing: u64,
    pub synced: u64,
    pub failed: u64,
    /// The endpoint answered 410 Gone.
    pub paused: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EventCounts {
    pub total: u64,
    pub pending: u64,
    pub delivered: u64,
    /// Failed `delivery.max_attempts` times.
    pub dead: u64,
    pub skipped: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BreakerCounts {
    /// Repositories whose git remote is failing.
    pub git: u64,
    /// Apps whose endpoint is failing.
    pub delivery: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct QueueResponse {
    pub data: QueueBody,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct QueueBody {
    pub totals: QueueCounts,
    /// Apps with something queued, in flight or dead, or whose endpoint
    /// breaker is not closed, by app id.
    pub apps: Vec<AppQueue>,
}

#[derive(Debug, Default, Serialize, ToSchema)]
pub struct QueueCounts {
    pub pending: u64,
    pub in_flight: u64,
    pub dead: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AppQueue {
    pub app_id: String,
    pub app_name: String,
    /// `active` or `disabled` (a disabled app's events wait).
    pub status: String,
    /// Events waiting for delivery or for a retry.
    pub pending: u64,
    /// Subscriptions with a live delivery lease.
    pub in_flight: u64,
    /// Dead events (each holds its subscription).
    pub dead: u64,
    /// The app endpoint's breaker.
    pub circuit_breaker: BreakerView,
}

impl From<&QueueEntry> for AppQueue {
    fn from(entry: &QueueEntry) -> Self {
        Self {
            app_id: entry.app.id.clone(),
            app_name: entry.app.name.clone(),
            status: entry.app.status.to_string(),
            pending: entry.pending,
            in_flight: entry.in_flight,
            dead: entry.dead,
            circuit_breaker: breaker_view(entry.breaker.as_ref()),
        }
    }
}

fn breaker_view(row: Option<&entity::breaker::Model>) -> BreakerView {
    row.map_or(
        BreakerView {
            status: entity::BreakerStatus::Closed.to_string(),
            consecutive_failures: 0,
            cooldown_until: None,
        },
        |b| BreakerView {
            status: b.state.to_string(),
            consecutive_failures: b.consecutive_failures,
            cooldown_until: b.cooldown_until.map(rfc3339_ms),
        },
    )
}

#[derive(Debug, Serialize, ToSchema)]
pub struct FailedListResponse {
    pub data: FailedPage,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct FailedPage {
    pub data: Vec<FailedNotification>,
    pub pagination: Pagination,
}

/// A dead event: its subscription waits behind it until it is retried,
/// skipped or the subscription resynced.
#[derive(Debug, Serialize, ToSchema)]
pub struct FailedNotification {
    pub app_id: String,
    pub app_name: Option<String>,
    pub repository_id: String,
    pub repository_name: Option<String>,
    pub github_url: Option<String>,
    pub event_id: String,
    /// Position in the subscription's stream.
    pub seq: i64,
    /// `created`, `updated`, `deleted` (or a notification kind).
    pub kind: String,
    pub path: Option<String>,
    pub attempt_count: i32,
    pub last_error: Option<String>,
    pub created_at: String,
}

impl From<&DeadEvent> for FailedNotification {
    fn from(dead: &DeadEvent) -> Self {
        let event = &dead.event;
        Self {
            app_id: event.app_id.clone(),
            app_name: dead.app_name.clone(),
            repository_id: event.repository_id.clone(),
            repository_name: dead
                .repository
                .as_ref()
                .map(|r| format!("{}/{}", r.owner, r.name)),
            github_url: dead.repository.as_ref().map(|r| r.url.clone()),
            event_id: event.id.clone(),
            seq: event.seq,
            kind: event.kind.to_string(),
            path: event.path.clone(),
            attempt_count: event.attempts,
            last_error: event.last_error.clone(),
            created_at: rfc3339_ms(event.created_at),
        }
    }
}

/// One event, or (Docora's form) every dead event of one subscription.
#[derive(Debug, Deserialize, ToSchema)]
pub struct RetryRequest {
    /// The event to retry; when given, the other fields are ignored.
    pub event_id: Option<String>,
    /// With `repository_id`: the subscription whose dead events are retried.
    pub app_id: Option<String>,
    pub repository_id: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RetryResponse {
    pub data: RetryQueued,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RetryQueued {
    #[schema(example = "Retry queued")]
    pub message: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repository_id: Option<String>,
    /// Events queued again (0 when a failed scan is retried instead).
    pub retried: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BulkStartedResponse {
    pub data: BulkStarted,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BulkStarted {
    /// Poll `GET /admin/api/retry/progress/{operation_id}`.
    pub operation_id: String,
    /// Dead events the operation retries.
    pub total: u64,
    #[schema(example = "Bulk retry started")]
    pub message: &'static str,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ProgressResponse {
    pub data: ProgressBody,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ProgressBody {
    pub operation_id: String,
    /// `running`, `done`, `cancelled` or `failed` (see `error`).
    pub status: &'static str,
    pub total: u64,
    /// Events handled so far, retried or not.
    pub done: u64,
    /// Events among `done` that could not be queued again.
    pub failed: u64,
    pub started_at: String,
    pub finished_at: Option<String>,
    /// Docora's name for `done`.
    pub completed: u64,
    /// Docora: `done - failed`.
    pub succeeded: u64,
    /// Docora: whether the operation was cancelled.
    pub cancelled: bool,
    /// An operator asked it to stop; it stops before its next event.
    pub cancel_requested: bool,
    /// The instance working on it (`GET /admin/api/instances`); `null` while
    /// none does. A runner that dies is replaced within `cluster.lease_ttl`.
    pub instance_id: Option<String>,
    /// The runner's last heartbeat or progress.
    pub updated_at: String,
    /// Why it failed.
    pub error: Option<String>,
}

impl From<&entity::bulk_operation::Model> for ProgressBody {
    fn from(op: &entity::bulk_operation::Model) -> Self {
        let count = |n: i64| u64::try_from(n).unwrap_or(0);
        let (done, failed) = (count(op.done), count(op.failed));
        Self {
            operation_id: op.id.clone(),
            status: op.status.as_str(),
            total: count(op.total),
            done,
            failed,
            started_at: rfc3339_ms(op.started_at),
            finished_at: op.finished_at.map(rfc3339_ms),
            completed: done,
            succeeded: done.saturating_sub(failed),
            cancelled: op.status == entity::BulkStatus::Cancelled,
            cancel_requested: op.cancel_requested,
            // A claim is `{instance}/{ulid}`.
            instance_id: op
                .runner
                .as_deref()
                .and_then(|runner| runner.rsplit_once('/'))
                .map(|(instance, _)| instance.to_owned()),
            updated_at: rfc3339_ms(op.updated_at),
            error: op.error.clone(),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MessageResponse {
    pub data: MessageData,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MessageData {
    pub message: &'static str,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ResyncResponse {
    pub data: ResyncQueued,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ResyncQueued {
    #[schema(example = "Re-sync queued")]
    pub message: &'static str,
    pub app_id: String,
    pub repository_id: String,
}
