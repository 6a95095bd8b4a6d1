//! Persisted circuit-breaker rows.

use entity::{BreakerKind, breaker};
use sea_orm::sea_query::{Expr, OnConflict};
use sea_orm::{ColumnTrait, Condition, EntityTrait, IntoActiveModel, QueryFilter};

use super::{Store, StoreError};

impl Store {
    pub async fn breaker(
        &self,
        kind: BreakerKind,
        subject: &str,
    ) -> Result<Option<breaker::Model>, StoreError> {
        Ok(breaker::Entity::find()
            .filter(breaker::Column::Kind.eq(kind))
            .filter(breaker::Column::SubjectId.eq(subject))
            .one(&self.db)
            .await?)
    }

    pub async fn save_breaker(&self, row: breaker::Model) -> Result<(), StoreError> {
        breaker::Entity::insert(row.into_active_model())
            .on_conflict(
                OnConflict::columns([breaker::Column::Kind, breaker::Column::SubjectId])
                    .update_columns([
                        breaker::Column::State,
                        breaker::Column::ConsecutiveFailures,
                        breaker::Column::Openings,
                        breaker::Column::OpenedAt,
                        breaker::Column::CooldownUntil,
                        breaker::Column::LastErrorClass,
                        breaker::Column::LastError,
                        breaker::Column::UpdatedAt,
                        breaker::Column::ProbeUntil,
                    ])
                    .to_owned(),
            )
            .exec_without_returning(&self.db)
            .await?;
        Ok(())
    }

    /// Claims the one probe of an open breaker whose cooldown is over, until
    /// `probe_until`: `false` when it is not open, still cooling down, or
    /// someone (another instance) holds an unexpired probe.
    pub async fn claim_breaker_probe(
        &self,
        kind: BreakerKind,
        subject: &str,
        probe_until: i64,
    ) -> Result<bool, StoreError> {
        let now = crate::clock::now_ms();
        let claimed = breaker::Entity::update_many()
            .col_expr(breaker::Column::ProbeUntil, Expr::value(probe_until))
            .filter(breaker::Column::Kind.eq(kind))
            .filter(breaker::Column::SubjectId.eq(subject))
            .filter(breaker::Column::State.ne(entity::BreakerStatus::Closed))
            .filter(breaker::Column::CooldownUntil.lte(now))
            .filter(
                Condition::any()
                    .add(breaker::Column::ProbeUntil.is_null())
                    .add(breaker::Column::ProbeUntil.lt(now)),
            )
            .exec(&self.db)
            .await?;
        Ok(claimed.rows_affected == 1)
    }

    /// Closes a breaker (a success): its row is removed.
    pub async fn close_breaker(&self, kind: BreakerKind, subject: &str) -> Result<(), StoreError> {
        breaker::Entity::delete_many()
            .filter(breaker::Column::Kind.eq(kind))
            .filter(breaker::Column::SubjectId.eq(subject))
            .exec(&self.db)
            .await?;
        Ok(())
    }
}
