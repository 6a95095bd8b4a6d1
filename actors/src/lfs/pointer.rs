//! LFS pointer files (the Git LFS specification, "The pointer"): the small
//! text git stores in place of a file whose content lives on an LFS server.

/// The largest blob read as a possible pointer: the specification caps
/// pointers at 1024 bytes.
pub const MAX_POINTER_BYTES: usize = 1024;

/// The `version` lines a pointer may start with: the current one, and the
/// one of git-lfs before 1.0 (which clients still read).
const VERSIONS: [&str; 2] = [
    "https://git-lfs.github.com/spec/v1",
    "https://hawser.github.com/spec/v1",
];

/// What a pointer names: its object's SHA-256 (`oid sha256:`), which is the
/// SHA-256 of the file's real content, and that content's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pointer {
    pub oid: [u8; 32],
    pub size: u64,
}

impl Pointer {
    /// The pointer `bytes` hold, if they are one: `version` first, then the
    /// other keys in byte order, each line `key value` and `\n`-ended, with
    /// `oid sha256:{64 lower-case hex}` and `size {decimal}` among them.
    /// Anything else (a file that merely looks like one, a CRLF copy, an
    /// unknown version) is an ordinary file, as git-lfs treats it.
    pub fn parse(bytes: &[u8]) -> Option<Self> {
        if bytes.len() > MAX_POINTER_BYTES || bytes.last() != Some(&b'\n') {
            return None;
        }
        let text = std::str::from_utf8(bytes).ok()?;
        let mut lines = text[..text.len() - 1].split('\n');
        let version = lines.next()?.strip_prefix("version ")?;
        if !VERSIONS.contains(&version) {
            return None;
        }
        let (mut oid, mut size) = (None, None);
        let mut previous = "";
        for line in lines {
            let (key, value) = line.split_once(' ')?;
            let key_valid = !key.is_empty()
                && key
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b));
            if !key_valid || key <= previous || value.is_empty() {
                return None;
            }
            previous = key;
            match key {
                "oid" => {
                    let hex = value.strip_prefix("sha256:")?;
                    if hex.len() != 64 || hex.bytes().any(|b| b.is_ascii_uppercase()) {
                        return None;
                    }
                    let mut digest = [0u8; 32];
                    hex::decode_to_slice(hex, &mut digest).ok()?;
                    oid = Some(digest);
                }
                "size" => {
                    if !value.bytes().all(|b| b.is_ascii_digit()) {
                        return None;
                    }
                    size = Some(value.parse().ok()?);
                }
                _ => {}
            }
        }
        Some(Self {
            oid: oid?,
            size: size?,
        })
    }

    /// The object id as the batch API spells it (lower-case hex).
    pub fn oid_hex(&self) -> String {
        hex::encode(self.oid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OID: &str = "4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393";

    fn pointer(text: &str) -> Option<Pointer> {
        Pointer::parse(text.as_bytes())
    }

    #[test]
    fn a_pointer_names_its_object_and_size() {
        let parsed = pointer(&format!(
            "version https://git-lfs.github.com/spec/v1\noid sha256:{OID}\nsize 12345\n"
        ))
        .expect("a pointer");
        assert_eq!(parsed.oid_hex(), OID);
        assert_eq!(parsed.size, 12345);
        // Extra keys in order are allowed (git-lfs writes `ext-…` ones).
        assert!(
            pointer(&format!(
                "version https://git-lfs.github.com/spec/v1\next-0-foo sha256:{OID}\noid sha256:{OID}\nsize 1\n"
            ))
            .is_some()
        );
    }

    #[test]
    fn what_merely_looks_like_a_pointer_is_a_file() {
        let v = "version https://git-lfs.github.com/spec/v1";
        for text in [
            format!("{v}\noid sha256:{OID}\nsize 12345"),
            format!("{v}\r\noid sha256:{OID}\r\nsize 12345\r\n"),
            format!("{v}\nsize 12345\noid sha256:{OID}\n"),
            format!("{v}\noid sha256:{}\nsize 12345\n", OID.to_uppercase()),
            format!("{v}\noid sha256:{}\nsize 12345\n", &OID[1..]),
            format!("{v}\noid md5:{OID}\nsize 12345\n"),
            format!("{v}\noid sha256:{OID}\nsize -1\n"),
            format!("{v}\noid sha256:{OID}\n"),
            format!("version https://example.com/spec/v9\noid sha256:{OID}\nsize 1\n"),
            format!("{v}\noid sha256:{OID}\nsize 1\n{}\n", "x".repeat(1100)),
            "just a text file\n".to_owned(),
        ] {
            assert_eq!(pointer(&text), None, "{text:?}");
        }
    }
}
