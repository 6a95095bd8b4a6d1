//! The delivery side of the outbox: which events are due, in what order, and
//! what each attempt did. A subscription's events go strictly by `seq`: the
//! lane that delivers them holds the subscription's delivery lease.

use entity::{app, delivery_attempt, event, repository, subscription};
use sea_orm::sea_query::{Expr, ExprTrait, Query};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, Condition, ConnectionTrait, EntityTrait, PaginatorTrait,
    QueryFilter, QueryOrder, QuerySelect, Set,
};

use super::events::resume_subscription;
use super::leases::{LeaseToken, free, hold_delivery};
use super::rows::insert_rows;
use super::{Store, StoreError};
use crate::clock::now_ms;
use crate::ids::{AppId, AttemptId, RepoId, SubscriptionId};

/// One recorded HTTP attempt.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub event_id: String,
    pub chunk_index: Option<i32>,
    pub attempted_at: i64,
    pub status_code: Option<i32>,
    pub latency_ms: i64,
    pub error_class: Option<entity::ErrorClass>,
    pub response_excerpt: Option<String>,
    /// The request that went out; `None` when none did (an event given up
    /// on before sending, content that could not be read).
    pub request: Option<SentRequest>,
}

/// What an attempt's request carried that its headers are shown from again
/// (`signing::shown_headers`): everything else in them follows from the
/// event and its app, and the signatures are not kept.
#[derive(Debug, Clone)]
pub struct SentRequest {
    /// The `webhook-timestamp` it was signed with, Unix seconds.
    pub timestamp: i64,
    pub traceparent: Option<String>,
}

impl Attempt {
    fn into_row(self) -> delivery_attempt::ActiveModel {
        delivery_attempt::ActiveModel {
            id: Set(AttemptId::generate().into_string()),
            event_id: Set(self.event_id),
            chunk_index: Set(self.chunk_index),
            attempted_at: Set(self.attempted_at),
            status_code: Set(self.status_code),
            latency_ms: Set(self.latency_ms),
            error_class: Set(self.error_class),
            response_excerpt: Set(self.response_excerpt),
            request_timestamp: Set(self.request.as_ref().map(|r| r.timestamp)),
            traceparent: Set(self.request.and_then(|r| r.traceparent)),
        }
    }
}

/// Rows or ids one statement of a batched write holds at most.
const STATEMENT_ROWS: usize = 256;

/// `items` in the pieces a batched write's statements take: as many of
/// [`STATEMENT_ROWS`] as fit, then one piece for each binary digit of what
/// is left (128, 64, …, 1). A statement's text depends on its number of
/// rows; in these nine shapes each connection prepares a statement once and
/// finds it in its statement cache after, where a write of any size from 1
/// to a few hundred would be parsed and planned afresh each time.
fn statement_pieces<T>(items: &[T]) -> impl Iterator<Item = &[T]> {
    let mut rest = items;
    piece_sizes(items.len()).map(move |size| {
        let (piece, after) = rest.split_at(size);
        rest = after;
        piece
    })
}

/// The sizes of [`statement_pieces`] of `len` items.
fn piece_sizes(mut len: usize) -> impl Iterator<Item = usize> {
    std::iter::from_fn(move || {
        let size = match len {
            0 => return None,
            n if n >= STATEMENT_ROWS => STATEMENT_ROWS,
            n => 1 << n.ilog2(),
        };
        len -= size;
        Some(size)
    })
}

/// Whether the row whose id is `owner` (an app's or a subscription's) has
/// an event due now: a pending one whose time has come, or a dead one last
/// tried before `probe_dead_before` (due for one probe). One `EXISTS` per
/// status, each a single probe of an index that starts with (`by`, status):
/// as one condition with an `OR` inside, SQLite walks every event of the
/// owner, delivered ones included, on every poll.
fn has_due_events(
    by: event::Column,
    owner: impl sea_orm::sea_query::IntoColumnRef,
    now: i64,
    probe_dead_before: Option<i64>,
) -> Condition {
    let owner = Expr::col(owner);
    let exists = |status: entity::EventStatus, at: i64| {
        Expr::exists(
            Query::select()
                .expr(Expr::val(1))
                .from(event::Entity)
                .and_where(Expr::col((event::Entity, by)).eq(owner.clone()))
                .and_where(Expr::col((event::Entity, event::Column::Status)).eq(status))
                .and_where(Expr::col((event::Entity, event::Column::NextAttemptAt)).lte(at))
                .to_owned(),
        )
    };
    let mut due = Condition::any().add(exists(entity::EventStatus::Pending, now));
    if let Some(before) = probe_dead_before {
        due = due.add(exists(entity::EventStatus::Dead, before));
    }
    due
}

/// What the attempt means for its event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventOutcome {
    Delivered,
    /// Try again at this time; `counted` when it used up an attempt.
    Retry {
        at: i64,
        error: String,
        counted: bool,
    },
    /// `delivery.max_attempts` reached: the subscription stops behind it.
    Dead {
        error: String,
    },
    /// A best-effort notification that could not be delivered.
    Skipped {
        error: String,
    },
    /// The endpoint answered 410 Gone: the subscription pauses.
    Paused {
        error: String,
    },
}

impl Store {
    /// Active push apps with events due now, at most `limit`. One index probe
    /// per app (`ix_events_app_status`), however long the outbox: the
    /// dispatcher asks this every `delivery.tick`. Dead events last tried
    /// before `probe_dead_before` are due for one probe (`None`: never).
    pub async fn apps_with_due_events(
        &self,
        now: i64,
        probe_dead_before: Option<i64>,
        limit: u64,
    ) -> Result<Vec<String>, StoreError> {
        Ok(app::Entity::find()
            .select_only()
            .column(app::Column::Id)
            .filter(app::Column::Status.eq(entity::AppStatus::Active))
            // A pull app's events wait for its consumer (`store/stream.rs`);
            // webhooks and brokers are sent.
            .filter(app::Column::DeliveryMode.ne(entity::DeliveryMode::Pull))
            .filter(has_due_events(
                event::Column::AppId,
                (app::Entity, app::Column::Id),
                now,
                probe_dead_before,
            ))
            .order_by_asc(app::Column::Id)
            .limit(limit)
            .into_tuple()
            .all(&self.db)
            .await?)
    }

    /// The app's subscriptions that have an event due now and may deliver
    /// (no dead event waiting for its next probe, not paused; a
    /// subscription failed by its git remote still delivers, its
    /// `sync_failed` first; its lease free or expired).
    pub async fn subscriptions_due(
        &self,
        app_id: &AppId,
        now: i64,
        probe_dead_before: Option<i64>,
        limit: u64,
    ) -> Result<Vec<subscription::Model>, StoreError> {
        // Order is the contract: a dead event blocks its subscription until
        // someone retries or skips it, or its next probe succeeds.
        let mut blocked = Query::select()
            .expr(Expr::val(1))
            .from(event::Entity)
            .and_where(
                Expr::col((event::Entity, event::Column::SubscriptionId))
                    .equals((subscription::Entity, subscription::Column::Id)),
            )
            .and_where(
                Expr::col((event::Entity, event::Column::Status)).eq(entity::EventStatus::Dead),
            )
            .to_owned();
        if let Some(before) = probe_dead_before {
            blocked.and_where(Expr::col((event::Entity, event::Column::NextAttemptAt)).gt(before));
        }
        Ok(subscription::Entity::find()
            .filter(subscription::Column::AppId.eq(app_id.as_str()))
            .filter(subscription::Column::Status.ne(entity::SubscriptionStatus::Paused))
            .filter(has_due_events(
                event::Column::SubscriptionId,
                (subscription::Entity, subscription::Column::Id),
                now,
                probe_dead_before,
            ))
            .filter(Expr::exists(blocked).not())
            .filter(free(
                subscription::Column::DeliveryLeaseOwner,
                subscription::Column::DeliveryLeaseUntil,
                now,
            ))
            .order_by_asc(subscription::Column::Id)
            .limit(limit)
            .all(&self.db)
            .await?)
    }

    /// The next undelivered events of a subscription after `after_seq`, in
    /// order: pending ones and a dead one (which blocks the rest). A lane
    /// passes the last `seq` it handled, so each batch is read by the
    /// `(subscription_id, seq)` index without walking delivered events.
    pub async fn next_events(
        &self,
        subscription_id: &SubscriptionId,
        after_seq: i64,
        limit: u64,
    ) -> Result<Vec<event::Model>, StoreError> {
        Ok(event::Entity::find()
            .filter(event::Column::SubscriptionId.eq(subscription_id.as_str()))
            .filter(event::Column::Seq.gt(after_seq))
            .filter(
                event::Column::Status
                    .is_in([entity::EventStatus::Pending, entity::EventStatus::Dead]),
            )
            .order_by_asc(event::Column::Seq)
            .limit(limit)
            .all(&self.db)
            .await?)
    }

    pub async fn app(&self, id: &AppId) -> Result<Option<app::Model>, StoreError> {
        Ok(app::Entity::find_by_id(id.as_str()).one(&self.db).await?)
    }

    pub async fn subscription(
        &self,
        id: &SubscriptionId,
    ) -> Result<Option<subscription::Model>, StoreError> {
        Ok(subscription::Entity::find_by_id(id.as_str())
            .one(&self.db)
            .await?)
    }

    pub async fn repository_row(
        &self,
        id: &RepoId,
    ) -> Result<Option<repository::Model>, StoreError> {
        Ok(repository::Entity::find_by_id(id.as_str())
            .one(&self.db)
            .await?)
    }

    /// A subscription and its repository, what delivering its events
    /// needs; `None` when either is gone.
    pub async fn subscription_and_repository(
        &self,
        id: &SubscriptionId,
    ) -> Result<Option<(subscription::Model, repository::Model)>, StoreError> {
        let Some(subscription) = self.subscription(id).await? else {
            return Ok(None);
        };
        let repository = self
            .repository_row(&RepoId::stored(subscription.repository_id.as_str()))
            .await?;
        Ok(repository.map(|repository| (subscription, repository)))
    }

    /// Records an attempt and what it means for the event and its
    /// subscription, in one transaction, if `lease` still holds the
    /// subscription.
    pub async fn record_attempt(
        &self,
        lease: &LeaseToken,
        event: &event::Model,
        attempt: Attempt,
        outcome: EventOutcome,
    ) -> Result<(), StoreError> {
        let now = now_ms();
        let txn = self.begin_write().await?;
        hold_delivery(&txn, &event.subscription_id, lease).await?;
        attempt.into_row().insert(&txn).await?;
        let set_subscription = |status: entity::SubscriptionStatus, error: Option<String>| {
            subscription::Entity::update_many()
                .col_expr(subscription::Column::Status, Expr::value(status.to_owned()))
                .col_expr(subscription::Column::LastError, Expr::value(error))
                .col_expr(subscription::Column::UpdatedAt, Expr::value(now))
                .filter(subscription::Column::Id.eq(event.subscription_id.as_str()))
        };
        let update_event = |status: entity::EventStatus| {
            event::Entity::update_many()
                .col_expr(event::Column::Status, Expr::value(status.to_owned()))
                .filter(event::Column::Id.eq(event.id.as_str()))
        };
        match outcome {
            EventOutcome::Delivered => {
                update_event(entity::EventStatus::Delivered)
                    .col_expr(event::Column::DeliveredAt, Expr::value(now))
                    .col_expr(
                        event::Column::LastError,
                        Expr::value(Option::<String>::None),
                    )
                    .exec(&txn)
                    .await?;
                if event.status == entity::EventStatus::Dead {
                    // A dead event's probe succeeded: the subscription goes
                    // on, as after an operator's retry.
                    resume_subscription(&txn, &event.subscription_id, now).await?;
                }
            }
            EventOutcome::Retry { at, error, counted } => {
                let mut update = update_event(entity::EventStatus::Pending)
                    .col_expr(event::Column::NextAttemptAt, Expr::value(at))
                    .col_expr(event::Column::LastError, Expr::value(error));
                if counted {
                    update = update.col_expr(
                        event::Column::Attempts,
                        Expr::col(event::Column::Attempts).add(1),
                    );
                }
                update.exec(&txn).await?;
            }
            EventOutcome::Dead { error } => {
                update_event(entity::EventStatus::Dead)
                    .col_expr(
                        event::Column::Attempts,
                        Expr::col(event::Column::Attempts).add(1),
                    )
                    // For a dead event: when it was last tried, from which
                    // its next probe is counted.
                    .col_expr(event::Column::NextAttemptAt, Expr::value(now))
                    .col_expr(event::Column::LastError, Expr::value(error.clone()))
                    .exec(&txn)
                    .await?;
                set_subscription(entity::SubscriptionStatus::Failed, Some(error))
                    .exec(&txn)
                    .await?;
            }
            EventOutcome::Skipped { error } => {
                update_event(entity::EventStatus::Skipped)
                    .col_expr(event::Column::LastError, Expr::value(error))
                    .exec(&txn)
                    .await?;
            }
            EventOutcome::Paused { error } => {
                update_event(entity::EventStatus::Pending)
                    .col_expr(event::Column::LastError, Expr::value(error.clone()))
                    .exec(&txn)
                    .await?;
                set_subscription(entity::SubscriptionStatus::Paused, Some(error))
                    .exec(&txn)
                    .await?;
            }
        }
        txn.commit().await?;
        Ok(())
    }

    /// An event whose endpoint the configuration forbids (see
    /// `ErrorClass::Policy`): no attempt was made, so none is recorded
    /// or counted. The event waits until `at` (a dead one stays dead, as if
    /// probed now) with the reason as its `last_error`, if `lease` still
    /// holds the subscription. Not the subscription's `last_error`: scans
    /// clear that one when git works, and nothing of the delivery would
    /// clear it once the app moved to an allowed URL.
    pub async fn hold_refused(
        &self,
        lease: &LeaseToken,
        event: &event::Model,
        at: i64,
        error: &str,
    ) -> Result<(), StoreError> {
        let now = now_ms();
        let txn = self.begin_write().await?;
        hold_delivery(&txn, &event.subscription_id, lease).await?;
        let next_attempt_at = if event.status == entity::EventStatus::Dead {
            now
        } else {
            at
        };
        event::Entity::update_many()
            .col_expr(event::Column::NextAttemptAt, Expr::value(next_attempt_at))
            .col_expr(event::Column::LastError, Expr::value(error))
            .filter(event::Column::Id.eq(event.id.as_str()))
            .exec(&txn)
            .await?;
        txn.commit().await?;
        Ok(())
    }

    /// Records successful attempts of one subscription's events in one
    /// transaction, if `lease` still holds it: the last (or only) parts'
    /// `attempts`, whose events are then `delivered`, and `parts`, the
    /// attempts of chunks before a file's last (its event is not delivered
    /// by them). Events deleted meanwhile (an app unwatching the
    /// repository), or of another subscription, are passed over.
    pub async fn record_deliveries(
        &self,
        subscription_id: &SubscriptionId,
        lease: &LeaseToken,
        attempts: Vec<Attempt>,
        parts: Vec<Attempt>,
    ) -> Result<(), StoreError> {
        if attempts.is_empty() && parts.is_empty() {
            return Ok(());
        }
        let now = now_ms();
        let txn = self.begin_write().await?;
        hold_delivery(&txn, subscription_id.as_str(), lease).await?;
        let ids: Vec<&str> = attempts
            .iter()
            .chain(&parts)
            .map(|a| a.event_id.as_str())
            .collect();
        // Found by their ids alone, the subscription checked here: with
        // `subscription_id = ?` in the query, SQLite (no statistics) walks
        // the subscription's index, every event it ever had, instead of
        // looking each id up (BENCHMARKS.md, "Tunings of the delivery path").
        let mut existing = std::collections::HashSet::with_capacity(ids.len());
        for ids in statement_pieces(&ids) {
            let rows: Vec<(String, String)> = event::Entity::find()
                .select_only()
                .column(event::Column::Id)
                .column(event::Column::SubscriptionId)
                .filter(event::Column::Id.is_in(ids.iter().copied()))
                .into_tuple()
                .all(&txn)
                .await?;
            existing.extend(
                rows.into_iter()
                    .filter(|(_, of)| of == subscription_id.as_str())
                    .map(|(id, _)| id),
            );
        }
        let delivered: Vec<&str> = attempts
            .iter()
            .map(|a| a.event_id.as_str())
            .filter(|id| existing.contains(*id))
            .collect();
        for delivered in statement_pieces(&delivered) {
            event::Entity::update_many()
                .col_expr(
                    event::Column::Status,
                    Expr::value(entity::EventStatus::Delivered),
                )
                .col_expr(event::Column::DeliveredAt, Expr::value(now))
                .col_expr(
                    event::Column::LastError,
                    Expr::value(Option::<String>::None),
                )
                .filter(event::Column::Id.is_in(delivered.iter().copied()))
                .exec(&txn)
                .await?;
        }
        let rows: Vec<_> = parts
            .into_iter()
            .chain(attempts)
            .filter(|a| existing.contains(&a.event_id))
            .map(Attempt::into_row)
            .collect();
        let mut rows = rows.into_iter();
        let backend = txn.get_database_backend();
        for size in piece_sizes(rows.len()) {
            if let Some(insert) = insert_rows(backend, rows.by_ref().take(size), None)? {
                txn.execute_raw(insert).await?;
            }
        }
        txn.commit().await?;
        Ok(())
    }

    /// Marks a subscription synced when nothing is left to deliver, if
    /// `lease` still holds it.
    pub async fn settle_subscription(
        &self,
        subscription_id: &SubscriptionId,
        lease: &LeaseToken,
    ) -> Result<bool, StoreError> {
        let txn = self.begin_write().await?;
        hold_delivery(&txn, subscription_id.as_str(), lease).await?;
        let left = event::Entity::find()
            .filter(event::Column::SubscriptionId.eq(subscription_id))
            .filter(
                event::Column::Status
                    .is_in([entity::EventStatus::Pending, entity::EventStatus::Dead]),
            )
            .count(&txn)
            .await?;
        if left > 0 {
            return Ok(false);
        }
        let result = subscription::Entity::update_many()
            .col_expr(
                subscription::Column::Status,
                Expr::value(entity::SubscriptionStatus::Synced),
            )
            .col_expr(subscription::Column::UpdatedAt, Expr::value(now_ms()))
            .filter(subscription::Column::Id.eq(subscription_id))
            .filter(subscription::Column::Status.eq(entity::SubscriptionStatus::Syncing))
            .exec(&txn)
            .await?;
        txn.commit().await?;
        Ok(result.rows_affected == 1)
    }

    /// Records that an app's endpoint has been failing since `since` (or is
    /// healthy again, `None`), and disables it when it failed for longer
    /// than `disable_after_ms`. Returns whether it was disabled now.
    pub async fn mark_app_health(
        &self,
        app_id: &AppId,
        failing: bool,
        disable_after_ms: i64,
    ) -> Result<bool, StoreError> {
        let now = now_ms();
        if !failing {
            app::Entity::update_many()
                .col_expr(app::Column::FailingSince, Expr::value(Option::<i64>::None))
                .filter(app::Column::Id.eq(app_id))
                .filter(app::Column::FailingSince.is_not_null())
                .exec(&self.db)
                .await?;
            return Ok(false);
        }
        app::Entity::update_many()
            .col_expr(app::Column::FailingSince, Expr::value(now))
            .filter(app::Column::Id.eq(app_id))
            .filter(app::Column::FailingSince.is_null())
            .exec(&self.db)
            .await?;
        let disabled = app::Entity::update_many()
            .col_expr(
                app::Column::Status,
                Expr::value(entity::AppStatus::Disabled),
            )
            .col_expr(app::Column::DisabledAt, Expr::value(now))
            .filter(app::Column::Id.eq(app_id))
            .filter(app::Column::Status.eq(entity::AppStatus::Active))
            .filter(app::Column::FailingSince.lt(now - disable_after_ms))
            .exec(&self.db)
            .await?;
        Ok(disabled.rows_affected == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batched_write_comes_in_nine_statement_shapes() {
        assert_eq!(piece_sizes(0).count(), 0);
        assert_eq!(piece_sizes(1).collect::<Vec<_>>(), [1]);
        assert_eq!(piece_sizes(256).collect::<Vec<_>>(), [256]);
        assert_eq!(piece_sizes(300).collect::<Vec<_>>(), [256, 32, 8, 4]);
        assert_eq!(piece_sizes(600).collect::<Vec<_>>(), [256, 256, 64, 16, 8]);
        let mut shapes = std::collections::BTreeSet::new();
        for len in 0..=1_000 {
            let sizes: Vec<usize> = piece_sizes(len).collect();
            assert_eq!(
                sizes.iter().sum::<usize>(),
                len,
                "{len} items are all written"
            );
            shapes.extend(sizes);
        }
        assert_eq!(
            shapes.into_iter().collect::<Vec<_>>(),
            [1, 2, 4, 8, 16, 32, 64, 128, 256]
        );
        // The pieces cover the items in order, each once.
        let items: Vec<usize> = (0..300).collect();
        let pieces: Vec<&[usize]> = statement_pieces(&items).collect();
        assert_eq!(pieces.len(), 4);
        assert_eq!(pieces.concat(), items);
    }
}
