//! Both signature styles Herald sends on every request (Standard Webhooks'
//! `webhook-signature` and Docora's `x-docora-signature`), checked over the
//! exact body bytes before anything is parsed.

use anyhow::Context;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use secrecy::{ExposeSecret, SecretSlice, SecretString};
use sha2::Sha256;
use warp::http::HeaderMap;

use super::Refused;

type HmacSha256 = Hmac<Sha256>;

/// How far a signed timestamp may be from our clock, either way (Standard
/// Webhooks' recommended tolerance): a captured request cannot be replayed
/// later than this.
const TIMESTAMP_TOLERANCE_SECS: u64 = 5 * 60;

/// The HMAC key both signature styles use: the bytes after `whsec_`,
/// base64-decoded (which are the bytes of the app's `client_auth_key`).
#[derive(Clone)]
pub(super) struct WebhookKey(SecretSlice<u8>);

impl WebhookKey {
    /// Errors never contain the secret.
    pub(super) fn parse(secret: &SecretString) -> anyhow::Result<Self> {
        let encoded = secret
            .expose_secret()
            .trim()
            .strip_prefix("whsec_")
            .context("the secret must start with whsec_")?;
        let bytes = STANDARD
            .decode(encoded)
            .ok()
            .context("the part of the secret after whsec_ is not valid base64")?;
        anyhow::ensure!(!bytes.is_empty(), "the secret is empty");
        Ok(Self(SecretSlice::from(bytes)))
    }

    /// The key's bytes: `listen --pull` signs what it forwards with them.
    pub(super) fn expose(&self) -> &[u8] {
        self.0.expose_secret()
    }

    fn mac(&self) -> HmacSha256 {
        HmacSha256::new_from_slice(self.0.expose_secret()).expect("HMAC accepts keys of any length")
    }
}

/// Checks both signature styles (both must hold) and both timestamps, and
/// returns the `webhook-id`. Comparisons are constant-time (`verify_slice`).
pub(super) fn verify(
    key: &WebhookKey,
    headers: &HeaderMap,
    body: &[u8],
    now: i64,
) -> Result<String, Refused> {
    let header = |name: &'static str| -> Result<&str, Refused> {
        headers
            .get(name)
            .ok_or_else(|| Refused::Unauthorized(format!("missing {name} header")))?
            .to_str()
            .map_err(|_| Refused::Unauthorized(format!("{name} is not ASCII")))
    };

    // Standard Webhooks: v1,<base64 HMAC(id.timestamp.body)>, several allowed
    // (space-separated) during a key rotation.
    let id = header("webhook-id")?;
    let timestamp = header("webhook-timestamp")?;
    check_fresh("webhook-timestamp", timestamp, now)?;
    let mut mac = key.mac();
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    let matches = header("webhook-signature")?
        .split_whitespace()
        .filter_map(|signature| signature.strip_prefix("v1,"))
        .filter_map(|encoded| STANDARD.decode(encoded).ok())
        .any(|signature| mac.clone().verify_slice(&signature).is_ok());
    if !matches {
        return Err(Refused::Unauthorized(
            "no webhook-signature matches the secret".into(),
        ));
    }

    // Docora: sha256=<hex HMAC(timestamp.body)>.
    let timestamp = header("x-docora-timestamp")?;
    check_fresh("x-docora-timestamp", timestamp, now)?;
    let signature = header("x-docora-signature")?
        .trim()
        .strip_prefix("sha256=")
        .and_then(|encoded| hex::decode(encoded).ok())
        .ok_or_else(|| Refused::Unauthorized("x-docora-signature is not sha256=<hex>".into()))?;
    let mut mac = key.mac();
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.verify_slice(&signature).map_err(|_| {
        Refused::Unauthorized("x-docora-signature does not match the secret".into())
    })?;

    Ok(id.to_owned())
}

fn check_fresh(name: &str, timestamp: &str, now: i64) -> Result<(), Refused> {
    let seconds: i64 = timestamp
        .trim()
        .parse()
        .map_err(|_| Refused::Unauthorized(format!("{name} is not Unix seconds")))?;
    let skew = now.abs_diff(seconds);
    if skew > TIMESTAMP_TOLERANCE_SECS {
        return Err(Refused::Unauthorized(format!(
            "{name} is {skew} s away from our clock (tolerance {TIMESTAMP_TOLERANCE_SECS} s)"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(raw: &str) -> WebhookKey {
        WebhookKey::parse(&SecretString::from(raw)).expect("a valid secret")
    }

    #[test]
    fn matches_the_standard_webhooks_reference_vector() {
        // From the Standard Webhooks specification's test suite.
        let key = key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
        let mut mac = key.mac();
        mac.update(b"msg_p5jXN8AQM9LWM0D4loKWxJek.1614265330.{\"test\": 2432232314}");
        let signature = STANDARD.encode(mac.finalize().into_bytes());
        assert_eq!(signature, "g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn secret_errors_never_contain_the_secret() {
        for (raw, secret) in [
            ("not-a-secret-at-all", "not-a-secret-at-all"),
            ("whsec_%%not-base64%%", "%%not-base64%%"),
        ] {
            let err = WebhookKey::parse(&SecretString::from(raw))
                .err()
                .expect("an invalid secret");
            assert!(!format!("{err:#}").contains(secret), "{err:#}");
        }
        assert!(WebhookKey::parse(&SecretString::from("whsec_")).is_err());
    }
    #[test]
    fn timestamps_outside_five_minutes_are_refused() {
        assert!(check_fresh("t", "1000", 1000 + 300).is_ok());
        assert!(check_fresh("t", "1000", 1000 - 300).is_ok());
        assert!(check_fresh("t", "1000", 1000 + 301).is_err());
        assert!(check_fresh("t", "1000", 1000 - 301).is_err());
        assert!(check_fresh("t", "soon", 1000).is_err());
    }
}
