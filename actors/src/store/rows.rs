//! Many rows of one table as one multi-row `INSERT`, made straight from the
//! rows' values.
//!
//! SeaORM's `insert_many` wraps each value in an expression, and its query
//! builder copies every value again as it writes the SQL. For the thousands
//! of rows of a first snapshot, that made the statements cost more than
//! SQLite's writing them: the snapshot's commit waited on it, and the first
//! webhook on the commit (`perf record` of the deep-history sync,
//! BENCHMARKS.md). Here the SQL is written from the columns' names and the
//! values are moved out of the rows into the statement as they are, with
//! the types SeaORM gives them.
//!
//! Every column of every row must be set: the tables written this way
//! (events, manifest rows, delivery attempts) are filled whole, and a
//! column left to its default would be a different statement.

use std::fmt::Write;

use sea_orm::{
    ActiveModelTrait, ActiveValue, DbBackend, DbErr, EntityName, EntityTrait, IdenStatic, Iterable,
    Statement, Value, Values,
};

/// The columns of `A`'s table, in the entity's order.
type Column<A> = <<A as ActiveModelTrait>::Entity as EntityTrait>::Column;

/// What a row whose key is already there does instead of failing: the
/// conflict's columns, and the columns (at least one) updated from the new
/// row.
pub(crate) struct OnConflict<'c, C> {
    pub(crate) key: &'c [C],
    pub(crate) update: &'c [C],
}

/// One `INSERT` of `rows` (every column set), `None` when there are none.
pub(crate) fn insert_rows<A: ActiveModelTrait>(
    backend: DbBackend,
    rows: impl IntoIterator<Item = A>,
    on_conflict: Option<OnConflict<'_, Column<A>>>,
) -> Result<Option<Statement>, DbErr> {
    let columns: Vec<Column<A>> = Column::<A>::iter().collect();
    let mut values: Vec<Value> = Vec::new();
    for mut row in rows {
        for &column in &columns {
            match row.take(column) {
                ActiveValue::Set(value) | ActiveValue::Unchanged(value) => values.push(value),
                ActiveValue::NotSet => {
                    return Err(DbErr::Custom(format!(
                        "column `{}` of a row to insert is not set",
                        column.as_str()
                    )));
                }
            }
        }
    }
    if values.is_empty() {
        return Ok(None);
    }
    let rows = values.len() / columns.len();
    let table = A::Entity::default().table_name();
    // The names, then a placeholder and its separator for each value.
    let mut sql = String::with_capacity(64 + 16 * columns.len() + values.len() * 8);
    let _ = write!(sql, "INSERT INTO \"{table}\" (");
    write_names(&mut sql, &columns);
    sql.push_str(") VALUES ");
    let mut placeholder = 0usize;
    for row in 0..rows {
        sql.push_str(if row == 0 { "(" } else { ", (" });
        for column in 0..columns.len() {
            if column > 0 {
                sql.push_str(", ");
            }
            placeholder += 1;
            match backend {
                DbBackend::Postgres => {
                    let _ = write!(sql, "${placeholder}");
                }
                _ => sql.push('?'),
            }
        }
        sql.push(')');
    }
    if let Some(OnConflict { key, update }) = on_conflict {
        sql.push_str(" ON CONFLICT (");
        write_names(&mut sql, key);
        sql.push_str(") DO UPDATE SET ");
        for (i, column) in update.iter().enumerate() {
            if i > 0 {
                sql.push_str(", ");
            }
            let name = column.as_str();
            let _ = write!(sql, "\"{name}\" = \"excluded\".\"{name}\"");
        }
    }
    Ok(Some(Statement::from_sql_and_values(
        backend,
        sql,
        Values(values),
    )))
}

/// `"a", "b", …`
fn write_names<C: IdenStatic>(sql: &mut String, columns: &[C]) {
    for (i, column) in columns.iter().enumerate() {
        if i > 0 {
            sql.push_str(", ");
        }
        let _ = write!(sql, "\"{}\"", column.as_str());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use entity::{EventKind, delivery_attempt, event, manifest_entry};
    use sea_orm::sea_query::Expr;
    use sea_orm::{ColumnTrait, QueryTrait, Set};

    /// Whether every column of `A`'s table stores a value as it is given,
    /// as [`insert_rows`] binds it: no column casts it (SeaORM does for a
    /// database `ENUM`, which Herald does not use).
    fn stores_values_as_given<A: ActiveModelTrait>() -> bool {
        Column::<A>::iter().all(|column| {
            let value = Expr::val(Value::String(Some("x".to_owned())));
            column.save_as(value.clone()) == value
        })
    }

    #[test]
    fn the_tables_written_this_way_store_values_as_given() {
        assert!(stores_values_as_given::<event::ActiveModel>());
        assert!(stores_values_as_given::<manifest_entry::ActiveModel>());
        assert!(stores_values_as_given::<delivery_attempt::ActiveModel>());
    }

    fn event_row(seq: i64) -> event::ActiveModel {
        event::ActiveModel {
            seq: Set(seq),
            kind: Set(EventKind::Updated),
            path: Set(Some(format!("src/{seq}.rs"))),
            sha256: Set(Some("ab".repeat(32))),
            size: Set(Some(seq * 10)),
            binary: Set(seq % 2 == 0),
            ..crate::store::outbox::pending_event("sub", "app", "repo", 1_700_000_000_000)
        }
    }

    /// On both backends, [`insert_rows`] of `rows` is SeaORM's
    /// `insert_many` of them: the same SQL and the same values.
    fn same_as_seaorm<A: ActiveModelTrait + Clone + Send>(rows: &[A]) {
        for backend in [DbBackend::Sqlite, DbBackend::Postgres] {
            let ours = insert_rows(backend, rows.to_vec(), None)
                .expect("every column set")
                .expect("rows");
            let seaorm = A::Entity::insert_many(rows.to_vec()).build(backend);
            assert_eq!(ours.sql, seaorm.sql, "{backend:?}");
            assert_eq!(ours.values, seaorm.values, "{backend:?}");
        }
    }

    #[test]
    fn events_are_the_statement_seaorm_makes() {
        same_as_seaorm(&(0..3).map(event_row).collect::<Vec<_>>());
    }

    #[test]
    fn attempts_are_the_statement_seaorm_makes() {
        let row = |n: i64| delivery_attempt::ActiveModel {
            id: Set(format!("att_{n}")),
            event_id: Set("evt".to_owned()),
            chunk_index: Set((n > 0).then_some(2)),
            attempted_at: Set(1_700_000_000_000 + n),
            status_code: Set(Some(503)),
            latency_ms: Set(12),
            error_class: Set(Some(entity::ErrorClass::Timeout)),
            response_excerpt: Set(None),
            request_timestamp: Set(Some(1_700_000_000)),
            traceparent: Set(None),
        };
        same_as_seaorm(&[row(0), row(1)]);
    }

    #[test]
    fn an_upsert_is_the_statement_seaorm_makes() {
        use manifest_entry::Column as C;
        let row = |path: &str| manifest_entry::ActiveModel {
            repository_id: Set("repo".to_owned()),
            path: Set(path.to_owned()),
            sha256: Set("cd".repeat(32)),
            size: Set(12),
            blob_id: Set("ef".repeat(20)),
            binary: Set(false),
            lfs: Set(true),
            pointer_sha256: Set(None),
            pointer_size: Set(Some(130)),
        };
        let key = [C::RepositoryId, C::Path];
        let update = [C::Sha256, C::Size, C::Lfs];
        for backend in [DbBackend::Sqlite, DbBackend::Postgres] {
            let rows = vec![row("a"), row("b/c")];
            let ours = insert_rows(
                backend,
                rows.clone(),
                Some(OnConflict {
                    key: &key,
                    update: &update,
                }),
            )
            .expect("every column set")
            .expect("rows");
            let seaorm = manifest_entry::Entity::insert_many(rows)
                .on_conflict(
                    sea_orm::sea_query::OnConflict::columns(key)
                        .update_columns(update)
                        .to_owned(),
                )
                .build(backend);
            assert_eq!(ours.sql, seaorm.sql, "{backend:?}");
            assert_eq!(ours.values, seaorm.values, "{backend:?}");
        }
    }

    #[test]
    fn no_rows_is_no_statement_and_an_unset_column_is_refused() {
        let none: Vec<event::ActiveModel> = Vec::new();
        assert!(
            insert_rows(DbBackend::Sqlite, none, None)
                .expect("nothing to refuse")
                .is_none()
        );
        let mut partial = event_row(1);
        partial.path = sea_orm::ActiveValue::NotSet;
        let err = insert_rows(DbBackend::Sqlite, [event_row(0), partial], None)
            .expect_err("a column left unset");
        assert!(err.to_string().contains("`path`"), "{err}");
    }
}
