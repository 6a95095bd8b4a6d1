//! The console's event log: every event of every app, newest first, under
//! filters an operator combines (app, repository, status, path prefix or
//! glob, commit, time range), and one event with all its attempts.
//!
//! A page costs a bounded walk of one index, whatever the filters and the
//! table's size. Event ids are time-ordered, so "newest first" is the
//! primary key read backwards, and a time range is a range of ids. The
//! filter with an index of its own (a commit, else a repository, else an
//! app) picks the index; a page looks at the [`SCAN_BUDGET`] newest events
//! below its cursor in that index and lets the database apply every other
//! filter among them (a glob's literal beginning too; the rest of a glob
//! is matched in Rust on narrow rows). A page cut short by the budget says
//! so and where to go on from ([`LogPage::searched_to`]): a rare match deep
//! in a large table costs the operator a click, never the database a full
//! scan.

use std::collections::HashMap;

use entity::{EventStatus, app, delivery_attempt, event, repository, subscription};
use globset::GlobMatcher;
use sea_orm::sea_query::{Expr, ExprTrait as _, Func};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect, Select};

use super::{Store, StoreError};
use crate::ids::EventId;

/// Narrow rows read per query when a glob is matched in Rust.
const BATCH: u64 = 1_000;
/// Rows one page may walk before it stops short.
pub const SCAN_BUDGET: u64 = 10_000;

/// Which events an operator looks at; every field narrows.
#[derive(Debug, Clone, Default)]
pub struct LogFilter {
    pub app: Option<String>,
    pub repository: Option<String>,
    pub status: Option<EventStatus>,
    pub path: Option<PathFilter>,
    /// A full commit SHA or its first 7 or more hex digits.
    pub commit: Option<String>,
    /// Created at or after (Unix ms).
    pub from: Option<i64>,
    /// Created before (Unix ms).
    pub to: Option<i64>,
}

/// A path filter: a glob when it has glob syntax (`*`, `?`, `[`, `{`),
/// else a prefix.
#[derive(Debug, Clone)]
pub enum PathFilter {
    Prefix(String),
    Glob(GlobMatcher),
}

impl PathFilter {
    /// The filter `text` asks for; a malformed glob is an error worth
    /// showing the operator.
    pub fn parse(text: &str) -> Result<Self, globset::Error> {
        if text.contains(['*', '?', '[', '{']) {
            // Literal separators: `*` stays within a directory and `**`
            // crosses them, as in `.gitignore` and the subscriptions' globs.
            let glob = globset::GlobBuilder::new(text)
                .literal_separator(true)
                .build()?;
            Ok(Self::Glob(glob.compile_matcher()))
        } else {
            Ok(Self::Prefix(text.to_owned()))
        }
    }

    fn is_glob(&self) -> bool {
        matches!(self, Self::Glob(_))
    }

    /// What every matching path starts with: the prefix, or a glob's text
    /// before its first special character.
    fn literal_prefix(&self) -> &str {
        let text = self.as_str();
        let end = text.find(['*', '?', '[', '{', '\\']).unwrap_or(text.len());
        &text[..end]
    }

    pub fn matches(&self, path: &str) -> bool {
        match self {
            Self::Prefix(prefix) => path.starts_with(prefix.as_str()),
            Self::Glob(glob) => glob.is_match(path),
        }
    }

    /// The text the filter was made from.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Prefix(prefix) => prefix,
            Self::Glob(glob) => glob.glob().glob(),
        }
    }
}

/// What a commit filter reads: 7 to 40 lowercase hex digits.
pub fn is_commit_prefix(text: &str) -> bool {
    (7..=64).contains(&text.len()) && text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// One event of the log with the names it is shown under.
#[derive(Debug, Clone)]
pub struct LogEntry {
    pub event: event::Model,
    pub app_name: Option<String>,
    pub repository: Option<repository::Model>,
}

/// One page of the log.
#[derive(Debug, Clone, Default)]
pub struct LogPage {
    pub entries: Vec<LogEntry>,
    /// The cursor of the next (older) page, when there may be one.
    pub next: Option<String>,
    /// Set when the page stopped at [`SCAN_BUDGET`] rows before it was
    /// full: the walk got down to this event id, and `next` goes on there.
    pub searched_to: Option<String>,
}

/// One event and everything the console shows of it.
#[derive(Debug, Clone)]
pub struct EventDetail {
    pub event: event::Model,
    pub app: Option<app::Model>,
    pub repository: Option<repository::Model>,
    pub subscription: Option<subscription::Model>,
    /// Oldest first.
    pub attempts: Vec<delivery_attempt::Model>,
}

/// The smallest event id created at `at_ms` or later (ids start with their
/// creation time).
fn first_id_at(at_ms: i64) -> String {
    let ms = u64::try_from(at_ms).unwrap_or(0);
    let ulid = ulid::Ulid::from_parts(ms, 0);
    format!(
        "{}{}",
        EventId::PREFIX,
        ulid.to_string().to_ascii_lowercase()
    )
}

/// The smallest hex string above every string starting with `prefix`;
/// `None` when there is none (all `f`s).
fn after_prefix(prefix: &str) -> Option<String> {
    let mut digits: Vec<u8> = prefix.bytes().collect();
    while let Some(last) = digits.pop() {
        let next = match last {
            b'0'..=b'8' | b'a'..=b'e' => last + 1,
            b'9' => b'a',
            _ => continue,
        };
        digits.push(next);
        return String::from_utf8(digits).ok();
    }
    None
}

impl LogFilter {
    /// Below what id the walk starts: the page's cursor or the range's end.
    fn upper(&self, before: Option<&str>) -> Option<String> {
        let end = self.to.map(first_id_at);
        match (before, end) {
            (Some(before), Some(end)) => Some(Ord::min(before.to_owned(), end)),
            (before, end) => before.map(str::to_owned).or(end),
        }
    }

    /// The events one index walks: the filter that has an index of its own
    /// (a commit, else a repository, else an app; else the ids), between
    /// the id bounds.
    fn walk(&self, upper: Option<&str>) -> Select<event::Entity> {
        let mut query = event::Entity::find();
        if let Some(commit) = &self.commit {
            query = query.filter(event::Column::CommitSha.gte(commit.as_str()));
            if let Some(end) = after_prefix(commit) {
                query = query.filter(event::Column::CommitSha.lt(end));
            }
        } else if let Some(repository) = &self.repository {
            query = query.filter(event::Column::RepositoryId.eq(repository.as_str()));
        } else if let Some(app) = &self.app {
            query = query.filter(event::Column::AppId.eq(app.as_str()));
        }
        if let Some(upper) = upper {
            query = query.filter(event::Column::Id.lt(upper));
        }
        if let Some(from) = self.from {
            query = query.filter(event::Column::Id.gte(first_id_at(from)));
        }
        query
    }

    /// [`Self::walk`] down to `floor`, narrowed by every filter the
    /// database can apply; a glob is left to [`PathFilter::matches`], the
    /// database checking only its literal beginning.
    fn matching(&self, upper: Option<&str>, floor: Option<&str>) -> Select<event::Entity> {
        let mut query = self.walk(upper);
        if let Some(floor) = floor {
            query = query.filter(event::Column::Id.gte(floor));
        }
        if let Some(app) = &self.app {
            query = query.filter(event::Column::AppId.eq(app.as_str()));
        }
        if let Some(repository) = &self.repository {
            query = query.filter(event::Column::RepositoryId.eq(repository.as_str()));
        }
        if let Some(status) = self.status {
            query = query.filter(event::Column::Status.eq(status));
        }
        if let Some(from) = self.from {
            query = query.filter(event::Column::CreatedAt.gte(from));
        }
        if let Some(to) = self.to {
            query = query.filter(event::Column::CreatedAt.lt(to));
        }
        if let Some(prefix) = self.path.as_ref().map(PathFilter::literal_prefix)
            && !prefix.is_empty()
        {
            // Characters, as both databases count them; no LIKE, whose
            // wildcards a path may hold.
            // PostgreSQL's substr takes `integer`s, not `bigint`s.
            let length = i32::try_from(prefix.chars().count()).unwrap_or(i32::MAX);
            query = query.filter(
                Expr::expr(
                    Func::cust("substr")
                        .arg(Expr::col(event::Column::Path))
                        .arg(1_i32)
                        .arg(length),
                )
                .eq(prefix),
            );
        }
        query
    }
}

impl Store {
    /// Up to `limit` events matching `filter`, newest first, older than the
    /// event `before` when given (the previous page's cursor).
    ///
    /// The page looks at the [`SCAN_BUDGET`] newest events below the cursor
    /// that the walk's index holds (the window's floor is found by an
    /// index-only offset), and takes the matches among them.
    pub async fn event_log(
        &self,
        filter: &LogFilter,
        before: Option<&str>,
        limit: u64,
    ) -> Result<LogPage, StoreError> {
        let upper = filter.upper(before);
        let floor: Option<String> = filter
            .walk(upper.as_deref())
            .select_only()
            .column(event::Column::Id)
            .order_by_desc(event::Column::Id)
            .offset(SCAN_BUDGET - 1)
            .limit(1)
            .into_tuple()
            .one(&self.db)
            .await?;
        let glob = filter.path.as_ref().filter(|path| path.is_glob());
        let mut found: Vec<String> = Vec::new();
        let mut cursor = upper;
        loop {
            let wanted = limit + 1 - found.len() as u64;
            let asked = if glob.is_some() {
                Ord::max(BATCH, wanted)
            } else {
                wanted
            };
            let rows: Vec<(String, Option<String>)> = filter
                .matching(cursor.as_deref(), floor.as_deref())
                .select_only()
                .column(event::Column::Id)
                .column(event::Column::Path)
                .order_by_desc(event::Column::Id)
                .limit(asked)
                .into_tuple()
                .all(&self.db)
                .await?;
            let ended = (rows.len() as u64) < asked;
            cursor = rows.last().map(|(id, _)| id.clone()).or(cursor);
            for (id, path) in rows {
                let kept = glob.is_none_or(|glob| path.as_deref().is_some_and(|p| glob.matches(p)));
                if kept {
                    found.push(id);
                    if found.len() as u64 > limit {
                        break;
                    }
                }
            }
            if ended || found.len() as u64 > limit {
                break;
            }
        }
        let full = found.len() as u64 > limit;
        found.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
        let (next, searched_to) = if full {
            (found.last().cloned(), None)
        } else {
            // Short of a page: the window was all there was, or its floor
            // is where the next page goes on.
            (floor.clone(), floor)
        };
        let entries = self.log_entries(&found).await?;
        Ok(LogPage {
            entries,
            next,
            searched_to,
        })
    }

    /// The events `ids` (newest first, as given) with their app's name and
    /// their repository.
    async fn log_entries(&self, ids: &[String]) -> Result<Vec<LogEntry>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let events = event::Entity::find()
            .filter(event::Column::Id.is_in(ids))
            .order_by_desc(event::Column::Id)
            .all(&self.db)
            .await?;
        let app_names: HashMap<String, String> = app::Entity::find()
            .select_only()
            .column(app::Column::Id)
            .column(app::Column::Name)
            .filter(app::Column::Id.is_in(events.iter().map(|e| e.app_id.as_str())))
            .into_tuple::<(String, String)>()
            .all(&self.db)
            .await?
            .into_iter()
            .collect();
        let repositories: HashMap<String, repository::Model> = repository::Entity::find()
            .filter(repository::Column::Id.is_in(events.iter().map(|e| e.repository_id.as_str())))
            .all(&self.db)
            .await?
            .into_iter()
            .map(|r| (r.id.clone(), r))
            .collect();
        Ok(events
            .into_iter()
            .map(|event| LogEntry {
                app_name: app_names.get(&event.app_id).cloned(),
                repository: repositories.get(&event.repository_id).cloned(),
                event,
            })
            .collect())
    }

    /// One event with its app, repository, subscription and every attempt;
    /// `None` when there is no such event (or retention removed it).
    pub async fn event_detail(&self, id: &EventId) -> Result<Option<EventDetail>, StoreError> {
        let Some(event) = event::Entity::find_by_id(id.as_str()).one(&self.db).await? else {
            return Ok(None);
        };
        let app = app::Entity::find_by_id(event.app_id.as_str())
            .one(&self.db)
            .await?;
        let repository = repository::Entity::find_by_id(event.repository_id.as_str())
            .one(&self.db)
            .await?;
        let subscription = subscription::Entity::find_by_id(event.subscription_id.as_str())
            .one(&self.db)
            .await?;
        let attempts = delivery_attempt::Entity::find()
            .filter(delivery_attempt::Column::EventId.eq(event.id.as_str()))
            .order_by_asc(delivery_attempt::Column::AttemptedAt)
            .order_by_asc(delivery_attempt::Column::Id)
            .all(&self.db)
            .await?;
        Ok(Some(EventDetail {
            event,
            app,
            repository,
            subscription,
            attempts,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_filter_is_a_prefix_unless_it_has_glob_syntax() {
        let prefix = PathFilter::parse("docs/").expect("prefix");
        assert!(prefix.matches("docs/a/b.md"));
        assert!(!prefix.matches("src/docs/a.md"));
        let glob = PathFilter::parse("docs/*.md").expect("glob");
        assert!(glob.matches("docs/a.md"));
        assert!(!glob.matches("docs/a/b.md"), "* stays within a directory");
        assert!(
            PathFilter::parse("docs/**/*.md")
                .expect("glob")
                .matches("docs/a/b.md")
        );
        assert!(PathFilter::parse("docs/[").is_err());
        assert_eq!(glob.as_str(), "docs/*.md");
    }

    #[test]
    fn ids_of_a_time_sort_with_the_events_created_then() {
        let at = 1_700_000_000_000;
        let id = EventId::generate();
        assert!(first_id_at(0).as_str() < id.as_str());
        assert!(first_id_at(at) < first_id_at(at + 1));
        assert!(first_id_at(i64::from(u32::MAX) * 1_000).as_str() > id.as_str());
    }

    #[test]
    fn a_commit_prefix_ends_before_the_next_hex_string() {
        assert_eq!(after_prefix("abc1234").as_deref(), Some("abc1235"));
        assert_eq!(after_prefix("abc1239").as_deref(), Some("abc123a"));
        assert_eq!(after_prefix("abc12ff").as_deref(), Some("abc13"));
        assert_eq!(after_prefix("fff"), None);
        assert!(is_commit_prefix("abc1234"));
        assert!(!is_commit_prefix("abc12"));
        assert!(!is_commit_prefix("xyz1234"));
    }
}
