//! What Herald records of a file's bytes: SHA-256, size and the binary
//! rule, whole or fed piece by piece, and of a blob (an LFS pointer by its
//! object); many blobs on several threads at once.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use super::*;
use crate::lfs::Pointer;
use crate::lfs::pointer::MAX_POINTER_BYTES;

/// SHA-256 (hex), size and binary flag of a blob's bytes.
pub fn describe(content: &[u8]) -> (String, i64, bool) {
    let mut description = Description::new();
    description.feed(content);
    description.finish()
}

/// [`describe`], fed piece by piece: the same answer for the same bytes
/// however they are cut.
#[derive(Debug, Clone)]
pub struct Description {
    sha: Sha256,
    size: u64,
    /// The file's first bytes, as many as decide whether it is binary
    /// (held inline: a scan describes every file it reads).
    head: [u8; binary::HEAD_BYTES],
    /// How many of `head` are the file's.
    head_len: usize,
}

impl Default for Description {
    fn default() -> Self {
        Self::new()
    }
}

impl Description {
    pub fn new() -> Self {
        Self {
            sha: Sha256::new(),
            size: 0,
            head: [0; binary::HEAD_BYTES],
            head_len: 0,
        }
    }

    pub fn feed(&mut self, piece: &[u8]) {
        self.sha.update(piece);
        self.size += piece.len() as u64;
        let taken = piece.len().min(binary::HEAD_BYTES - self.head_len);
        self.head[self.head_len..self.head_len + taken].copy_from_slice(&piece[..taken]);
        self.head_len += taken;
    }

    /// SHA-256 (hex), size and binary flag.
    pub fn finish(self) -> (String, i64, bool) {
        let (sha256, size, binary) = self.finish_raw();
        (hex::encode(sha256), size, binary)
    }

    /// SHA-256 (raw), size and binary flag.
    fn finish_raw(self) -> ([u8; 32], i64, bool) {
        (
            self.sha.finalize().into(),
            i64::try_from(self.size).unwrap_or(i64::MAX),
            binary::is_binary(&self.head[..self.head_len]),
        )
    }
}

/// A blob described as a fetch brings it ([`crate::git::Arriving`]): its
/// [`Description`], and, while its bytes may still be an LFS pointer, the
/// bytes (at most [`MAX_POINTER_BYTES`]), so that it is described as
/// [`describe_blob`] would with LFS on or off.
pub struct ArrivingBlob {
    description: Description,
    /// The bytes so far while they may be a pointer; `None` once they
    /// cannot.
    text: Option<Vec<u8>>,
}

/// What [`ArrivingBlob`] made of a blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arrival {
    sha256: [u8; 32],
    size: i64,
    binary: bool,
    /// The LFS pointer the blob is, if it is one.
    pointer: Option<Pointer>,
}

/// Every LFS pointer starts so ([`Pointer::parse`]).
const POINTER_START: &[u8] = b"version ";

impl crate::git::BlobReader for ArrivingBlob {
    type Made = Arrival;

    fn new() -> Self {
        Self {
            description: Description::new(),
            text: Some(Vec::new()),
        }
    }

    fn feed(&mut self, piece: &[u8]) {
        self.description.feed(piece);
        if let Some(text) = &mut self.text {
            if text.len() + piece.len() > MAX_POINTER_BYTES {
                self.text = None;
                return;
            }
            text.extend_from_slice(piece);
            if !POINTER_START.starts_with(&text[..text.len().min(POINTER_START.len())]) {
                self.text = None;
            }
        }
    }

    fn finish(self) -> Arrival {
        let pointer = self.text.as_deref().and_then(Pointer::parse);
        let (sha256, size, binary) = self.description.finish_raw();
        Arrival {
            sha256,
            size,
            binary,
            pointer,
        }
    }
}

/// Blobs described as the fetch brought them, by id.
pub type Arrived = std::collections::HashMap<Oid, Arrival>;

/// What [`describe_blob`] answers for `blob`, from its arrival.
fn arrived_info(arrived: Option<&Arrived>, blob: Oid, lfs: bool) -> Option<FileInfo> {
    let arrival = arrived?.get(&blob)?;
    Some(match arrival.pointer {
        Some(pointer) if lfs => pointer_info(blob, pointer, arrival.sha256, arrival.size),
        _ => FileInfo {
            blob_id: blob,
            sha256: arrival.sha256,
            size: arrival.size,
            binary: arrival.binary,
            lfs: false,
            pointer: None,
        },
    })
}

/// A file that is an LFS pointer (`text_sha256` and `text_size` the
/// pointer's own), described by its object: binary until its content says
/// otherwise at delivery.
fn pointer_info(blob: Oid, pointer: Pointer, text_sha256: [u8; 32], text_size: i64) -> FileInfo {
    FileInfo {
        blob_id: blob,
        sha256: pointer.oid,
        size: i64::try_from(pointer.size).unwrap_or(i64::MAX),
        binary: true,
        lfs: true,
        pointer: Some(PointerFile {
            sha256: text_sha256,
            size: u16::try_from(text_size).unwrap_or(u16::MAX),
        }),
    }
}

/// Describes a blob; with `lfs`, a blob that is an LFS pointer is
/// described by its object: the pointer's oid and size, and binary until
/// its content says otherwise at delivery.
pub(super) fn describe_blob(
    repo: &Repository,
    blob: Oid,
    lfs: bool,
) -> Result<FileInfo, ChangeError> {
    let (size, _) = repo.odb()?.read_header(blob)?;
    if lfs && size <= MAX_POINTER_BYTES {
        let found = repo.find_blob(blob)?;
        let text = found.content();
        if let Some(pointer) = Pointer::parse(text) {
            let size = i64::try_from(text.len()).unwrap_or(i64::MAX);
            return Ok(pointer_info(
                blob,
                pointer,
                Sha256::digest(text).into(),
                size,
            ));
        }
    }
    let mut description = Description::new();
    if size as u64 <= WHOLE_BLOB_MAX {
        description.feed(repo.find_blob(blob)?.content());
    } else {
        crate::git::blob::pieces(repo, blob, &mut |piece| description.feed(piece))?;
    }
    let (sha256, size, binary) = description.finish_raw();
    Ok(FileInfo {
        blob_id: blob,
        sha256,
        size,
        binary,
        lfs: false,
        pointer: None,
    })
}

/// Files met by a walk, waiting to be described: at most
/// [`Undescribed::CAPACITY`] at once, so that a walk of a million files
/// holds a list, not the tree.
pub(super) struct Undescribed<'a> {
    paths: Vec<String>,
    blobs: Vec<(Oid, bool)>,
    /// Blobs described as they arrived, taken from here.
    arrived: Option<&'a Arrived>,
}

impl<'a> Undescribed<'a> {
    const CAPACITY: usize = 4096;

    pub(super) fn new(arrived: Option<&'a Arrived>) -> Self {
        Self {
            paths: Vec::new(),
            blobs: Vec::new(),
            arrived,
        }
    }

    /// A file at `path`; with `lfs`, an LFS pointer stands for its object.
    pub(super) fn push(&mut self, path: String, blob: Oid, lfs: bool) {
        self.paths.push(path);
        self.blobs.push((blob, lfs));
    }

    pub(super) fn is_full(&self) -> bool {
        self.blobs.len() >= Self::CAPACITY
    }

    /// Describes the files held ([`describe_blobs`]) into `delta`, and
    /// holds none.
    pub(super) fn describe_into(
        &mut self,
        repo: &Repository,
        delta: &mut TreeDelta,
    ) -> Result<(), ChangeError> {
        let mut infos: Vec<Option<FileInfo>> = self
            .blobs
            .iter()
            .map(|&(blob, lfs)| arrived_info(self.arrived, blob, lfs))
            .collect();
        let unread: Vec<(Oid, bool)> = self
            .blobs
            .iter()
            .zip(&infos)
            .filter(|(_, info)| info.is_none())
            .map(|(&blob, _)| blob)
            .collect();
        let mut read = describe_blobs(repo, &unread)?.into_iter();
        for info in infos.iter_mut().filter(|info| info.is_none()) {
            *info = read.next();
        }
        self.blobs.clear();
        for (path, info) in self.paths.drain(..).zip(infos) {
            let info =
                info.ok_or_else(|| ChangeError::Read("a blob was left undescribed".to_owned()))?;
            delta.add_upsert(&path, info)?;
        }
        Ok(())
    }
}

/// Blobs described together on one thread: fewer go serially.
const PARALLEL_FROM: usize = 64;

/// Blobs a thread takes at a time from the shared list.
const TAKEN_AT_ONCE: usize = 8;

/// At most this many threads describe one list.
const MAX_THREADS: usize = 4;

/// Describes `blobs` (each with whether an LFS pointer counts as its
/// object), in their order, as [`describe_blob`] does one by one. A long
/// list is shared among as many threads as the machine has cores (up to
/// [`MAX_THREADS`]), each reading the mirror through a handle of its own:
/// a first sync inflates and hashes every file of the tip, and that work,
/// not the walk, is what stands between the fetch and the first event.
fn describe_blobs(repo: &Repository, blobs: &[(Oid, bool)]) -> Result<Vec<FileInfo>, ChangeError> {
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    describe_on(repo, blobs, cores.min(MAX_THREADS))
}

/// [`describe_blobs`] on up to `threads` threads.
fn describe_on(
    repo: &Repository,
    blobs: &[(Oid, bool)],
    threads: usize,
) -> Result<Vec<FileInfo>, ChangeError> {
    let threads = threads.min(blobs.len() / PARALLEL_FROM);
    if threads <= 1 {
        return blobs
            .iter()
            .map(|&(blob, lfs)| describe_blob(repo, blob, lfs))
            .collect();
    }
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    // Each thread's share: (index, description), or the first failure.
    let share = |repo: &Repository| -> Result<Vec<(usize, FileInfo)>, ChangeError> {
        let mut described = Vec::new();
        loop {
            let start = next.fetch_add(TAKEN_AT_ONCE, Ordering::Relaxed);
            if start >= blobs.len() || failed.load(Ordering::Relaxed) {
                return Ok(described);
            }
            let end = (start + TAKEN_AT_ONCE).min(blobs.len());
            for (index, &(blob, lfs)) in blobs.iter().enumerate().take(end).skip(start) {
                match describe_blob(repo, blob, lfs) {
                    Ok(info) => described.push((index, info)),
                    Err(err) => {
                        failed.store(true, Ordering::Relaxed);
                        return Err(err);
                    }
                }
            }
        }
    };
    let path = repo.path();
    let shares = std::thread::scope(|scope| {
        let helpers: Vec<_> = (1..threads)
            .map(|_| {
                scope.spawn(|| match Repository::open_bare(path) {
                    Ok(own) => share(&own),
                    // This thread leaves its share to the others.
                    Err(_) => Ok(Vec::new()),
                })
            })
            .collect();
        let mut shares = vec![share(repo)];
        shares.extend(helpers.into_iter().map(|helper| {
            helper.join().unwrap_or_else(|_| {
                Err(ChangeError::Read(
                    "a blob could not be described".to_owned(),
                ))
            })
        }));
        shares
    });
    let mut infos: Vec<Option<FileInfo>> = vec![None; blobs.len()];
    for share in shares {
        for (index, info) in share? {
            infos[index] = Some(info);
        }
    }
    infos
        .into_iter()
        .map(|info| info.ok_or_else(|| ChangeError::Read("a blob was left undescribed".to_owned())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blobs_described_on_several_threads_are_described_as_one_by_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let repo = Repository::init_bare(dir.path()).expect("a repository");
        let mut blobs = Vec::new();
        for i in 0..700_usize {
            let content: Vec<u8> = match i % 3 {
                0 => format!("text file {i}\n").repeat(i % 50 + 1).into_bytes(),
                1 => (0..i * 7).map(|b| (b % 251) as u8).collect(),
                _ => b"version https://git-lfs.github.com/spec/v1\noid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\nsize 12345\n".to_vec(),
            };
            blobs.push((repo.blob(&content).expect("a blob"), i % 2 == 0));
        }
        let one_by_one: Vec<FileInfo> = blobs
            .iter()
            .map(|&(blob, lfs)| describe_blob(&repo, blob, lfs).expect("described"))
            .collect();
        assert!(
            one_by_one.iter().any(|info| info.lfs) && one_by_one.iter().any(|info| info.binary)
        );
        for threads in [1, 2, 3, 4] {
            let together = describe_on(&repo, &blobs, threads).expect("described");
            assert_eq!(together, one_by_one, "on {threads} threads");
        }
        let missing = (Oid::from_bytes(&[7; 20]).expect("an id"), false);
        let mut broken = blobs.clone();
        broken.insert(350, missing);
        assert!(
            describe_on(&repo, &broken, 3).is_err(),
            "a missing blob fails the list"
        );
    }

    /// `bytes` read as they arrive, in pieces of `every` bytes.
    fn arrival(bytes: &[u8], every: usize) -> Arrival {
        use crate::git::BlobReader;
        let mut reader = ArrivingBlob::new();
        for piece in bytes.chunks(every.max(1)) {
            reader.feed(piece);
        }
        reader.finish()
    }

    #[test]
    fn a_blob_described_as_it_arrives_is_described_as_from_the_mirror() {
        let dir = tempfile::tempdir().expect("tempdir");
        let repo = Repository::init_bare(dir.path()).expect("a repository");
        let pointer = b"version https://git-lfs.github.com/spec/v1\noid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\nsize 12345\n";
        let contents: Vec<Vec<u8>> = vec![
            pointer.to_vec(),
            // Looks like a pointer at first, is not one.
            b"version https://git-lfs.github.com/spec/v1\nnot a pointer\n".to_vec(),
            b"version 2 of the notes\n".to_vec(),
            b"plain text\n".to_vec(),
            Vec::new(),
            vec![0u8, 1, 2, 3],
            // A pointer's start, then too long to be one.
            [&pointer[..], &[b'x'; 1100][..]].concat(),
            (0..5000_u32).map(|i| (i % 251) as u8).collect(),
        ];
        for bytes in &contents {
            let blob = repo.blob(bytes).expect("a blob");
            for every in [1, 7, 4096] {
                let arrived: Arrived = [(blob, arrival(bytes, every))].into_iter().collect();
                for lfs in [true, false] {
                    assert_eq!(
                        arrived_info(Some(&arrived), blob, lfs),
                        Some(describe_blob(&repo, blob, lfs).expect("described")),
                        "{:?} in pieces of {every}, lfs {lfs}",
                        String::from_utf8_lossy(&bytes[..bytes.len().min(30)])
                    );
                }
            }
        }
        let pointer_blob = repo.blob(pointer).expect("a blob");
        assert!(
            describe_blob(&repo, pointer_blob, true)
                .expect("described")
                .lfs
        );
    }

    #[test]
    fn blobs_that_arrived_are_taken_as_they_arrived_the_others_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let repo = Repository::init_bare(dir.path()).expect("a repository");
        let arrived_blob = repo.blob(b"plain text\n").expect("a blob");
        let unknown = repo.blob(b"not arrived\n").expect("a blob");
        // A description no read of the mirror could give shows that the
        // arrival was used.
        let marked = Arrival {
            sha256: [9; 32],
            size: 11,
            binary: true,
            pointer: None,
        };
        let arrived: Arrived = [(arrived_blob, marked)].into_iter().collect();
        let mut pending = Undescribed::new(Some(&arrived));
        pending.push("a.txt".to_owned(), arrived_blob, true);
        pending.push("b.txt".to_owned(), unknown, true);
        let mut delta = TreeDelta::default();
        pending.describe_into(&repo, &mut delta).expect("described");
        let infos: std::collections::HashMap<&str, &FileInfo> = delta.upserts().collect();

        assert_eq!(
            (infos["a.txt"].sha256, infos["a.txt"].binary),
            ([9; 32], true)
        );
        assert_eq!(
            *infos["b.txt"],
            describe_blob(&repo, unknown, true).expect("described")
        );
    }
}
