use sea_orm::entity::prelude::*;

/// One file of a repository's current snapshot (the manifest is kept for the
/// latest snapshot; history lives in git).
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "manifest_entries")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub repository_id: String,
    #[sea_orm(primary_key, auto_increment = false)]
    pub path: String,
    pub sha256: String,
    pub size: i64,
    pub blob_id: String,
    pub binary: bool,
    /// An LFS object: `sha256` and `size` are the real content's.
    pub lfs: bool,
    /// For an LFS object, the pointer file's own SHA-256 and size: what an
    /// app that does not resolve LFS gets. `None` for a plain file.
    pub pointer_sha256: Option<String>,
    pub pointer_size: Option<i64>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    #[sea_orm(
        belongs_to = "super::repository::Entity",
        from = "Column::RepositoryId",
        to = "super::repository::Column::Id",
        on_delete = "Cascade"
    )]
    Repository,
}

impl Related<super::repository::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Repository.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
