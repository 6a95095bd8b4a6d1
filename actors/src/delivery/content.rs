//! Where a lane finds the content it sends: the repository's mirror, and
//! when the mirror lacks it (another instance made the snapshot, or the
//! mirror was lost) the remote again, with the subscription's own
//! credential, on a scan worker. A file stored in Git LFS is its pointer
//! there; its content comes from the LFS server, asked with the
//! subscription's own credential ([`crate::lfs::Lfs::fetch`]). Each time
//! the LFS server does not give it is a failed attempt ([`Found::Failed`]),
//! as a webhook the endpoint refuses is: another download, or another
//! question to a server that is down, waits the app's backoff.
//!
//! A lane keeps its mirror reader for its life (a big file does not close
//! it), and reopens the mirror every 30 s, so libgit2's delta-base cache
//! outlives a batch but packs a compaction deleted are let go. A pinned
//! commit the mirror lacks is fetched by its id (`Mirror::refetch_commit`),
//! else through its branch's history for servers that serve only their
//! refs' tips (the next compaction drops that history again); the content
//! is gone only when the remote no longer has the commit.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use entity::{ErrorClass, event, repository, subscription};

use super::DeliveryConfig;
use crate::git::{Credentials, GitError, Mirror, RemoteSpec};
use crate::lfs::{LFS_CONFIG_FILE, Lfs, LfsError, Pointer};
use crate::scan::{MirrorModules, ScanPool, change_failure};
use crate::store::{Store, StoreError};

/// What became of an event's content (`T`: what was made of it).
pub(super) enum Found<T> {
    Made(T),
    /// It cannot come back: the remote no longer has the commit. Says why.
    Gone(String),
    /// It may come back: the remote could not be asked now. Says why.
    Unavailable(String),
    /// The LFS server did not give the file's object this time: it lacks
    /// or refuses it, sent bytes that are not it (`ContentMissing`), or
    /// could not be asked (`ContentUnavailable`). Asking again may help,
    /// and costs the server's time and a download: a failed attempt,
    /// retried after the app's backoff, dead after `delivery.max_attempts`.
    Failed {
        class: ErrorClass,
        error: String,
    },
}

/// An event's content source: the mirror, then the remote.
pub(super) struct Content {
    pub(super) mirror: MirrorReader,
    /// The remote and the subscription's credential.
    pub(super) remote: RemoteSpec,
    /// The watched branch, when known.
    pub(super) branch: Option<String>,
    pub(super) pool: ScanPool,
    /// Where files stored in Git LFS get their content.
    pub(super) lfs: Lfs,
    /// The repository is watched with its submodules expanded: a file may
    /// lie in a submodule, whose commit comes from its own remote.
    pub(super) expand_submodules: bool,
}

impl Content {
    /// The content source of `subscription`'s events: `mirror`, then the
    /// remote with the subscription's own credential, so content comes back
    /// only to a subscriber that can read it.
    pub(super) fn of_subscription(
        store: &Store,
        config: &DeliveryConfig,
        pool: &ScanPool,
        subscription: &subscription::Model,
        repository: &repository::Model,
        mirror: MirrorReader,
    ) -> Result<Self, StoreError> {
        Ok(Self {
            mirror,
            remote: RemoteSpec {
                url: repository.fetch_url.clone(),
                credentials: store
                    .git_token(subscription)?
                    .as_ref()
                    .map(Credentials::from_token),
                timeout: config.fetch_timeout,
                low_speed: config.low_speed,
                rule: config.connect.clone(),
            },
            branch: repository
                .resolved_branch
                .clone()
                .or_else(|| Some(repository.branch.clone()))
                .filter(|b| !b.is_empty()),
            pool: pool.clone(),
            lfs: config.lfs.clone(),
            expand_submodules: repository.expand_submodules,
        })
    }

    /// What `make` makes of the content of a created or updated file. It
    /// runs on a blocking thread with the bytes as libgit2 holds them, so a
    /// big file is never copied before it is rendered.
    pub(super) async fn with<T, F>(&self, event: &event::Model, make: F) -> Found<T>
    where
        T: Send + 'static,
        F: Fn(&[u8]) -> T + Send + Sync + 'static,
    {
        if event.lfs {
            self.with_lfs_object(event, make).await
        } else {
            self.with_blob(event, make).await
        }
    }

    /// What `make` makes of the LFS object the event's pointer names,
    /// fetched with the subscription's own credential. An object the
    /// server does not have, refuses this subscription, or sends wrong,
    /// and a server that cannot be reached now, are each a failed attempt
    /// ([`Found::Failed`]); the pointer itself is read as any file is.
    async fn with_lfs_object<T, F>(&self, event: &event::Model, make: F) -> Found<T>
    where
        T: Send + 'static,
        F: Fn(&[u8]) -> T + Send + Sync + 'static,
    {
        let pointer = match self.with_blob(event, Pointer::parse).await {
            Found::Made(Some(pointer)) => pointer,
            Found::Made(None) => {
                return Found::Gone("the file's Git LFS pointer is not valid".to_owned());
            }
            Found::Gone(why) => return Found::Gone(why),
            Found::Unavailable(why) => return Found::Unavailable(why),
            Found::Failed { class, error } => return Found::Failed { class, error },
        };
        let lfs_config = self.mirror.lfs_config(event.commit_sha.clone()).await;
        let object = match self
            .lfs
            .fetch(&self.remote, lfs_config.as_deref(), &pointer)
            .await
        {
            Ok(object) => object,
            Err(err) => return lfs_failure(&err),
        };
        let made =
            tokio::task::spawn_blocking(move || std::fs::read(&object).map(|bytes| make(&bytes)))
                .await;
        match crate::owned::joined(made) {
            Some(Ok(made)) => Found::Made(made),
            Some(Err(err)) => Found::Unavailable(format!(
                "the file's Git LFS object could not be read from the cache: {err}"
            )),
            None => Found::Unavailable("the read of the file's Git LFS object stopped".to_owned()),
        }
    }

    /// What `make` makes of the event's blob: from the mirror, else from
    /// the remote again.
    async fn with_blob<T, F>(&self, event: &event::Model, make: F) -> Found<T>
    where
        T: Send + 'static,
        F: Fn(&[u8]) -> T + Send + Sync + 'static,
    {
        let make = Arc::new(make);
        if let Some(made) = self
            .mirror
            .read_with(event.blob_id.clone(), make.clone())
            .await
        {
            return Found::Made(made);
        }
        let Some(commit) = event.commit_sha.clone() else {
            return Found::Gone("the event names no commit to fetch its content from".to_owned());
        };
        let (path, remote, branch) = (
            self.mirror.path.clone(),
            self.remote.clone(),
            self.branch.clone(),
        );
        // Pinned again under its snapshot, or a replayed event's replay.
        let pin = event
            .snapshot_id
            .clone()
            .or_else(|| event.replay_id.clone());
        let (wanted, snapshot) = (commit.clone(), pin);
        let in_modules = self.expand_submodules.then(|| event.path.clone()).flatten();
        let refetched = self
            .pool
            .run(move || {
                // Opened to be written: waits while a scan writes the mirror.
                let mirror = Mirror::open(&path)?;
                let found = mirror.refetch_commit(
                    &remote,
                    branch.as_deref(),
                    &wanted,
                    snapshot.as_deref(),
                )?;
                if let (true, Some(file)) = (found, in_modules) {
                    bring_modules(&mirror, &remote, &wanted, &file)?;
                }
                Ok::<bool, GitError>(found)
            })
            .await;
        match refetched {
            Ok(Ok(true)) => match self.mirror.read_with(event.blob_id.clone(), make).await {
                Some(made) => Found::Made(made),
                None => Found::Gone(format!(
                    "commit {commit} does not hold the file's content; resync the repository"
                )),
            },
            Ok(Ok(false)) => Found::Gone(format!(
                "the remote no longer has commit {commit} (its history was rewritten); resync the repository"
            )),
            Ok(Err(err)) => Found::Unavailable(format!(
                "the file's content must be fetched again and the remote could not be read: {}",
                err.message
            )),
            Err(lost) => {
                Found::Unavailable(format!("the file's content must be fetched again: {lost}"))
            }
        }
    }
}

/// What an LFS failure is for the event: a failed attempt, with the reason.
fn lfs_failure<T>(err: &LfsError) -> Found<T> {
    let (class, error) = match err {
        LfsError::Missing(why) => (
            ErrorClass::ContentMissing,
            format!("the file's Git LFS object is missing: {why}"),
        ),
        LfsError::Refused(why) => (
            ErrorClass::ContentMissing,
            format!("the file's Git LFS object cannot be fetched for this subscription: {why}"),
        ),
        LfsError::Invalid(why) => (
            ErrorClass::ContentMissing,
            format!("the file's Git LFS object was not accepted: {why}"),
        ),
        LfsError::Unavailable(why) => (
            ErrorClass::ContentUnavailable,
            format!("the file's Git LFS object could not be fetched: {why}"),
        ),
    };
    Found::Failed { class, error }
}

/// Brings the submodule commits that `file` of `commit` lies in into the
/// mirror, from their own remotes, and keeps them while the commit is kept.
fn bring_modules(
    mirror: &Mirror,
    remote: &RemoteSpec,
    commit: &str,
    file: &str,
) -> Result<(), GitError> {
    let Ok(at) = git2::Oid::from_str(commit) else {
        return Ok(());
    };
    let mut modules = MirrorModules { mirror, remote };
    let brought = crate::changes::bring_path(mirror.repo(), at, file, modules.modules());
    modules.keep_needed();
    brought.map_err(change_failure)
}

/// How long one opening of the mirror serves. Long enough for libgit2's
/// cache of delta bases to pay (tens of thousands of small files); short
/// enough that pack files a compaction deleted are not held open, with
/// their disk space, for a lane's whole life.
const REOPEN_AFTER: Duration = Duration::from_secs(30);

/// Reads file content from a repository's mirror, keeping the mirror open
/// (for [`REOPEN_AFTER`]) instead of opening it per event.
#[derive(Clone)]
pub(super) struct MirrorReader {
    path: PathBuf,
    repo: Arc<std::sync::Mutex<Option<Opened>>>,
    reopen_after: Duration,
}

/// The mirror as opened, and when.
struct Opened {
    repo: git2::Repository,
    at: Instant,
}

impl MirrorReader {
    pub(super) fn new(path: PathBuf) -> Self {
        Self {
            path,
            repo: Arc::default(),
            reopen_after: REOPEN_AFTER,
        }
    }

    #[cfg(test)]
    fn reopening_after(self, reopen_after: Duration) -> Self {
        Self {
            reopen_after,
            ..self
        }
    }

    /// What `make` makes of a blob's bytes, on a blocking thread; `None`
    /// when the mirror or the blob is missing. A panic in `make` is the
    /// caller's.
    pub(super) async fn read_with<T, F>(&self, blob: Option<String>, make: Arc<F>) -> Option<T>
    where
        T: Send + 'static,
        F: Fn(&[u8]) -> T + Send + Sync + 'static,
    {
        let reader = self.clone();
        crate::owned::joined(
            tokio::task::spawn_blocking(move || reader.read_now(blob.as_deref(), &*make)).await,
        )
        .flatten()
    }

    /// The text of commit `commit`'s `.lfsconfig`, if the mirror has it
    /// (at most 64 KiB: it holds a few settings).
    pub(super) async fn lfs_config(&self, commit: Option<String>) -> Option<String> {
        let path = self.path.clone();
        let read = tokio::task::spawn_blocking(move || -> Option<String> {
            let repo = git2::Repository::open_bare(&path).ok()?;
            let commit = repo.find_commit(git2::Oid::from_str(&commit?).ok()?).ok()?;
            let entry = commit
                .tree()
                .ok()?
                .get_name(LFS_CONFIG_FILE)?
                .to_object(&repo)
                .ok()?;
            let blob = entry.into_blob().ok()?;
            (blob.size() <= 64 << 10).then(|| String::from_utf8_lossy(blob.content()).into_owned())
        })
        .await;
        read.ok().flatten()
    }

    /// What `make` makes of a blob's bytes, on this thread (a blocking
    /// one); `None` when the mirror or the blob is missing.
    pub(super) fn read_now<T>(&self, blob: Option<&str>, make: &dyn Fn(&[u8]) -> T) -> Option<T> {
        let blob = git2::Oid::from_str(blob?).ok()?;
        let mut slot = self.repo.lock().ok()?;
        let stale = slot
            .as_ref()
            .is_none_or(|opened| opened.at.elapsed() > self.reopen_after);
        // A handle opened earlier may predate a rebuilt mirror or a refetch:
        // on a miss the mirror is opened afresh, once. One opened just now
        // is not opened again.
        let openings: &[bool] = if stale { &[true] } else { &[false, true] };
        for &open in openings {
            if open {
                *slot = Some(Opened {
                    repo: git2::Repository::open_bare(&self.path).ok()?,
                    at: Instant::now(),
                });
            }
            // A big file does not close the mirror: the pack windows it
            // maps are bounded process-wide (`git::configure_process`), and
            // reopening would drop libgit2's cache of delta bases.
            let found = slot.as_ref()?.repo.find_blob(blob).ok();
            if let Some(found) = found {
                return Some(make(found.content()));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    /// A bare mirror at `path` holding `content` packed, as a fetch leaves
    /// it; the blob's id.
    fn packed_mirror(path: &Path, content: &[u8]) -> String {
        let repo = git2::Repository::init_bare(path).expect("a bare repository");
        let blob = repo.blob(content).expect("a blob");
        repo.reference("refs/tags/content", blob, true, "the test's content")
            .expect("a ref to the blob");
        let packed = std::process::Command::new("git")
            .args(["repack", "-a", "-d", "-q"])
            .current_dir(path)
            .status()
            .expect("git runs");
        assert!(packed.success());
        blob.to_string()
    }

    fn read(reader: &MirrorReader, blob: &str) -> Option<Vec<u8>> {
        reader.read_now(Some(blob), &|bytes: &[u8]| bytes.to_vec())
    }

    #[test]
    fn an_old_opening_of_the_mirror_lets_go_of_packs_deleted_since() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let path = dir.path().join("repo.git");
        let old = packed_mirror(&path, b"before the compaction");
        let kept = MirrorReader::new(path.clone()).reopening_after(Duration::MAX);
        let aged = MirrorReader::new(path.clone()).reopening_after(Duration::ZERO);
        assert_eq!(
            read(&kept, &old).as_deref(),
            Some(&b"before the compaction"[..])
        );
        assert_eq!(
            read(&aged, &old).as_deref(),
            Some(&b"before the compaction"[..])
        );

        // The mirror's packs are replaced on disk (a compaction, a rebuild).
        std::fs::remove_dir_all(&path).expect("the mirror removed");
        let new = packed_mirror(&path, b"after the compaction");

        // An opening that is kept still reads the deleted pack: it holds it,
        // and its disk space, open.
        assert_eq!(
            read(&kept, &old).as_deref(),
            Some(&b"before the compaction"[..])
        );
        // One past its age reopens the mirror: only what is on disk now.
        assert_eq!(read(&aged, &old), None);
        assert_eq!(
            read(&aged, &new).as_deref(),
            Some(&b"after the compaction"[..])
        );
    }

    #[test]
    fn a_big_file_leaves_the_mirror_open() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let path = dir.path().join("repo.git");
        // 3 MiB that do not compress, as the biggest files of the reference
        // workload.
        let mut big = Vec::with_capacity(3 << 20);
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        while big.len() < 3 << 20 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            big.extend_from_slice(&state.to_le_bytes());
        }
        let blob = packed_mirror(&path, &big);
        let reader = MirrorReader::new(path.clone()).reopening_after(Duration::MAX);
        assert_eq!(
            reader.read_now(Some(&blob), &|bytes: &[u8]| bytes.len()),
            Some(big.len())
        );

        // The mirror is replaced on disk: an opening that was kept after the
        // big file still reads it; one closed after it would have reopened
        // the new mirror, which lacks it.
        std::fs::remove_dir_all(&path).expect("the mirror removed");
        packed_mirror(&path, b"another mirror");
        assert_eq!(
            reader.read_now(Some(&blob), &|bytes: &[u8]| bytes.len()),
            Some(big.len())
        );
    }
}
