//! Leases: a repository is scanned, and a subscription's events are delivered,
//! by one owner at a time (SPEC §10). A claim is one conditional `UPDATE`
//! (free, expired, or already ours), so it is atomic on SQLite and PostgreSQL
//! alike; an instance that dies simply stops renewing and its leases expire.

use entity::{repository, subscription};
use sea_orm::sea_query::{Condition, Expr};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect};

use super::{Store, StoreError};
use crate::clock::now_ms;
use crate::ids::{RepoId, SubscriptionId};

impl Store {
    /// Claims (or renews) the scan lease of a repository for `ttl_ms`.
    pub async fn claim_scan(
        &self,
        repo: &RepoId,
        owner: &str,
        ttl_ms: i64,
    ) -> Result<bool, StoreError> {
        let now = now_ms();
        let claimable = Condition::any()
            .add(repository::Column::ScanLeaseOwner.is_null())
            .add(repository::Column::ScanLeaseOwner.eq(owner))
            .add(repository::Column::ScanLeaseUntil.lt(now));
        let result = repository::Entity::update_many()
            .col_expr(repository::Column::ScanLeaseOwner, Expr::value(owner))
            .col_expr(
                repository::Column::ScanLeaseUntil,
                Expr::value(now + ttl_ms),
            )
            .filter(repository::Column::Id.eq(repo.as_str()))
            .filter(claimable)
            .exec(&self.db)
            .await?;
        Ok(result.rows_affected == 1)
    }

    /// Gives up a scan lease held by `owner`.
    pub async fn release_scan(&self, repo: &RepoId, owner: &str) -> Result<(), StoreError> {
        repository::Entity::update_many()
            .col_expr(
                repository::Column::ScanLeaseOwner,
                Expr::value(Option::<String>::None),
            )
            .col_expr(
                repository::Column::ScanLeaseUntil,
                Expr::value(Option::<i64>::None),
            )
            .filter(repository::Column::Id.eq(repo.as_str()))
            .filter(repository::Column::ScanLeaseOwner.eq(owner))
            .exec(&self.db)
            .await?;
        Ok(())
    }

    /// Claims (or renews) the delivery lease of a subscription for `ttl_ms`.
    pub async fn claim_delivery(
        &self,
        subscription: &SubscriptionId,
        owner: &str,
        ttl_ms: i64,
    ) -> Result<bool, StoreError> {
        let now = now_ms();
        let claimable = Condition::any()
            .add(subscription::Column::DeliveryLeaseOwner.is_null())
            .add(subscription::Column::DeliveryLeaseOwner.eq(owner))
            .add(subscription::Column::DeliveryLeaseUntil.lt(now));
        let result = subscription::Entity::update_many()
            .col_expr(subscription::Column::DeliveryLeaseOwner, Expr::value(owner))
            .col_expr(
                subscription::Column::DeliveryLeaseUntil,
                Expr::value(now + ttl_ms),
            )
            .filter(subscription::Column::Id.eq(subscription.as_str()))
            .filter(claimable)
            .exec(&self.db)
            .await?;
        Ok(result.rows_affected == 1)
    }

    /// Gives up a delivery lease held by `owner`.
    pub async fn release_delivery(
        &self,
        subscription: &SubscriptionId,
        owner: &str,
    ) -> Result<(), StoreError> {
        subscription::Entity::update_many()
            .col_expr(
                subscription::Column::DeliveryLeaseOwner,
                Expr::value(Option::<String>::None),
            )
            .col_expr(
                subscription::Column::DeliveryLeaseUntil,
                Expr::value(Option::<i64>::None),
            )
            .filter(subscription::Column::Id.eq(subscription.as_str()))
            .filter(subscription::Column::DeliveryLeaseOwner.eq(owner))
            .exec(&self.db)
            .await?;
        Ok(())
    }

    /// Repositories whose next scan is due at `now`, earliest first, that no
    /// other instance is scanning (`owner`'s own leases count as free, as
    /// after a restart).
    pub async fn due_repositories(
        &self,
        owner: &str,
        now: i64,
        limit: u64,
    ) -> Result<Vec<repository::Model>, StoreError> {
        let free = Condition::any()
            .add(repository::Column::ScanLeaseOwner.is_null())
            .add(repository::Column::ScanLeaseOwner.eq(owner))
            .add(repository::Column::ScanLeaseUntil.lt(now));
        Ok(repository::Entity::find()
            .filter(repository::Column::NextScanAt.lte(now))
            .filter(free)
            .order_by_asc(repository::Column::NextScanAt)
            .limit(limit)
            .all(&self.db)
            .await?)
    }
}
