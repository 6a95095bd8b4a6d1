//! The operators' views across every app (overview counts, the delivery
//! queue, dead events with their context) and the git breaker reset.

use std::collections::HashMap;
use std::hash::Hash;

use entity::{
    AppStatus, BreakerKind, EventStatus, SubscriptionStatus, app, breaker, delivery_attempt, event,
    repository, subscription,
};
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder, QuerySelect};

use super::subscriptions::reset_git_breaker;
use super::{Store, StoreError, lock_repositories, page_offset};
use crate::clock::now_ms;
use crate::ids::RepoId;

/// Rows counted by a status (or a kind): one without rows counts 0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counts<K: Eq + Hash>(HashMap<K, u64>);

impl<K: Copy + Eq + Hash> Counts<K> {
    /// The rows of `key`.
    pub fn get(&self, key: K) -> u64 {
        self.0.get(&key).copied().unwrap_or(0)
    }

    /// The rows of every key.
    pub fn total(&self) -> u64 {
        self.0.values().sum()
    }
}

impl<K: Eq + Hash> Default for Counts<K> {
    fn default() -> Self {
        Self(HashMap::new())
    }
}

/// A `GROUP BY` query's (key, count) rows.
impl<K: Eq + Hash> FromIterator<(K, i64)> for Counts<K> {
    fn from_iter<I: IntoIterator<Item = (K, i64)>>(rows: I) -> Self {
        Self(rows.into_iter().map(|(k, n)| (k, to_u64(n))).collect())
    }
}

/// Row counts of the whole installation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overview {
    pub apps: Counts<AppStatus>,
    pub repositories: u64,
    pub subscriptions: Counts<SubscriptionStatus>,
    pub events: Counts<EventStatus>,
    /// Subscriptions a delivery lane holds right now.
    pub in_flight: u64,
    /// Breakers not closed, by what they guard.
    pub open_breakers: Counts<BreakerKind>,
}

/// One app's share of the delivery queue.
#[derive(Debug, Clone)]
pub struct QueueEntry {
    pub app: app::Model,
    pub pending: u64,
    /// Subscriptions with a live delivery lease.
    pub in_flight: u64,
    pub dead: u64,
    /// The endpoint's breaker; `None` when closed.
    pub breaker: Option<breaker::Model>,
}

/// A dead event with what an operator needs to place it.
#[derive(Debug, Clone)]
pub struct DeadEvent {
    pub event: event::Model,
    pub app_name: Option<String>,
    pub repository: Option<repository::Model>,
    /// Its latest delivery attempt (status, response excerpt), if any.
    pub last_attempt: Option<delivery_attempt::Model>,
}

/// A repository with what operators look at: its git breaker and how many
/// apps watch it.
#[derive(Debug, Clone)]
pub struct RepositoryState {
    pub repository: repository::Model,
    /// The git breaker; `None` when closed.
    pub breaker: Option<breaker::Model>,
    pub subscribers: u64,
}

/// What a git breaker reset changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerReset {
    /// Failed subscriptions that went back to `synced`, `syncing` or
    /// `pending_snapshot`.
    pub recovered: u64,
    /// Failed subscriptions left failed: a dead event blocks them, which a
    /// git breaker reset does not fix (retry, skip or resync it).
    pub still_failed: u64,
}

fn to_u64(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

impl Store {
    /// Counts of apps, repositories, subscriptions, events, lanes in flight and
    /// open breakers. With `settled`, events of every status are counted (a
    /// walk of the whole outbox's status index); without, only those still
    /// waiting (`pending`, `dead`), whose cost does not grow with the
    /// history kept.
    pub async fn overview(&self, settled: bool) -> Result<Overview, StoreError> {
        let apps: Vec<(AppStatus, i64)> = app::Entity::find()
            .select_only()
            .column(app::Column::Status)
            .column_as(app::Column::Id.count(), "n")
            .group_by(app::Column::Status)
            .into_tuple()
            .all(&self.db)
            .await?;
        let repositories = repository::Entity::find().count(&self.db).await?;
        let subscriptions: Vec<(SubscriptionStatus, i64)> = subscription::Entity::find()
            .select_only()
            .column(subscription::Column::Status)
            .column_as(subscription::Column::Id.count(), "n")
            .group_by(subscription::Column::Status)
            .into_tuple()
            .all(&self.db)
            .await?;
        let mut events = event::Entity::find()
            .select_only()
            .column(event::Column::Status)
            .column_as(super::count_rows(), "n")
            .group_by(event::Column::Status);
        if !settled {
            events = events.filter(
                event::Column::Status
                    .is_in([entity::EventStatus::Pending, entity::EventStatus::Dead]),
            );
        }
        let events: Vec<(EventStatus, i64)> = events.into_tuple().all(&self.db).await?;
        let breakers: Vec<(BreakerKind, i64)> = breaker::Entity::find()
            .select_only()
            .column(breaker::Column::Kind)
            .column_as(breaker::Column::SubjectId.count(), "n")
            .filter(breaker::Column::State.ne(entity::BreakerStatus::Closed))
            .group_by(breaker::Column::Kind)
            .into_tuple()
            .all(&self.db)
            .await?;
        let in_flight = self
            .in_flight(now_ms())
            .await?
            .into_iter()
            .map(|(_, n)| to_u64(n))
            .sum();
        Ok(Overview {
            apps: apps.into_iter().collect(),
            repositories,
            subscriptions: subscriptions.into_iter().collect(),
            events: events.into_iter().collect(),
            in_flight,
            open_breakers: breakers.into_iter().collect(),
        })
    }

    /// The delivery queue per app: apps with pending, in-flight or dead
    /// events, or whose endpoint breaker is not closed, by app id. Apps with
    /// nothing queued and a healthy endpoint are left out.
    pub async fn queue(&self) -> Result<Vec<QueueEntry>, StoreError> {
        let mut counts: HashMap<String, (u64, u64, u64)> = HashMap::new();
        for (app_id, status, n) in self.event_counts(None).await? {
            let entry = counts.entry(app_id).or_default();
            match status {
                entity::EventStatus::Pending => entry.0 += to_u64(n),
                entity::EventStatus::Dead => entry.2 += to_u64(n),
                _ => {}
            }
        }
        for (app_id, n) in self.in_flight(now_ms()).await? {
            counts.entry(app_id).or_default().1 += to_u64(n);
        }
        counts.retain(|_, (pending, in_flight, dead)| *pending + *in_flight + *dead > 0);
        let mut breakers: HashMap<String, breaker::Model> = breaker::Entity::find()
            .filter(breaker::Column::Kind.eq(BreakerKind::Delivery))
            .filter(breaker::Column::State.ne(entity::BreakerStatus::Closed))
            .all(&self.db)
            .await?
            .into_iter()
            .map(|b| (b.subject_id.clone(), b))
            .collect();
        let ids: Vec<String> = counts.keys().chain(breakers.keys()).cloned().collect();
        let apps = app::Entity::find()
            .filter(app::Column::Id.is_in(ids))
            .order_by_asc(app::Column::Id)
            .all(&self.db)
            .await?;
        Ok(apps
            .into_iter()
            .map(|app| {
                let (pending, in_flight, dead) = counts.get(&app.id).copied().unwrap_or_default();
                QueueEntry {
                    breaker: breakers.remove(&app.id),
                    pending,
                    in_flight,
                    dead,
                    app,
                }
            })
            .collect())
    }

    /// One page (1-based) of dead events of every app, newest first, and how
    /// many there are in all.
    pub async fn dead_events(
        &self,
        page: u64,
        per_page: u64,
    ) -> Result<(Vec<DeadEvent>, u64), StoreError> {
        // A dead event was never delivered: with `delivered_at IS NULL` the
        // newest come straight off (status, delivered_at, id).
        let dead = || {
            event::Entity::find()
                .filter(event::Column::Status.eq(entity::EventStatus::Dead))
                .filter(event::Column::DeliveredAt.is_null())
        };
        let total = dead().count(&self.db).await?;
        let Some(offset) = page_offset(page, per_page) else {
            return Ok((Vec::new(), total));
        };
        let events = dead()
            .order_by_desc(event::Column::Id)
            .offset(offset)
            .limit(per_page)
            .all(&self.db)
            .await?;
        let app_ids: Vec<&str> = events.iter().map(|e| e.app_id.as_str()).collect();
        let repository_ids: Vec<&str> = events.iter().map(|e| e.repository_id.as_str()).collect();
        let app_names: HashMap<String, String> = app::Entity::find()
            .select_only()
            .column(app::Column::Id)
            .column(app::Column::Name)
            .filter(app::Column::Id.is_in(app_ids))
            .into_tuple::<(String, String)>()
            .all(&self.db)
            .await?
            .into_iter()
            .collect();
        let repositories: HashMap<String, repository::Model> = repository::Entity::find()
            .filter(repository::Column::Id.is_in(repository_ids))
            .all(&self.db)
            .await?
            .into_iter()
            .map(|r| (r.id.clone(), r))
            .collect();
        let event_ids: Vec<&str> = events.iter().map(|e| e.id.as_str()).collect();
        let mut last_attempts: HashMap<String, delivery_attempt::Model> = HashMap::new();
        for attempt in delivery_attempt::Entity::find()
            .filter(delivery_attempt::Column::EventId.is_in(event_ids))
            .order_by_asc(delivery_attempt::Column::AttemptedAt)
            .order_by_asc(delivery_attempt::Column::Id)
            .all(&self.db)
            .await?
        {
            last_attempts.insert(attempt.event_id.clone(), attempt);
        }
        let dead = events
            .into_iter()
            .map(|event| DeadEvent {
                app_name: app_names.get(&event.app_id).cloned(),
                repository: repositories.get(&event.repository_id).cloned(),
                last_attempt: last_attempts.remove(&event.id),
                event,
            })
            .collect();
        Ok((dead, total))
    }

    /// One page (1-based) of every repository, by id, with its git breaker
    /// and subscriber count, and how many there are in all.
    pub async fn repository_states(
        &self,
        page: u64,
        per_page: u64,
    ) -> Result<(Vec<RepositoryState>, u64), StoreError> {
        let total = repository::Entity::find().count(&self.db).await?;
        let Some(offset) = page_offset(page, per_page) else {
            return Ok((Vec::new(), total));
        };
        let repositories = repository::Entity::find()
            .order_by_asc(repository::Column::Id)
            .offset(offset)
            .limit(per_page)
            .all(&self.db)
            .await?;
        let ids: Vec<&str> = repositories.iter().map(|r| r.id.as_str()).collect();
        let mut breakers: HashMap<String, breaker::Model> = breaker::Entity::find()
            .filter(breaker::Column::Kind.eq(BreakerKind::Git))
            .filter(breaker::Column::SubjectId.is_in(ids.clone()))
            .filter(breaker::Column::State.ne(entity::BreakerStatus::Closed))
            .all(&self.db)
            .await?
            .into_iter()
            .map(|b| (b.subject_id.clone(), b))
            .collect();
        let subscribers: HashMap<String, i64> = subscription::Entity::find()
            .select_only()
            .column(subscription::Column::RepositoryId)
            .column_as(subscription::Column::Id.count(), "n")
            .filter(subscription::Column::RepositoryId.is_in(ids))
            .group_by(subscription::Column::RepositoryId)
            .into_tuple::<(String, i64)>()
            .all(&self.db)
            .await?
            .into_iter()
            .collect();
        let states = repositories
            .into_iter()
            .map(|repository| RepositoryState {
                breaker: breakers.remove(&repository.id),
                subscribers: subscribers.get(&repository.id).copied().map_or(0, to_u64),
                repository,
            })
            .collect();
        Ok((states, total))
    }

    /// Closes a repository's git breaker and clears the failure it left: the
    /// repository's and its subscriptions' errors and retry counts; failed
    /// subscriptions go back to `pending_snapshot` (never synced), `syncing`
    /// (events waiting) or `synced`, unless a dead event holds them; the
    /// repository is due at once. `None` when there is no such repository.
    pub async fn reset_repository_breaker(
        &self,
        repo: &RepoId,
    ) -> Result<Option<BreakerReset>, StoreError> {
        let now = now_ms();
        let txn = self.begin_write().await?;
        if lock_repositories(&txn, &[repo.as_str().to_owned()])
            .await?
            .is_empty()
        {
            return Ok(None);
        }
        reset_git_breaker(&txn, repo).await?;
        repository::Entity::update_many()
            .col_expr(
                repository::Column::LastError,
                Expr::value(Option::<String>::None),
            )
            .col_expr(repository::Column::NextScanAt, Expr::value(now))
            .col_expr(repository::Column::UpdatedAt, Expr::value(now))
            .filter(repository::Column::Id.eq(repo.as_str()))
            .exec(&txn)
            .await?;
        let subscriptions = subscription::Entity::find()
            .filter(subscription::Column::RepositoryId.eq(repo.as_str()))
            .all(&txn)
            .await?;
        let waiting: HashMap<(String, entity::EventStatus), i64> = event::Entity::find()
            .select_only()
            .column(event::Column::SubscriptionId)
            .column(event::Column::Status)
            .column_as(super::count_rows(), "n")
            .filter(
                event::Column::SubscriptionId.is_in(subscriptions.iter().map(|s| s.id.as_str())),
            )
            .filter(
                event::Column::Status
                    .is_in([entity::EventStatus::Pending, entity::EventStatus::Dead]),
            )
            .group_by(event::Column::SubscriptionId)
            .group_by(event::Column::Status)
            .into_tuple::<(String, entity::EventStatus, i64)>()
            .all(&txn)
            .await?
            .into_iter()
            .map(|(sub, status, n)| ((sub, status), n))
            .collect();
        let has = |sub: &str, status: entity::EventStatus| {
            waiting
                .get(&(sub.to_owned(), status))
                .is_some_and(|n| *n > 0)
        };
        let mut reset = BreakerReset {
            recovered: 0,
            still_failed: 0,
        };
        for sub in subscriptions {
            let mut update = subscription::Entity::update_many()
                .col_expr(subscription::Column::RetryCount, Expr::value(0))
                .col_expr(subscription::Column::UpdatedAt, Expr::value(now))
                .filter(subscription::Column::Id.eq(sub.id.as_str()));
            if sub.status == entity::SubscriptionStatus::Failed
                && has(&sub.id, entity::EventStatus::Dead)
            {
                // Its error is the dead event's: keep it visible.
                reset.still_failed += 1;
            } else {
                update = update.col_expr(
                    subscription::Column::LastError,
                    Expr::value(Option::<String>::None),
                );
                if sub.status == entity::SubscriptionStatus::Failed {
                    let status = if sub.last_snapshot_id.is_none() {
                        entity::SubscriptionStatus::PendingSnapshot
                    } else if has(&sub.id, entity::EventStatus::Pending) {
                        entity::SubscriptionStatus::Syncing
                    } else {
                        entity::SubscriptionStatus::Synced
                    };
                    update = update.col_expr(subscription::Column::Status, Expr::value(status));
                    reset.recovered += 1;
                }
            }
            update.exec(&txn).await?;
        }
        txn.commit().await?;
        Ok(Some(reset))
    }
}
