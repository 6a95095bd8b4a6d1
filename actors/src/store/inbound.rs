//! Scans asked for from outside: inbound push webhooks, stored first
//! (deduplicated by provider and delivery id) and processed later, and an
//! app's request to scan one of its repositories now. A hook whose
//! processing has not been recorded is still `received`, so one stored
//! before a crash is processed after the restart.

use entity::{inbound_hook, repository, subscription};
use sea_orm::sea_query::{Expr, ExprTrait, Func};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DbErr, EntityTrait, FromQueryResult,
    PaginatorTrait, QueryFilter, QueryOrder, QuerySelect, TryInsertResult,
};

use super::{Store, StoreError, lock_repositories, page_offset};
use crate::clock::now_ms;
use crate::ids::{AppId, HookId, RepoId};

/// A verified hook, as the HTTP layer hands it over.
#[derive(Debug, Clone)]
pub struct NewHook {
    pub provider: entity::Provider,
    pub delivery_id: String,
    pub event_type: String,
    pub body: Vec<u8>,
}

/// What storing a hook did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stored {
    New(HookId),
    /// The provider sent this delivery before: the first one's id.
    Duplicate(String),
}

/// A stored hook as operators list it: everything but the body (up to
/// `inbound.max_body_bytes` each).
#[derive(Debug, Clone, FromQueryResult)]
pub struct HookSummary {
    pub id: String,
    pub provider: entity::Provider,
    pub delivery_id: String,
    pub event_type: String,
    pub status: entity::HookStatus,
    /// What was done, or why nothing (why it is invalid).
    pub result: Option<String>,
    pub received_at: i64,
    pub processed_at: Option<i64>,
}

/// Which stored hooks to list; `None` is any.
#[derive(Debug, Clone, Default)]
pub struct HookFilter {
    pub provider: Option<entity::Provider>,
    pub status: Option<entity::HookStatus>,
}

/// How the processing of one hook ended.
#[derive(Debug, Clone)]
pub struct HookResult {
    pub status: entity::HookStatus,
    /// For operators: what was done, or why nothing.
    pub result: String,
    /// Repositories made due now (they are scanned at once).
    pub due: Vec<RepoId>,
}

impl Store {
    /// Stores a hook unless its delivery id was seen before.
    pub async fn store_hook(&self, hook: NewHook) -> Result<Stored, StoreError> {
        let id = HookId::generate();
        let row = inbound_hook::ActiveModel {
            id: Set(id.as_str().to_owned()),
            provider: Set(hook.provider),
            delivery_id: Set(hook.delivery_id.clone()),
            event_type: Set(hook.event_type),
            body: Set(hook.body),
            status: Set(entity::HookStatus::Received),
            result: Set(None),
            received_at: Set(now_ms()),
            processed_at: Set(None),
        };
        let inserted = inbound_hook::Entity::insert(row)
            .on_conflict_do_nothing_on([
                inbound_hook::Column::Provider,
                inbound_hook::Column::DeliveryId,
            ])
            .exec_without_returning(&self.db)
            .await?;
        if matches!(inserted, TryInsertResult::Inserted(n) if n > 0) {
            return Ok(Stored::New(id));
        }
        let first = inbound_hook::Entity::find()
            .select_only()
            .column(inbound_hook::Column::Id)
            .filter(inbound_hook::Column::Provider.eq(hook.provider))
            .filter(inbound_hook::Column::DeliveryId.eq(&hook.delivery_id))
            .into_tuple::<String>()
            .one(&self.db)
            .await?;
        Ok(Stored::Duplicate(first.unwrap_or_default()))
    }

    /// Hooks not processed yet, oldest first.
    pub async fn pending_hooks(&self, limit: u64) -> Result<Vec<inbound_hook::Model>, StoreError> {
        Ok(inbound_hook::Entity::find()
            .filter(inbound_hook::Column::Status.eq(entity::HookStatus::Received))
            .order_by_asc(inbound_hook::Column::ReceivedAt)
            .order_by_asc(inbound_hook::Column::Id)
            .limit(limit)
            .all(&self.db)
            .await?)
    }

    /// Stored hooks, newest first, a numbered page at a time, with the
    /// total the filter matches.
    pub async fn list_hooks(
        &self,
        filter: &HookFilter,
        page: u64,
        per_page: u64,
    ) -> Result<(Vec<HookSummary>, u64), StoreError> {
        let mut query = inbound_hook::Entity::find();
        if let Some(provider) = filter.provider {
            query = query.filter(inbound_hook::Column::Provider.eq(provider));
        }
        if let Some(status) = filter.status {
            query = query.filter(inbound_hook::Column::Status.eq(status));
        }
        let total = query.clone().count(&self.db).await?;
        let Some(offset) = page_offset(page, per_page) else {
            return Ok((Vec::new(), total));
        };
        let hooks = query
            .select_only()
            .columns([
                inbound_hook::Column::Id,
                inbound_hook::Column::Provider,
                inbound_hook::Column::DeliveryId,
                inbound_hook::Column::EventType,
                inbound_hook::Column::Status,
                inbound_hook::Column::Result,
                inbound_hook::Column::ReceivedAt,
                inbound_hook::Column::ProcessedAt,
            ])
            .order_by_desc(inbound_hook::Column::ReceivedAt)
            .order_by_desc(inbound_hook::Column::Id)
            .offset(offset)
            .limit(per_page)
            .into_model::<HookSummary>()
            .all(&self.db)
            .await?;
        Ok((hooks, total))
    }

    /// One stored hook (operators, tests).
    pub async fn hook(&self, id: &HookId) -> Result<Option<inbound_hook::Model>, StoreError> {
        Ok(inbound_hook::Entity::find_by_id(id.as_str())
            .one(&self.db)
            .await?)
    }

    /// Repositories whose canonical or fetch URL ends with `path` (lower
    /// case, e.g. `/owner/name`), ignoring case: the candidates for a hook's
    /// URLs, which the caller then compares exactly.
    pub async fn repositories_by_path(
        &self,
        path: &str,
    ) -> Result<Vec<repository::Model>, StoreError> {
        // LIKE's wildcards in a path only widen the candidates; the caller
        // compares exactly.
        let pattern = |suffix: &str| format!("%{suffix}");
        let lower = |column: repository::Column| Expr::expr(Func::lower(Expr::col(column)));
        Ok(repository::Entity::find()
            .filter(
                sea_orm::Condition::any()
                    .add(lower(repository::Column::Url).like(pattern(path)))
                    .add(lower(repository::Column::FetchUrl).like(pattern(path)))
                    .add(lower(repository::Column::FetchUrl).like(pattern(&format!("{path}.git")))),
            )
            .order_by_asc(repository::Column::Id)
            .limit(1000)
            .all(&self.db)
            .await?)
    }

    /// Records how a hook was processed and makes its repositories due now,
    /// in one transaction, so the scan happens even if the poke that follows
    /// is lost (the scheduler's tick finds due repositories). `false` when
    /// another instance processed the hook first.
    pub async fn finish_hook(&self, id: &HookId, outcome: &HookResult) -> Result<bool, StoreError> {
        let now = now_ms();
        let txn = self.begin_write().await?;
        let due: Vec<String> = outcome.due.iter().map(|r| r.as_str().to_owned()).collect();
        lock_repositories(&txn, &due).await?;
        let claimed = inbound_hook::Entity::update_many()
            .col_expr(inbound_hook::Column::Status, Expr::value(outcome.status))
            .col_expr(
                inbound_hook::Column::Result,
                Expr::value(Some(outcome.result.clone())),
            )
            .col_expr(inbound_hook::Column::ProcessedAt, Expr::value(Some(now)))
            .filter(inbound_hook::Column::Id.eq(id))
            .filter(inbound_hook::Column::Status.eq(entity::HookStatus::Received))
            .exec(&txn)
            .await?
            .rows_affected
            == 1;
        if claimed {
            make_due(&txn, due, now).await?;
        }
        txn.commit().await?;
        Ok(claimed)
    }

    /// Makes a repository the app is subscribed to due now (the caller then
    /// pokes the scheduler; its tick would find it anyway). `false` when the
    /// app does not watch it.
    pub async fn request_scan(&self, app: &AppId, repo: &RepoId) -> Result<bool, StoreError> {
        let subscribed = subscription::Entity::find()
            .filter(subscription::Column::AppId.eq(app.as_str()))
            .filter(subscription::Column::RepositoryId.eq(repo.as_str()))
            .count(&self.db)
            .await?
            > 0;
        if subscribed {
            make_due(&self.db, vec![repo.as_str().to_owned()], now_ms()).await?;
        }
        Ok(subscribed)
    }

    /// Makes a repository due now, for an operator; whether there is one.
    pub async fn scan_now(&self, repo: &RepoId) -> Result<bool, StoreError> {
        let exists = repository::Entity::find_by_id(repo.as_str())
            .count(&self.db)
            .await?
            > 0;
        if exists {
            make_due(&self.db, vec![repo.as_str().to_owned()], now_ms()).await?;
        }
        Ok(exists)
    }

    /// Deletes processed hooks received before `before` (retention).
    pub async fn prune_hooks(&self, before: i64) -> Result<u64, StoreError> {
        Ok(inbound_hook::Entity::delete_many()
            .filter(inbound_hook::Column::Status.ne(entity::HookStatus::Received))
            .filter(inbound_hook::Column::ReceivedAt.lt(before))
            .exec(&self.db)
            .await?
            .rows_affected)
    }
}

/// Makes repositories due at `now` unless they already are.
async fn make_due<C: ConnectionTrait>(conn: &C, ids: Vec<String>, now: i64) -> Result<(), DbErr> {
    if ids.is_empty() {
        return Ok(());
    }
    repository::Entity::update_many()
        .col_expr(repository::Column::NextScanAt, Expr::value(now))
        .filter(repository::Column::Id.is_in(ids))
        .filter(repository::Column::NextScanAt.gt(now))
        .exec(conn)
        .await?;
    Ok(())
}
