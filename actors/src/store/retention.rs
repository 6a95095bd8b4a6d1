//! What Herald keeps only for a while: delivered and skipped events (with
//! their attempts) after `delivery.event_retention`, delivery attempts after
//! `delivery.attempt_retention`, and snapshots nothing refers to any more.
//! Each call deletes one bounded batch in its own short transaction, so
//! retention never holds up delivery.

use entity::{EventStatus, delivery_attempt, event, repository, snapshot, subscription};
use sea_orm::sea_query::{Alias, Expr, ExprTrait, Query};
use sea_orm::{ColumnTrait, Condition, EntityTrait, QueryFilter, QuerySelect};

use super::{Store, StoreError};
use crate::ids::SubscriptionId;

impl Store {
    /// Deletes up to `batch` delivered or skipped events finished before
    /// `before`, with their attempts. An event is kept while an undelivered
    /// (pending or dead) event of its subscription comes before it, so what
    /// stays of a subscription is always its events from some `seq` on, in
    /// order and without gaps. Returns how many events went.
    pub async fn prune_events(&self, before: i64, batch: u64) -> Result<u64, StoreError> {
        let earlier = Alias::new("earlier");
        let waiting_before = Query::select()
            .expr(Expr::val(1))
            .from_as(event::Entity, earlier.clone())
            .and_where(
                Expr::col((earlier.clone(), event::Column::SubscriptionId))
                    .equals((event::Entity, event::Column::SubscriptionId)),
            )
            .and_where(
                Expr::col((earlier.clone(), event::Column::Status))
                    .is_in([EventStatus::Pending, EventStatus::Dead]),
            )
            .and_where(
                Expr::col((earlier, event::Column::Seq))
                    .lt(Expr::col((event::Entity, event::Column::Seq))),
            )
            .to_owned();
        let ids: Vec<String> = event::Entity::find()
            .select_only()
            .column(event::Column::Id)
            .filter(event::Column::Status.is_in([EventStatus::Delivered, EventStatus::Skipped]))
            .filter(
                Condition::any()
                    .add(event::Column::DeliveredAt.lt(before))
                    .add(
                        Condition::all()
                            .add(event::Column::DeliveredAt.is_null())
                            .add(event::Column::CreatedAt.lt(before)),
                    ),
            )
            .filter(Condition::all().not().add(Expr::exists(waiting_before)))
            .limit(batch)
            .into_tuple()
            .all(&self.db)
            .await?;
        if ids.is_empty() {
            return Ok(0);
        }
        let txn = self.begin_write().await?;
        delivery_attempt::Entity::delete_many()
            .filter(delivery_attempt::Column::EventId.is_in(ids.iter().cloned()))
            .exec(&txn)
            .await?;
        let deleted = event::Entity::delete_many()
            .filter(event::Column::Id.is_in(ids))
            .exec(&txn)
            .await?
            .rows_affected;
        txn.commit().await?;
        Ok(deleted)
    }

    /// Deletes up to `batch` delivery attempts made before `before`.
    pub async fn prune_attempts(&self, before: i64, batch: u64) -> Result<u64, StoreError> {
        let ids: Vec<String> = delivery_attempt::Entity::find()
            .select_only()
            .column(delivery_attempt::Column::Id)
            .filter(delivery_attempt::Column::AttemptedAt.lt(before))
            .limit(batch)
            .into_tuple()
            .all(&self.db)
            .await?;
        if ids.is_empty() {
            return Ok(0);
        }
        Ok(delivery_attempt::Entity::delete_many()
            .filter(delivery_attempt::Column::Id.is_in(ids))
            .exec(&self.db)
            .await?
            .rows_affected)
    }

    /// Deletes up to `batch` snapshots that nothing refers to any more: no
    /// longer pinned in the mirror (every event of theirs settled), and no
    /// event, repository or subscription names them.
    pub async fn prune_snapshots(&self, batch: u64) -> Result<u64, StoreError> {
        let named_by_events = Query::select()
            .column(event::Column::SnapshotId)
            .from(event::Entity)
            .and_where(Expr::col(event::Column::SnapshotId).is_not_null())
            .to_owned();
        let current = Query::select()
            .column(repository::Column::CurrentSnapshotId)
            .from(repository::Entity)
            .and_where(Expr::col(repository::Column::CurrentSnapshotId).is_not_null())
            .to_owned();
        let delivered = Query::select()
            .column(subscription::Column::LastSnapshotId)
            .from(subscription::Entity)
            .and_where(Expr::col(subscription::Column::LastSnapshotId).is_not_null())
            .to_owned();
        let ids: Vec<String> = snapshot::Entity::find()
            .select_only()
            .column(snapshot::Column::Id)
            .filter(snapshot::Column::Pinned.eq(false))
            .filter(snapshot::Column::Id.not_in_subquery(named_by_events))
            .filter(snapshot::Column::Id.not_in_subquery(current))
            .filter(snapshot::Column::Id.not_in_subquery(delivered))
            .limit(batch)
            .into_tuple()
            .all(&self.db)
            .await?;
        if ids.is_empty() {
            return Ok(0);
        }
        Ok(snapshot::Entity::delete_many()
            .filter(snapshot::Column::Id.is_in(ids))
            .exec(&self.db)
            .await?
            .rows_affected)
    }

    /// The `seq` of a subscription's first undelivered (pending or dead)
    /// event, where its lane starts reading; `None` when there is none.
    pub async fn first_undelivered_seq(
        &self,
        subscription_id: &SubscriptionId,
    ) -> Result<Option<i64>, StoreError> {
        Ok(event::Entity::find()
            .select_only()
            .column_as(event::Column::Seq.min(), "first")
            .filter(event::Column::SubscriptionId.eq(subscription_id))
            .filter(event::Column::Status.is_in([EventStatus::Pending, EventStatus::Dead]))
            .into_tuple::<Option<i64>>()
            .one(&self.db)
            .await?
            .flatten())
    }
}
