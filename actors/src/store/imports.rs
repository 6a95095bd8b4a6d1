//! Writing what another system held (Docora, `herald import-docora`) into
//! Herald's tables in one transaction: apps with their ids and a legacy
//! token hash, repositories with their ids, subscriptions with their
//! status, and the files each app holds ([`entity::held_file`]). Every row
//! is checked against what Herald already has; the first conflict ends the
//! import and, the transaction dropped, nothing is written.

use std::collections::HashMap;

use entity::{app, held_file, repository, subscription};
use sea_orm::sea_query::ExprTrait;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, DatabaseTransaction, EntityTrait, QueryFilter, QuerySelect, Set,
};
use secrecy::{ExposeSecret, SecretString};

use super::apps::client_auth_key_aad;
use super::outbox::BATCH;
use super::subscriptions::git_token_aad;
use super::{Store, StoreError};
use crate::clock::now_ms;
use crate::docora;
use crate::ids::SubscriptionId;

/// An app as it is imported: its id and legacy (bcrypt) token hash kept.
pub struct ImportedApp {
    pub id: String,
    pub name: String,
    pub base_url: String,
    pub email: String,
    pub website: Option<String>,
    pub description: Option<String>,
    pub client_auth_key: SecretString,
    /// The bcrypt hash of the app's Docora token.
    pub legacy_token_hash: String,
    pub created_at: i64,
}

/// A repository as it is imported, watching `main` (Docora's branch).
pub struct ImportedRepository {
    pub id: String,
    /// Canonical URL (Herald's identity of a remote).
    pub url: String,
    pub fetch_url: String,
    pub owner: String,
    pub name: String,
    pub is_private: bool,
    pub created_at: i64,
}

/// An app's subscription to a repository, with its state.
pub struct ImportedSubscription {
    pub app_id: String,
    pub repository_id: String,
    pub git_token: Option<SecretString>,
    pub status: entity::SubscriptionStatus,
    pub retry_count: i32,
    pub last_error: Option<String>,
    pub created_at: i64,
}

/// Why an import stopped; nothing was written.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// A row names something Herald already has.
    #[error("{0}")]
    Conflict(String),
    /// A row Herald cannot hold as it is.
    #[error("{0}")]
    Unrepresentable(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sea_orm::DbErr> for ImportError {
    fn from(err: sea_orm::DbErr) -> Self {
        Self::Store(err.into())
    }
}

/// The branch Docora watches, always.
pub const DOCORA_BRANCH: &str = "main";

/// An import under way: one transaction, committed by [`Import::commit`]
/// and rolled back when dropped.
pub struct Import<'a> {
    store: &'a Store,
    txn: DatabaseTransaction,
    /// (app id, repository id) → subscription id.
    subscriptions: HashMap<(String, String), String>,
    held: Vec<held_file::ActiveModel>,
    held_rows: u64,
}

impl Store {
    /// Starts an import: everything it writes goes in one transaction.
    pub async fn begin_import(&self) -> Result<Import<'_>, StoreError> {
        Ok(Import {
            store: self,
            txn: self.begin_write().await?,
            subscriptions: HashMap::new(),
            held: Vec::with_capacity(BATCH),
            held_rows: 0,
        })
    }
}

impl Import<'_> {
    /// Adds apps, refusing an id or a name Herald already has.
    pub async fn apps(&mut self, apps: &[ImportedApp]) -> Result<(), ImportError> {
        let now = now_ms();
        for batch in apps.chunks(BATCH) {
            let ids = batch.iter().map(|a| a.id.as_str());
            if let Some(id) = app::Entity::find()
                .select_only()
                .column(app::Column::Id)
                .filter(app::Column::Id.is_in(ids))
                .into_tuple::<String>()
                .one(&self.txn)
                .await?
            {
                return Err(ImportError::Conflict(format!(
                    "app {id} already exists in Herald (was this Docora database imported already?)"
                )));
            }
            let names = batch.iter().map(|a| a.name.as_str());
            if let Some((id, name)) = app::Entity::find()
                .select_only()
                .column(app::Column::Id)
                .column(app::Column::Name)
                .filter(app::Column::Name.is_in(names))
                .into_tuple::<(String, String)>()
                .one(&self.txn)
                .await?
            {
                let ours = batch.iter().find(|a| a.name == name).map_or("", |a| &a.id);
                return Err(ImportError::Conflict(format!(
                    "app {ours}: its name {name:?} is already the name of Herald app {id}"
                )));
            }
        }
        for new in apps {
            if !docora::is_bcrypt_hash(&new.legacy_token_hash) {
                return Err(ImportError::Unrepresentable(format!(
                    "app {}: token_hash is not a bcrypt hash",
                    new.id
                )));
            }
            app::ActiveModel {
                id: Set(new.id.clone()),
                name: Set(new.name.clone()),
                base_url: Set(new.base_url.clone()),
                email: Set(new.email.clone()),
                website: Set(new.website.clone()),
                description: Set(new.description.clone()),
                client_auth_key_ciphertext: Set(self.store.keys.seal(
                    new.client_auth_key.expose_secret(),
                    &client_auth_key_aad(&new.id),
                )),
                previous_key_ciphertext: Set(None),
                previous_key_expires_at: Set(None),
                token_lookup: Set(docora::legacy_lookup(&new.id)),
                token_hash: Set(new.legacy_token_hash.clone()),
                status: Set(entity::AppStatus::Active),
                backoff_policy: Set(None),
                backoff_base_ms: Set(None),
                backoff_max_ms: Set(None),
                notify_synced: Set(false),
                notify_submodules: Set(false),
                resolve_lfs: Set(true),
                delivery_window: Set(1),
                delivery_mode: Set(entity::DeliveryMode::Push),
                stream_next: Set(1),
                destination_ciphertext: Set(None),
                failing_since: Set(None),
                disabled_at: Set(None),
                created_at: Set(new.created_at),
                updated_at: Set(now),
            }
            .insert(&self.txn)
            .await?;
        }
        Ok(())
    }

    /// Adds repositories watching `main`, refusing an id or a remote Herald
    /// already watches on that branch.
    pub async fn repositories(&mut self, repos: &[ImportedRepository]) -> Result<(), ImportError> {
        let now = now_ms();
        for new in repos {
            let existing: Option<String> = repository::Entity::find()
                .select_only()
                .column(repository::Column::Id)
                .filter(
                    repository::Column::Id
                        .eq(new.id.as_str())
                        .or(repository::Column::Url
                            .eq(new.url.as_str())
                            .and(repository::Column::Branch.eq(DOCORA_BRANCH))
                            .and(repository::Column::ExpandSubmodules.eq(false))),
                )
                .into_tuple()
                .one(&self.txn)
                .await?;
            if let Some(id) = existing {
                return Err(ImportError::Conflict(format!(
                    "repository {} ({}): Herald already has it as {id}",
                    new.id, new.url
                )));
            }
            repository::ActiveModel {
                id: Set(new.id.clone()),
                url: Set(new.url.clone()),
                fetch_url: Set(new.fetch_url.clone()),
                owner: Set(new.owner.clone()),
                name: Set(new.name.clone()),
                branch: Set(DOCORA_BRANCH.to_owned()),
                resolved_branch: Set(None),
                head_commit: Set(None),
                current_snapshot_id: Set(None),
                next_scan_at: Set(now),
                last_scanned_at: Set(None),
                last_error: Set(None),
                scan_lease_owner: Set(None),
                scan_lease_until: Set(None),
                created_at: Set(new.created_at),
                updated_at: Set(now),
                is_private: Set(new.is_private),
                expand_submodules: Set(false),
            }
            .insert(&self.txn)
            .await?;
        }
        Ok(())
    }

    /// Adds subscriptions of imported apps to imported repositories.
    pub async fn subscriptions(
        &mut self,
        subs: &[ImportedSubscription],
    ) -> Result<(), ImportError> {
        let now = now_ms();
        for new in subs {
            let id = SubscriptionId::generate().into_string();
            let git_token = new
                .git_token
                .as_ref()
                .map(|t| self.store.keys.seal(t.expose_secret(), &git_token_aad(&id)));
            subscription::ActiveModel {
                id: Set(id.clone()),
                app_id: Set(new.app_id.clone()),
                repository_id: Set(new.repository_id.clone()),
                status: Set(new.status),
                include: Set("[]".to_owned()),
                exclude: Set("[]".to_owned()),
                git_token_ciphertext: Set(git_token),
                last_error: Set(new.last_error.clone()),
                retry_count: Set(new.retry_count),
                next_seq: Set(1),
                last_snapshot_id: Set(None),
                last_synced_commit: Set(None),
                delivery_lease_owner: Set(None),
                delivery_lease_until: Set(None),
                created_at: Set(new.created_at),
                updated_at: Set(now),
                access: Set(entity::AccessState::Granted),
                access_checked_at: Set(None),
            }
            .insert(&self.txn)
            .await?;
            self.subscriptions
                .insert((new.app_id.clone(), new.repository_id.clone()), id);
        }
        Ok(())
    }

    /// Whether an app was subscribed to a repository in this import.
    pub fn subscribed(&self, app_id: &str, repository_id: &str) -> bool {
        self.subscriptions
            .contains_key(&(app_id.to_owned(), repository_id.to_owned()))
    }

    /// Records that `app_id` holds `path` of `repository_id` with these
    /// bytes' SHA-256 (lower-case hex). Its subscription must have been
    /// added.
    pub async fn held(
        &mut self,
        app_id: &str,
        repository_id: &str,
        path: &str,
        sha256: &str,
    ) -> Result<(), ImportError> {
        let row = || format!("app_delivered_files ({app_id}, {repository_id}, {path:?})");
        let Some(subscription) = self
            .subscriptions
            .get(&(app_id.to_owned(), repository_id.to_owned()))
        else {
            return Err(ImportError::Unrepresentable(format!(
                "{}: the app does not watch the repository",
                row()
            )));
        };
        let digest = sha256.len() == 64
            && sha256
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if !digest {
            return Err(ImportError::Unrepresentable(format!(
                "{}: file_sha is not a SHA-256 in lower-case hex",
                row()
            )));
        }
        if path.is_empty() || path.starts_with('/') || path.contains('\0') {
            return Err(ImportError::Unrepresentable(format!(
                "{}: not a path inside a repository",
                row()
            )));
        }
        self.held.push(held_file::ActiveModel {
            subscription_id: Set(subscription.clone()),
            path: Set(path.to_owned()),
            sha256: Set(sha256.to_owned()),
        });
        if self.held.len() >= BATCH {
            self.flush().await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), ImportError> {
        if self.held.is_empty() {
            return Ok(());
        }
        self.held_rows += self.held.len() as u64;
        held_file::Entity::insert_many(self.held.drain(..))
            .exec_without_returning(&self.txn)
            .await?;
        Ok(())
    }

    /// Writes everything; returns how many held-file rows were written.
    pub async fn commit(mut self) -> Result<u64, ImportError> {
        self.flush().await?;
        self.txn.commit().await?;
        Ok(self.held_rows)
    }

    /// Ends the import without writing anything (a dry run that went
    /// through every check).
    pub async fn rollback(self) -> Result<(), ImportError> {
        self.txn.rollback().await?;
        Ok(())
    }
}
