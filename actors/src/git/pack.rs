//! Writing objects into a mirror as one new pack, each object stored whole.
//!
//! Two operations copy objects without the history around them: a fetch
//! from a local repository ([`super::local`]) copies the objects of one
//! commit that the mirror lacks, and a compaction ([`super::Mirror::repack`])
//! rewrites the objects that the mirror's refs still need. Both know the
//! objects by id and write them through [`PackWriter`]:
//!
//! - objects are stored whole, never as deltas: no delta is ever searched
//!   for, so the cost is the objects' bytes once (read, deflate, index),
//!   never a search over history;
//! - a large blob goes through in pieces ([`super::blob::pieces`]), so its
//!   size, not its content, is what the copy holds in memory;
//! - libgit2's indexer reads the pack as it is written and checks it (every
//!   object's id, the trailer), then moves it into `objects/pack` with its
//!   index: a copy that fails leaves nothing behind.

use std::collections::HashSet;
use std::io::Write;

use flate2::Compression;
use flate2::write::ZlibEncoder;
use git2::{ObjectType, Odb, OdbPackwriter, Oid, Repository};
use sha1::{Digest, Sha1};

use super::blob;

/// Above this size a blob is copied in pieces rather than read whole.
const WHOLE_OBJECT_MAX: usize = 1 << 20;

/// How much of the pack is buffered before it reaches the indexer.
const BUFFER: usize = 256 * 1024;

/// The pack stream as the indexer receives it, with the running SHA-1 that
/// becomes its trailer.
struct Stream<'r> {
    out: std::io::BufWriter<OdbPackwriter<'r>>,
    hash: Sha1,
}

impl Write for Stream<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let n = self.out.write(bytes)?;
        self.hash.update(&bytes[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

/// One new pack in a repository, written object by object. The number of
/// objects is fixed up front (the pack's header carries it).
pub(super) struct PackWriter<'r> {
    stream: Stream<'r>,
    announced: u32,
    written: u32,
}

impl<'r> PackWriter<'r> {
    /// Starts a pack of `count` objects in `into`'s object database.
    pub(super) fn start(into: &'r Odb<'_>, count: u32) -> Result<Self, git2::Error> {
        let mut stream = Stream {
            out: std::io::BufWriter::with_capacity(BUFFER, into.packwriter()?),
            hash: Sha1::new(),
        };
        let mut header = Vec::with_capacity(12);
        header.extend_from_slice(b"PACK");
        header.extend_from_slice(&2u32.to_be_bytes());
        header.extend_from_slice(&count.to_be_bytes());
        stream.write_all(&header).map_err(io_failure)?;
        Ok(Self {
            stream,
            announced: count,
            written: 0,
        })
    }

    /// Copies object `oid` from `from`, whole.
    pub(super) fn copy(
        &mut self,
        from: &Repository,
        odb: &Odb<'_>,
        oid: Oid,
    ) -> Result<(), git2::Error> {
        let (size, kind) = odb.read_header(oid)?;
        if kind == ObjectType::Blob && size > WHOLE_OBJECT_MAX {
            self.object_header(kind, size as u64)?;
            let mut zlib = ZlibEncoder::new(&mut self.stream, Compression::fast());
            let mut failed = None;
            blob::pieces(from, oid, &mut |piece| {
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
            let mut zlib = ZlibEncoder::new(&mut self.stream, Compression::fast());
            zlib.write_all(object.data()).map_err(io_failure)?;
            zlib.finish().map_err(io_failure)?;
        }
        self.written += 1;
        Ok(())
    }

    /// An entry's header: its type and inflated size, git's variable-length
    /// encoding (4 bits of size in the first byte, 7 in each next one).
    fn object_header(&mut self, kind: ObjectType, size: u64) -> Result<(), git2::Error> {
        if self.written >= self.announced {
            return Err(git2::Error::from_str(
                "more objects than the pack announced",
            ));
        }
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

    /// Ends the pack with its trailer and lets the indexer move it, with its
    /// index, into the object database. Returns the pack's name (`pack-…`,
    /// after its checksum, as git names packs).
    pub(super) fn finish(self) -> Result<String, git2::Error> {
        let Self {
            mut stream,
            announced,
            written,
        } = self;
        if written != announced {
            return Err(git2::Error::from_str(
                "fewer objects than the pack announced",
            ));
        }
        let trailer = stream.hash.finalize();
        stream.out.write_all(&trailer).map_err(io_failure)?;
        let name = format!("pack-{}", hex::encode(trailer));
        let mut writer = stream
            .out
            .into_inner()
            .map_err(|err| io_failure(err.into_error()))?;
        writer.commit()?;
        Ok(name)
    }
}

fn io_failure(err: std::io::Error) -> git2::Error {
    git2::Error::new(
        git2::ErrorCode::GenericError,
        git2::ErrorClass::Odb,
        format!("writing a pack failed: {err}"),
    )
}

/// Appends to `out` the trees and blobs under `tree` (itself included) that
/// `wanted` asks for, each once across calls sharing `seen`. A tree that is
/// not wanted is skipped with everything under it. Submodules' commits are
/// not content.
pub(super) fn tree_objects(
    repo: &Repository,
    tree: Oid,
    wanted: &dyn Fn(Oid) -> bool,
    seen: &mut HashSet<Oid>,
    out: &mut Vec<Oid>,
) -> Result<(), git2::Error> {
    let mut trees = vec![tree];
    while let Some(tree) = trees.pop() {
        if !wanted(tree) || !seen.insert(tree) {
            continue;
        }
        out.push(tree);
        for entry in repo.find_tree(tree)?.iter() {
            match entry.kind() {
                Some(ObjectType::Tree) => trees.push(entry.id()),
                Some(ObjectType::Blob) if wanted(entry.id()) && seen.insert(entry.id()) => {
                    out.push(entry.id());
                }
                _ => {}
            }
        }
    }
    Ok(())
}
