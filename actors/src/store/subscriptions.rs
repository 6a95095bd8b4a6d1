//! Repositories and the apps' subscriptions to them. A repository (remote +
//! branch) is stored once and shared by every app that watches it; each app
//! holds a subscription with its own credential, filters and status.

use std::collections::HashMap;

use entity::{BreakerKind, breaker, event, repository, subscription};
use sea_orm::sea_query::{Expr, ExprTrait, OnConflict, Query};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, IntoActiveModel, QueryFilter,
    QueryOrder, QuerySelect, Set,
};
use secrecy::{ExposeSecret, SecretString};

use super::access::regain;
use super::events::start_over;
use super::globs::{CorruptGlobs, Globs};
use super::leases::{LeaseToken, hold_scan};
use super::{Store, StoreError, lock_repositories};
use crate::clock::now_ms;
use crate::ids::{AppId, RepoId, SubscriptionId};

/// A validated registration request.
pub struct NewSubscription {
    /// The canonical remote URL (the repository's identity with `branch`).
    pub url: String,
    /// What git fetches.
    pub fetch_url: String,
    pub owner: String,
    pub name: String,
    /// `None`: follow the remote's default branch.
    pub branch: Option<String>,
    /// The credential whose access was just proven (the registering app's
    /// token, or none).
    pub git_token: Option<SecretString>,
    /// Whether the remote needs a credential, when the registration found out.
    pub is_private: Option<bool>,
    pub include: Vec<String>,
    pub exclude: Vec<String>,
    /// Watch it with its submodules expanded: with `url` and `branch`, the
    /// repository's identity.
    pub expand_submodules: bool,
}

/// A subscription as its app sees it: the shared repository, the app's own
/// state, the repository's git breaker and the app's event counts.
#[derive(Debug, Clone)]
pub struct SubscriptionView {
    pub repository: repository::Model,
    pub subscription: subscription::Model,
    pub breaker: Option<breaker::Model>,
    pub pending_events: u64,
    pub failed_events: u64,
}

impl SubscriptionView {
    /// The repository needs a credential: the same for every subscriber.
    pub fn is_private(&self) -> bool {
        self.repository.is_private
    }

    /// The branch asked for, else the one detected on the remote.
    pub fn branch(&self) -> Option<&str> {
        Some(self.repository.branch.as_str())
            .filter(|b| !b.is_empty())
            .or(self.repository.resolved_branch.as_deref())
    }

    /// The subscription's include and exclude globs, or why its row's
    /// cannot be read.
    pub fn globs(&self) -> Result<Globs, CorruptGlobs> {
        Globs::try_from(&self.subscription)
    }
}

/// The associated data that binds a git token to its subscription row.
pub(crate) fn git_token_aad(subscription_id: &str) -> String {
    format!("subscriptions/{subscription_id}/git_token")
}

impl Store {
    /// Subscribes `app` to a repository, creating the repository when no app
    /// watches it yet. The caller has just proven that `new.git_token` (or no
    /// token) reads the repository. Subscribing again returns the existing
    /// subscription, with `created == false`, its credential replaced by the
    /// one just proven (a subscriber that had lost access regains it), and
    /// starts it over from the whole current tree, as a resync does.
    pub async fn subscribe(
        &self,
        app: &AppId,
        new: NewSubscription,
    ) -> Result<(SubscriptionView, bool), StoreError> {
        let now = now_ms();
        let branch = new.branch.unwrap_or_default();
        let txn = self.begin_write().await?;

        // Insert-if-absent, then read: safe against a concurrent registration
        // of the same remote by another app.
        repository::Entity::insert(repository::ActiveModel {
            id: Set(RepoId::generate().into_string()),
            url: Set(new.url.clone()),
            fetch_url: Set(new.fetch_url),
            owner: Set(new.owner),
            name: Set(new.name),
            branch: Set(branch.clone()),
            resolved_branch: Set(None),
            head_commit: Set(None),
            current_snapshot_id: Set(None),
            next_scan_at: Set(now),
            last_scanned_at: Set(None),
            last_error: Set(None),
            scan_lease_owner: Set(None),
            scan_lease_until: Set(None),
            created_at: Set(now),
            updated_at: Set(now),
            is_private: Set(new.is_private.unwrap_or(new.git_token.is_some())),
            expand_submodules: Set(new.expand_submodules),
        })
        // No conflict target: the identity index is the table's only
        // unique constraint a new row can meet (its id is fresh). Naming
        // the index would fail on a SQLite connection that read the schema
        // before the migration that made it: SQLite checks an upsert's
        // target against the connection's cached schema without reloading.
        .on_conflict(OnConflict::new().do_nothing().to_owned())
        .exec_without_returning(&txn)
        .await?;
        let repository = repository::Entity::find()
            .filter(repository::Column::Url.eq(&new.url))
            .filter(repository::Column::Branch.eq(&branch))
            .filter(repository::Column::ExpandSubmodules.eq(new.expand_submodules))
            .one(&txn)
            .await?
            .ok_or_else(|| sea_orm::DbErr::RecordNotFound(new.url.clone()))?;
        if let Some(is_private) = new.is_private.filter(|p| *p != repository.is_private) {
            repository::Entity::update_many()
                .col_expr(repository::Column::IsPrivate, is_private.into())
                .filter(repository::Column::Id.eq(repository.id.as_str()))
                .exec(&txn)
                .await?;
        }

        let subscription_id = SubscriptionId::generate().into_string();
        let git_token = new.git_token.as_ref().map(|t| {
            self.keys
                .seal(t.expose_secret(), &git_token_aad(&subscription_id))
        });
        let inserted = subscription::Entity::insert(subscription::ActiveModel {
            id: Set(subscription_id),
            app_id: Set(app.as_str().to_owned()),
            repository_id: Set(repository.id.clone()),
            status: Set(entity::SubscriptionStatus::PendingSnapshot),
            include: Set(serde_json::to_string(&new.include).expect("strings serialise")),
            exclude: Set(serde_json::to_string(&new.exclude).expect("strings serialise")),
            git_token_ciphertext: Set(git_token),
            last_error: Set(None),
            retry_count: Set(0),
            next_seq: Set(1),
            last_snapshot_id: Set(None),
            last_synced_commit: Set(None),
            delivery_lease_owner: Set(None),
            delivery_lease_until: Set(None),
            created_at: Set(now),
            updated_at: Set(now),
            access: Set(entity::AccessState::Granted),
            access_checked_at: Set(Some(now)),
        })
        .on_conflict(
            OnConflict::columns([
                subscription::Column::AppId,
                subscription::Column::RepositoryId,
            ])
            .do_nothing()
            .to_owned(),
        )
        .exec_without_returning(&txn)
        .await?;
        if inserted == 0 {
            // Registering again: the subscription starts over from the
            // whole current tree, as Docora re-sends it (its consumers
            // re-register to recover after losing their store).
            lock_repositories(&txn, std::slice::from_ref(&repository.id)).await?;
            let existing = subscription::Entity::find()
                .filter(subscription::Column::AppId.eq(app.as_str()))
                .filter(subscription::Column::RepositoryId.eq(repository.id.as_str()))
                .one(&txn)
                .await?
                .ok_or_else(|| sea_orm::DbErr::RecordNotFound(repository.id.clone()))?;
            set_proven_credential(&txn, self, existing, new.git_token.as_ref(), now).await?;
            start_over(&txn, app, &repository.id, now).await?;
        }
        txn.commit().await?;

        let repo_id = RepoId::parse(&repository.id).expect("stored repository ids are well formed");
        let view = self
            .subscription_of_app(app, &repo_id)
            .await?
            .ok_or_else(|| sea_orm::DbErr::RecordNotFound(repository.id.clone()))?;
        Ok((view, inserted == 1))
    }

    /// The app's subscriptions ordered by repository id, after the cursor
    /// `after` (a repository id), at most `limit` (all when `None`).
    pub async fn subscriptions_of_app(
        &self,
        app: &AppId,
        after: Option<&RepoId>,
        limit: Option<u64>,
    ) -> Result<Vec<SubscriptionView>, StoreError> {
        let mut query = subscription::Entity::find()
            .find_also_related(repository::Entity)
            .filter(subscription::Column::AppId.eq(app.as_str()))
            .order_by_asc(subscription::Column::RepositoryId)
            .limit(limit);
        if let Some(after) = after {
            query = query.filter(subscription::Column::RepositoryId.gt(after.as_str()));
        }
        let rows = query.all(&self.db).await?;
        self.views(rows).await
    }

    /// Every subscription to a repository, by app.
    pub async fn subscriptions_of_repository(
        &self,
        repo: &RepoId,
    ) -> Result<Vec<SubscriptionView>, StoreError> {
        let rows = subscription::Entity::find()
            .find_also_related(repository::Entity)
            .filter(subscription::Column::RepositoryId.eq(repo.as_str()))
            .order_by_asc(subscription::Column::AppId)
            .all(&self.db)
            .await?;
        self.views(rows).await
    }

    /// One subscription of the app; `None` when the app does not watch it
    /// (whether or not another app does).
    pub async fn subscription_of_app(
        &self,
        app: &AppId,
        repo: &RepoId,
    ) -> Result<Option<SubscriptionView>, StoreError> {
        let rows = subscription::Entity::find()
            .find_also_related(repository::Entity)
            .filter(subscription::Column::AppId.eq(app.as_str()))
            .filter(subscription::Column::RepositoryId.eq(repo.as_str()))
            .all(&self.db)
            .await?;
        Ok(self.views(rows).await?.pop())
    }

    async fn views(
        &self,
        rows: Vec<(subscription::Model, Option<repository::Model>)>,
    ) -> Result<Vec<SubscriptionView>, StoreError> {
        let rows: Vec<(subscription::Model, repository::Model)> = rows
            .into_iter()
            .filter_map(|(s, r)| r.map(|r| (s, r)))
            .collect();
        let subscription_ids: Vec<&str> = rows.iter().map(|(s, _)| s.id.as_str()).collect();
        let repository_ids: Vec<&str> = rows.iter().map(|(_, r)| r.id.as_str()).collect();
        let counts: HashMap<(String, entity::EventStatus), i64> = event::Entity::find()
            .select_only()
            .column(event::Column::SubscriptionId)
            .column(event::Column::Status)
            .column_as(super::count_rows(), "n")
            .filter(event::Column::SubscriptionId.is_in(subscription_ids))
            .filter(
                event::Column::Status
                    .is_in([entity::EventStatus::Pending, entity::EventStatus::Dead]),
            )
            .group_by(event::Column::SubscriptionId)
            .group_by(event::Column::Status)
            .into_tuple::<(String, entity::EventStatus, i64)>()
            .all(&self.db)
            .await?
            .into_iter()
            .map(|(sub, status, n)| ((sub, status), n))
            .collect();
        let mut breakers: HashMap<String, breaker::Model> = breaker::Entity::find()
            .filter(breaker::Column::Kind.eq(BreakerKind::Git))
            .filter(breaker::Column::SubjectId.is_in(repository_ids))
            .all(&self.db)
            .await?
            .into_iter()
            .map(|b| (b.subject_id.clone(), b))
            .collect();
        let count = |sub: &str, status: entity::EventStatus| -> u64 {
            counts
                .get(&(sub.to_owned(), status))
                .copied()
                .unwrap_or(0)
                .try_into()
                .unwrap_or(0)
        };
        Ok(rows
            .into_iter()
            .map(|(subscription, repository)| SubscriptionView {
                pending_events: count(&subscription.id, entity::EventStatus::Pending),
                failed_events: count(&subscription.id, entity::EventStatus::Dead),
                breaker: breakers.remove(&repository.id),
                repository,
                subscription,
            })
            .collect())
    }

    /// Ends the app's subscription (its events go with it) and deletes the
    /// repository when no other app watches it. `false` when there was none.
    pub async fn unsubscribe(&self, app: &AppId, repo: &RepoId) -> Result<bool, StoreError> {
        let txn = self.begin_write().await?;
        lock_repositories(&txn, &[repo.as_str().to_owned()]).await?;
        let deleted = subscription::Entity::delete_many()
            .filter(subscription::Column::AppId.eq(app.as_str()))
            .filter(subscription::Column::RepositoryId.eq(repo.as_str()))
            .exec(&txn)
            .await?;
        if deleted.rows_affected == 0 {
            return Ok(false);
        }
        delete_orphaned_repositories(&txn, &[repo.as_str().to_owned()]).await?;
        txn.commit().await?;
        Ok(true)
    }

    /// Replaces the app's git credential for a repository, which the caller
    /// has just proven, and clears the failure state: the subscription's
    /// error, its retry count, the repository's git breaker, and the
    /// repository becomes due at once. A subscriber that had lost access
    /// regains it. `false` when the app does not watch the repository.
    pub async fn update_git_token(
        &self,
        app: &AppId,
        repo: &RepoId,
        token: &SecretString,
    ) -> Result<bool, StoreError> {
        let txn = self.begin_write().await?;
        lock_repositories(&txn, &[repo.as_str().to_owned()]).await?;
        let Some(current) = subscription::Entity::find()
            .filter(subscription::Column::AppId.eq(app.as_str()))
            .filter(subscription::Column::RepositoryId.eq(repo.as_str()))
            .one(&txn)
            .await?
        else {
            return Ok(false);
        };
        let now = now_ms();
        set_proven_credential(&txn, self, current, Some(token), now).await?;
        reset_git_breaker(&txn, repo).await?;
        repository::Entity::update_many()
            .col_expr(repository::Column::NextScanAt, now.into())
            .col_expr(repository::Column::LastError, Option::<String>::None.into())
            .filter(repository::Column::Id.eq(repo.as_str()))
            .exec(&txn)
            .await?;
        txn.commit().await?;
        Ok(true)
    }

    /// The git credential of a subscription, decrypted.
    pub fn git_token(
        &self,
        subscription: &subscription::Model,
    ) -> Result<Option<SecretString>, StoreError> {
        subscription
            .git_token_ciphertext
            .as_deref()
            .map(|sealed| self.keys.open(sealed, &git_token_aad(&subscription.id)))
            .transpose()
            .map_err(StoreError::from)
    }
}

impl Store {
    pub async fn repository(&self, repo: &RepoId) -> Result<Option<repository::Model>, StoreError> {
        Ok(repository::Entity::find_by_id(repo.as_str())
            .one(&self.db)
            .await?)
    }

    /// Moves a repository's next scan to `at` (unix ms).
    /// A repository the configuration now forbids (its kind of URL was
    /// allowed when it was registered): nothing is fetched. The reason is
    /// its `last_error` and every subscriber's, whose subscription is
    /// `failed` (one paused by its endpoint's 410 stays paused); a scan that
    /// succeeds once the configuration allows it again heals them. Looked
    /// at again at `next_scan_at`. Written only while `lease` holds the
    /// repository's scan lease.
    pub async fn refuse_repository(
        &self,
        repo: &RepoId,
        lease: &LeaseToken,
        error: &str,
        next_scan_at: i64,
    ) -> Result<(), StoreError> {
        let now = now_ms();
        let txn = self.begin_write().await?;
        if lock_repositories(&txn, &[repo.as_str().to_owned()])
            .await?
            .is_empty()
        {
            return Ok(());
        }
        hold_scan(&txn, repo.as_str(), lease).await?;
        repository::Entity::update_many()
            .col_expr(repository::Column::LastError, Expr::value(error))
            .col_expr(repository::Column::NextScanAt, Expr::value(next_scan_at))
            .col_expr(repository::Column::LastScannedAt, Expr::value(now))
            .col_expr(repository::Column::UpdatedAt, Expr::value(now))
            .filter(repository::Column::Id.eq(repo.as_str()))
            .exec(&txn)
            .await?;
        subscription::Entity::update_many()
            .col_expr(subscription::Column::LastError, Expr::value(error))
            .col_expr(subscription::Column::UpdatedAt, Expr::value(now))
            .filter(subscription::Column::RepositoryId.eq(repo.as_str()))
            .exec(&txn)
            .await?;
        subscription::Entity::update_many()
            .col_expr(
                subscription::Column::Status,
                Expr::value(entity::SubscriptionStatus::Failed),
            )
            .filter(subscription::Column::RepositoryId.eq(repo.as_str()))
            .filter(subscription::Column::Status.ne(entity::SubscriptionStatus::Paused))
            .exec(&txn)
            .await?;
        txn.commit().await?;
        Ok(())
    }

    pub async fn reschedule(&self, repo: &RepoId, at: i64) -> Result<(), StoreError> {
        repository::Entity::update_many()
            .col_expr(repository::Column::NextScanAt, at.into())
            .filter(repository::Column::Id.eq(repo.as_str()))
            .exec(&self.db)
            .await?;
        Ok(())
    }
}

/// Forgets a repository's git breaker: the next scan is a normal one.
pub(crate) async fn reset_git_breaker<C: ConnectionTrait>(
    conn: &C,
    repo: &RepoId,
) -> Result<(), StoreError> {
    breaker::Entity::delete_many()
        .filter(breaker::Column::Kind.eq(BreakerKind::Git))
        .filter(breaker::Column::SubjectId.eq(repo.as_str()))
        .exec(conn)
        .await?;
    Ok(())
}

/// Stores a credential that was just proven to read the repository: access
/// granted and checked now; a subscriber that had lost access regains it
/// (the whole current tree again); one failed by git failures is cleared.
async fn set_proven_credential<C: ConnectionTrait>(
    conn: &C,
    store: &Store,
    current: subscription::Model,
    token: Option<&SecretString>,
    now: i64,
) -> Result<(), StoreError> {
    let sealed = token.map(|t| {
        store
            .keys
            .seal(t.expose_secret(), &git_token_aad(&current.id))
    });
    let lost_access = current.access != entity::AccessState::Granted;
    let status = if current.status == entity::SubscriptionStatus::Failed {
        if current.last_synced_commit.is_some() {
            entity::SubscriptionStatus::Synced
        } else {
            entity::SubscriptionStatus::PendingSnapshot
        }
    } else {
        current.status
    };
    let mut active = current.clone().into_active_model();
    active.git_token_ciphertext = Set(sealed);
    active.access_checked_at = Set(Some(now));
    active.last_error = Set(None);
    active.retry_count = Set(0);
    active.status = Set(status);
    active.updated_at = Set(now);
    let updated = active.update(conn).await?;
    if lost_access {
        regain(conn, updated, now).await?;
    }
    Ok(())
}

/// Deletes those of `candidates` that no subscription refers to any more.
pub(crate) async fn delete_orphaned_repositories<C: ConnectionTrait>(
    conn: &C,
    candidates: &[String],
) -> Result<u64, StoreError> {
    if candidates.is_empty() {
        return Ok(0);
    }
    let still_watched = Query::select()
        .column(subscription::Column::RepositoryId)
        .from(subscription::Entity)
        .and_where(Expr::col(subscription::Column::RepositoryId).is_in(candidates.iter().cloned()))
        .to_owned();
    let result = repository::Entity::delete_many()
        .filter(repository::Column::Id.is_in(candidates.iter().cloned()))
        .filter(repository::Column::Id.not_in_subquery(still_watched))
        .exec(conn)
        .await?;
    Ok(result.rows_affected)
}
