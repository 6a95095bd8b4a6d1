//! A subscription that starts from what its app already holds (files
//! another system delivered, imported from Docora's `app_delivered_files`):
//! its first snapshot is compared with those files instead of with nothing,
//! so only the difference is sent, and the rows are consumed with it.

use std::collections::{BTreeMap, HashSet};

use entity::{EventKind, held_file};
use git2::Oid;
use sea_orm::{
    ColumnTrait, DatabaseTransaction, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
};

use super::BATCH;
use crate::changes::{FileInfo, Pending, Visibility};
use crate::store::StoreError;

/// What an app holds of one repository, by path: each file as a
/// [`FileInfo`] with only its SHA-256 known (no blob, no size).
pub(super) type Held = BTreeMap<String, FileInfo>;

/// The subscriptions among `new` (ids of subscriptions without a snapshot)
/// that start from held files.
pub(super) async fn holding(
    txn: &DatabaseTransaction,
    new: &[&str],
) -> Result<HashSet<String>, StoreError> {
    let mut found = HashSet::new();
    for batch in new.chunks(BATCH) {
        let ids: Vec<String> = held_file::Entity::find()
            .select_only()
            .column(held_file::Column::SubscriptionId)
            .distinct()
            .filter(held_file::Column::SubscriptionId.is_in(batch.iter().copied()))
            .into_tuple()
            .all(txn)
            .await?;
        found.extend(ids);
    }
    Ok(found)
}

/// The files a subscription's app holds, and their rows removed: the
/// snapshot that reads them replaces them.
pub(super) async fn take_held(
    txn: &DatabaseTransaction,
    subscription: &str,
) -> Result<Held, StoreError> {
    let rows: Vec<(String, String)> = held_file::Entity::find()
        .select_only()
        .column(held_file::Column::Path)
        .column(held_file::Column::Sha256)
        .filter(held_file::Column::SubscriptionId.eq(subscription))
        .order_by_asc(held_file::Column::Path)
        .into_tuple()
        .all(txn)
        .await?;
    held_file::Entity::delete_many()
        .filter(held_file::Column::SubscriptionId.eq(subscription))
        .exec(txn)
        .await?;
    let mut held = Held::new();
    for (path, sha) in rows {
        let mut sha256 = [0u8; 32];
        // Rows are checked when they are written; one that is not a digest
        // matches no file, so the file is sent again rather than skipped.
        let _ = hex::decode_to_slice(&sha, &mut sha256);
        held.insert(
            path,
            FileInfo {
                blob_id: Oid::ZERO_SHA1,
                sha256,
                size: 0,
                binary: false,
                lfs: false,
                pointer: None,
            },
        );
    }
    Ok(held)
}

/// The events that bring an app holding `held` to the new tree: the
/// visible files it lacks (`created`), those whose bytes differ
/// (`updated`, the held file as the previous one) and the held files the
/// tree no longer has or no longer shows (`deleted`). Deletes, then
/// creates, then updates, each by path, as every change set.
pub(super) fn changes_from_held<'a>(
    held: &'a Held,
    tree: impl Iterator<Item = (&'a str, &'a FileInfo)>,
    visibility: &Visibility,
    resolve_lfs: bool,
) -> Vec<Pending<'a>> {
    let mut created = Vec::new();
    let mut updated = Vec::new();
    let mut kept: HashSet<&str> = HashSet::new();
    for (path, file) in tree.filter(|(path, _)| visibility.sees(path)) {
        let Some(before) = held.get(path) else {
            created.push(Pending {
                kind: EventKind::Created,
                path,
                file,
                previous: None,
            });
            continue;
        };
        kept.insert(path);
        // The bytes the app would get: an LFS object's, or its pointer's
        // when the app does not resolve LFS.
        let sent = if resolve_lfs {
            file.sha256
        } else {
            file.unresolved().map_or(file.sha256, |seen| seen.sha256)
        };
        if sent != before.sha256 {
            updated.push(Pending {
                kind: EventKind::Updated,
                path,
                file,
                previous: Some(before),
            });
        }
    }
    let deleted = held
        .iter()
        .filter(|(path, _)| !kept.contains(path.as_str()))
        .map(|(path, file)| Pending {
            kind: EventKind::Deleted,
            path,
            file,
            previous: None,
        });
    deleted.chain(created).chain(updated).collect()
}
