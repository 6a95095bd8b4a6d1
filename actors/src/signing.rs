//! Webhook signatures (docs/webhooks.md, Signatures), both computed over
//! the exact bytes sent:
//!
//! - Docora: `X-Docora-Signature: sha256=<hex HMAC-SHA256(key, ts "." body)>`
//! - Standard Webhooks v1: `webhook-signature: v1,<base64 HMAC-SHA256(key,
//!   id "." ts "." body)>`, the key being the bytes behind `whsec_…`, i.e. the
//!   app's `client_auth_key`. During a key rotation both keys sign.
//!
//! [`Signer`] puts both on a webhook's headers, with the ids and timestamp
//! they cover, and the message's CloudEvents attributes
//! ([`crate::cloudevents`]): every header a webhook or a broker message
//! carries but `traceparent`.

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use reqwest::header::{HeaderMap, HeaderName};
use sha2::Sha256;

use crate::clock::now_ms;
use crate::cloudevents::CloudEvent;
use crate::ids::AppId;
use crate::webhook_client::header;

type HmacSha256 = Hmac<Sha256>;

/// HMAC-SHA256 with `key` of `parts` joined by `.`.
fn mac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC accepts keys of any length");
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            mac.update(b".");
        }
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

/// The `X-Docora-Signature` value.
pub fn docora(key: &[u8], timestamp: i64, body: &[u8]) -> String {
    let ts = timestamp.to_string();
    let mut hex = [0; 64];
    hex::encode_to_slice(mac(key, &[ts.as_bytes(), body]), &mut hex)
        .expect("64 hex digits hold 32 bytes");
    let mut value = String::with_capacity("sha256=".len() + hex.len());
    value.push_str("sha256=");
    value.push_str(std::str::from_utf8(&hex).expect("hex digits are ASCII"));
    value
}

/// The `webhook-signature` value: one `v1,…` per key, space-separated.
pub fn standard(keys: &[&[u8]], id: &str, timestamp: i64, body: &[u8]) -> String {
    let ts = timestamp.to_string();
    // "v1," and 44 characters of base64 for each key, a space between.
    let mut value = String::with_capacity(keys.len() * 48);
    for (i, key) in keys.iter().enumerate() {
        if i > 0 {
            value.push(' ');
        }
        value.push_str("v1,");
        STANDARD.encode_string(mac(key, &[id.as_bytes(), ts.as_bytes(), body]), &mut value);
    }
    value
}

/// The signing stage: an app's keys, and the headers they sign a body with.
#[derive(Clone)]
pub struct Signer {
    app_id: AppId,
    /// The current key first, then, during a rotation, the previous one.
    keys: Arc<[Vec<u8>]>,
}

/// A request's body with its signed headers and its CloudEvents attributes
/// (all but `traceparent`, which belongs to the attempt's span and is not
/// signed): a broker destination sends every one of them.
pub struct Signed {
    pub body: bytes::Bytes,
    /// Unix seconds, as signed.
    pub timestamp: i64,
    pub headers: HeaderMap,
}

impl Signer {
    /// `keys`: the current key first, then any other that still signs.
    pub fn new(app_id: AppId, keys: Arc<[Vec<u8>]>) -> Self {
        Self { app_id, keys }
    }

    /// Signs `body`, sent as `webhook_id`, now; `event` gives its
    /// CloudEvents attributes.
    pub fn sign(&self, webhook_id: String, body: bytes::Bytes, event: &CloudEvent) -> Signed {
        let timestamp = now_ms() / 1000;
        let headers = signed_headers(
            self.app_id.as_str(),
            &self.keys,
            &webhook_id,
            timestamp,
            &body,
            event,
        );
        Signed {
            body,
            timestamp,
            headers,
        }
    }
}

/// A webhook's headers, both signature styles over the exact body (Docora's
/// with the current key; Standard Webhooks' with every key that signs,
/// during a rotation the previous one too), and its CloudEvents attributes.
fn signed_headers(
    app_id: &str,
    keys: &[Vec<u8>],
    webhook_id: &str,
    timestamp: i64,
    body: &[u8],
    event: &CloudEvent,
) -> HeaderMap {
    let keys: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
    // Up to 13 signed headers, then the attempt's `traceparent` and the
    // webhook client's `host`, `user-agent` and `accept`.
    let mut headers = HeaderMap::with_capacity(17);
    webhook_headers(
        app_id,
        webhook_id,
        timestamp,
        [
            &docora(keys[0], timestamp, body),
            &standard(&keys, webhook_id, timestamp, body),
        ],
        event,
        // Each name as a `HeaderName` of static bytes: inserted by its
        // `&str`, a name outside HTTP's standard ones is copied afresh.
        |name, value| {
            headers.insert(HeaderName::from_static(name), header(value));
        },
    );
    headers
}

/// The headers a webhook is signed with, handed to `put` by name: those
/// the signatures given (Docora's, then Standard Webhooks') come with,
/// then its CloudEvents attributes. `content-type` is also the event's
/// `datacontenttype`.
fn webhook_headers(
    app_id: &str,
    webhook_id: &str,
    timestamp: i64,
    [docora_signature, standard_signature]: [&str; 2],
    event: &CloudEvent,
    mut put: impl FnMut(&'static str, &str),
) {
    let timestamp = timestamp.to_string();
    put("content-type", "application/json");
    put("x-docora-app-id", app_id);
    put("x-docora-timestamp", &timestamp);
    put("x-docora-signature", docora_signature);
    put("webhook-id", webhook_id);
    put("webhook-timestamp", &timestamp);
    put("webhook-signature", standard_signature);
    event.headers(webhook_id, put);
}

/// The headers of a request Herald sent, as an operator may see them again
/// (the console's attempt view): the signed ones, then those the webhook
/// client and the attempt's span add. Signatures are not kept: each is
/// shown as what it was computed from, never as a value.
pub fn shown_headers(
    app_id: &str,
    webhook_id: &str,
    timestamp: i64,
    event: &CloudEvent,
    traceparent: Option<&str>,
) -> Vec<(&'static str, String)> {
    let mut shown = Vec::new();
    webhook_headers(
        app_id,
        webhook_id,
        timestamp,
        [
            "sha256=… (HMAC-SHA256 of timestamp.body with the app's key; not kept)",
            "v1,… (HMAC-SHA256 of id.timestamp.body with each signing key; not kept)",
        ],
        event,
        |name, value| shown.push((name, value.to_owned())),
    );
    shown.push(("user-agent", crate::webhook_client::USER_AGENT.to_owned()));
    shown.push(("accept", crate::webhook_client::ACCEPT.to_owned()));
    if let Some(traceparent) = traceparent {
        shown.push(("traceparent", traceparent.to_owned()));
    }
    shown
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_standard_webhooks_reference_vector() {
        // The example of the Standard Webhooks specification.
        let key = STANDARD
            .decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
            .expect("base64");
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            standard(&[&key], "msg_p5jXN8AQM9LWM0D4loKWxJek", 1_614_265_330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn docora_signs_timestamp_dot_body_in_hex() {
        let signature = docora(b"key", 1, b"{}");
        assert!(signature.starts_with("sha256="));
        assert_eq!(signature.len(), "sha256=".len() + 64);
        assert_ne!(
            signature,
            docora(b"key", 2, b"{}"),
            "the timestamp is signed"
        );
    }

    #[test]
    fn rotation_signs_with_every_key() {
        let both = standard(&[b"old", b"new"], "evt_1", 5, b"x");
        let parts: Vec<&str> = both.split(' ').collect();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[1], standard(&[b"new"], "evt_1", 5, b"x"));
    }

    /// A file's update, as a message's CloudEvents attributes.
    fn file_event() -> CloudEvent {
        CloudEvent::new(
            "update",
            "repo_1",
            Some("docs/ä b.md"),
            "2023-11-14T22:13:20.000Z".to_owned(),
        )
    }

    #[test]
    fn headers_carry_the_cloudevents_attributes_of_each_request() {
        let signer = Signer::new(AppId::stored("app_1"), vec![b"key".to_vec()].into());
        // A chunk: its own webhook-id is its ce-id.
        let signed = signer.sign("evt_1_3".to_owned(), "{}".into(), &file_event());
        let value = |name: &str| {
            signed
                .headers
                .get(name)
                .map(|v| v.to_str().expect("ascii").to_owned())
        };
        assert_eq!(value("ce-specversion").as_deref(), Some("1.0"));
        assert_eq!(value("ce-id").as_deref(), Some("evt_1_3"));
        assert_eq!(value("ce-id"), value("webhook-id"));
        assert_eq!(value("ce-source").as_deref(), Some("/repositories/repo_1"));
        assert_eq!(value("ce-type").as_deref(), Some("dev.herald.file.updated"));
        assert_eq!(value("ce-subject").as_deref(), Some("docs/%C3%A4%20b.md"));
        assert_eq!(
            value("ce-time").as_deref(),
            Some("2023-11-14T22:13:20.000Z")
        );
        // Binary mode: the body is the data, content-type its type.
        assert_eq!(value("content-type").as_deref(), Some("application/json"));
        assert_eq!(value("ce-datacontenttype"), None);

        let notice = CloudEvent::new(
            "sync_failed",
            "repo_1",
            None,
            "2023-11-14T22:13:20.000Z".into(),
        );
        let signed = signer.sign("evt_2".to_owned(), "{}".into(), &notice);
        assert_eq!(signed.headers["ce-type"], "dev.herald.sync_failed");
        assert!(signed.headers.get("ce-subject").is_none());
    }

    #[test]
    fn the_attempt_view_shows_the_attributes_sent() {
        let shown = shown_headers(
            "app_1",
            "evt_1",
            1_700_000_000,
            &file_event(),
            Some("00-tp"),
        );
        let signer = Signer::new(AppId::stored("app_1"), vec![b"key".to_vec()].into());
        let sent = signer.sign("evt_1".to_owned(), "{}".into(), &file_event());
        for (name, value) in &shown {
            if name.starts_with("ce-") {
                assert_eq!(sent.headers[*name], value.as_str(), "{name}");
            }
        }
        let names: Vec<&str> = shown.iter().map(|(name, _)| *name).collect();
        for name in sent.headers.keys() {
            assert!(names.contains(&name.as_str()), "{name} is shown");
        }
    }

    #[test]
    fn headers_carry_both_signatures_over_the_exact_body() {
        let keys = vec![
            b"current-key-0123456789".to_vec(),
            b"previous-key-0123456789".to_vec(),
        ];
        let body = br#"{"event":"create"}"#;
        let headers = signed_headers("app_1", &keys, "evt_1", 1_700_000_000, body, &file_event());
        let value = |name: &str| headers[name].to_str().expect("ascii").to_owned();
        assert_eq!(value("x-docora-app-id"), "app_1");
        assert_eq!(value("x-docora-timestamp"), "1700000000");
        // Docora's style signs with the current key only.
        assert_eq!(
            value("x-docora-signature"),
            docora(&keys[0], 1_700_000_000, body)
        );
        // Standard Webhooks' carries one signature per signing key.
        let signatures = value("webhook-signature");
        assert_eq!(signatures.split(' ').count(), 2, "{signatures}");
        assert_eq!(
            signatures,
            standard(
                &[keys[0].as_slice(), keys[1].as_slice()],
                "evt_1",
                1_700_000_000,
                body
            )
        );
        assert_eq!(value("webhook-id"), "evt_1");
        assert_eq!(value("content-type"), "application/json");
    }
}
