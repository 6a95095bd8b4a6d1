use sea_orm::entity::prelude::*;

/// A replay one app asked for: the changes between two commits, written
/// again as new events of its subscription (`events.replay_id`).
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "replays")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub subscription_id: String,
    /// The subscription's app and repository, so a lookup by either needs
    /// no join.
    pub app_id: String,
    pub repository_id: String,
    /// Full SHAs, as resolved in the mirror.
    pub from_commit: String,
    pub to_commit: String,
    /// Events it wrote: its progress counts down from here.
    pub events_total: i64,
    /// The `to` commit is pinned in the mirror under the replay's id until
    /// its events are settled (as a snapshot's is).
    pub pinned: bool,
    /// When it was written (while under way: when it started).
    pub created_at: i64,
    /// The database bytes its events and its row hold (their values, before
    /// indexes): what the app's hourly replay budget counts.
    pub bytes: i64,
    /// While its git work runs: until when its start holds one of the
    /// app's places for replays under way (renewed as it works, so one
    /// whose instance died stops counting). `None` once written.
    pub running_until: Option<i64>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    #[sea_orm(
        belongs_to = "super::subscription::Entity",
        from = "Column::SubscriptionId",
        to = "super::subscription::Column::Id",
        on_delete = "Cascade"
    )]
    Subscription,
}

impl Related<super::subscription::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Subscription.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
