//! The stored manifest as a snapshot advance reads and writes it: the rows
//! a diff needs (whole, in keyset pages, or only the changed paths), the new
//! snapshot's totals, and the delta applied to the rows, a batch at a time.

use entity::{manifest_entry, repository, snapshot};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseTransaction, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect, Set,
};

use super::BATCH;

use crate::changes::{FileInfo, Manifest, PointerFile, TreeDelta};
use crate::store::StoreError;
use crate::store::rows::{OnConflict, insert_rows};

/// Manifest rows read per query when the whole manifest is loaded.
const MANIFEST_PAGE: u64 = 10_000;

/// The stored manifest of a repository, or only the rows of `only`'s
/// paths. Rows are read in pages of the columns a snapshot needs, so a
/// large manifest costs its map, never all its rows as well.
pub(super) async fn load_manifest(
    txn: &DatabaseTransaction,
    repository: &str,
    only: Option<&[&str]>,
) -> Result<Manifest, StoreError> {
    type Row = (
        String,
        String,
        String,
        i64,
        bool,
        bool,
        Option<String>,
        Option<i64>,
    );
    fn add(known: &mut Manifest, row: Row) {
        let (path, blob_id, sha256, size, binary, lfs, pointer_sha256, pointer_size) = row;
        match FileInfo::from_hex(&blob_id, &sha256, size, binary, lfs) {
            Some(mut info) => {
                info.pointer = pointer_sha256
                    .zip(pointer_size)
                    .and_then(|(sha256, size)| PointerFile::from_hex(&sha256, size));
                known.insert(path, info);
            }
            // Unreadable: treated as absent, so the file is sent again.
            None => tracing::warn!(path = %path, "skipped a malformed manifest row"),
        }
    }
    let columns = || {
        manifest_entry::Entity::find()
            .select_only()
            .columns([
                manifest_entry::Column::Path,
                manifest_entry::Column::BlobId,
                manifest_entry::Column::Sha256,
                manifest_entry::Column::Size,
                manifest_entry::Column::Binary,
                manifest_entry::Column::Lfs,
                manifest_entry::Column::PointerSha256,
                manifest_entry::Column::PointerSize,
            ])
            .filter(manifest_entry::Column::RepositoryId.eq(repository))
    };
    let mut known = Manifest::new();
    match only {
        None => {
            // Keyset pages: each starts after the last path of the one before.
            let mut after: Option<String> = None;
            loop {
                let mut page = columns()
                    .order_by_asc(manifest_entry::Column::Path)
                    .limit(MANIFEST_PAGE);
                if let Some(after) = after.take() {
                    page = page.filter(manifest_entry::Column::Path.gt(after));
                }
                let rows = page.into_tuple::<Row>().all(txn).await?;
                let full = rows.len() as u64 == MANIFEST_PAGE;
                after = rows.last().map(|row| row.0.clone());
                for row in rows {
                    add(&mut known, row);
                }
                if !full {
                    break;
                }
            }
        }
        Some(paths) => {
            for batch in paths.chunks(BATCH) {
                for row in columns()
                    .filter(manifest_entry::Column::Path.is_in(batch.iter().copied()))
                    .into_tuple::<Row>()
                    .all(txn)
                    .await?
                {
                    add(&mut known, row);
                }
            }
        }
    }
    Ok(known)
}

/// Files and bytes of the new snapshot: the previous snapshot's totals plus
/// the change (no recount of the manifest), or a recount for the first one.
pub(super) async fn snapshot_totals<C: ConnectionTrait>(
    conn: &C,
    repo: &repository::Model,
    old: &Manifest,
    delta: &TreeDelta,
) -> Result<(i64, i64), StoreError> {
    let previous = match &repo.current_snapshot_id {
        Some(id) => snapshot::Entity::find_by_id(id.as_str()).one(conn).await?,
        None => None,
    };
    let Some(previous) = previous else {
        return manifest_totals(conn, &repo.id).await;
    };
    let (mut files, mut bytes) = (previous.file_count, previous.total_bytes);
    for path in delta.deletes() {
        if let Some(known) = old.get(path) {
            files -= 1;
            bytes -= known.size;
        }
    }
    for (path, info) in delta.upserts() {
        match old.get(path) {
            Some(known) => bytes += info.size - known.size,
            None => {
                files += 1;
                bytes += info.size;
            }
        }
    }
    Ok((files, bytes))
}

/// Number of files and bytes in the repository's manifest.
async fn manifest_totals<C: ConnectionTrait>(
    conn: &C,
    repository: &str,
) -> Result<(i64, i64), StoreError> {
    // PostgreSQL sums BIGINTs as NUMERIC: cast back so both backends agree.
    let totals: Option<(i64, i64)> = manifest_entry::Entity::find()
        .select_only()
        .column_as(manifest_entry::Column::Path.count(), "files")
        .column_as(
            Expr::cust("CAST(COALESCE(SUM(size), 0) AS BIGINT)"),
            "bytes",
        )
        .filter(manifest_entry::Column::RepositoryId.eq(repository))
        .into_tuple()
        .one(conn)
        .await?;
    Ok(totals.unwrap_or((0, 0)))
}

/// Writes the change into the repository's manifest rows: the deleted paths
/// removed, the new and changed ones upserted, a batch at a time.
pub(super) async fn apply_manifest_delta<C: ConnectionTrait>(
    conn: &C,
    repository: &str,
    delta: &TreeDelta,
) -> Result<(), StoreError> {
    let mut deletes = delta.deletes().peekable();
    while deletes.peek().is_some() {
        let batch: Vec<&str> = deletes.by_ref().take(BATCH).collect();
        manifest_entry::Entity::delete_many()
            .filter(manifest_entry::Column::RepositoryId.eq(repository))
            .filter(manifest_entry::Column::Path.is_in(batch))
            .exec(conn)
            .await?;
    }
    use manifest_entry::Column;
    let backend = conn.get_database_backend();
    let mut upserts = delta.upserts().peekable();
    let statements = std::iter::from_fn(|| {
        upserts.peek()?;
        let rows = upserts
            .by_ref()
            .take(BATCH)
            .map(|(path, info)| manifest_entry::ActiveModel {
                repository_id: Set(repository.to_owned()),
                path: Set(path.to_owned()),
                sha256: Set(info.sha256_hex()),
                size: Set(info.size),
                blob_id: Set(info.blob_id.to_string()),
                binary: Set(info.binary),
                lfs: Set(info.lfs),
                pointer_sha256: Set(info.pointer.map(|p| hex::encode(p.sha256))),
                pointer_size: Set(info.pointer.map(|p| i64::from(p.size))),
            });
        insert_rows(
            backend,
            rows,
            Some(OnConflict {
                key: &[Column::RepositoryId, Column::Path],
                update: &[
                    Column::Sha256,
                    Column::Size,
                    Column::BlobId,
                    Column::Binary,
                    Column::Lfs,
                    Column::PointerSha256,
                    Column::PointerSize,
                ],
            }),
        )
        .transpose()
    });
    super::execute_in_turn(conn, statements).await?;
    Ok(())
}
