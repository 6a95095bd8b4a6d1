//! The opt-in events a snapshot advance writes after a subscription's file
//! events: a `submodule` event for each submodule moved, then the `synced`
//! notice.

use entity::{EventKind, event, subscription};
use sea_orm::{ActiveModelTrait, DatabaseTransaction, EntityTrait, Set};

use super::{BATCH, Globs, Stamp, Tree, pending_event, visibility};
use crate::payload::{SubmoduleMove, SyncedCounts, SyncedNotice};
use crate::store::StoreError;

/// Writes a `submodule` event, numbered from `seq`, for every submodule
/// move the subscription sees (on either side), a batch of rows at a time;
/// returns how many.
pub(super) async fn write_submodule_events(
    txn: &DatabaseTransaction,
    sub: &subscription::Model,
    stamp: &Stamp<'_>,
    tree: &Tree<'_>,
    globs: &Globs,
    seq: i64,
) -> Result<u64, StoreError> {
    let new_vis = visibility(globs, tree.new_ignore);
    let old_vis = visibility(globs, tree.old_ignore);
    let rows: Vec<event::ActiveModel> = tree
        .delta
        .submodules()
        .iter()
        .filter(|change| new_vis.sees(&change.path) || old_vis.sees(&change.path))
        .zip(seq..)
        .map(|(change, seq)| {
            let moved_to = SubmoduleMove {
                previous_commit: change.old.map(|oid| oid.to_string()),
                commit: change.new.map(|oid| oid.to_string()),
                url: change.url.clone(),
            };
            event::ActiveModel {
                seq: Set(seq),
                kind: Set(EventKind::Submodule),
                path: Set(Some(change.path.clone())),
                snapshot_id: Set(stamp.snapshot_id.clone()),
                trace_parent: Set(stamp.trace_parent.clone()),
                commit_sha: Set(Some(stamp.commit.to_owned())),
                payload: Set(Some(
                    serde_json::to_string(&moved_to).expect("notices serialise"),
                )),
                ..pending_event(&sub.id, &sub.app_id, &sub.repository_id, stamp.now)
            }
        })
        .collect();
    let written = u64::try_from(rows.len()).unwrap_or(u64::MAX);
    for batch in rows.chunks(BATCH) {
        event::Entity::insert_many(batch.iter().cloned())
            .exec_without_returning(txn)
            .await?;
    }
    Ok(written)
}

/// Writes the subscription's `synced` notice at `seq`: this snapshot's
/// counts of file events, and the commit it was at before (none for its
/// first snapshot).
pub(super) async fn write_synced_notice(
    txn: &DatabaseTransaction,
    sub: &subscription::Model,
    stamp: &Stamp<'_>,
    counts: SyncedCounts,
    seq: i64,
) -> Result<(), StoreError> {
    let notice = SyncedNotice {
        previous_commit_sha: sub
            .last_synced_commit
            .clone()
            .filter(|_| sub.last_snapshot_id.is_some()),
        counts,
    };
    event::ActiveModel {
        seq: Set(seq),
        kind: Set(EventKind::Synced),
        snapshot_id: Set(stamp.snapshot_id.clone()),
        trace_parent: Set(stamp.trace_parent.clone()),
        commit_sha: Set(Some(stamp.commit.to_owned())),
        payload: Set(Some(
            serde_json::to_string(&notice).expect("notices serialise"),
        )),
        ..pending_event(&sub.id, &sub.app_id, &sub.repository_id, stamp.now)
    }
    .insert(txn)
    .await?;
    Ok(())
}
