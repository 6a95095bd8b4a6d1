use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "apps")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub name: String,
    pub base_url: String,
    pub email: String,
    pub website: Option<String>,
    pub description: Option<String>,
    pub client_auth_key_ciphertext: String,
    pub previous_key_ciphertext: Option<String>,
    pub previous_key_expires_at: Option<i64>,
    #[sea_orm(unique)]
    pub token_lookup: String,
    pub token_hash: String,
    pub status: crate::AppStatus,
    pub backoff_policy: Option<crate::BackoffPolicy>,
    pub backoff_base_ms: Option<i64>,
    pub backoff_max_ms: Option<i64>,
    pub notify_synced: bool,
    /// The app gets a `submodule` event when a submodule's commit moves.
    pub notify_submodules: bool,
    /// Files stored in Git LFS are delivered with their real content; off,
    /// the app gets the pointer files as they are in git.
    pub resolve_lfs: bool,
    pub delivery_window: i32,
    /// `push` (webhooks), `pull` (the app consumes its stream), or a
    /// broker: `nats`, `amqp`, `redis`.
    pub delivery_mode: crate::DeliveryMode,
    /// The place the next event of this app's stream gets (`events.stream_pos`).
    pub stream_next: i64,
    pub failing_since: Option<i64>,
    pub disabled_at: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
    /// A broker app's destination (its URL with the broker's credentials,
    /// its templates), sealed with the secrets key; `None` for other apps.
    pub destination_ciphertext: Option<String>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    #[sea_orm(has_many = "super::subscription::Entity")]
    Subscription,
}

impl Related<super::subscription::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Subscription.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
