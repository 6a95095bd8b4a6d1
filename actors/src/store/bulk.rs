//! Bulk operations (retry every dead event of one app, or of all): one row
//! each, so progress and cancellation work from any instance, and an
//! operation whose runner died is taken over by another.
//!
//! An operation takes on a fixed range of dead events when it starts: the
//! oldest `total` of them, up to `last_event_id` (ids sort by creation). A
//! runner claims the row like a lease (free, or not updated within the lease
//! time), works through the range in id order, and records each event with
//! its cursor, so whoever takes over resumes after the last event handled.
//! Every write of a runner presents its claim ([`LeaseToken`]); a runner
//! whose claim passed to another is refused with [`StoreError::Fenced`].

use entity::{BulkKind, BulkStatus, bulk_operation, event};
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, Condition, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder,
    QuerySelect,
};

use super::leases::LeaseToken;
use super::{Store, StoreError};
use crate::clock::now_ms;
use crate::ids::{AppId, EventId, OperationId};

/// A finished operation can be read for this long, then it is gone.
pub const KEEP_FINISHED_MS: i64 = 60 * 60 * 1000;
/// An operation whose runners stopped this many times is given up on: it
/// is more likely to be what stops them than their bad luck.
pub const MAX_CLAIMS: i32 = 5;

/// What asking for a bulk retry did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BulkStart {
    Started(Box<bulk_operation::Model>),
    /// No dead event to retry.
    Nothing,
    /// Too many operations run already.
    Busy,
}

/// A claim of an operation by a runner.
#[derive(Debug, Clone)]
pub struct BulkClaim {
    pub operation: bulk_operation::Model,
    pub token: LeaseToken,
}

fn running() -> Condition {
    Condition::all().add(bulk_operation::Column::Status.eq(BulkStatus::Running))
}

/// Whose claim is `token`, on a running operation: the runner's writes.
fn held(id: &OperationId, token: &LeaseToken) -> Condition {
    running()
        .add(bulk_operation::Column::Id.eq(id.as_str()))
        .add(bulk_operation::Column::Runner.eq(token.as_str()))
}

/// Nobody works on it: never claimed, released, or its runner's heartbeat
/// is older than `stale_before`.
fn unclaimed(stale_before: i64) -> Condition {
    Condition::any()
        .add(bulk_operation::Column::Runner.is_null())
        .add(bulk_operation::Column::UpdatedAt.lt(stale_before))
}

impl Store {
    /// Starts retrying the dead events of `app` (or of every app): the
    /// oldest `max` of them. Refused while `max_running` operations run.
    pub async fn start_bulk_retry(
        &self,
        app: Option<&AppId>,
        max: u64,
        max_running: u64,
    ) -> Result<BulkStart, StoreError> {
        let mut dead =
            event::Entity::find().filter(event::Column::Status.eq(entity::EventStatus::Dead));
        if let Some(app) = app {
            dead = dead.filter(event::Column::AppId.eq(app.as_str()));
        }
        let total = std::cmp::Ord::min(dead.clone().count(&self.db).await?, max);
        if total == 0 {
            return Ok(BulkStart::Nothing);
        }
        let busy = bulk_operation::Entity::find()
            .filter(running())
            .count(&self.db)
            .await?;
        if busy >= max_running {
            return Ok(BulkStart::Busy);
        }
        let last: Option<String> = dead
            .select_only()
            .column(event::Column::Id)
            .order_by_asc(event::Column::Id)
            .offset(total - 1)
            .limit(1)
            .into_tuple()
            .one(&self.db)
            .await?;
        // Retried or delivered in between: what is left is still the range.
        let Some(last) = last else {
            return Ok(BulkStart::Nothing);
        };
        let now = now_ms();
        let row = bulk_operation::ActiveModel {
            id: Set(OperationId::generate().into_string()),
            kind: Set(BulkKind::RetryDead),
            app_id: Set(app.map(|a| a.as_str().to_owned())),
            status: Set(BulkStatus::Running),
            total: Set(i64::try_from(total).unwrap_or(i64::MAX)),
            done: Set(0),
            failed: Set(0),
            last_event_id: Set(Some(last)),
            cursor: Set(None),
            cancel_requested: Set(false),
            runner: Set(None),
            claims: Set(0),
            error: Set(None),
            started_at: Set(now),
            updated_at: Set(now),
            finished_at: Set(None),
        };
        Ok(BulkStart::Started(Box::new(
            bulk_operation::Entity::insert(row)
                .exec_with_returning(&self.db)
                .await?,
        )))
    }

    /// An operation, unless it finished more than [`KEEP_FINISHED_MS`]
    /// before `now`.
    pub async fn bulk_operation(
        &self,
        id: &OperationId,
        now: i64,
    ) -> Result<Option<bulk_operation::Model>, StoreError> {
        Ok(bulk_operation::Entity::find_by_id(id.as_str())
            .filter(
                Condition::any()
                    .add(bulk_operation::Column::FinishedAt.is_null())
                    .add(bulk_operation::Column::FinishedAt.gte(now - KEEP_FINISHED_MS)),
            )
            .one(&self.db)
            .await?)
    }

    /// Asks a running operation to stop before its next event; one nobody
    /// works on (its runner died: heartbeat before `stale_before`) is
    /// cancelled at once. A finished operation stays as it ended. The
    /// operation as it is now, `None` when unknown or expired.
    pub async fn cancel_bulk_operation(
        &self,
        id: &OperationId,
        stale_before: i64,
    ) -> Result<Option<bulk_operation::Model>, StoreError> {
        bulk_operation::Entity::update_many()
            .col_expr(bulk_operation::Column::CancelRequested, Expr::value(true))
            .filter(running().add(bulk_operation::Column::Id.eq(id.as_str())))
            .exec(&self.db)
            .await?;
        let now = now_ms();
        bulk_operation::Entity::update_many()
            .col_expr(
                bulk_operation::Column::Status,
                Expr::value(BulkStatus::Cancelled),
            )
            .col_expr(
                bulk_operation::Column::Runner,
                Expr::value(Option::<String>::None),
            )
            .col_expr(bulk_operation::Column::FinishedAt, Expr::value(now))
            .col_expr(bulk_operation::Column::UpdatedAt, Expr::value(now))
            .filter(
                running()
                    .add(bulk_operation::Column::Id.eq(id.as_str()))
                    .add(unclaimed(stale_before)),
            )
            .exec(&self.db)
            .await?;
        self.bulk_operation(id, now).await
    }

    /// Claims up to `limit` running operations nobody works on (never
    /// claimed, or their runner's heartbeat is older than `stale_before`)
    /// for `instance`. One claimed [`MAX_CLAIMS`] times already is failed
    /// instead, with the reason.
    pub async fn claim_bulk_operations(
        &self,
        instance: &str,
        stale_before: i64,
        limit: u64,
    ) -> Result<Vec<BulkClaim>, StoreError> {
        let candidates = bulk_operation::Entity::find()
            .filter(running().add(unclaimed(stale_before)))
            .order_by_asc(bulk_operation::Column::Id)
            .limit(limit)
            .all(&self.db)
            .await?;
        let mut claimed = Vec::new();
        for candidate in candidates {
            let id = OperationId::parse(&candidate.id)
                .ok_or(StoreError::Fenced("a stored operation id is malformed"))?;
            let now = now_ms();
            let this = running()
                .add(bulk_operation::Column::Id.eq(id.as_str()))
                .add(unclaimed(stale_before));
            if candidate.claims >= MAX_CLAIMS {
                bulk_operation::Entity::update_many()
                    .col_expr(
                        bulk_operation::Column::Status,
                        Expr::value(BulkStatus::Failed),
                    )
                    .col_expr(
                        bulk_operation::Column::Error,
                        Expr::value(format!(
                            "its runner stopped {MAX_CLAIMS} times before it ended; the events \
                             retried so far stay queued, start a new retry for the rest"
                        )),
                    )
                    .col_expr(
                        bulk_operation::Column::Runner,
                        Expr::value(Option::<String>::None),
                    )
                    .col_expr(bulk_operation::Column::FinishedAt, Expr::value(now))
                    .col_expr(bulk_operation::Column::UpdatedAt, Expr::value(now))
                    .filter(this)
                    .exec(&self.db)
                    .await?;
                continue;
            }
            let token = LeaseToken::new(instance);
            let result = bulk_operation::Entity::update_many()
                .col_expr(bulk_operation::Column::Runner, Expr::value(token.as_str()))
                .col_expr(
                    bulk_operation::Column::Claims,
                    Expr::col(bulk_operation::Column::Claims).add(1),
                )
                .col_expr(bulk_operation::Column::UpdatedAt, Expr::value(now))
                .filter(this)
                .exec(&self.db)
                .await?;
            if result.rows_affected == 1 {
                let operation = bulk_operation::Entity::find_by_id(id.as_str())
                    .one(&self.db)
                    .await?
                    .ok_or(StoreError::Fenced("the operation was deleted"))?;
                claimed.push(BulkClaim { operation, token });
            }
        }
        Ok(claimed)
    }

    /// Frees the operations a previous run of `instance` was working on, so
    /// they are taken over at once instead of after the lease time.
    pub async fn release_bulk_operations_of(&self, instance: &str) -> Result<u64, StoreError> {
        Ok(bulk_operation::Entity::update_many()
            .col_expr(
                bulk_operation::Column::Runner,
                Expr::value(Option::<String>::None),
            )
            .filter(running().add(bulk_operation::Column::Runner.like(format!("{instance}/%"))))
            .exec(&self.db)
            .await?
            .rows_affected)
    }

    /// The runner's heartbeat on each operation it holds; the claims it
    /// still holds.
    pub async fn renew_bulk_operations(
        &self,
        claims: &[(OperationId, LeaseToken)],
    ) -> Result<Vec<OperationId>, StoreError> {
        let now = now_ms();
        let mut held_still = Vec::new();
        for (id, token) in claims {
            let result = bulk_operation::Entity::update_many()
                .col_expr(bulk_operation::Column::UpdatedAt, Expr::value(now))
                .filter(held(id, token))
                .exec(&self.db)
                .await?;
            if result.rows_affected == 1 {
                held_still.push(id.clone());
            }
        }
        Ok(held_still)
    }

    /// The next dead events of the operation's range after its cursor, at
    /// most `limit`, in id order.
    pub async fn bulk_next_events(
        &self,
        operation: &bulk_operation::Model,
        after: Option<&str>,
        limit: u64,
    ) -> Result<Vec<EventId>, StoreError> {
        let Some(last) = &operation.last_event_id else {
            return Ok(Vec::new());
        };
        let mut query = event::Entity::find()
            .select_only()
            .column(event::Column::Id)
            .filter(event::Column::Status.eq(entity::EventStatus::Dead))
            .filter(event::Column::Id.lte(last.as_str()))
            .order_by_asc(event::Column::Id)
            .limit(limit);
        if let Some(after) = after {
            query = query.filter(event::Column::Id.gt(after));
        }
        if let Some(app) = &operation.app_id {
            query = query.filter(event::Column::AppId.eq(app.as_str()));
        }
        let ids: Vec<String> = query.into_tuple().all(&self.db).await?;
        Ok(ids.iter().filter_map(|id| EventId::parse(id)).collect())
    }

    /// Records one handled event (`retried`: queued again, or no longer
    /// dead) and moves the cursor past it; whether an operator asked the
    /// operation to stop.
    pub async fn record_bulk_step(
        &self,
        id: &OperationId,
        token: &LeaseToken,
        event: &EventId,
        retried: bool,
    ) -> Result<bool, StoreError> {
        let result = bulk_operation::Entity::update_many()
            .col_expr(
                bulk_operation::Column::Done,
                Expr::col(bulk_operation::Column::Done).add(1),
            )
            .col_expr(
                bulk_operation::Column::Failed,
                Expr::col(bulk_operation::Column::Failed).add(i64::from(!retried)),
            )
            .col_expr(bulk_operation::Column::Cursor, Expr::value(event.as_str()))
            .col_expr(bulk_operation::Column::UpdatedAt, Expr::value(now_ms()))
            .filter(held(id, token))
            .exec(&self.db)
            .await?;
        if result.rows_affected != 1 {
            return Err(StoreError::Fenced("the operation passed to another runner"));
        }
        self.bulk_cancel_requested(id).await
    }

    /// Whether an operator asked the operation to stop.
    pub async fn bulk_cancel_requested(&self, id: &OperationId) -> Result<bool, StoreError> {
        let requested: Option<bool> = bulk_operation::Entity::find_by_id(id.as_str())
            .select_only()
            .column(bulk_operation::Column::CancelRequested)
            .into_tuple()
            .one(&self.db)
            .await?;
        Ok(requested.unwrap_or(true))
    }

    /// Ends an operation the runner holds: `Done` (every event of its range
    /// that was still dead handled; the others count as handled too),
    /// `Cancelled`. Whether the runner still held it.
    pub async fn finish_bulk_operation(
        &self,
        id: &OperationId,
        token: &LeaseToken,
        status: BulkStatus,
    ) -> Result<bool, StoreError> {
        let now = now_ms();
        let mut update = bulk_operation::Entity::update_many()
            .col_expr(bulk_operation::Column::Status, Expr::value(status))
            .col_expr(
                bulk_operation::Column::Runner,
                Expr::value(Option::<String>::None),
            )
            .col_expr(bulk_operation::Column::FinishedAt, Expr::value(now))
            .col_expr(bulk_operation::Column::UpdatedAt, Expr::value(now));
        if status == BulkStatus::Done {
            update = update.col_expr(
                bulk_operation::Column::Done,
                Expr::col(bulk_operation::Column::Total),
            );
        }
        let result = update.filter(held(id, token)).exec(&self.db).await?;
        Ok(result.rows_affected == 1)
    }

    /// Deletes operations that finished before `before`.
    pub async fn prune_bulk_operations(&self, before: i64) -> Result<u64, StoreError> {
        Ok(bulk_operation::Entity::delete_many()
            .filter(bulk_operation::Column::Status.ne(BulkStatus::Running))
            .filter(bulk_operation::Column::FinishedAt.lt(before))
            .exec(&self.db)
            .await?
            .rows_affected)
    }
}
