//! Docora's rows, read table by table, each checked as Herald checks what
//! its API accepts and turned into what Herald stores. A row that does not
//! pass is named in the error; a secret never is.

use std::collections::{BTreeMap, HashMap};

use actors::docora::{self, DocoraKey};
use actors::store::imports::{ImportedApp, ImportedRepository, ImportedSubscription};
use entity::SubscriptionStatus;
use sea_orm::sqlx::{self, PgPool, Row};
use secrecy::SecretString;

use super::{Failure, FirstScan, Progress};
use crate::domain::{self, UrlPolicy};

fn refused(row: String, why: impl std::fmt::Display) -> Failure {
    Failure::Refused(format!("{row}: {why}"))
}

/// Rows in `app_delivered_files`.
pub async fn delivered_files(source: &PgPool) -> Result<u64, Failure> {
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM app_delivered_files")
        .fetch_one(source)
        .await?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// Opens one of Docora's sealed secrets, naming the row and column when it
/// does not open.
fn open(key: &DocoraKey, sealed: &str, row: &str, column: &str) -> Result<SecretString, Failure> {
    key.open(sealed)
        .map_err(|err| refused(format!("{row}: {column}"), err))
}

pub async fn apps(
    source: &PgPool,
    key: &DocoraKey,
    policy: UrlPolicy,
    progress: &dyn Progress,
) -> Result<Vec<ImportedApp>, Failure> {
    // Times as Unix milliseconds, as Herald stores them.
    let rows = sqlx::query(
        "SELECT app_id, token_hash, app_name, base_url, email, website, description, \
         client_auth_key_encrypted, (EXTRACT(EPOCH FROM created_at) * 1000)::bigint \
         FROM apps ORDER BY app_id",
    )
    .fetch_all(source)
    .await?;
    let mut apps = Vec::with_capacity(rows.len());
    for row in rows {
        let id: String = row.try_get(0)?;
        let name = format!("app {id}");
        if !docora::is_id(&id, "app_") {
            return Err(refused(name, "app_id is not Docora's app_ + 24 hex"));
        }
        let token_hash: String = row.try_get(1)?;
        if !docora::is_bcrypt_hash(&token_hash) {
            return Err(refused(name, "token_hash is not a bcrypt hash"));
        }
        let checked = |result: Result<String, domain::Invalid>| {
            result.map_err(|err| refused(name.clone(), err))
        };
        let app_name = checked(domain::app_name(&row.try_get::<String, _>(2)?))?;
        let base_url = checked(domain::base_url(&row.try_get::<String, _>(3)?, policy).await)?;
        let email = checked(domain::email(&row.try_get::<String, _>(4)?))?;
        let website = match row.try_get::<Option<String>, _>(5)? {
            Some(site) => Some(checked(domain::website(&site))?),
            None => None,
        };
        let description = match row.try_get::<Option<String>, _>(6)? {
            Some(text) => Some(checked(domain::description(&text))?),
            None => None,
        };
        let sealed: String = row.try_get(7)?;
        let client_auth_key = open(key, &sealed, &name, "client_auth_key_encrypted")?;
        let client_auth_key = {
            use secrecy::ExposeSecret;
            domain::client_auth_key(client_auth_key.expose_secret())
                .map_err(|err| refused(name.clone(), err))?
        };
        apps.push(ImportedApp {
            id,
            name: app_name,
            base_url,
            email,
            website,
            description,
            client_auth_key,
            legacy_token_hash: token_hash,
            created_at: row.try_get(8)?,
        });
        progress.rows("apps", 1, None);
    }
    progress.done("apps");
    Ok(apps)
}

pub async fn repositories(
    source: &PgPool,
    policy: UrlPolicy,
    progress: &dyn Progress,
) -> Result<Vec<ImportedRepository>, Failure> {
    let rows = sqlx::query(
        "SELECT repository_id, github_url, owner, name, is_private, \
         (EXTRACT(EPOCH FROM created_at) * 1000)::bigint FROM repositories ORDER BY repository_id",
    )
    .fetch_all(source)
    .await?;
    let mut repos = Vec::with_capacity(rows.len());
    for row in rows {
        let id: String = row.try_get(0)?;
        let name = format!("repository {id}");
        if !docora::is_id(&id, "repo_") {
            return Err(refused(
                name,
                "repository_id is not Docora's repo_ + 24 hex",
            ));
        }
        let github_url: String = row.try_get(1)?;
        let url = domain::repo_url("github_url", &github_url, policy)
            .await
            .map_err(|err| refused(name.clone(), err))?;
        repos.push(ImportedRepository {
            id,
            url: url.canonical,
            fetch_url: url.fetch,
            // As Docora stored them: what its webhooks carried.
            owner: row.try_get(2)?,
            name: row.try_get(3)?,
            is_private: row.try_get(4)?,
            created_at: row.try_get(5)?,
        });
        progress.rows("repositories", 1, None);
    }
    progress.done("repositories");
    Ok(repos)
}

/// Docora's subscription status as Herald's.
fn status(raw: &str) -> Option<SubscriptionStatus> {
    match raw {
        "pending_snapshot" => Some(SubscriptionStatus::PendingSnapshot),
        "scanning" | "syncing" => Some(SubscriptionStatus::Syncing),
        "synced" => Some(SubscriptionStatus::Synced),
        "failed" => Some(SubscriptionStatus::Failed),
        _ => None,
    }
}

pub async fn subscriptions(
    source: &PgPool,
    key: &DocoraKey,
    progress: &dyn Progress,
) -> Result<Vec<ImportedSubscription>, Failure> {
    let rows = sqlx::query(
        "SELECT app_id, repository_id, github_token_encrypted, status, retry_count, last_error, \
         (EXTRACT(EPOCH FROM created_at) * 1000)::bigint FROM app_repositories \
         ORDER BY app_id, repository_id",
    )
    .fetch_all(source)
    .await?;
    let mut subs = Vec::with_capacity(rows.len());
    for row in rows {
        let app_id: String = row.try_get(0)?;
        let repository_id: String = row.try_get(1)?;
        let name = format!("app_repositories ({app_id}, {repository_id})");
        let git_token = match row.try_get::<Option<String>, _>(2)? {
            Some(sealed) => {
                let token = open(key, &sealed, &name, "github_token_encrypted")?;
                use secrecy::ExposeSecret;
                Some(
                    domain::git_token(token.expose_secret())
                        .map_err(|err| refused(name.clone(), err))?,
                )
            }
            None => None,
        };
        let raw_status: String = row.try_get(3)?;
        let Some(status) = status(&raw_status) else {
            return Err(refused(
                name,
                format!("status {raw_status:?} is not one Herald knows"),
            ));
        };
        subs.push(ImportedSubscription {
            app_id,
            repository_id,
            git_token,
            status,
            retry_count: row.try_get(4)?,
            last_error: row.try_get(5)?,
            created_at: row.try_get(6)?,
        });
        progress.rows("app_repositories", 1, None);
    }
    progress.done("app_repositories");
    Ok(subs)
}

/// Per app, what its first scan would send if each repository is still at
/// the commit Docora last scanned: the app's delivered files compared with
/// that snapshot's files (both SHA-256 of the bytes). Herald's first scan
/// compares with the tree it fetches, so a branch that moved since adds
/// its own change; a repository Docora never scanned cannot be counted
/// without fetching it.
pub async fn first_scan(
    source: &PgPool,
    subs: &[ImportedSubscription],
) -> Result<BTreeMap<String, FirstScan>, Failure> {
    let mut per_app: BTreeMap<String, FirstScan> = BTreeMap::new();
    let mut trees: HashMap<String, Option<HashMap<String, String>>> = HashMap::new();
    for sub in subs {
        if !trees.contains_key(&sub.repository_id) {
            let files: Vec<(String, String)> = sqlx::query_as(
                "SELECT f.path, f.sha FROM repository_snapshots s \
                 JOIN snapshot_files f ON f.snapshot_id = s.id WHERE s.repository_id = $1",
            )
            .bind(&sub.repository_id)
            .fetch_all(source)
            .await?;
            let scanned: Option<i64> = sqlx::query_scalar(
                "SELECT COUNT(*) FROM repository_snapshots WHERE repository_id = $1",
            )
            .bind(&sub.repository_id)
            .fetch_optional(source)
            .await?;
            let tree = (scanned.unwrap_or(0) > 0).then(|| files.into_iter().collect());
            trees.insert(sub.repository_id.clone(), tree);
        }
        let counts = per_app.entry(sub.app_id.clone()).or_default();
        let Some(Some(tree)) = trees.get(&sub.repository_id) else {
            counts.repositories_not_scanned += 1;
            continue;
        };
        let held: HashMap<String, String> = sqlx::query_as(
            "SELECT file_path, file_sha FROM app_delivered_files \
             WHERE app_id = $1 AND repository_id = $2",
        )
        .bind(&sub.app_id)
        .bind(&sub.repository_id)
        .fetch_all(source)
        .await?
        .into_iter()
        .collect();
        for (path, sha) in tree {
            match held.get(path) {
                None => counts.create += 1,
                Some(had) if had != sha => counts.update += 1,
                Some(_) => {}
            }
        }
        counts.delete += held.keys().filter(|p| !tree.contains_key(*p)).count() as u64;
    }
    Ok(per_app)
}
