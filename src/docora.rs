//! Importing a Docora deployment (SPEC §12): its PostgreSQL database, read
//! at the schema of its Liquibase changelogs 001–007, written into Herald's
//! database in one transaction ([`actors::store::imports`]).
//!
//! - [`schema`]: the changelog check (an unknown schema is refused).
//! - [`rows`]: Docora's rows, checked and turned into Herald's, secrets
//!   opened with Docora's key and sealed again with Herald's.
//! - [`run`] here: the import itself, or its dry run, with per-table
//!   progress and a summary.

mod rows;
mod schema;

use std::collections::BTreeMap;

use actors::docora::DocoraKey;
use actors::store::Store;
use actors::store::imports::ImportError;
use futures::TryStreamExt;
use sea_orm::sqlx::{self, PgPool, Row};
use serde::Serialize;

use crate::domain::UrlPolicy;

pub use self::schema::{KNOWN_CHANGESETS, check_schema};

/// Rows read from Docora, per table, as progress reports them.
pub trait Progress {
    /// `count` more rows of `table` were read (`total` when known).
    fn rows(&self, table: &'static str, count: u64, total: Option<u64>);
    /// `table` is done.
    fn done(&self, table: &'static str);
}

/// Reports nothing.
pub struct Quiet;

impl Progress for Quiet {
    fn rows(&self, _: &'static str, _: u64, _: Option<u64>) {}
    fn done(&self, _: &'static str) {}
}

/// What the first scan would send one app, from Docora's own view.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct FirstScan {
    pub create: u64,
    pub update: u64,
    pub delete: u64,
    /// Subscriptions whose repository Docora never scanned: their counts
    /// are unknown until Herald fetches them (every file the app lacks
    /// will be created).
    pub repositories_not_scanned: u64,
}

/// What an import wrote, or a dry run would write.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    pub dry_run: bool,
    pub apps: u64,
    pub repositories: u64,
    pub subscriptions: u64,
    pub delivered_files: u64,
    /// Delivery rows of an app that no longer watches the repository:
    /// they describe nothing Herald can hold, and are left out.
    pub delivered_files_skipped: u64,
    /// Per app id: what the first scan would send (dry run only), as
    /// Docora last saw each repository. A branch that moved since Docora's
    /// last scan also sends that change.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub first_scan: BTreeMap<String, FirstScan>,
}

/// Why an import stopped. Its message names the row; it never holds a
/// secret. Nothing was written.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    #[error("{0}")]
    Refused(String),
    #[error("reading Docora's database: {0}")]
    Source(String),
    #[error(transparent)]
    Import(#[from] ImportError),
}

impl From<sqlx::Error> for Failure {
    fn from(err: sqlx::Error) -> Self {
        // sqlx's messages name tables and columns, never connection strings.
        Self::Source(err.to_string())
    }
}

/// Rows read from `app_delivered_files` between two progress reports.
const PROGRESS_EVERY: u64 = 10_000;

/// Reads the Docora database at `source` and writes Herald's `store` in
/// one transaction; with `dry_run`, checks everything the same way and
/// writes nothing, and counts per app what the first scan would send.
pub async fn run(
    source: &PgPool,
    key: &DocoraKey,
    store: &Store,
    policy: UrlPolicy,
    dry_run: bool,
    progress: &dyn Progress,
) -> Result<Summary, Failure> {
    check_schema(source).await?;
    let apps = rows::apps(source, key, policy, progress).await?;
    let repositories = rows::repositories(source, policy, progress).await?;
    let subscriptions = rows::subscriptions(source, key, progress).await?;
    let mut summary = Summary {
        dry_run,
        apps: apps.len() as u64,
        repositories: repositories.len() as u64,
        subscriptions: subscriptions.len() as u64,
        ..Summary::default()
    };
    let mut import = store.begin_import().await.map_err(ImportError::from)?;
    import.apps(&apps).await?;
    import.repositories(&repositories).await?;
    import.subscriptions(&subscriptions).await?;
    drop((apps, repositories));

    let total = rows::delivered_files(source).await?;
    let mut stream = sqlx::query(
        "SELECT app_id, repository_id, file_path, file_sha FROM app_delivered_files \
         ORDER BY app_id, repository_id, file_path",
    )
    .fetch(source);
    let mut read = 0u64;
    while let Some(row) = stream.try_next().await? {
        let app: String = row.try_get(0)?;
        let repo: String = row.try_get(1)?;
        let path: String = row.try_get(2)?;
        let sha: String = row.try_get(3)?;
        read += 1;
        if read.is_multiple_of(PROGRESS_EVERY) {
            progress.rows("app_delivered_files", PROGRESS_EVERY, Some(total));
        }
        if !import.subscribed(&app, &repo) {
            summary.delivered_files_skipped += 1;
            continue;
        }
        import.held(&app, &repo, &path, &sha).await?;
    }
    drop(stream);
    progress.rows("app_delivered_files", read % PROGRESS_EVERY, Some(total));
    progress.done("app_delivered_files");
    summary.delivered_files = read - summary.delivered_files_skipped;

    if dry_run {
        import.rollback().await?;
        summary.first_scan = rows::first_scan(source, &subscriptions).await?;
    } else {
        import.commit().await?;
    }
    Ok(summary)
}
