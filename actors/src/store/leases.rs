//! Leases: a repository is scanned, and a subscription's events are delivered,
//! by one owner at a time (docs/operations.md, Several instances on one PostgreSQL). A
//! claim is one conditional `UPDATE` (free or expired), so it is atomic on
//! SQLite and PostgreSQL alike; an instance that dies simply stops renewing and
//! its leases expire.
//!
//! Every claim gets a token of its own ([`LeaseToken`]: the instance id and a
//! fresh ULID), never just the instance id: a lane or scan restarted inside
//! the same process is a new claimant, and the old one cannot mistake the new
//! lease for its own. Every write of a scan or a lane presents its token
//! ([`hold_scan`], [`hold_delivery`]) inside its transaction; a claimant
//! whose lease passed to someone else is refused with
//! [`StoreError::Fenced`] and stops.

use std::time::Duration;

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
    pub(crate) fn new(instance: &str) -> Self {
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

/// A table whose rows are leased: its id column and the lease's two columns.
/// Scans lease repositories, lanes lease subscriptions; the mechanism is one.
trait Leased: EntityTrait {
    const ID: Self::Column;
    const OWNER: Self::Column;
    const UNTIL: Self::Column;
    /// Why a write under a lost lease is refused.
    const LOST: &'static str;
}

impl Leased for repository::Entity {
    const ID: Self::Column = repository::Column::Id;
    const OWNER: Self::Column = repository::Column::ScanLeaseOwner;
    const UNTIL: Self::Column = repository::Column::ScanLeaseUntil;
    const LOST: &'static str = "the scan lease passed to another owner";
}

impl Leased for subscription::Entity {
    const ID: Self::Column = subscription::Column::Id;
    const OWNER: Self::Column = subscription::Column::DeliveryLeaseOwner;
    const UNTIL: Self::Column = subscription::Column::DeliveryLeaseUntil;
    const LOST: &'static str = "the delivery lease passed to another owner";
}

/// Claims row `id` for `ttl_ms` when its lease is free or expired.
async fn claim<E: Leased, C: ConnectionTrait>(
    conn: &C,
    id: &str,
    instance: &str,
    ttl_ms: i64,
) -> Result<Option<LeaseToken>, StoreError> {
    let now = now_ms();
    let token = LeaseToken::new(instance);
    let result = E::update_many()
        .col_expr(E::OWNER, Expr::value(token.as_str()))
        .col_expr(E::UNTIL, Expr::value(now + ttl_ms))
        .filter(E::ID.eq(id))
        .filter(free(E::OWNER, E::UNTIL, now))
        .exec(conn)
        .await?;
    Ok((result.rows_affected == 1).then_some(token))
}

/// Sets the lease's expiry to `until` (or keeps it, `None`) where `token`
/// still holds it; whether it does.
async fn held<E: Leased, C: ConnectionTrait>(
    conn: &C,
    id: &str,
    token: &LeaseToken,
    until: Option<i64>,
) -> Result<bool, StoreError> {
    let expiry = match until {
        Some(until) => Expr::value(until),
        None => Expr::col(E::UNTIL),
    };
    let result = E::update_many()
        .col_expr(E::UNTIL, expiry)
        .filter(E::ID.eq(id))
        .filter(E::OWNER.eq(token.as_str()))
        .filter(E::UNTIL.gte(now_ms()))
        .exec(conn)
        .await?;
    Ok(result.rows_affected == 1)
}

/// Frees the leases of the rows `rows` selects.
async fn release<E: Leased, C: ConnectionTrait>(
    conn: &C,
    rows: Condition,
) -> Result<u64, StoreError> {
    let result = E::update_many()
        .col_expr(E::OWNER, Expr::value(Option::<String>::None))
        .col_expr(E::UNTIL, Expr::value(Option::<i64>::None))
        .filter(rows)
        .exec(conn)
        .await?;
    Ok(result.rows_affected)
}

/// How often a release that meets a database error is tried (the waits
/// between tries doubling from [`RELEASE_RETRY`]): a lease left behind holds
/// its work until it expires (`cluster.lease_ttl`, 90 s by default) though
/// its holder is gone, so a connection cut at the wrong instant would stall
/// a repository or a subscription for that long.
const RELEASE_ATTEMPTS: u32 = 5;
const RELEASE_RETRY: Duration = Duration::from_millis(100);

/// [`release`], tried again on a database error.
async fn release_retrying<E: Leased, C: ConnectionTrait>(
    conn: &C,
    rows: Condition,
) -> Result<u64, StoreError> {
    let mut attempt = 1;
    loop {
        match release::<E, C>(conn, rows.clone()).await {
            Err(StoreError::Db(_)) if attempt < RELEASE_ATTEMPTS => {
                tokio::time::sleep(RELEASE_RETRY.saturating_mul(1 << attempt)).await;
                attempt += 1;
            }
            done => return done,
        }
    }
}

/// Inside a write transaction: proves that `token` still holds row `id`'s
/// lease, and locks the row until the commit.
async fn hold<E: Leased, C: ConnectionTrait>(
    conn: &C,
    id: &str,
    token: &LeaseToken,
) -> Result<(), StoreError> {
    if held::<E, C>(conn, id, token, None).await? {
        Ok(())
    } else {
        Err(StoreError::Fenced(E::LOST))
    }
}

/// Inside a write transaction: proves that `token` still holds the
/// repository's scan lease, and locks the row until the commit.
pub(crate) async fn hold_scan<C: ConnectionTrait>(
    conn: &C,
    repo: &str,
    token: &LeaseToken,
) -> Result<(), StoreError> {
    hold::<repository::Entity, C>(conn, repo, token).await
}

/// Inside a write transaction: proves that `token` still holds the
/// subscription's delivery lease, and locks the row until the commit.
pub(crate) async fn hold_delivery<C: ConnectionTrait>(
    conn: &C,
    subscription_id: &str,
    token: &LeaseToken,
) -> Result<(), StoreError> {
    hold::<subscription::Entity, C>(conn, subscription_id, token).await
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
        claim::<repository::Entity, _>(&self.db, repo.as_str(), instance, ttl_ms).await
    }

    /// Extends a scan lease `token` still holds; `false` when it was lost.
    pub async fn renew_scan(
        &self,
        repo: &RepoId,
        token: &LeaseToken,
        ttl_ms: i64,
    ) -> Result<bool, StoreError> {
        let until = now_ms() + ttl_ms;
        held::<repository::Entity, _>(&self.db, repo.as_str(), token, Some(until)).await
    }

    /// Gives up a scan lease, if `token` still holds it.
    pub async fn release_scan(&self, repo: &RepoId, token: &LeaseToken) -> Result<(), StoreError> {
        let rows = Condition::all()
            .add(repository::Column::Id.eq(repo.as_str()))
            .add(repository::Column::ScanLeaseOwner.eq(token.as_str()));
        release_retrying::<repository::Entity, _>(&self.db, rows).await?;
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
        claim::<subscription::Entity, _>(&self.db, subscription.as_str(), instance, ttl_ms).await
    }

    /// Extends a delivery lease `token` still holds; `false` when it was lost.
    pub async fn renew_delivery(
        &self,
        subscription: &SubscriptionId,
        token: &LeaseToken,
        ttl_ms: i64,
    ) -> Result<bool, StoreError> {
        let until = now_ms() + ttl_ms;
        held::<subscription::Entity, _>(&self.db, subscription.as_str(), token, Some(until)).await
    }

    /// Gives up a delivery lease, if `token` still holds it.
    pub async fn release_delivery(
        &self,
        subscription: &SubscriptionId,
        token: &LeaseToken,
    ) -> Result<(), StoreError> {
        let rows = Condition::all()
            .add(subscription::Column::Id.eq(subscription.as_str()))
            .add(subscription::Column::DeliveryLeaseOwner.eq(token.as_str()));
        release_retrying::<subscription::Entity, _>(&self.db, rows).await?;
        Ok(())
    }

    /// Releases every lease an earlier run of `instance` left behind. Called
    /// once at start-up, before the engine runs: an instance id belongs to
    /// one data directory, so whatever held these leases is gone, and its
    /// work is taken up at once instead of after the leases expire.
    pub async fn release_leases_of(&self, instance: &str) -> Result<u64, StoreError> {
        let mine = format!("{instance}/%");
        let scans = release::<repository::Entity, _>(
            &self.db,
            Condition::all().add(repository::Column::ScanLeaseOwner.like(mine.as_str())),
        )
        .await?;
        let deliveries = release::<subscription::Entity, _>(
            &self.db,
            Condition::all().add(subscription::Column::DeliveryLeaseOwner.like(mine.as_str())),
        )
        .await?;
        Ok(scans + deliveries)
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
