//! The refs Herald writes in a mirror: the watched branch, the snapshots
//! whose events wait for delivery, and the last recorded snapshot (the old
//! side of the next diff). Both the head check ([`super::remote`]) and the
//! mirror ([`super::mirror`]) name refs through here.

/// Ref under which a fetched branch is kept in the mirror.
pub(super) fn mirror_ref(branch: &str) -> String {
    format!("refs/heads/{branch}")
}

/// Ref that keeps a snapshot's commit (and so its blobs) reachable while its
/// events wait for delivery.
pub fn snapshot_ref(snapshot_id: &str) -> String {
    format!("refs/herald/snapshots/{snapshot_id}")
}

/// Ref that keeps the commit of the repository's last recorded snapshot,
/// the old side of the next scan's diff, reachable in a mirror that holds no
/// history.
pub(super) const BASE_REF: &str = "refs/herald/base";

/// Ref that keeps a submodule's commit (and so its tree) in the mirror of a
/// repository watched with its submodules expanded, while a kept commit of
/// the repository points at it.
pub(super) fn module_ref(commit: git2::Oid) -> String {
    format!("{MODULES_PREFIX}{commit}")
}

/// Where the [`module_ref`]s live.
pub(super) const MODULES_PREFIX: &str = "refs/herald/modules/";

/// Where a submodule's default branch is fetched with its history, for a
/// server that serves a commit only within a branch; removed once read.
pub(super) const MODULE_HISTORY_REF: &str = "refs/herald/module-history";
