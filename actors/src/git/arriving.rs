//! Reading a fetch's pack as it arrives, so that a first sync's blobs are
//! described while the remote is still sending them.
//!
//! Over `git://` the server spends most of a fetch sending the pack, and
//! libgit2's indexer, which follows it, leaves most of a core idle. After
//! the fetch a scan inflated every blob of the tip a second time to hash it
//! (SHA-256, size, the binary rule): on a first sync, the largest piece of
//! work between the fetch and the first event. A [`Tap`] on the fetch's
//! socket hands the bytes libgit2 reads to one thread of [`Arriving`], which
//! takes the pack out of git's side band and reads each blob with a
//! [`BlobReader`] as it comes: stored whole, or as an offset delta against
//! a blob it still holds. The scan then asks the mirror only for what it
//! did not reach.
//!
//! The reading costs the fetch nothing and is never trusted:
//!
//! - it runs at idle priority (`SCHED_IDLE`): it takes only the time the
//!   remote's transfer and libgit2's indexer leave, never theirs, and
//!   shares no lock with them (it polls for bytes, hands its blobs over a
//!   channel nobody waits on). When the fetch is over the scan takes what
//!   it has read, without waiting for it, and describes the rest from the
//!   mirror on every core; the reading stops at its next entry;
//! - each blob is known by the object id of the bytes it read (git's SHA-1
//!   of them), so a description is of those exact bytes whatever the reply
//!   held: a misread reply can only leave blobs to the mirror;
//! - anything unexpected (a malformed line, a corrupt entry, more than
//!   [`MAX_QUEUED`] bytes waiting) ends the reading with what it read so
//!   far.
//!
//! Only `git://` is tapped: it is the one transport whose bytes Herald's
//! socket sees as git's own lines (http has its framing, https its TLS).

use std::collections::{HashMap, VecDeque};
use std::io::{self, BufRead, Read};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender, TryRecvError, channel};
use std::thread::{JoinHandle, Thread};
use std::time::Duration;

use flate2::{Decompress, FlushDecompress, Status};
use git2::Oid;
use sha1::{Digest, Sha1};

use super::blob::{PIECE, entry_header};

/// What is made of each blob read, fed its bytes in order.
pub trait BlobReader: Send + 'static {
    type Made: Send + 'static;
    fn new() -> Self;
    fn feed(&mut self, piece: &[u8]);
    fn finish(self) -> Self::Made;
}

/// Bytes queued but not yet read beyond which the tap stops queueing (the
/// fetch never waits for the reading).
pub const MAX_QUEUED: usize = 8 * 1024 * 1024;

/// Blobs read at most (the rest are described from the mirror), so that
/// what a huge tree's fetch holds stays small.
pub const MAX_BLOBS: usize = 100_000;

/// Where a fetch's socket hands the bytes it reads. Cheap to clone.
#[derive(Clone)]
pub struct Tap {
    sender: Sender<Vec<u8>>,
    /// The reading thread, woken when bytes are queued.
    reader: Thread,
    queued: Arc<AtomicUsize>,
    full: Arc<AtomicBool>,
}

impl Tap {
    /// Queues a copy of `bytes` for the reading thread; past
    /// [`MAX_QUEUED`] waiting, stops queueing (the reading then ends with
    /// what it read).
    pub(super) fn push(&self, bytes: &[u8]) {
        if bytes.is_empty() || self.full.load(Ordering::Relaxed) {
            return;
        }
        if self.queued.fetch_add(bytes.len(), Ordering::Relaxed) + bytes.len() > MAX_QUEUED
            || self.sender.send(bytes.to_vec()).is_err()
        {
            // Too far behind, or the reading ended already.
            self.full.store(true, Ordering::Relaxed);
            return;
        }
        self.reader.unpark();
    }
}

/// The pack a fetch reads, read on a thread of its own with `R`.
pub struct Arriving<R: BlobReader> {
    tap: Tap,
    /// Set when the fetch is over: the reading stops at the next entry.
    stop: Arc<AtomicBool>,
    /// Each blob read, by id, as the reading makes it.
    read: Receiver<(Oid, R::Made)>,
    thread: JoinHandle<()>,
}

impl<R: BlobReader> Arriving<R> {
    /// A reading for a fetch from `url`: `None` unless it is a `git://` one.
    pub fn for_remote(url: &str) -> Option<Self> {
        (super::remote::scheme_of(url) == "git").then(Self::start)
    }

    fn start() -> Self {
        let (sender, receiver) = channel();
        let (made, read) = channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let chunks = Chunks::new(receiver, queued.clone(), stop.clone());
        let stopped = stop.clone();
        let thread = std::thread::Builder::new()
            .name("herald-arriving".to_owned())
            .spawn(move || {
                idle_priority();
                read_pack::<R>(chunks, &stopped, &mut |id, blob| {
                    // The scan may have gone with what it took.
                    made.send((id, blob)).is_ok()
                });
            })
            .expect("a thread to read the arriving pack");
        let tap = Tap {
            sender,
            reader: thread.thread().clone(),
            queued,
            full: Arc::new(AtomicBool::new(false)),
        };
        Self {
            tap,
            stop,
            read,
            thread,
        }
    }

    /// What the fetch's socket hands its bytes to.
    pub fn tap(&self) -> &Tap {
        &self.tap
    }

    /// Once the fetch is over: what the reading made of each blob it read
    /// so far, by object id, taken without waiting for it; the reading
    /// stops at its next entry.
    pub fn finish(self) -> HashMap<Oid, R::Made> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.thread().unpark();
        let arrived: HashMap<Oid, R::Made> = self.read.try_iter().collect();
        tracing::debug!(blobs = arrived.len(), "blobs read as the pack arrived");
        arrived
    }

    /// What the reading made once it read everything queued (tests).
    #[cfg(test)]
    fn read_all(self) -> HashMap<Oid, R::Made> {
        drop(self.tap);
        let _ = self.thread.join();
        self.read.try_iter().collect()
    }
}

/// Puts the calling thread under `SCHED_IDLE`: it runs only on a core
/// nothing else wants. Best effort: a system that refuses leaves it as it
/// was.
#[allow(unsafe_code)]
fn idle_priority() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: 0 names the calling thread; `param` is a valid sched_param.
    let _ = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
}

/// Blob bytes held at most while a pack is read, as the bases of the
/// deltas that follow them: the latest blobs read (git writes a delta's
/// base shortly before it, as a rule).
pub const MAX_HELD: usize = 16 * 1024 * 1024;

/// Blobs larger than this are read but not held.
const MAX_HELD_BLOB: u64 = 1024 * 1024;

/// Reads the pack out of a `git://` fetch's reply (`input`): each blob
/// through `R`, handed to `arrived` with the id of its bytes, whether it
/// arrives whole or as a delta against a blob still [`Held`]; every other
/// entry inflated to find its end. Ends at the pack's end, when `stop` is
/// set or `arrived` answers `false`, or at anything unexpected.
fn read_pack<R: BlobReader>(
    input: Chunks,
    stop: &AtomicBool,
    arrived: &mut dyn FnMut(Oid, R::Made) -> bool,
) -> Option<()> {
    let mut pack = Counted::new(SideBand::new(input));
    let mut header = [0u8; 12];
    pack.read_exact(&mut header).ok()?;
    if &header[..4] != b"PACK" || !matches!(header[4..8], [0, 0, 0, 2 | 3]) {
        return None;
    }
    let count = u32::from_be_bytes(header[8..12].try_into().ok()?);
    let mut inflater = Inflater::new();
    let mut held = Held::default();
    let mut blobs = 0usize;
    for _ in 0..count {
        if stop.load(Ordering::Relaxed) {
            return None;
        }
        let offset = pack.position;
        let (kind, size) = entry_header(&mut pack).ok()?;
        let wanted = blobs < MAX_BLOBS;
        let holdable = size <= MAX_HELD_BLOB;
        let content = match kind {
            3 if wanted && holdable => Some(inflater.inflate_whole(&mut pack, size)?),
            3 if wanted => {
                let mut reader = R::new();
                let mut id = BlobId::new(size);
                inflater.inflate(&mut pack, size, &mut |piece| {
                    reader.feed(piece);
                    id.feed(piece);
                })?;
                blobs += 1;
                if !arrived(id.finish(), reader.finish()) {
                    return None;
                }
                None
            }
            6 => {
                let base = offset.checked_sub(delta_distance(&mut pack)?)?;
                match held.get(base) {
                    Some(base) if wanted && size <= MAX_HELD_BLOB => {
                        let delta = inflater.inflate_whole(&mut pack, size)?;
                        // One that does not fit (or makes a blob too large
                        // to hold) is left to the mirror.
                        apply_delta(base, &delta)
                    }
                    _ => {
                        inflater.inflate(&mut pack, size, &mut |_| {})?;
                        None
                    }
                }
            }
            1..=7 => {
                if kind == 7 {
                    // A reference delta names its base by an id: left to the
                    // mirror.
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
            let mut id = BlobId::new(content.len() as u64);
            id.feed(&content);
            blobs += 1;
            if !arrived(id.finish(), reader.finish()) {
                return None;
            }
            held.hold(offset, content);
        }
    }
    Some(())
}

/// The latest blobs read, whole, by offset: the bases that the deltas
/// after them may name. At most [`MAX_HELD`] bytes; the oldest go first.
#[derive(Default)]
struct Held {
    blobs: HashMap<u64, Vec<u8>>,
    order: VecDeque<u64>,
    bytes: usize,
}

impl Held {
    fn get(&self, offset: u64) -> Option<&[u8]> {
        self.blobs.get(&offset).map(Vec::as_slice)
    }

    fn hold(&mut self, offset: u64, content: Vec<u8>) {
        if content.len() as u64 > MAX_HELD_BLOB {
            return;
        }
        while self.bytes + content.len() > MAX_HELD {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            if let Some(gone) = self.blobs.remove(&oldest) {
                self.bytes -= gone.len();
            }
        }
        self.bytes += content.len();
        self.order.push_back(offset);
        self.blobs.insert(offset, content);
    }
}

/// A blob's object id (git's SHA-1 of `blob {size}\0` and its bytes), fed
/// its bytes piece by piece.
struct BlobId(Sha1);

impl BlobId {
    fn new(size: u64) -> Self {
        let mut sha = Sha1::new();
        sha.update(format!("blob {size}\0").as_bytes());
        Self(sha)
    }

    fn feed(&mut self, piece: &[u8]) {
        self.0.update(piece);
    }

    fn finish(self) -> Oid {
        Oid::from_bytes(&self.0.finalize()).expect("a SHA-1 is an object id")
    }
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
/// dropped or the reading is stopped.
struct Chunks {
    receiver: Receiver<Vec<u8>>,
    queued: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    chunk: Vec<u8>,
    at: usize,
}

/// The longest a reading waiting for bytes sleeps before it looks again
/// (the tap wakes it when it queues some).
const POLL: Duration = Duration::from_millis(50);

impl Chunks {
    fn new(receiver: Receiver<Vec<u8>>, queued: Arc<AtomicUsize>, stop: Arc<AtomicBool>) -> Self {
        Self {
            receiver,
            queued,
            stop,
            chunk: Vec::new(),
            at: 0,
        }
    }
}

impl Read for Chunks {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.at == self.chunk.len() {
            // Never blocked in the channel: a sender would then take its
            // lock to wake this idle-priority thread.
            let chunk = match self.receiver.try_recv() {
                Ok(chunk) => chunk,
                Err(TryRecvError::Disconnected) => return Ok(0),
                Err(TryRecvError::Empty) if self.stop.load(Ordering::Relaxed) => return Ok(0),
                Err(TryRecvError::Empty) => {
                    std::thread::park_timeout(POLL);
                    continue;
                }
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

/// A buffered reader that counts what it consumed: an entry's offset in
/// the pack.
struct Counted<R> {
    inner: R,
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    position: u64,
}

impl<R: Read> Counted<R> {
    fn new(inner: R) -> Self {
        Self {
            inner,
            buf: vec![0u8; PIECE].into_boxed_slice(),
            start: 0,
            end: 0,
            position: 0,
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

    /// [`files`] served by `git daemon`: its URL and an empty mirror.
    struct Served {
        url: String,
        mirror: Mirror,
        _daemon: Daemon,
        _dir: tempfile::TempDir,
    }

    fn served() -> Served {
        let (dir, _source) = files();
        let daemon = Daemon::serve(dir.path());
        Served {
            url: format!("git://127.0.0.1:{}/source", daemon.port()),
            mirror: Mirror::open(&dir.path().join("mirror.git")).expect("mirror"),
            _daemon: daemon,
            _dir: dir,
        }
    }

    #[test]
    fn a_fetch_over_git_reads_every_blob_as_it_arrives() {
        let served = served();
        let (url, mirror) = (served.url.clone(), &served.mirror);
        let arriving = Arriving::<Bytes>::for_remote(&url).expect("git:// is tapped");

        mirror
            .update(&spec(url.clone(), true), None, Some(arriving.tap()))
            .expect("fetched");
        let arrived = arriving.read_all();

        // Every blob, the near copies that arrived as deltas against their
        // pair included, read as the mirror holds it.
        assert!(deltas_in(mirror) > 0, "the remote sent no delta");
        assert_eq!(arrived.len(), tip_blobs(mirror).len());
        assert_eq!(arrived, tip_blobs(mirror));

        // The head has not moved: nothing is fetched, nothing is read.
        let again = Arriving::<Bytes>::for_remote(&url).expect("tapped");
        mirror
            .update(&spec(url, true), None, Some(again.tap()))
            .expect("asked");
        assert!(again.finish().is_empty());
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
    /// would, and what it read.
    fn read(bytes: &[u8], every: usize) -> HashMap<Oid, Vec<u8>> {
        let arriving = Arriving::<Bytes>::start();
        for piece in bytes.chunks(every) {
            arriving.tap().push(piece);
        }
        arriving.read_all()
    }

    /// Asserts that every blob of `read` is `tip`'s blob of that id, and
    /// returns how many there are.
    fn all_as_in(read: &HashMap<Oid, Vec<u8>>, tip: &HashMap<Oid, Vec<u8>>) -> usize {
        for (id, bytes) in read {
            assert_eq!(Some(bytes), tip.get(id), "{id} was read as other bytes");
        }
        read.len()
    }

    #[test]
    fn a_reply_misread_or_cut_leaves_blobs_to_the_mirror_never_misdescribes_one() {
        let served = served();
        let (url, mirror) = (served.url.clone(), &served.mirror);
        mirror
            .update(&spec(url, true), None, None)
            .expect("fetched");
        let pack_path = std::fs::read_dir(mirror.repo().path().join("objects/pack"))
            .expect("packs")
            .map(|entry| entry.expect("an entry").path())
            .find(|path| path.extension().is_some_and(|e| e == "pack"))
            .expect("the fetched pack");
        let pack = std::fs::read(pack_path).expect("read");
        let tip = tip_blobs(mirror);

        // However the socket cuts the reply, every blob is read.
        let whole = read(&reply(&pack, 8192), 65536);
        assert_eq!(whole, tip);
        assert_eq!(read(&reply(&pack, 1000), 1), whole, "a byte at a time");

        // A byte changed in the middle, the pack cut short: what was read
        // before is known, nothing after.
        let mut altered = pack.clone();
        let middle = altered.len() / 2;
        altered[middle] ^= 0x40;
        let before = all_as_in(&read(&reply(&altered, 8192), 4096), &tip);
        assert!(0 < before && before < tip.len(), "altered: {before}");
        let short = reply(&pack[..pack.len() * 2 / 3], 8192);
        let before = all_as_in(&read(&short, 4096), &tip);
        assert!(0 < before && before < tip.len(), "cut short: {before}");

        // An error from the remote, a malformed line: nothing.
        let mut failed = reply(&pack, 8192);
        failed.splice(0..0, b"0015\x03access denied\n0000".iter().copied());
        assert!(read(&failed, 4096).is_empty(), "an error on band 3");
        let mut malformed = reply(&pack, 8192);
        malformed.splice(0..0, b"zz12".iter().copied());
        assert!(read(&malformed, 4096).is_empty(), "a malformed length");

        // Stopped as the fetch ends: whatever was read is the mirror's.
        let arriving = Arriving::<Bytes>::start();
        arriving.tap().push(&reply(&pack, 8192));
        all_as_in(&arriving.finish(), &tip);
    }

    #[test]
    fn a_blob_is_known_by_the_id_of_the_bytes_read() {
        // A pack of one blob, whatever id a remote claims for it: known by
        // the id of its bytes.
        let content = b"what the remote sent\n";
        let mut pack = b"PACK\0\0\0\x02\0\0\0\x01".to_vec();
        pack.push(0x30 | content.len() as u8 & 0x0f | 0x80);
        pack.push((content.len() >> 4) as u8);
        let mut zlib = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut zlib, content).expect("deflated");
        pack.extend(zlib.finish().expect("deflated"));
        pack.extend([0u8; 20]);
        let id = Oid::hash_object(git2::ObjectType::Blob, content).expect("an id");

        let read = read(&reply(&pack, 7), 3);

        assert_eq!(read, [(id, content.to_vec())].into_iter().collect());
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

    #[test]
    fn the_latest_blobs_are_held_the_oldest_let_go_first() {
        let mut held = Held::default();
        let blob = (MAX_HELD_BLOB / 2) as usize;
        let fit = MAX_HELD / blob;
        for i in 0..=fit as u64 {
            held.hold(i, vec![i as u8; blob]);
        }
        assert!(held.bytes <= MAX_HELD);
        assert_eq!(held.get(0), None, "the oldest went first");
        assert_eq!(held.get(1).map(|b| b[0]), Some(1));
        assert_eq!(held.get(fit as u64).map(<[u8]>::len), Some(blob));
        held.hold(99, vec![0; MAX_HELD_BLOB as usize + 1]);
        assert_eq!(held.get(99), None, "too large to hold");
        assert_eq!(
            held.get(1).map(|b| b[0]),
            Some(1),
            "and nothing let go for it"
        );
    }
}
