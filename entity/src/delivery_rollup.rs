use sea_orm::entity::prelude::*;

/// One app's delivery attempts of one minute (`minute`: Unix ms / 60,000):
/// how many, how many answered 2xx, how many did not, and their latencies
/// as a histogram (`bucket_NN` counts the attempts up to the store's
/// `rollups::LATENCY_BOUNDS_MS[NN]`, above the bound before; the last
/// bucket has no upper bound).
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "delivery_rollups")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub app_id: String,
    #[sea_orm(primary_key, auto_increment = false)]
    pub minute: i64,
    pub attempts: i64,
    pub delivered: i64,
    pub failed: i64,
    pub latency_max_ms: i64,
    pub bucket_00: i64,
    pub bucket_01: i64,
    pub bucket_02: i64,
    pub bucket_03: i64,
    pub bucket_04: i64,
    pub bucket_05: i64,
    pub bucket_06: i64,
    pub bucket_07: i64,
    pub bucket_08: i64,
    pub bucket_09: i64,
    pub bucket_10: i64,
    pub bucket_11: i64,
    pub bucket_12: i64,
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
}

impl ActiveModelBehavior for ActiveModel {}
