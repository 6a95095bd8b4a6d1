//! How much of the event stream the client may hold: a line, and a message
//! (its lines up to the blank line that ends it), of at most
//! `--max-message-bytes` each. The SSE decoder keeps a line until it ends
//! and a message's data until the blank line, so a server that never ends
//! either would grow it without bound; the bytes are counted here, before
//! they reach the decoder, and the stream ends with [`TooLong`] as soon as
//! a line or a message grows past the bound.

use bytes::Bytes;
use futures::{Stream, StreamExt};

/// Why the stream ended early: the bound, and what went past it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(super) enum TooLong {
    #[error("a line of more than {0} bytes")]
    Line(u64),
    #[error("a message of more than {0} bytes")]
    Message(u64),
}

/// What the bounded stream fails with: the body's own error, or the bound.
#[derive(Debug, thiserror::Error)]
pub(super) enum StreamError {
    #[error(transparent)]
    Read(#[from] reqwest::Error),
    #[error("the event stream sent {0}")]
    TooLong(TooLong),
}

/// `stream`, ending with [`StreamError::TooLong`] once a line or a message
/// is longer than `max` bytes.
pub(super) fn bounded(
    stream: impl Stream<Item = reqwest::Result<Bytes>>,
    max: u64,
) -> impl Stream<Item = Result<Bytes, StreamError>> {
    let mut limit = Limit::new(max);
    stream.map(move |read| {
        let bytes = read?;
        limit.count(&bytes).map_err(StreamError::TooLong)?;
        Ok(bytes)
    })
}

/// The count of the line and the message being read. Lines end at CR, LF
/// or CRLF, as SSE has them; an empty line ends the message.
#[derive(Debug)]
struct Limit {
    max: u64,
    /// Bytes of the line so far, its end not counted.
    line: u64,
    /// Bytes of the message so far, its lines' ends counted.
    message: u64,
    /// The last byte was a CR: an LF right after it ends nothing more.
    after_cr: bool,
}

impl Limit {
    fn new(max: u64) -> Self {
        Self {
            max,
            line: 0,
            message: 0,
            after_cr: false,
        }
    }

    /// Counts the stream's next bytes.
    fn count(&mut self, mut bytes: &[u8]) -> Result<(), TooLong> {
        while let Some(&first) = bytes.first() {
            if std::mem::take(&mut self.after_cr) && first == b'\n' {
                bytes = &bytes[1..];
                continue;
            }
            let Some(end) = bytes.iter().position(|&b| b == b'\n' || b == b'\r') else {
                return self.grow(bytes.len());
            };
            self.grow(end)?;
            if self.line == 0 {
                // An empty line: the message is complete.
                self.message = 0;
            } else {
                self.line = 0;
                self.message = self.message.saturating_add(1);
                if self.message > self.max {
                    return Err(TooLong::Message(self.max));
                }
            }
            self.after_cr = bytes[end] == b'\r';
            bytes = &bytes[end + 1..];
        }
        Ok(())
    }

    fn grow(&mut self, by: usize) -> Result<(), TooLong> {
        let by = u64::try_from(by).unwrap_or(u64::MAX);
        self.line = self.line.saturating_add(by);
        self.message = self.message.saturating_add(by);
        if self.line > self.max {
            Err(TooLong::Line(self.max))
        } else if self.message > self.max {
            Err(TooLong::Message(self.max))
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts `parts` in turn: the first refusal, with the part's index.
    fn count(max: u64, parts: &[&[u8]]) -> Result<(), (usize, TooLong)> {
        let mut limit = Limit::new(max);
        for (i, part) in parts.iter().enumerate() {
            limit.count(part).map_err(|err| (i, err))?;
        }
        Ok(())
    }

    #[test]
    fn a_line_without_an_end_is_refused_once_past_the_bound() {
        assert_eq!(count(8, &[b"data: 12"]), Ok(()));
        assert_eq!(
            count(8, &[b"data:", b" 12", b"3"]),
            Err((2, TooLong::Line(8)))
        );
        assert_eq!(
            count(4, &[&[b'a'; 3], &[b'a'; 3]]),
            Err((1, TooLong::Line(4)))
        );
    }

    #[test]
    fn lines_end_at_cr_lf_or_crlf_split_anywhere() {
        for end in ["\n", "\r", "\r\n"] {
            let message = format!("id: 1{end}data: abc{end}{end}");
            let many = message.repeat(50);
            assert_eq!(count(20, &[many.as_bytes()]), Ok(()), "{end:?}");
            let bytes = many.as_bytes();
            let split: Vec<&[u8]> = bytes.chunks(1).collect();
            assert_eq!(count(20, &split), Ok(()), "{end:?} byte by byte");
        }
        // A CR then an LF in the next read is one end, not an empty line.
        assert_eq!(
            count(12, &[b"data: aaaa\r", b"\ndata: bb\r\n"]),
            Err((1, TooLong::Message(12)))
        );
    }

    #[test]
    fn a_message_of_short_lines_is_refused_past_the_bound() {
        let lines = "data: x\n".repeat(10);
        assert_eq!(
            count(40, &[lines.as_bytes()]),
            Err((0, TooLong::Message(40)))
        );
        // The same lines in messages of their own are fine.
        let messages = "data: x\n\n".repeat(100);
        assert_eq!(count(40, &[messages.as_bytes()]), Ok(()));
        // Heartbeats (comments) end with an empty line too.
        let beats = ":keep-alive\n\n".repeat(100);
        assert_eq!(count(40, &[beats.as_bytes()]), Ok(()));
    }
}
