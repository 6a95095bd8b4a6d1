use sea_orm::entity::prelude::*;

use crate::status::{BulkKind, BulkStatus};

/// A bulk operation an operator started (retry every dead event of one app,
/// or of all), worked through by whichever instance holds it.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "bulk_operations")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub kind: BulkKind,
    /// The app whose events it takes on; `None`: every app's.
    pub app_id: Option<String>,
    pub status: BulkStatus,
    /// Events it took on when it started.
    pub total: i64,
    /// Events handled so far, queued again or not.
    pub done: i64,
    /// Events among `done` that could not be queued again.
    pub failed: i64,
    /// The last event id it took on (ids sort by creation): the end of its
    /// range, so events that die later are not part of it.
    pub last_event_id: Option<String>,
    /// The last event id handled: where a runner that takes it over resumes.
    pub cursor: Option<String>,
    /// An operator asked it to stop; its runner stops before its next event.
    pub cancel_requested: bool,
    /// The claim of the instance working on it (`{instance}/{ulid}`), or
    /// `None` while nobody does.
    pub runner: Option<String>,
    /// How many times a runner claimed it: one that keeps losing its
    /// runners is given up on.
    pub claims: i32,
    /// Why it failed.
    pub error: Option<String>,
    pub started_at: i64,
    /// The runner's heartbeat (and the time of any change): a running
    /// operation not updated within the lease time has lost its runner.
    pub updated_at: i64,
    pub finished_at: Option<i64>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
