//! Writing objects into a mirror as one new pack, each object stored whole.
//!
//! Two operations copy objects without the history around them: a fetch
//! from a local repository ([`super::local`]) copies the objects of one
//! commit that the mirror lacks, and a compaction ([`super::Mirror::repack`])
//! rewrites the objects that the mirror's refs still need. Both hand the
//! objects to [`PackWriter`] one by one, as they walk the trees:
//!
//! - objects are stored whole, never as deltas: no delta is ever searched
//!   for, so the cost is the objects' bytes once (read, deflate, write),
//!   never a search over history;
//! - a large blob goes through in pieces ([`super::blob::pieces`]), so its
//!   size, not its content, is what the copy holds in memory;
//! - the writer checks each object's id against its content as it copies
//!   it, and indexes the pack itself (git's pack index, version 2) from what
//!   it wrote: 32 bytes an object, where libgit2's indexer holds about a
//!   hundred and reads the pack back;
//! - the pack and its index are written under temporary names and renamed
//!   into `objects/pack` only when whole, the index last (git's order: the
//!   index is what makes a pack visible), so a copy that fails leaves
//!   nothing behind.

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use flate2::write::ZlibEncoder;
use flate2::{Compress, Compression, FlushCompress, Status};
use git2::{ObjectType, Odb, Oid, Repository};
use sha1::{Digest, Sha1};

use super::blob;

/// Above this size a blob is copied in pieces rather than read whole.
const WHOLE_OBJECT_MAX: usize = 1 << 20;

/// How much of the pack is buffered before it reaches the file.
const BUFFER: usize = 256 * 1024;

/// Where an object's entry starts in the pack, and the CRC-32 of the entry
/// as written (header and deflated data): what the index records of it.
struct Entry {
    oid: Oid,
    offset: u64,
    crc: u32,
}

/// The pack file being written, counting its bytes and the CRC-32 of the
/// current entry.
struct Counted {
    out: BufWriter<File>,
    offset: u64,
    crc: flate2::Crc,
}

impl Write for Counted {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let n = self.out.write(bytes)?;
        self.crc.update(&bytes[..n]);
        self.offset += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

/// One new pack in a repository's `objects/pack`, written object by object.
pub(super) struct PackWriter {
    dir: PathBuf,
    /// The pack under its temporary name; removed on drop unless renamed.
    temporary: PathBuf,
    stream: Counted,
    entries: Vec<Entry>,
    /// One deflate stream for every whole object, reset between them: a
    /// new one for each allocated and cleared its window and tables again,
    /// which took most of a local fetch of small files (BENCHMARKS.md,
    /// "Deep history").
    zlib: Compress,
    /// An object's deflated bytes, before they go into the pack.
    deflated: Vec<u8>,
}

impl Drop for PackWriter {
    fn drop(&mut self) {
        // Gone once renamed; a failed copy leaves nothing behind.
        let _ = std::fs::remove_file(&self.temporary);
    }
}

impl PackWriter {
    /// Starts a pack in the object database of the repository at `git_dir`.
    pub(super) fn start(git_dir: &Path) -> Result<Self, git2::Error> {
        let dir = git_dir.join("objects").join("pack");
        std::fs::create_dir_all(&dir).map_err(io_failure)?;
        sweep_stale(&dir);
        let temporary = dir.join(format!("tmp_pack_herald_{}", ulid::Ulid::generate()));
        let file = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&temporary)
            .map_err(io_failure)?;
        let mut stream = Counted {
            out: BufWriter::with_capacity(BUFFER, file),
            offset: 0,
            crc: flate2::Crc::new(),
        };
        // The object count is set when the pack is finished.
        stream
            .write_all(b"PACK\0\0\0\x02\0\0\0\0")
            .map_err(io_failure)?;
        Ok(Self {
            dir,
            temporary,
            stream,
            entries: Vec::new(),
            zlib: Compress::new(Compression::fast(), true),
            deflated: Vec::new(),
        })
    }

    /// Copies object `oid` from `from`, whole.
    pub(super) fn copy(
        &mut self,
        from: &Repository,
        odb: &Odb<'_>,
        oid: Oid,
    ) -> Result<(), git2::Error> {
        let offset = self.stream.offset;
        self.stream.crc.reset();
        let (size, kind) = odb.read_header(oid)?;
        // The object's id, computed from what is copied (git hashes the
        // type, the size and the content).
        let mut id = Sha1::new();
        if kind == ObjectType::Blob && size > WHOLE_OBJECT_MAX {
            self.object_header(kind, size as u64)?;
            id.update(format!("{} {size}\0", kind.str()));
            let mut zlib = ZlibEncoder::new(&mut self.stream, Compression::fast());
            let mut failed = None;
            blob::pieces(from, oid, &mut |piece| {
                id.update(piece);
                if failed.is_none() {
                    failed = zlib.write_all(piece).err();
                }
            })?;
            if let Some(err) = failed {
                return Err(io_failure(err));
            }
            zlib.finish().map_err(io_failure)?;
        } else {
            let object = odb.read(oid)?;
            self.object_header(object.kind(), object.len() as u64)?;
            id.update(format!("{} {}\0", object.kind().str(), object.len()));
            id.update(object.data());
            deflate_whole(&mut self.zlib, object.data(), &mut self.deflated)?;
            self.stream.write_all(&self.deflated).map_err(io_failure)?;
        }
        if id.finalize().as_slice() != oid.as_bytes() {
            return Err(git2::Error::from_str(&format!(
                "object {oid} does not match its id"
            )));
        }
        self.entries.push(Entry {
            oid,
            offset,
            crc: self.stream.crc.sum(),
        });
        Ok(())
    }

    /// An entry's header: its type and inflated size, git's variable-length
    /// encoding (4 bits of size in the first byte, 7 in each next one).
    fn object_header(&mut self, kind: ObjectType, size: u64) -> Result<(), git2::Error> {
        let code: u8 = match kind {
            ObjectType::Commit => 1,
            ObjectType::Tree => 2,
            ObjectType::Blob => 3,
            ObjectType::Tag => 4,
            _ => return Err(git2::Error::from_str("an object of no known type")),
        };
        let mut header = Vec::with_capacity(10);
        let mut byte = (code << 4) | (size & 0x0f) as u8;
        let mut rest = size >> 4;
        while rest > 0 {
            header.push(byte | 0x80);
            byte = (rest & 0x7f) as u8;
            rest >>= 7;
        }
        header.push(byte);
        self.stream.write_all(&header).map_err(io_failure)
    }

    /// Ends the pack: sets its object count, appends its trailer (the SHA-1
    /// of everything before it), writes its index and moves both into
    /// `objects/pack`. Returns the pack's name (`pack-…`, after its
    /// checksum, as git names packs), or `None` when no object was copied
    /// (nothing is written then). The repository's object database sees the
    /// pack once refreshed.
    pub(super) fn finish(mut self) -> Result<Option<String>, git2::Error> {
        if self.entries.is_empty() {
            return Ok(None);
        }
        let count = u32::try_from(self.entries.len())
            .map_err(|_| git2::Error::from_str("too many objects for one pack"))?;
        self.stream.flush().map_err(io_failure)?;
        let file = self.stream.out.get_mut();
        file.seek(SeekFrom::Start(8)).map_err(io_failure)?;
        file.write_all(&count.to_be_bytes()).map_err(io_failure)?;
        // The trailer covers the count just set: hash the file as it is now.
        file.seek(SeekFrom::Start(0)).map_err(io_failure)?;
        let mut hash = Sha1::new();
        let mut buffer = vec![0u8; BUFFER];
        loop {
            let n = file.read(&mut buffer).map_err(io_failure)?;
            if n == 0 {
                break;
            }
            hash.update(&buffer[..n]);
        }
        let trailer: [u8; 20] = hash.finalize().into();
        file.seek(SeekFrom::End(0)).map_err(io_failure)?;
        file.write_all(&trailer).map_err(io_failure)?;
        file.sync_all().map_err(io_failure)?;

        let name = format!("pack-{}", hex::encode(trailer));
        self.entries.sort_unstable_by_key(|a| a.oid);
        if self
            .entries
            .windows(2)
            .any(|pair| pair[0].oid == pair[1].oid)
        {
            return Err(git2::Error::from_str("an object was copied twice"));
        }
        let index = self
            .dir
            .join(format!("tmp_idx_herald_{}", ulid::Ulid::generate()));
        let written = write_index(&index, &self.entries, &trailer);
        if let Err(err) = written {
            let _ = std::fs::remove_file(&index);
            return Err(io_failure(err));
        }
        let renamed = std::fs::rename(&self.temporary, self.dir.join(format!("{name}.pack")))
            .and_then(|()| std::fs::rename(&index, self.dir.join(format!("{name}.idx"))));
        if let Err(err) = renamed {
            let _ = std::fs::remove_file(&index);
            return Err(io_failure(err));
        }
        Ok(Some(name))
    }
}

/// Removes what an earlier writer killed mid-copy left: its mirror is
/// locked for writing now, so no other copy is under way.
fn sweep_stale(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("tmp_pack_herald_") || name.starts_with("tmp_idx_herald_") {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Writes git's pack index (version 2) of `entries`, sorted by id, for the
/// pack whose trailer is `pack_checksum`.
fn write_index(path: &Path, entries: &[Entry], pack_checksum: &[u8; 20]) -> std::io::Result<()> {
    struct Hashed<W: Write> {
        out: W,
        hash: Sha1,
    }
    impl<W: Write> Write for Hashed<W> {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            let n = self.out.write(bytes)?;
            self.hash.update(&bytes[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            self.out.flush()
        }
    }
    let mut out = Hashed {
        out: BufWriter::with_capacity(BUFFER, File::create_new(path)?),
        hash: Sha1::new(),
    };
    out.write_all(b"\xfftOc\0\0\0\x02")?;
    // Fan-out: how many ids start with a byte up to each value.
    let mut fanout = [0u32; 256];
    for entry in entries {
        fanout[usize::from(entry.oid.as_bytes()[0])] += 1;
    }
    let mut total = 0u32;
    for slot in &mut fanout {
        total += *slot;
        out.write_all(&total.to_be_bytes())?;
    }
    for entry in entries {
        out.write_all(entry.oid.as_bytes())?;
    }
    for entry in entries {
        out.write_all(&entry.crc.to_be_bytes())?;
    }
    // Offsets past 2 GiB go to a table of 8-byte offsets, which the 4-byte
    // one points to (its top bit set).
    let mut large = Vec::new();
    for entry in entries {
        let small = match u32::try_from(entry.offset) {
            Ok(offset) if offset < 0x8000_0000 => offset,
            _ => {
                let at = u32::try_from(large.len())
                    .map_err(|_| std::io::Error::other("too many large offsets"))?;
                large.push(entry.offset);
                0x8000_0000 | at
            }
        };
        out.write_all(&small.to_be_bytes())?;
    }
    for offset in large {
        out.write_all(&offset.to_be_bytes())?;
    }
    out.write_all(pack_checksum)?;
    let checksum = out.hash.clone().finalize();
    out.write_all(&checksum)?;
    let file = out.out.into_inner().map_err(|err| err.into_error())?;
    file.sync_all()
}

/// `data` deflated whole into `out` (cleared first) by `zlib`, reset
/// first: the same bytes as a new stream of the same level would make.
fn deflate_whole(zlib: &mut Compress, data: &[u8], out: &mut Vec<u8>) -> Result<(), git2::Error> {
    zlib.reset();
    out.clear();
    out.reserve(data.len() / 2 + 64);
    loop {
        let read = usize::try_from(zlib.total_in()).map_or(data.len(), |n| n.min(data.len()));
        if out.capacity() - out.len() < 64 {
            out.reserve(out.capacity().max(64));
        }
        let status = zlib
            .compress_vec(&data[read..], out, FlushCompress::Finish)
            .map_err(|_| git2::Error::from_str("an object could not be deflated"))?;
        if status == Status::StreamEnd {
            return Ok(());
        }
    }
}

fn io_failure(err: std::io::Error) -> git2::Error {
    git2::Error::new(
        git2::ErrorCode::GenericError,
        git2::ErrorClass::Odb,
        format!("writing a pack failed: {err}"),
    )
}

/// Hands `visit` the trees and blobs under `tree` (itself included) that
/// `wanted` asks for, each once across calls sharing `seen`. A tree that is
/// not wanted is skipped with everything under it. Submodules' commits are
/// not content.
pub(super) fn tree_objects(
    repo: &Repository,
    tree: Oid,
    wanted: &dyn Fn(Oid) -> bool,
    seen: &mut HashSet<Oid>,
    visit: &mut dyn FnMut(Oid) -> Result<(), git2::Error>,
) -> Result<(), git2::Error> {
    let mut trees = vec![tree];
    while let Some(tree) = trees.pop() {
        if !wanted(tree) || !seen.insert(tree) {
            continue;
        }
        visit(tree)?;
        for entry in repo.find_tree(tree)?.iter() {
            match entry.kind() {
                Some(ObjectType::Tree) => trees.push(entry.id()),
                Some(ObjectType::Blob) if wanted(entry.id()) && seen.insert(entry.id()) => {
                    visit(entry.id())?;
                }
                _ => {}
            }
        }
    }
    Ok(())
}

#[cfg(test)]
pub(super) mod tests {
    use super::super::fixtures::{commit, git, source_repository};
    use super::*;

    #[test]
    fn one_deflate_stream_reset_writes_what_a_new_one_writes() {
        let noise: Vec<u8> = (0..300_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let inputs: [&[u8]; 5] = [b"", b"tree 0\0", &[b'a'; 100_000], &noise, b"blob after"];
        let mut zlib = Compress::new(Compression::fast(), true);
        let mut out = Vec::new();
        for input in inputs {
            deflate_whole(&mut zlib, input, &mut out).expect("deflated");
            let mut fresh = Vec::new();
            deflate_whole(
                &mut Compress::new(Compression::fast(), true),
                input,
                &mut fresh,
            )
            .expect("deflated");
            assert_eq!(out, fresh, "{} bytes", input.len());
            let mut back = Vec::new();
            flate2::read::ZlibDecoder::new(&out[..])
                .read_to_end(&mut back)
                .expect("inflated");
            assert_eq!(back, input);
        }
    }

    /// Every pack of the repository at `git_dir`, checked by git itself:
    /// the index against the pack (ids, CRCs, offsets, both checksums).
    pub(crate) fn git_verifies_packs(git_dir: &Path) {
        let dir = git_dir.join("objects").join("pack");
        let mut indexes = 0;
        for entry in std::fs::read_dir(&dir).expect("pack dir").flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "idx") {
                git(git_dir, &["verify-pack", &path.to_string_lossy()]);
                indexes += 1;
            }
        }
        assert!(indexes > 0, "no pack in {}", dir.display());
    }

    #[test]
    fn a_written_pack_is_one_git_reads_and_verifies() {
        let (dir, source) = source_repository();
        std::fs::create_dir(source.join("deep")).expect("dir");
        std::fs::write(source.join("deep/small.txt"), "small\n").expect("write");
        // Larger than a whole read: copied in pieces.
        let large: Vec<u8> = (0..(3u32 << 20)).map(|i| (i % 251) as u8).collect();
        std::fs::write(source.join("large.bin"), &large).expect("write");
        let tip = commit(&source, "readme.md", "readme\n");
        let from = Repository::open(&source).expect("source");
        let odb = from.odb().expect("odb");
        let target = dir.path().join("target.git");
        let into = Repository::init_bare(&target).expect("target");

        let mut writer = PackWriter::start(into.path()).expect("started");
        let commit = from
            .find_commit(Oid::from_str(&tip).expect("oid"))
            .expect("commit");
        writer
            .copy(&from, &odb, commit.id())
            .expect("commit copied");
        let mut seen = HashSet::new();
        let mut copied = vec![commit.id()];
        tree_objects(&from, commit.tree_id(), &|_| true, &mut seen, &mut |oid| {
            copied.push(oid);
            writer.copy(&from, &odb, oid)
        })
        .expect("tree copied");
        let name = writer.finish().expect("finished").expect("a pack");

        assert!(target.join(format!("objects/pack/{name}.pack")).exists());
        git_verifies_packs(&target);
        let copy = Repository::open(&target).expect("reopened");
        let copy = copy.odb().expect("odb");
        for oid in &copied {
            let original = odb.read(*oid).expect("original");
            let object = copy.read(*oid).expect("copied object");
            assert_eq!(object.kind(), original.kind());
            assert_eq!(object.data(), original.data(), "{oid}");
        }
        // commit, root tree, deep/, and three files.
        assert_eq!(copied.len(), 6);
        git(&target, &["update-ref", "refs/heads/main", &tip]);
        git(&target, &["fsck", "--strict", "--no-dangling"]);
    }

    #[test]
    fn a_copy_cut_short_leaves_nothing_behind() {
        let (dir, source) = source_repository();
        let tip = commit(&source, "a.md", "a\n");
        let from = Repository::open(&source).expect("source");
        let odb = from.odb().expect("odb");
        let target = dir.path().join("target.git");
        let into = Repository::init_bare(&target).expect("target");
        let packs = target.join("objects").join("pack");

        let mut writer = PackWriter::start(into.path()).expect("started");
        writer
            .copy(&from, &odb, Oid::from_str(&tip).expect("oid"))
            .expect("copied");
        drop(writer);
        assert_eq!(std::fs::read_dir(&packs).expect("dir").count(), 0);

        // A writer killed mid-copy cannot clean up: the next one does.
        std::fs::write(
            packs.join("tmp_pack_herald_01J0000000000000000000000"),
            b"PACK",
        )
        .expect("write");
        std::fs::write(packs.join("tmp_idx_herald_01J0000000000000000000000"), b"").expect("write");
        let writer = PackWriter::start(into.path()).expect("started");
        assert_eq!(
            writer.finish().expect("finished"),
            None,
            "nothing was copied"
        );
        assert_eq!(std::fs::read_dir(&packs).expect("dir").count(), 0);
    }
}
