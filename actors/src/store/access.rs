//! Access is proven per subscriber. A repository is fetched and diffed once
//! for all its subscribers, so each subscriber's own credential (its token, or
//! none) must keep proving that it reads the repository: at registration, on
//! a token change, and every `security.access_recheck_interval`. A subscriber
//! whose credential the remote refuses loses access alone: its subscription
//! turns `failed`, its waiting content is withheld, it is told once with a
//! `sync_failed` of type `access_denied`, and the others go on. When its
//! credential works again it gets the whole current tree, as after a resync.

use entity::{event, repository, subscription};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, IntoActiveModel, QueryFilter, Set,
};
use secrecy::SecretString;

use super::leases::{LeaseToken, hold_scan};
use super::outbox::insert_sync_failed;
use super::{Store, StoreError, lock_repositories};
use crate::clock::now_ms;
use crate::ids::RepoId;
use crate::payload::{BreakerState, SyncError, SyncFailure};

/// The `sync_failed` error type of a subscriber that lost access.
pub const ACCESS_DENIED: &str = "access_denied";

/// One subscriber's credential, as a scan uses or checks it.
#[derive(Debug, Clone)]
pub struct SubscriberCredential {
    pub subscription_id: String,
    /// `None`: the subscriber reads anonymously.
    pub token: Option<SecretString>,
    pub granted: bool,
    pub checked_at: Option<i64>,
}

/// What the remote said of one subscriber's credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessCheck {
    Granted,
    /// Refused; the message is safe to show (no secret, no git output).
    Denied(String),
}

impl Store {
    /// The apps subscribed to `repo` (the tenants its scans are charged to),
    /// in id order.
    pub async fn subscriber_apps(&self, repo: &RepoId) -> Result<Vec<String>, StoreError> {
        let mut apps: Vec<String> = subscription::Entity::find()
            .filter(subscription::Column::RepositoryId.eq(repo.as_str()))
            .all(&self.db)
            .await?
            .into_iter()
            .map(|sub| sub.app_id)
            .collect();
        apps.sort_unstable();
        apps.dedup();
        Ok(apps)
    }

    /// Every subscriber's credential for `repo`, the preferred fetch
    /// credential first: anonymous access when some subscriber has it (no
    /// secret leaves Herald), then tokens most recently proven first, then
    /// the subscribers whose access is denied (checked, never fetched with).
    pub async fn subscriber_credentials(
        &self,
        repo: &RepoId,
    ) -> Result<Vec<SubscriberCredential>, StoreError> {
        let rows = subscription::Entity::find()
            .filter(subscription::Column::RepositoryId.eq(repo.as_str()))
            .all(&self.db)
            .await?;
        let mut credentials = rows
            .iter()
            .map(|sub| {
                Ok(SubscriberCredential {
                    subscription_id: sub.id.clone(),
                    token: self.git_token(sub)?,
                    granted: sub.access == entity::AccessState::Granted,
                    checked_at: sub.access_checked_at,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        credentials.sort_by_key(|c| {
            (
                !c.granted,
                c.token.is_some(),
                std::cmp::Reverse(c.checked_at),
                c.subscription_id.clone(),
            )
        });
        Ok(credentials)
    }

    /// Records what a scan learnt of its subscribers' credentials, in one
    /// transaction, if `lease` still holds the repository's scan: a check passed or failed again moves `access_checked_at`;
    /// a subscriber that lost access turns `failed` (its waiting content
    /// events skipped, one `sync_failed` of type `access_denied` queued); one
    /// that regained it starts over from the whole current tree. Returns how
    /// many subscribers changed state.
    pub async fn record_access(
        &self,
        repo: &RepoId,
        lease: &LeaseToken,
        checks: &[(String, AccessCheck)],
        breaker_threshold: u32,
    ) -> Result<usize, StoreError> {
        if checks.is_empty() {
            return Ok(0);
        }
        let now = now_ms();
        let trace_parent = crate::telemetry::current_traceparent();
        let txn = self.begin_write().await?;
        if lock_repositories(&txn, &[repo.as_str().to_owned()])
            .await?
            .is_empty()
        {
            return Ok(0);
        }
        hold_scan(&txn, repo.as_str(), lease).await?;
        let mut changed = 0;
        for (subscription_id, check) in checks {
            let Some(sub) = subscription::Entity::find_by_id(subscription_id.as_str())
                .filter(subscription::Column::RepositoryId.eq(repo.as_str()))
                .one(&txn)
                .await?
            else {
                continue;
            };
            let granted = sub.access == entity::AccessState::Granted;
            match check {
                AccessCheck::Granted if granted => touch(&txn, &sub.id, now).await?,
                AccessCheck::Denied(_) if !granted => touch(&txn, &sub.id, now).await?,
                AccessCheck::Granted => {
                    regain(&txn, sub, now).await?;
                    changed += 1;
                }
                AccessCheck::Denied(message) => {
                    if sub.git_token_ciphertext.is_none() {
                        // Anonymous access was refused: the remote needs a credential.
                        repository::Entity::update_many()
                            .col_expr(repository::Column::IsPrivate, Expr::value(true))
                            .filter(repository::Column::Id.eq(repo.as_str()))
                            .exec(&txn)
                            .await?;
                    }
                    lose(
                        &txn,
                        sub,
                        message,
                        breaker_threshold,
                        trace_parent.clone(),
                        now,
                    )
                    .await?;
                    changed += 1;
                }
            }
        }
        txn.commit().await?;
        Ok(changed)
    }
}

/// The credential was checked again with the same result.
async fn touch<C: ConnectionTrait>(
    conn: &C,
    subscription_id: &str,
    now: i64,
) -> Result<(), StoreError> {
    subscription::Entity::update_many()
        .col_expr(subscription::Column::AccessCheckedAt, Expr::value(now))
        .filter(subscription::Column::Id.eq(subscription_id))
        .exec(conn)
        .await?;
    Ok(())
}

/// The subscriber's credential reads the repository again: it starts over
/// from the whole current tree (files deleted meanwhile are not reported,
/// as after a resync), and the repository is scanned at once.
pub(crate) async fn regain<C: ConnectionTrait>(
    conn: &C,
    sub: subscription::Model,
    now: i64,
) -> Result<(), StoreError> {
    let repository_id = sub.repository_id.clone();
    let mut active = sub.into_active_model();
    active.access = Set(entity::AccessState::Granted);
    active.access_checked_at = Set(Some(now));
    active.status = Set(entity::SubscriptionStatus::PendingSnapshot);
    active.last_snapshot_id = Set(None);
    active.last_error = Set(None);
    active.retry_count = Set(0);
    active.updated_at = Set(now);
    active.update(conn).await?;
    repository::Entity::update_many()
        .col_expr(repository::Column::NextScanAt, Expr::value(now))
        .filter(repository::Column::Id.eq(repository_id))
        .exec(conn)
        .await?;
    Ok(())
}

/// The remote refused the subscriber's credential: nothing more reaches it
/// (its waiting file events are skipped; notifications still go), and it is
/// told once.
async fn lose<C: ConnectionTrait>(
    conn: &C,
    sub: subscription::Model,
    message: &str,
    breaker_threshold: u32,
    trace_parent: Option<String>,
    now: i64,
) -> Result<(), StoreError> {
    let message = format!("access denied: {message}");
    event::Entity::update_many()
        .col_expr(
            event::Column::Status,
            Expr::value(entity::EventStatus::Skipped),
        )
        .col_expr(event::Column::LastError, Expr::value(message.clone()))
        .filter(event::Column::SubscriptionId.eq(sub.id.as_str()))
        .filter(
            event::Column::Status.is_in([entity::EventStatus::Pending, entity::EventStatus::Dead]),
        )
        .filter(
            event::Column::Kind
                .is_not_in([entity::EventKind::SyncFailed, entity::EventKind::Synced]),
        )
        .exec(conn)
        .await?;
    let retry_count = sub.retry_count.saturating_add(1);
    let payload = SyncFailure {
        error: SyncError {
            kind: ACCESS_DENIED.to_owned(),
            message: message.clone(),
        },
        // The repository's breaker is not involved: this subscriber alone
        // lost access.
        circuit_breaker: BreakerState {
            status: "closed".to_owned(),
            consecutive_failures: 0,
            threshold: breaker_threshold,
            cooldown_until: None,
        },
        retry_count,
    };
    insert_sync_failed(conn, &sub, &payload, trace_parent, now).await?;
    crate::telemetry::events_created(entity::EventKind::SyncFailed, 1);
    let next_seq = sub.next_seq + 1;
    let mut active = sub.into_active_model();
    active.access = Set(entity::AccessState::Denied);
    active.access_checked_at = Set(Some(now));
    active.status = Set(entity::SubscriptionStatus::Failed);
    active.last_error = Set(Some(message));
    active.retry_count = Set(retry_count);
    active.next_seq = Set(next_seq);
    active.updated_at = Set(now);
    active.update(conn).await?;
    Ok(())
}
