//! The admin console's sessions. The cookie carries a random token; the row
//! is keyed by its SHA-256, so reading the table opens no session. Each
//! session has its own CSRF token, which every console form carries, and is
//! bound to the admin token it was opened with: the row keeps an HMAC of the
//! session token under the admin token, and a lookup under another admin
//! token finds nothing, so rotating the admin token ends every session. The
//! binding needs the session token, which only the cookie holds: the table
//! alone does not let anyone test guesses of the admin token.

use entity::console_session;
use hmac::{Hmac, KeyInit, Mac};
use sea_orm::{ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;

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

/// HMAC-SHA256 of the session token under the admin token, hex: what ties a
/// session to the admin token it was opened with.
fn admin_binding(token: &str, admin_token: &SecretString) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(admin_token.expose_secret().as_bytes())
        .expect("HMAC accepts keys of any length");
    mac.update(token.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

impl Store {
    /// Opens a session valid until `expires_at`, bound to `admin_token`;
    /// sessions already expired are removed on the way, so the table stays
    /// small without a sweeper.
    pub async fn open_console_session(
        &self,
        admin_token: &SecretString,
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
            admin_binding: admin_binding(token.expose_secret(), admin_token),
            created_at: now,
            expires_at,
        };
        console_session::Entity::insert(console_session::ActiveModel {
            id: Set(session.id.clone()),
            csrf_token: Set(session.csrf_token.clone()),
            admin_binding: Set(session.admin_binding.clone()),
            created_at: Set(session.created_at),
            expires_at: Set(session.expires_at),
        })
        .exec_without_returning(&self.db)
        .await?;
        Ok(NewSession { token, session })
    }

    /// The live session a cookie's token opens under the current
    /// `admin_token`; `None` when unknown, expired, or opened with another
    /// admin token.
    pub async fn console_session(
        &self,
        token: &str,
        admin_token: &SecretString,
        now: i64,
    ) -> Result<Option<console_session::Model>, StoreError> {
        Ok(console_session::Entity::find_by_id(session_key(token))
            .filter(console_session::Column::AdminBinding.eq(admin_binding(token, admin_token)))
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
