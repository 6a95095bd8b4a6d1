use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "subscriptions")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub app_id: String,
    pub repository_id: String,
    pub status: crate::SubscriptionStatus,
    /// JSON array of glob patterns.
    pub include: String,
    /// JSON array of glob patterns.
    pub exclude: String,
    pub git_token_ciphertext: Option<String>,
    pub last_error: Option<String>,
    pub retry_count: i32,
    /// Sequence number the next event of this subscription receives.
    pub next_seq: i64,
    pub last_snapshot_id: Option<String>,
    pub last_synced_commit: Option<String>,
    pub delivery_lease_owner: Option<String>,
    pub delivery_lease_until: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
    /// `granted` while the subscription's own credential reads the
    /// repository, `denied` once the remote refused it.
    pub access: crate::AccessState,
    /// When the credential was last checked against the remote (unix ms).
    pub access_checked_at: Option<i64>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    #[sea_orm(
        belongs_to = "super::app::Entity",
        from = "Column::AppId",
        to = "super::app::Column::Id",
        on_delete = "Cascade"
    )]
    App,
    #[sea_orm(
        belongs_to = "super::repository::Entity",
        from = "Column::RepositoryId",
        to = "super::repository::Column::Id",
        on_delete = "Cascade"
    )]
    Repository,
    #[sea_orm(has_many = "super::event::Entity")]
    Event,
}

impl Related<super::app::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::App.def()
    }
}

impl Related<super::repository::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Repository.def()
    }
}

impl Related<super::event::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Event.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
