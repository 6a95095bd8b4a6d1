//! A bare mirror of one remote, opened to be written ([`Mirror`]): its write
//! lock, its opening (rebuilt only once verified damaged), the fetch of one
//! commit at depth 1, snapshot pins, the base ref, and compaction. Also
//! libgit2's process-wide options ([`configure_process`]), which bound what
//! reading a mirror maps.
//!
//! A `Mirror` is a writer: it holds the mirror's write lock (by the
//! directory's canonical place) while it is open, so one process writes a
//! mirror once at a time (a scan, a lane's refetch); lanes read through
//! repositories of their own. Compaction copies each ref's commit and tree
//! whole into one new pack ([`super::pack`], no delta search) and removes
//! the other packs and loose objects, so its cost is the kept trees' bytes,
//! never the history's. [`configure_process`] bounds libgit2's pack windows
//! (4 MiB, 16 MiB mapped) and turns off rehashing objects on read; the
//! indexer escapes that bound while a fetch resolves deltas, which
//! [`super::indexer_windows`] makes up for.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Once;
use std::time::Duration;

use git2::{AutotagOption, ErrorClass, ErrorCode, FetchOptions, Oid, RemoteRedirect, Repository};

use super::arriving::Tap;
use super::error::{GitError, GitFailure, is_transient};
use super::indexer_windows::IndexerWindows;
use super::local::{self, Want};
use super::pack;
use super::refs::{
    BASE_REF, MODULE_HISTORY_REF, MODULES_PREFIX, mirror_ref, module_ref, snapshot_ref,
};
use super::remote::{RemoteHead, RemoteSpec, Route, Session, local_path, scheme_of};
use super::socket;

mod stale_locks;
mod update;
pub use update::UpdateFailure;

/// A mirror's write lock in this process, held by its [`Mirror`] for the
/// mirror's life: one writer at a time per mirror (a scan's fetch and
/// compaction, a lane's refetch). Other instances have mirrors of their
/// own. A fetch's [`IndexerWindows`] counts on it.
type WriteLock = parking_lot::ArcMutexGuard<parking_lot::RawMutex, ()>;

/// Waits for the write lock of the mirror at `path`. Locks are kept by the
/// directory's canonical place, so two spellings of one path share a lock.
fn lock_for_writing(path: &Path) -> WriteLock {
    type Locks = std::collections::HashMap<PathBuf, std::sync::Weak<parking_lot::Mutex<()>>>;
    static LOCKS: std::sync::LazyLock<parking_lot::Mutex<Locks>> =
        std::sync::LazyLock::new(Default::default);
    let key = canonical_place(path);
    let lock = {
        let mut locks = LOCKS.lock();
        match locks.get(&key).and_then(std::sync::Weak::upgrade) {
            Some(lock) => lock,
            None => {
                locks.retain(|_, lock| lock.strong_count() > 0);
                let lock = std::sync::Arc::new(parking_lot::Mutex::new(()));
                locks.insert(key, std::sync::Arc::downgrade(&lock));
                lock
            }
        }
    };
    lock.lock_arc()
}

/// `path` with its parent directory made canonical (the mirror itself may
/// not exist yet).
fn canonical_place(path: &Path) -> PathBuf {
    let parent = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    match (std::fs::canonicalize(parent), path.file_name()) {
        (Ok(parent), Some(name)) => parent.join(name),
        _ => path.to_owned(),
    }
}

/// How long a mirror must stay unopenable before it counts as damaged and
/// is rebuilt.
pub const VERIFY_DAMAGE_AFTER: Duration = Duration::from_secs(60);

/// The file that records when a mirror first failed to open.
fn suspect_marker(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".suspect");
    PathBuf::from(name)
}

/// How much of a commit's past a fetch brings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Depth {
    /// The commit and its tree: all change detection needs.
    Tip,
    /// Its whole history: for a commit that a server serves only within
    /// its branch's history. A local fetch reaches any commit by its id, and
    /// needs no history.
    History,
}

/// A mirror's size on disk and its number of pack files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MirrorStats {
    pub bytes: u64,
    pub packs: usize,
}

/// A bare mirror of one remote, opened to be written: it holds the
/// mirror's write lock until it is dropped. Lanes read mirrors through
/// repositories of their own, without the lock.
pub struct Mirror {
    repo: Repository,
    path: PathBuf,
    /// Declared after `repo`, so the repository is closed first.
    _writing: WriteLock,
}

impl std::fmt::Debug for Mirror {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mirror").field("path", &self.path).finish()
    }
}

impl Mirror {
    /// Opens the mirror at `path`, creating it when missing, without the
    /// lock files a writer killed mid-update left ([`stale_locks`]). A mirror that
    /// cannot be opened is rebuilt (empty, to be fetched again) only once it
    /// is verified damaged: the failure is not the system's (too many open
    /// files, no permission, no memory: those never count), and the mirror
    /// still cannot be opened [`VERIFY_DAMAGE_AFTER`] after the first failure
    /// (recorded in a `{mirror}.suspect` file beside it, removed once it
    /// opens again). Until then the operation fails and is tried again later:
    /// the mirror may hold the only local copy of content pending events send.
    ///
    /// Waits first for the mirror's write lock, which the mirror then holds:
    /// do not open a mirror twice in one thread.
    pub fn open(path: &Path) -> Result<Self, GitError> {
        Self::open_writing(path, lock_for_writing(path))
    }

    fn open_writing(path: &Path, writing: WriteLock) -> Result<Self, GitError> {
        let removed = stale_locks::sweep(path);
        if removed > 0 {
            tracing::warn!(path = %path.display(), removed, "removed the lock files a stopped writer left in the mirror");
        }
        let healthy = |opened: Result<Repository, git2::Error>| {
            let repo = opened?;
            let odb = repo.odb().map(|_| ());
            odb.map(|()| repo)
        };
        let suspect = suspect_marker(path);
        let unreadable =
            || GitError::new(GitFailure::Other, "the local mirror cannot be opened now");
        let repo = match healthy(Repository::open_bare(path)) {
            Ok(repo) => {
                let _ = std::fs::remove_file(&suspect);
                repo
            }
            Err(_) if !path.exists() => Repository::init_bare(path).map_err(|_| {
                GitError::new(GitFailure::Other, "the local mirror could not be created")
            })?,
            Err(err) if is_transient(&err) => {
                tracing::warn!(path = %path.display(), class = ?err.class(), "mirror cannot be opened now; leaving it as it is");
                return Err(unreadable());
            }
            Err(err) => {
                let now = crate::clock::now_ms();
                let since = std::fs::read_to_string(&suspect)
                    .ok()
                    .and_then(|text| text.trim().parse::<i64>().ok());
                let Some(since) = since else {
                    tracing::warn!(path = %path.display(), class = ?err.class(), "mirror cannot be opened; rebuilt if it stays so");
                    let _ = std::fs::write(&suspect, now.to_string());
                    return Err(unreadable());
                };
                if now - since < crate::clock::millis(VERIFY_DAMAGE_AFTER) {
                    return Err(unreadable());
                }
                tracing::warn!(path = %path.display(), "mirror damaged; rebuilding it from the remote");
                std::fs::remove_dir_all(path).map_err(|_| {
                    GitError::new(GitFailure::Other, "the local mirror could not be removed")
                })?;
                let _ = std::fs::remove_file(&suspect);
                Repository::init_bare(path).map_err(|_| {
                    GitError::new(GitFailure::Other, "the local mirror could not be created")
                })?
            }
        };
        update::follow_no_redirects(&repo).map_err(|_| {
            GitError::new(
                GitFailure::Other,
                "the local mirror could not be configured",
            )
        })?;
        Ok(Self {
            repo,
            path: path.to_owned(),
            _writing: writing,
        })
    }

    /// Deletes the mirror and starts an empty one (after corruption), under
    /// the same write lock.
    pub fn rebuild(self) -> Result<Self, GitError> {
        let Self {
            repo,
            path,
            _writing: writing,
        } = self;
        drop(repo);
        std::fs::remove_dir_all(&path).map_err(|_| {
            GitError::new(GitFailure::Other, "the local mirror could not be removed")
        })?;
        Self::open_writing(&path, writing)
    }

    pub fn repo(&self) -> &Repository {
        &self.repo
    }

    /// The commit the mirror holds for `branch`, if any.
    pub fn local_head(&self, branch: &str) -> Option<Oid> {
        self.repo.refname_to_id(&mirror_ref(branch)).ok()
    }

    /// Fetches the tip of `branch` into the mirror, without its history
    /// (only what the mirror lacks of it), and returns the commit it now
    /// points to.
    pub fn fetch(&self, spec: &RemoteSpec, branch: &str) -> Result<Oid, GitError> {
        let branch_ref = mirror_ref(branch);
        self.fetch_one(spec, Want::Ref(&branch_ref), &branch_ref, Depth::Tip)?;
        self.local_head(branch).ok_or_else(|| {
            GitError::new(
                GitFailure::NotFound,
                format!("branch `{branch}` was not found on the remote"),
            )
        })
    }

    /// Fetches one commit, a ref's or by its id, at depth 1 into ref `into`,
    /// under the address rule and the timeout. Change detection compares
    /// trees, never ancestry, so a mirror holds each commit it needs with
    /// its tree and nothing behind it: git's `shallow` file names the
    /// commits whose parents it lacks.
    fn fetch_one(
        &self,
        spec: &RemoteSpec,
        want: Want<'_>,
        into: &str,
        depth: Depth,
    ) -> Result<(), GitError> {
        if scheme_of(&spec.url) == "file" {
            Route::open(spec)?;
            return self.fetch_local(&spec.url, want, into);
        }
        let session = Session::start(spec)?;
        let mut remote = self
            .repo
            .remote_anonymous(&spec.url)
            .map_err(|e| GitError::classify(&e, None))?;
        self.download(&session, &mut remote, want, into, depth, None)
    }

    /// [`Self::fetch_one`] from a repository on this machine, which Herald
    /// reads itself ([`local`]).
    fn fetch_local(&self, url: &str, want: Want<'_>, into: &str) -> Result<(), GitError> {
        let source = local_path(url);
        if !source.exists() {
            return Err(GitError::new(
                GitFailure::NotFound,
                "the repository was not found",
            ));
        }
        let fetched = local::fetch(&self.repo, &source, want).map_err(|err| {
            tracing::debug!(code = ?err.code(), class = ?err.class(), detail = err.message(), "local fetch failed");
            match err.class() {
                ErrorClass::Repository | ErrorClass::Os if err.code() == ErrorCode::NotFound => {
                    GitError::new(GitFailure::NotFound, "the repository was not found")
                }
                _ => GitError::new(GitFailure::Other, "the local repository could not be read"),
            }
        })?;
        let Some(commit) = fetched else {
            return Err(GitError::new(
                GitFailure::NotFound,
                "the branch or commit was not found on the remote",
            ));
        };
        self.repo
            .reference(into, commit, true, "herald: fetched")
            .map_err(|_| {
                GitError::new(GitFailure::Other, "the local mirror could not be updated")
            })?;
        let mut roots = self.shallow_roots();
        if !roots.contains(&commit) && self.has_parents(commit) {
            roots.push(commit);
            self.set_shallow_roots(&roots)?;
        }
        Ok(())
    }

    /// Whether `commit` names parents, read from the object itself: libgit2
    /// shows a commit of the `shallow` file without any.
    fn has_parents(&self, commit: Oid) -> bool {
        let Ok(odb) = self.repo.odb() else {
            return false;
        };
        let Ok(object) = odb.read(commit) else {
            return false;
        };
        object
            .data()
            .split(|byte| *byte == b'\n')
            .take_while(|line| !line.is_empty())
            .any(|line| line.starts_with(b"parent "))
    }

    /// The commits whose parents the mirror does not hold (git's `shallow`
    /// file, which libgit2 keeps for the fetches it makes at depth 1).
    fn shallow_roots(&self) -> Vec<Oid> {
        std::fs::read_to_string(self.repo.path().join("shallow"))
            .unwrap_or_default()
            .lines()
            .filter_map(|line| Oid::from_str(line.trim()).ok())
            .collect()
    }

    /// Replaces the mirror's `shallow` file (written aside, then renamed).
    fn set_shallow_roots(&self, roots: &[Oid]) -> Result<(), GitError> {
        let failed = |_| GitError::new(GitFailure::Other, "the local mirror could not be updated");
        let path = self.repo.path().join("shallow");
        if roots.is_empty() {
            return match std::fs::remove_file(&path) {
                Err(err) if err.kind() != std::io::ErrorKind::NotFound => Err(failed(err)),
                _ => Ok(()),
            };
        }
        let text: String = roots.iter().map(|oid| format!("{oid}\n")).collect();
        let aside = self.repo.path().join("shallow.herald");
        std::fs::write(&aside, text).map_err(failed)?;
        std::fs::rename(&aside, &path).map_err(failed)
    }

    /// Brings `commit` back into the mirror and pins it under `snapshot_id`
    /// (an instance that did not make the snapshot, or a mirror that lost
    /// it): fetched with its branch, or, when the branch moved on without
    /// it, by its id. `Ok(false)`: the remote no longer has it (its history
    /// was rewritten); `Err`: the remote could not be asked.
    pub fn refetch_commit(
        &self,
        spec: &RemoteSpec,
        branch: Option<&str>,
        commit: &str,
        snapshot_id: Option<&str>,
    ) -> Result<bool, GitError> {
        let Ok(oid) = Oid::from_str(commit) else {
            return Ok(false);
        };
        let pin = |mirror: &Self| match snapshot_id {
            Some(snapshot) => mirror.pin(snapshot, oid).map(|()| true),
            None => Ok(true),
        };
        if self.has_commit(commit) {
            return pin(self);
        }
        // By its id first: GitHub, GitLab and every server that lets a
        // client ask for a commit its refs reach serve it alone.
        let by_id = snapshot_ref(snapshot_id.unwrap_or(commit));
        match self.fetch_one(spec, Want::Commit(oid), &by_id, Depth::Tip) {
            Ok(()) if self.has_commit(commit) => return pin(self),
            Ok(()) => {}
            Err(err) if matches!(err.failure, GitFailure::Network | GitFailure::Timeout) => {
                return Err(err);
            }
            Err(err) => {
                tracing::debug!(commit, error = %err.message, "the remote does not serve the commit by its id");
            }
        }
        // A server that serves only what its refs point to: the commit may
        // be in the branch's history, which the next compaction drops again.
        let Some(branch) = branch else {
            return Ok(false);
        };
        let branch_ref = mirror_ref(branch);
        match self.fetch_one(spec, Want::Ref(&branch_ref), &branch_ref, Depth::History) {
            Ok(()) => Ok(self.has_commit(commit) && pin(self)?),
            Err(err) if matches!(err.failure, GitFailure::Network | GitFailure::Timeout) => {
                Err(err)
            }
            // The remote answered and would not give it: it is gone.
            Err(err) => {
                tracing::debug!(commit, error = %err.message, "the remote does not serve the branch's history");
                Ok(false)
            }
        }
    }

    /// Brings `commit` of a submodule's remote (`spec`, from
    /// [`RemoteSpec::submodule`]) into the mirror under its module ref,
    /// which [`Self::keep_modules`] lets go once no kept commit needs it:
    /// by its id first, else within the remote's default branch, fetched
    /// with its history (which the next compaction drops again).
    pub fn fetch_module(&self, spec: &RemoteSpec, commit: Oid) -> Result<(), GitError> {
        let keep = |mirror: &Self| {
            mirror
                .repo
                .reference(&module_ref(commit), commit, true, "herald: submodule")
                .map(|_| ())
                .map_err(|_| {
                    GitError::new(GitFailure::Other, "the local mirror could not be updated")
                })
        };
        if self.repo.find_commit(commit).is_ok() {
            return keep(self);
        }
        match self.fetch_one(spec, Want::Commit(commit), &module_ref(commit), Depth::Tip) {
            Ok(()) if self.repo.find_commit(commit).is_ok() => return Ok(()),
            Ok(()) => {}
            Err(err) if !matches!(err.failure, GitFailure::NotFound | GitFailure::Other) => {
                return Err(err);
            }
            Err(err) => {
                tracing::debug!(%commit, error = %err.message, "the submodule's remote does not serve the commit by its id");
            }
        }
        let fetched = self.fetch_one(spec, Want::Ref("HEAD"), MODULE_HISTORY_REF, Depth::History);
        if let Ok(mut history) = self.repo.find_reference(MODULE_HISTORY_REF) {
            let _ = history.delete();
        }
        fetched?;
        if self.repo.find_commit(commit).is_err() {
            return Err(GitError::new(
                GitFailure::NotFound,
                "its commit was not found on its remote",
            ));
        }
        keep(self)
    }

    /// Lets go of the submodule commits outside `needed`: those no kept
    /// commit of the repository points at any more.
    pub fn keep_modules(&self, needed: &HashSet<Oid>) {
        let Ok(references) = self.repo.references_glob(&format!("{MODULES_PREFIX}*")) else {
            return;
        };
        for mut reference in references.flatten() {
            if reference.target().is_some_and(|oid| !needed.contains(&oid)) {
                let _ = reference.delete();
            }
        }
    }

    /// The commits the mirror keeps for the repository itself: its branch,
    /// its pinned snapshots and replays, and its base (not the submodule
    /// commits it keeps for them).
    pub fn kept_commits(&self) -> Vec<Oid> {
        let Ok(references) = self.repo.references() else {
            return Vec::new();
        };
        let mut commits: Vec<Oid> = references
            .flatten()
            .filter(|r| r.name().is_ok_and(|name| !name.starts_with(MODULES_PREFIX)))
            .filter_map(|r| r.peel_to_commit().ok().map(|c| c.id()))
            .collect();
        commits.sort_unstable();
        commits.dedup();
        commits
    }

    /// Keeps `commit` reachable under the snapshot's ref.
    pub fn pin(&self, snapshot_id: &str, commit: Oid) -> Result<(), GitError> {
        self.repo
            .reference(
                &snapshot_ref(snapshot_id),
                commit,
                true,
                "herald: snapshot with pending events",
            )
            .map(|_| ())
            .map_err(|_| GitError::new(GitFailure::Other, "the local mirror could not be updated"))
    }

    /// Releases a snapshot's ref once its events are delivered.
    pub fn unpin(&self, snapshot_id: &str) {
        if let Ok(mut reference) = self.repo.find_reference(&snapshot_ref(snapshot_id)) {
            let _ = reference.delete();
        }
    }

    /// The mirror's size on disk and its number of pack files.
    pub fn stats(&self) -> MirrorStats {
        fn walk(dir: &Path, stats: &mut MirrorStats) {
            let Ok(entries) = std::fs::read_dir(dir) else {
                return;
            };
            for entry in entries.flatten() {
                let Ok(kind) = entry.file_type() else {
                    continue;
                };
                if kind.is_dir() {
                    walk(&entry.path(), stats);
                } else if let Ok(meta) = entry.metadata() {
                    stats.bytes += meta.len();
                }
            }
        }
        let mut stats = MirrorStats {
            bytes: 0,
            packs: self.packs().len(),
        };
        walk(&self.path, &mut stats);
        stats
    }

    /// The pack files (`objects/pack/pack-*.pack`), by name.
    fn packs(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(self.path.join("objects").join("pack")) else {
            return Vec::new();
        };
        let mut packs: Vec<String> = entries
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter_map(|name| name.strip_suffix(".pack").map(str::to_owned))
            .filter(|name| name.starts_with("pack-"))
            .collect();
        packs.sort();
        packs
    }

    /// Compacts the mirror into one pack holding what its refs need: the
    /// commit of each ref (the watched branch, the last recorded snapshot,
    /// the pinned snapshots) with its tree, and nothing of their history.
    /// The other packs and the loose objects go, and with them every object
    /// no ref needs any more (settled snapshots' content, the history of a
    /// mirror made before mirrors were shallow). libgit2 never repacks, so a
    /// mirror would otherwise gain a pack with every fetch.
    ///
    /// The objects are copied whole ([`pack`]): the cost is the bytes of the
    /// kept trees once, never a delta search, let alone over history. The
    /// caller holds the mirror's lock: nothing else writes it meanwhile.
    /// Readers that still hold an old pack open keep reading it until they
    /// reopen.
    pub fn repack(&self) -> Result<MirrorStats, GitError> {
        let failed = |err: git2::Error| {
            tracing::debug!(detail = err.message(), "repack failed");
            GitError::new(GitFailure::Other, "the local mirror could not be repacked")
        };
        let before = self.packs();
        let mut commits = Vec::new();
        for reference in self.repo.references().map_err(failed)?.flatten() {
            if let Ok(commit) = reference.peel_to_commit()
                && !commits.contains(&commit.id())
            {
                commits.push(commit.id());
            }
        }
        if commits.is_empty() {
            return Ok(self.stats());
        }
        let odb = self.repo.odb().map_err(failed)?;
        let mut writer = pack::PackWriter::start(self.repo.path()).map_err(failed)?;
        for commit in &commits {
            writer.copy(&self.repo, &odb, *commit).map_err(failed)?;
        }
        let mut seen = HashSet::new();
        let everything = |_| true;
        for commit in &commits {
            let tree = self.repo.find_commit(*commit).map_err(failed)?.tree_id();
            pack::tree_objects(&self.repo, tree, &everything, &mut seen, &mut |oid| {
                writer.copy(&self.repo, &odb, oid)
            })
            .map_err(failed)?;
        }
        drop(seen);
        let written = writer
            .finish()
            .map_err(failed)?
            .ok_or_else(|| GitError::new(GitFailure::Other, "the new pack was not written"))?;
        odb.refresh().map_err(failed)?;
        if !self.packs().contains(&written) {
            return Err(GitError::new(
                GitFailure::Other,
                "the new pack was not written",
            ));
        }
        // Every kept commit with parents now stands without them.
        let roots: Vec<Oid> = commits
            .iter()
            .copied()
            .filter(|oid| self.has_parents(*oid))
            .collect();
        self.set_shallow_roots(&roots)?;
        let dir = self.path.join("objects").join("pack");
        for old in before.iter().filter(|name| **name != written) {
            if dir.join(format!("{old}.keep")).exists() {
                continue;
            }
            for extension in ["pack", "idx", "rev", "bitmap", "mtimes"] {
                let _ = std::fs::remove_file(dir.join(format!("{old}.{extension}")));
            }
        }
        // Loose objects live in objects/xx/; every one still needed is in the
        // new pack now.
        if let Ok(entries) = std::fs::read_dir(self.path.join("objects")) {
            for entry in entries.flatten() {
                let name = entry.file_name();
                let name = name.to_string_lossy();
                if name.len() == 2 && name.chars().all(|c| c.is_ascii_hexdigit()) {
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
        }
        Ok(self.stats())
    }

    /// Whether the mirror still holds history behind a commit one of its
    /// refs names (it was made before mirrors were shallow, or a refetch
    /// went through a branch's history): the next compaction drops it.
    pub fn holds_history(&self) -> bool {
        let roots = self.shallow_roots();
        let Ok(references) = self.repo.references() else {
            return false;
        };
        references
            .flatten()
            .filter_map(|reference| reference.peel_to_commit().ok())
            .any(|commit| !roots.contains(&commit.id()) && self.has_parents(commit.id()))
    }

    /// Keeps `commit`, the repository's last recorded snapshot, reachable:
    /// the old side of the next diff, whatever the branch does meanwhile.
    pub fn keep_base(&self, commit: Oid) -> Result<(), GitError> {
        self.repo
            .reference(BASE_REF, commit, true, "herald: last recorded snapshot")
            .map(|_| ())
            .map_err(|_| GitError::new(GitFailure::Other, "the local mirror could not be updated"))
    }

    /// Whether the mirror still has `commit` (a force-push may have removed it
    /// from the remote, but never from the mirror while it is pinned).
    pub fn has_commit(&self, commit: &str) -> bool {
        Oid::from_str(commit)
            .ok()
            .is_some_and(|oid| self.repo.find_commit(oid).is_ok())
    }
}

/// Sets libgit2's process-wide options for the engine. Call before any git
/// work starts (the engine does).
///
/// - The pack files it maps into memory are bounded: windows of 4 MiB, at
///   most 16 MiB mapped at once (libgit2's defaults are 1 GiB and 8 GiB), so
///   reading a big file from a mirror costs the file, not its pack.
/// - An object read from a mirror is not hashed again to check its id, as
///   git itself does not: fetched packs are verified when they are indexed
///   (copied objects when they are copied, [`pack`]), zlib checks every
///   object it inflates, and each file's SHA-256 is taken at the scan and
///   checked by receivers. Rehashing (SHA-1 with collision detection) was a
///   measurable share of Herald's CPU while delivering (BENCHMARKS.md,
///   "Tunings of the delivery path").
/// - The objects libgit2 keeps parsed (commits and small trees) share 32 MiB
///   across every open repository (libgit2's default is 256 MiB): enough
///   for a scan's trees, not a second heap.
pub fn configure_process() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        git2::opts::strict_hash_verification(false);
        // SAFETY: libgit2 options are process-global; they are set once,
        // when the engine starts, before any of its threads uses git2.
        #[allow(unsafe_code)]
        unsafe {
            let _ = git2::opts::set_mwindow_size(4 << 20);
            let _ = git2::opts::set_mwindow_mapped_limit(16 << 20);
            libgit2_sys::git_libgit2_opts(
                libgit2_sys::GIT_OPT_SET_CACHE_MAX_SIZE as std::ffi::c_int,
                (32 << 20) as libc::ssize_t,
            );
        }
    });
}

#[cfg(test)]
pub(super) mod tests {
    use super::super::fixtures::{commit, git, source_repository};
    use super::super::indexer_windows;
    use super::super::remote::tests::spec;
    use std::time::Instant;

    use super::*;

    #[test]
    fn repacking_leaves_one_pack_with_what_refs_reach_and_drops_the_rest() {
        let (dir, source) = source_repository();
        let remote = spec(format!("file://{}", source.display()), true);
        let mirror = Mirror::open(&dir.path().join("mirror.git")).expect("mirror");
        let mut history = Vec::new();
        for i in 1..=4 {
            history.push(commit(&source, "x.md", &format!("version {i}\n")));
            mirror.fetch(&remote, "main").expect("fetched");
        }
        mirror
            .pin("kept", Oid::from_str(&history[1]).expect("oid"))
            .expect("pinned");
        mirror
            .pin("settled", Oid::from_str(&history[2]).expect("oid"))
            .expect("pinned");
        // The branch is rewritten: the old tip is reachable only through
        // the pins, and one of them is released.
        git(&source, &["checkout", "-q", "--orphan", "new"]);
        git(&source, &["rm", "-q", "-rf", "."]);
        let rewritten = commit(&source, "y.md", "rewritten\n");
        git(&source, &["branch", "-q", "-M", "main"]);
        mirror.fetch(&remote, "main").expect("fetched");
        mirror.unpin("settled");
        let before = mirror.stats();
        assert!(before.packs >= 2, "fetches added packs: {before:?}");

        let after = mirror.repack().expect("repacked");
        assert_eq!(after.packs, 1, "{after:?}");
        pack::tests::git_verifies_packs(&mirror.path);
        assert!(after.bytes > 0);
        drop(mirror);
        let reopened = Mirror::open(&dir.path().join("mirror.git")).expect("mirror");
        assert!(reopened.has_commit(&rewritten), "the branch's tip");
        assert!(reopened.has_commit(&history[1]), "a pinned snapshot");
        assert!(!reopened.has_commit(&history[0]), "not its history");
        assert!(
            !reopened.has_commit(&history[2]),
            "a released snapshot is pruned"
        );
        assert!(!reopened.has_commit(&history[3]), "so is the old tip");
        // Repacking again changes nothing.
        assert_eq!(reopened.repack().expect("repacked").packs, 1);
        assert!(reopened.has_commit(&history[1]));
    }

    #[test]
    fn a_mirror_open_for_writing_keeps_other_writers_out_until_it_closes() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("mirror.git");
        let mirror = Mirror::open(&path).expect("mirror");
        // Another spelling of the same place, through a symbolic link, shares
        // the lock. (A `.` component would not do: paths compare equal
        // without it.)
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(dir.path(), &link).expect("a link");
        let other_spelling = link.join("mirror.git");
        let (opened, waiting) = std::sync::mpsc::channel();
        let writer = std::thread::spawn(move || {
            let second = Mirror::open(&other_spelling).expect("mirror");
            opened.send(()).expect("told");
            drop(second);
        });
        assert_eq!(
            waiting.recv_timeout(Duration::from_millis(300)),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout),
            "a second writer got in while the first had the mirror open"
        );
        drop(mirror);
        waiting
            .recv_timeout(Duration::from_secs(30))
            .expect("the second writer goes on once the first closes");
        writer.join().expect("the writer ends");
    }

    /// `git daemon` serving the directories under `root` on loopback, for
    /// as long as it lives.
    pub(in crate::git) struct Daemon {
        child: std::process::Child,
        port: u16,
    }

    impl Daemon {
        pub(in crate::git) fn serve(root: &Path) -> Self {
            for _ in 0..5 {
                let port = std::net::TcpListener::bind("127.0.0.1:0")
                    .and_then(|l| l.local_addr())
                    .expect("a free port")
                    .port();
                // git-daemon itself: `git daemon` would leave it running
                // when killed.
                let mut child = std::process::Command::new(
                    Path::new(&git(root, &["--exec-path"])).join("git-daemon"),
                )
                .arg("--reuseaddr")
                .arg("--export-all")
                .arg(format!("--base-path={}", root.display()))
                .arg("--listen=127.0.0.1")
                .arg(format!("--port={port}"))
                .arg(root)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("git daemon starts");
                let deadline = Instant::now() + Duration::from_secs(5);
                while Instant::now() < deadline {
                    if child.try_wait().expect("its status").is_some() {
                        break;
                    }
                    if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                        return Self { child, port };
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                let _ = child.kill();
                let _ = child.wait();
            }
            panic!("git daemon did not start");
        }

        pub(in crate::git) fn port(&self) -> u16 {
            self.port
        }

        fn url(&self, name: &str) -> String {
            format!("git://127.0.0.1:{}/{name}", self.port)
        }
    }

    impl Drop for Daemon {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// Ids of every object in the mirror's object database.
    fn objects(repo: &Repository) -> HashSet<Oid> {
        let mut all = HashSet::new();
        repo.odb()
            .expect("odb")
            .foreach(|oid| {
                all.insert(*oid);
                true
            })
            .expect("listed");
        all
    }

    #[test]
    fn a_fetch_over_git_is_shallow_and_releases_its_indexers_pages() {
        let (dir, source) = source_repository();
        commit(&source, "old.md", "history the mirror never needs\n");
        // Big text files that differ a little: the pack stores them as
        // deltas of each other, which the indexer resolves.
        let line = |i: usize| format!("line {i}: the quick brown fox jumps over the lazy dog\n");
        let text: String = (0..20_000).map(line).collect();
        for copy in 0..12 {
            let content = format!("{text}copy {copy}\n");
            std::fs::write(source.join(format!("big-{copy}.txt")), content).expect("write");
        }
        let tip = commit(&source, "old.md", "the tip\n");
        let parent = git(&source, &["rev-parse", "HEAD~1"]);
        let daemon = Daemon::serve(dir.path());
        let remote = spec(daemon.url("source"), true);
        let mirror = Mirror::open(&dir.path().join("mirror.git")).expect("mirror");
        let before = indexer_windows::released_on_this_thread();

        let head = mirror.fetch(&remote, "main").expect("fetched");

        assert_eq!(head.to_string(), tip);
        assert!(
            indexer_windows::released_on_this_thread() > before,
            "the indexer's pages were released while it resolved deltas"
        );
        let tip_commit = mirror.repo.find_commit(head).expect("the head");
        for copy in 0..12 {
            let entry = tip_commit
                .tree()
                .expect("tree")
                .get_name(&format!("big-{copy}.txt"))
                .expect("the file")
                .id();
            let blob = mirror.repo.find_blob(entry).expect("blob");
            assert_eq!(blob.content(), format!("{text}copy {copy}\n").as_bytes());
        }
        assert!(
            !mirror.has_commit(&parent),
            "the history stays on the remote"
        );
        assert!(mirror.repo.is_shallow());
        assert!(!mirror.holds_history());
        // Compaction keeps the tip standing without its parents, and the
        // next fetch builds on it.
        mirror.repack().expect("compacted");
        assert_eq!(mirror.shallow_roots(), vec![head]);
        let next = commit(&source, "old.md", "next\n");
        let fetched = mirror.fetch(&remote, "main").expect("fetched again");
        assert_eq!(fetched.to_string(), next);
        assert!(!mirror.holds_history());
    }

    #[test]
    fn a_shallow_mirror_gets_back_an_older_commit_from_a_git_server() {
        let (dir, source) = source_repository();
        let old = commit(&source, "a.md", "old\n");
        commit(&source, "a.md", "middle\n");
        let tip = commit(&source, "a.md", "tip\n");
        let daemon = Daemon::serve(dir.path());
        let remote = spec(daemon.url("source"), true);
        let mirror = Mirror::open(&dir.path().join("mirror.git")).expect("mirror");
        mirror.fetch(&remote, "main").expect("fetched");
        assert!(!mirror.has_commit(&old));

        // git's own server serves only what its refs point to by default:
        // without the branch there is no way to the commit.
        assert!(
            !mirror
                .refetch_commit(&remote, None, &old, Some("pinned"))
                .expect("asked")
        );
        // Through the branch's history.
        assert!(
            mirror
                .refetch_commit(&remote, Some("main"), &old, Some("pinned"))
                .expect("asked")
        );
        assert!(mirror.has_commit(&old));
        assert!(mirror.holds_history());
        mirror.repack().expect("compacted");
        assert!(!mirror.holds_history());
        assert!(mirror.has_commit(&old), "pinned");
        assert!(mirror.has_commit(&tip), "the branch");
        let blob = mirror
            .repo
            .find_commit(Oid::from_str(&old).expect("oid"))
            .and_then(|c| c.tree())
            .and_then(|t| {
                t.get_name("a.md")
                    .map(|e| e.id())
                    .ok_or_else(|| git2::Error::from_str("no a.md"))
            })
            .and_then(|id| mirror.repo.find_blob(id))
            .expect("the old content");
        assert_eq!(blob.content(), b"old\n");

        // A server that serves reachable commits by id: the commit alone.
        git(
            &source,
            &["config", "uploadpack.allowReachableSHA1InWant", "true"],
        );
        let other = Mirror::open(&dir.path().join("other.git")).expect("mirror");
        other.fetch(&remote, "main").expect("fetched");
        assert!(
            other
                .refetch_commit(&remote, Some("main"), &old, Some("pinned"))
                .expect("asked")
        );
        assert!(other.has_commit(&old));
        assert!(!other.holds_history());
    }

    #[test]
    fn a_local_fetch_copies_the_tip_and_only_what_the_mirror_lacks() {
        let (dir, source) = source_repository();
        let first = commit(&source, "a.md", "a\n");
        std::fs::create_dir(source.join("docs")).expect("dir");
        std::fs::write(source.join("docs/b.md"), "b\n").expect("write");
        let second = commit(&source, "c.md", "c\n");
        let remote = spec(format!("file://{}", source.display()), true);
        let mirror = Mirror::open(&dir.path().join("mirror.git")).expect("mirror");

        assert_eq!(
            mirror.fetch(&remote, "main").expect("fetched").to_string(),
            second
        );
        assert!(!mirror.has_commit(&first), "the history stays behind");
        assert!(mirror.repo.is_shallow());
        assert!(!mirror.holds_history());
        // The commit, the root tree, docs/, and three files.
        let copied = objects(&mirror.repo);
        assert_eq!(copied.len(), 6, "{copied:?}");

        // The next commit changes one file: the commit, the root tree and
        // that file are all that is copied.
        let third = commit(&source, "a.md", "a, changed\n");
        assert_eq!(
            mirror.fetch(&remote, "main").expect("fetched").to_string(),
            third
        );
        let now = objects(&mirror.repo);
        assert_eq!(now.difference(&copied).count(), 3);
        assert!(mirror.has_commit(&second), "the old tip is still there");
        assert_eq!(mirror.shallow_roots().len(), 2);
        // Fetching the same commit again copies nothing.
        mirror.fetch(&remote, "main").expect("fetched");
        assert_eq!(objects(&mirror.repo), now);
        pack::tests::git_verifies_packs(&mirror.path);
        // A commit by its id, and one the remote does not have.
        assert!(
            mirror
                .refetch_commit(&remote, None, &first, Some("snap"))
                .expect("asked")
        );
        assert!(mirror.has_commit(&first));
        assert!(
            !mirror
                .refetch_commit(&remote, None, &"1".repeat(40), Some("gone"))
                .expect("asked")
        );
        let missing = spec(
            format!("file://{}/nothing-here", dir.path().display()),
            true,
        );
        let err = mirror
            .fetch(&missing, "main")
            .expect_err("no such repository");
        assert_eq!(err.failure, GitFailure::NotFound);
        let err = mirror
            .fetch(&remote, "no-such-branch")
            .expect_err("no such branch");
        assert_eq!(err.failure, GitFailure::NotFound);
    }

    #[test]
    fn compaction_turns_a_full_mirror_into_a_shallow_one() {
        let (dir, source) = source_repository();
        let mut history = Vec::new();
        for i in 0..20 {
            history.push(commit(
                &source,
                &format!("f{}.md", i % 3),
                &format!("v{i}\n"),
            ));
        }
        // A mirror as Herald made them before: the whole history.
        let path = dir.path().join("mirror.git");
        let out = std::process::Command::new("git")
            .args(["clone", "-q", "--bare", "--no-local"])
            .arg(&source)
            .arg(&path)
            .output()
            .expect("git clone");
        assert!(out.status.success());
        let mirror = Mirror::open(&path).expect("mirror");
        mirror
            .pin("pending", Oid::from_str(&history[10]).expect("oid"))
            .expect("pinned");
        assert!(mirror.holds_history());
        // The first fetch after the upgrade is shallow: the new tip stands
        // without its parents, but the pin still holds history.
        let upgraded = commit(&source, "f2.md", "upgraded\n");
        let daemon = Daemon::serve(dir.path());
        let remote = spec(daemon.url("source"), true);
        mirror.fetch(&remote, "main").expect("fetched over git");
        assert!(mirror.holds_history());

        mirror.repack().expect("compacted");

        assert!(!mirror.holds_history());
        drop(mirror);
        let mirror = Mirror::open(&path).expect("reopened");
        let tip = mirror.local_head("main").expect("the branch").to_string();
        assert_eq!(tip, upgraded);
        assert!(mirror.has_commit(&history[10]), "a pinned snapshot stays");
        for (i, commit) in history.iter().enumerate() {
            if i != 10 {
                assert!(!mirror.has_commit(commit), "commit {i} was dropped");
            }
        }
        // It goes on fetching, over git and locally.
        let next = commit(&source, "f0.md", "after\n");
        let head = mirror.fetch(&remote, "main").expect("fetched over git");
        assert_eq!(head.to_string(), next);
        let last = commit(&source, "f1.md", "last\n");
        let head = mirror
            .fetch(&spec(format!("file://{}", source.display()), true), "main")
            .expect("fetched locally");
        assert_eq!(head.to_string(), last);
        let tree = mirror
            .repo
            .find_commit(head)
            .expect("commit")
            .tree()
            .expect("tree");
        assert_eq!(tree.len(), 3);
    }

    #[test]
    fn only_a_mirror_verified_damaged_is_rebuilt() {
        let system = git2::Error::new(
            ErrorCode::GenericError,
            ErrorClass::Os,
            "too many open files",
        );
        assert!(
            is_transient(&system),
            "the system's trouble leaves the mirror alone"
        );
        let damaged = git2::Error::new(
            ErrorCode::GenericError,
            ErrorClass::Repository,
            "not a git repository",
        );
        assert!(!is_transient(&damaged));

        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("mirror.git");
        let mirror = Mirror::open(&path).expect("created when missing");
        let oid = mirror.repo.blob(b"kept").expect("a blob");
        drop(mirror);
        let reopened = Mirror::open(&path).expect("opened");
        assert!(
            reopened.repo.find_blob(oid).is_ok(),
            "an intact mirror keeps its objects"
        );
        drop(reopened);
        // Garbage where the mirror was, and still garbage a moment later.
        std::fs::remove_dir_all(&path).expect("removed");
        std::fs::create_dir(&path).expect("dir");
        std::fs::write(path.join("HEAD"), "garbage").expect("garbage");
        assert!(
            Mirror::open(&path).is_err(),
            "not rebuilt at the first failure"
        );
        assert!(path.join("HEAD").exists(), "left as it is");
        // Still unopenable long after the first failure: damaged.
        let long_ago = crate::clock::now_ms() - crate::clock::millis(VERIFY_DAMAGE_AFTER) - 1;
        std::fs::write(suspect_marker(&path), long_ago.to_string()).expect("marker");
        let rebuilt = Mirror::open(&path).expect("rebuilt");
        assert!(
            rebuilt.repo.find_blob(oid).is_err(),
            "a damaged mirror starts empty"
        );
        assert!(!suspect_marker(&path).exists());
    }
}
