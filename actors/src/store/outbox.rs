//! The transactional outbox: a repository's snapshot advance and the events
//! of every subscription to it are written in one transaction, each
//! subscription's events numbered without gaps from `subscriptions.next_seq`.
//! File content is not copied: events name the blob in the mirror, and the
//! snapshot's commit stays pinned there until its events are delivered.
//!
//! The stored manifest's rows are read and written in [`manifest`]; a failed
//! scan is recorded in [`failures`]; the apps' settings an advance reads are
//! in [`opt_ins`], the opt-in events after the files in [`notices`], and a
//! subscription's status after an advance follows the rule in [`status`].

mod failures;
mod held;
mod manifest;
mod notices;
mod opt_ins;
mod status;

pub use self::failures::GitFailureRecord;
pub(crate) use self::failures::insert_sync_failed;

use std::collections::{BTreeMap, HashMap, HashSet};

use self::manifest::{apply_manifest_delta, load_manifest, snapshot_totals};
use self::notices::{write_submodule_events, write_synced_notice};
use self::opt_ins::OptIns;
use super::globs::{Globs, fail_corrupt_globs};
use super::leases::{ScanFence, hold_scan};
use super::rows::insert_rows;
use super::{Store, StoreError, lock_repositories};
use crate::changes::{
    FileInfo, Manifest, Pending, TreeDelta, Visibility, changes_for, tree_changes, tree_files,
};
use crate::clock::now_ms;
use crate::ids::{EventId, RepoId, SnapshotId};
use crate::payload::SyncedCounts;
use entity::{EventKind, event, manifest_entry, snapshot, subscription};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseTransaction, DbErr, EntityTrait,
    IntoActiveModel, PaginatorTrait, QueryFilter, QuerySelect, Set, Statement,
};

/// Rows per multi-row statement: well below SQLite's and PostgreSQL's bind
/// parameter limits for the widest table (events).
pub(crate) const BATCH: usize = 500;

/// Runs `statements` on `conn` one after the other, making each while the
/// one before it runs. A snapshot's rows cost about as much to turn into a
/// statement (on this thread) as to write (on SQLite's worker thread, or
/// PostgreSQL's server): made in turn, the two overlap instead of adding
/// up. A statement that cannot be made ends the run with its error.
pub(crate) async fn execute_in_turn<C: ConnectionTrait>(
    conn: &C,
    mut statements: impl Iterator<Item = Result<Statement, DbErr>>,
) -> Result<(), DbErr> {
    let mut next = statements.next().transpose()?;
    while let Some(statement) = next {
        // The write is handed over at its first poll, before the next
        // statement is made.
        let (written, made) =
            futures::join!(conn.execute_raw(statement), async { statements.next() });
        written?;
        next = made.transpose()?;
    }
    Ok(())
}

/// A scan's result, ready to be committed.
pub struct SnapshotAdvance {
    pub repository: RepoId,
    /// Written only while the scan still holds its lease and the repository
    /// is still at the head the scan started from.
    pub fence: ScanFence,
    /// Generated before the scan so that the mirror could pin it.
    pub snapshot: SnapshotId,
    pub commit: String,
    pub branch: String,
    pub delta: TreeDelta,
    /// Visibility rules before and after (they differ when an ignore file
    /// changed); per-subscription globs are added here.
    pub old_ignore: Option<ignore::gitignore::Gitignore>,
    pub new_ignore: Option<ignore::gitignore::Gitignore>,
    pub next_scan_at: i64,
}

/// What a committed advance wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdvanceOutcome {
    /// `None` when the commit did not move and only new subscriptions got
    /// their initial snapshot.
    pub snapshot: Option<String>,
    pub events: u64,
    pub subscriptions: usize,
}

/// What every event of one snapshot (or one replay) carries besides its
/// change.
pub(crate) struct Stamp<'a> {
    pub(crate) snapshot_id: &'a Option<String>,
    pub(crate) commit: &'a str,
    pub(crate) trace_parent: &'a Option<String>,
    pub(crate) now: i64,
    /// The replay that writes the events, and the `payload` that holds
    /// their `replay` marker; `None` for a scan.
    pub(crate) replay: Option<(&'a str, &'a str)>,
}

impl Store {
    /// The stored manifest of a repository as path → blob id: what a scan
    /// compares the new tree with when the old commit is gone.
    pub async fn manifest_blob_ids(
        &self,
        repo: &RepoId,
    ) -> Result<HashMap<String, String>, StoreError> {
        let rows: Vec<(String, String)> = manifest_entry::Entity::find()
            .select_only()
            .column(manifest_entry::Column::Path)
            .column(manifest_entry::Column::BlobId)
            .filter(manifest_entry::Column::RepositoryId.eq(repo.as_str()))
            .into_tuple()
            .all(&self.db)
            .await?;
        Ok(rows.into_iter().collect())
    }

    /// Commits a scan: the snapshot, the manifest change, every subscription's
    /// events and the repository's new head, atomically.
    pub async fn advance_snapshot(
        &self,
        advance: SnapshotAdvance,
    ) -> Result<AdvanceOutcome, StoreError> {
        let now = now_ms();
        // The scan's trace context: the events' delivery attempts continue it.
        let trace_parent = crate::telemetry::current_traceparent();
        let txn = self.begin_write().await?;
        let Some(repo) = lock_repositories(&txn, &[advance.repository.as_str().to_owned()])
            .await?
            .pop()
        else {
            // Unsubscribed by everyone while the scan ran: nothing to write.
            return Ok(AdvanceOutcome {
                snapshot: None,
                events: 0,
                subscriptions: 0,
            });
        };
        hold_scan(&txn, &repo.id, &advance.fence.lease).await?;
        if repo.head_commit != advance.fence.expected_head {
            return Err(StoreError::Fenced(
                "the repository moved since the scan started",
            ));
        }
        // A subscriber whose credential was refused gets nothing of this
        // snapshot, not even its paths.
        let subscriptions = subscription::Entity::find()
            .filter(subscription::Column::RepositoryId.eq(repo.id.as_str()))
            .filter(subscription::Column::Access.eq(entity::AccessState::Granted))
            .all(&txn)
            .await?;
        let opt_ins = OptIns::load(&txn, &repo.id).await?;
        let delta = &advance.delta;
        let moved =
            repo.head_commit.as_deref() != Some(advance.commit.as_str()) || !delta.is_empty();
        let new_subscriptions: Vec<&str> = subscriptions
            .iter()
            .filter(|s| s.last_snapshot_id.is_none())
            .map(|s| s.id.as_str())
            .collect();
        let any_new = !new_subscriptions.is_empty();
        // New subscriptions whose app already holds files (imported).
        let holding = if any_new {
            held::holding(&txn, &new_subscriptions).await?
        } else {
            HashSet::new()
        };
        let full = any_new || delta.ignore_rules_changed;

        // The manifest before this snapshot: whole when some subscription needs
        // a full comparison, else just the changed paths.
        let old = if full {
            load_manifest(&txn, &repo.id, None).await?
        } else {
            let paths: Vec<&str> = delta
                .deletes()
                .chain(delta.upserts().map(|(path, _)| path))
                .collect();
            load_manifest(&txn, &repo.id, Some(&paths)).await?
        };

        let snapshot_id = if moved {
            apply_manifest_delta(&txn, &repo.id, delta).await?;
            let (file_count, total_bytes) = snapshot_totals(&txn, &repo, &old, delta).await?;
            snapshot::ActiveModel {
                id: Set(advance.snapshot.as_str().to_owned()),
                repository_id: Set(repo.id.clone()),
                commit_sha: Set(advance.commit.clone()),
                branch: Set(advance.branch.clone()),
                previous_snapshot_id: Set(repo.current_snapshot_id.clone()),
                file_count: Set(file_count),
                total_bytes: Set(total_bytes),
                observed_at: Set(now),
                pinned: Set(true),
            }
            .insert(&txn)
            .await?;
            Some(advance.snapshot.as_str().to_owned())
        } else {
            repo.current_snapshot_id.clone()
        };
        let stamp = Stamp {
            snapshot_id: &snapshot_id,
            commit: &advance.commit,
            trace_parent: &trace_parent,
            now,
            replay: None,
        };
        let tree = Tree {
            old: &old,
            delta,
            moved,
            old_ignore: &advance.old_ignore,
            new_ignore: &advance.new_ignore,
        };

        let mut written = 0u64;
        let mut written_by_kind: BTreeMap<EventKind, u64> = BTreeMap::new();
        let mut tally = |kind: EventKind, n: u64| {
            if n > 0 {
                *written_by_kind.entry(kind).or_default() += n;
            }
        };
        for sub in &subscriptions {
            let first = sub.last_snapshot_id.is_none();
            let globs = match Globs::try_from(sub) {
                Ok(globs) => globs,
                Err(corrupt) => {
                    // Never read as "no filter": it gets nothing until fixed.
                    fail_corrupt_globs(&txn, sub, &corrupt, now).await?;
                    continue;
                }
            };
            let start = FileStart {
                holding: holding.contains(&sub.id),
                resolve_lfs: !opt_ins.unresolved_lfs.contains(&sub.app_id),
            };
            let counts = write_file_events(&txn, sub, &stamp, &tree, &globs, start).await?;
            tally(EventKind::Created, counts.created);
            tally(EventKind::Updated, counts.updated);
            tally(EventKind::Deleted, counts.deleted);
            let mut count = counts.created + counts.updated + counts.deleted;
            // Opt-in `submodule` events follow the snapshot's files, by path.
            if moved && !first && opt_ins.notify_submodules.contains(&sub.app_id) {
                let seq = seq_after(sub, count);
                let n = write_submodule_events(&txn, sub, &stamp, &tree, &globs, seq).await?;
                tally(EventKind::Submodule, n);
                count += n;
            }
            // The opt-in `synced` notice goes last: delivered in `seq`
            // order, it reaches the app once the app holds this snapshot's
            // tree (an empty first snapshot included).
            if opt_ins.notify_synced.contains(&sub.app_id) && (count > 0 || first) {
                write_synced_notice(&txn, sub, &stamp, counts, seq_after(sub, count)).await?;
                tally(EventKind::Synced, 1);
                count += 1;
            }
            written += count;

            // Only a failed subscription's waiting events decide its status.
            let (dead, pending) = if sub.status == entity::SubscriptionStatus::Failed {
                let dead = undelivered(&txn, &sub.id, entity::EventStatus::Dead).await? > 0;
                // Read only when the subscription recovers with nothing new.
                let pending = !dead
                    && count == 0
                    && undelivered(&txn, &sub.id, entity::EventStatus::Pending).await? > 0;
                (dead, pending)
            } else {
                (false, false)
            };
            let transition = status::transition(status::Inputs {
                status: sub.status,
                dead_events: dead,
                pending_events: pending,
                written: count > 0,
                moved,
                first,
                failing: sub.last_error.is_some() || sub.retry_count != 0,
            });
            let status::Transition::Write {
                status,
                clear_failure,
            } = transition
            else {
                continue;
            };
            let mut active = sub.clone().into_active_model();
            active.next_seq = Set(seq_after(sub, count));
            active.last_snapshot_id = Set(snapshot_id.clone());
            active.last_synced_commit = Set(Some(advance.commit.clone()));
            active.status = Set(status);
            if clear_failure {
                active.last_error = Set(None);
                active.retry_count = Set(0);
            }
            active.updated_at = Set(now);
            active.update(&txn).await?;
        }

        let mut active = repo.into_active_model();
        active.head_commit = Set(Some(advance.commit.clone()));
        active.current_snapshot_id = Set(snapshot_id.clone());
        active.resolved_branch = Set(Some(advance.branch.clone()));
        active.last_scanned_at = Set(Some(now));
        active.next_scan_at = Set(advance.next_scan_at);
        active.last_error = Set(None);
        active.updated_at = Set(now);
        active.update(&txn).await?;
        txn.commit().await?;
        if moved {
            let (created, updated, deleted) = tree_changes(&old, delta);
            crate::telemetry::changes_found(created, updated, deleted);
        }
        for (kind, n) in written_by_kind {
            crate::telemetry::events_created(kind, n);
        }
        Ok(AdvanceOutcome {
            snapshot: moved.then_some(advance.snapshot.into_string()),
            events: written,
            subscriptions: subscriptions.len(),
        })
    }
}

/// The tree change one advance writes, as every subscription's share of it
/// is computed from.
struct Tree<'a> {
    /// The manifest before the snapshot (whole, or the changed paths only).
    old: &'a Manifest,
    delta: &'a TreeDelta,
    /// Whether the repository moved to a new snapshot.
    moved: bool,
    /// Visibility rules before and after.
    old_ignore: &'a Option<ignore::gitignore::Gitignore>,
    new_ignore: &'a Option<ignore::gitignore::Gitignore>,
}

/// What a subscription with these globs sees under these ignore rules.
pub(super) fn visibility(
    globs: &Globs,
    ignore: &Option<ignore::gitignore::Gitignore>,
) -> Visibility {
    Visibility::new(ignore.clone(), &globs.include, &globs.exclude)
}

/// How a subscription's file events start.
#[derive(Clone, Copy)]
struct FileStart {
    /// Its app already holds files (imported): its first snapshot sends
    /// only the difference.
    holding: bool,
    /// The app's `resolve_lfs` setting.
    resolve_lfs: bool,
}

/// The `seq` after a subscription's `count` new events.
fn seq_after(sub: &subscription::Model, count: u64) -> i64 {
    sub.next_seq + i64::try_from(count).unwrap_or(i64::MAX)
}

/// A subscription's events still `status`.
async fn undelivered(
    txn: &DatabaseTransaction,
    subscription: &str,
    status: entity::EventStatus,
) -> Result<u64, StoreError> {
    Ok(event::Entity::find()
        .filter(event::Column::SubscriptionId.eq(subscription))
        .filter(event::Column::Status.eq(status))
        .count(txn)
        .await?)
}

/// Writes a subscription's file events of this advance, numbered from its
/// `next_seq`: the difference from what its app holds, every visible file
/// for its first snapshot, the change it sees when the repository moved,
/// else nothing.
async fn write_file_events(
    txn: &DatabaseTransaction,
    sub: &subscription::Model,
    stamp: &Stamp<'_>,
    tree: &Tree<'_>,
    globs: &Globs,
    start: FileStart,
) -> Result<SyncedCounts, StoreError> {
    let resolve_lfs = start.resolve_lfs;
    let new_vis = visibility(globs, tree.new_ignore);
    if start.holding {
        // The first snapshot of a subscription whose app already holds
        // files: only the difference.
        let held = held::take_held(txn, &sub.id).await?;
        let pending = held::changes_from_held(
            &held,
            tree_files(tree.old, tree.delta),
            &new_vis,
            resolve_lfs,
        );
        write_events(txn, sub, stamp, resolve_lfs, pending.into_iter()).await
    } else if sub.last_snapshot_id.is_none() {
        // The first snapshot of a subscription: every visible file,
        // created, streamed from the tree (a million files never become a
        // million pending events at once).
        // Boxed: the future holds a `Send` object, not the closures.
        let files: Box<dyn Iterator<Item = Pending<'_>> + Send> = Box::new(
            tree_files(tree.old, tree.delta)
                .filter(|(path, _)| new_vis.sees(path))
                .map(|(path, file)| Pending {
                    kind: EventKind::Created,
                    path,
                    file,
                    previous: None,
                }),
        );
        write_events(txn, sub, stamp, resolve_lfs, files).await
    } else if !tree.moved {
        Ok(SyncedCounts::default())
    } else {
        let old_vis = visibility(globs, tree.old_ignore);
        let pending = changes_for(tree.old, tree.delta, &old_vis, &new_vis);
        write_events(txn, sub, stamp, resolve_lfs, pending.into_iter()).await
    }
}

/// Writes a subscription's events in the order given, numbered from its
/// `next_seq`, a batch of rows at a time; returns how many of each kind.
/// Without `resolve_lfs` (the app's setting), an LFS file's event names
/// its pointer file, as git holds it.
pub(crate) async fn write_events<'a>(
    txn: &DatabaseTransaction,
    sub: &subscription::Model,
    stamp: &Stamp<'_>,
    resolve_lfs: bool,
    pending: impl Iterator<Item = Pending<'a>>,
) -> Result<SyncedCounts, StoreError> {
    let as_seen = |file: &FileInfo| {
        if resolve_lfs {
            return *file;
        }
        file.unresolved().unwrap_or_else(|| {
            // A manifest row stored before pointers were kept: the object
            // is all that is known, and it goes out marked `lfs`.
            tracing::warn!(blob = %file.blob_id, "an LFS file's pointer is not known; it is sent resolved");
            *file
        })
    };
    let mut counts = SyncedCounts::default();
    let mut seq = sub.next_seq;
    let backend = txn.get_database_backend();
    let mut pending = pending.peekable();
    let statements = std::iter::from_fn(|| {
        pending.peek()?;
        let rows = pending.by_ref().take(BATCH).map(|p| {
            counts.add(p.kind);
            let file = as_seen(p.file);
            let row = event::ActiveModel {
                snapshot_id: Set(stamp.snapshot_id.clone()),
                seq: Set(seq),
                kind: Set(p.kind),
                path: Set(Some(p.path.to_owned())),
                sha256: Set(Some(file.sha256_hex())),
                previous_sha256: Set(p.previous.map(|before| as_seen(before).sha256_hex())),
                size: Set(Some(file.size)),
                blob_id: Set((p.kind != EventKind::Deleted).then(|| file.blob_id.to_string())),
                binary: Set(file.binary),
                lfs: Set(file.lfs),
                commit_sha: Set(Some(stamp.commit.to_owned())),
                trace_parent: Set(stamp.trace_parent.clone()),
                replay_id: Set(stamp.replay.map(|(id, _)| id.to_owned())),
                payload: Set(stamp.replay.map(|(_, marker)| marker.to_owned())),
                ..pending_event(&sub.id, &sub.app_id, &sub.repository_id, stamp.now)
            };
            seq += 1;
            row
        });
        insert_rows(backend, rows, None).transpose()
    });
    execute_in_turn(txn, statements).await?;
    Ok(counts)
}

/// A new pending event of a subscription, due now, with no file fields; the
/// caller sets its `seq`, `kind` and whatever else its kind carries.
pub(crate) fn pending_event(
    subscription_id: &str,
    app_id: &str,
    repository_id: &str,
    now: i64,
) -> event::ActiveModel {
    event::ActiveModel {
        id: Set(EventId::generate().into_string()),
        subscription_id: Set(subscription_id.to_owned()),
        app_id: Set(app_id.to_owned()),
        repository_id: Set(repository_id.to_owned()),
        snapshot_id: Set(None),
        seq: Set(0),
        // Every caller sets its own kind.
        kind: Set(EventKind::Created),
        path: Set(None),
        sha256: Set(None),
        previous_sha256: Set(None),
        size: Set(None),
        blob_id: Set(None),
        binary: Set(false),
        lfs: Set(false),
        renamed_from: Set(None),
        commit_sha: Set(None),
        payload: Set(None),
        status: Set(entity::EventStatus::Pending),
        attempts: Set(0),
        next_attempt_at: Set(now),
        last_error: Set(None),
        created_at: Set(now),
        delivered_at: Set(None),
        trace_parent: Set(None),
        stream_pos: Set(None),
        replay_id: Set(None),
    }
}
