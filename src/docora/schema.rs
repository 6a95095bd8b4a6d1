//! Which Docora schema a database holds: the change sets Liquibase
//! recorded in `databasechangelog`. Herald reads Docora's changelogs 001–007
//! (`deploy/liquibase/changelog` in Docora's repository); a database with a
//! change set Herald does not know, or without one of these, is refused
//! before anything is read.

use sea_orm::sqlx::{self, PgPool, Row};

use super::Failure;

/// Every change set of Docora's changelogs 001–007, by id (author `docora`).
pub const KNOWN_CHANGESETS: [&str; 11] = [
    "001",
    "002-repositories",
    "002-app-repositories",
    "003-01-app-repositories-status-columns",
    "003-02-create-repository-snapshots",
    "003-03-create-snapshot-files",
    "004-01-add-client-auth-key",
    "005-01-add-circuit-breaker-columns",
    "006-01-create-app-delivered-files",
    "007-01-idx-app-repositories-status",
    "007-02-idx-app-repositories-last-scanned-at",
];

/// Refuses a database that is not at Docora's schema 001–007.
pub async fn check_schema(source: &PgPool) -> Result<(), Failure> {
    let present: Option<String> =
        sqlx::query_scalar("SELECT to_regclass('databasechangelog')::text")
            .fetch_one(source)
            .await?;
    if present.is_none() {
        return Err(Failure::Refused(
            "not a Docora database: it has no Liquibase databasechangelog table".to_owned(),
        ));
    }
    let applied =
        sqlx::query("SELECT id, author, filename FROM databasechangelog ORDER BY orderexecuted")
            .fetch_all(source)
            .await?;
    let mut seen = Vec::new();
    for row in applied {
        let id: String = row.try_get(0)?;
        let author: String = row.try_get(1)?;
        let file: String = row.try_get(2)?;
        if author != "docora" || !KNOWN_CHANGESETS.contains(&id.as_str()) {
            return Err(Failure::Refused(format!(
                "unknown Docora schema version: change set {id:?} by {author:?} ({file}) is not one of \
                 Docora's changelogs 001-007, which this Herald imports"
            )));
        }
        seen.push(id);
    }
    if let Some(missing) = KNOWN_CHANGESETS
        .iter()
        .find(|id| !seen.iter().any(|s| s == *id))
    {
        return Err(Failure::Refused(format!(
            "unknown Docora schema version: change set {missing:?} was never applied (upgrade Docora \
             to the schema of changelogs 001-007 first)"
        )));
    }
    Ok(())
}
