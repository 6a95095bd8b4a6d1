use sea_orm::entity::prelude::*;

/// One scan of a repository, or a run of polls that found it unchanged,
/// kept for its console page (the latest few per repository).
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "scans")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub repository_id: String,
    pub started_at: i64,
    /// An `unchanged` row stands for every poll in a row that found the
    /// branch at the same commit: the last one's start, and how many.
    pub last_started_at: i64,
    pub times: i64,
    /// The last scan's.
    pub duration_ms: i64,
    pub outcome: crate::ScanEnd,
    /// The commit the branch was read at; `None` when the scan failed
    /// before reading it.
    pub commit_sha: Option<String>,
    /// Files that changed since the previous snapshot.
    pub changes: i64,
    /// Events written for subscribers (changes × subscribers, and initial
    /// snapshots of new subscriptions).
    pub events: i64,
    /// Why it failed, as the repository's `last_error` says it.
    pub error: Option<String>,
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
