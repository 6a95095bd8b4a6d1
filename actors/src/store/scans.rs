//! Each repository's recent scans, kept for its console page: when a scan
//! ran, how long it took, the commit it read, what changed and how it
//! ended. Polls in a row that find the branch at the same commit share
//! one row that counts them, so the page shows what happened rather than
//! a screen of identical polls. Only the latest [`KEPT_PER_REPOSITORY`]
//! rows of a repository are kept: each new one removes the oldest beyond
//! them.

use std::collections::HashMap;

use entity::{BreakerKind, ScanEnd, app, breaker, repository, scan};
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect};

use super::subscriptions::SubscriptionView;
use super::{Store, StoreError};
use crate::ids::{RepoId, ScanId};

/// Scans kept per repository.
pub const KEPT_PER_REPOSITORY: u64 = 50;

/// One scan, as the watcher saw it end.
#[derive(Debug, Clone)]
pub struct ScanRecord {
    pub started_at: i64,
    pub duration_ms: i64,
    pub outcome: ScanEnd,
    pub commit_sha: Option<String>,
    pub changes: i64,
    pub events: i64,
    pub error: Option<String>,
}

/// Everything a repository's console page shows.
#[derive(Debug, Clone)]
pub struct RepositoryPage {
    pub repository: repository::Model,
    /// Its git breaker, when it has one.
    pub breaker: Option<breaker::Model>,
    /// Each subscriber with its app's name.
    pub subscribers: Vec<(SubscriptionView, Option<String>)>,
    /// Newest first.
    pub scans: Vec<scan::Model>,
}

impl Store {
    /// Records a scan of `repository` that just ended, and forgets its
    /// scans older than the latest [`KEPT_PER_REPOSITORY`].
    pub async fn record_scan(
        &self,
        repository: &RepoId,
        record: ScanRecord,
    ) -> Result<(), StoreError> {
        if record.outcome == ScanEnd::Unchanged {
            let latest = scan::Entity::find()
                .filter(scan::Column::RepositoryId.eq(repository.as_str()))
                .order_by_desc(scan::Column::Id)
                .one(&self.db)
                .await?;
            if let Some(latest) = latest.filter(|latest| {
                latest.outcome == ScanEnd::Unchanged && latest.commit_sha == record.commit_sha
            }) {
                scan::Entity::update_many()
                    .col_expr(scan::Column::Times, Expr::col(scan::Column::Times).add(1))
                    .col_expr(scan::Column::LastStartedAt, Expr::value(record.started_at))
                    .col_expr(scan::Column::DurationMs, Expr::value(record.duration_ms))
                    .filter(scan::Column::Id.eq(latest.id))
                    .exec(&self.db)
                    .await?;
                return Ok(());
            }
        }
        scan::Entity::insert(scan::ActiveModel {
            id: Set(ScanId::generate().into_string()),
            repository_id: Set(repository.as_str().to_owned()),
            started_at: Set(record.started_at),
            last_started_at: Set(record.started_at),
            times: Set(1),
            duration_ms: Set(record.duration_ms),
            outcome: Set(record.outcome),
            commit_sha: Set(record.commit_sha),
            changes: Set(record.changes),
            events: Set(record.events),
            error: Set(record.error),
        })
        .exec_without_returning(&self.db)
        .await?;
        let oldest_kept: Option<String> = scan::Entity::find()
            .select_only()
            .column(scan::Column::Id)
            .filter(scan::Column::RepositoryId.eq(repository.as_str()))
            .order_by_desc(scan::Column::Id)
            .offset(KEPT_PER_REPOSITORY - 1)
            .into_tuple()
            .one(&self.db)
            .await?;
        if let Some(oldest_kept) = oldest_kept {
            scan::Entity::delete_many()
                .filter(scan::Column::RepositoryId.eq(repository.as_str()))
                .filter(scan::Column::Id.lt(oldest_kept))
                .exec(&self.db)
                .await?;
        }
        Ok(())
    }

    /// A repository's page: the repository, its git breaker, its
    /// subscribers and its latest `scans`; `None` when there is no such
    /// repository.
    pub async fn repository_page(
        &self,
        repo: &RepoId,
        scans: u64,
    ) -> Result<Option<RepositoryPage>, StoreError> {
        let Some(repository) = repository::Entity::find_by_id(repo.as_str())
            .one(&self.db)
            .await?
        else {
            return Ok(None);
        };
        let breaker = self.breaker(BreakerKind::Git, repo.as_str()).await?;
        let subscriptions = self.subscriptions_of_repository(repo).await?;
        let names: HashMap<String, String> = app::Entity::find()
            .select_only()
            .column(app::Column::Id)
            .column(app::Column::Name)
            .filter(
                app::Column::Id.is_in(subscriptions.iter().map(|s| s.subscription.app_id.as_str())),
            )
            .into_tuple::<(String, String)>()
            .all(&self.db)
            .await?
            .into_iter()
            .collect();
        let subscribers = subscriptions
            .into_iter()
            .map(|view| {
                let name = names.get(&view.subscription.app_id).cloned();
                (view, name)
            })
            .collect();
        let scans = scan::Entity::find()
            .filter(scan::Column::RepositoryId.eq(repo.as_str()))
            .order_by_desc(scan::Column::Id)
            .limit(scans)
            .all(&self.db)
            .await?;
        Ok(Some(RepositoryPage {
            repository,
            breaker,
            subscribers,
            scans,
        }))
    }
}
