use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "repositories")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    /// The canonical remote URL: with `branch`, the repository's identity.
    pub url: String,
    /// The URL as the first app gave it: what git fetches.
    pub fetch_url: String,
    pub owner: String,
    pub name: String,
    /// The branch asked for at registration; empty means the remote's default.
    pub branch: String,
    pub resolved_branch: Option<String>,
    pub head_commit: Option<String>,
    pub current_snapshot_id: Option<String>,
    pub next_scan_at: i64,
    pub last_scanned_at: Option<i64>,
    pub last_error: Option<String>,
    pub scan_lease_owner: Option<String>,
    pub scan_lease_until: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
    /// The remote needs a credential: true for every subscriber.
    pub is_private: bool,
    /// Watched with its submodules expanded (their files under their
    /// paths): with `url` and `branch`, the repository's identity, so a
    /// remote watched both ways is two repositories.
    pub expand_submodules: bool,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    #[sea_orm(has_many = "super::subscription::Entity")]
    Subscription,
    #[sea_orm(has_many = "super::snapshot::Entity")]
    Snapshot,
}

impl Related<super::subscription::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Subscription.def()
    }
}

impl Related<super::snapshot::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Snapshot.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
