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
