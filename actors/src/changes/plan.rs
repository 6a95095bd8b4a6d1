//! What a change means for one subscription, before any of it is stored:
//! the old side of a diff ([`Manifest`]), the changes the subscription sees
//! in the order its events are numbered ([`changes_for`]), the new tree
//! merged from the old one and the change ([`tree_files`]), and a replay's
//! change between two commits ([`ReplayDiff`]). The store's outbox writes
//! these as events; a replay counts them before it asks the store for room.

use std::collections::BTreeMap;

use entity::EventKind;

use super::{FileInfo, TreeDelta, Visibility};

/// The stored manifest (or the part of it a snapshot needs), by path.
pub type Manifest = BTreeMap<String, FileInfo>;

/// The change between two commits a replay writes again, ready to be
/// written as events of one subscription.
pub struct ReplayDiff {
    /// Full SHAs.
    pub from: String,
    pub to: String,
    /// The old side of the change: the `from` tree's files that it touches
    /// (and, when the ignore rules changed, those whose visibility did).
    pub old: Manifest,
    pub delta: TreeDelta,
    pub old_visibility: Visibility,
    pub new_visibility: Visibility,
    /// How many events the subscription gets of it.
    pub events: usize,
}

/// One change for one subscription, before it gets its id and number.
pub(crate) struct Pending<'a> {
    pub(crate) kind: EventKind,
    pub(crate) path: &'a str,
    pub(crate) file: &'a FileInfo,
    /// The file an update replaces.
    pub(crate) previous: Option<&'a FileInfo>,
}

/// How many files the snapshot created, updated and deleted in the tree.
pub(crate) fn tree_changes(old: &Manifest, delta: &TreeDelta) -> (u64, u64, u64) {
    let updated = delta
        .upserts()
        .filter(|(path, _)| old.contains_key(*path))
        .count();
    let deleted = delta
        .deletes()
        .filter(|path| old.contains_key(*path))
        .count();
    (
        (delta.upserts().len() - updated) as u64,
        updated as u64,
        deleted as u64,
    )
}

/// Every file of the new tree in byte order of its path: the old manifest
/// with the change applied. Both sides are sorted, so this is a merge.
pub(crate) fn tree_files<'a>(
    old: &'a Manifest,
    delta: &'a TreeDelta,
) -> impl Iterator<Item = (&'a str, &'a FileInfo)> + Send + 'a {
    let mut kept = old
        .iter()
        .filter(|(path, _)| !delta.deleted(path) && delta.upsert(path).is_none())
        .map(|(path, file)| (path.as_str(), file))
        .peekable();
    let mut changed = delta.upserts().peekable();
    std::iter::from_fn(move || match (kept.peek(), changed.peek()) {
        (Some(a), Some(b)) if a.0.as_bytes() < b.0.as_bytes() => kept.next(),
        (Some(_), None) => kept.next(),
        _ => changed.next(),
    })
}

/// The events of one subscription that was at the previous snapshot:
/// deletes, then creates, then updates, each by path (byte order).
pub(crate) fn changes_for<'a>(
    old: &'a Manifest,
    delta: &'a TreeDelta,
    old_vis: &Visibility,
    new_vis: &Visibility,
) -> Vec<Pending<'a>> {
    let mut deleted = Vec::new();
    let mut created = Vec::new();
    let mut updated = Vec::new();
    // Paths to judge: the changed ones, or every known one when visibility
    // itself may have changed.
    let mut paths: std::collections::BTreeSet<&'a str> =
        delta.upserts().map(|(path, _)| path).collect();
    paths.extend(delta.deletes());
    if delta.ignore_rules_changed {
        paths.extend(old.keys().map(String::as_str));
    }
    for path in paths {
        let before = old.get(path).filter(|_| old_vis.sees(path));
        let after = if delta.deleted(path) {
            None
        } else {
            delta
                .upsert(path)
                .or_else(|| old.get(path))
                .filter(|_| new_vis.sees(path))
        };
        match (before, after) {
            (Some(before), None) => deleted.push(Pending {
                kind: EventKind::Deleted,
                path,
                file: before,
                previous: None,
            }),
            (None, Some(after)) => created.push(Pending {
                kind: EventKind::Created,
                path,
                file: after,
                previous: None,
            }),
            (Some(before), Some(after)) if before.sha256 != after.sha256 => updated.push(Pending {
                kind: EventKind::Updated,
                path,
                file: after,
                previous: Some(before),
            }),
            _ => {}
        }
    }
    // Each list is already in path order: the paths came from a sorted set.
    deleted.into_iter().chain(created).chain(updated).collect()
}
