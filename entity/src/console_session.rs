use sea_orm::entity::prelude::*;

/// A signed-in admin console session.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "console_sessions")]
pub struct Model {
    /// SHA-256 (hex) of the session token the cookie carries: the database
    /// never holds a token that would open a session.
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    /// The token every form of this session carries (CSRF).
    pub csrf_token: String,
    /// HMAC-SHA256 (hex) of the session token under the admin token it was
    /// opened with: under another admin token the session does not open.
    pub admin_binding: String,
    pub created_at: i64,
    pub expires_at: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
