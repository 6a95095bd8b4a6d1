//! What Herald records of a file's bytes: SHA-256, size and the binary
//! rule, whole or fed piece by piece, and of a blob (an LFS pointer by its
//! object).

use super::*;

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

/// Describes a blob; with `lfs`, a blob that is an LFS pointer is
/// described by its object: the pointer's oid and size, and binary until
/// its content says otherwise at delivery.
pub(super) fn describe_blob(
    repo: &Repository,
    blob: Oid,
    lfs: bool,
) -> Result<FileInfo, ChangeError> {
    let (size, _) = repo.odb()?.read_header(blob)?;
    if lfs && size <= crate::lfs::pointer::MAX_POINTER_BYTES {
        let found = repo.find_blob(blob)?;
        let text = found.content();
        if let Some(pointer) = crate::lfs::Pointer::parse(text) {
            return Ok(FileInfo {
                blob_id: blob,
                sha256: pointer.oid,
                size: i64::try_from(pointer.size).unwrap_or(i64::MAX),
                binary: true,
                lfs: true,
                pointer: Some(PointerFile {
                    sha256: Sha256::digest(text).into(),
                    size: u16::try_from(text.len()).unwrap_or(u16::MAX),
                }),
            });
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
