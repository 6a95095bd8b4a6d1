//! Chunked binary files put back together, one transfer (`chunk.id`) at a
//! time: chunks are accepted in order only, a repeat is acknowledged, a gap
//! is a 409 so that Herald resends, a new transfer of a file replaces the
//! one it abandoned, and the buffers stay bounded.

use std::collections::HashMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use super::wire::{WireChunk, WireFile};
use super::{RecentIds, Refused};

/// How many files may be half-reassembled at once, and how many bytes of
/// base64 they may hold together; the least recently touched goes first.
const MAX_PARTIAL_FILES: usize = 64;
const MAX_PARTIAL_BYTES: usize = 1 << 30;

/// Files whose chunks are still arriving, by chunk id.
#[derive(Default)]
pub(super) struct Partials {
    files: HashMap<String, Partial>,
    /// Base64 characters held by all partial files together.
    buffered: usize,
    /// Chunk ids of files already reassembled and applied: a late repeat of
    /// any of their chunks is acknowledged, not taken for a new file.
    finished: RecentIds,
    /// A logical clock for "least recently touched".
    ticks: u64,
}

struct Partial {
    /// The whole file's metadata, which every chunk repeats.
    path: String,
    sha: String,
    total: u64,
    /// The only index accepted next; earlier ones are repeats.
    next: u64,
    base64: String,
    /// Where the last chunk started, to undo it when applying failed.
    last_start: usize,
    touched: u64,
}

#[derive(Debug)]
pub(super) enum ChunkStep {
    Buffered,
    Repeat,
    /// The last chunk arrived: the decoded file. The partial stays until
    /// [`Partials::finish`], [`Partials::discard`] or [`Partials::rollback`].
    Complete(Vec<u8>),
}

impl Partials {
    pub(super) fn accept(
        &mut self,
        chunk: &WireChunk,
        file: &WireFile,
        content: &str,
    ) -> Result<ChunkStep, Refused> {
        if chunk.total == 0 || chunk.index >= chunk.total {
            return Err(Refused::Malformed(format!(
                "chunk index {} out of range for total {}",
                chunk.index, chunk.total
            )));
        }
        if self.finished.contains(&chunk.id) {
            return Ok(ChunkStep::Repeat);
        }
        self.ticks += 1;
        let ticks = self.ticks;
        if chunk.index == 0 && !self.files.contains_key(&chunk.id) {
            // Herald sends a file again from chunk 0 under a new chunk id
            // (and one path at a time): an earlier transfer of the same
            // path was abandoned.
            let abandoned: Vec<String> = self
                .files
                .iter()
                .filter(|(_, partial)| partial.path == file.path)
                .map(|(id, _)| id.clone())
                .collect();
            for id in abandoned {
                self.discard(&id);
            }
        }
        let partial = match self.files.get_mut(&chunk.id) {
            None if chunk.index == 0 => {
                self.files.insert(
                    chunk.id.clone(),
                    Partial {
                        path: file.path.clone(),
                        sha: file.sha.clone(),
                        total: chunk.total,
                        next: 0,
                        base64: String::new(),
                        last_start: 0,
                        touched: ticks,
                    },
                );
                self.files
                    .get_mut(&chunk.id)
                    .expect("the partial was inserted just above")
            }
            None => {
                return Err(Refused::ChunkGap(format!(
                    "chunk {} of {} arrived without the chunks before it",
                    chunk.index, chunk.id
                )));
            }
            Some(partial) => partial,
        };
        if partial.path != file.path || partial.sha != file.sha || partial.total != chunk.total {
            let refused = Refused::Unprocessable(format!(
                "chunk {} of {} describes another file than its first chunk",
                chunk.index, chunk.id
            ));
            self.discard(&chunk.id);
            return Err(refused);
        }
        partial.touched = ticks;
        if chunk.index < partial.next {
            return Ok(ChunkStep::Repeat);
        }
        if chunk.index > partial.next {
            return Err(Refused::ChunkGap(format!(
                "expected chunk {} of {}, got {}",
                partial.next, chunk.id, chunk.index
            )));
        }
        partial.last_start = partial.base64.len();
        partial.base64.push_str(content);
        partial.next += 1;
        self.buffered += content.len();

        if partial.next < partial.total {
            self.evict(&chunk.id);
            return Ok(ChunkStep::Buffered);
        }
        match STANDARD.decode(&partial.base64) {
            Ok(bytes) => Ok(ChunkStep::Complete(bytes)),
            Err(err) => {
                self.discard(&chunk.id);
                Err(Refused::Unprocessable(format!(
                    "the reassembled content of {} is not valid base64: {err}",
                    chunk.id
                )))
            }
        }
    }

    /// The file was applied: forget its chunks, remember its id.
    pub(super) fn finish(&mut self, id: &str) {
        self.discard(id);
        self.finished.insert(id.to_owned());
    }

    /// Drops a partial file: it starts again from chunk 0.
    pub(super) fn discard(&mut self, id: &str) {
        if let Some(partial) = self.files.remove(id) {
            self.buffered -= partial.base64.len();
        }
    }

    /// Forgets the last chunk so that its redelivery is accepted again.
    pub(super) fn rollback(&mut self, id: &str) {
        if let Some(partial) = self.files.get_mut(id) {
            self.buffered -= partial.base64.len() - partial.last_start;
            partial.base64.truncate(partial.last_start);
            partial.next -= 1;
        }
    }

    /// Keeps the buffers bounded by dropping the least recently touched other
    /// files (their sender gets a 409 at its next chunk and starts over).
    fn evict(&mut self, keep: &str) {
        while self.files.len() > MAX_PARTIAL_FILES || self.buffered > MAX_PARTIAL_BYTES {
            let oldest = self
                .files
                .iter()
                .filter(|(id, _)| id.as_str() != keep)
                .min_by_key(|(_, partial)| partial.touched)
                .map(|(id, _)| id.clone());
            match oldest {
                Some(id) => {
                    eprintln!(
                        "dropping the partial file of chunk id {id}: too many bytes buffered"
                    );
                    self.discard(&id);
                }
                None => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(index: u64, total: u64) -> WireChunk {
        WireChunk {
            id: "chk_1".into(),
            index,
            total,
        }
    }

    fn file() -> WireFile {
        WireFile {
            path: "a.bin".into(),
            sha: "00".into(),
            size: None,
            content: None,
            content_encoding: Some("base64".into()),
            chunk: None,
        }
    }

    #[test]
    fn chunks_are_accepted_in_order_only() {
        let mut partials = Partials::default();
        let encoded = STANDARD.encode(b"hello, chunked world");
        let (first, rest) = encoded.split_at(8);
        let (second, third) = rest.split_at(8);
        assert!(matches!(
            partials.accept(&chunk(1, 3), &file(), second),
            Err(Refused::ChunkGap(_))
        ));
        assert!(matches!(
            partials.accept(&chunk(0, 3), &file(), first),
            Ok(ChunkStep::Buffered)
        ));
        assert!(matches!(
            partials.accept(&chunk(0, 3), &file(), first),
            Ok(ChunkStep::Repeat)
        ));
        assert!(matches!(
            partials.accept(&chunk(2, 3), &file(), third),
            Err(Refused::ChunkGap(_))
        ));
        assert!(matches!(
            partials.accept(&chunk(1, 3), &file(), second),
            Ok(ChunkStep::Buffered)
        ));
        let Ok(ChunkStep::Complete(bytes)) = partials.accept(&chunk(2, 3), &file(), third) else {
            panic!("the last chunk completes the file");
        };
        assert_eq!(bytes, b"hello, chunked world");

        partials.rollback("chk_1");
        assert!(matches!(
            partials.accept(&chunk(2, 3), &file(), third),
            Ok(ChunkStep::Complete(_))
        ));
        partials.finish("chk_1");
        assert_eq!(partials.buffered, 0);
        assert!(matches!(
            partials.accept(&chunk(2, 3), &file(), third),
            Ok(ChunkStep::Repeat)
        ));
    }

    #[test]
    fn a_new_transfer_of_a_file_replaces_the_one_it_abandoned() {
        let mut partials = Partials::default();
        let encoded = STANDARD.encode(b"hello, chunked world");
        let (first, rest) = encoded.split_at(12);
        let transfer = |id: &str, index| WireChunk {
            id: id.into(),
            index,
            total: 2,
        };
        assert!(matches!(
            partials.accept(&transfer("chk_a", 0), &file(), first),
            Ok(ChunkStep::Buffered)
        ));
        // Chunk 1 of transfer a failed; the file comes again as transfer b.
        assert!(matches!(
            partials.accept(&transfer("chk_b", 0), &file(), first),
            Ok(ChunkStep::Buffered)
        ));
        assert_eq!(partials.files.len(), 1, "transfer a is dropped");
        assert_eq!(partials.buffered, first.len());
        assert!(matches!(
            partials.accept(&transfer("chk_a", 1), &file(), rest),
            Err(Refused::ChunkGap(_))
        ));
        let Ok(ChunkStep::Complete(bytes)) = partials.accept(&transfer("chk_b", 1), &file(), rest)
        else {
            panic!("transfer b completes the file");
        };
        assert_eq!(bytes, b"hello, chunked world");
    }
}
