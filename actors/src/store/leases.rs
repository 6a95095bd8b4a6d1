//! Leases: a repository is scanned, and a subscription's events are delivered,
//! by one owner at a time (SPEC §10). A claim is one conditional `UPDATE`
//! (free or expired), so it is atomic on SQLite and PostgreSQL alike; an
//! instance that dies simply stops renewing and its leases expire.
//!
//! Every claim gets a token of its own ([`LeaseToken`]: the instance id and a
//! fresh ULID), never just the instance id: a lane or scan restarted inside
//! the same process is a new claimant, and the old one cannot mistake the new
//! lease for its own. Every write of a scan or a lane presents its token
//! ([`hold_scan`], [`hold_delivery`]) inside its transaction; a claimant
//! whose lease passed to someone else is refused with
//! [`StoreError::Fenced`] and stops.

use entity::{repository, subscription};
use sea_orm::sea_query::{Condition, Expr};
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect};

use super::{Store, StoreError};
use crate::clock::now_ms;
use crate::ids::{RepoId, SubscriptionId};

/// One claim of a lease: presented by every write of the work it covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseToken(String);

impl LeaseToken {
    fn new(instance: &str) -> Self {
        Self(format!("{instance}/{}", ulid::Ulid::generate()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for LeaseToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a scan's writes are conditional on: its lease, and the head commit
/// it started from (a scan never moves a repository from a head it did not
/// see).
#[derive(Debug, Clone)]
pub struct ScanFence {
    pub lease: LeaseToken,
    pub expected_head: Option<String>,
}

/// Inside a write transaction: proves that `token` still holds the
/// repository's scan lease, and locks the row until the commit.
pub(crate) async fn hold_scan<C: ConnectionTrait>(
    conn: &C,
    repo: &str,
    token: &LeaseToken,
) -> Result<(), StoreError> {
    let held = repository::Entity::update_many()
        .col_expr(
            repository::Column::ScanLeaseUntil,
            Expr::col(repository::Column::ScanLeaseUntil),
        )
        .filter(repository::Column::Id.eq(repo))
        .filter(repository::Column::ScanLeaseOwner.eq(token.as_str()))
        .filter(repository::Column::ScanLeaseUntil.gte(now_ms()))
        .exec(conn)
        .await?;
    if held.rows_affected == 1 {
        Ok(())
    } else {
        Err(StoreError::Fenced("the scan lease passed to another owner"))
    }
}

/// Inside a write transaction: proves that `token` still holds the
/// subscription's delivery lease, and locks the row until the commit.
pub(crate) async fn hold_delivery<C: ConnectionTrait>(
    conn: &C,
    subscription_id: &str,
    token: &LeaseToken,
) -> Result<(), StoreError> {
    let held = subscription::Entity::update_many()
        .col_expr(
            subscription::Column::DeliveryLeaseUntil,
            Expr::col(subscription::Column::DeliveryLeaseUntil),
        )
        .filter(subscription::Column::Id.eq(subscription_id))
        .filter(subscription::Column::DeliveryLeaseOwner.eq(token.as_str()))
        .filter(subscription::Column::DeliveryLeaseUntil.gte(now_ms()))
        .exec(conn)
        .await?;
    if held.rows_affected == 1 {
        Ok(())
    } else {
        Err(StoreError::Fenced(
            "the delivery lease passed to another owner",
        ))
    }
}

impl Store {
    /// Claims the scan lease of a repository for `ttl_ms` when it is free or
    /// expired; `None` when someone else holds it.
    pub async fn claim_scan(
        &self,
        repo: &RepoId,
        instance: &str,
        ttl_ms: i64,
    ) -> Result<Option<LeaseToken>, StoreError> {
        let now = now_ms();
        let token = LeaseToken::new(instance);
        let result = repository::Entity::update_many()
            .col_expr(
                repository::Column::ScanLeaseOwner,
                Expr::value(token.as_str()),
            )
            .col_expr(
                repository::Column::ScanLeaseUntil,
                Expr::value(now + ttl_ms),
            )
            .filter(repository::Column::Id.eq(repo.as_str()))
            .filter(free(
                repository::Column::ScanLeaseOwner,
                repository::Column::ScanLeaseUntil,
                now,
            ))
            .exec(&self.db)
            .await?;
        Ok((result.rows_affected == 1).then_some(token))
    }

    /// Extends a scan lease `token` still holds; `false` when it was lost.
    pub async fn renew_scan(
        &self,
        repo: &RepoId,
        token: &LeaseToken,
        ttl_ms: i64,
    ) -> Result<bool, StoreError> {
        let now = now_ms();
        let result = repository::Entity::update_many()
            .col_expr(
                repository::Column::ScanLeaseUntil,
                Expr::value(now + ttl_ms),
            )
            .filter(repository::Column::Id.eq(repo.as_str()))
            .filter(repository::Column::ScanLeaseOwner.eq(token.as_str()))
            .filter(repository::Column::ScanLeaseUntil.gte(now))
            .exec(&self.db)
            .await?;
        Ok(result.rows_affected == 1)
    }

    /// Gives up a scan lease, if `token` still holds it.
    pub async fn release_scan(&self, repo: &RepoId, token: &LeaseToken) -> Result<(), StoreError> {
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
            .filter(repository::Column::ScanLeaseOwner.eq(token.as_str()))
            .exec(&self.db)
            .await?;
        Ok(())
    }

    /// Claims the delivery lease of a subscription for `ttl_ms` when it is
    /// free or expired; `None` when someone else holds it.
    pub async fn claim_delivery(
        &self,
        subscription: &SubscriptionId,
        instance: &str,
        ttl_ms: i64,
    ) -> Result<Option<LeaseToken>, StoreError> {
        let now = now_ms();
        let token = LeaseToken::new(instance);
        let result = subscription::Entity::update_many()
            .col_expr(
                subscription::Column::DeliveryLeaseOwner,
                Expr::value(token.as_str()),
            )
            .col_expr(
                subscription::Column::DeliveryLeaseUntil,
                Expr::value(now + ttl_ms),
            )
            .filter(subscription::Column::Id.eq(subscription.as_str()))
            .filter(free(
                subscription::Column::DeliveryLeaseOwner,
                subscription::Column::DeliveryLeaseUntil,
                now,
            ))
            .exec(&self.db)
            .await?;
        Ok((result.rows_affected == 1).then_some(token))
    }

    /// Extends a delivery lease `token` still holds; `false` when it was lost.
    pub async fn renew_delivery(
        &self,
        subscription: &SubscriptionId,
        token: &LeaseToken,
        ttl_ms: i64,
    ) -> Result<bool, StoreError> {
        let now = now_ms();
        let result = subscription::Entity::update_many()
            .col_expr(
                subscription::Column::DeliveryLeaseUntil,
                Expr::value(now + ttl_ms),
            )
            .filter(subscription::Column::Id.eq(subscription.as_str()))
            .filter(subscription::Column::DeliveryLeaseOwner.eq(token.as_str()))
            .filter(subscription::Column::DeliveryLeaseUntil.gte(now))
            .exec(&self.db)
            .await?;
        Ok(result.rows_affected == 1)
    }

    /// Gives up a delivery lease, if `token` still holds it.
    pub async fn release_delivery(
        &self,
        subscription: &SubscriptionId,
        token: &LeaseToken,
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
            .filter(subscription::Column::DeliveryLeaseOwner.eq(token.as_str()))
            .exec(&self.db)
            .await?;
        Ok(())
    }

    /// Releases every lease an earlier run of `instance` left behind. Called
    /// once at start-up, before the engine runs: an instance id belongs to
    /// one data directory, so whatever held these leases is gone, and its
    /// work is taken up at once instead of after the leases expire.
    pub async fn release_leases_of(&self, instance: &str) -> Result<u64, StoreError> {
        let mine = format!("{instance}/%");
        let scans = repository::Entity::update_many()
            .col_expr(
                repository::Column::ScanLeaseOwner,
                Expr::value(Option::<String>::None),
            )
            .col_expr(
                repository::Column::ScanLeaseUntil,
                Expr::value(Option::<i64>::None),
            )
            .filter(repository::Column::ScanLeaseOwner.like(mine.as_str()))
            .exec(&self.db)
            .await?;
        let deliveries = subscription::Entity::update_many()
            .col_expr(
                subscription::Column::DeliveryLeaseOwner,
                Expr::value(Option::<String>::None),
            )
            .col_expr(
                subscription::Column::DeliveryLeaseUntil,
                Expr::value(Option::<i64>::None),
            )
            .filter(subscription::Column::DeliveryLeaseOwner.like(mine.as_str()))
            .exec(&self.db)
            .await?;
        Ok(scans.rows_affected + deliveries.rows_affected)
    }

    /// Repositories whose next scan is due at `now`, earliest first, that
    /// nobody is scanning.
    pub async fn due_repositories(
        &self,
        now: i64,
        limit: u64,
    ) -> Result<Vec<repository::Model>, StoreError> {
        Ok(repository::Entity::find()
            .filter(repository::Column::NextScanAt.lte(now))
            .filter(free(
                repository::Column::ScanLeaseOwner,
                repository::Column::ScanLeaseUntil,
                now,
            ))
            .order_by_asc(repository::Column::NextScanAt)
            .limit(limit)
            .all(&self.db)
            .await?)
    }
}

/// A lease nobody holds: no owner, or expired.
pub(crate) fn free<O: ColumnTrait, U: ColumnTrait>(owner: O, until: U, now: i64) -> Condition {
    Condition::any().add(owner.is_null()).add(until.lt(now))
}
