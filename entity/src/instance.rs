use sea_orm::entity::prelude::*;

/// A Herald process sharing this database, as its heartbeat last recorded it.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "instances")]
pub struct Model {
    /// The instance id kept in its data_dir (`instance.id`).
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub version: String,
    pub host: String,
    /// When this run of the instance started.
    pub started_at: i64,
    pub last_seen_at: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
