//! Where a lane finds the content it sends: the repository's mirror, and
//! when the mirror lacks it (another instance made the snapshot, or the
//! mirror was lost) the remote again, with the subscription's own
//! credential, on a scan worker.

use std::path::PathBuf;
use std::sync::Arc;

use entity::event;

use crate::git::{self, Mirror, RemoteSpec};
use crate::scan::ScanPool;

/// What became of an event's content.
pub(super) enum Found {
    Bytes(Vec<u8>),
    /// It cannot come back: the remote no longer has the commit. Says why.
    Gone(String),
    /// It may come back: the remote could not be asked now. Says why.
    Unavailable(String),
}

/// An event's content source: the mirror, then the remote.
pub(super) struct Content {
    pub(super) mirror: MirrorReader,
    /// The remote and the subscription's credential.
    pub(super) remote: RemoteSpec,
    /// The watched branch, when known.
    pub(super) branch: Option<String>,
    pub(super) pool: ScanPool,
}

impl Content {
    /// The content of a created or updated file.
    pub(super) async fn get(&self, event: &event::Model) -> Found {
        if let Some(bytes) = self.mirror.read(event.blob_id.clone()).await {
            return Found::Bytes(bytes);
        }
        let Some(commit) = event.commit_sha.clone() else {
            return Found::Gone("the event names no commit to fetch its content from".to_owned());
        };
        let (path, remote, branch) = (
            self.mirror.path.clone(),
            self.remote.clone(),
            self.branch.clone(),
        );
        let (wanted, snapshot) = (commit.clone(), event.snapshot_id.clone());
        let refetched = self
            .pool
            .run(move || {
                let lock = git::mirror_lock(&path);
                let _writing = lock
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                Mirror::open(&path)?.refetch_commit(
                    &remote,
                    branch.as_deref(),
                    &wanted,
                    snapshot.as_deref(),
                )
            })
            .await;
        match refetched {
            Ok(Ok(true)) => match self.mirror.read(event.blob_id.clone()).await {
                Some(bytes) => Found::Bytes(bytes),
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

/// Blobs larger than this are not kept mapped after they are read.
const BIG_BLOB: usize = 1 << 20;

/// Reads file content from a repository's mirror on a blocking thread,
/// keeping the mirror open for the lane's life instead of opening it per
/// event.
#[derive(Clone)]
pub(super) struct MirrorReader {
    path: PathBuf,
    repo: Arc<std::sync::Mutex<Option<git2::Repository>>>,
}

impl MirrorReader {
    pub(super) fn new(path: PathBuf) -> Self {
        Self {
            path,
            repo: Arc::default(),
        }
    }

    /// A blob's bytes; `None` when the mirror or the blob is missing.
    pub(super) async fn read(&self, blob: Option<String>) -> Option<Vec<u8>> {
        let blob = git2::Oid::from_str(&blob?).ok()?;
        let reader = self.clone();
        tokio::task::spawn_blocking(move || reader.read_blocking(blob))
            .await
            .ok()
            .flatten()
    }

    fn read_blocking(&self, blob: git2::Oid) -> Option<Vec<u8>> {
        let mut slot = self.repo.lock().ok()?;
        // A handle opened earlier may predate a rebuilt mirror or a refetch:
        // on a miss the mirror is opened afresh once.
        for reopen in [false, true] {
            if reopen || slot.is_none() {
                *slot = Some(git2::Repository::open_bare(&self.path).ok()?);
            }
            let found = slot
                .as_ref()?
                .find_blob(blob)
                .ok()
                .map(|found| found.content().to_vec());
            if let Some(content) = found {
                if content.len() > BIG_BLOB {
                    // Close the mirror: the pack windows mapped to read a big
                    // file leave memory with it.
                    *slot = None;
                }
                return Some(content);
            }
        }
        None
    }
}
