//! The scan pool: a bounded number of blocking workers for git2 and hashing,
//! off the async executor. A watcher hands a job to the pool and gets its
//! result back; at most `size` jobs run at once, the others wait their turn.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use git2::Oid;
use ignore::gitignore::Gitignore;
use tokio::sync::Semaphore;

use crate::changes::{self, TreeDelta};
use crate::git::{GitError, GitFailure, Mirror, RemoteSpec};

#[derive(Clone)]
pub struct ScanPool {
    permits: Arc<Semaphore>,
}

impl std::fmt::Debug for ScanPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScanPool")
            .field("available", &self.permits.available_permits())
            .finish()
    }
}

impl ScanPool {
    pub fn new(size: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(size.max(1))),
        }
    }

    /// Runs `job` on a blocking worker once one is free. A panicking job
    /// resumes its panic in the caller, so the caller's supervisor sees it.
    pub async fn run<T, F>(&self, job: F) -> T
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let _permit = self
            .permits
            .acquire()
            .await
            .expect("the pool's semaphore is never closed");
        match tokio::task::spawn_blocking(job).await {
            Ok(value) => value,
            Err(err) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
            Err(err) => panic!("scan worker cancelled: {err}"),
        }
    }
}

/// What a scan needs to know, gathered from the database by the watcher.
pub struct ScanJob {
    pub mirror: PathBuf,
    pub remote: RemoteSpec,
    /// `None`: the remote's default branch.
    pub branch: Option<String>,
    /// The commit of the current snapshot, if any.
    pub known_head: Option<String>,
    /// The stored manifest (path → blob id), given when the known head is
    /// missing from the mirror (first scan, history rewrite, rebuilt mirror).
    pub manifest: Option<HashMap<String, String>>,
    /// The id the new snapshot will get, pinned in the mirror.
    pub snapshot_id: String,
    /// Snapshots whose events are all settled: their pins can go.
    pub unpin: Vec<String>,
}

/// What a scan found.
pub enum ScanOutcome {
    /// The branch did not move.
    Unchanged {
        branch: String,
        commit: String,
        ignore: Option<Gitignore>,
    },
    /// The branch moved: the change, hashed, and the commit pinned.
    Changed {
        branch: String,
        commit: String,
        delta: TreeDelta,
        old_ignore: Option<Gitignore>,
        new_ignore: Option<Gitignore>,
    },
    /// The known head is not in the mirror: run again with the manifest.
    NeedsManifest,
}

fn read_failure(err: impl std::fmt::Display) -> GitError {
    tracing::warn!(error = %err, "reading the mirror failed");
    GitError {
        failure: GitFailure::Other,
        message: "the local mirror could not be read".to_owned(),
        damaged_mirror: true,
    }
}

/// The blocking part of a scan: ask the remote, fetch when it moved, diff.
/// A damaged mirror is rebuilt from the remote once, and the scan repeated.
pub fn scan(job: ScanJob) -> Result<ScanOutcome, GitError> {
    match scan_with(&job, Mirror::open(&job.mirror)?) {
        Err(err) if err.damaged_mirror => {
            tracing::warn!(mirror = %job.mirror.display(), "mirror damaged; rebuilding it from the remote");
            let mirror = Mirror::open(&job.mirror)?.rebuild()?;
            scan_with(&job, mirror)
        }
        outcome => outcome,
    }
}

fn scan_with(job: &ScanJob, mirror: Mirror) -> Result<ScanOutcome, GitError> {
    for snapshot in &job.unpin {
        mirror.unpin(snapshot);
    }
    let head = mirror.remote_head(&job.remote, job.branch.as_deref())?;
    let commit = match mirror.local_head(&head.branch) {
        Some(local) if local == head.commit => local,
        _ => mirror.fetch(&job.remote, &head.branch)?,
    };
    let repo = mirror.repo();
    let commit_hex = commit.to_string();
    let new_ignore = changes::ignore_rules(repo, commit).map_err(read_failure)?;
    if job.known_head.as_deref() == Some(commit_hex.as_str()) {
        return Ok(ScanOutcome::Unchanged {
            branch: head.branch,
            commit: commit_hex,
            ignore: new_ignore,
        });
    }
    let old = job
        .known_head
        .as_deref()
        .and_then(|h| Oid::from_str(h).ok())
        .filter(|oid| repo.find_commit(*oid).is_ok());
    let (delta, old_ignore) = match (old, &job.manifest, &job.known_head) {
        (Some(old), _, _) => (
            changes::diff_commits(repo, old, commit).map_err(read_failure)?,
            changes::ignore_rules(repo, old).map_err(read_failure)?,
        ),
        (None, Some(manifest), _) => (
            changes::diff_against_manifest(repo, manifest, commit).map_err(read_failure)?,
            // The old rules are gone with the old commit; judge the old files by
            // the new rules (a rewrite that also changed the ignore files may
            // show a once-ignored file as deleted, never the reverse).
            new_ignore.clone(),
        ),
        (None, None, None) => (
            changes::diff_against_manifest(repo, &HashMap::new(), commit).map_err(read_failure)?,
            None,
        ),
        (None, None, Some(_)) => return Ok(ScanOutcome::NeedsManifest),
    };
    mirror.pin(&job.snapshot_id, commit)?;
    Ok(ScanOutcome::Changed {
        branch: head.branch,
        commit: commit_hex,
        delta,
        old_ignore,
        new_ignore,
    })
}
