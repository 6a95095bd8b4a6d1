use sea_orm::entity::prelude::*;

/// How many events of a subscription were pending when upkeep looked in
/// that minute (`minute`: Unix ms / 60,000). Only non-zero counts are
/// written: a minute without a row read as nothing pending.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "pending_samples")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub subscription_id: String,
    #[sea_orm(primary_key, auto_increment = false)]
    pub minute: i64,
    pub app_id: String,
    pub pending: i64,
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

impl ActiveModelBehavior for ActiveModel {}
