//! Persisted circuit-breaker rows.

use entity::breaker;
use sea_orm::sea_query::OnConflict;
use sea_orm::{ColumnTrait, EntityTrait, IntoActiveModel, QueryFilter};

use super::{Store, StoreError};

impl Store {
    pub async fn breaker(
        &self,
        kind: &str,
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
                    ])
                    .to_owned(),
            )
            .exec_without_returning(&self.db)
            .await?;
        Ok(())
    }

    /// Closes a breaker (a success): its row is removed.
    pub async fn close_breaker(&self, kind: &str, subject: &str) -> Result<(), StoreError> {
        breaker::Entity::delete_many()
            .filter(breaker::Column::Kind.eq(kind))
            .filter(breaker::Column::SubjectId.eq(subject))
            .exec(&self.db)
            .await?;
        Ok(())
    }
}
