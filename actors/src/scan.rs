//! What a scan does on a worker: check the remote with each subscriber's
//! credential, fetch, diff against the last snapshot. Everything here blocks;
//! it runs on the scan workers ([`workers`]), never on the async executor.

pub mod replay;
pub mod workers;

pub use workers::{Priority, ScanPool, ScanSlot, WorkerLost};

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use git2::Oid;
use ignore::gitignore::Gitignore;

use crate::changes::{self, ChangeError, ModuleSource, Modules, Reading, TreeDelta};
use crate::git::{
    self, Credentials, GitError, GitFailure, Mirror, RemoteHead, RemoteSpec, UpdateFailure,
};
use crate::ids::SnapshotId;

/// One subscriber's credential, as a scan uses or checks it.
#[derive(Debug, Clone)]
pub struct Accessor {
    pub subscription: String,
    /// `None`: the subscriber reads the repository anonymously.
    pub credentials: Option<Credentials>,
    /// Its last check is older than `security.access_recheck_interval`.
    pub due: bool,
    /// Its access is currently proven: the scan may fetch with it. A denied
    /// subscriber is only checked again (when due).
    pub granted: bool,
}

impl Accessor {
    /// A subscriber that reads the repository without a credential, its
    /// access proven (tools and tests that scan outside the engine).
    pub fn anonymous(subscription: impl Into<String>) -> Self {
        Self {
            subscription: subscription.into(),
            credentials: None,
            due: false,
            granted: true,
        }
    }
}

/// What the remote said of one subscriber's credential.
#[derive(Debug, Clone)]
pub enum Verdict {
    Granted,
    /// Refused, or the repository is invisible to it; the message is safe.
    Denied(GitError),
}

/// What a scan needs to know, gathered from the database by the watcher.
#[derive(Clone)]
pub struct ScanJob {
    pub mirror: PathBuf,
    /// The remote, without a credential: each accessor brings its own.
    pub remote: RemoteSpec,
    /// The subscribers' credentials, the preferred one first.
    pub accessors: Vec<Accessor>,
    /// `None`: the remote's default branch.
    pub branch: Option<String>,
    /// The commit of the current snapshot, if any.
    pub known_head: Option<String>,
    /// The stored manifest (path → blob id), given when the known head is
    /// missing from the mirror (first scan, history rewrite, rebuilt mirror).
    pub manifest: Option<HashMap<String, String>>,
    /// The id the new snapshot will get, pinned in the mirror.
    pub snapshot_id: SnapshotId,
    /// Snapshots whose events are all settled: their pins can go.
    pub unpin: Vec<String>,
    /// LFS pointers are described by their objects (`git.lfs`).
    pub lfs: bool,
    /// The repository is watched with its submodules expanded: each
    /// submodule's files are files of the tree, under its path.
    pub expand_submodules: bool,
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
        delta: Box<TreeDelta>,
        old_ignore: Option<Gitignore>,
        new_ignore: Option<Gitignore>,
    },
    /// The known head is not in the mirror: run again with the manifest.
    NeedsManifest,
    /// No subscriber's credential reads the repository (each one refused):
    /// nothing was fetched, and the verdicts say whose access is gone.
    NoAccess,
}

fn read_failure(err: impl std::fmt::Display) -> GitError {
    tracing::warn!(error = %err, "reading the mirror failed");
    GitError {
        failure: GitFailure::Other,
        message: "the local mirror could not be read".to_owned(),
        damaged_mirror: true,
    }
}

/// A diff's failure as the scan's: a submodule that could not be fetched
/// is its remote's failure (classified, the mirror is sound); anything else
/// is the mirror's.
pub(crate) fn change_failure(err: ChangeError) -> GitError {
    match err {
        ChangeError::Submodule { path, error } => GitError {
            message: format!("submodule `{path}`: {}", error.message),
            ..error
        },
        err @ ChangeError::Read(_) => read_failure(err),
    }
}

/// Fetches submodule commits into the mirror being scanned, each from the
/// submodule's own remote under the watched remote's rule
/// ([`RemoteSpec::submodule`]).
pub(crate) struct MirrorModules<'m> {
    pub(crate) mirror: &'m Mirror,
    pub(crate) remote: &'m RemoteSpec,
}

impl ModuleSource for MirrorModules<'_> {
    fn fetch(&mut self, url: &str, commit: Oid) -> Result<(), GitError> {
        self.mirror
            .fetch_module(&self.remote.submodule(url), commit)
    }
}

impl MirrorModules<'_> {
    /// How a diff reads this mirror: submodules expanded when `expand`.
    pub(crate) fn reading(&mut self, lfs: bool, expand: bool) -> Reading<'_> {
        Reading {
            lfs,
            modules: expand.then(|| self.modules()),
            arrived: None,
        }
    }

    /// Submodules expanded from this mirror's remote.
    pub(crate) fn modules(&mut self) -> Modules<'_> {
        Modules {
            url: self.remote.url.clone(),
            source: self,
        }
    }

    /// Keeps the submodule commits the mirror's own kept commits point at,
    /// and lets the others go.
    pub(crate) fn keep_needed(&self) {
        let repo = self.mirror.repo();
        let needed = changes::submodules::module_commits(repo, &self.mirror.kept_commits());
        self.mirror.keep_modules(&needed);
    }
}

/// A scan's result and what it learnt of each subscriber's access (also
/// when the scan itself failed).
pub struct ScanResult {
    pub outcome: Result<ScanOutcome, GitError>,
    pub verdicts: Vec<(String, Verdict)>,
}

/// Whether a refusal says something about the credential rather than about
/// the remote: refused, or (as GitHub answers for a private repository the
/// token cannot see) not found.
fn is_refusal(err: &GitError) -> bool {
    matches!(err.failure, GitFailure::Auth | GitFailure::NotFound)
}

/// Finds a credential that reads the repository, the preferred first, and
/// judges every credential tried; with the first that reads it, brings the
/// branch's tip into the mirror on the same connection ([`Mirror::update`]).
/// `None` when every credential was refused: each subscriber's own failure,
/// not the repository's. A remote that cannot be reached, or a repository
/// that is gone (every credential saw "not found"), is the repository's
/// failure.
fn access(
    job: &ScanJob,
    mirror: &Mirror,
    tap: Option<&git::Tap>,
    verdicts: &mut Vec<(String, Verdict)>,
) -> Result<Option<(RemoteHead, RemoteSpec)>, GitError> {
    let mut not_found = None;
    for accessor in job.accessors.iter().filter(|a| a.granted) {
        let spec = job.remote.with_credentials(accessor.credentials.clone());
        match mirror.update(&spec, job.branch.as_deref(), tap) {
            Ok(head) => {
                verdicts.push((accessor.subscription.clone(), Verdict::Granted));
                return Ok(Some((head, spec)));
            }
            // The credential read the branch; the fetch itself failed.
            Err(UpdateFailure::Fetching(err)) => {
                verdicts.push((accessor.subscription.clone(), Verdict::Granted));
                return Err(err);
            }
            Err(UpdateFailure::Asking(err)) if is_refusal(&err) => {
                if err.failure == GitFailure::NotFound {
                    not_found = Some(err.clone());
                }
                verdicts.push((accessor.subscription.clone(), Verdict::Denied(err)));
            }
            // The remote, not the credential, failed: nothing learnt.
            Err(UpdateFailure::Asking(err)) => return Err(err),
        }
    }
    match not_found {
        Some(err) => {
            // A repository (or branch) that vanished for everyone is the
            // repository's failure: its breaker, every subscriber told once.
            verdicts.clear();
            Err(err)
        }
        None => Ok(None),
    }
}

/// Checks the credentials whose recheck is due and that this scan did not
/// already judge. A remote that fails for other reasons teaches nothing:
/// those stay due.
fn recheck(job: &ScanJob, verdicts: &mut Vec<(String, Verdict)>) {
    for accessor in &job.accessors {
        if !accessor.due || verdicts.iter().any(|(s, _)| *s == accessor.subscription) {
            continue;
        }
        let spec = job.remote.with_credentials(accessor.credentials.clone());
        match git::probe(&spec, job.branch.as_deref()) {
            Ok(_) => verdicts.push((accessor.subscription.clone(), Verdict::Granted)),
            Err(err) if is_refusal(&err) => {
                verdicts.push((accessor.subscription.clone(), Verdict::Denied(err)));
            }
            Err(_) => {}
        }
    }
}

/// The blocking part of a scan: find a credential that reads the remote, ask
/// where the branch is and fetch it when it moved (one connection), diff;
/// then check the subscribers' credentials that are due. A damaged mirror is
/// rebuilt from the remote once, and the scan repeated.
pub fn scan(job: ScanJob) -> ScanResult {
    let mut verdicts = Vec::new();
    // One writer per mirror (a lane may be refetching into it): the mirror
    // holds its write lock while it is open.
    let outcome = Mirror::open(&job.mirror).and_then(|mirror| {
        match scan_with(&job, &mirror, &mut verdicts) {
            Err(err) if err.damaged_mirror => {
                tracing::warn!(mirror = %job.mirror.display(), "mirror damaged; rebuilding it from the remote");
                let mirror = mirror.rebuild()?;
                // The credentials are judged again, on the rebuilt mirror.
                verdicts.clear();
                scan_with(&job, &mirror, &mut verdicts)
            }
            outcome => outcome,
        }
    });
    recheck(&job, &mut verdicts);
    ScanResult { outcome, verdicts }
}

/// The mirror's upkeep after a scan, once its result is recorded: compacts
/// it when it holds more than `repack_threshold` packs (each fetch adds one)
/// or still holds history (a mirror made before mirrors were shallow), and
/// returns its size. Waits for the mirror's lock, and holds it meanwhile.
/// `None`: there is no mirror (yet).
pub fn upkeep(path: &Path, repack_threshold: usize) -> Option<git::MirrorStats> {
    if !path.exists() {
        return None;
    }
    let mirror = match Mirror::open(path) {
        Ok(mirror) => mirror,
        Err(err) => {
            tracing::debug!(mirror = %path.display(), error = %err.message, "no upkeep: the mirror cannot be opened");
            return None;
        }
    };
    let stats = mirror.stats();
    let history = mirror.holds_history();
    if stats.packs <= repack_threshold && !history {
        return Some(stats);
    }
    let started = std::time::Instant::now();
    match mirror.repack() {
        Ok(after) => {
            tracing::info!(mirror = %path.display(), packs_before = stats.packs, bytes_before = stats.bytes, bytes = after.bytes, history_dropped = history, elapsed_ms = started.elapsed().as_millis() as u64, "mirror compacted");
            Some(after)
        }
        Err(err) => {
            tracing::warn!(mirror = %path.display(), error = %err.message, "mirror could not be compacted; trying again after the next scan");
            Some(stats)
        }
    }
}

fn scan_with(
    job: &ScanJob,
    mirror: &Mirror,
    verdicts: &mut Vec<(String, Verdict)>,
) -> Result<ScanOutcome, GitError> {
    for snapshot in &job.unpin {
        mirror.unpin(snapshot);
    }
    // The old side of the diff stays in the mirror, whatever compaction
    // drops, until a newer snapshot is recorded.
    if let Some(known) = job
        .known_head
        .as_deref()
        .and_then(|h| Oid::from_str(h).ok())
        && mirror.repo().find_commit(known).is_ok()
    {
        mirror.keep_base(known)?;
    }
    // A first sync's blobs are described as the pack arrives (`git://`).
    let arriving = git::Arriving::<changes::ArrivingBlob>::for_remote(&job.remote.url);
    let Some((head, remote)) = access(
        job,
        mirror,
        arriving.as_ref().map(git::Arriving::tap),
        verdicts,
    )?
    else {
        return Ok(ScanOutcome::NoAccess);
    };
    let arrived = arriving.map(git::Arriving::finish);
    let remote = &remote;
    let commit = head.commit;
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
    let mut modules = MirrorModules { mirror, remote };
    let mut reading = modules.reading(job.lfs, job.expand_submodules);
    reading.arrived = arrived.as_ref();
    let (delta, old_ignore) = match (old, &job.manifest, &job.known_head) {
        (Some(old), _, _) => (
            changes::diff_commits(repo, old, commit, &mut reading).map_err(change_failure)?,
            changes::ignore_rules(repo, old).map_err(read_failure)?,
        ),
        (None, Some(manifest), _) => (
            changes::diff_against_manifest(repo, manifest, commit, &mut reading)
                .map_err(change_failure)?,
            // The old rules are gone with the old commit; judge the old files by
            // the new rules (a rewrite that also changed the ignore files may
            // show a once-ignored file as deleted, never the reverse).
            new_ignore.clone(),
        ),
        (None, None, None) => (
            changes::diff_against_manifest(repo, &HashMap::new(), commit, &mut reading)
                .map_err(change_failure)?,
            None,
        ),
        (None, None, Some(_)) => return Ok(ScanOutcome::NeedsManifest),
    };
    mirror.pin(job.snapshot_id.as_str(), commit)?;
    if job.expand_submodules {
        modules.keep_needed();
    }
    Ok(ScanOutcome::Changed {
        branch: head.branch,
        commit: commit_hex,
        delta: Box::new(delta),
        old_ignore,
        new_ignore,
    })
}
