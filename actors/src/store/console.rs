//! The admin console's sessions. The cookie carries a random token; the row
//! is keyed by its SHA-256, so reading the table opens no session. Each
//! session has its own CSRF token, which every console form carries.

use entity::console_session;
use sea_orm::{ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter};
use secrecy::{ExposeSecret, SecretString};

use super::{Store, StoreError};
use crate::crypto::{random_bytes, sha256_hex};

/// A session just opened: the token for the cookie (shown once) and the row.
#[derive(Debug)]
pub struct NewSession {
    pub token: SecretString,
    pub session: console_session::Model,
}

fn session_key(token: &str) -> String {
    sha256_hex(token.as_bytes())
}

impl Store {
    /// Opens a session valid until `expires_at`; sessions already expired
    /// are removed on the way, so the table stays small without a sweeper.
    pub async fn open_console_session(
        &self,
        now: i64,
        expires_at: i64,
    ) -> Result<NewSession, StoreError> {
        console_session::Entity::delete_many()
            .filter(console_session::Column::ExpiresAt.lte(now))
            .exec(&self.db)
            .await?;
        let token = SecretString::from(hex::encode(random_bytes::<32>()));
        let session = console_session::Model {
            id: session_key(token.expose_secret()),
            csrf_token: hex::encode(random_bytes::<32>()),
            created_at: now,
            expires_at,
        };
        console_session::Entity::insert(console_session::ActiveModel {
            id: Set(session.id.clone()),
            csrf_token: Set(session.csrf_token.clone()),
            created_at: Set(session.created_at),
            expires_at: Set(session.expires_at),
        })
        .exec_without_returning(&self.db)
        .await?;
        Ok(NewSession { token, session })
    }

    /// The live session a cookie's token opens; `None` when unknown or
    /// expired.
    pub async fn console_session(
        &self,
        token: &str,
        now: i64,
    ) -> Result<Option<console_session::Model>, StoreError> {
        Ok(console_session::Entity::find_by_id(session_key(token))
            .filter(console_session::Column::ExpiresAt.gt(now))
            .one(&self.db)
            .await?)
    }

    /// Ends a session (logout); whether there was one.
    pub async fn close_console_session(&self, token: &str) -> Result<bool, StoreError> {
        let deleted = console_session::Entity::delete_by_id(session_key(token))
            .exec(&self.db)
            .await?;
        Ok(deleted.rows_affected > 0)
    }
}
