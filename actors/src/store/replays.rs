//! Replays: the changes between two commits written again as new events of
//! one subscription, with the outbox's discipline (the repository locked
//! first, `seq`s from `subscriptions.next_seq`, the events and the replay's
//! row in one transaction); and a replay's progress, counted from its
//! events still waiting, so it stays right once retention prunes the
//! delivered ones.

use entity::{EventKind, EventStatus, event, replay, subscription};
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, IntoActiveModel, QueryFilter,
    QuerySelect, Set,
};

use super::outbox::{Stamp, changes_for, write_events};
use super::{Store, StoreError, lock_repositories};
use crate::clock::now_ms;
use crate::ids::{AppId, ReplayId, RepoId};
use crate::payload::{ReplayMarker, ReplayPayload};
use crate::scan::replay::ReplayDiff;

/// Where a replay stands, as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayProgress {
    pub replay: replay::Model,
    /// Its events still waiting for their turn or their next attempt.
    pub pending: u64,
    /// Its events given up on (they block the subscription until retried
    /// or skipped).
    pub dead: u64,
}

impl ReplayProgress {
    /// Its events delivered (or passed over): all but those still waiting
    /// or dead, whether or not retention has pruned them since.
    pub fn delivered(&self) -> i64 {
        let waiting = i64::try_from(self.pending + self.dead).unwrap_or(i64::MAX);
        std::cmp::max(self.replay.events_total - waiting, 0)
    }

    pub fn status(&self) -> ReplayStatus {
        if self.dead > 0 {
            ReplayStatus::Failed
        } else if self.pending > 0 {
            ReplayStatus::Delivering
        } else {
            ReplayStatus::Delivered
        }
    }
}

/// A replay's state, from its events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayStatus {
    /// Some of its events wait for delivery.
    Delivering,
    /// Every one of its events was delivered (or skipped).
    Delivered,
    /// One of its events is dead: the subscription waits behind it.
    Failed,
}

impl ReplayStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ReplayStatus::Delivering => "delivering",
            ReplayStatus::Delivered => "delivered",
            ReplayStatus::Failed => "failed",
        }
    }
}

impl Store {
    /// Writes replay `id` of `app`'s subscription to `repo`: its row and an
    /// event for every change of `diff` the subscription sees, appended to
    /// the subscription's outbox. `None` when the app no longer subscribes
    /// to the repository (nothing is written).
    pub async fn record_replay(
        &self,
        app: &AppId,
        repo: &RepoId,
        id: &ReplayId,
        diff: &ReplayDiff,
    ) -> Result<Option<ReplayProgress>, StoreError> {
        let now = now_ms();
        let trace_parent = crate::telemetry::current_traceparent();
        let txn = self.begin_write().await?;
        if lock_repositories(&txn, &[repo.as_str().to_owned()])
            .await?
            .is_empty()
        {
            return Ok(None);
        }
        let Some(sub) = subscription::Entity::find()
            .filter(subscription::Column::AppId.eq(app.as_str()))
            .filter(subscription::Column::RepositoryId.eq(repo.as_str()))
            .one(&txn)
            .await?
        else {
            return Ok(None);
        };
        let marker = ReplayPayload::stored(&ReplayMarker {
            id: id.as_str().to_owned(),
            from: diff.from.clone(),
            to: diff.to.clone(),
        });
        let pending = changes_for(
            &diff.old,
            &diff.delta,
            &diff.old_visibility,
            &diff.new_visibility,
        );
        let stamp = Stamp {
            // Its content is pinned under the replay's id, not a snapshot's.
            snapshot_id: &None,
            commit: &diff.to,
            trace_parent: &trace_parent,
            now,
            replay: Some((id.as_str(), &marker)),
        };
        // The diff already describes LFS files as the app sees them (see
        // `ReplayRequest::resolve_lfs`).
        let counts = write_events(&txn, &sub, &stamp, true, pending.into_iter()).await?;
        let count = counts.created + counts.updated + counts.deleted;
        let total = i64::try_from(count).unwrap_or(i64::MAX);
        let row = replay::ActiveModel {
            id: Set(id.as_str().to_owned()),
            subscription_id: Set(sub.id.clone()),
            app_id: Set(sub.app_id.clone()),
            repository_id: Set(sub.repository_id.clone()),
            from_commit: Set(diff.from.clone()),
            to_commit: Set(diff.to.clone()),
            events_total: Set(total),
            pinned: Set(true),
            created_at: Set(now),
        }
        .insert(&txn)
        .await?;
        if count > 0 {
            // A subscription blocked by a dead event or its endpoint's 410
            // stays so; one at rest has events to deliver again.
            let resting = matches!(
                sub.status,
                entity::SubscriptionStatus::Synced | entity::SubscriptionStatus::PendingSnapshot
            );
            let mut active = sub.clone().into_active_model();
            active.next_seq = Set(sub.next_seq + total);
            if resting && sub.last_snapshot_id.is_some() {
                active.status = Set(entity::SubscriptionStatus::Syncing);
            }
            active.updated_at = Set(now);
            active.update(&txn).await?;
        }
        txn.commit().await?;
        for (kind, n) in [
            (EventKind::Created, counts.created),
            (EventKind::Updated, counts.updated),
            (EventKind::Deleted, counts.deleted),
        ] {
            if n > 0 {
                crate::telemetry::events_created(kind, n);
            }
        }
        Ok(Some(ReplayProgress {
            replay: row,
            pending: count,
            dead: 0,
        }))
    }

    /// Replay `id` of `app`'s subscription to `repo`, with its progress;
    /// `None` for another app's replay, or another repository's.
    pub async fn replay_of_app(
        &self,
        app: &AppId,
        repo: &RepoId,
        id: &ReplayId,
    ) -> Result<Option<ReplayProgress>, StoreError> {
        let Some(row) = replay::Entity::find_by_id(id.as_str())
            .filter(replay::Column::AppId.eq(app.as_str()))
            .filter(replay::Column::RepositoryId.eq(repo.as_str()))
            .one(&self.db)
            .await?
        else {
            return Ok(None);
        };
        let waiting: Vec<(EventStatus, i64)> = event::Entity::find()
            .select_only()
            .column(event::Column::Status)
            .column_as(super::count_rows(), "n")
            .filter(event::Column::ReplayId.eq(id.as_str()))
            .filter(event::Column::Status.is_in([EventStatus::Pending, EventStatus::Dead]))
            .group_by(event::Column::Status)
            .into_tuple()
            .all(&self.db)
            .await?;
        let count = |status: EventStatus| {
            waiting
                .iter()
                .find(|(s, _)| *s == status)
                .map_or(0, |(_, n)| u64::try_from(*n).unwrap_or(0))
        };
        Ok(Some(ReplayProgress {
            pending: count(EventStatus::Pending),
            dead: count(EventStatus::Dead),
            replay: row,
        }))
    }
}

/// Replays of `repo` still pinned in its mirror whose events are all
/// settled (none pending or dead): their pins can go, as settled
/// snapshots' do.
pub(crate) async fn settled_replays<C: ConnectionTrait>(
    conn: &C,
    repo: &RepoId,
) -> Result<Vec<String>, StoreError> {
    let waiting = sea_orm::sea_query::Query::select()
        .column(event::Column::ReplayId)
        .from(event::Entity)
        .and_where(Expr::col(event::Column::RepositoryId).eq(repo.as_str()))
        .and_where(
            Expr::col(event::Column::Status).is_in([EventStatus::Pending, EventStatus::Dead]),
        )
        .and_where(Expr::col(event::Column::ReplayId).is_not_null())
        .to_owned();
    Ok(replay::Entity::find()
        .select_only()
        .column(replay::Column::Id)
        .filter(replay::Column::RepositoryId.eq(repo.as_str()))
        .filter(replay::Column::Pinned.eq(true))
        .filter(replay::Column::Id.not_in_subquery(waiting))
        .into_tuple()
        .all(conn)
        .await?)
}

/// Records that the mirror no longer pins these replays' commits (ids that
/// are not replays' are ignored).
pub(crate) async fn mark_replays_unpinned<C: ConnectionTrait>(
    conn: &C,
    ids: &[String],
) -> Result<(), StoreError> {
    let replays: Vec<&String> = ids
        .iter()
        .filter(|id| id.starts_with(ReplayId::PREFIX))
        .collect();
    for batch in replays.chunks(500) {
        replay::Entity::update_many()
            .col_expr(replay::Column::Pinned, Expr::value(false))
            .filter(replay::Column::Id.is_in(batch.iter().map(|id| id.as_str())))
            .exec(conn)
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn progress(total: i64, pending: u64, dead: u64) -> ReplayProgress {
        ReplayProgress {
            replay: replay::Model {
                id: "rpl_01".into(),
                subscription_id: "sub_1".into(),
                app_id: "app_1".into(),
                repository_id: "repo_1".into(),
                from_commit: "a".repeat(40),
                to_commit: "b".repeat(40),
                events_total: total,
                pinned: true,
                created_at: 0,
            },
            pending,
            dead,
        }
    }

    #[test]
    fn delivered_is_what_no_longer_waits_and_the_status_follows() {
        let started = progress(5, 5, 0);
        assert_eq!(
            (started.delivered(), started.status()),
            (0, ReplayStatus::Delivering)
        );
        let halfway = progress(5, 2, 0);
        assert_eq!(
            (halfway.delivered(), halfway.status()),
            (3, ReplayStatus::Delivering)
        );
        let stuck = progress(5, 1, 1);
        assert_eq!(
            (stuck.delivered(), stuck.status()),
            (3, ReplayStatus::Failed)
        );
        // Retention pruned the delivered events: nothing waits, all delivered.
        let done = progress(5, 0, 0);
        assert_eq!(
            (done.delivered(), done.status()),
            (5, ReplayStatus::Delivered)
        );
        let empty = progress(0, 0, 0);
        assert_eq!(
            (empty.delivered(), empty.status()),
            (0, ReplayStatus::Delivered)
        );
    }
}
