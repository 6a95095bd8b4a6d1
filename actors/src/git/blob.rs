//! Reading a large blob in pieces, so that its size, not its content, is
//! what a scan holds in memory.
//!
//! libgit2 hands out an object only whole, and a pack can hold a file far
//! larger than itself (1.5 GiB of zeros packs to 1.5 MB): hashing such a file
//! through `find_blob` inflated all of it. [`pieces`] reads the object where
//! it lies instead and inflates it through a bounded buffer:
//!
//! - a loose object through libgit2's own stream (`git_odb_open_rstream`,
//!   which only the loose backend offers);
//! - a packed object stored whole (how git and libgit2 store every file
//!   above `core.bigFileThreshold`, and most large ones below it) from its
//!   pack: the offset from the pack's index (version 2), the entry's header,
//!   then zlib through [`PIECE`]-sized reads;
//! - a packed delta, the one form that cannot be streamed (applying it needs
//!   its base whole), through libgit2, whole. libgit2 inflated it whole once
//!   already, to index the fetched pack.

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use git2::{ErrorClass, ErrorCode, ObjectType, Oid, Repository};

/// The most of a blob held at once while it is read in pieces.
pub const PIECE: usize = 64 * 1024;

/// Feeds the bytes of blob `oid` to `sink`, in pieces of at most [`PIECE`]
/// bytes (but for a packed delta, given whole), and returns its size.
pub fn pieces(
    repo: &Repository,
    oid: Oid,
    sink: &mut dyn FnMut(&[u8]),
) -> Result<u64, git2::Error> {
    let odb = repo.odb()?;
    if let Ok((mut reader, size, ObjectType::Blob)) = odb.reader(oid) {
        return copy(&mut reader, size as u64, sink);
    }
    match packed_whole(&repo.path().join("objects/pack"), oid) {
        Ok(Some((mut reader, size))) => copy(&mut reader, size, sink),
        // A delta, or not in a pack we can read: libgit2 has it whole.
        Ok(None) | Err(_) => {
            let blob = repo.find_blob(oid)?;
            sink(blob.content());
            Ok(blob.content().len() as u64)
        }
    }
}

fn copy(reader: &mut dyn Read, size: u64, sink: &mut dyn FnMut(&[u8])) -> Result<u64, git2::Error> {
    let mut buffer = vec![0u8; PIECE];
    let mut total = 0u64;
    loop {
        let n = match reader.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(damaged(&format!("reading a blob failed: {err}"))),
        };
        total += n as u64;
        if total > size {
            return Err(damaged("a blob is longer than its header says"));
        }
        sink(&buffer[..n]);
    }
    if total != size {
        return Err(damaged("a blob is shorter than its header says"));
    }
    Ok(total)
}

fn damaged(message: &str) -> git2::Error {
    git2::Error::new(ErrorCode::GenericError, ErrorClass::Odb, message)
}

/// The pack entry of `oid` when it is stored whole: a reader of its
/// inflated bytes and its size. `None` when no pack has it, or it is a
/// delta.
fn packed_whole(pack_dir: &Path, oid: Oid) -> std::io::Result<Option<(impl Read + use<>, u64)>> {
    for index in pack_indexes(pack_dir)? {
        let Some(offset) = find_in_index(&index, oid)? else {
            continue;
        };
        let mut pack = File::open(index.with_extension("pack"))?;
        pack.seek(SeekFrom::Start(offset))?;
        let mut pack = BufReader::with_capacity(PIECE, pack);
        let (kind, size) = entry_header(&mut pack)?;
        // 1 commit, 2 tree, 3 blob, 4 tag; 6 and 7 are deltas.
        if kind != 3 {
            return Ok(None);
        }
        return Ok(Some((
            flate2::bufread::ZlibDecoder::new(pack).take(size),
            size,
        )));
    }
    Ok(None)
}

fn pack_indexes(pack_dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut indexes: Vec<PathBuf> = std::fs::read_dir(pack_dir)?
        .filter_map(|entry| Some(entry.ok()?.path()))
        .filter(|path| path.extension().is_some_and(|e| e == "idx"))
        .collect();
    indexes.sort();
    Ok(indexes)
}

/// The offset of `oid` in the pack of the version 2 index at `path`, by
/// binary search over the index as it lies on disk (no more than a few
/// dozen small reads, whatever the index's size).
fn find_in_index(path: &Path, oid: Oid) -> std::io::Result<Option<u64>> {
    const HEADER: u64 = 8;
    const FANOUT: u64 = 256 * 4;
    let invalid =
        |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned());
    let index = File::open(path)?;
    let mut header = [0u8; 8];
    index.read_exact_at(&mut header, 0)?;
    if header != [0xff, b't', b'O', b'c', 0, 0, 0, 2] {
        return Err(invalid("not a version 2 pack index"));
    }
    let id = oid.as_bytes();
    let fanout = |byte: u64| -> std::io::Result<u64> {
        let mut n = [0u8; 4];
        index.read_exact_at(&mut n, HEADER + byte * 4)?;
        Ok(u64::from(u32::from_be_bytes(n)))
    };
    let first = u64::from(id[0]);
    let (mut low, mut high) = (
        if first == 0 { 0 } else { fanout(first - 1)? },
        fanout(first)?,
    );
    let count = fanout(255)?;
    let names = HEADER + FANOUT;
    let mut name = [0u8; 20];
    while low < high {
        let middle = low + (high - low) / 2;
        index.read_exact_at(&mut name, names + middle * 20)?;
        match name.as_slice().cmp(id) {
            std::cmp::Ordering::Less => low = middle + 1,
            std::cmp::Ordering::Greater => high = middle,
            std::cmp::Ordering::Equal => {
                let offsets = names + count * 20 + count * 4;
                let mut small = [0u8; 4];
                index.read_exact_at(&mut small, offsets + middle * 4)?;
                let small = u32::from_be_bytes(small);
                if small & 0x8000_0000 == 0 {
                    return Ok(Some(u64::from(small)));
                }
                let large = offsets + count * 4 + u64::from(small & 0x7fff_ffff) * 8;
                let mut offset = [0u8; 8];
                index.read_exact_at(&mut offset, large)?;
                return Ok(Some(u64::from_be_bytes(offset)));
            }
        }
    }
    Ok(None)
}

/// A pack entry's type and inflated size (git's variable-length header).
pub(super) fn entry_header(pack: &mut impl Read) -> std::io::Result<(u8, u64)> {
    let mut byte = [0u8; 1];
    pack.read_exact(&mut byte)?;
    let kind = (byte[0] >> 4) & 0x7;
    let mut size = u64::from(byte[0] & 0x0f);
    let mut shift = 4;
    while byte[0] & 0x80 != 0 {
        if shift > 57 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "a pack entry's size does not fit",
            ));
        }
        pack.read_exact(&mut byte)?;
        size |= u64::from(byte[0] & 0x7f) << shift;
        shift += 7;
    }
    Ok((kind, size))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    fn git(dir: &Path, args: &[&str]) {
        let status = std::process::Command::new("git")
            .args(args)
            .current_dir(dir)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("HOME", dir)
            .status()
            .expect("git runs");
        assert!(status.success(), "git {args:?}");
    }

    fn commit(dir: &Path, message: &str) {
        let identity = ["-c", "user.name=t", "-c", "user.email=t@t"];
        git(dir, &[&identity[..], &["commit", "-qm", message]].concat());
    }

    /// A repository holding `files` (name, bytes), packed or loose.
    fn repository(files: &[(&str, Vec<u8>)], packed: bool) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path();
        git(path, &["init", "-q", "-b", "main"]);
        for (name, bytes) in files {
            std::fs::write(path.join(name), bytes).expect("write");
        }
        git(path, &["add", "-A"]);
        commit(path, "files");
        if packed {
            git(path, &["repack", "-adq"]);
        }
        dir
    }

    fn read_in_pieces(repo: &Repository, oid: Oid) -> (Vec<u8>, usize) {
        let mut bytes = Vec::new();
        let mut largest = 0;
        let size = pieces(repo, oid, &mut |piece| {
            largest = largest.max(piece.len());
            bytes.extend_from_slice(piece);
        })
        .expect("read");
        assert_eq!(size, bytes.len() as u64);
        (bytes, largest)
    }

    #[test]
    fn packed_and_loose_blobs_come_in_bounded_pieces_byte_for_byte() {
        let big: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        for packed in [false, true] {
            let dir = repository(
                &[("big.bin", big.clone()), ("small.txt", b"hi\n".to_vec())],
                packed,
            );
            let repo = Repository::open(dir.path()).expect("open");
            let tree = repo.head().expect("head").peel_to_tree().expect("tree");
            for (name, expected) in [("big.bin", &big[..]), ("small.txt", b"hi\n")] {
                let oid = tree.get_name(name).expect("entry").id();
                let (bytes, largest) = read_in_pieces(&repo, oid);
                assert_eq!(
                    Sha256::digest(&bytes),
                    Sha256::digest(expected),
                    "{name}, packed: {packed}"
                );
                assert!(largest <= PIECE, "{name}: a piece of {largest} bytes");
            }
        }
    }

    #[test]
    fn a_packed_delta_is_read_whole_through_libgit2() {
        let dir = repository(&[("a.txt", vec![b'a'; 200_000])], false);
        let path = dir.path();
        let mut second = vec![b'a'; 200_000];
        second[100_000] = b'b';
        std::fs::write(path.join("a.txt"), &second).expect("write");
        git(path, &["add", "-A"]);
        commit(path, "two");
        git(path, &["repack", "-adfq", "--depth=10", "--window=10"]);
        let repo = Repository::open(path).expect("open");
        for (rev, expected) in [("HEAD", &second), ("HEAD~1", &vec![b'a'; 200_000])] {
            let tree = repo
                .revparse_single(rev)
                .expect("rev")
                .peel_to_tree()
                .expect("tree");
            let oid = tree.get_name("a.txt").expect("entry").id();
            let (bytes, _) = read_in_pieces(&repo, oid);
            assert_eq!(&bytes, expected, "{rev}");
        }
    }
}
