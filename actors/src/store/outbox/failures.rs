//! A failed scan recorded: the repository's error and next attempt, and,
//! when the failure opened the git breaker, one `sync_failed` event per
//! subscription ([`insert_sync_failed`], which losing access shares).

use entity::{EventKind, event, repository, subscription};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, IntoActiveModel, QueryFilter, Set,
};

use super::pending_event;
use crate::clock::now_ms;
use crate::ids::RepoId;
use crate::payload::{BreakerState, SyncError, SyncFailure};
use crate::store::leases::{LeaseToken, hold_scan};
use crate::store::{Store, StoreError, lock_repositories};

/// A failed scan, as the watcher records it.
pub struct GitFailureRecord {
    pub repository: RepoId,
    /// Recorded only while the scan still holds its lease.
    pub lease: LeaseToken,
    pub error_type: &'static str,
    /// Safe to show to apps: no secret, no raw git output.
    pub message: String,
    /// The breaker after this failure, as its actor reported it.
    pub breaker: entity::breaker::Model,
    pub threshold: u32,
    /// Whether this failure opened the breaker: then every subscription gets
    /// one `sync_failed` event and turns `failed`.
    pub opened: bool,
    pub next_scan_at: i64,
}

impl Store {
    /// Records a failed scan in one transaction: the repository's error and
    /// next attempt, and on opening one `sync_failed` event per subscription.
    /// (The breaker's own state is its actor's to write.)
    pub async fn record_git_failure(&self, failure: GitFailureRecord) -> Result<u64, StoreError> {
        let now = now_ms();
        let trace_parent = crate::telemetry::current_traceparent();
        let txn = self.begin_write().await?;
        if lock_repositories(&txn, &[failure.repository.as_str().to_owned()])
            .await?
            .is_empty()
        {
            return Ok(0);
        }
        hold_scan(&txn, failure.repository.as_str(), &failure.lease).await?;
        repository::Entity::update_many()
            .col_expr(
                repository::Column::LastError,
                Expr::value(failure.message.clone()),
            )
            .col_expr(
                repository::Column::NextScanAt,
                Expr::value(failure.next_scan_at),
            )
            .col_expr(repository::Column::LastScannedAt, Expr::value(now))
            .col_expr(repository::Column::UpdatedAt, Expr::value(now))
            .filter(repository::Column::Id.eq(failure.repository.as_str()))
            .exec(&txn)
            .await?;
        // A subscriber that lost access was told so; the repository's
        // troubles are no longer its business.
        let subscriptions = subscription::Entity::find()
            .filter(subscription::Column::RepositoryId.eq(failure.repository.as_str()))
            .filter(subscription::Column::Access.eq(entity::AccessState::Granted))
            .all(&txn)
            .await?;
        let mut events = 0;
        for sub in subscriptions {
            let retry_count = sub.retry_count.saturating_add(1);
            let mut active = sub.clone().into_active_model();
            active.retry_count = Set(retry_count);
            active.last_error = Set(Some(failure.message.clone()));
            active.updated_at = Set(now);
            if failure.opened {
                let payload = SyncFailure {
                    error: SyncError {
                        kind: failure.error_type.to_owned(),
                        message: failure.message.clone(),
                    },
                    circuit_breaker: BreakerState {
                        status: "open".to_owned(),
                        consecutive_failures: failure.breaker.consecutive_failures,
                        threshold: failure.threshold,
                        cooldown_until: failure
                            .breaker
                            .cooldown_until
                            .map(crate::clock::rfc3339_ms),
                    },
                    retry_count,
                };
                insert_sync_failed(&txn, &sub, &payload, trace_parent.clone(), now).await?;
                events += 1;
                active.next_seq = Set(sub.next_seq + 1);
                active.status = Set(entity::SubscriptionStatus::Failed);
            }
            active.update(&txn).await?;
        }
        txn.commit().await?;
        crate::telemetry::events_created(EventKind::SyncFailed, events);
        Ok(events)
    }
}

/// Queues a `sync_failed` notice as the subscription's next event (the
/// caller moves `next_seq` on).
pub(crate) async fn insert_sync_failed<C: ConnectionTrait>(
    conn: &C,
    sub: &subscription::Model,
    payload: &SyncFailure,
    trace_parent: Option<String>,
    now: i64,
) -> Result<(), StoreError> {
    event::ActiveModel {
        seq: Set(sub.next_seq),
        kind: Set(EventKind::SyncFailed),
        payload: Set(Some(
            serde_json::to_string(payload).expect("notices serialise"),
        )),
        trace_parent: Set(trace_parent),
        ..pending_event(&sub.id, &sub.app_id, &sub.repository_id, now)
    }
    .insert(conn)
    .await?;
    Ok(())
}
