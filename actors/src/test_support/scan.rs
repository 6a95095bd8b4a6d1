//! One scan through the engine's own code, without the actors around it:
//! claim the scan lease, scan on a blocking thread, write the outbox under
//! the lease's fence, release the lease.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::git::{ConnectRule, LowSpeed, RemoteSpec};
use crate::ids::{RepoId, SnapshotId};
use crate::repo_watcher::{NoSnapshot, snapshot_advance};
use crate::scan::{Accessor, ScanJob, ScanOutcome};
use crate::store::Store;
use crate::store::leases::ScanFence;
use crate::store::outbox::AdvanceOutcome;

/// How long a driven scan holds its lease: longer than any test's scan.
const LEASE_TTL_MS: i64 = 3_600_000;

/// A remote on loopback (or a local path), admitted whatever its kind;
/// `data_dir` stands for Herald's data directory, which is never read.
pub fn loopback_remote(url: &str, timeout: Duration, data_dir: &Path) -> RemoteSpec {
    RemoteSpec {
        url: url.to_owned(),
        credentials: None,
        timeout,
        low_speed: LowSpeed::default(),
        rule: ConnectRule {
            allow_private: true,
            allow_http: true,
            allow_local: true,
            data_dir: data_dir.to_owned(),
        },
    }
}

/// A scan that ran under its lease, its outbox write not made yet.
pub struct Scanned {
    repository: RepoId,
    fence: ScanFence,
    snapshot: SnapshotId,
    /// What the scan found.
    pub outcome: ScanOutcome,
    /// How long the blocking scan (git and hashing) took.
    pub took: Duration,
}

/// What [`Scanned::advance`] wrote.
pub struct Advanced {
    pub outcome: AdvanceOutcome,
    /// Files the scan found changed (upserts and deletes).
    pub changes: usize,
    /// How long the outbox transaction took.
    pub took: Duration,
}

/// Claims `repository`'s scan lease as `claimant` and scans it from
/// `remote` into `mirror`, from the head of its current snapshot, on the
/// repository's branch, as one anonymous subscriber. Every snapshot stays
/// pinned (nothing is delivered here).
pub async fn scan(
    store: &Store,
    repository: &RepoId,
    remote: RemoteSpec,
    mirror: &Path,
    claimant: &str,
) -> Scanned {
    let current = store
        .repository(repository)
        .await
        .expect("a query")
        .expect("the repository");
    let snapshot = SnapshotId::generate();
    // The outbox writes only under a scan lease, from the head it started at.
    let fence = ScanFence {
        lease: store
            .claim_scan(repository, claimant, LEASE_TTL_MS)
            .await
            .expect("a query")
            .expect("nobody else scans here"),
        expected_head: current.head_commit.clone(),
    };
    let job = ScanJob {
        mirror: mirror.to_owned(),
        remote,
        accessors: vec![Accessor::anonymous(claimant)],
        branch: Some(current.branch).filter(|b| !b.is_empty()),
        known_head: current.head_commit,
        manifest: None,
        snapshot_id: snapshot.clone(),
        unpin: Vec::new(),
        lfs: true,
        expand_submodules: false,
    };
    let started = Instant::now();
    let outcome = tokio::task::spawn_blocking(move || crate::scan::scan(job))
        .await
        .expect("the scan runs")
        .outcome
        .expect("the scan succeeds");
    Scanned {
        repository: repository.clone(),
        fence,
        snapshot,
        outcome,
        took: started.elapsed(),
    }
}

impl Scanned {
    /// Writes the outbox as the watcher does, then releases the lease.
    pub async fn advance(self, store: &Store) -> Advanced {
        let Scanned {
            repository,
            fence,
            snapshot,
            outcome,
            ..
        } = self;
        let advance = match snapshot_advance(outcome, &repository, &fence, snapshot, 0) {
            Ok(advance) => advance,
            Err(NoSnapshot::NoAccess) => panic!("the test's remote is public"),
            Err(NoSnapshot::NeedsManifest) => panic!("the mirror keeps every observed commit"),
        };
        let changes = advance.delta.len();
        let started = Instant::now();
        let outcome = store
            .advance_snapshot(advance)
            .await
            .expect("the outbox write");
        let took = started.elapsed();
        store
            .release_scan(&repository, &fence.lease)
            .await
            .expect("the lease is released");
        Advanced {
            outcome,
            changes,
            took,
        }
    }
}

/// [`scan`], then [`Scanned::advance`].
pub async fn scan_and_advance(
    store: &Store,
    repository: &RepoId,
    remote: RemoteSpec,
    mirror: &Path,
    claimant: &str,
) -> Advanced {
    scan(store, repository, remote, mirror, claimant)
        .await
        .advance(store)
        .await
}
