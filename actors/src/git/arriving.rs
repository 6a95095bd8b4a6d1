//! Reading a fetch's pack as it arrives, so that a first sync's blobs are
//! described while the remote is still sending them.
//!
//! Over `git://` the server spends most of a fetch sending the pack, and
//! libgit2's indexer, which follows it, leaves most of a core idle. After
//! the fetch a scan inflated every blob of the tip a second time to hash it
//! (SHA-256, size, the binary rule): on a first sync, the largest piece of
//! work between the fetch and the first event. A [`Tap`] on the fetch's
//! socket hands the bytes libgit2 reads to one thread of [`Arriving`], which
//! takes the pack out of git's side band and reads each blob stored whole
//! with a [`BlobReader`] as it comes. The scan then asks the mirror only
//! for the blobs that arrived as deltas.
//!
//! What it reads is never trusted on its own:
//!
//! - an entry is known by its offset in the pack, and the offset's object id
//!   is taken from the index libgit2 wrote for that pack, which verified
//!   every object;
//! - the pack must end with the checksum of the bytes read: the checksum
//!   libgit2 names the pack by, so the bytes are those libgit2 indexed;
//! - anything unexpected (a malformed line, a corrupt entry, a pack that
//!   libgit2 completed with objects of its own, more than [`MAX_QUEUED`]
//!   bytes waiting) ends the reading with nothing known, and the scan
//!   describes every blob from the mirror as before.
//!
//! Only `git://` is tapped: it is the one transport whose bytes Herald's
//! socket sees as git's own lines (http has its framing, https its TLS).

use std::collections::HashMap;
use std::io::{self, BufRead, Read};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::thread::JoinHandle;

use flate2::{Decompress, FlushDecompress, Status};
use git2::{Oid, Repository};
use sha1::{Digest, Sha1};

use super::blob::{PIECE, entry_header, index_offsets};

/// What is made of each blob that arrives whole, fed its bytes in order.
pub trait BlobReader: Send + 'static {
    type Made: Send + 'static;
    fn new() -> Self;
    fn feed(&mut self, piece: &[u8]);
    fn finish(self) -> Self::Made;
}

/// Bytes read but not yet parsed beyond which the reading gives up (the
/// fetch never waits for it).
pub const MAX_QUEUED: usize = 32 * 1024 * 1024;

/// Blobs read at most (the rest are described from the mirror), so that
/// what a huge tree's fetch holds stays small.
pub const MAX_BLOBS: usize = 100_000;

/// Where a fetch's socket hands the bytes it reads. Cheap to clone.
#[derive(Clone)]
pub struct Tap {
    sender: Sender<Vec<u8>>,
    queued: Arc<AtomicUsize>,
    gave_up: Arc<AtomicBool>,
}

impl Tap {
    /// Queues a copy of `bytes` for the reading thread; past
    /// [`MAX_QUEUED`] waiting, stops queueing (the reading then ends short
    /// and knows nothing).
    pub(super) fn push(&self, bytes: &[u8]) {
        if bytes.is_empty() || self.gave_up.load(Ordering::Relaxed) {
            return;
        }
        if self.queued.fetch_add(bytes.len(), Ordering::Relaxed) + bytes.len() > MAX_QUEUED {
            self.gave_up.store(true, Ordering::Relaxed);
            return;
        }
        if self.sender.send(bytes.to_vec()).is_err() {
            // The reading ended already (it found something unexpected).
            self.gave_up.store(true, Ordering::Relaxed);
        }
    }
}

/// The pack a fetch reads, read on a thread of its own with `R`.
pub struct Arriving<R: BlobReader> {
    tap: Tap,
    thread: JoinHandle<Option<PackRead<R::Made>>>,
}

/// The blobs read from one pack: each by its offset, and the pack's
/// checksum.
struct PackRead<M> {
    checksum: [u8; 20],
    blobs: Vec<(u64, M)>,
}

impl<R: BlobReader> Arriving<R> {
    /// A reading for a fetch from `url`: `None` unless it is a `git://` one.
    pub fn for_remote(url: &str) -> Option<Self> {
        (super::remote::scheme_of(url) == "git").then(Self::start)
    }

    fn start() -> Self {
        let (sender, receiver) = channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let tap = Tap {
            sender,
            queued: queued.clone(),
            gave_up: Arc::new(AtomicBool::new(false)),
        };
        let thread = std::thread::Builder::new()
            .name("herald-arriving".to_owned())
            .spawn(move || read_pack::<R>(Chunks::new(receiver, queued)))
            .expect("a thread to read the arriving pack");
        Self { tap, thread }
    }

    /// What the fetch's socket hands its bytes to.
    pub fn tap(&self) -> &Tap {
        &self.tap
    }

    /// Waits for the reading to end (the fetch is over) and returns what was
    /// made of each blob, by object id as `repo`'s index of the pack names
    /// it: empty when the reading ended short, found the pack different, or
    /// the fetch brought no pack.
    pub fn finish(self, repo: &Repository) -> HashMap<Oid, R::Made> {
        let Self { tap, thread } = self;
        let gave_up = tap.gave_up.load(Ordering::Relaxed);
        drop(tap);
        let read = match thread.join() {
            Ok(Some(read)) if !gave_up => read,
            outcome => {
                tracing::debug!(
                    gave_up,
                    read = matches!(outcome, Ok(Some(_))),
                    "the fetched pack was not read as it arrived"
                );
                return HashMap::new();
            }
        };
        let index = repo
            .path()
            .join("objects/pack")
            .join(format!("pack-{}.idx", hex::encode(read.checksum)));
        let Ok(ids) = index_offsets(&index) else {
            // libgit2 completed the pack (a thin one) under another name.
            tracing::debug!("the pack read as it arrived was not kept as it came");
            return HashMap::new();
        };
        let arrived: HashMap<Oid, R::Made> = read
            .blobs
            .into_iter()
            .filter_map(|(offset, made)| Some((*ids.get(&offset)?, made)))
            .collect();
        tracing::debug!(blobs = arrived.len(), "blobs read as the pack arrived");
        arrived
    }
}

/// Blob bytes held at most while a pack is read, as the bases of the
/// deltas that follow them.
pub const MAX_HELD: usize = 64 * 1024 * 1024;

/// Blobs larger than this are read but not held.
const MAX_HELD_BLOB: u64 = 1024 * 1024;

/// Reads the pack out of a `git://` fetch's reply (`input`): each blob
/// through `R`, whether it arrives whole or as a delta against an earlier
/// blob still held ([`MAX_HELD`]); every other entry inflated to find its
/// end. `None` on anything unexpected.
fn read_pack<R: BlobReader>(input: Chunks) -> Option<PackRead<R::Made>> {
    let mut pack = Counted::new(SideBand::new(input));
    let mut header = [0u8; 12];
    pack.read_exact(&mut header).ok()?;
    if &header[..4] != b"PACK" || !matches!(header[4..8], [0, 0, 0, 2 | 3]) {
        return None;
    }
    let count = u32::from_be_bytes(header[8..12].try_into().ok()?);
    let mut blobs = Vec::new();
    let mut inflater = Inflater::new();
    // Blobs by offset, whole, for the deltas that name them as their base.
    let mut held: HashMap<u64, Vec<u8>> = HashMap::new();
    let mut held_bytes = 0usize;
    for _ in 0..count {
        let offset = pack.position;
        let (kind, size) = entry_header(&mut pack).ok()?;
        let wanted = blobs.len() < MAX_BLOBS;
        let holdable = size <= MAX_HELD_BLOB && held_bytes as u64 + size <= MAX_HELD as u64;
        let content = match kind {
            3 if wanted && holdable => Some(inflater.inflate_whole(&mut pack, size)?),
            3 if wanted => {
                let mut reader = R::new();
                inflater.inflate(&mut pack, size, &mut |piece| reader.feed(piece))?;
                blobs.push((offset, reader.finish()));
                None
            }
            6 => {
                let base = offset.checked_sub(delta_distance(&mut pack)?)?;
                match held.get(&base) {
                    Some(base) if wanted && size <= MAX_HELD_BLOB => {
                        let delta = inflater.inflate_whole(&mut pack, size)?;
                        Some(apply_delta(base, &delta)?)
                    }
                    _ => {
                        inflater.inflate(&mut pack, size, &mut |_| {})?;
                        None
                    }
                }
            }
            1..=7 => {
                if kind == 7 {
                    // A reference delta names its base by an id, which this
                    // reading does not compute: left to the mirror.
                    pack.read_exact(&mut [0u8; 20]).ok()?;
                }
                inflater.inflate(&mut pack, size, &mut |_| {})?;
                None
            }
            _ => return None,
        };
        if let Some(content) = content {
            let mut reader = R::new();
            reader.feed(&content);
            blobs.push((offset, reader.finish()));
            if content.len() as u64 <= MAX_HELD_BLOB && held_bytes + content.len() <= MAX_HELD {
                held_bytes += content.len();
                held.insert(offset, content);
            }
        }
    }
    drop(held);
    let checksum: [u8; 20] = pack.sha.clone().finalize().into();
    let mut trailer = [0u8; 20];
    pack.read_exact(&mut trailer).ok()?;
    (trailer == checksum).then_some(PackRead { checksum, blobs })
}

/// How far back an offset delta's base lies (git's encoding, where each
/// continuation adds one before shifting).
fn delta_distance(pack: &mut impl Read) -> Option<u64> {
    let mut byte = [0u8; 1];
    pack.read_exact(&mut byte).ok()?;
    let mut distance = u64::from(byte[0] & 0x7f);
    while byte[0] & 0x80 != 0 {
        pack.read_exact(&mut byte).ok()?;
        distance = distance.checked_add(1)?.checked_mul(128)? | u64::from(byte[0] & 0x7f);
    }
    Some(distance)
}

/// `base` changed by git's `delta` (the sizes, then copies from the base
/// and inserted bytes); `None` when the delta does not fit the base.
fn apply_delta(base: &[u8], delta: &[u8]) -> Option<Vec<u8>> {
    let mut at = 0usize;
    let mut size = || -> Option<usize> {
        let mut value = 0usize;
        let mut shift = 0u32;
        loop {
            let byte = *delta.get(at)?;
            at += 1;
            value |= usize::from(byte & 0x7f).checked_shl(shift)?;
            shift += 7;
            if byte & 0x80 == 0 {
                return Some(value);
            }
        }
    };
    let (source, target) = (size()?, size()?);
    if source != base.len() || target as u64 > MAX_HELD_BLOB {
        return None;
    }
    let mut out = Vec::with_capacity(target);
    while at < delta.len() {
        let op = delta[at];
        at += 1;
        if op & 0x80 != 0 {
            let mut field = |bits: u8, first: u32| -> Option<usize> {
                let mut value = 0usize;
                for i in 0..bits {
                    if op & (1 << (first + u32::from(i))) != 0 {
                        value |= usize::from(*delta.get(at)?) << (8 * i);
                        at += 1;
                    }
                }
                Some(value)
            };
            let from = field(4, 0)?;
            let length = match field(3, 4)? {
                0 => 0x10000,
                length => length,
            };
            out.extend_from_slice(base.get(from..from.checked_add(length)?)?);
        } else if op != 0 {
            let length = usize::from(op);
            out.extend_from_slice(delta.get(at..at + length)?);
            at += length;
        } else {
            return None;
        }
        if out.len() > target {
            return None;
        }
    }
    (out.len() == target).then_some(out)
}

/// One zlib stream at a time, through a bounded buffer.
struct Inflater {
    zlib: Decompress,
    out: Box<[u8]>,
}

impl Inflater {
    fn new() -> Self {
        Self {
            zlib: Decompress::new(true),
            out: vec![0u8; PIECE].into_boxed_slice(),
        }
    }

    /// Inflates the zlib stream at `input`'s position, which must give
    /// exactly `size` bytes (at most [`MAX_HELD_BLOB`]), whole.
    fn inflate_whole(&mut self, input: &mut impl BufRead, size: u64) -> Option<Vec<u8>> {
        let mut whole = Vec::with_capacity(usize::try_from(size.min(MAX_HELD_BLOB)).ok()?);
        self.inflate(input, size, &mut |piece| whole.extend_from_slice(piece))?;
        Some(whole)
    }

    /// Inflates the zlib stream at `input`'s position, which must give
    /// exactly `size` bytes, into `sink`, and leaves `input` just after it.
    fn inflate(
        &mut self,
        input: &mut impl BufRead,
        size: u64,
        sink: &mut dyn FnMut(&[u8]),
    ) -> Option<()> {
        self.zlib.reset(true);
        loop {
            let available = input.fill_buf().ok()?;
            if available.is_empty() {
                return None;
            }
            let (before_in, before_out) = (self.zlib.total_in(), self.zlib.total_out());
            let status = self
                .zlib
                .decompress(available, &mut self.out, FlushDecompress::None)
                .ok()?;
            let consumed = usize::try_from(self.zlib.total_in() - before_in).ok()?;
            let produced = usize::try_from(self.zlib.total_out() - before_out).ok()?;
            input.consume(consumed);
            if self.zlib.total_out() > size {
                return None;
            }
            sink(&self.out[..produced]);
            match status {
                Status::StreamEnd => break,
                Status::Ok | Status::BufError if consumed == 0 && produced == 0 => return None,
                Status::Ok | Status::BufError => {}
            }
        }
        (self.zlib.total_out() == size).then_some(())
    }
}

/// The chunks a [`Tap`] queued, read in order; the end once the tap is
/// dropped.
struct Chunks {
    receiver: Receiver<Vec<u8>>,
    queued: Arc<AtomicUsize>,
    chunk: Vec<u8>,
    at: usize,
}

impl Chunks {
    fn new(receiver: Receiver<Vec<u8>>, queued: Arc<AtomicUsize>) -> Self {
        Self {
            receiver,
            queued,
            chunk: Vec::new(),
            at: 0,
        }
    }
}

impl Read for Chunks {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.at == self.chunk.len() {
            let Ok(chunk) = self.receiver.recv() else {
                return Ok(0);
            };
            self.queued.fetch_sub(chunk.len(), Ordering::Relaxed);
            self.chunk = chunk;
            self.at = 0;
        }
        let n = buf.len().min(self.chunk.len() - self.at);
        buf[..n].copy_from_slice(&self.chunk[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// The pack out of git's reply: the payload of every pkt-line on band 1 of
/// the side band. Other lines (refs, `shallow`, `NAK`, progress on band 2)
/// are skipped; an error on band 3 or a malformed length ends it.
struct SideBand<R> {
    inner: R,
    /// Pack bytes left in the current line.
    left: usize,
}

impl<R: Read> SideBand<R> {
    fn new(inner: R) -> Self {
        Self { inner, left: 0 }
    }

    fn invalid(what: &str) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, what.to_owned())
    }

    /// Moves to the next line with pack bytes; `false` at the end.
    fn next_line(&mut self) -> io::Result<bool> {
        loop {
            let mut length = [0u8; 4];
            match self.inner.read_exact(&mut length) {
                Ok(()) => {}
                Err(err) if err.kind() == io::ErrorKind::UnexpectedEof => return Ok(false),
                Err(err) => return Err(err),
            }
            let length = std::str::from_utf8(&length)
                .ok()
                .and_then(|hex| usize::from_str_radix(hex, 16).ok())
                .ok_or_else(|| Self::invalid("a malformed line length"))?;
            // 0000 flush, 0001 delimiter, 0002 end of response; 0004 empty.
            if length <= 4 {
                continue;
            }
            if length > 65520 {
                return Err(Self::invalid("a line longer than git allows"));
            }
            let mut band = [0u8; 1];
            self.inner.read_exact(&mut band)?;
            let payload = length - 5;
            match band[0] {
                1 => {
                    self.left = payload;
                    if payload > 0 {
                        return Ok(true);
                    }
                }
                3 => return Err(Self::invalid("the remote reported an error")),
                _ => {
                    io::copy(&mut (&mut self.inner).take(payload as u64), &mut io::sink())?;
                }
            }
        }
    }
}

impl<R: Read> Read for SideBand<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.left == 0 && !self.next_line()? {
            return Ok(0);
        }
        let wanted = buf.len().min(self.left);
        let n = self.inner.read(&mut buf[..wanted])?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        self.left -= n;
        Ok(n)
    }
}

/// A buffered reader that counts what it consumed and hashes it (the pack's
/// checksum covers every byte before it).
struct Counted<R> {
    inner: R,
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    position: u64,
    sha: Sha1,
}

impl<R: Read> Counted<R> {
    fn new(inner: R) -> Self {
        Self {
            inner,
            buf: vec![0u8; PIECE].into_boxed_slice(),
            start: 0,
            end: 0,
            position: 0,
            sha: Sha1::new(),
        }
    }
}

impl<R: Read> BufRead for Counted<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        if self.start == self.end {
            self.end = self.inner.read(&mut self.buf)?;
            self.start = 0;
        }
        Ok(&self.buf[self.start..self.end])
    }

    fn consume(&mut self, amount: usize) {
        let amount = amount.min(self.end - self.start);
        self.sha.update(&self.buf[self.start..self.start + amount]);
        self.start += amount;
        self.position += amount as u64;
    }
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let available = self.fill_buf()?;
        let n = buf.len().min(available.len());
        buf[..n].copy_from_slice(&available[..n]);
        self.consume(n);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::git::Mirror;
    use crate::git::fixtures::{git, source_repository};
    use crate::git::mirror::tests::Daemon;
    use crate::git::remote::tests::spec;

    /// A blob's bytes, whole.
    struct Bytes(Vec<u8>);

    impl BlobReader for Bytes {
        type Made = Vec<u8>;
        fn new() -> Self {
            Self(Vec::new())
        }
        fn feed(&mut self, piece: &[u8]) {
            self.0.extend_from_slice(piece);
        }
        fn finish(self) -> Vec<u8> {
            self.0
        }
    }

    /// Bytes no delta can be made of (a simple generator, seeded).
    fn noise(seed: u64, len: usize) -> Vec<u8> {
        let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect()
    }

    /// A repository of files that git stores whole (each its own noise,
    /// one empty, one of 300 KB) and pairs of near copies, which git sends
    /// one as a delta of the other.
    fn files() -> (tempfile::TempDir, std::path::PathBuf) {
        let (dir, source) = source_repository();
        let mut unique = vec![Vec::new(), noise(1, 300 * 1024)];
        unique.extend((2..40).map(|i| noise(i, 100 + i as usize * 37)));
        for (i, bytes) in unique.iter().enumerate() {
            std::fs::write(source.join(format!("unique-{i}")), bytes).expect("write");
        }
        for i in 0..5 {
            let text: String = (0..400)
                .map(|line| format!("line {line} of pair {i}\n"))
                .collect();
            std::fs::write(source.join(format!("pair-{i}-a.txt")), &text).expect("write");
            std::fs::write(
                source.join(format!("pair-{i}-b.txt")),
                format!("{text}one more\n"),
            )
            .expect("write");
        }
        git(&source, &["add", "-A"]);
        git(&source, &["commit", "-q", "--no-gpg-sign", "-m", "files"]);
        (dir, source)
    }

    /// Every blob of the mirror's `main`, by id.
    fn tip_blobs(mirror: &Mirror) -> HashMap<Oid, Vec<u8>> {
        let repo = mirror.repo();
        let tree = repo
            .find_commit(mirror.local_head("main").expect("fetched"))
            .expect("commit")
            .tree()
            .expect("tree");
        tree.iter()
            .map(|entry| {
                let blob = repo.find_blob(entry.id()).expect("a blob");
                (entry.id(), blob.content().to_vec())
            })
            .collect()
    }

    /// How many objects of the mirror's packs are stored as deltas.
    fn deltas_in(mirror: &Mirror) -> usize {
        let packs = mirror.repo().path().join("objects/pack");
        std::fs::read_dir(&packs)
            .expect("packs")
            .map(|entry| entry.expect("an entry").path())
            .filter(|path| path.extension().is_some_and(|e| e == "idx"))
            .map(|index| {
                let listing = git(&packs, &["verify-pack", "-v", &index.to_string_lossy()]);
                // `id type size packed offset depth base` for a delta.
                listing
                    .lines()
                    .filter(|line| line.split_whitespace().count() == 7)
                    .count()
            })
            .sum()
    }

    #[test]
    fn a_fetch_over_git_reads_every_blob_as_it_arrives() {
        let (dir, _source) = files();
        let daemon = Daemon::serve(dir.path());
        let url = format!("git://127.0.0.1:{}/source", daemon.port());
        let mirror = Mirror::open(&dir.path().join("mirror.git")).expect("mirror");
        let arriving = Arriving::<Bytes>::for_remote(&url).expect("git:// is tapped");

        mirror
            .update(&spec(url.clone(), true), None, Some(arriving.tap()))
            .expect("fetched");
        let arrived = arriving.finish(mirror.repo());

        // Every blob, the near copies that arrived as deltas against their
        // pair included, read as the mirror holds it.
        assert!(deltas_in(&mirror) > 0, "the remote sent no delta");
        assert_eq!(arrived.len(), tip_blobs(&mirror).len());
        assert_eq!(arrived, tip_blobs(&mirror));

        // The head has not moved: nothing is fetched, nothing is read.
        let again = Arriving::<Bytes>::for_remote(&url).expect("tapped");
        mirror
            .update(&spec(url, true), None, Some(again.tap()))
            .expect("asked");
        assert!(again.finish(mirror.repo()).is_empty());
    }

    #[test]
    fn only_git_remotes_are_tapped() {
        for url in [
            "file:///tmp/r",
            "http://127.0.0.1/r.git",
            "https://example.com/r.git",
        ] {
            assert!(Arriving::<Bytes>::for_remote(url).is_none(), "{url}");
        }
    }

    /// `pack` as a `git://` reply: refs, `shallow` and `NAK` lines, the
    /// pack on band 1 in lines of `line` bytes, progress on band 2.
    fn reply(pack: &[u8], line: usize) -> Vec<u8> {
        let mut out = Vec::new();
        let mut pkt = |payload: &[u8]| {
            out.extend_from_slice(format!("{:04x}", payload.len() + 4).as_bytes());
            out.extend_from_slice(payload);
        };
        pkt(b"0123456789012345678901234567890123456789 refs/heads/main\0side-band-64k\n");
        pkt(b"shallow 0123456789012345678901234567890123456789\n");
        pkt(b"NAK\n");
        for (i, piece) in pack.chunks(line).enumerate() {
            pkt(&[&[1u8][..], piece].concat());
            if i % 7 == 0 {
                pkt(b"\x02Receiving objects\r");
            }
        }
        out.extend_from_slice(b"0000");
        out
    }

    /// `bytes` handed to a reading in pieces of `every` bytes, as a socket
    /// would, and what it read of `mirror`'s pack.
    fn read(bytes: &[u8], every: usize, mirror: &Mirror) -> HashMap<Oid, Vec<u8>> {
        let arriving = Arriving::<Bytes>::start();
        for piece in bytes.chunks(every) {
            arriving.tap().push(piece);
        }
        arriving.finish(mirror.repo())
    }

    #[test]
    fn a_reply_is_read_only_when_it_is_the_pack_libgit2_indexed() {
        let (dir, _source) = files();
        let daemon = Daemon::serve(dir.path());
        let url = format!("git://127.0.0.1:{}/source", daemon.port());
        let mirror = Mirror::open(&dir.path().join("mirror.git")).expect("mirror");
        mirror
            .update(&spec(url, true), None, None)
            .expect("fetched");
        let pack_path = std::fs::read_dir(mirror.repo().path().join("objects/pack"))
            .expect("packs")
            .map(|entry| entry.expect("an entry").path())
            .find(|path| path.extension().is_some_and(|e| e == "pack"))
            .expect("the fetched pack");
        let pack = std::fs::read(pack_path).expect("read");
        let tip = tip_blobs(&mirror);

        // However the socket cuts the reply, every blob read is the mirror's.
        let whole = read(&reply(&pack, 8192), 65536, &mirror);
        assert!(!whole.is_empty());
        for (id, bytes) in &whole {
            assert_eq!(Some(bytes), tip.get(id));
        }
        assert_eq!(
            read(&reply(&pack, 1000), 1, &mirror),
            whole,
            "a byte at a time"
        );

        // One byte changed in an entry, the pack cut short, an error from the
        // remote, a malformed line: nothing is known.
        let mut altered = pack.clone();
        let middle = altered.len() / 2;
        altered[middle] ^= 0x40;
        assert!(
            read(&reply(&altered, 8192), 4096, &mirror).is_empty(),
            "altered"
        );
        let short = reply(&pack[..pack.len() - 30], 8192);
        assert!(read(&short, 4096, &mirror).is_empty(), "cut short");
        let mut failed = reply(&pack, 8192);
        failed.splice(0..0, b"0015\x03access denied\n0000".iter().copied());
        assert!(
            read(&failed, 4096, &mirror).is_empty(),
            "an error on band 3"
        );
        let mut malformed = reply(&pack, 8192);
        malformed.splice(0..0, b"zz12".iter().copied());
        assert!(
            read(&malformed, 4096, &mirror).is_empty(),
            "a malformed length"
        );
        // A pack the mirror has no index for (libgit2 completed a thin one
        // under another name) is not read either.
        let other = tempfile::tempdir().expect("dir");
        let elsewhere = Mirror::open(&other.path().join("mirror.git")).expect("mirror");
        assert!(
            read(&reply(&pack, 8192), 4096, &elsewhere).is_empty(),
            "no index"
        );
    }

    /// git's delta of `target` against a base of `source` bytes: `ops`
    /// are (offset, length) copies or inserted bytes.
    fn delta(source: usize, target: usize, ops: &[Result<(usize, usize), &[u8]>]) -> Vec<u8> {
        let mut out = Vec::new();
        for mut n in [source, target] {
            loop {
                let byte = (n & 0x7f) as u8;
                n >>= 7;
                if n == 0 {
                    out.push(byte);
                    break;
                }
                out.push(byte | 0x80);
            }
        }
        for op in ops {
            match op {
                Ok((offset, length)) => {
                    let mut code = 0x80u8;
                    let mut args = Vec::new();
                    for i in 0..4 {
                        let byte = (offset >> (8 * i)) as u8;
                        if byte != 0 {
                            code |= 1 << i;
                            args.push(byte);
                        }
                    }
                    for i in 0..3 {
                        let byte = (length >> (8 * i)) as u8;
                        if byte != 0 {
                            code |= 1 << (4 + i);
                            args.push(byte);
                        }
                    }
                    out.push(code);
                    out.extend(args);
                }
                Err(bytes) => {
                    out.push(bytes.len() as u8);
                    out.extend_from_slice(bytes);
                }
            }
        }
        out
    }

    #[test]
    fn a_delta_is_applied_as_git_applies_it_and_refused_when_it_does_not_fit() {
        let base: Vec<u8> = (0..70_000u32).map(|i| (i % 251) as u8).collect();
        let applied = apply_delta(
            &base,
            &delta(
                base.len(),
                10 + 5 + 3 + 0x10000,
                &[
                    Ok((300, 10)),
                    Err(b"hello"),
                    Ok((69_997, 3)),
                    // A copy of length 0 stands for 0x10000 bytes.
                    Ok((1, 0)),
                ],
            ),
        );
        let mut expected = base[300..310].to_vec();
        expected.extend_from_slice(b"hello");
        expected.extend_from_slice(&base[69_997..70_000]);
        expected.extend_from_slice(&base[1..1 + 0x10000]);
        assert_eq!(applied, Some(expected));

        let wrong_base = delta(base.len() - 1, 5, &[Err(b"hello")]);
        assert_eq!(
            apply_delta(&base, &wrong_base),
            None,
            "another base's delta"
        );
        let past_the_end = delta(base.len(), 10, &[Ok((69_995, 10))]);
        assert_eq!(
            apply_delta(&base, &past_the_end),
            None,
            "a copy past the base"
        );
        let too_long = delta(base.len(), 4, &[Err(b"hello")]);
        assert_eq!(apply_delta(&base, &too_long), None, "longer than it says");
        let too_short = delta(base.len(), 6, &[Err(b"hello")]);
        assert_eq!(apply_delta(&base, &too_short), None, "shorter than it says");
        let mut reserved = delta(base.len(), 5, &[Err(b"hello")]);
        reserved.push(0);
        assert_eq!(apply_delta(&base, &reserved), None, "the reserved opcode");
        let cut = delta(base.len(), 5, &[Err(b"hello")]);
        assert_eq!(apply_delta(&base, &cut[..cut.len() - 2]), None, "cut short");
    }
}
