use sea_orm::entity::prelude::*;

/// A verified push webhook from a git host, stored before it is processed.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "inbound_hooks")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub provider: crate::Provider,
    pub delivery_id: String,
    pub event_type: String,
    pub body: Vec<u8>,
    pub status: crate::HookStatus,
    pub result: Option<String>,
    pub received_at: i64,
    pub processed_at: Option<i64>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
