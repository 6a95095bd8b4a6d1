//! Docora's formats, for what Herald imports from it (`herald
//! import-docora`, SPEC §12): its ids, its API tokens and their bcrypt
//! hashes, and its secrets sealed under its `ENCRYPTION_KEY`.
//!
//! - Ids: `app_` / `repo_` + 24 lower-case hex (12 random bytes).
//! - Tokens: `docora_` + 64 lower-case hex (32 random bytes), stored as
//!   bcrypt (cost 12). Herald keeps the bcrypt hash of an imported app as a
//!   *legacy* hash and replaces it with its own on the token's first
//!   successful use (see `Store::authenticate_app`).
//! - Secrets: AES-256-GCM with a 16-byte IV, written
//!   `hex(iv):hex(tag):hex(ciphertext)`, under 32 bytes given as 64 hex.

use aes_gcm::aead::consts::U16;
use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::aes::Aes256;
use aes_gcm::{AesGcm, Nonce};
use secrecy::SecretString;

use crate::crypto::sha256_hex;

/// The prefix of Docora's API tokens.
pub const TOKEN_PREFIX: &str = "docora_";
/// The prefix of `apps.token_lookup` for an imported app whose token was
/// never used with Herald: the rest is the app's id, the hash is bcrypt.
pub const LEGACY_LOOKUP_PREFIX: &str = "legacy:";
/// The first string after every legacy lookup (`:` + 1 = `;`): the legacy
/// rows are one range of the lookup index.
pub const LEGACY_LOOKUP_END: &str = "legacy;";
/// The prefix of `apps.token_lookup` once a Docora token was upgraded.
const UPGRADED_LOOKUP_PREFIX: &str = "docora:";

fn lower_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Whether `token` has the shape of a Docora token.
pub fn is_token(token: &str) -> bool {
    token
        .strip_prefix(TOKEN_PREFIX)
        .is_some_and(|rest| lower_hex(rest, 64))
}

/// Whether `id` is a Docora id with this prefix (`app_`, `repo_`).
pub fn is_id(id: &str, prefix: &str) -> bool {
    id.strip_prefix(prefix)
        .is_some_and(|rest| lower_hex(rest, 24))
}

/// The legacy lookup of an imported app.
pub fn legacy_lookup(app_id: &str) -> String {
    format!("{LEGACY_LOOKUP_PREFIX}{app_id}")
}

/// The lookup of an upgraded Docora token: a prefix of its SHA-256 (one
/// indexed query finds its app, as a Herald token's lookup id does).
pub fn upgraded_lookup(token: &str) -> String {
    format!(
        "{UPGRADED_LOOKUP_PREFIX}{}",
        &sha256_hex(token.as_bytes())[..32]
    )
}

/// Whether `hash` has the shape of a bcrypt hash (`$2a$`, `$2b$`, `$2y$`,
/// a two-digit cost, 53 characters of salt and digest).
pub fn is_bcrypt_hash(hash: &str) -> bool {
    let bytes = hash.as_bytes();
    hash.len() == 60
        && (hash.starts_with("$2a$") || hash.starts_with("$2b$") || hash.starts_with("$2y$"))
        && bytes[4].is_ascii_digit()
        && bytes[5].is_ascii_digit()
        && bytes[6] == b'$'
}

/// Whether `token` is the one `hash` was made from (bcrypt, as Docora's
/// `bcrypt.compare`). Costs what the hash's cost says: call it off the
/// async executor.
pub fn bcrypt_matches(token: &str, hash: &str) -> bool {
    bcrypt::verify(token, hash).unwrap_or(false)
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DocoraKeyError {
    #[error("Docora's ENCRYPTION_KEY must be 64 hex characters (32 bytes)")]
    BadKey,
    #[error("not in Docora's iv:tag:ciphertext hex format")]
    Malformed,
    #[error(
        "does not open with this key (authentication tag mismatch): wrong ENCRYPTION_KEY, or a damaged row"
    )]
    WrongKey,
}

/// Docora's `ENCRYPTION_KEY`, to open what Docora sealed. Never printed.
pub struct DocoraKey(AesGcm<Aes256, U16>);

impl std::fmt::Debug for DocoraKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DocoraKey(..)")
    }
}

impl DocoraKey {
    /// The key as Docora reads it: 64 hex characters (surrounding
    /// whitespace, as a key file ends with a newline, ignored).
    pub fn from_hex(raw: &str) -> Result<Self, DocoraKeyError> {
        let raw = raw.trim();
        if raw.len() != 64 {
            return Err(DocoraKeyError::BadKey);
        }
        let bytes = hex::decode(raw).map_err(|_| DocoraKeyError::BadKey)?;
        AesGcm::new_from_slice(&bytes)
            .map(Self)
            .map_err(|_| DocoraKeyError::BadKey)
    }

    /// Opens `hex(iv):hex(tag):hex(ciphertext)` (Docora's `decryptToken`).
    pub fn open(&self, sealed: &str) -> Result<SecretString, DocoraKeyError> {
        let mut parts = sealed.split(':');
        let (Some(iv), Some(tag), Some(body), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(DocoraKeyError::Malformed);
        };
        let iv: [u8; 16] = hex::decode(iv)
            .ok()
            .and_then(|iv| iv.try_into().ok())
            .ok_or(DocoraKeyError::Malformed)?;
        let tag = hex::decode(tag).map_err(|_| DocoraKeyError::Malformed)?;
        if tag.len() != 16 {
            return Err(DocoraKeyError::Malformed);
        }
        let mut message = hex::decode(body).map_err(|_| DocoraKeyError::Malformed)?;
        message.extend_from_slice(&tag);
        let plain = self
            .0
            .decrypt(&Nonce::<U16>::from(iv), message.as_slice())
            .map_err(|_| DocoraKeyError::WrongKey)?;
        String::from_utf8(plain)
            .map(SecretString::from)
            .map_err(|_| DocoraKeyError::Malformed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    /// What Docora's `encryptToken` wrote for "ghp_secret_value" under the
    /// key 0x11 × 32 with the IV 00 01 … 0f: produced by Node's own
    /// `crypto.createCipheriv("aes-256-gcm", key, iv)`, as Docora calls it.
    const NODE_SEALED: &str = "000102030405060708090a0b0c0d0e0f:847d6f03ab5db7b94d17d2f8023611e7:40ab1c10a894183bd5c18fc91f3066e0";

    #[test]
    fn opens_what_docora_sealed_and_only_with_its_key() {
        let sealed = NODE_SEALED;
        let opened = DocoraKey::from_hex(&"11".repeat(32))
            .expect("key")
            .open(sealed);
        assert_eq!(
            opened.map(|s| s.expose_secret().to_owned()),
            Ok("ghp_secret_value".to_owned())
        );
        let wrong = DocoraKey::from_hex(&"22".repeat(32)).expect("key");
        assert_eq!(
            wrong.open(sealed).map(|_| ()),
            Err(DocoraKeyError::WrongKey)
        );
        for bad in ["", "aa:bb", "zz:00:00", &format!("{sealed}:00")] {
            assert_eq!(
                wrong.open(bad).map(|_| ()),
                Err(DocoraKeyError::Malformed),
                "{bad}"
            );
        }
        assert!(DocoraKey::from_hex("abc").is_err());
    }

    #[test]
    fn docora_shapes() {
        assert!(is_token(&format!("docora_{}", "a1".repeat(32))));
        assert!(!is_token(&format!("docora_{}", "A1".repeat(32))));
        assert!(!is_token("docora_00"));
        assert!(is_id(&format!("app_{}", "0f".repeat(12)), "app_"));
        assert!(!is_id("app_01jabcdefghjkmnpqrstvwxyz0", "app_"));
        assert!(legacy_lookup("app_x").as_str() > LEGACY_LOOKUP_PREFIX);
        assert!(legacy_lookup("app_x").as_str() < LEGACY_LOOKUP_END);
    }
}
