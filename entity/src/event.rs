use sea_orm::entity::prelude::*;

/// The outbox: one change for one subscription, delivered in `seq` order.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "events")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub subscription_id: String,
    pub app_id: String,
    pub repository_id: String,
    pub snapshot_id: Option<String>,
    pub seq: i64,
    pub kind: crate::EventKind,
    pub path: Option<String>,
    pub sha256: Option<String>,
    pub previous_sha256: Option<String>,
    pub size: Option<i64>,
    pub blob_id: Option<String>,
    pub binary: bool,
    /// The file is an LFS object: `sha256` and `size` are its real
    /// content's, and `blob_id` names its pointer, whose object delivery
    /// fetches from the LFS server.
    pub lfs: bool,
    pub renamed_from: Option<String>,
    pub commit_sha: Option<String>,
    /// Extra body fields, as JSON: a notification's (`sync_failed`,
    /// `synced`), or a replayed file event's `replay` marker.
    pub payload: Option<String>,
    pub status: crate::EventStatus,
    pub attempts: i32,
    /// When a pending event is due; for a dead one, when it was last tried
    /// (its next probe is `delivery.dead_retry_interval` later).
    pub next_attempt_at: i64,
    pub last_error: Option<String>,
    pub created_at: i64,
    pub delivered_at: Option<i64>,
    /// W3C `traceparent` of the scan that created the event: its delivery
    /// attempts continue that trace.
    pub trace_parent: Option<String>,
    /// A pull app's event: its place in the app's stream, given when a
    /// consumer first reads past it (`None` until then, and for push apps).
    pub stream_pos: Option<i64>,
    /// The replay that wrote the event (`replays.id`), `None` for a scan's.
    pub replay_id: Option<String>,
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
    #[sea_orm(has_many = "super::delivery_attempt::Entity")]
    DeliveryAttempt,
}

impl Related<super::subscription::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Subscription.def()
    }
}

impl Related<super::delivery_attempt::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::DeliveryAttempt.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
