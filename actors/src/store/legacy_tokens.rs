//! The API tokens of apps imported from Docora (`docora_` + 64 hex), as
//! password-hash upgrades work: the token is checked against the app's
//! bcrypt hash the first time it is used, then that hash is replaced by
//! Herald's own (an indexed lookup and a SHA-256, as for Herald's tokens).
//!
//! A Docora token does not say which app it belongs to (Docora itself
//! tries every app's hash in turn), so a token not yet upgraded can only be
//! found by trying the hashes. What that costs is bounded:
//! - only a token of Docora's exact shape gets here; any other token costs
//!   what it costs without this module;
//! - an upgraded token is found in one indexed query, without bcrypt;
//! - bcrypt runs only against the apps that still hold a legacy hash (a
//!   range of the lookup index), never against Herald's own hashes, so it
//!   runs less the more apps have upgraded, and not at all once every app
//!   has (or for a Herald with no imported apps);
//! - the checks run one at a time, off the async executor: wrong tokens
//!   sent in parallel cannot take more than one core, and they never hold
//!   up requests that carry a Herald or an upgraded token.

use entity::app;
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QuerySelect};
use tokio::sync::Semaphore;

use super::{Store, StoreError};
use crate::crypto::{app_token_secret_matches, sha256_hex};
use crate::docora;

/// One bcrypt check at a time in the whole process.
static LEGACY_CHECKS: Semaphore = Semaphore::const_new(1);

impl Store {
    /// The app a Docora-shaped token belongs to, upgrading its legacy hash
    /// on the first successful use.
    pub(super) async fn authenticate_docora_token(
        &self,
        token: &str,
    ) -> Result<Option<app::Model>, StoreError> {
        let lookup = docora::upgraded_lookup(token);
        let upgraded = app::Entity::find()
            .filter(app::Column::TokenLookup.eq(lookup.as_str()))
            .one(&self.db)
            .await?;
        if let Some(app) = upgraded {
            return Ok(app_token_secret_matches(token, &app.token_hash).then_some(app));
        }
        let legacy: Vec<(String, String)> = app::Entity::find()
            .select_only()
            .column(app::Column::Id)
            .column(app::Column::TokenHash)
            .filter(app::Column::TokenLookup.gte(docora::LEGACY_LOOKUP_PREFIX))
            .filter(app::Column::TokenLookup.lt(docora::LEGACY_LOOKUP_END))
            .into_tuple()
            .all(&self.db)
            .await?;
        if legacy.is_empty() {
            return Ok(None);
        }
        let Ok(_turn) = LEGACY_CHECKS.acquire().await else {
            return Ok(None);
        };
        let presented = token.to_owned();
        let matched = tokio::task::spawn_blocking(move || {
            legacy
                .into_iter()
                .find(|(_, hash)| docora::bcrypt_matches(&presented, hash))
                .map(|(id, _)| id)
        })
        .await
        .ok()
        .flatten();
        let Some(id) = matched else {
            return Ok(None);
        };
        // Upgraded only while still legacy: two first uses at once upgrade
        // it once, to the same hash.
        let upgraded = app::Entity::update_many()
            .col_expr(app::Column::TokenLookup, Expr::value(lookup))
            .col_expr(
                app::Column::TokenHash,
                Expr::value(sha256_hex(token.as_bytes())),
            )
            .filter(app::Column::Id.eq(id.as_str()))
            .filter(app::Column::TokenLookup.eq(docora::legacy_lookup(&id)))
            .exec(&self.db)
            .await?;
        if upgraded.rows_affected == 1 {
            tracing::info!(app = %id, "an imported Docora token was upgraded to Herald's hash");
        }
        Ok(app::Entity::find_by_id(id).one(&self.db).await?)
    }
}
