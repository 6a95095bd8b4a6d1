use sea_orm::entity::prelude::*;

/// Persisted circuit-breaker state: one per git remote and one per app endpoint.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "breakers")]
pub struct Model {
    /// What the breaker guards: a repository's remote (subject = repository
    /// id) or an app's endpoint (subject = app id).
    #[sea_orm(primary_key, auto_increment = false)]
    pub kind: crate::BreakerKind,
    #[sea_orm(primary_key, auto_increment = false)]
    pub subject_id: String,
    pub state: crate::BreakerStatus,
    pub consecutive_failures: i32,
    /// How many times this breaker has opened: one notification per opening.
    pub openings: i32,
    pub opened_at: Option<i64>,
    pub cooldown_until: Option<i64>,
    /// Why the last failure failed, stored as its class's name.
    pub last_error_class: Option<crate::ErrorClass>,
    pub last_error: Option<String>,
    pub updated_at: i64,
    /// After the cooldown, the one probe in flight runs until this time
    /// (unix ms); nobody else probes before.
    pub probe_until: Option<i64>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
