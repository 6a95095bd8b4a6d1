//! Which files are binary: Docora's rule, so an app gets a file as text or
//! as base64 exactly as Docora would send it.
//!
//! Docora decides with the npm package `isbinaryfile` at 6.0.0 (the version
//! its lock file pins), called on the whole file's bytes with no encoding
//! hint. This is a line-for-line port of that version's published
//! `lib/index.js` (`isBinaryCheck`, the protobuf check) and
//! `lib/encoding.js` (UTF-16 without a byte-order mark). In short, looking
//! only at the first 512 bytes (515 for a character cut at the 512th):
//!
//! - empty, or starting with a UTF-8, UTF-32, GB 18030 or UTF-16 byte-order
//!   mark: text; starting with `%PDF-`: binary;
//! - 30 % to 70 % NUL bytes, nearly all on odd (or even) offsets: UTF-16
//!   without a mark, binary only if it holds a control character other
//!   than tab, line feed and carriage return;
//! - otherwise a NUL is binary, and so are more than 10 % *suspicious*
//!   bytes (control characters other than 7 to 14, and bytes above 127 that
//!   are not part of a well-formed UTF-8 sequence); two or more suspicious
//!   bytes are binary too when the bytes read as a protobuf message.
//!
//! So a Latin-1 or UTF-16 file is text, and a NUL or a byte that is not
//! UTF-8 past the first 512 bytes does not make a file binary. Such text is
//! delivered as Docora delivers it (see `payload.rs`).

/// The bytes the rule scans (`MAX_BYTES`).
const MAX_BYTES: usize = 512;
/// The bytes past [`MAX_BYTES`] a UTF-8 sequence that starts inside them
/// may end in (`UTF8_BOUNDARY_RESERVE`).
const UTF8_BOUNDARY_RESERVE: usize = 3;
/// How many leading bytes of a file decide whether it is binary: nothing
/// after them counts.
pub const HEAD_BYTES: usize = MAX_BYTES + UTF8_BOUNDARY_RESERVE;

/// Whether a file whose content starts with `head` is binary. Only the
/// first [`HEAD_BYTES`] bytes are looked at, and they decide for the whole
/// file: `isbinaryfile` compares the file's size only with numbers below
/// them.
pub fn is_binary(head: &[u8]) -> bool {
    // `fileBuffer`, and `bytesRead` / `totalBytes`: its length.
    let buffer = &head[..head.len().min(HEAD_BYTES)];
    let total = buffer.len();
    // Empty: "no clue what it is".
    if total == 0 {
        return false;
    }
    let scan = total.min(MAX_BYTES);
    for mark in BYTE_ORDER_MARKS_BEFORE_PDF {
        if buffer.starts_with(mark) {
            return false;
        }
    }
    if buffer.starts_with(b"%PDF-") {
        return true;
    }
    for mark in UTF16_BYTE_ORDER_MARKS {
        if buffer.starts_with(mark) {
            return false;
        }
    }
    if let Some(order) = utf16_without_byte_order_mark(buffer) {
        return !utf16_is_text(buffer, order);
    }

    let mut suspicious = 0usize;
    let mut i = 0;
    while i < scan {
        let byte = buffer[i];
        if byte == 0 {
            return true;
        }
        if !(7..=14).contains(&byte) && !(32..=127).contains(&byte) {
            // A well-formed UTF-8 sequence is skipped whole. A lead byte
            // followed by something else counts once, and the byte after it
            // is passed over unexamined, as in the original.
            if (0xc0..=0xdf).contains(&byte) && i + 1 < total {
                i += 1;
                if continues(buffer[i]) {
                    i += 1;
                    continue;
                }
            } else if (0xe0..=0xef).contains(&byte) && i + 2 < total {
                i += 1;
                if continues(buffer[i]) && continues(buffer[i + 1]) {
                    i += 2;
                    continue;
                }
            } else if (0xf0..=0xf7).contains(&byte) && i + 3 < total {
                i += 1;
                if continues(buffer[i]) && continues(buffer[i + 1]) && continues(buffer[i + 2]) {
                    i += 3;
                    continue;
                }
            }
            suspicious += 1;
            // At least 32 bytes read before deciding early.
            if i >= 32 && too_suspicious(suspicious, scan) {
                return true;
            }
        }
        i += 1;
    }
    if too_suspicious(suspicious, scan) {
        return true;
    }
    suspicious > 1 && is_protobuf(&buffer[..scan])
}

/// Byte-order marks of text, checked in the original's order: UTF-8,
/// UTF-32 big- and little-endian, GB 18030; then comes `%PDF-`.
const BYTE_ORDER_MARKS_BEFORE_PDF: [&[u8]; 4] = [
    &[0xef, 0xbb, 0xbf],
    &[0x00, 0x00, 0xfe, 0xff],
    &[0xff, 0xfe, 0x00, 0x00],
    &[0x84, 0x31, 0x95, 0x33],
];

/// UTF-16 big- and little-endian byte-order marks, checked after `%PDF-`.
const UTF16_BYTE_ORDER_MARKS: [&[u8]; 2] = [&[0xfe, 0xff], &[0xff, 0xfe]];

/// A UTF-8 continuation byte.
fn continues(byte: u8) -> bool {
    (0x80..=0xbf).contains(&byte)
}

/// `(suspiciousBytes * 100) / scanBytes > 10`, in integers: the same
/// comparison, as both sides are whole numbers and `scan` is positive.
fn too_suspicious(suspicious: usize, scan: usize) -> bool {
    suspicious * 10 > scan
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ByteOrder {
    LittleEndian,
    BigEndian,
}

/// `detectUtf16NoBom`: UTF-16 text of mostly ASCII has a NUL in every other
/// byte.
fn utf16_without_byte_order_mark(buffer: &[u8]) -> Option<ByteOrder> {
    if buffer.len() < 4 {
        return None;
    }
    let scan = buffer.len().min(MAX_BYTES);
    let (mut at_even, mut at_odd) = (0usize, 0usize);
    for (at, &byte) in buffer[..scan].iter().enumerate() {
        if byte == 0 {
            if at % 2 == 0 {
                at_even += 1;
            } else {
                at_odd += 1;
            }
        }
    }
    // In floating point, as the original compares (`scanLength * 0.3`): the
    // products are rounded, so the bounds are not exactly 3/10 and 7/10.
    let (nulls, scanned) = (count_f64(at_even + at_odd), count_f64(scan));
    if nulls > scanned * 0.3 && nulls < scanned * 0.7 {
        if at_odd > at_even * 3 {
            return Some(ByteOrder::LittleEndian);
        }
        if at_even > at_odd * 3 {
            return Some(ByteOrder::BigEndian);
        }
    }
    None
}

/// A count of at most [`HEAD_BYTES`], exactly as a float.
fn count_f64(count: usize) -> f64 {
    f64::from(u16::try_from(count).expect("counts of at most HEAD_BYTES"))
}

/// `isTextWithEncodingHint` for UTF-16: text unless a code unit of one byte
/// is a control character other than NUL, tab, line feed and carriage
/// return. A last odd byte pairs with a zero.
fn utf16_is_text(buffer: &[u8], order: ByteOrder) -> bool {
    let scan = buffer.len().min(MAX_BYTES);
    let control = |byte: u8| byte < 0x20 && !matches!(byte, 0x09 | 0x0a | 0x0d | 0x00);
    (0..scan).step_by(2).all(|i| {
        let first = buffer[i];
        let second = if i + 1 < scan { buffer[i + 1] } else { 0 };
        match order {
            ByteOrder::LittleEndian => !(second == 0 && control(first)),
            ByteOrder::BigEndian => !(first == 0 && control(second)),
        }
    })
}

/// `isBinaryProto`: whether `bytes` read as one or more protobuf fields up
/// to their end (a field cut by the end counts as read).
fn is_protobuf(bytes: &[u8]) -> bool {
    let mut reader = Reader {
        bytes,
        offset: 0,
        error: false,
    };
    let mut fields = 0usize;
    loop {
        if !reader.field() && !reader.error {
            return false;
        }
        if reader.error {
            break;
        }
        fields += 1;
    }
    fields > 0
}

/// The original's `Reader`: reading past the end sets `error` instead of
/// failing, and every read after that reads nothing.
struct Reader<'a> {
    bytes: &'a [u8],
    offset: usize,
    error: bool,
}

impl Reader<'_> {
    /// `nextByte`: past the end (or after an error), 0xff and an error.
    fn next_byte(&mut self) -> u8 {
        match self.bytes.get(self.offset) {
            Some(&byte) if !self.error => {
                self.offset += 1;
                byte
            }
            _ => {
                self.error = true;
                0xff
            }
        }
    }

    /// `next(len)`, whose bytes are not used: skips `len` bytes, an error
    /// when fewer are left (or `len` is negative).
    fn skip(&mut self, len: i64) {
        let left = i64::try_from(self.bytes.len() - self.offset).unwrap_or(i64::MAX);
        if len < 0 || len > left {
            self.error = true;
        } else if !self.error {
            self.offset += usize::try_from(len).expect("at most the bytes left");
        }
    }

    /// `readProtoVarInt`, with JavaScript's 32-bit arithmetic: `<<` takes
    /// its count modulo 32 and `|` wraps to a signed 32-bit integer.
    fn varint(&mut self) -> i32 {
        let mut at = 0u32;
        let mut value = 0i32;
        while !self.error {
            let byte = self.next_byte();
            value |= i32::from(byte & 0x7f).wrapping_shl(7 * at);
            if byte & 0x80 == 0 {
                break;
            }
            // A varint has 1 to 10 bytes.
            if at >= 10 {
                self.error = true;
                break;
            }
            at += 1;
        }
        value
    }

    /// `readProtoMessage`: one field, by its wire type; `false` for a wire
    /// type that is not one (groups, 6, 7).
    fn field(&mut self) -> bool {
        match self.varint() & 0x7 {
            0 => {
                self.varint();
                true
            }
            1 => {
                self.skip(8);
                true
            }
            2 => {
                let len = self.varint();
                self.skip(i64::from(len));
                true
            }
            5 => {
                self.skip(4);
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `text` repeated to `len` bytes.
    fn filled(text: &str, len: usize) -> Vec<u8> {
        text.bytes().cycle().take(len).collect()
    }

    /// `text` in UTF-16, little- or big-endian, with or without a mark.
    fn utf16(text: &str, order: ByteOrder, mark: bool) -> Vec<u8> {
        let units = mark
            .then_some(0xfeff)
            .into_iter()
            .chain(text.encode_utf16());
        units
            .flat_map(|unit| match order {
                ByteOrder::LittleEndian => unit.to_le_bytes(),
                ByteOrder::BigEndian => unit.to_be_bytes(),
            })
            .collect()
    }

    /// `text` in Latin-1 (every character below U+0100).
    fn latin1(text: &str) -> Vec<u8> {
        text.chars()
            .map(|c| u8::try_from(u32::from(c)).expect("a Latin-1 character"))
            .collect()
    }

    fn joined(parts: &[&[u8]]) -> Vec<u8> {
        parts.concat()
    }

    /// A protobuf message of string fields (field 1, wire type 2) of
    /// `len` letters each, `count` of them.
    fn protobuf_strings(len: u8, count: usize) -> Vec<u8> {
        (0..count)
            .flat_map(|n| {
                let letters =
                    (0..len).map(move |i| b'a' + (i + u8::try_from(n % 26).expect("small")) % 26);
                [0x0a, len].into_iter().chain(letters)
            })
            .collect()
    }

    /// Files and Docora's verdict on each, checked against `isbinaryfile`
    /// 6.0.0 itself (the published package, run by Node.js on these exact
    /// bytes): the edge cases where Herald's rule differed from Docora's
    /// before, and those of the package's own test suite. One case a line.
    #[rustfmt::skip]
    fn cases() -> Vec<(&'static str, Vec<u8>, bool)> {
        let markdown = "# Café crème\n\nUne recette de crème brûlée, à la française.\n\n\
                        - Lait entier\n- Sucre de canne\n- Oeufs frais\n\n";
        vec![
            // Plain text.
            ("empty", Vec::new(), false),
            ("ASCII", b"hello\n".to_vec(), false),
            ("one byte", b"x".to_vec(), false),
            ("UTF-8", "héllo wörld, € and 😀\n".as_bytes().to_vec(), false),
            ("Cyrillic UTF-8", "Привет, мир! ".repeat(60).into_bytes(), false),
            ("Vai UTF-8", "ꕉꕜꕮ ꔔꘋ ꖸ ꔰ ".repeat(40).into_bytes(), false),
            // Latin-1: text while accents are rare, binary when dense.
            ("Latin-1 markdown", latin1(&markdown.repeat(3)), false),
            ("short Latin-1 word", latin1("café"), true),
            ("dense Latin-1", latin1(&"éèêëàâäôöûüç ".repeat(20)), true),
            // Byte-order marks make text, whatever follows.
            ("UTF-16LE with a mark", utf16("# Notes\nsome text\n", ByteOrder::LittleEndian, true), false),
            ("UTF-16BE with a mark", utf16("# Notes\nsome text\n", ByteOrder::BigEndian, true), false),
            ("UTF-8 mark then NULs", joined(&[&[0xef, 0xbb, 0xbf], &[0; 64]]), false),
            ("UTF-32LE with a mark", joined(&[&[0xff, 0xfe, 0, 0], b"a\0\0\0b\0\0\0"]), false),
            ("UTF-32BE with a mark", joined(&[&[0, 0, 0xfe, 0xff], b"\0\0\0a\0\0\0b"]), false),
            ("GB 18030 mark then NULs", joined(&[&[0x84, 0x31, 0x95, 0x33], &[0; 16]]), false),
            ("UTF-16 mark alone", vec![0xff, 0xfe], false),
            // UTF-16 without a mark: detected from where its NULs fall.
            ("UTF-16LE without a mark", utf16(&"plain text\r\n".repeat(30), ByteOrder::LittleEndian, false), false),
            ("UTF-16BE without a mark", utf16(&"plain text\r\n".repeat(30), ByteOrder::BigEndian, false), false),
            ("UTF-16LE with a control", utf16("bell\u{7} rings\n", ByteOrder::LittleEndian, false), true),
            ("UTF-16LE, 3 bytes", vec![b'a', 0, b'b'], true),
            // NULs: only the first 512 bytes count.
            ("NUL early", b"a\0b".to_vec(), true),
            ("NUL at byte 511", joined(&[&filled("text ", 511), b"\0"]), true),
            ("NUL at byte 512", joined(&[&filled("text ", 512), b"\0"]), false),
            ("NUL after 8 KiB", joined(&[&filled("text\n", 9000), b"\0rest"]), false),
            ("not UTF-8 after 515 bytes", joined(&[&filled("text\n", 600), &[0xff, 0xfe, 0x41]]), false),
            ("PNG", joined(&[&[0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a, 0, 0, 0, 0x0d], b"IHDR"]), true),
            ("ELF", joined(&[&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0], &[0; 56]]), true),
            ("GIF", joined(&[b"GIF89a", &[0x10, 0, 0x10, 0, 0x80, 0, 0]]), true),
            // PDF: binary by its header, even when all ASCII.
            ("PDF header", filled("%PDF-1.4\n% plain ASCII\n", 200), true),
            ("PDF cut short", b"%PDF".to_vec(), false),
            // UTF-8 sequences cut by the 512th byte: the 3 reserve bytes
            // complete them.
            ("4 bytes from byte 508", joined(&[&filled("A", 508), "😀 and more".as_bytes()]), false),
            ("3 bytes from byte 509", joined(&[&filled("A", 509), "€ and more".as_bytes()]), false),
            ("4 bytes from byte 509", joined(&[&filled("A", 509), "😀 and more".as_bytes()]), false),
            ("2 bytes from byte 510", joined(&[&filled("A", 510), "é and more".as_bytes()]), false),
            ("3 bytes from byte 510", joined(&[&filled("A", 510), "€ and more".as_bytes()]), false),
            ("4 bytes from byte 510", joined(&[&filled("A", 510), "😀 and more".as_bytes()]), false),
            ("4 bytes from byte 511", joined(&[&filled("A", 511), "😀".as_bytes()]), false),
            // Cut by the end of the file: two suspicious bytes, and the `A`s
            // before them read as protobuf fields of wire type 1.
            ("3 bytes cut by the end", joined(&[&filled("A", 510), &[0xe2, 0x82]]), true),
            // Suspicious bytes: more than 10 % is binary.
            ("ANSI colours", filled("\u{1b}[31mred\u{1b}[0m and plain words here\n", 400), false),
            ("control bytes", filled("ab\u{1}\u{2}\u{3}cd", 300), true),
            ("10 % suspicious", filled("#abcdefgh\u{1b}", 100), false),
            ("11 % suspicious", filled("#abcdefg\u{1b}", 99), true),
            ("decided at byte 32", joined(&[&[0x01; 40], &filled("#text ", 60)]), true),
            // Protobuf: few suspicious bytes, but the bytes read as fields.
            ("protobuf strings", protobuf_strings(20, 30), true),
            ("text that is not protobuf", filled("# a heading, then \u{1}\u{2} words\n", 400), false),
            (
                "malformed protobuf-like bytes (isbinaryfile #80)",
                hex::decode(
                    "82ACE2828045E382805FE1828053E7828045E7878045E8838145\
                     E2988445E2948545E2828D4CE2828A44E28280418CF7EC2E",
                )
                .expect("hex"),
                false,
            ),
        ]
    }

    #[test]
    fn files_are_binary_as_isbinaryfile_6_0_0_says() {
        let mut wrong = Vec::new();
        for (name, bytes, binary) in &cases() {
            if is_binary(bytes) != *binary {
                wrong.push(*name);
            }
        }
        assert!(wrong.is_empty(), "classified unlike Docora: {wrong:?}");
    }

    #[test]
    fn bytes_after_the_head_never_change_the_verdict() {
        let head = filled("# title\nsome words\n", HEAD_BYTES);
        for tail in [&b"\0\0\0"[..], &[0xff; 100], "é".as_bytes()] {
            assert!(!is_binary(&joined(&[&head, tail])));
        }
    }
}
