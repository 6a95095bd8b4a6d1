//! Events as the APIs see them: listing, one event with its attempts, and
//! the operator's levers (retry, skip, resync). Every function that takes an
//! app id only ever sees that app's events.

use entity::{delivery_attempt, event, subscription};
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{ColumnTrait, Condition, EntityTrait, QueryFilter, QueryOrder, QuerySelect};

use super::{Store, StoreError, lock_repositories};
use crate::clock::now_ms;
use crate::ids::{AppId, EventId, RepoId};

/// Filters of an event listing.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    pub status: Option<entity::EventStatus>,
    pub repository_id: Option<String>,
    /// Events after this one (ids sort by creation).
    pub after: Option<String>,
    pub limit: u64,
}

/// What a retry or skip changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lever {
    Done,
    /// The event is not in a state this lever applies to.
    NotApplicable,
    NotFound,
}

impl Store {
    /// Events of an app (or of every app, for operators), newest last.
    pub async fn list_events(
        &self,
        app: Option<&AppId>,
        filter: &EventFilter,
    ) -> Result<Vec<event::Model>, StoreError> {
        let mut query = event::Entity::find()
            .order_by_asc(event::Column::Id)
            .limit(filter.limit);
        if let Some(app) = app {
            query = query.filter(event::Column::AppId.eq(app.as_str()));
        }
        if let Some(status) = &filter.status {
            query = query.filter(event::Column::Status.eq(*status));
        }
        if let Some(repository) = &filter.repository_id {
            query = query.filter(event::Column::RepositoryId.eq(repository.as_str()));
        }
        if let Some(after) = &filter.after {
            query = query.filter(event::Column::Id.gt(after.as_str()));
        }
        Ok(query.all(&self.db).await?)
    }

    /// One event of the app (any app's when `app` is `None`) with its
    /// attempts, oldest first.
    pub async fn event_with_attempts(
        &self,
        app: Option<&AppId>,
        id: &EventId,
    ) -> Result<Option<(event::Model, Vec<delivery_attempt::Model>)>, StoreError> {
        let mut query = event::Entity::find_by_id(id.as_str());
        if let Some(app) = app {
            query = query.filter(event::Column::AppId.eq(app.as_str()));
        }
        let Some(event) = query.one(&self.db).await? else {
            return Ok(None);
        };
        let attempts = delivery_attempt::Entity::find()
            .filter(delivery_attempt::Column::EventId.eq(id.as_str()))
            .order_by_asc(delivery_attempt::Column::AttemptedAt)
            .order_by_asc(delivery_attempt::Column::Id)
            .all(&self.db)
            .await?;
        Ok(Some((event, attempts)))
    }

    /// Gives a dead (or waiting) event a fresh start: pending, attempts
    /// reset, due now; its subscription resumes (failed or paused → syncing).
    /// Delivered and skipped events stay as they are: later events may have
    /// gone past them.
    pub async fn retry_event(
        &self,
        app: Option<&AppId>,
        id: &EventId,
    ) -> Result<Lever, StoreError> {
        self.lever(
            app,
            id,
            |status| status == entity::EventStatus::Dead || status == entity::EventStatus::Pending,
            entity::EventStatus::Pending,
            true,
        )
        .await
    }

    /// Passes over an undelivered event (the operator's call); its
    /// subscription resumes with the next one.
    pub async fn skip_event(&self, app: Option<&AppId>, id: &EventId) -> Result<Lever, StoreError> {
        self.lever(
            app,
            id,
            |status| status == entity::EventStatus::Pending || status == entity::EventStatus::Dead,
            entity::EventStatus::Skipped,
            false,
        )
        .await
    }

    async fn lever(
        &self,
        app: Option<&AppId>,
        id: &EventId,
        applies: impl Fn(entity::EventStatus) -> bool,
        to: entity::EventStatus,
        reset: bool,
    ) -> Result<Lever, StoreError> {
        let mut query = event::Entity::find_by_id(id.as_str());
        if let Some(app) = app {
            query = query.filter(event::Column::AppId.eq(app.as_str()));
        }
        let Some(found) = query.one(&self.db).await? else {
            return Ok(Lever::NotFound);
        };
        if !applies(found.status) {
            return Ok(Lever::NotApplicable);
        }
        let now = now_ms();
        let txn = self.begin_write().await?;
        lock_repositories(&txn, std::slice::from_ref(&found.repository_id)).await?;
        let mut update = event::Entity::update_many()
            .col_expr(event::Column::Status, Expr::value(to.to_owned()))
            .filter(event::Column::Id.eq(found.id.as_str()))
            .filter(event::Column::Status.eq(found.status.as_str()));
        if reset {
            update = update
                .col_expr(event::Column::Attempts, Expr::value(0))
                .col_expr(event::Column::NextAttemptAt, Expr::value(now))
                // A pull app's consumer may be past its place: it takes a
                // new one, at the end of the stream.
                .col_expr(event::Column::StreamPos, Expr::value(Option::<i64>::None));
        }
        if update.exec(&txn).await?.rows_affected == 0 {
            return Ok(Lever::NotApplicable);
        }
        resume_subscription(&txn, &found.subscription_id, now).await?;
        txn.commit().await?;
        Ok(Lever::Done)
    }

    /// Asks for the full current tree to be delivered again to the app's
    /// subscription: the next scan of the repository gives it an initial
    /// snapshot (no refetch when the remote did not move). `false` when the
    /// app does not watch the repository.
    pub async fn resync(&self, app: &AppId, repo: &RepoId) -> Result<bool, StoreError> {
        let txn = self.begin_write().await?;
        lock_repositories(&txn, &[repo.as_str().to_owned()]).await?;
        if !start_over(&txn, app, repo.as_str(), now_ms()).await? {
            return Ok(false);
        }
        txn.commit().await?;
        Ok(true)
    }

    /// Per-status event counts of one app, or of all apps.
    pub async fn event_counts(
        &self,
        app: Option<&AppId>,
    ) -> Result<Vec<(String, entity::EventStatus, i64)>, StoreError> {
        let mut query = event::Entity::find()
            .select_only()
            .column(event::Column::AppId)
            .column(event::Column::Status)
            .column_as(super::count_rows(), "n")
            .group_by(event::Column::AppId)
            .group_by(event::Column::Status);
        if let Some(app) = app {
            query = query.filter(event::Column::AppId.eq(app.as_str()));
        }
        Ok(query.into_tuple().all(&self.db).await?)
    }

    /// Subscriptions currently held by a delivery lane, per app.
    pub async fn in_flight(&self, now: i64) -> Result<Vec<(String, i64)>, StoreError> {
        Ok(subscription::Entity::find()
            .select_only()
            .column(subscription::Column::AppId)
            .column_as(subscription::Column::Id.count(), "n")
            .filter(Condition::all().add(subscription::Column::DeliveryLeaseUntil.gt(now)))
            .group_by(subscription::Column::AppId)
            .into_tuple()
            .all(&self.db)
            .await?)
    }
}

/// The app's subscription to the repository starts over from the whole
/// current tree (a resync; registering again), whatever it held: the next
/// scan, due now,
/// gives it an initial snapshot, and its dead events, which would only
/// block it, are skipped. `false` when the app does not watch it. The
/// caller has locked the repository.
pub(crate) async fn start_over<C: sea_orm::ConnectionTrait>(
    conn: &C,
    app: &AppId,
    repository_id: &str,
    now: i64,
) -> Result<bool, StoreError> {
    let updated = subscription::Entity::update_many()
        .col_expr(
            subscription::Column::LastSnapshotId,
            Expr::value(Option::<String>::None),
        )
        .col_expr(
            subscription::Column::Status,
            Expr::value(entity::SubscriptionStatus::PendingSnapshot),
        )
        .col_expr(
            subscription::Column::LastError,
            Expr::value(Option::<String>::None),
        )
        .col_expr(subscription::Column::UpdatedAt, Expr::value(now))
        .filter(subscription::Column::AppId.eq(app.as_str()))
        .filter(subscription::Column::RepositoryId.eq(repository_id))
        .exec(conn)
        .await?;
    if updated.rows_affected == 0 {
        return Ok(false);
    }
    let subscription_ids = sea_orm::sea_query::Query::select()
        .column(subscription::Column::Id)
        .from(subscription::Entity)
        .and_where(Expr::col(subscription::Column::AppId).eq(app.as_str()))
        .and_where(Expr::col(subscription::Column::RepositoryId).eq(repository_id))
        .to_owned();
    event::Entity::update_many()
        .col_expr(
            event::Column::Status,
            Expr::value(entity::EventStatus::Skipped),
        )
        .filter(event::Column::Status.eq(entity::EventStatus::Dead))
        .filter(event::Column::SubscriptionId.in_subquery(subscription_ids.clone()))
        .exec(conn)
        .await?;
    // What the app was known to hold (imported) no longer counts: starting
    // over sends the whole tree, as to an app that lost its store.
    entity::held_file::Entity::delete_many()
        .filter(entity::held_file::Column::SubscriptionId.in_subquery(subscription_ids))
        .exec(conn)
        .await?;
    entity::repository::Entity::update_many()
        .col_expr(entity::repository::Column::NextScanAt, Expr::value(now))
        .filter(entity::repository::Column::Id.eq(repository_id))
        .exec(conn)
        .await?;
    Ok(true)
}

/// A failed or paused subscription goes back to delivering.
pub(crate) async fn resume_subscription<C: sea_orm::ConnectionTrait>(
    conn: &C,
    subscription_id: &str,
    now: i64,
) -> Result<(), StoreError> {
    subscription::Entity::update_many()
        .col_expr(
            subscription::Column::Status,
            Expr::value(entity::SubscriptionStatus::Syncing),
        )
        .col_expr(
            subscription::Column::LastError,
            Expr::value(Option::<String>::None),
        )
        .col_expr(subscription::Column::UpdatedAt, Expr::value(now))
        .filter(subscription::Column::Id.eq(subscription_id))
        .filter(subscription::Column::Status.is_in([
            entity::SubscriptionStatus::Failed,
            entity::SubscriptionStatus::Paused,
            entity::SubscriptionStatus::Synced,
        ]))
        .exec(conn)
        .await?;
    Ok(())
}
