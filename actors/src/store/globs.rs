//! A subscription's path filters as stored (`include` and `exclude`, each a
//! JSON array of globs), read back strictly: a row that does not read back
//! fails its subscription ([`fail_corrupt_globs`]) instead of widening it.

use entity::subscription;
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter};

use super::StoreError;

/// A subscription's path filters, read from its row (`include` and
/// `exclude`, each a JSON array of glob patterns validated at
/// registration).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Globs {
    pub include: Vec<String>,
    pub exclude: Vec<String>,
}

/// A subscription row whose globs do not read back as they were written.
/// Read as "no filter" it would widen the subscription, so the subscription
/// fails with this as its error instead ([`fail_corrupt_globs`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the subscription's stored {column} globs cannot be read ({reason}); it gets no events until the app deletes it and registers the repository again"
)]
pub struct CorruptGlobs {
    /// `include` or `exclude`.
    pub column: &'static str,
    pub reason: String,
}

impl TryFrom<&subscription::Model> for Globs {
    type Error = CorruptGlobs;

    fn try_from(sub: &subscription::Model) -> Result<Self, CorruptGlobs> {
        Ok(Self {
            include: stored_globs("include", &sub.include)?,
            exclude: stored_globs("exclude", &sub.exclude)?,
        })
    }
}

/// One column's patterns: a JSON array of strings, each a glob that
/// compiles (one that did not would match nothing, and an exclude that
/// matches nothing widens too).
fn stored_globs(column: &'static str, stored: &str) -> Result<Vec<String>, CorruptGlobs> {
    let corrupt = |reason: String| CorruptGlobs { column, reason };
    let patterns: Vec<String> = serde_json::from_str(stored)
        .map_err(|err| corrupt(format!("not a JSON list of strings: {err}")))?;
    let mut set = globset::GlobSetBuilder::new();
    for pattern in &patterns {
        let glob = globset::Glob::new(pattern)
            .map_err(|err| corrupt(format!("`{pattern}` is not a glob: {}", err.kind())))?;
        set.add(glob);
    }
    set.build()
        .map_err(|err| corrupt(format!("the patterns do not compile: {err}")))?;
    Ok(patterns)
}

/// Fails a subscription whose globs are corrupt (status `failed`, the
/// reason as its error), unless it already is; nothing else of it changes,
/// so it gets no events of the snapshot being written.
pub(crate) async fn fail_corrupt_globs<C: ConnectionTrait>(
    conn: &C,
    sub: &subscription::Model,
    corrupt: &CorruptGlobs,
    now: i64,
) -> Result<(), StoreError> {
    let reason = corrupt.to_string();
    if sub.status == entity::SubscriptionStatus::Failed
        && sub.last_error.as_deref() == Some(reason.as_str())
    {
        return Ok(());
    }
    tracing::error!(subscription = %sub.id, error = %reason, "subscription failed: its globs are corrupt");
    subscription::Entity::update_many()
        .col_expr(
            subscription::Column::Status,
            Expr::value(entity::SubscriptionStatus::Failed),
        )
        .col_expr(subscription::Column::LastError, Expr::value(reason))
        .col_expr(subscription::Column::UpdatedAt, Expr::value(now))
        .filter(subscription::Column::Id.eq(sub.id.as_str()))
        .exec(conn)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_globs_read_back_or_say_why_not() {
        assert_eq!(
            stored_globs("include", r#"["docs/**","*.md"]"#),
            Ok(vec!["docs/**".to_owned(), "*.md".to_owned()])
        );
        assert_eq!(stored_globs("exclude", "[]"), Ok(Vec::new()));
        for corrupt in [
            r#"["docs/**""#,
            "",
            "null",
            r#"[1]"#,
            r#"{"a":1}"#,
            r#"["a["]"#,
        ] {
            let err = stored_globs("exclude", corrupt).expect_err(corrupt);
            assert_eq!(err.column, "exclude");
            assert!(
                err.to_string()
                    .starts_with("the subscription's stored exclude globs cannot be read"),
                "{err}"
            );
        }
    }
}
