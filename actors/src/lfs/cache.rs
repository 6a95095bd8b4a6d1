//! LFS objects on disk, by oid, shared by every subscriber of every
//! repository: `{dir}/{oid[..2]}/{oid}`. An object enters only whole and
//! checked (its SHA-256 is its name, its length the pointer's size), through
//! a temporary file renamed into place, so a reader never sees a partial
//! one. A hit is never proof of access: the caller asks the LFS server with
//! the subscriber's own credential first ([`super::Lfs::fetch`]).
//!
//! The cache is bounded by [`Cache::prune`] (upkeep): the objects used
//! longest ago (a hit touches its file's modification time) go first.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};

/// Temporary files older than this are a crashed download's, and pruned.
const STALE_TEMPORARY: Duration = Duration::from_secs(3600);

/// The object store under one directory.
#[derive(Debug, Clone)]
pub struct Cache {
    dir: PathBuf,
}

impl Cache {
    pub fn new(dir: PathBuf) -> Self {
        Self { dir }
    }

    fn path(&self, oid: &str) -> PathBuf {
        self.dir.join(&oid[..2]).join(oid)
    }

    /// The object's file, if cached; its use is recorded for pruning.
    pub fn get(&self, oid: &str) -> Option<PathBuf> {
        let path = self.path(oid);
        let file = std::fs::File::options().write(true).open(&path).ok()?;
        // Best effort: a cache whose times cannot be set still serves.
        let _ = file.set_modified(SystemTime::now());
        Some(path)
    }

    /// A new object being written; [`Incoming::finish`] checks it and puts
    /// it in place.
    pub fn incoming(&self, oid: &str, size: u64) -> std::io::Result<Incoming> {
        let temporary = self.dir.join("tmp");
        std::fs::create_dir_all(&temporary)?;
        let file = tempfile::NamedTempFile::new_in(&temporary)?;
        Ok(Incoming {
            file,
            sha: Sha256::new(),
            written: 0,
            oid: oid.to_owned(),
            size,
            target: self.path(oid),
        })
    }

    /// Removes the least recently used objects until the cache holds at
    /// most `max_bytes`, and temporary files left by a crash. Blocks.
    pub fn prune(&self, max_bytes: u64) -> std::io::Result<PruneReport> {
        let mut objects = Vec::new();
        let Ok(shards) = std::fs::read_dir(&self.dir) else {
            return Ok(PruneReport::default());
        };
        let now = SystemTime::now();
        for shard in shards.flatten() {
            let is_temporary = shard.file_name() == "tmp";
            let Ok(entries) = std::fs::read_dir(shard.path()) else {
                continue;
            };
            for entry in entries.flatten() {
                let Ok(meta) = entry.metadata() else { continue };
                let modified = meta.modified().unwrap_or(now);
                if is_temporary {
                    if now.duration_since(modified).unwrap_or_default() > STALE_TEMPORARY {
                        let _ = std::fs::remove_file(entry.path());
                    }
                    continue;
                }
                objects.push((modified, meta.len(), entry.path()));
            }
        }
        let mut report = PruneReport {
            kept_bytes: objects.iter().map(|(_, len, _)| len).sum(),
            ..PruneReport::default()
        };
        objects.sort_unstable_by_key(|(modified, _, _)| *modified);
        for (_, len, path) in objects {
            if report.kept_bytes <= max_bytes {
                break;
            }
            std::fs::remove_file(&path)?;
            report.kept_bytes -= len;
            report.removed += 1;
        }
        Ok(report)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// What a pruning left.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PruneReport {
    pub removed: usize,
    pub kept_bytes: u64,
}

/// An object being downloaded into the cache.
pub struct Incoming {
    file: tempfile::NamedTempFile,
    sha: Sha256,
    written: u64,
    oid: String,
    size: u64,
    target: PathBuf,
}

/// Why a downloaded object was not kept.
#[derive(Debug, thiserror::Error)]
pub enum IncomingError {
    #[error("the LFS server sent more than the pointer's {0} bytes")]
    TooLong(u64),
    #[error("the LFS server sent {sent} bytes, not the pointer's {size}")]
    TooShort { sent: u64, size: u64 },
    #[error(
        "the LFS server sent content that does not match the pointer's oid (its SHA-256 is {0})"
    )]
    Mismatch(String),
    #[error("the LFS object could not be stored: {0}")]
    Io(#[from] std::io::Error),
}

impl Incoming {
    /// The pointer's size: the most the object may hold.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Appends a piece of the object.
    pub fn write(&mut self, piece: &[u8]) -> Result<(), IncomingError> {
        self.written += piece.len() as u64;
        if self.written > self.size {
            return Err(IncomingError::TooLong(self.size));
        }
        self.sha.update(piece);
        self.file.write_all(piece)?;
        Ok(())
    }

    /// Checks the whole object against its oid and size and puts it in
    /// place; its path.
    pub fn finish(self) -> Result<PathBuf, IncomingError> {
        if self.written != self.size {
            return Err(IncomingError::TooShort {
                sent: self.written,
                size: self.size,
            });
        }
        let digest = hex::encode(<[u8; 32]>::from(self.sha.finalize()));
        if digest != self.oid {
            return Err(IncomingError::Mismatch(digest));
        }
        if let Some(parent) = self.target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        self.file
            .persist(&self.target)
            .map_err(|err| IncomingError::Io(err.error))?;
        Ok(self.target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn oid_of(content: &[u8]) -> String {
        hex::encode(Sha256::digest(content))
    }

    fn put(cache: &Cache, content: &[u8]) -> PathBuf {
        let mut incoming = cache
            .incoming(&oid_of(content), content.len() as u64)
            .expect("a temporary file");
        incoming.write(content).expect("written");
        incoming.finish().expect("kept")
    }

    #[test]
    fn only_whole_checked_objects_enter() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let cache = Cache::new(dir.path().to_owned());
        let oid = oid_of(b"model weights");
        assert_eq!(cache.get(&oid), None);

        let mut wrong = cache.incoming(&oid, 13).expect("a temporary file");
        wrong.write(b"model weighTS").expect("written");
        match wrong.finish() {
            Err(IncomingError::Mismatch(sha)) => assert_eq!(sha, oid_of(b"model weighTS")),
            other => panic!("{other:?}"),
        }
        let mut short = cache.incoming(&oid, 13).expect("a temporary file");
        short.write(b"model").expect("written");
        assert!(matches!(
            short.finish(),
            Err(IncomingError::TooShort { sent: 5, size: 13 })
        ));
        let mut long = cache.incoming(&oid, 13).expect("a temporary file");
        assert!(matches!(
            long.write(b"model weights and more"),
            Err(IncomingError::TooLong(13))
        ));
        assert_eq!(cache.get(&oid), None);

        let path = put(&cache, b"model weights");
        assert_eq!(cache.get(&oid), Some(path.clone()));
        assert_eq!(std::fs::read(path).expect("read"), b"model weights");
    }

    #[test]
    fn pruning_removes_the_least_recently_used_first() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let cache = Cache::new(dir.path().to_owned());
        let old = put(&cache, &[1u8; 100]);
        let used = put(&cache, &[2u8; 100]);
        let new = put(&cache, &[3u8; 100]);
        let hour_ago = SystemTime::now() - Duration::from_secs(3600);
        for path in [&old, &used] {
            let file = std::fs::File::options()
                .write(true)
                .open(path)
                .expect("open");
            file.set_modified(hour_ago).expect("set");
        }
        // `used` is hit: it is now the most recently used.
        assert!(cache.get(&oid_of(&[2u8; 100])).is_some());

        let report = cache.prune(250).expect("pruned");
        assert_eq!(
            report,
            PruneReport {
                removed: 1,
                kept_bytes: 200
            }
        );
        assert!(!old.exists() && used.exists() && new.exists());
        assert_eq!(cache.prune(1000).expect("pruned").removed, 0);
        assert_eq!(cache.prune(0).expect("pruned").kept_bytes, 0);
    }
}
