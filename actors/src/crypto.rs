//! Herald's security primitives (docs/security.md).
//!
//! - [`Keyring`]: AES-256-GCM for secrets at rest, the row's identity as
//!   associated data and a key id in every ciphertext so keys can be rotated.
//! - [`IssuedToken`] / [`parse_app_token`]: app API tokens carry a lookup id
//!   (one indexed query) and a secret stored only as a SHA-256 hash, compared in
//!   constant time.
//! - [`tokens_match`]: constant-time comparison for the admin token.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Prefix of every app token, so that leaked tokens are easy to recognise.
pub const APP_TOKEN_PREFIX: &str = "herald_";
const LOOKUP_LEN: usize = 16;
const SECRET_LEN: usize = 64;
const CIPHERTEXT_VERSION: &str = "v1";
const NONCE_LEN: usize = 12;

#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("the encryption key must be 32 bytes written as 64 hex characters")]
    BadKey,
    #[error("the ciphertext is not in Herald's format")]
    Malformed,
    #[error("the ciphertext was sealed with key {0}, which is not configured")]
    UnknownKey(String),
    #[error("the ciphertext does not open with its key and row identity")]
    Tampered,
}

/// `count` bytes from the operating system's CSPRNG (through rand's ThreadRng,
/// a ChaCha generator seeded and reseeded from the OS).
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    rand::fill(&mut bytes[..]);
    bytes
}

/// SHA-256 of `data`, lowercase hex.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

struct DataKey {
    id: String,
    cipher: Aes256Gcm,
}

impl DataKey {
    fn from_bytes(bytes: &[u8]) -> Result<Self, CryptoError> {
        let cipher = Aes256Gcm::new_from_slice(bytes).map_err(|_| CryptoError::BadKey)?;
        // The id names the key without revealing it: a prefix of its hash.
        let id = sha256_hex(bytes)[..8].to_owned();
        Ok(Self { id, cipher })
    }
}

/// The keys that seal and open secrets at rest: the primary key seals, any key
/// opens what it sealed (rotation: configure the new key as primary and keep
/// the old ones in `previous` until every row was re-sealed).
pub struct Keyring {
    primary: DataKey,
    previous: Vec<DataKey>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring")
            .field("primary", &self.primary.id)
            .field(
                "previous",
                &self.previous.iter().map(|k| &k.id).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Keyring {
    /// Keys as 64 hex characters each.
    pub fn from_hex(primary: &str, previous: &[&str]) -> Result<Self, CryptoError> {
        let decode = |hex_key: &str| -> Result<DataKey, CryptoError> {
            let bytes = hex::decode(hex_key.trim()).map_err(|_| CryptoError::BadKey)?;
            if bytes.len() != 32 {
                return Err(CryptoError::BadKey);
            }
            DataKey::from_bytes(&bytes)
        };
        Ok(Self {
            primary: decode(primary)?,
            previous: previous
                .iter()
                .map(|k| decode(k))
                .collect::<Result<_, _>>()?,
        })
    }

    /// A fresh random key, 64 hex characters.
    pub fn generate_hex() -> String {
        hex::encode(random_bytes::<32>())
    }

    /// Encrypts `plaintext`, bound to `aad` (the row's identity, e.g.
    /// `apps/app_…/client_auth_key`): a ciphertext copied to another row or
    /// column does not open.
    pub fn seal(&self, plaintext: &str, aad: &str) -> String {
        let nonce_bytes = random_bytes::<NONCE_LEN>();
        let nonce = Nonce::from(nonce_bytes);
        let sealed = self
            .primary
            .cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext.as_bytes(),
                    aad: aad.as_bytes(),
                },
            )
            .expect("AES-GCM encryption of an in-memory buffer cannot fail");
        let mut blob = Vec::with_capacity(NONCE_LEN + sealed.len());
        blob.extend_from_slice(&nonce_bytes);
        blob.extend_from_slice(&sealed);
        format!(
            "{CIPHERTEXT_VERSION}.{}.{}",
            self.primary.id,
            URL_SAFE_NO_PAD.encode(blob)
        )
    }

    /// Decrypts what [`Keyring::seal`] produced for the same `aad`.
    pub fn open(&self, ciphertext: &str, aad: &str) -> Result<SecretString, CryptoError> {
        let mut parts = ciphertext.splitn(3, '.');
        let (Some(CIPHERTEXT_VERSION), Some(key_id), Some(body)) =
            (parts.next(), parts.next(), parts.next())
        else {
            return Err(CryptoError::Malformed);
        };
        let key = std::iter::once(&self.primary)
            .chain(&self.previous)
            .find(|k| k.id == key_id)
            .ok_or_else(|| CryptoError::UnknownKey(key_id.to_owned()))?;
        let blob = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| CryptoError::Malformed)?;
        if blob.len() < NONCE_LEN {
            return Err(CryptoError::Malformed);
        }
        let (nonce_bytes, sealed) = blob.split_at(NONCE_LEN);
        let nonce_bytes: [u8; NONCE_LEN] = nonce_bytes
            .try_into()
            .expect("split_at returned exactly NONCE_LEN bytes");
        let plain = key
            .cipher
            .decrypt(
                &Nonce::from(nonce_bytes),
                Payload {
                    msg: sealed,
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| CryptoError::Tampered)?;
        String::from_utf8(plain)
            .map(SecretString::from)
            .map_err(|_| CryptoError::Tampered)
    }
}

/// A freshly issued app token: shown to the caller once, stored as `lookup` +
/// `hash`.
pub struct IssuedToken {
    pub token: SecretString,
    pub lookup: String,
    pub hash: String,
}

impl IssuedToken {
    pub fn generate() -> Self {
        let lookup = hex::encode(random_bytes::<{ LOOKUP_LEN / 2 }>());
        let secret = hex::encode(random_bytes::<{ SECRET_LEN / 2 }>());
        let hash = sha256_hex(secret.as_bytes());
        Self {
            token: SecretString::from(format!("{APP_TOKEN_PREFIX}{lookup}_{secret}")),
            lookup,
            hash,
        }
    }
}

/// A presented app token split into its lookup id and its secret; `None` when
/// it does not have the shape of a Herald token.
pub fn parse_app_token(token: &str) -> Option<(&str, &str)> {
    let rest = token.strip_prefix(APP_TOKEN_PREFIX)?;
    let (lookup, secret) = rest.split_once('_')?;
    let hex_of = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
    (hex_of(lookup, LOOKUP_LEN) && hex_of(secret, SECRET_LEN)).then_some((lookup, secret))
}

/// Whether `secret` hashes to `stored_hash`, compared in constant time.
pub fn app_token_secret_matches(secret: &str, stored_hash: &str) -> bool {
    sha256_hex(secret.as_bytes())
        .as_bytes()
        .ct_eq(stored_hash.as_bytes())
        .into()
}

/// Constant-time equality of two tokens of any length (both are hashed first,
/// so neither the content nor the length leaks through timing).
pub fn tokens_match(given: &str, expected: &SecretString) -> bool {
    let a = Sha256::digest(given.as_bytes());
    let b = Sha256::digest(expected.expose_secret().as_bytes());
    a.as_slice().ct_eq(b.as_slice()).into()
}

/// A random signing key for an app that did not bring its own: 32 random bytes
/// as 64 hex characters.
pub fn generate_client_auth_key() -> SecretString {
    SecretString::from(hex::encode(random_bytes::<32>()))
}

/// A random admin token.
pub fn generate_admin_token() -> SecretString {
    SecretString::from(format!(
        "herald_admin_{}",
        URL_SAFE_NO_PAD.encode(random_bytes::<32>())
    ))
}

/// The Standard Webhooks secret of an app: `whsec_` + base64 of the bytes of its
/// `client_auth_key`, so both signature styles derive from one key.
pub fn webhook_secret(client_auth_key: &SecretString) -> SecretString {
    SecretString::from(format!(
        "whsec_{}",
        STANDARD.encode(client_auth_key.expose_secret().as_bytes())
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keyring() -> Keyring {
        Keyring::from_hex(&Keyring::generate_hex(), &[]).expect("a generated key is valid")
    }

    #[test]
    fn sealed_secrets_open_only_with_the_same_row_identity() {
        let keys = keyring();
        let sealed = keys.seal("s3cret-value", "apps/app_1/client_auth_key");
        assert!(!sealed.contains("s3cret"));
        let opened = keys
            .open(&sealed, "apps/app_1/client_auth_key")
            .expect("same aad opens");
        assert_eq!(opened.expose_secret(), "s3cret-value");
        assert!(matches!(
            keys.open(&sealed, "apps/app_2/client_auth_key"),
            Err(CryptoError::Tampered)
        ));
    }

    #[test]
    fn rotated_keys_still_open_old_ciphertexts() {
        let old_hex = Keyring::generate_hex();
        let old = Keyring::from_hex(&old_hex, &[]).expect("valid");
        let sealed = old.seal("token", "aad");
        let rotated = Keyring::from_hex(&Keyring::generate_hex(), &[&old_hex]).expect("valid");
        assert_eq!(
            rotated
                .open(&sealed, "aad")
                .expect("old key opens")
                .expose_secret(),
            "token"
        );
        let fresh = keyring();
        assert!(matches!(
            fresh.open(&sealed, "aad"),
            Err(CryptoError::UnknownKey(_))
        ));
    }

    #[test]
    fn bad_keys_are_refused() {
        assert!(Keyring::from_hex("abcd", &[]).is_err());
        assert!(Keyring::from_hex(&"zz".repeat(32), &[]).is_err());
    }

    #[test]
    fn app_tokens_round_trip_and_reject_wrong_secrets() {
        let issued = IssuedToken::generate();
        let (lookup, secret) =
            parse_app_token(issued.token.expose_secret()).expect("issued tokens parse");
        assert_eq!(lookup, issued.lookup);
        assert!(app_token_secret_matches(secret, &issued.hash));
        assert!(!app_token_secret_matches(&"0".repeat(64), &issued.hash));
        assert!(parse_app_token("herald_short_abc").is_none());
        assert!(parse_app_token("Bearer x").is_none());
    }

    #[test]
    fn webhook_secret_is_base64_of_the_key_bytes() {
        let key = SecretString::from("a-key-of-16-chars!".to_owned());
        assert_eq!(
            webhook_secret(&key).expose_secret(),
            "whsec_YS1rZXktb2YtMTYtY2hhcnMh"
        );
    }
}
