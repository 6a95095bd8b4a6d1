//! The instances sharing this database: each records its heartbeat
//! (`instances`), so operators see which are alive.

use entity::instance;
use sea_orm::sea_query::OnConflict;
use sea_orm::{ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter, QueryOrder};

use super::{Store, StoreError};

/// What an instance says about itself in each heartbeat.
#[derive(Debug, Clone)]
pub struct Heartbeat {
    pub id: String,
    pub version: String,
    pub host: String,
    /// When this run of the instance started (Unix ms).
    pub started_at: i64,
}

impl Store {
    /// Records that `heartbeat`'s instance is alive at `now` (its row is
    /// created on the first beat and replaced by a restart's).
    pub async fn record_heartbeat(
        &self,
        heartbeat: &Heartbeat,
        now: i64,
    ) -> Result<(), StoreError> {
        let row = instance::ActiveModel {
            id: Set(heartbeat.id.clone()),
            version: Set(heartbeat.version.clone()),
            host: Set(heartbeat.host.clone()),
            started_at: Set(heartbeat.started_at),
            last_seen_at: Set(now),
        };
        instance::Entity::insert(row)
            .on_conflict(
                OnConflict::column(instance::Column::Id)
                    .update_columns([
                        instance::Column::Version,
                        instance::Column::Host,
                        instance::Column::StartedAt,
                        instance::Column::LastSeenAt,
                    ])
                    .to_owned(),
            )
            .exec_without_returning(&self.db)
            .await?;
        Ok(())
    }

    /// Every instance with a heartbeat row, by id.
    pub async fn instances(&self) -> Result<Vec<instance::Model>, StoreError> {
        Ok(instance::Entity::find()
            .order_by_asc(instance::Column::Id)
            .all(&self.db)
            .await?)
    }

    /// Deletes the rows of instances not seen since `before`.
    pub async fn prune_instances(&self, before: i64) -> Result<u64, StoreError> {
        Ok(instance::Entity::delete_many()
            .filter(instance::Column::LastSeenAt.lt(before))
            .exec(&self.db)
            .await?
            .rows_affected)
    }
}
