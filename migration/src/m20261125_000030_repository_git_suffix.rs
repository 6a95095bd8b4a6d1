//! A repository's canonical URL keeps its `.git` except on the hosts known
//! to serve `name` and `name.git` as one repository: elsewhere the two may
//! be different repositories. Rows stored before dropped `.git` everywhere;
//! those of other hosts registered with `.git` (their fetch URL says so) get
//! it back, so an app that registers the same URL again finds the same
//! repository, with the same id, instead of a second one.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::ConnectionTrait;

#[derive(DeriveMigrationName)]
pub struct Migration;

/// The hosts that ignore `.git` when this migration was written (the
/// application's list may grow; what was stored then does not change).
const SUFFIX_BLIND_HOSTS: [&str; 5] = [
    "github.com",
    "gitlab.com",
    "gitea.com",
    "codeberg.org",
    "bitbucket.org",
];

#[derive(DeriveIden)]
enum Repositories {
    Table,
    Id,
    Url,
    FetchUrl,
    Branch,
}

/// The host of a stored URL (`scheme://host[:port]/…`), lower case; `None`
/// for a local path.
fn host(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split('/').next()?;
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next()?,
        None => authority.split(':').next()?,
    };
    (!host.is_empty()).then(|| host.to_ascii_lowercase())
}

/// The canonical URL a stored row gets under the rule: `url` with `.git`
/// back when it was registered with it on a host that does not ignore it.
fn with_suffix(url: &str, fetch_url: &str) -> Option<String> {
    let suffix_blind = host(url).is_some_and(|h| SUFFIX_BLIND_HOSTS.contains(&h.as_str()));
    let registered_with_it = fetch_url.trim_end_matches('/').ends_with(".git");
    (!suffix_blind && registered_with_it && !url.ends_with(".git")).then(|| format!("{url}.git"))
}

// The trait's signature elides SchemaManager's lifetime; matching it needs the elision.
#[allow(elided_lifetimes_in_paths)]
#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        let rows = db
            .query_all(
                &Query::select()
                    .columns([
                        Repositories::Id,
                        Repositories::Url,
                        Repositories::FetchUrl,
                        Repositories::Branch,
                    ])
                    .from(Repositories::Table)
                    .to_owned(),
            )
            .await?;
        let mut stored = std::collections::HashSet::new();
        let mut rows_read = Vec::with_capacity(rows.len());
        for row in rows {
            let id: String = row.try_get("", "id")?;
            let url: String = row.try_get("", "url")?;
            let fetch_url: String = row.try_get("", "fetch_url")?;
            let branch: String = row.try_get("", "branch")?;
            stored.insert((url.clone(), branch.clone()));
            rows_read.push((id, url, fetch_url, branch));
        }
        for (id, url, fetch_url, branch) in rows_read {
            let Some(canonical) = with_suffix(&url, &fetch_url) else {
                continue;
            };
            // (url, branch) is unique: a row already there keeps its place.
            if !stored.insert((canonical.clone(), branch)) {
                continue;
            }
            db.execute(
                &Query::update()
                    .table(Repositories::Table)
                    .value(Repositories::Url, canonical)
                    .and_where(Expr::col(Repositories::Id).eq(id))
                    .to_owned(),
            )
            .await?;
        }
        Ok(())
    }

    /// Nothing to undo: the older rule reads these URLs as it did (it
    /// strips `.git` from what apps send, and a stored `.git` only makes a
    /// second registration of the URL without it find another row).
    async fn down(&self, _manager: &SchemaManager) -> Result<(), DbErr> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_rows_of_other_hosts_registered_with_the_suffix_get_it_back() {
        assert_eq!(
            with_suffix(
                "https://git.example.com/o/r",
                "https://git.example.com/o/r.git"
            ),
            Some("https://git.example.com/o/r.git".to_owned())
        );
        assert_eq!(
            with_suffix("http://127.0.0.1:8080/r", "http://127.0.0.1:8080/r.git"),
            Some("http://127.0.0.1:8080/r.git".to_owned())
        );
        assert_eq!(
            with_suffix("https://git.example.com/o/r", "https://git.example.com/o/r"),
            None
        );
        assert_eq!(
            with_suffix("https://github.com/o/r", "https://github.com/o/r.git"),
            None
        );
        assert_eq!(
            with_suffix("https://GitLab.com:443/o/r", "https://GitLab.com/o/r.git/"),
            None
        );
        assert_eq!(
            with_suffix("file:///srv/r", "file:///srv/r.git"),
            Some("file:///srv/r.git".to_owned())
        );
    }
}
