//! Where a lane finds the content it sends: the repository's mirror.

use std::path::PathBuf;
use std::sync::Arc;

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
        // A handle opened earlier may predate a rebuilt mirror: on a miss
        // the mirror is opened afresh once.
        for reopen in [false, true] {
            if reopen || slot.is_none() {
                *slot = Some(git2::Repository::open_bare(&self.path).ok()?);
            }
            let repo = slot.as_ref()?;
            if let Ok(found) = repo.find_blob(blob) {
                return Some(found.content().to_vec());
            }
        }
        None
    }
}
